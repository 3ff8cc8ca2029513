//! Loading a pipeline: a diffusers-layout reference directory checked (with a precise error for
//! a component folder given instead of the pipeline folder) and loaded with its aligned UNets or
//! LoRA adapters ([`StableDiffusion::load`]), or loaded parts assembled and checked against each
//! other ([`StableDiffusion::from_parts`], [`StableDiffusion::from_parts_sdxl`]).

use std::path::{Path, PathBuf};

use deradiff_core::SchedulerConfig;

use super::request::LoadOptions;
use super::{ModelSlot, StableDiffusion};
use crate::config::UnetConfig;
use crate::device::check_dtype_supported;
use crate::error::{Error, Result};
use crate::fs::{check_path, probe_path, read_text, Kind};
use crate::text::TextEncoder;
use crate::unet::Unet;
use crate::vae::Vae;

/// `dir` if it is a folder; [`Error::NotFound`] when nothing is there, [`Error::WrongKind`] when
/// something else is.
fn require_dir(dir: PathBuf, what: &str) -> Result<PathBuf> {
    check_path(&dir, Kind::Dir, what, None)?;
    Ok(dir)
}

/// What the reference must be.
const PIPELINE_FOLDER: &str = "the pipeline folder (with model_index.json, unet/, text_encoder/, tokenizer/, vae/, \
                               scheduler/), or one single-file checkpoint in the original layout (.safetensors)";

/// The component folders of a diffusers pipeline.
const COMPONENTS: [&str; 7] =
    ["unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"];

/// An [`Error::WrongKind`] when `root` (a folder without `unet/`) is a component folder of a
/// pipeline (`unet/`, `vae/`, `text_encoder/`, …) or looks like one: what it is, and the parent
/// to pass instead.
fn explain_component_folder(root: &Path) -> Result<()> {
    let has = |name: &str| std::fs::symlink_metadata(root.join(name)).is_ok();
    if has("unet") {
        return Ok(());
    }
    let full = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let name = full.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let weights_like = |stem: &str| {
        [".safetensors", ".fp16.safetensors", ".safetensors.index.json", ".bin"]
            .iter()
            .any(|ext| has(&format!("{stem}{ext}")))
    };
    let by_content = if has("config.json") && weights_like("diffusion_pytorch_model") {
        Some("a UNet or VAE folder (config.json + diffusion_pytorch_model weights)")
    } else if has("config.json") && weights_like("model") {
        Some("a text encoder folder (config.json + model weights)")
    } else if has("vocab.json") || has("merges.txt") || has("tokenizer.json") {
        Some("a tokenizer folder")
    } else if has("scheduler_config.json") {
        Some("a scheduler folder")
    } else {
        None
    };
    let parent = full.parent().filter(|p| p.join("model_index.json").is_file() || p.join("unet").is_dir());
    let found = match (COMPONENTS.contains(&name), by_content, parent) {
        (true, Some(_), _) | (true, None, Some(_)) => format!("the {name}/ folder of a pipeline"),
        (_, Some(kind), _) => format!("{kind}, not a pipeline folder"),
        _ => return Ok(()),
    };
    let expected = match parent {
        Some(p) => format!("{PIPELINE_FOLDER}: pass its parent, {}", p.display()),
        None => format!("{PIPELINE_FOLDER}: pass the pipeline folder that holds it"),
    };
    Err(Error::WrongKind { what: "reference model".into(), path: root.to_path_buf(), found, expected })
}

/// `force_zeros_for_empty_prompt` from a pipeline's `model_index.json` (diffusers' SDXL default,
/// true, when the file or the field is absent).
pub(super) fn read_force_zeros(root: &Path) -> Result<bool> {
    let path = root.join("model_index.json");
    if !probe_path(&path, Kind::File, "pipeline index", None)? {
        return Ok(true);
    }
    let text = read_text(&path, "pipeline index")?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::config(&path, e.to_string()))?;
    match json.get("force_zeros_for_empty_prompt") {
        None | Some(serde_json::Value::Null) => Ok(true),
        Some(serde_json::Value::Bool(b)) => Ok(*b),
        Some(other) => Err(Error::config_field(
            &path,
            "force_zeros_for_empty_prompt",
            format!("must be true, false or null, got {other}"),
        )),
    }
}

/// The reference's parts, loaded from a folder or a single file, before the aligned models.
pub(super) struct ReferenceParts {
    pub(super) unet: Unet,
    /// The UNet's config file (the single file itself where its config is a template), which
    /// an aligned bare weight file takes.
    pub(super) unet_config_path: PathBuf,
    pub(super) text_encoder: TextEncoder,
    pub(super) text_encoder_2: Option<TextEncoder>,
    pub(super) vae: Vae,
    pub(super) scheduler_config: SchedulerConfig,
    pub(super) force_zeros: bool,
}

impl StableDiffusion {
    /// Loads a diffusers-layout reference directory (`unet/`, `text_encoder/`, `tokenizer/`,
    /// `vae/`, `scheduler/scheduler_config.json`) — or one single-file checkpoint in the original
    /// layout ([`crate::SingleFile`], completed by [`LoadOptions::single_file`]) — and aligned
    /// UNets, each a pipeline directory, a UNet directory, a single UNet `.safetensors` file
    /// (which takes the reference's config), an original-layout single file (its UNet only), or a LoRA adapter of the reference UNet (a file or folder in the diffusers, peft
    /// or kohya layout, see [`crate::lora`]; scaled by [`LoadOptions::lora_multiplier`]). Every
    /// aligned UNet must have the reference's architecture. LoRA-aligned models share the
    /// reference's weights and run with it in one batched UNet pass per step
    /// ([`crate::JointGuided`]).
    ///
    /// SDXL is detected from `unet/config.json` (`addition_embed_type = "text_time"`): it also
    /// needs `text_encoder_2/` (`CLIPTextModelWithProjection`) and `tokenizer_2/`; its
    /// `model_index.json` may set `force_zeros_for_empty_prompt` (default true), and without a
    /// `scheduler/scheduler_config.json` SDXL's own ([`SchedulerConfig::stable_diffusion_xl`]) is
    /// used.
    pub fn load<P: AsRef<Path>>(reference: impl AsRef<Path>, aligned: &[P], options: &LoadOptions) -> Result<Self> {
        let root = reference.as_ref();
        let parts = if crate::single_file::is_original_layout(root) {
            super::single::load_reference(root, options)?
        } else {
            Self::load_reference_folder(root, options)?
        };
        Self::with_aligned(parts, aligned, options)
    }

    /// The parts of a diffusers-layout reference folder.
    fn load_reference_folder(root: &Path, options: &LoadOptions) -> Result<ReferenceParts> {
        check_path(root, Kind::Dir, "reference model", Some(PIPELINE_FOLDER))?;
        explain_component_folder(root)?;
        let unet_dir = require_dir(root.join("unet"), "reference UNet directory")?;
        let te_dir = require_dir(root.join("text_encoder"), "text encoder directory")?;
        let tok_dir = require_dir(root.join("tokenizer"), "tokenizer directory")?;
        let vae_dir = require_dir(root.join("vae"), "VAE directory")?;
        // A config that does not parse or check is reported by the UNet loader below.
        let unet_cfg = unet_dir.join("config.json");
        let is_sdxl = UnetConfig::from_file(&unet_cfg)
            .and_then(|c| c.arch(&unet_cfg))
            .map(|a| a.text_time.is_some())
            .unwrap_or(false);
        let sdxl_dirs = if is_sdxl {
            Some((
                require_dir(root.join("text_encoder_2"), "SDXL second text encoder directory (text_encoder_2)")?,
                require_dir(root.join("tokenizer_2"), "SDXL second tokenizer directory (tokenizer_2)")?,
            ))
        } else {
            None
        };
        let sched_path = root.join("scheduler").join("scheduler_config.json");
        let scheduler_config = if probe_path(&sched_path, Kind::File, "scheduler config", None)? {
            let text = read_text(&sched_path, "scheduler config")?;
            serde_json::from_str::<SchedulerConfig>(&text).map_err(|source| {
                Error::Core(deradiff_core::Error::ConfigFileParse { path: sched_path.clone(), source })
            })?
        } else if is_sdxl {
            SchedulerConfig::stable_diffusion_xl()
        } else {
            return Err(Error::NotFound { what: "scheduler config".into(), path: sched_path });
        };
        let (dtype, device) = (options.dtype, &options.device);
        check_dtype_supported(dtype, device)?;

        let unet = Unet::load(&unet_dir, None, dtype, device)?;
        let text_encoder = TextEncoder::load(&te_dir, &tok_dir, dtype, device)?;
        let vae = Vae::load(&vae_dir, dtype, device)?;
        let (text_encoder_2, force_zeros) = match sdxl_dirs {
            Some((te2_dir, tok2_dir)) => {
                (Some(TextEncoder::load_with_projection(&te2_dir, &tok2_dir, dtype, device)?), read_force_zeros(root)?)
            }
            None => (None, true),
        };
        Ok(ReferenceParts {
            unet,
            unet_config_path: unet_dir.join("config.json"),
            text_encoder,
            text_encoder_2,
            vae,
            scheduler_config,
            force_zeros,
        })
    }

    /// The pipeline of the reference's `parts` and the `aligned` models (UNets or LoRA
    /// adapters of the reference UNet).
    fn with_aligned<P: AsRef<Path>>(parts: ReferenceParts, aligned: &[P], options: &LoadOptions) -> Result<Self> {
        let (dtype, device) = (options.dtype, &options.device);
        let ReferenceParts {
            unet: reference_unet,
            unet_config_path: ref_cfg_path,
            text_encoder,
            text_encoder_2,
            vae,
            scheduler_config,
            force_zeros,
        } = parts;
        let mut aligned_unets = Vec::with_capacity(aligned.len());
        let mut adapters = Vec::new();
        let mut models = vec![ModelSlot { unet: 0, adapter: None }];
        for a in aligned {
            if crate::lora::looks_like_lora(a.as_ref()) {
                adapters.push(crate::lora::LoraAdapter::load(a, &reference_unet)?);
                models.push(ModelSlot { unet: 0, adapter: Some(adapters.len() - 1) });
            } else {
                let u = Unet::load(a, Some((reference_unet.config(), &ref_cfg_path)), dtype, device)?;
                reference_unet.check_same_architecture(&u)?;
                aligned_unets.push(u);
                models.push(ModelSlot { unet: aligned_unets.len(), adapter: None });
            }
        }
        let lora_multiplier = options.lora_multiplier;
        if !lora_multiplier.is_finite() {
            return Err(Error::InvalidArgument(format!(
                "LoadOptions::lora_multiplier is {lora_multiplier}; it must be a finite number"
            )));
        }
        let reference_unet = if adapters.is_empty() {
            reference_unet
        } else {
            let attached: Vec<(&crate::lora::LoraAdapter, f64)> =
                adapters.iter().map(|a| (a, options.lora_multiplier)).collect();
            reference_unet.with_adapters(&attached)?
        };
        let mut unets = vec![reference_unet];
        unets.extend(aligned_unets);
        let mut sd =
            Self::assemble(text_encoder, text_encoder_2, vae, unets, Some(models), scheduler_config, force_zeros)?;
        sd.adapters = adapters.into_iter().map(|a| a.scaled(lora_multiplier)).collect::<Result<_>>()?;
        sd.joint_pass = options.joint_pass;
        Ok(sd)
    }

    /// Assembles loaded SD 1.x / 2.x parts (reference UNet first), checking that they fit
    /// together (an SDXL UNet needs [`Self::from_parts_sdxl`]).
    pub fn from_parts(
        text_encoder: TextEncoder,
        vae: Vae,
        unets: Vec<Unet>,
        scheduler_config: SchedulerConfig,
    ) -> Result<Self> {
        Self::assemble(text_encoder, None, vae, unets, None, scheduler_config, true)
    }

    /// Assembles loaded SDXL parts: CLIP ViT-L (`text_encoder`), OpenCLIP ViT-bigG with its
    /// projection (`text_encoder_2`), the VAE, UNets with `text_time` conditioning (reference
    /// first), the scheduler config and `force_zeros_for_empty_prompt` (zero negative
    /// embeddings when no negative prompt is given, as diffusers' SDXL pipeline).
    pub fn from_parts_sdxl(
        text_encoder: TextEncoder,
        text_encoder_2: TextEncoder,
        vae: Vae,
        unets: Vec<Unet>,
        scheduler_config: SchedulerConfig,
        force_zeros_for_empty_prompt: bool,
    ) -> Result<Self> {
        Self::assemble(
            text_encoder,
            Some(text_encoder_2),
            vae,
            unets,
            None,
            scheduler_config,
            force_zeros_for_empty_prompt,
        )
    }

    fn assemble(
        text_encoder: TextEncoder,
        text_encoder_2: Option<TextEncoder>,
        vae: Vae,
        unets: Vec<Unet>,
        models: Option<Vec<ModelSlot>>,
        scheduler_config: SchedulerConfig,
        force_zeros_for_empty_prompt: bool,
    ) -> Result<Self> {
        let models = models.unwrap_or_else(|| (0..unets.len()).map(|unet| ModelSlot { unet, adapter: None }).collect());
        let reference = unets.first().ok_or_else(|| {
            Error::InvalidArgument(
                "StableDiffusion::from_parts / from_parts_sdxl: `unets` is empty; give the reference UNet first".into(),
            )
        })?;
        for u in &unets[1..] {
            reference.check_same_architecture(u)?;
        }
        match (reference.text_time(), &text_encoder_2) {
            (Some(_), None) => {
                return Err(Error::ModelMismatch(format!(
                    "{} is an SDXL UNet (text_time conditioning): it needs the second text encoder \
                     (text_encoder_2/ with tokenizer_2/)",
                    reference.source().display()
                )))
            }
            (None, Some(_)) => {
                return Err(Error::ModelMismatch(format!(
                    "{} is an SD 1.x / 2.x UNet (no text_time conditioning); a second text encoder is SDXL's",
                    reference.source().display()
                )))
            }
            (Some(tt), Some(te2)) => {
                let width = text_encoder.hidden_size() + te2.hidden_size();
                if width != reference.cross_attention_dim() {
                    return Err(Error::ModelMismatch(format!(
                        "the text encoders' hidden sizes {} + {} = {width} differ from the UNet's cross-attention \
                         dim {}",
                        text_encoder.hidden_size(),
                        te2.hidden_size(),
                        reference.cross_attention_dim()
                    )));
                }
                if te2.projection_dim() != Some(tt.pooled_dim) {
                    return Err(Error::ModelMismatch(format!(
                        "the UNet's add_embedding takes {}-wide pooled text embeddings but text_encoder_2 gives {}",
                        tt.pooled_dim,
                        te2.projection_dim().map_or("none (no text_projection)".into(), |d| d.to_string())
                    )));
                }
            }
            (None, None) => {}
        }
        if text_encoder_2.is_none() && text_encoder.hidden_size() != reference.cross_attention_dim() {
            return Err(Error::ModelMismatch(format!(
                "the text encoder's hidden size is {} but the UNet attends to {}-wide embeddings",
                text_encoder.hidden_size(),
                reference.cross_attention_dim()
            )));
        }
        if vae.latent_channels() != reference.in_channels() {
            return Err(Error::ModelMismatch(format!(
                "the VAE has {} latent channels but the UNet takes {}",
                vae.latent_channels(),
                reference.in_channels()
            )));
        }
        let dtype = reference.dtype();
        let device = reference.device().clone();
        Ok(Self {
            text_encoder,
            text_encoder_2,
            force_zeros_for_empty_prompt,
            vae,
            unets,
            models,
            adapters: Vec::new(),
            joint_pass: true,
            scheduler_config,
            dtype,
            device,
        })
    }
}
