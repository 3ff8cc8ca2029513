//! Loading Stable Diffusion models: the reference, the aligned models, and where and how they are
//! loaded (`--device`, `--dtype`, `--lora-scale`, `--separate-passes`).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use deradiff_sd::{check_dtype_supported, parse_device, parse_dtype, LoadOptions, SingleFileOptions, StableDiffusion};

use crate::args::ModelPath;
use crate::checkpoint::check_models;
use crate::error::{CliError, Context, Result};

/// `--device`: `cpu`, `cuda[:N]` or `metal[:N]`.
pub(crate) fn device_option(device: &str) -> Result<Device> {
    parse_device(device).usage_context(format!("--device {device} is not a usable device"))
}

/// What a failed load says: `cannot load --reference R with --aligned A, B`.
pub(crate) fn load_failure(reference: &Path, aligned: &[PathBuf]) -> String {
    let aligned = aligned.iter().map(|a| a.display().to_string()).collect::<Vec<_>>().join(", ");
    format!("cannot load --reference {} with --aligned {aligned}", reference.display())
}

/// The models of `deradiff sample`: the reference checkpoint and its aligned models.
#[derive(Debug, clap::Args)]
pub(crate) struct ModelArgs {
    /// The reference checkpoint: the diffusers pipeline directory (model_index.json, unet/,
    /// text_encoder/, tokenizer/, vae/, scheduler/scheduler_config.json; SDXL also
    /// text_encoder_2/ and tokenizer_2/, and is detected from unet/config.json), not one of its
    /// component folders; or one single-file checkpoint in the original layout (an SD 1.x, 2.x
    /// or SDXL .safetensors file as the web UIs use; with --tokenizer DIR). Or a Hugging Face
    /// repo id, `org/name[@revision][/path]`, found in the local Hugging Face cache (HF_HUB_CACHE,
    /// HF_HOME/hub or ~/.cache/huggingface/hub; never downloaded); an existing path wins.
    #[arg(long, value_parser = ModelPath)]
    pub(crate) reference: PathBuf,
    /// An aligned UNet of the reference's architecture: a pipeline directory, a unet/ directory
    /// or one .safetensors file (diffusers' UNet names, or an original-layout single-file
    /// checkpoint, of which only the UNet is read); or a LoRA adapter of the reference UNet (a .safetensors file in
    /// the diffusers, peft or kohya layout, or a folder with pytorch_lora_weights.safetensors or
    /// adapter_model.safetensors + adapter_config.json), which runs with the reference in one
    /// batched UNet pass. Repeat for several aligned models (one per reward). Without it the
    /// reference alone is sampled (one UNet per step: the baseline image and time). Each may be
    /// a Hugging Face repo id in the local cache, as --reference (`org/name[@revision][/path]`).
    #[arg(long, value_parser = ModelPath)]
    pub(crate) aligned: Vec<PathBuf>,
    /// Where and how they are loaded.
    #[command(flatten)]
    pub(crate) load: LoadArgs,
}

impl ModelArgs {
    /// Checks the layout of `--reference` and the architecture of each `--aligned` against it,
    /// before anything is loaded.
    pub(crate) fn check(&self) -> Result<()> {
        check_models(&self.reference, &self.aligned)?;
        self.load.check_single_file(&self.reference)
    }

    /// Loads the reference and the aligned models.
    pub(crate) fn load(&self, options: &LoadOptions) -> Result<StableDiffusion> {
        StableDiffusion::load(&self.reference, &self.aligned, options)
            .with_context(|| load_failure(&self.reference, &self.aligned))
    }
}

/// Where and how the Stable Diffusion models are loaded.
#[derive(Debug, clap::Args)]
pub(crate) struct LoadArgs {
    /// Multiplier of every LoRA --aligned adapter (1: the adapter as trained, at its own
    /// alpha / rank scale).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub(crate) lora_scale: f64,
    /// Run the reference and each LoRA --aligned model in a UNet call of its own per step
    /// (their weights still shared) instead of one joint call: a lower peak memory for large
    /// images, the same results.
    #[arg(long)]
    pub(crate) separate_passes: bool,
    /// Weights dtype: f32, f16 or bf16 (bf16 needs a GPU).
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Device: cpu, cuda[:N] or metal[:N].
    #[arg(long, default_value = "cpu")]
    device: String,
    /// The tokenizers of a single-file --reference (one original-layout .safetensors file, which
    /// holds none): a diffusers pipeline folder with tokenizer/ (SDXL: and tokenizer_2/), or for
    /// SD 1.x / 2.x a tokenizer folder.
    #[arg(long, value_name = "DIR")]
    tokenizer: Option<PathBuf>,
    /// A diffusers pipeline folder whose configs (unet/, vae/, text_encoder*/config.json,
    /// scheduler/) replace the built-in templates of a single-file --reference, where it has them
    /// (as diffusers' from_single_file(config=...)); its tokenizers serve when --tokenizer is not
    /// given.
    #[arg(long, value_name = "DIR")]
    model_config: Option<PathBuf>,
    /// The prediction type of a single-file --reference (not recorded in its weights): epsilon,
    /// or v_prediction. Default: the family's, as diffusers takes it (SD 2.x v_prediction, for the
    /// 768-px models: an SD 2.x base checkpoint needs epsilon; SD 1.x and SDXL epsilon).
    #[arg(long, value_parser = ["epsilon", "v_prediction"])]
    prediction_type: Option<String>,
}

impl LoadArgs {
    /// `--dtype` and `--device`, checked to work together (before anything is loaded).
    pub(crate) fn dtype_and_device(&self) -> Result<(DType, Device)> {
        let dtype = parse_dtype(&self.dtype).usage_context(format!("--dtype {} is not a usable dtype", self.dtype))?;
        let device = device_option(&self.device)?;
        check_dtype_supported(dtype, &device)
            .usage_context(format!("--dtype {} cannot run on --device {}", self.dtype, self.device))?;
        Ok((dtype, device))
    }

    /// The loader's options on `dtype` and `device`, with `--lora-scale` checked finite.
    pub(crate) fn options(&self, dtype: DType, device: Device) -> Result<LoadOptions> {
        if !self.lora_scale.is_finite() {
            return Err(CliError::usage(format!("--lora-scale is {}; it must be a finite number", self.lora_scale)));
        }
        Ok(LoadOptions {
            dtype,
            device,
            lora_multiplier: self.lora_scale,
            joint_pass: !self.separate_passes,
            single_file: self.single_file(),
        })
    }

    /// The folders of `--tokenizer` and `--model-config`, each with its option (inputs a run
    /// must not overwrite).
    pub(crate) fn single_file_inputs(&self) -> Vec<(&'static str, &Path)> {
        [("--tokenizer", &self.tokenizer), ("--model-config", &self.model_config)]
            .into_iter()
            .filter_map(|(flag, p)| p.as_deref().map(|p| (flag, p)))
            .collect()
    }

    /// `--tokenizer`, `--model-config` and `--prediction-type` complete a single-file
    /// `reference`: given with a pipeline folder they would be ignored, so they are an error.
    pub(crate) fn check_single_file(&self, reference: &Path) -> Result<()> {
        let given = [
            ("--tokenizer", self.tokenizer.is_some()),
            ("--model-config", self.model_config.is_some()),
            ("--prediction-type", self.prediction_type.is_some()),
        ];
        let Some((flag, _)) = given.iter().find(|(_, g)| *g) else { return Ok(()) };
        if deradiff_sd::is_original_layout(reference) || !reference.is_dir() {
            return Ok(());
        }
        Err(CliError::usage(format!(
            "{flag} applies to a single-file --reference (one original-layout .safetensors file); {} is a \
             pipeline folder, whose own tokenizers, configs and scheduler are used: drop {flag}",
            reference.display()
        )))
    }

    /// How a single-file --reference is completed (`--tokenizer`, `--model-config`,
    /// `--prediction-type`).
    ///
    /// Hook for Hugging Face cache ids: without `--tokenizer` (and without a `--model-config`
    /// folder holding tokenizers), a single file's tokenizers are those of the diffusers
    /// pipeline `deradiff_sd::SingleFile::open(reference)?.family().diffusers_repo()`; once the
    /// HF cache resolver lands, resolve that repo id here (offline) and use its snapshot as
    /// `tokenizer`. Until then the loader's `Error::TokenizerNeeded` names the repo.
    pub(crate) fn single_file(&self) -> SingleFileOptions {
        SingleFileOptions {
            tokenizer: self.tokenizer.clone(),
            config: self.model_config.clone(),
            prediction_type: self.prediction_type.clone(),
        }
    }
}
