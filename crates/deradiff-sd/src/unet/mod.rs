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

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{DType, Device, Shape, Tensor};

use crate::config::{check_path, config_path, probe_any, probe_path, Kind, TextTimeArch, UnetArch, UnetConfig};
use crate::error::{Error, Result};
use crate::guidance::{AddedConditioning, ConditionalModel};
use crate::lora::LoraAdapter;
use crate::pipeline::check_latent_size;
use crate::weights::{find_weight_files, shape_differences, CheckedWeights};
use layers::{LayerMut, LowRank, Rows};
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
        mut model: UnetModel,
        config: UnetConfig,
        arch: UnetArch,
        source: PathBuf,
        shapes: HashMap<String, Shape>,
        dtype: DType,
        device: &Device,
    ) -> Self {
        let layers = layer_shapes(&mut model);
        Self {
            model: Box::new(model),
            layers,
            adapters: 0,
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

    /// The weight shape of every linear and convolution layer (as the files store it: 1×1
    /// convolution projections as `[out, in, 1, 1]`), by diffusers module path: what a LoRA
    /// adapter may adapt ([`LoraAdapter::check`]).
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

    /// This UNet with `adapter` merged into its weights: every adapted layer's weight becomes
    /// `W + multiplier · scale · up · down` (computed in f32, stored in the UNet's dtype). The
    /// other weights are shared with `self`, not copied. A multiplier of 1 gives the aligned
    /// model; other values realign in weight space (the "rewarded soups" baseline). Attached
    /// adapters are not carried over. Errors when the adapter does not fit this UNet, naming its
    /// key.
    pub fn merged_with(&self, adapter: &LoraAdapter, multiplier: f64) -> Result<Unet> {
        if !multiplier.is_finite() {
            return Err(Error::InvalidArgument(format!(
                "Unet::merged_with: the multiplier {multiplier} is not finite"
            )));
        }
        adapter.check(&self.layers)?;
        let mut model = (*self.model).clone();
        let (dtype, device) = (self.dtype, self.device.clone());
        model.visit(&mut |path, layer| {
            let adapters = match layer {
                LayerMut::Linear(l) => {
                    if let Some(a) = adapter.layers().get(&path) {
                        let delta = a.delta(multiplier)?.to_device(&device)?.reshape(l.weight.shape())?;
                        l.weight = merge(&l.weight, &delta, dtype)?;
                    }
                    &mut l.adapters
                }
                LayerMut::Conv(c) => {
                    if let Some(a) = adapter.layers().get(&path) {
                        let delta = a.delta(multiplier)?.to_device(&device)?;
                        c.weight = merge(&c.weight, &delta, dtype)?;
                    }
                    &mut c.adapters
                }
                LayerMut::Norm { .. } => return Ok(()),
            };
            adapters.clear();
            Ok(())
        })?;
        let mut unet = self.derived(model, adapter.source().to_path_buf());
        unet.adapters = 0;
        Ok(unet)
    }

    /// This UNet with `adapters` attached, unmerged, for joint passes
    /// ([`Self::forward_rows`]): adapter `k` (with its multiplier) serves the rows of groups with
    /// `adapter: Some(k)`. The base weights are shared with `self`. Replaces adapters attached
    /// before. Errors when an adapter does not fit this UNet, naming its key.
    pub fn with_adapters(&self, adapters: &[(&LoraAdapter, f64)]) -> Result<Unet> {
        for (adapter, multiplier) in adapters {
            if !multiplier.is_finite() {
                return Err(Error::InvalidArgument(format!(
                    "Unet::with_adapters: the multiplier {multiplier} of {} is not finite",
                    adapter.source().display()
                )));
            }
            adapter.check(&self.layers)?;
        }
        let mut model = (*self.model).clone();
        let (dtype, device) = (self.dtype, self.device.clone());
        model.visit(&mut |path, layer| {
            let low_rank = |conv: bool| -> Result<Vec<Option<LowRank>>> {
                adapters
                    .iter()
                    .map(|(adapter, multiplier)| {
                        let Some(a) = adapter.layers().get(&path) else { return Ok(None) };
                        let r = a.rank();
                        let up = a.up.to_dtype(DType::F32)?.affine(multiplier * a.scale(), 0.0)?;
                        let (down, up) = if conv {
                            (a.down.clone(), up.reshape((up.dims()[0], r, 1, 1))?)
                        } else {
                            (a.down.reshape((r, ()))?, up.reshape((up.dims()[0], r))?)
                        };
                        let prepare = |t: Tensor| -> Result<Tensor> { Ok(t.to_dtype(dtype)?.to_device(&device)?) };
                        Ok(Some(LowRank { down: prepare(down)?, up: prepare(up)? }))
                    })
                    .collect()
            };
            match layer {
                LayerMut::Linear(l) => l.adapters = low_rank(false)?,
                LayerMut::Conv(c) => c.adapters = low_rank(true)?,
                LayerMut::Norm { .. } => {}
            }
            Ok(())
        })?;
        let mut unet = self.derived(model, self.source.clone());
        unet.adapters = adapters.len();
        Ok(unet)
    }

    /// A view running the rows of one model of a joint UNet: the base weights (`None`) or
    /// attached adapter `k`, as a [`ConditionalModel`] (for [`crate::Guided`]).
    pub fn adapter_view(&self, adapter: Option<usize>) -> AdapterView<'_> {
        AdapterView { unet: self, adapter }
    }

    /// A UNet sharing this one's config with another model.
    fn derived(&self, model: UnetModel, source: PathBuf) -> Unet {
        Unet {
            model: Box::new(model),
            layers: self.layers.clone(),
            adapters: self.adapters,
            config: self.config.clone(),
            arch: self.arch.clone(),
            source,
            config_path: self.config_path.clone(),
            shapes: self.shapes.clone(),
            dtype: self.dtype,
            device: self.device.clone(),
            forward_calls: AtomicUsize::new(0),
        }
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

/// One model's consecutive rows in a joint batch ([`Unet::forward_rows`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowGroup {
    /// The attached adapter these rows run ([`Unet::with_adapters`]); `None`: the base weights.
    pub adapter: Option<usize>,
    /// How many consecutive rows.
    pub rows: usize,
}

/// One model of a joint UNet ([`Unet::adapter_view`]): every row runs the base weights or one
/// attached adapter.
#[derive(Clone, Copy, Debug)]
pub struct AdapterView<'a> {
    unet: &'a Unet,
    adapter: Option<usize>,
}

impl<'a> AdapterView<'a> {
    /// The UNet.
    pub fn unet(&self) -> &'a Unet {
        self.unet
    }

    /// The attached adapter its rows run (`None`: the UNet's own weights).
    pub fn adapter(&self) -> Option<usize> {
        self.adapter
    }
}

impl ConditionalModel for AdapterView<'_> {
    fn forward_conditional(&self, x: &Tensor, timestep: f64, context: &Tensor) -> Result<Tensor> {
        self.forward_added(x, timestep, context, None)
    }

    fn forward_added(
        &self,
        x: &Tensor,
        timestep: f64,
        context: &Tensor,
        added: Option<&AddedConditioning>,
    ) -> Result<Tensor> {
        let rows = x.dims().first().copied().unwrap_or(0);
        self.unet.forward_rows(x, timestep, context, added, &[RowGroup { adapter: self.adapter, rows }])
    }
}

/// Consecutive row groups of a joint UNet, each running the base weights or one attached adapter
/// ([`Unet::grouped_view`]), as a [`ConditionalModel`]: a batch of `n · Σ rows` rows runs the
/// groups `n` times over (classifier-free guidance stacks `[uncond; cond]`, each in the groups'
/// order). The weight-space sweep runs one λ per group this way.
#[derive(Clone, Debug)]
pub struct GroupedView<'a> {
    unet: &'a Unet,
    groups: Vec<RowGroup>,
    rows: usize,
}

impl Unet {
    /// A [`GroupedView`] of `groups` (each `adapter` attached, each `rows > 0`).
    pub fn grouped_view(&self, groups: Vec<RowGroup>) -> Result<GroupedView<'_>> {
        if groups.is_empty() || groups.iter().any(|g| g.rows == 0) {
            return Err(Error::InvalidArgument(
                "Unet::grouped_view: give at least one group, each of at least one row".into(),
            ));
        }
        if let Some(k) = groups.iter().filter_map(|g| g.adapter).find(|&k| k >= self.adapters) {
            return Err(Error::InvalidArgument(format!(
                "Unet::grouped_view: adapter {k} is not attached ({} attached)",
                self.adapters
            )));
        }
        let rows = groups
            .iter()
            .try_fold(0usize, |n, g| n.checked_add(g.rows))
            .ok_or_else(|| Error::InvalidArgument("Unet::grouped_view: the groups' rows overflow".into()))?;
        Ok(GroupedView { unet: self, groups, rows })
    }
}

impl ConditionalModel for GroupedView<'_> {
    fn forward_conditional(&self, x: &Tensor, timestep: f64, context: &Tensor) -> Result<Tensor> {
        self.forward_added(x, timestep, context, None)
    }

    fn forward_added(
        &self,
        x: &Tensor,
        timestep: f64,
        context: &Tensor,
        added: Option<&AddedConditioning>,
    ) -> Result<Tensor> {
        let batch = x.dims().first().copied().unwrap_or(0);
        if batch == 0 || !batch.is_multiple_of(self.rows) {
            return Err(Error::shape(
                "the latents given to a grouped view of a joint UNet",
                format!("[a multiple of {} rows (its groups), channels, height, width]", self.rows),
                x.dims(),
            ));
        }
        let groups: Vec<RowGroup> = (0..batch / self.rows).flat_map(|_| self.groups.iter().copied()).collect();
        self.unet.forward_rows(x, timestep, context, added, &groups)
    }
}

/// The weight shapes of the model's linear and convolution layers, by module path.
fn layer_shapes(model: &mut UnetModel) -> BTreeMap<String, Vec<usize>> {
    let mut layers = BTreeMap::new();
    let _ = model.visit(&mut |path, layer| {
        match layer {
            LayerMut::Linear(l) => layers.insert(path, l.file_shape()),
            LayerMut::Conv(c) => layers.insert(path, c.weight.dims().to_vec()),
            LayerMut::Norm { .. } => None,
        };
        Ok(())
    });
    layers
}

/// `weight + delta` in f32, stored as `dtype`.
fn merge(weight: &Tensor, delta: &Tensor, dtype: DType) -> Result<Tensor> {
    Ok((weight.to_dtype(DType::F32)? + delta.to_dtype(DType::F32)?)?.to_dtype(dtype)?)
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
