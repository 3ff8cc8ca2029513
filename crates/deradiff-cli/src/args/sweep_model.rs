//! The model a sweep or a tuning run samples and the rewards it scores: the analytic testbed by
//! default, Stable Diffusion with `--reference` and `--aligned`.

use std::path::Path;

use candle_core::DType;
use deradiff_rewards::Reward;
use deradiff_tune::{Prompt, SweepModel};

use crate::args::{RealignArg, RewardArgs, SamplerArgs, SdArgs, TestbedArgs};
use crate::checkpoint::{check_models, reference_scheduler_config};
use crate::checks::{check_at_least_one, check_steps};
use crate::error::{CliError, Result};
use crate::grid::parse_seeds;

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
    /// Inference steps.
    #[arg(long, default_value_t = 25)]
    steps: usize,
    /// Samples per prompt and λ (default: 256 on the testbed, 2 images with Stable Diffusion).
    #[arg(long)]
    samples: Option<usize>,
    /// Several seeds per prompt, one row per (λ, prompt, seed): a range `A..B` (B excluded, e.g.
    /// 0..4) or a list `0,7,9`.
    #[arg(long)]
    seeds: Option<String>,
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

impl SweepModelArgs {
    /// The analytic testbed or Stable Diffusion, by the options given.
    pub(crate) fn build(&self) -> Result<Built> {
        check_steps(self.steps)?;
        if let Some(samples) = self.samples {
            check_at_least_one("--samples", samples)?;
        }
        match (&self.sd.reference, &self.sd.aligned) {
            (Some(reference), Some(aligned)) => self.build_sd(reference, aligned),
            _ => self.build_analytic(),
        }
    }

    /// `prompts`, each once per `--seeds` seed where given.
    fn with_seeds(&self, prompts: Vec<Prompt>) -> Result<Vec<Prompt>> {
        match &self.seeds {
            Some(seeds) => Ok(Prompt::with_seeds(&prompts, &parse_seeds(seeds)?)),
            None => Ok(prompts),
        }
    }

    /// The analytic testbed, its true reward first, then the proxy.
    fn build_analytic(&self) -> Result<Built> {
        self.refuse_sd_options()?;
        let (model, proxy, truth) = self.testbed.build(&self.sampler, self.steps)?;
        let prompts = self.with_seeds(Prompt::seeds(0..self.testbed.prompts))?;
        Ok(Built {
            model: Box::new(model),
            rewards: vec![Box::new(truth), Box::new(proxy)],
            prompts,
            samples: self.samples.unwrap_or(256),
            anchor_beta: Some(self.testbed.anchor_beta),
        })
    }

    /// Errors when an option of Stable Diffusion sweeps is given without `--reference`.
    fn refuse_sd_options(&self) -> Result<()> {
        let reward_flag = self.rewards.given().first().copied();
        for (flag, given) in [
            ("--prompt", !self.sd.prompt.is_empty()),
            ("--prompts-file", self.sd.prompts_file.is_some()),
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
    fn build_sd(&self, reference: &Path, aligned: &Path) -> Result<Built> {
        let prompts = self.with_seeds(self.sd.prompts()?)?;
        let (dtype, device) = self.sd.load.dtype_and_device()?;
        self.rewards.require("give a reward for a Stable Diffusion sweep")?;
        self.sampler.check()?;
        check_models(reference, &[aligned.to_path_buf()])?;
        // Unreadable, the loader reports it below; the sampler is then moot.
        let checkpoint = reference_scheduler_config(reference).unwrap_or_default();
        let (scheduler, config, note) = self.sampler.for_checkpoint(&checkpoint)?;
        if let Some(note) = note {
            eprintln!("note: {note}");
        }
        let rewards: Vec<Box<dyn Reward>> =
            self.rewards.load(DType::F32, &device)?.into_iter().map(|r| -> Box<dyn Reward> { r }).collect();
        let load = self.sd.load.options(dtype, device)?;
        let model = self.sd.model(reference, aligned, load, (scheduler, config), self.steps)?;
        Ok(Built { model: Box::new(model), rewards, prompts, samples: self.samples.unwrap_or(2), anchor_beta: None })
    }
}
