//! Single-file checkpoints in the original layout of Stable Diffusion's own code (CompVis LDM
//! for SD 1.x / 2.x, Stability's SGM for SDXL): `model.diffusion_model.*` (the UNet),
//! `first_stage_model.*` (the VAE), `cond_stage_model.transformer.*` (SD 1.x's CLIP, with
//! transformers' names), `cond_stage_model.model.*` (SD 2.x's open_clip, with its fused
//! `in_proj` q/k/v) or `conditioner.embedders.0.transformer.*` and
//! `conditioner.embedders.1.model.*` (SDXL's two encoders) — the files the web UIs and most
//! community fine-tunes ship.
//!
//! They load natively, as diffusers' `from_single_file` loads them: the family and architecture
//! are inferred from the tensors and the rest of the configs taken from built-in templates
//! (`templates`), and each tensor a model asks for under diffusers' name is served from the
//! memory-mapped file under its original name (`keys`; the renaming backend of
//! `crate::weights`): no converted copy is made, and open_clip's fused q/k/v are split by taking
//! rows of the mapped bytes. A tensor the model needs and the file lacks is an
//! [`Error::MissingTensor`] naming the original name (and diffusers'); tensors of a loaded part
//! that no model took, beyond those diffusers' conversion drops too (position ids, EMA copies,
//! schedule buffers, …), are an [`Error::UnknownTensors`] naming them.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};

use crate::clip::{ClipTextConfig, ClipTextModel};
use crate::config::{UnetConfig, VaeConfig};
use crate::error::{Error, Result};
use crate::unet::Unet;
use crate::vae::Vae;
use crate::weights::{sniff_safetensors, CheckedWeights, Part, Rename};

mod keys;
mod templates;

use keys::Projection;
pub use templates::SingleFileFamily;
use templates::{Shapes, SD1_CLIP, SD2_OPEN_CLIP, SDXL_CLIP, SDXL_OPEN_CLIP, UNET, VAE};

/// Whether `path` is a `.safetensors` file in the original layout (a tensor under
/// `model.diffusion_model.`). Anything that cannot be read as such is `false`: the diffusers
/// loaders then say what is wrong with it.
pub fn is_original_layout(path: &Path) -> bool {
    let safetensors = path.extension().is_some_and(|e| e == "safetensors");
    if !safetensors || !path.is_file() || sniff_safetensors(path).is_err() {
        return false;
    }
    // SAFETY: mapped read-only for its header; as everywhere with mmap, the file must not be
    // truncated by another process meanwhile.
    match unsafe { candle_core::safetensors::MmapedSafetensors::new(path) } {
        Ok(st) => st.tensors().iter().any(|(name, _)| name.starts_with(UNET)),
        Err(_) => false,
    }
}

/// Tensors that diffusers' conversion drops too: buffers (position ids, attention masks, CLIP's
/// logit scale), the EMA copy (diffusers extracts the non-EMA weights by default), the VAE's
/// training loss, and the noise-schedule buffers LDM / SGM save.
fn dropped_by_diffusers(name: &str) -> bool {
    const SCHEDULE: [&str; 14] = [
        "betas",
        "alphas_cumprod",
        "alphas_cumprod_prev",
        "sqrt_alphas_cumprod",
        "sqrt_one_minus_alphas_cumprod",
        "log_one_minus_alphas_cumprod",
        "sqrt_recip_alphas_cumprod",
        "sqrt_recipm1_alphas_cumprod",
        "posterior_variance",
        "posterior_log_variance_clipped",
        "posterior_mean_coef1",
        "posterior_mean_coef2",
        "logvar",
        "lvlb_weights",
    ];
    name.ends_with(".position_ids")
        || name.ends_with("logit_scale")
        || name.ends_with(".attn_mask")
        || name.starts_with("model_ema.")
        || name.starts_with("first_stage_model.loss.")
        || name.starts_with("denoiser.")
        || SCHEDULE.contains(&name)
}

/// An opened single-file checkpoint (memory-mapped; nothing is read until a part is loaded).
pub struct SingleFile {
    path: PathBuf,
    weights: Arc<CheckedWeights>,
    shapes: Shapes,
    family: SingleFileFamily,
    /// Stored names diffusers' conversion ignores for this checkpoint (SD 2.x's last open_clip
    /// block and projection).
    ignored: HashSet<String>,
}

impl std::fmt::Debug for SingleFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SingleFile").field("path", &self.path).field("family", &self.family).finish_non_exhaustive()
    }
}

impl SingleFile {
    /// Opens (memory-maps) `path` and infers its family: an [`Error`] when it is not a
    /// safetensors file, has no UNet under `model.diffusion_model.`, or is a model deradiff does
    /// not sample (inpainting, SDXL refiner, class-conditioned upscaler, …).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let weights = CheckedWeights::open(&[path.to_path_buf()])?;
        let shapes: Shapes = weights.names().filter_map(|n| Some((n.to_string(), weights.shape_of(n)?))).collect();
        let family = templates::family(&shapes, path)?;
        let mut ignored = HashSet::new();
        if family == SingleFileFamily::Sd2 {
            let blocks = (0..)
                .take_while(|n| {
                    shapes.contains_key(&format!("{SD2_OPEN_CLIP}transformer.resblocks.{n}.mlp.c_fc.weight"))
                })
                .count();
            let last = format!("{SD2_OPEN_CLIP}transformer.resblocks.{}.", blocks.saturating_sub(1));
            ignored.extend(shapes.keys().filter(|k| k.starts_with(&last)).cloned());
            ignored.insert(format!("{SD2_OPEN_CLIP}text_projection"));
        }
        Ok(Self { path: path.to_path_buf(), weights, shapes, family, ignored })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// SD 1.x, SD 2.x or SDXL, as inferred from the tensors.
    pub fn family(&self) -> SingleFileFamily {
        self.family
    }

    /// Whether the file holds the whole pipeline (VAE and text encoders), not only a UNet.
    pub fn has_pipeline(&self) -> bool {
        let has = |p: &str| self.shapes.keys().any(|k| k.starts_with(p));
        has(VAE) && (has(SD1_CLIP) || has(SD2_OPEN_CLIP) || has(SDXL_CLIP))
    }

    /// The UNet config: the family's template with the architecture read from the tensors.
    pub fn unet_config(&self) -> Result<UnetConfig> {
        templates::unet_config(&self.shapes, self.family, &self.path)
    }

    /// The VAE config: the family's template with the architecture read from the tensors.
    pub fn vae_config(&self) -> Result<VaeConfig> {
        Ok(templates::vae_config(&self.shapes, self.family, &self.path)?.0)
    }

    /// The configs of the text encoder(s): CLIP ViT-L's for SD 1.x, open_clip's for SD 2.x, both
    /// for SDXL (the second with its projection).
    pub fn text_configs(&self) -> Result<(ClipTextConfig, Option<ClipTextConfig>)> {
        let p = &self.path;
        Ok(match self.family {
            SingleFileFamily::Sd1 => (templates::clip_config(&self.shapes, SD1_CLIP, p)?, None),
            SingleFileFamily::Sd2 => (templates::open_clip_config(&self.shapes, SD2_OPEN_CLIP, self.family, p)?, None),
            SingleFileFamily::Sdxl => (
                templates::clip_config(&self.shapes, SDXL_CLIP, p)?,
                Some(templates::open_clip_config(&self.shapes, SDXL_OPEN_CLIP, self.family, p)?),
            ),
        })
    }

    /// The scheduler config of the family's diffusers pipeline (see [`SingleFileFamily`]: SD 2.x
    /// is taken as v-prediction, as diffusers does).
    pub fn scheduler_config(&self) -> deradiff_core::SchedulerConfig {
        templates::scheduler_config(self.family)
    }

    /// Loads the UNet with `config` (and its path, named in errors), or with the inferred one
    /// ([`Self::unet_config`]); then checks that no tensor under `model.diffusion_model.` was
    /// left over.
    pub fn load_unet(&self, config: Option<(&UnetConfig, &Path)>, dtype: DType, device: &Device) -> Result<Unet> {
        let layout = templates::unet_layout(&self.shapes, &self.path)?;
        let (config, config_path) = match config {
            Some((c, p)) => (c.clone(), p.to_path_buf()),
            None => (self.unet_config()?, self.path.clone()),
        };
        let rename: Arc<Rename> = Arc::new(move |name: &str| {
            keys::unet_original(name, &layout).map(|(k, part)| (format!("{UNET}{k}"), part))
        });
        let unet = Unet::from_renamed(&self.weights, rename, config, &config_path, dtype, device)?;
        self.check_leftovers(&[UNET], "under `model.diffusion_model.` (the UNet)")?;
        Ok(unet)
    }

    /// Loads the VAE with `config`, or with the inferred one ([`Self::vae_config`]).
    pub fn load_vae(&self, config: Option<(&VaeConfig, &Path)>, dtype: DType, device: &Device) -> Result<Vae> {
        let (_, levels) = templates::vae_config(&self.shapes, self.family, &self.path)?;
        let (config, config_path) = match config {
            Some((c, p)) => (c.clone(), p.to_path_buf()),
            None => (self.vae_config()?, self.path.clone()),
        };
        let rename: Arc<Rename> =
            Arc::new(move |name: &str| keys::vae_original(name, levels).map(|(k, part)| (format!("{VAE}{k}"), part)));
        let vae = Vae::from_renamed(&self.weights, rename, config, &config_path, dtype, device)?;
        self.check_leftovers(&[VAE], "under `first_stage_model.` (the VAE)")?;
        Ok(vae)
    }

    /// Loads the text model(s) with `configs` (first, and SDXL's second with its projection),
    /// checking each config's activation (`config_paths` name them in errors).
    pub fn load_text_models(
        &self,
        configs: (&ClipTextConfig, Option<&ClipTextConfig>),
        config_paths: (&Path, &Path),
        dtype: DType,
        device: &Device,
    ) -> Result<(ClipTextModel, Option<ClipTextModel>)> {
        let (first, second) = configs;
        let (first_path, second_path) = config_paths;
        first.validate(first_path)?;
        let act = first.activation(first_path)?;
        let model_1 = match self.family {
            SingleFileFamily::Sd1 | SingleFileFamily::Sdxl => {
                let prefix = if self.family == SingleFileFamily::Sd1 { SD1_CLIP } else { SDXL_CLIP };
                let rename: Arc<Rename> = Arc::new(move |name: &str| Some((format!("{prefix}{name}"), Part::Whole)));
                self.weights
                    .build_renamed(rename, dtype, device, Some("text_model"), |vb| ClipTextModel::new(vb, first, act))?
                    .0
            }
            SingleFileFamily::Sd2 => {
                let rename = self.open_clip_rename(SD2_OPEN_CLIP);
                self.weights
                    .build_renamed(rename, dtype, device, Some("text_model"), |vb| ClipTextModel::new(vb, first, act))?
                    .0
            }
        };
        let model_2 = match (self.family, second) {
            (SingleFileFamily::Sdxl, Some(c)) => {
                c.validate(second_path)?;
                let act = c.activation(second_path)?;
                let rename = self.open_clip_rename(SDXL_OPEN_CLIP);
                Some(
                    self.weights
                        .build_renamed(rename, dtype, device, None, |vb| {
                            ClipTextModel::new_with_projection(vb, c, act)
                        })?
                        .0,
                )
            }
            (SingleFileFamily::Sdxl, None) => {
                return Err(Error::InvalidArgument(
                    "SingleFile::load_text_models: an SDXL checkpoint needs the second text encoder's config".into(),
                ))
            }
            _ => None,
        };
        let prefixes: &[&str] = match self.family {
            SingleFileFamily::Sd1 => &[SD1_CLIP],
            SingleFileFamily::Sd2 => &[SD2_OPEN_CLIP],
            SingleFileFamily::Sdxl => &[SDXL_CLIP, SDXL_OPEN_CLIP],
        };
        self.check_leftovers(prefixes, "of the text encoder(s)")?;
        Ok((model_1, model_2))
    }

    /// The tensors `names` of a component (`"unet"`, `"vae"`, `"text_encoder"`,
    /// `"text_encoder_2"`: diffusers' folder names) under their diffusers / transformers names,
    /// as the loaders are served them (in `dtype`): what a diffusers-layout copy of the file
    /// would hold. A name with no stored tensor is an [`Error::MissingTensor`].
    pub fn diffusers_tensors(
        &self,
        component: &str,
        names: &[&str],
        dtype: DType,
    ) -> Result<std::collections::HashMap<String, candle_core::Tensor>> {
        let rename: Arc<Rename> = match (component, self.family) {
            ("unet", _) => {
                let layout = templates::unet_layout(&self.shapes, &self.path)?;
                Arc::new(move |name: &str| {
                    keys::unet_original(name, &layout).map(|(k, part)| (format!("{UNET}{k}"), part))
                })
            }
            ("vae", _) => {
                let (_, levels) = templates::vae_config(&self.shapes, self.family, &self.path)?;
                Arc::new(move |name: &str| {
                    keys::vae_original(name, levels).map(|(k, part)| (format!("{VAE}{k}"), part))
                })
            }
            ("text_encoder", SingleFileFamily::Sd1 | SingleFileFamily::Sdxl) => {
                let prefix = if self.family == SingleFileFamily::Sd1 { SD1_CLIP } else { SDXL_CLIP };
                Arc::new(move |name: &str| Some((format!("{prefix}{name}"), Part::Whole)))
            }
            ("text_encoder", SingleFileFamily::Sd2) => self.open_clip_rename(SD2_OPEN_CLIP),
            ("text_encoder_2", SingleFileFamily::Sdxl) => self.open_clip_rename(SDXL_OPEN_CLIP),
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "SingleFile::diffusers_tensors: a {} checkpoint has no component {component:?} (unet, vae, \
                     text_encoder{})",
                    self.family.describe(),
                    if self.family.has_second_encoder() { ", text_encoder_2" } else { "" }
                )))
            }
        };
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let (tensors, _) = self.weights.build_renamed(rename, dtype, &Device::Cpu, None, |vb| {
            names.iter().map(|n| Ok((n.clone(), vb.get_unchecked(n)?))).collect::<candle_core::Result<_>>()
        })?;
        Ok(tensors)
    }

    fn open_clip_rename(&self, prefix: &'static str) -> Arc<Rename> {
        let hidden =
            self.shapes.get(&format!("{prefix}token_embedding.weight")).and_then(|s| s.get(1)).copied().unwrap_or(0);
        let projection = if self.shapes.contains_key(&format!("{prefix}text_projection")) {
            Projection::OpenClip
        } else {
            Projection::Linear
        };
        Arc::new(move |name: &str| {
            keys::open_clip_original(name, hidden, projection).map(|(k, part)| (format!("{prefix}{k}"), part))
        })
    }

    /// Tensors under `prefixes` that no model took and diffusers would not drop either.
    fn leftovers(&self, prefixes: &[&str]) -> Vec<String> {
        let used = self.weights.used();
        let mut left: Vec<String> = self
            .shapes
            .keys()
            .filter(|k| prefixes.iter().any(|p| k.starts_with(p)))
            .filter(|k| !used.contains_key(*k) && !dropped_by_diffusers(k) && !self.ignored.contains(*k))
            .cloned()
            .collect();
        left.sort();
        left
    }

    /// An [`Error::UnknownTensors`] for [`Self::leftovers`], if any.
    fn check_leftovers(&self, prefixes: &[&str], what: &str) -> Result<()> {
        let left = self.leftovers(prefixes);
        if left.is_empty() {
            return Ok(());
        }
        Err(unknown(&self.path, what, &left))
    }

    /// After loading every part: tensors anywhere in the file that no part took (for a whole
    /// pipeline; a UNet-only load checks its own prefix only).
    pub(crate) fn check_all_used(&self) -> Result<()> {
        let left = self.leftovers(&[""]);
        if left.is_empty() {
            return Ok(());
        }
        Err(unknown(&self.path, "outside the UNet, VAE and text encoders", &left))
    }
}

fn unknown(path: &Path, what: &str, left: &[String]) -> Error {
    let mut names: Vec<String> = left.iter().take(8).map(|n| format!("`{n}`")).collect();
    if left.len() > 8 {
        names.push(format!("… ({} more)", left.len() - 8));
    }
    Error::UnknownTensors { file: path.to_path_buf(), what: what.into(), count: left.len(), names: names.join(", ") }
}
