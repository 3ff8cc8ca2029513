//! The Stable Diffusion options of `sweep` and `tune`: the model pair (`--reference`,
//! `--aligned`), the prompts, guidance, how λ realigns and how the models are loaded.

use std::path::{Path, PathBuf};

use deradiff_core::{SchedulerConfig, SchedulerKind};
use deradiff_sd::LoadOptions;
use deradiff_tune::{Prompt, SdModel, SdSetup};

use crate::args::model::{load_failure, LoadArgs};
use crate::args::prompts::read_prompts_file;
use crate::args::realign::RealignArg;
use crate::args::ModelPath;
use crate::error::{CliError, Context, Result};

/// Stable Diffusion instead of the analytic testbed: a reference and one aligned model, sampled
/// on prompts.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Stable Diffusion")]
pub(crate) struct SdArgs {
    /// The reference checkpoint: a diffusers pipeline folder, or one original-layout single-file
    /// checkpoint (with --tokenizer DIR), or a Hugging Face repo id (`org/name[@revision]`) in the
    /// local cache. Without it the analytic testbed is used.
    #[arg(long, requires = "aligned", value_parser = ModelPath)]
    pub(crate) reference: Option<PathBuf>,
    /// The aligned model: a UNet (pipeline dir, unet/ dir or .safetensors file, diffusers' or
    /// the original single-file layout) or a LoRA adapter (file or folder; diffusers, peft or
    /// kohya layout); or a Hugging Face repo id in the local cache (`org/name[@revision][/path]`).
    #[arg(long, requires = "reference", value_parser = ModelPath)]
    pub(crate) aligned: Option<PathBuf>,
    /// A prompt (repeatable).
    #[arg(long)]
    pub(crate) prompt: Vec<String>,
    /// A prompt file: plain text (one per line), JSON lines, CSV (a header row; see
    /// --prompt-column) or YAML (a list, a `prompts:` list, or lists by category).
    #[arg(long)]
    pub(crate) prompts_file: Option<PathBuf>,
    /// The field / CSV column holding the prompt (default: prompt, caption or text, the first
    /// present).
    #[arg(long, requires = "prompts_file")]
    prompt_column: Option<String>,
    /// Seed of the first prompt (prompt i uses seed + i; results are keyed by the prompt text,
    /// which must be unique). Ignored with --seeds.
    #[arg(long = "prompt-seed", default_value_t = 0)]
    pub(crate) prompt_seed: u64,
    /// Classifier-free guidance scale (≤ 1 turns guidance off). Default: the checkpoint's, 7.5
    /// for SD 1.x / 2.x and 5.0 for SDXL, as `sample`.
    #[arg(long, allow_negative_numbers = true)]
    pub(crate) guidance: Option<f64>,
    /// How λ realigns: `posterior` (DeRaDiff's posterior fusion) or `weights` (the weight-space
    /// baseline: the aligned LoRA merged at λ; needs a LoRA --aligned).
    #[arg(long, value_enum, default_value = "posterior")]
    pub(crate) realign: RealignArg,
    /// Where and how the models are loaded.
    #[command(flatten)]
    pub(crate) load: LoadArgs,
}

impl SdArgs {
    /// The prompts of `--prompt` and `--prompts-file` in order, prompt i with the seed
    /// `--prompt-seed` + i; at least one.
    pub(crate) fn prompts(&self) -> Result<Vec<Prompt>> {
        let mut entries: Vec<(String, String)> = self.prompt.iter().map(|t| (t.clone(), t.clone())).collect();
        if let Some(file) = &self.prompts_file {
            let read = read_prompts_file(file, self.prompt_column.as_deref())?;
            entries.extend(read.into_iter().map(|e| (e.id, e.text)));
        }
        if entries.is_empty() {
            return Err(CliError::usage(
                "give prompts for a Stable Diffusion sweep: --prompt \"…\" or --prompts-file FILE (with at least one \
                 non-blank line)",
            ));
        }
        Ok(entries
            .iter()
            .enumerate()
            .map(|(i, (id, t))| Prompt::text(id.clone(), t.clone(), self.prompt_seed.wrapping_add(i as u64)))
            .collect())
    }

    /// The files and folders read: the models and the prompt file, each with its option.
    pub(crate) fn inputs(&self) -> Vec<(&'static str, &Path)> {
        let mut inputs: Vec<(&'static str, &Path)> =
            [("--reference", &self.reference), ("--aligned", &self.aligned), ("--prompts-file", &self.prompts_file)]
                .into_iter()
                .filter_map(|(flag, p)| p.as_deref().map(|p| (flag, p)))
                .collect();
        inputs.extend(self.load.single_file_inputs());
        inputs
    }

    /// Loads `reference` and `aligned` with `load`, sampled with `scheduler` (a class and the
    /// scheduler config it is built from) in `steps` steps.
    pub(crate) fn model(
        &self,
        reference: &Path,
        aligned: &Path,
        load: LoadOptions,
        scheduler: (SchedulerKind, SchedulerConfig),
        steps: usize,
    ) -> Result<SdModel> {
        let mut setup = SdSetup::new(reference, aligned);
        setup.load = load;
        setup.realign = self.realign.realignment();
        setup.scheduler = scheduler.0;
        setup.scheduler_config = Some(scheduler.1);
        setup.steps = steps;
        setup.guidance_scale = self.guidance;
        SdModel::load(setup).with_context(|| load_failure(reference, &[aligned.to_path_buf()]))
    }
}
