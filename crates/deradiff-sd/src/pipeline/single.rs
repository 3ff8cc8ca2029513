//! A reference given as one original-layout `.safetensors` file ([`crate::SingleFile`]): its
//! UNet, VAE and text encoders from the file, its tokenizers (which no single file holds) from
//! [`SingleFileOptions::tokenizer`], its configs from the built-in templates or from
//! [`SingleFileOptions::config`].

use std::path::{Path, PathBuf};

use deradiff_core::SchedulerConfig;

use super::load::{read_force_zeros, ReferenceParts};
use super::request::LoadOptions;
use crate::clip::ClipTextConfig;
use crate::config::{UnetConfig, VaeConfig};
use crate::device::check_dtype_supported;
use crate::error::{Error, Result};
use crate::fs::{probe_path, read_text, Kind};
use crate::hub::{HubCache, RepoRef};
use crate::single_file::{SingleFile, SingleFileFamily};
use crate::text::TextEncoder;
use crate::tokenizer::ClipTokenizer;

/// How a single-file reference is completed ([`crate::LoadOptions::single_file`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SingleFileOptions {
    /// Where its tokenizers are: a diffusers pipeline folder with `tokenizer/` (and, for SDXL,
    /// `tokenizer_2/`), or for SD 1.x / 2.x a tokenizer folder itself (`vocab.json` +
    /// `merges.txt`, or `tokenizer.json`). Without it, the tokenizers of [`Self::config`], if
    /// that folder has them; else those of the family's diffusers pipeline
    /// ([`crate::SingleFileFamily::diffusers_repo`]) in the local Hugging Face cache, as
    /// diffusers' `from_single_file` takes them; without any, loading says which folders are
    /// needed.
    pub tokenizer: Option<PathBuf>,
    /// A diffusers pipeline folder whose configs replace the built-in templates, each where the
    /// folder has it (`unet/config.json`, `vae/config.json`, `text_encoder/config.json`,
    /// `text_encoder_2/config.json`, `scheduler/scheduler_config.json`, `model_index.json`), as
    /// diffusers' `from_single_file(path, config=folder)`: for a model whose head counts or norm
    /// groups are not its family's.
    pub config: Option<PathBuf>,
    /// The scheduler's `prediction_type` (`"epsilon"` or `"v_prediction"`), which no weight
    /// file records: by default the family's (ε for SD 1.x and SDXL; v for SD 2.x, as diffusers
    /// takes it, for the 768-px SD 2.x models: an SD 2.x *base* checkpoint needs `"epsilon"`).
    pub prediction_type: Option<String>,
}

impl SingleFileOptions {
    /// The scheduler config of the single-file checkpoint `file`: the override folder's
    /// `scheduler/scheduler_config.json` where [`Self::config`] has one, else the family's
    /// ([`SingleFile::scheduler_config`]), with [`Self::prediction_type`] applied.
    pub fn scheduler_config(&self, file: &SingleFile) -> Result<SchedulerConfig> {
        let mut config = match override_file(self, "scheduler/scheduler_config.json")? {
            Some(p) => {
                let text = read_text(&p, "scheduler config")?;
                serde_json::from_str::<SchedulerConfig>(&text)
                    .map_err(|source| Error::Core(deradiff_core::Error::ConfigFileParse { path: p.clone(), source }))?
            }
            None => file.scheduler_config(),
        };
        if let Some(prediction) = &self.prediction_type {
            if prediction != "epsilon" && prediction != "v_prediction" {
                return Err(Error::InvalidArgument(format!(
                    "SingleFileOptions::prediction_type is {prediction:?}; it must be \"epsilon\" or \"v_prediction\""
                )));
            }
            config.prediction_type = Some(prediction.clone());
        }
        Ok(config)
    }
}

/// `dir` if it is a folder.
fn folder(dir: PathBuf) -> Option<PathBuf> {
    dir.is_dir().then_some(dir)
}

/// The config file `name` in the override folder, if it is there.
fn override_file(options: &SingleFileOptions, name: &str) -> Result<Option<PathBuf>> {
    let Some(root) = &options.config else { return Ok(None) };
    let path = root.join(name);
    Ok(probe_path(&path, Kind::File, "model config", None)?.then_some(path))
}

/// The snapshot of `family`'s diffusers pipeline ([`SingleFileFamily::diffusers_repo`], at
/// `refs/main`) in the local Hugging Face cache ([`HubCache::from_env`]), if it is there with its
/// `tokenizer/` folder: where diffusers' `from_single_file` takes a single file's tokenizers from.
/// Offline; anything missing is `None` (the caller then names what is needed).
fn cached_pipeline(family: SingleFileFamily) -> Option<PathBuf> {
    let repo = RepoRef::parse(family.diffusers_repo()).ok()??;
    let snapshot = HubCache::from_env().ok()?.resolve(&repo).ok()?;
    snapshot.join("tokenizer").is_dir().then_some(snapshot)
}

/// The tokenizer folder(s) of a single file of `family`: `--tokenizer`, else the `--model-config`
/// folder's, else those of the family's diffusers pipeline in the Hugging Face cache.
fn tokenizer_dirs(
    file: &Path,
    family: SingleFileFamily,
    options: &SingleFileOptions,
) -> Result<(PathBuf, Option<PathBuf>)> {
    let source = options
        .tokenizer
        .clone()
        .or_else(|| options.config.clone().filter(|c| c.join("tokenizer").is_dir()))
        .or_else(|| cached_pipeline(family));
    let needs = if family.has_second_encoder() {
        "a folder with tokenizer/ and tokenizer_2/"
    } else {
        "a folder with tokenizer/, or a tokenizer folder (vocab.json + merges.txt)"
    };
    let needed = || Error::TokenizerNeeded {
        file: file.to_path_buf(),
        family: family.describe().into(),
        needs: needs.into(),
        repo: family.diffusers_repo().into(),
    };
    let dir = source.ok_or_else(needed)?;
    match folder(dir.join("tokenizer")) {
        Some(first) if family.has_second_encoder() => match folder(dir.join("tokenizer_2")) {
            Some(second) => Ok((first, Some(second))),
            None => Err(Error::NotFound {
                what: format!("SDXL's second tokenizer ({needs})"),
                path: dir.join("tokenizer_2"),
            }),
        },
        Some(first) => Ok((first, None)),
        None if family.has_second_encoder() => {
            Err(Error::NotFound { what: format!("SDXL's tokenizers ({needs})"), path: dir.join("tokenizer") })
        }
        None => Ok((dir, None)),
    }
}

/// The reference's parts from the single file `path`.
pub(super) fn load_reference(path: &Path, options: &LoadOptions) -> Result<ReferenceParts> {
    let (dtype, device) = (options.dtype, &options.device);
    let opts = &options.single_file;
    let file = SingleFile::open(path)?;
    if !file.has_pipeline() {
        return Err(Error::unsupported(
            path,
            "it holds a UNet only (no VAE under `first_stage_model.`, no text encoder): as the reference give a \
             whole single-file checkpoint or a pipeline folder; a UNet-only file can be an --aligned model",
        ));
    }
    let family = file.family();
    let (tok_1, tok_2) = tokenizer_dirs(path, family, opts)?;
    check_dtype_supported(dtype, device)?;

    let unet_override = override_file(opts, "unet/config.json")?;
    let unet_config = match &unet_override {
        Some(p) => UnetConfig::from_file(p)?,
        None => file.unet_config()?,
    };
    let unet_config_path = unet_override.unwrap_or_else(|| path.to_path_buf());
    let unet = file.load_unet(Some((&unet_config, &unet_config_path)), dtype, device)?;

    let vae = match override_file(opts, "vae/config.json")? {
        Some(p) => file.load_vae(Some((&VaeConfig::from_file(&p)?, &p)), dtype, device)?,
        None => file.load_vae(None, dtype, device)?,
    };

    // The templates' text configs only where the override folder has none (a model the templates
    // do not fit is refused only when nothing replaces them).
    let over_1 = override_file(opts, "text_encoder/config.json")?;
    let over_2 = if family.has_second_encoder() { override_file(opts, "text_encoder_2/config.json")? } else { None };
    let inferred = if over_1.is_none() || (family.has_second_encoder() && over_2.is_none()) {
        Some(file.text_configs()?)
    } else {
        None
    };
    let (config_1, path_1) = match (over_1, &inferred) {
        (Some(p), _) => (ClipTextConfig::from_file(&p)?, p),
        (None, Some((c, _))) => (c.clone(), path.to_path_buf()),
        (None, None) => return Err(Error::Internal("text configs inferred where no override is given")),
    };
    let second = match (family.has_second_encoder(), over_2, &inferred) {
        (false, _, _) => None,
        (true, Some(p), _) => Some((ClipTextConfig::from_file(&p)?, p)),
        (true, None, Some((_, c))) => c.clone().map(|c| (c, path.to_path_buf())),
        (true, None, None) => None,
    };
    let (model_1, model_2) = file.load_text_models(
        (&config_1, second.as_ref().map(|(c, _)| c)),
        (&path_1, second.as_ref().map_or(path, |(_, p)| p.as_path())),
        dtype,
        device,
    )?;
    file.check_all_used()?;

    let text_encoder = TextEncoder::new(ClipTokenizer::from_dir(&tok_1)?, model_1, dtype, device)?;
    let text_encoder_2 = match (model_2, tok_2) {
        (Some(model), Some(tok)) => Some(TextEncoder::new(ClipTokenizer::from_dir(&tok)?, model, dtype, device)?),
        _ => None,
    };

    let scheduler_config = opts.scheduler_config(&file)?;
    let force_zeros = match &opts.config {
        Some(root) => read_force_zeros(root)?,
        None => true,
    };
    Ok(ReferenceParts { unet, unet_config_path, text_encoder, text_encoder_2, vae, scheduler_config, force_zeros })
}
