//! The model a sweep or a tuning run samples and the rewards it scores: the analytic testbed by
//! default, Stable Diffusion with `--reference` and `--aligned`.

use std::path::Path;

use candle_core::DType;
use deradiff_rewards::{Reward, MAX_PROMPTS};
use deradiff_tune::{check_sweep_size, Prompt, SweepModel, MAX_BATCH_ELEMENTS};

use crate::args::{RealignArg, RewardArgs, SamplerArgs, SdArgs, TestbedArgs};
use crate::checkpoint::{check_models, reference_scheduler_config};
use crate::checks::{check_at_least_one, check_guidance, check_steps};
use crate::error::{CliError, Context, Result};
use crate::grid::parse_seeds;

/// The inference steps of the analytic testbed without `--steps`.
const TESTBED_STEPS: usize = 25;

/// The model and rewards shared by `sweep` and `tune`: the analytic testbed by default, Stable
/// Diffusion when `--reference` is given.
///
/// Its groups set their help headings, which clap keeps for the options after them: a command
/// flattens this last.
#[derive(Debug, clap::Args)]
pub(crate) struct SweepModelArgs {
    /// The sampler (default: the checkpoint's own with Stable Diffusion, ddpm on the testbed)
    /// and its options.
    #[command(flatten)]
    sampler: SamplerArgs,
    /// Inference steps (default: 50 with Stable Diffusion, as `sample` and diffusers; 25 on the
    /// testbed).
    #[arg(long)]
    steps: Option<usize>,
    /// Samples per prompt and λ (default: 256 on the testbed, 2 images with Stable Diffusion).
    #[arg(long)]
    samples: Option<usize>,
    /// Several seeds per prompt, one row per (λ, prompt, seed): a range `A..B` (B excluded, e.g.
    /// 0..4) or a list `0,7,9`.
    #[arg(long)]
    seeds: Option<String>,
    /// The most λ values sampled in one batch (0: all of a prompt's λ at once): lower it when a
    /// batch does not fit in memory; the rows stay the same.
    #[arg(long, default_value_t = 0)]
    pub(crate) max_lambdas_per_batch: usize,
    /// Stable Diffusion instead of the testbed.
    #[command(flatten)]
    sd: SdArgs,
    /// The image rewards of a Stable Diffusion run.
    #[command(flatten, next_help_heading = "Rewards (Stable Diffusion)")]
    rewards: RewardArgs,
    /// The analytic testbed.
    #[command(flatten)]
    testbed: TestbedArgs,
}

/// The model a sweep or a tuning run samples, its rewards, prompts and samples per prompt.
pub(crate) struct Built {
    /// The reference and the aligned model, sampled at any λ.
    pub(crate) model: Box<dyn SweepModel>,
    /// The rewards, the first one the objective.
    pub(crate) rewards: Vec<Box<dyn Reward>>,
    /// The prompts (each with its seed).
    pub(crate) prompts: Vec<Prompt>,
    /// Samples per prompt and λ.
    pub(crate) samples: usize,
    /// The anchor's KL strength β, where the model knows it (the testbed).
    pub(crate) anchor_beta: Option<f64>,
}

/// `prompts`, each once per seed of `seeds` where given.
fn with_seeds(prompts: Vec<Prompt>, seeds: Option<Vec<u64>>) -> Vec<Prompt> {
    match seeds {
        Some(seeds) => Prompt::with_seeds(&prompts, &seeds),
        None => prompts,
    }
}

/// How many λ a run samples per prompt entry, and the options that set it (`--lambdas /
/// --lambda-range` for a sweep, `--budget` for a tuning run): the products of counts are checked
/// with it before anything is loaded.
pub(crate) struct LambdaCount<'a> {
    /// λ values per prompt entry.
    pub(crate) count: usize,
    /// The options that set them.
    pub(crate) options: &'a str,
}

impl SweepModelArgs {
    /// Whether the run samples images (Stable Diffusion: `--reference` and `--aligned`).
    pub(crate) fn makes_images(&self) -> bool {
        self.sd.reference.is_some() && self.sd.aligned.is_some()
    }

    /// Whether a reward option is given.
    pub(crate) fn has_rewards(&self) -> bool {
        !self.rewards.given().is_empty()
    }

    /// The analytic testbed or Stable Diffusion, by the options given: the products of prompts ×
    /// seeds × `lambdas` × samples are checked before the model is loaded. With `save_images`
    /// (a sweep's `--save-images`) a Stable Diffusion run may have no reward.
    pub(crate) fn build(&self, lambdas: LambdaCount<'_>, save_images: bool) -> Result<Built> {
        if let Some(steps) = self.steps {
            check_steps(steps)?;
        }
        if let Some(samples) = self.samples {
            check_at_least_one("--samples", samples)?;
        }
        match (&self.sd.reference, &self.sd.aligned) {
            (Some(reference), Some(aligned)) => self.build_sd(reference, aligned, &lambdas, save_images),
            _ => self.build_analytic(&lambdas),
        }
    }

    /// The files and folders a run reads (models, prompt file, rewards), with their options.
    pub(crate) fn inputs(&self) -> Vec<(&'static str, &Path)> {
        let mut inputs = self.sd.inputs();
        inputs.extend(self.rewards.inputs());
        inputs
    }

    /// The `--seeds` of `prompts` prompts (given by `prompt_options`), after the products of
    /// prompts × seeds × λ × `samples` are checked — before any prompt entry is made — each
    /// failure naming the options to lower.
    fn seeds_for(
        &self,
        prompts: usize,
        prompt_options: &str,
        lambdas: &LambdaCount<'_>,
        samples: usize,
    ) -> Result<Option<Vec<u64>>> {
        let seeds = self.seeds.as_deref().map(parse_seeds).transpose()?;
        let per_prompt = seeds.as_ref().map_or(1, Vec::len);
        let entries = prompts.checked_mul(per_prompt).filter(|&n| n <= MAX_PROMPTS).ok_or_else(|| {
            CliError::usage(format!(
                "{prompts} prompts ({prompt_options}) × {per_prompt} seeds (--seeds) is more than {MAX_PROMPTS} prompt \
                 entries, the most one run takes: give fewer seeds or prompts"
            ))
        })?;
        check_sweep_size(lambdas.count, entries, samples).usage_context(format!(
            "{prompts} prompts ({prompt_options}) × {per_prompt} seeds (--seeds) × {} λ ({}) × {samples} samples \
             (--samples) is too large a run: lower one of them",
            lambdas.count, lambdas.options
        ))?;
        Ok(seeds)
    }

    /// Errors (a bad option, before anything is sampled) when the largest batch — `groups` λ
    /// groups (`from`: the options that set them) of the samples of one prompt — would hold
    /// more than MAX_BATCH_ELEMENTS latent values.
    pub(crate) fn check_batch(&self, built: &Built, groups: usize, from: &str) -> Result<()> {
        let shape = built.model.latent_shape(built.samples).usage_context(format!("--samples {}", built.samples))?;
        let values = shape.iter().try_fold(groups, |n, &d| n.checked_mul(d));
        if values.is_none_or(|n| n > MAX_BATCH_ELEMENTS) {
            return Err(CliError::usage(format!(
                "one batch would hold {groups} λ ({from}) × latents {shape:?} of --samples {}: more than \
                 {MAX_BATCH_ELEMENTS} values; lower --samples, or give --max-lambdas-per-batch N for fewer λ per batch",
                built.samples
            )));
        }
        Ok(())
    }

    /// The analytic testbed, its true reward first, then the proxy.
    fn build_analytic(&self, lambdas: &LambdaCount<'_>) -> Result<Built> {
        self.refuse_sd_options()?;
        let (model, proxy, truth) = self.testbed.build(&self.sampler, self.steps.unwrap_or(TESTBED_STEPS))?;
        let samples = self.samples.unwrap_or(256);
        let seeds = self.seeds_for(self.testbed.prompts as usize, "--prompts", lambdas, samples)?;
        let prompts = with_seeds(Prompt::seeds(0..self.testbed.prompts), seeds);
        Ok(Built {
            model: Box::new(model),
            rewards: vec![Box::new(truth), Box::new(proxy)],
            prompts,
            samples,
            anchor_beta: Some(self.testbed.anchor_beta),
        })
    }

    /// Errors when an option of Stable Diffusion sweeps is given without `--reference`.
    fn refuse_sd_options(&self) -> Result<()> {
        let reward_flag = self.rewards.given().first().copied();
        for (flag, given) in [
            ("--prompt", !self.sd.prompt.is_empty()),
            ("--prompts-file", self.sd.prompts_file.is_some()),
            ("--prompt-seed", self.sd.prompt_seed != 0),
            ("--guidance", self.sd.guidance.is_some()),
            (reward_flag.unwrap_or_default(), reward_flag.is_some()),
            ("--realign weights", self.sd.realign == RealignArg::Weights),
            ("--lora-scale", self.sd.load.lora_scale != 1.0),
            ("--separate-passes", self.sd.load.separate_passes),
        ] {
            if given {
                return Err(CliError::usage(format!(
                    "{flag} applies to Stable Diffusion sweeps: give --reference and --aligned"
                )));
            }
        }
        Ok(())
    }

    /// Stable Diffusion: `reference` and `aligned` on the prompts, with the image rewards.
    fn build_sd(
        &self,
        reference: &Path,
        aligned: &Path,
        lambdas: &LambdaCount<'_>,
        save_images: bool,
    ) -> Result<Built> {
        let samples = self.samples.unwrap_or(2);
        let prompts = self.sd.prompts()?;
        let seeds = self.seeds_for(prompts.len(), "--prompt / --prompts-file", lambdas, samples)?;
        let prompts = with_seeds(prompts, seeds);
        let (dtype, device) = self.sd.load.dtype_and_device()?;
        check_guidance(self.sd.guidance)?;
        if !save_images {
            self.rewards.require("give a reward for a Stable Diffusion sweep")?;
        }
        self.sampler.check()?;
        check_models(reference, &[aligned.to_path_buf()])?;
        self.sd.load.check_single_file(reference)?;
        // Unreadable, the loader reports it below; the sampler is then moot.
        let checkpoint = reference_scheduler_config(reference, &self.sd.load.single_file()).unwrap_or_default();
        let (scheduler, config, note) = self.sampler.for_checkpoint(&checkpoint)?;
        if let Some(note) = note {
            eprintln!("note: {note}");
        }
        let rewards: Vec<Box<dyn Reward>> =
            self.rewards.load(DType::F32, &device)?.into_iter().map(|r| -> Box<dyn Reward> { r }).collect();
        let load = self.sd.load.options(dtype, device)?;
        // The defaults of `sample`: the checkpoint's scheduler (above) and guidance, 50 steps.
        let steps = self.steps.unwrap_or(deradiff_sd::DEFAULT_STEPS);
        let model = self.sd.model(reference, aligned, load, (scheduler, config), steps)?;
        Ok(Built { model: Box::new(model), rewards, prompts, samples, anchor_beta: None })
    }
}
