//! The Stable Diffusion UNet (SD 1.x, 2.x and SDXL), configured from the checkpoint's own
//! `unet/config.json`.
//!
//! All of them run on our own model, split by part: `model` (the top level: diffusers'
//! `UNet2DConditionModel.forward`, with SDXL's added conditioning), `blocks` (resnets,
//! transformers, the down / mid / up levels), `layers` (group norm, convolution, linear,
//! attention, GEGLU feed-forward) and `embeddings` (sinusoidal timestep projection, timestep
//! embedding). Every linear, convolution, group norm (+ SiLU), GEGLU and attention runs the fused
//! kernels of `deradiff-kernels` on the CPU and candle's ops elsewhere.
//!
//! It is not candle-transformers' `UNet2DConditionModel` (only the weight names and block layout
//! are shared), which differs from diffusers where ours does not: our transformer feed-forward
//! uses diffusers' exact (erf) GELU (candle's uses the tanh approximation: 4e-5 off diffusers on
//! the tiny SDXL UNet's output, 6e-5 on the tiny SD 1.x one; ours about 1.5e-6), our resnets'
//! GroupNorms take `norm_num_groups` (candle's down and up blocks always use 32), and ours has
//! SDXL's `add_embedding`, which candle's ignores. The sinusoidal projections are computed in f32 and cast
//! to the model dtype, as diffusers does (candle computes them in the model dtype, which rounds
//! fractional Euler timesteps in f16).

mod blocks;
mod embeddings;
mod layers;
mod model;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{DType, Device, Shape, Tensor};

use crate::config::{check_path, config_path, probe_any, probe_path, Kind, TextTimeArch, UnetArch, UnetConfig};
use crate::error::{Error, Result};
use crate::guidance::{AddedConditioning, ConditionalModel};
use crate::pipeline::check_latent_size;
use crate::weights::{find_weight_files, shape_differences, CheckedWeights};
use model::UnetModel;

/// A loaded UNet with its config and the shapes of its weights: SD 1.x / 2.x or, when `unet/config.json` says `addition_embed_type = "text_time"`,
/// SDXL, which needs pooled text embeddings and `time_ids`
/// ([`Unet::forward_added`]).
pub struct Unet {
    model: Box<UnetModel>,
    config: UnetConfig,
    arch: UnetArch,
    source: PathBuf,
    /// The config file (or, for a UNet built over a `VarBuilder`, its `source`), for errors.
    config_path: PathBuf,
    shapes: HashMap<String, Shape>,
    dtype: DType,
    device: Device,
    forward_calls: AtomicUsize,
}

impl std::fmt::Debug for Unet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unet")
            .field("source", &self.source)
            .field("in_channels", &self.arch.in_channels)
            .field("out_channels", &self.arch.out_channels)
            .field("cross_attention_dim", &self.arch.cross_attention_dim)
            .field("dtype", &self.dtype)
            .finish_non_exhaustive()
    }
}

/// Where a UNet's weights and config are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnetLocation {
    /// The safetensors file(s).
    pub weights: Vec<PathBuf>,
    /// Its `config.json`, if it has one of its own.
    pub config: Option<PathBuf>,
}

impl UnetLocation {
    /// Resolves what a user gave:
    /// * a pipeline directory with a `unet/` subdirectory;
    /// * a UNet directory (`config.json` + `diffusion_pytorch_model[.fp16].safetensors` or shards);
    /// * a single `.safetensors` file (no config of its own: the reference's is used).
    ///
    /// Nothing at `path` is an [`Error::NotFound`]; anything else that is neither a folder nor a
    /// file (a FIFO, a device, a dangling link, a link loop, …) an [`Error::WrongKind`] saying
    /// what it is. The weights themselves are checked when they are opened.
    pub fn resolve(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let what = "UNet (directory or .safetensors file)";
        let expected = "a pipeline folder (with unet/), a UNet folder (config.json + \
                        diffusion_pytorch_model.safetensors) or a .safetensors file";
        match probe_any(path, what, expected)? {
            None => Err(Error::NotFound { what: what.into(), path: path.into() }),
            Some(Kind::File) => {
                let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
                if ext != "safetensors" {
                    return Err(Error::unsupported(
                        path,
                        "a single-file UNet must be a .safetensors file in the diffusers layout (pickle \
                         .bin / .ckpt files are not loaded)",
                    ));
                }
                Ok(Self { weights: vec![path.to_path_buf()], config: None })
            }
            Some(Kind::Dir) => {
                let unet = path.join("unet");
                let dir = if probe_path(&unet, Kind::Dir, "UNet folder of the pipeline", None)? {
                    unet
                } else {
                    path.to_path_buf()
                };
                let cfg = config_path(&dir);
                check_path(
                    &cfg,
                    Kind::File,
                    "UNet config (a pipeline directory needs unet/config.json, a UNet directory config.json)",
                    None,
                )?;
                let weights = find_weight_files(&dir, "diffusion_pytorch_model", "UNet")?;
                Ok(Self { weights, config: Some(cfg) })
            }
        }
    }
}

impl Unet {
    /// Loads a UNet from a pipeline directory, a UNet directory, or (with `fallback` — the
    /// reference's config and its path) a single safetensors file.
    pub fn load(
        path: impl AsRef<Path>,
        fallback: Option<(&UnetConfig, &Path)>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let path = path.as_ref();
        let loc = UnetLocation::resolve(path)?;
        let (config, cfg_path) = match (&loc.config, fallback) {
            (Some(p), _) => (UnetConfig::from_file(p)?, p.clone()),
            (None, Some((c, p))) => (c.clone(), p.to_path_buf()),
            (None, None) => {
                return Err(Error::InvalidArgument(format!(
                    "Unet::load: {} is a bare weight file and no fallback config was given; the reference UNet \
                     needs its config.json (give its directory)",
                    path.display()
                )))
            }
        };
        Self::from_files(&loc.weights, config, &cfg_path, dtype, device)
    }

    /// Loads weights `files` with `config` (whose path `config_path` is named in errors).
    pub fn from_files(
        files: &[PathBuf],
        config: UnetConfig,
        config_path: &Path,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        if files.is_empty() {
            return Err(Error::InvalidArgument(
                "Unet::from_files: `files` is empty; give the UNet's weight files".into(),
            ));
        }
        let arch = config.arch(config_path)?;
        let weights = CheckedWeights::open(files)?;
        let model = weights.build(dtype, device, None, |vb| UnetModel::new(vb, arch.clone()))?;
        let (source, shapes) = (weights.primary().to_path_buf(), weights.used());
        let mut unet = Self::assemble(model, config, arch, source, shapes, dtype, device);
        unet.config_path = config_path.to_path_buf();
        Ok(unet)
    }

    /// Builds a UNet with `config` over any `VarBuilder` (diffusers' weight names), for example
    /// one over random tensors for a benchmark of a full-size architecture without its checkpoint.
    /// `source` names the model in errors. Unlike [`Self::load`], the weight shapes are not
    /// recorded, so [`Self::check_same_architecture`] compares only the channels of such a model.
    pub fn from_var_builder(
        vb: candle_nn::VarBuilder,
        config: UnetConfig,
        source: impl Into<PathBuf>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let source = source.into();
        let arch = config.arch(&source)?;
        let vb = vb.set_dtype(dtype).set_device(device.clone());
        let model = UnetModel::new(vb, arch.clone())?;
        Ok(Self::assemble(model, config, arch, source, HashMap::new(), dtype, device))
    }

    /// The `Unet` around a built `model`; `shapes` are its weights' shapes as loaded.
    fn assemble(
        model: UnetModel,
        config: UnetConfig,
        arch: UnetArch,
        source: PathBuf,
        shapes: HashMap<String, Shape>,
        dtype: DType,
        device: &Device,
    ) -> Self {
        Self {
            model: Box::new(model),
            config,
            arch,
            config_path: source.clone(),
            source,
            shapes,
            dtype,
            device: device.clone(),
            forward_calls: AtomicUsize::new(0),
        }
    }

    /// The config it was built from.
    pub fn config(&self) -> &UnetConfig {
        &self.config
    }

    /// The checked architecture.
    pub fn arch(&self) -> &UnetArch {
        &self.arch
    }

    /// The (first) weight file.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The config file it was built from (the reference's for a bare weight file), as errors
    /// about its fields name it.
    pub(crate) fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Latent channels in.
    pub fn in_channels(&self) -> usize {
        self.arch.in_channels
    }

    /// Channels out.
    pub fn out_channels(&self) -> usize {
        self.arch.out_channels
    }

    /// Width of the text embeddings it attends to.
    pub fn cross_attention_dim(&self) -> usize {
        self.arch.cross_attention_dim
    }

    /// SDXL's added conditioning, if the UNet has it.
    pub fn text_time(&self) -> Option<TextTimeArch> {
        self.arch.text_time
    }

    /// The dtype of its weights.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device of its weights.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Forward passes run so far.
    pub fn forward_calls(&self) -> usize {
        self.forward_calls.load(Ordering::Relaxed)
    }

    /// Errors unless `other` has exactly the same weight names and shapes (and channels): a
    /// reference and an aligned model must be the same network with different weights.
    pub fn check_same_architecture(&self, other: &Unet) -> Result<()> {
        let io = |u: &Unet| (u.in_channels(), u.out_channels(), u.cross_attention_dim());
        if io(self) != io(other) {
            return Err(Error::ModelMismatch(format!(
                "{} has (in, out, cross-attention) channels {:?} but {} has {:?}",
                self.source.display(),
                io(self),
                other.source.display(),
                io(other)
            )));
        }
        let diff = shape_differences(&self.shapes, &other.shapes);
        if !diff.is_empty() {
            let shown: Vec<&str> = diff.iter().take(3).map(String::as_str).collect();
            return Err(Error::ModelMismatch(format!(
                "{} and {} are different architectures ({} tensors differ: {}{})",
                self.source.display(),
                other.source.display(),
                diff.len(),
                shown.join("; "),
                if diff.len() > 3 { "; …" } else { "" }
            )));
        }
        Ok(())
    }

    /// The model output for latents `x` `[B, in_channels, h, w]` at `timestep`, attending to
    /// `context` `[B, L, cross_attention_dim]` (SD 1.x / 2.x UNets; SDXL's needs
    /// [`Self::forward_added`]). Latents with a zero dimension or more than twice
    /// [`crate::StableDiffusion::MAX_LATENT_ELEMENTS`] elements, and a context without tokens, are
    /// an [`Error::ShapeMismatch`].
    pub fn forward(&self, x: &Tensor, timestep: f64, context: &Tensor) -> Result<Tensor> {
        self.forward_added(x, timestep, context, None)
    }

    /// As [`Self::forward`], with SDXL's added conditioning (pooled text embeddings `[B, P]` and
    /// `time_ids` `[B, 6]`), which an SDXL UNet requires and an SD 1.x / 2.x UNet refuses.
    pub fn forward_added(
        &self,
        x: &Tensor,
        timestep: f64,
        context: &Tensor,
        added: Option<&AddedConditioning>,
    ) -> Result<Tensor> {
        let in_channels = self.arch.in_channels;
        let latents_shape = || {
            Error::shape(
                format!("the latents given to Unet::forward for {}", self.source.display()),
                format!("[batch, {in_channels}, height, width]"),
                x.dims(),
            )
        };
        let (b, c, _h, _w) = x.dims4().map_err(|_| latents_shape())?;
        if c != in_channels {
            return Err(latents_shape());
        }
        check_latent_size(x.dims(), || format!("the latents given to Unet::forward for {}", self.source.display()))?;
        let ctx = context.dims();
        let ctx_elements = ctx.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        if ctx.len() != 3
            || ctx[0] != b
            || ctx[1] == 0
            || ctx[2] != self.arch.cross_attention_dim
            || ctx_elements.is_none()
        {
            return Err(Error::shape(
                format!("the text embeddings (context) given to Unet::forward for {}", self.source.display()),
                format!(
                    "[{b}, tokens ≥ 1, {}] (the latents' batch, the UNet's cross_attention_dim)",
                    self.arch.cross_attention_dim
                ),
                ctx,
            ));
        }
        if !timestep.is_finite() {
            return Err(Error::InvalidArgument(format!("Unet::forward: the timestep {timestep} is not finite")));
        }
        let out_dtype = x.dtype();
        let x = x.to_dtype(self.dtype)?;
        let context = context.to_dtype(self.dtype)?;
        let out = match (self.arch.text_time, added) {
            (None, None) => {
                self.forward_calls.fetch_add(1, Ordering::Relaxed);
                self.model.forward(&x, timestep, &context, None)?
            }
            (None, Some(_)) => {
                return Err(Error::ModelMismatch(format!(
                    "{} is an SD 1.x / 2.x UNet: it takes no pooled text embeddings or time_ids (call \
                     Unet::forward_added with None, or Unet::forward)",
                    self.source.display()
                )))
            }
            (Some(_), None) => {
                return Err(Error::ModelMismatch(format!(
                    "{} is an SDXL UNet (addition_embed_type = \"text_time\"): it needs pooled text embeddings \
                     and time_ids (Unet::forward_added)",
                    self.source.display()
                )))
            }
            (Some(tt), Some(a)) => {
                let (te, ti) = (a.text_embeds().dims(), a.time_ids().dims());
                if te != [b, tt.pooled_dim] {
                    return Err(Error::shape(
                        format!(
                            "the pooled text embeddings given to Unet::forward_added for {}",
                            self.source.display()
                        ),
                        format!("[{b}, {}] (the latents' batch, the UNet's pooled width)", tt.pooled_dim),
                        te,
                    ));
                }
                if ti != [b, tt.num_time_ids] {
                    return Err(Error::shape(
                        format!("the time_ids given to Unet::forward_added for {}", self.source.display()),
                        format!("[{b}, {}] (original size, crop top-left, target size)", tt.num_time_ids),
                        ti,
                    ));
                }
                self.forward_calls.fetch_add(1, Ordering::Relaxed);
                self.model.forward(&x, timestep, &context, Some((a.text_embeds(), a.time_ids())))?
            }
        };
        Ok(out.to_dtype(out_dtype)?)
    }
}

impl ConditionalModel for Unet {
    fn forward_conditional(&self, x: &Tensor, timestep: f64, context: &Tensor) -> Result<Tensor> {
        self.forward(x, timestep, context)
    }

    fn forward_added(
        &self,
        x: &Tensor,
        timestep: f64,
        context: &Tensor,
        added: Option<&AddedConditioning>,
    ) -> Result<Tensor> {
        Unet::forward_added(self, x, timestep, context, added)
    }
}
