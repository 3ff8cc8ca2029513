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

mod adapters;
mod blocks;
mod embeddings;
mod layers;
mod load;
mod model;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{DType, Device, Shape, Tensor};

use crate::conditioning::{AddedConditioning, ConditionalModel};
use crate::config::{TextTimeArch, UnetArch, UnetConfig};
use crate::error::{Error, Result};
use crate::limits::check_latent_size;
use crate::weights::shape_differences;
pub use adapters::{AdapterView, GroupedView, RowGroup};
pub(crate) use layers::LowRank;
use layers::{LayerMut, Rows};
pub use load::UnetLocation;
use model::UnetModel;

/// A loaded UNet with its config and the shapes of its weights: SD 1.x / 2.x or, when `unet/config.json` says `addition_embed_type = "text_time"`,
/// SDXL, which needs pooled text embeddings and `time_ids`
/// ([`Unet::forward_added`]).
pub struct Unet {
    model: Box<UnetModel>,
    /// Weight shape of every linear and convolution layer (as files store it), by module path.
    layers: BTreeMap<String, Vec<usize>>,
    /// Adapters attached for joint passes ([`Unet::with_adapters`]).
    adapters: usize,
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

impl Unet {
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

    /// The weight shape of every linear and convolution layer (as the files store it: 1×1
    /// convolution projections as `[out, in, 1, 1]`), by diffusers module path: what a LoRA
    /// adapter may adapt ([`crate::lora::LoraAdapter::check`]).
    pub fn layer_shapes(&self) -> &BTreeMap<String, Vec<usize>> {
        &self.layers
    }

    /// The weight of every linear and convolution layer in the shape the files store it (as
    /// [`Self::layer_shapes`] gives it), by diffusers module path; the tensors are shared with
    /// the model, not copied. Attached adapters are not included.
    pub fn layer_weights(&self) -> Result<BTreeMap<String, Tensor>> {
        let mut model = (*self.model).clone();
        let mut out = BTreeMap::new();
        model.visit(&mut |path, layer| {
            match layer {
                LayerMut::Linear(l) => out.insert(path, l.weight.reshape(l.file_shape())?),
                LayerMut::Conv(c) => out.insert(path, c.weight.clone()),
                LayerMut::Norm { .. } => None,
            };
            Ok(())
        })?;
        Ok(out)
    }

    /// The parameters a LoRA cannot adapt, by tensor name (`<path>.bias` of the linear and
    /// convolution layers, `<path>.weight` and `<path>.bias` of the group and layer norms);
    /// shared with the model, not copied.
    pub fn other_parameters(&self) -> Result<BTreeMap<String, Tensor>> {
        let mut model = (*self.model).clone();
        let mut out = BTreeMap::new();
        model.visit(&mut |path, layer| {
            let (weight, bias) = match layer {
                LayerMut::Linear(l) => (None, l.bias.clone()),
                LayerMut::Conv(c) => (None, Some(c.bias.clone())),
                LayerMut::Norm { weight, bias } => (Some(weight.clone()), bias.cloned()),
            };
            if let Some(w) = weight {
                out.insert(format!("{path}.weight"), w);
            }
            if let Some(b) = bias {
                out.insert(format!("{path}.bias"), b);
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// The number of adapters attached for joint passes ([`Self::with_adapters`]).
    pub fn num_adapters(&self) -> usize {
        self.adapters
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
        self.forward_rows(x, timestep, context, added, &[])
    }

    /// One pass over a batch whose rows belong to several models: consecutive `groups`, each
    /// running the base weights (`adapter: None`) or those of an adapter attached with
    /// [`Self::with_adapters`] (its index). Every adapted layer runs its base GEMM once over all
    /// rows and adds each adapter's low-rank delta to that adapter's rows only, so the result
    /// equals running each group through its merged UNet ([`Self::merged_with`]) on its own.
    /// No groups: every row runs the base weights ([`Self::forward_added`]).
    pub fn forward_rows(
        &self,
        x: &Tensor,
        timestep: f64,
        context: &Tensor,
        added: Option<&AddedConditioning>,
        groups: &[RowGroup],
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
        if !groups.is_empty() {
            let total = groups.iter().try_fold(0usize, |n, g| n.checked_add(g.rows));
            if total != Some(b) {
                return Err(Error::shape(
                    format!("the row groups given to Unet::forward_rows for {}", self.source.display()),
                    format!("groups whose rows add up to the batch, {b}"),
                    &groups.iter().map(|g| g.rows).collect::<Vec<_>>(),
                ));
            }
            if let Some(g) = groups.iter().find(|g| g.adapter.is_some_and(|k| k >= self.adapters)) {
                return Err(Error::InvalidArgument(format!(
                    "Unet::forward_rows: a row group asks for adapter {} but {} has {} attached (Unet::with_adapters)",
                    g.adapter.unwrap_or(0),
                    self.source.display(),
                    self.adapters
                )));
            }
        }
        let rows = Rows(groups);
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
                self.model.forward(&x, timestep, &context, None, rows)?
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
                self.model.forward(&x, timestep, &context, Some((a.text_embeds(), a.time_ids())), rows)?
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
