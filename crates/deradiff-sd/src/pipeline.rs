//! The realigned text-to-image pipeline: a reference checkpoint, aligned UNets, one text
//! encoding, the realigned sampling loop of deradiff-core, one VAE decode.
//!
//! The UNets are our own ([`crate::unet`]), the text encoders our CLIP ([`crate::clip`]), the VAE
//! candle-transformers' `AutoEncoderKL` ([`crate::Vae`]). [`StableDiffusion::generate`] does it
//! all; to reuse one text encoding for several runs, [`StableDiffusion::encode`] a [`Request`]
//! and give the [`EncodedRequest`] to [`StableDiffusion::sample`] with that request (or one that
//! differs only in its steps, scheduler, seed or guidance scale), then
//! [`StableDiffusion::decode`].

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use deradiff_core::{
    Denoiser, NoiseSource, Observer, Realigner, SampleOutput, Sampler, SchedulerConfig, SchedulerKind, SeededNoise,
};

use crate::config::{check_path, probe_path, read_text, Kind, UnetConfig};
use crate::device::check_dtype_supported;
use crate::error::{Error, Result};
use crate::guidance::{AddedConditioning, GuidanceScale, Guided, PromptEmbeddings};
use crate::image::RgbImage;
use crate::text::TextEncoder;
use crate::unet::Unet;
use crate::vae::Vae;

/// dtype and device the models are loaded in.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// f32 (default), f16 or bf16 (bf16 needs a GPU in candle 0.11).
    pub dtype: DType,
    /// CPU (default), CUDA or Metal (see [`crate::parse_device`]).
    pub device: Device,
    /// The multiplier of every LoRA-aligned model (1, the default: the adapter as trained, at
    /// its own `alpha / rank` scale).
    pub lora_multiplier: f64,
    /// Whether the reference and the LoRA-aligned models run in one UNet call per step (true,
    /// the default) or each in a call of its own (their weights shared either way): separate
    /// calls hold one model's activations at a time, a lower peak memory for large images
    /// (`docs/lora.md` has the measurements).
    pub joint_pass: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { dtype: DType::F32, device: Device::Cpu, lora_multiplier: 1.0, joint_pass: true }
    }
}

/// Where one model of a pipeline lives: a loaded UNet, with one of its attached LoRA adapters
/// or its own weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ModelSlot {
    unet: usize,
    adapter: Option<usize>,
}

/// What to generate: prompts and sampling settings (the models and the realigner are given
/// separately).
///
/// The settings whose default depends on the checkpoint are `Option`s whose `None` means the
/// loaded pipeline's default: [`Request::guidance_scale`] (7.5 for SD 1.x / 2.x, 5.0 for SDXL:
/// [`StableDiffusion::default_guidance_scale`]), the image size
/// ([`StableDiffusion::default_size`]) and SDXL's micro-conditioning and
/// [`Request::force_zeros_for_empty_prompt`].
///
/// ```
/// use deradiff_core::SchedulerKind;
/// let request = deradiff_sd::Request {
///     prompts: vec!["an astronaut riding a horse".into()],
///     scheduler: SchedulerKind::Ddim { eta: 0.0 },
///     steps: 30,
///     seed: 42,
///     ..Default::default()
/// };
/// // The checkpoint's default guidance: 7.5 for SD 1.5, 5.0 for SDXL.
/// assert_eq!(request.guidance_scale, None);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// One image (or [`Request::images_per_prompt`] images) per prompt.
    pub prompts: Vec<String>,
    /// The negative prompt for every prompt (`None`: the empty prompt, as diffusers).
    pub negative_prompt: Option<String>,
    /// Images per prompt (diffusers' `num_images_per_prompt`), default 1.
    pub images_per_prompt: usize,
    /// The sampler, default Euler ancestral (the paper's SD 1.5 setting).
    pub scheduler: SchedulerKind,
    /// Inference steps, default 50.
    pub steps: usize,
    /// Classifier-free guidance scale (`<= 1` turns guidance off, as in diffusers); `None`
    /// (the default): the checkpoint's, diffusers' default for its pipeline — 7.5 for SD 1.x /
    /// 2.x, 5.0 for SDXL ([`StableDiffusion::default_guidance_scale`],
    /// [`StableDiffusion::guidance_scale`]).
    pub guidance_scale: Option<f64>,
    /// Seed of the initial latent and of every step's noise, default 0.
    pub seed: u64,
    /// Image height in pixels (default: the UNet's `sample_size` × the VAE's scale factor).
    pub height: Option<usize>,
    /// Image width in pixels (default as the height).
    pub width: Option<usize>,
    /// SDXL micro-conditioning: the original image size `(height, width)` (default: the image
    /// size, as diffusers).
    pub original_size: Option<(usize, usize)>,
    /// SDXL micro-conditioning: the crop's top-left corner `(top, left)` (default `(0, 0)`).
    pub crop_top_left: (usize, usize),
    /// SDXL micro-conditioning: the target size `(height, width)` (default: the image size).
    pub target_size: Option<(usize, usize)>,
    /// SDXL: whether the negative embeddings are zeros when there is no negative prompt
    /// (diffusers' `force_zeros_for_empty_prompt`); `None` (the default): the checkpoint's
    /// setting ([`StableDiffusion::force_zeros_for_empty_prompt`], from its `model_index.json`).
    /// SD 1.x / 2.x always encode the empty prompt: `Some(true)` is an error for them.
    pub force_zeros_for_empty_prompt: Option<bool>,
}

impl Default for Request {
    fn default() -> Self {
        Self {
            prompts: Vec::new(),
            negative_prompt: None,
            images_per_prompt: 1,
            scheduler: SchedulerKind::EulerAncestral,
            steps: 50,
            guidance_scale: None,
            seed: 0,
            height: None,
            width: None,
            original_size: None,
            crop_top_left: (0, 0),
            target_size: None,
            force_zeros_for_empty_prompt: None,
        }
    }
}

/// The result of [`StableDiffusion::generate`].
#[derive(Debug, Clone)]
pub struct Generation {
    /// One image per sample, prompt-major (`prompt 0` × images per prompt, then `prompt 1`, …).
    pub images: Vec<RgbImage>,
    /// The final latents `[batch, channels, h, w]` as the sampler produces them (the VAE's
    /// latents × its `scaling_factor`: what [`Vae::decode`] takes).
    pub latents: Tensor,
    /// Steps taken.
    pub steps_taken: usize,
    /// Whether an observer stopped the run early.
    pub stopped_early: bool,
}

/// A reference Stable Diffusion checkpoint (SD 1.x / 2.x, or SDXL with its two text encoders
/// and micro-conditioning) and aligned UNets sharing its text encoder(s) and VAE.
///
/// ```no_run
/// use deradiff_core::{NoObserver, Realigner};
/// use deradiff_sd::{LoadOptions, Request, StableDiffusion};
///
/// let sd = StableDiffusion::load("stable-diffusion-v1-5", &["dpo-sd1.5-text2image-v1"], &LoadOptions::default())?;
/// let request = Request { prompts: vec!["a red cube on a table".into()], steps: 30, ..Default::default() };
/// let out = sd.generate(&request, &Realigner::two_model(0.5)?, &mut NoObserver)?;
/// out.images[0].save_png("cube.png")?;
/// # Ok::<(), deradiff_sd::Error>(())
/// ```
#[derive(Debug)]
pub struct StableDiffusion {
    text_encoder: TextEncoder,
    /// SDXL's second text encoder (OpenCLIP ViT-bigG with projection).
    text_encoder_2: Option<TextEncoder>,
    force_zeros_for_empty_prompt: bool,
    vae: Vae,
    unets: Vec<Unet>,
    /// The models in realigner order (reference first): a full UNet, or the reference with a
    /// LoRA adapter.
    models: Vec<ModelSlot>,
    /// The LoRA adapters attached to the reference UNet, by adapter index.
    adapters: Vec<crate::LoraAdapter>,
    /// [`LoadOptions::joint_pass`].
    joint_pass: bool,
    scheduler_config: SchedulerConfig,
    dtype: DType,
    device: Device,
}

/// An error unless `dims` (latents `[batch, channels, height, width]` as the UNet or the VAE
/// takes them) is non-empty and has at most twice [`StableDiffusion::MAX_LATENT_ELEMENTS`]
/// elements (classifier-free guidance doubles the batch), computed without overflow: an
/// [`Error::ShapeMismatch`] with `context` (the argument and the function) otherwise.
pub(crate) fn check_latent_size(dims: &[usize], context: impl FnOnce() -> String) -> Result<()> {
    let limit = 2 * StableDiffusion::MAX_LATENT_ELEMENTS;
    let elements = dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    match elements {
        Some(n) if n > 0 && n <= limit => Ok(()),
        _ => Err(Error::shape(
            context(),
            format!(
                "[batch, channels, height, width], every dimension at least 1 and at most {limit} elements in all \
                 (twice StableDiffusion::MAX_LATENT_ELEMENTS)"
            ),
            dims,
        )),
    }
}

/// `dir` if it is a folder; [`Error::NotFound`] when nothing is there, [`Error::WrongKind`] when
/// something else is.
fn require_dir(dir: PathBuf, what: &str) -> Result<PathBuf> {
    check_path(&dir, Kind::Dir, what, None)?;
    Ok(dir)
}

/// What the reference must be.
const PIPELINE_FOLDER: &str = "the pipeline folder (with model_index.json, unet/, text_encoder/, tokenizer/, vae/, \
                               scheduler/)";

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
fn read_force_zeros(root: &Path) -> Result<bool> {
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

impl StableDiffusion {
    /// The largest image height or width, in pixels, a [`Request`] may ask for (or a checkpoint's
    /// default size may be): 8192, four times SDXL's 2048. Checked by [`Self::latent_shape`],
    /// [`Self::check_request`] and [`Self::generate`] before anything is allocated.
    pub const MAX_IMAGE_SIDE: usize = 8192;

    /// The most samples (prompts × images per prompt) one request may have, and the largest
    /// `batch` [`Self::latent_shape`] takes: 4096.
    pub const MAX_BATCH: usize = 4096;

    /// The most latent elements (batch × channels × height / f × width / f) one run may have:
    /// 2^28 (1 GiB of f32 latents: 4096 SDXL latents of 1024 px, or 64 SD latents of 8192 px).
    /// [`Unet::forward`] and [`Vae::decode`] refuse empty latents and latents of more than twice
    /// this (classifier-free guidance doubles the batch) with an [`Error::ShapeMismatch`].
    pub const MAX_LATENT_ELEMENTS: usize = 1 << 28;

    /// Loads a diffusers-layout reference directory (`unet/`, `text_encoder/`, `tokenizer/`,
    /// `vae/`, `scheduler/scheduler_config.json`) and aligned UNets, each a pipeline directory,
    /// a UNet directory or a single UNet `.safetensors` file (which takes the reference's
    /// config), or a LoRA adapter of the reference UNet (a file or folder in the diffusers, peft
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

        let reference_unet = Unet::load(&unet_dir, None, dtype, device)?;
        let ref_cfg_path = unet_dir.join("config.json");
        let mut aligned_unets = Vec::with_capacity(aligned.len());
        let mut adapters = Vec::new();
        let mut models = vec![ModelSlot { unet: 0, adapter: None }];
        for a in aligned {
            if crate::lora::looks_like_lora(a.as_ref()) {
                adapters.push(crate::LoraAdapter::load(a, &reference_unet)?);
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
            let attached: Vec<(&crate::LoraAdapter, f64)> =
                adapters.iter().map(|a| (a, options.lora_multiplier)).collect();
            reference_unet.with_adapters(&attached)?
        };
        let mut unets = vec![reference_unet];
        unets.extend(aligned_unets);
        let text_encoder = TextEncoder::load(&te_dir, &tok_dir, dtype, device)?;
        let vae = Vae::load(&vae_dir, dtype, device)?;
        let mut sd = match sdxl_dirs {
            Some((te2_dir, tok2_dir)) => {
                let text_encoder_2 = TextEncoder::load_with_projection(&te2_dir, &tok2_dir, dtype, device)?;
                let force_zeros = read_force_zeros(root)?;
                Self::assemble(
                    text_encoder,
                    Some(text_encoder_2),
                    vae,
                    unets,
                    Some(models),
                    scheduler_config,
                    force_zeros,
                )
            }
            None => Self::assemble(text_encoder, None, vae, unets, Some(models), scheduler_config, true),
        }?;
        sd.adapters = adapters.into_iter().map(|a| a.scaled(lora_multiplier)).collect::<Result<_>>()?;
        sd.joint_pass = options.joint_pass;
        Ok(sd)
    }

    /// Whether the reference and LoRA-aligned models run in one UNet call per step
    /// ([`LoadOptions::joint_pass`]).
    pub fn joint_pass(&self) -> bool {
        self.joint_pass
    }

    /// Sets [`Self::joint_pass`]: one UNet call per step for the reference and LoRA-aligned
    /// models, or one call per model (the same results, within f32 rounding).
    pub fn set_joint_pass(&mut self, joint: bool) {
        self.joint_pass = joint;
    }

    /// The LoRA adapters of the LoRA-aligned models, in the order they were given (each scaled
    /// by [`LoadOptions::lora_multiplier`]).
    pub fn lora_adapters(&self) -> &[crate::LoraAdapter] {
        &self.adapters
    }

    /// Weight-space realignment, the baseline the posterior fusion is compared with ("rewarded
    /// soups"): the reference UNet with every LoRA-aligned model's adapter merged at its λ —
    /// `W + Σ_k λ_k · scale_k · B_k · A_k` — as one UNet. `lambdas` has one value per aligned
    /// model; every aligned model must be a LoRA adapter (a full aligned UNet has no low-rank
    /// delta to scale; an error says so).
    pub fn weight_space_unet(&self, lambdas: &[f64]) -> Result<Unet> {
        let aligned = &self.models[1..];
        if lambdas.len() != aligned.len() {
            return Err(Error::InvalidArgument(format!(
                "weight-space realignment takes one λ per aligned model: {} given for {} aligned models",
                lambdas.len(),
                aligned.len()
            )));
        }
        let mut unet: Option<Unet> = None;
        for (slot, &lambda) in aligned.iter().zip(lambdas) {
            let Some(k) = slot.adapter else {
                return Err(Error::InvalidArgument(format!(
                    "weight-space realignment needs LoRA-aligned models, but {} is a full UNet; give the aligned \
                     model as a LoRA adapter (deradiff extract-lora makes one from a full UNet)",
                    self.unets[slot.unet].source().display()
                )));
            };
            let base = unet.as_ref().unwrap_or(&self.unets[0]);
            unet = Some(base.merged_with(&self.adapters[k], lambda)?);
        }
        unet.ok_or_else(|| Error::InvalidArgument("weight-space realignment needs at least one aligned model".into()))
    }

    /// [`Self::sample`] with weight-space realignment: one UNet, the reference with the aligned
    /// adapters merged at `lambdas` ([`Self::weight_space_unet`]), sampled on its own from the
    /// same noise, so that its images compare with the posterior fusion's on the same seeds.
    pub fn sample_weight_space(
        &self,
        request: &Request,
        encoded: &EncodedRequest,
        lambdas: &[f64],
        noise: &mut dyn NoiseSource,
        observer: &mut dyn Observer,
    ) -> Result<SampleOutput> {
        if request.steps == 0 {
            return Err(Error::request("steps", "is 0: it must be at least 1"));
        }
        encoded.encoding.check_belongs(&self.encoding(request)?)?;
        let unet = self.weight_space_unet(lambdas)?;
        let guidance_scale = self.guidance_scale(request)?;
        let shape = self.latent_shape(request, encoded.batch())?;
        let scheduler = request.scheduler.build(&self.scheduler_config, request.steps)?;
        let guided = Guided::new(&unet, &encoded.embeddings, guidance_scale)?;
        let sampler = Sampler::new(scheduler.as_ref(), vec![&guided as &dyn Denoiser], Realigner::new(vec![1.0])?)?;
        Ok(sampler.run(shape.to_vec(), self.dtype, &self.device, noise, observer)?)
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

    /// Whether this is SDXL (two text encoders, `text_time` conditioning).
    pub fn is_sdxl(&self) -> bool {
        self.text_encoder_2.is_some()
    }

    /// SDXL's second text encoder, if any.
    pub fn text_encoder_2(&self) -> Option<&TextEncoder> {
        self.text_encoder_2.as_ref()
    }

    /// SDXL: whether the negative embeddings are zeros when no negative prompt is given, for
    /// requests that leave [`Request::force_zeros_for_empty_prompt`] `None` (the checkpoint's
    /// `model_index.json`, default true).
    pub fn force_zeros_for_empty_prompt(&self) -> bool {
        self.force_zeros_for_empty_prompt
    }

    /// Sets [`Self::force_zeros_for_empty_prompt`], the default of every request that does not set
    /// its own (SDXL only; ignored otherwise). To change it for one request, set
    /// [`Request::force_zeros_for_empty_prompt`].
    pub fn set_force_zeros_for_empty_prompt(&mut self, value: bool) {
        self.force_zeros_for_empty_prompt = value;
    }

    /// diffusers' default classifier-free guidance scale for this kind of checkpoint, what a
    /// [`Request`] whose `guidance_scale` is `None` samples with: 5.0 for SDXL
    /// (`StableDiffusionXLPipeline`), 7.5 for SD 1.x / 2.x (`StableDiffusionPipeline`).
    pub fn default_guidance_scale(&self) -> f64 {
        if self.is_sdxl() {
            5.0
        } else {
            7.5
        }
    }

    /// The guidance scale `request` samples with: its [`Request::guidance_scale`], or
    /// [`Self::default_guidance_scale`] when that is `None`. An [`Error::InvalidGuidance`] for a
    /// negative or non-finite scale.
    pub fn guidance_scale(&self, request: &Request) -> Result<f64> {
        let scale = request.guidance_scale.unwrap_or_else(|| self.default_guidance_scale());
        Ok(GuidanceScale::new(scale)?.value())
    }

    /// Number of models (reference + aligned, full UNets and LoRA-aligned): what the realigner
    /// must weigh.
    pub fn num_models(&self) -> usize {
        self.models.len()
    }

    /// The models in realigner order (reference first), each as the UNet rows it runs: a full
    /// UNet, or the reference's base weights with one LoRA adapter.
    pub fn models(&self) -> Vec<crate::AdapterView<'_>> {
        self.models.iter().map(|m| self.unets[m.unet].adapter_view(m.adapter)).collect()
    }

    /// The UNets, reference first.
    pub fn unets(&self) -> &[Unet] {
        &self.unets
    }

    /// The text encoder (shared by all UNets).
    pub fn text_encoder(&self) -> &TextEncoder {
        &self.text_encoder
    }

    /// The VAE.
    pub fn vae(&self) -> &Vae {
        &self.vae
    }

    /// The reference's scheduler config (training schedule, prediction type).
    pub fn scheduler_config(&self) -> &SchedulerConfig {
        &self.scheduler_config
    }

    /// Replaces the scheduler config (for example to force `v_prediction`).
    pub fn set_scheduler_config(&mut self, config: SchedulerConfig) {
        self.scheduler_config = config;
    }

    /// The dtype of the UNets and latents.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Default image `(height, width)`: the UNet's `sample_size` × the VAE's scale factor
    /// (64 × 8 = 512 for SD 1.5). The product saturates (at `usize::MAX`) for a config whose
    /// `sample_size` is absurd; [`Self::latent_shape`] refuses a default size above
    /// [`Self::MAX_IMAGE_SIDE`] with an [`Error::ConfigField`] naming `sample_size`.
    pub fn default_size(&self) -> (usize, usize) {
        let f = self.vae.scale_factor();
        let (h, w) = self.unets[0].arch().sample_size.unwrap_or((64, 64));
        (h.saturating_mul(f), w.saturating_mul(f))
    }

    /// The image `(height, width)` of `request`: its own, else [`Self::default_size`], each side
    /// a positive multiple of the VAE's scale factor and at most [`Self::MAX_IMAGE_SIDE`].
    fn image_size(&self, request: &Request) -> Result<(usize, usize)> {
        let f = self.vae.scale_factor();
        let max = Self::MAX_IMAGE_SIDE;
        let (dh, dw) = self.default_size();
        let sample_size = self.unets[0].arch().sample_size.unwrap_or((64, 64));
        let mut size = [0usize; 2];
        for (i, (field, own, default, latent)) in
            [("height", request.height, dh, sample_size.0), ("width", request.width, dw, sample_size.1)]
                .into_iter()
                .enumerate()
        {
            let v = match own {
                Some(v) => v,
                None if default > max => {
                    return Err(Error::config_field(
                        self.unets[0].config_path(),
                        "sample_size",
                        format!(
                            "the default image {field} is sample_size {latent} × the VAE's scale factor {f} = {} \
                             pixels, more than the {max} pixels a side this crate generates \
                             (StableDiffusion::MAX_IMAGE_SIDE); correct the config, or give the size \
                             (Request::height and Request::width)",
                            latent.checked_mul(f).map_or_else(|| "more than 2^64".to_string(), |p| p.to_string())
                        ),
                    ))
                }
                None => default,
            };
            if v == 0 || v % f != 0 {
                return Err(Error::request(
                    field,
                    format!("is {v} pixels; it must be a positive multiple of the VAE's scale factor {f}"),
                ));
            }
            if v > max {
                return Err(Error::request(
                    field,
                    format!(
                        "is {v} pixels, more than the {max} pixels a side this crate generates \
                         (StableDiffusion::MAX_IMAGE_SIDE); ask for at most {max} (the checkpoint's default is \
                         {dh}x{dw}, height x width)"
                    ),
                ));
            }
            size[i] = v;
        }
        Ok((size[0], size[1]))
    }

    /// Encodes `prompts` once (and, with guidance on, the negative prompt — the empty prompt
    /// when `None`), each distinct text in a single text-encoder pass, for every UNet to share:
    /// the low-level form of [`Self::encode`], one sample per prompt, not tied to a request.
    /// For SDXL the embeddings are the penultimate hidden states of both encoders concatenated,
    /// with encoder 2's projected pooled output and the default micro-conditioning (the default
    /// image size, crop (0, 0)); with [`Self::force_zeros_for_empty_prompt`] and no negative
    /// prompt the negative embeddings are zeros, as in diffusers.
    pub fn encode_prompts<S: AsRef<str>>(
        &self,
        prompts: &[S],
        negative_prompt: Option<&str>,
        guidance_scale: f64,
    ) -> Result<PromptEmbeddings> {
        if prompts.is_empty() {
            return Err(Error::InvalidArgument(
                "StableDiffusion::encode_prompts: `prompts` is empty; give at least one prompt".into(),
            ));
        }
        let guided = GuidanceScale::new(guidance_scale)?.is_active();
        let zero_negative = self.is_sdxl() && negative_prompt.is_none() && self.force_zeros_for_empty_prompt;
        let time_ids = self.time_ids(&Request::default())?;
        let prompts: Vec<&str> = prompts.iter().map(AsRef::as_ref).collect();
        self.encode_texts(&prompts, negative_prompt, guided, zero_negative, time_ids)
    }

    /// SDXL's six `time_ids` of a request: original size `(h, w)`, crop `(top, left)`, target
    /// size `(h, w)`, defaulting as diffusers (original = target = the image size). An
    /// [`Error::InvalidRequest`] for SD 1.x / 2.x when the request sets micro-conditioning
    /// (`None` otherwise).
    pub fn time_ids(&self, request: &Request) -> Result<Option<[f64; 6]>> {
        if !self.is_sdxl() {
            let set = [
                ("original_size", request.original_size.is_some()),
                ("crop_top_left", request.crop_top_left != (0, 0)),
                ("target_size", request.target_size.is_some()),
            ];
            if let Some((field, _)) = set.into_iter().find(|(_, set)| *set) {
                return Err(Error::request(
                    field,
                    "is SDXL micro-conditioning and this checkpoint is SD 1.x / 2.x: leave it at its default",
                ));
            }
            return Ok(None);
        }
        let (dh, dw) = self.default_size();
        let size = (request.height.unwrap_or(dh), request.width.unwrap_or(dw));
        let (oh, ow) = request.original_size.unwrap_or(size);
        let (ct, cl) = request.crop_top_left;
        let (th, tw) = request.target_size.unwrap_or(size);
        Ok(Some([oh, ow, ct, cl, th, tw].map(|v| v as f64)))
    }

    /// Whether `request`'s negative embeddings are zeros (SDXL, no negative prompt,
    /// `force_zeros_for_empty_prompt` of the request or else of the checkpoint).
    fn zero_negative(&self, request: &Request) -> Result<bool> {
        match (self.is_sdxl(), request.force_zeros_for_empty_prompt) {
            (true, own) => Ok(request.negative_prompt.is_none() && own.unwrap_or(self.force_zeros_for_empty_prompt)),
            (false, Some(true)) => Err(Error::request(
                "force_zeros_for_empty_prompt",
                "is SDXL's option and this checkpoint is SD 1.x / 2.x, whose negative embeddings are the empty \
                 prompt's: leave it None (or false)",
            )),
            (false, _) => Ok(false),
        }
    }

    /// What the text encoding of `request` depends on, checked.
    fn encoding(&self, request: &Request) -> Result<Encoding> {
        if request.prompts.is_empty() {
            return Err(Error::request("prompts", "is empty: give at least one prompt"));
        }
        if request.images_per_prompt == 0 {
            return Err(Error::request("images_per_prompt", "is 0: it must be at least 1"));
        }
        let max = Self::MAX_BATCH;
        if request.prompts.len() > max {
            return Err(Error::request(
                "prompts",
                format!(
                    "has {} prompts, more than the {max} samples one request may have (StableDiffusion::MAX_BATCH); \
                     split them into several requests",
                    request.prompts.len()
                ),
            ));
        }
        if request.prompts.len().checked_mul(request.images_per_prompt).is_none_or(|n| n > max) {
            return Err(Error::request(
                "images_per_prompt",
                format!(
                    "is {}: {} prompts × {} images are more than the {max} samples one request may have \
                     (StableDiffusion::MAX_BATCH); ask for at most {} images per prompt",
                    request.images_per_prompt,
                    request.prompts.len(),
                    request.images_per_prompt,
                    max / request.prompts.len()
                ),
            ));
        }
        let guidance_scale = self.guidance_scale(request)?;
        Ok(Encoding {
            sdxl: self.is_sdxl(),
            prompts: request.prompts.clone(),
            negative_prompt: request.negative_prompt.clone(),
            images_per_prompt: request.images_per_prompt,
            guidance_scale,
            zero_negative: self.zero_negative(request)?,
            time_ids: self.time_ids(request)?,
            micro: Micro::of(request),
        })
    }

    /// The embeddings of `prompts` (one row each), each distinct text encoded once.
    fn encode_texts(
        &self,
        prompts: &[&str],
        negative_prompt: Option<&str>,
        guided: bool,
        zero_negative: bool,
        time_ids: Option<[f64; 6]>,
    ) -> Result<PromptEmbeddings> {
        fn index_of<'s>(s: &'s str, distinct: &mut Vec<&'s str>) -> u32 {
            match distinct.iter().position(|d| *d == s) {
                Some(i) => i as u32,
                None => {
                    distinct.push(s);
                    (distinct.len() - 1) as u32
                }
            }
        }
        let mut distinct: Vec<&str> = Vec::new();
        let mut rows = Vec::new();
        for p in prompts {
            rows.push(index_of(p, &mut distinct));
        }
        let uncond_row = (guided && !zero_negative).then(|| index_of(negative_prompt.unwrap_or(""), &mut distinct));
        let (hidden, pooled) = match &self.text_encoder_2 {
            None => (self.text_encoder.encode(&distinct)?, None),
            Some(te2) => {
                let one = self.text_encoder.encode_all(&distinct)?;
                let two = te2.encode_all(&distinct)?;
                let pooled = two.text_embeds.ok_or_else(|| {
                    Error::ModelMismatch("text_encoder_2 has no text_projection (SDXL needs it)".into())
                })?;
                (Tensor::cat(&[&one.penultimate, &two.penultimate], 2)?, Some(pooled.to_dtype(self.dtype)?))
            }
        };
        let hidden = hidden.to_dtype(self.dtype)?;
        let pick = |t: &Tensor, idx: &[u32]| -> Result<Tensor> {
            let idx = Tensor::new(idx, t.device())?;
            Ok(t.index_select(&idx, 0)?)
        };
        let cond = pick(&hidden, &rows)?;
        let n = prompts.len();
        let uncond = match uncond_row {
            Some(r) => Some(pick(&hidden, &vec![r; n])?),
            None if guided => Some(cond.zeros_like()?),
            None => None,
        };
        let embeddings = PromptEmbeddings::new(cond, uncond)?;
        let Some(pooled) = pooled else {
            return Ok(embeddings);
        };
        let ids = time_ids.ok_or(Error::Internal("an SDXL pipeline computed no time_ids"))?;
        let ids = Tensor::new(&ids, &self.device)?.to_dtype(self.dtype)?.unsqueeze(0)?.repeat((n, 1))?;
        let pooled_cond = pick(&pooled, &rows)?;
        let added = AddedConditioning::new(pooled_cond.clone(), ids.clone())?;
        let added_uncond = match uncond_row {
            Some(r) => Some(AddedConditioning::new(pick(&pooled, &vec![r; n])?, ids)?),
            None if guided => Some(AddedConditioning::new(pooled_cond.zeros_like()?, ids)?),
            None => None,
        };
        embeddings.with_added(added, added_uncond)
    }

    /// The text embeddings of a request (prompts × images per prompt), for
    /// [`Self::sample`]: negative-prompt embeddings when its guidance (or the checkpoint's default
    /// guidance) is on, zeros for them under SDXL's `force_zeros_for_empty_prompt` (the
    /// request's, else the checkpoint's); for SDXL the request's micro-conditioning
    /// ([`Self::time_ids`]). The result remembers what it was encoded from, so that
    /// [`Self::sample`] refuses it for another request.
    pub fn encode(&self, request: &Request) -> Result<EncodedRequest> {
        let encoding = self.encoding(request)?;
        let prompts: Vec<&str> = request.prompts.iter().map(String::as_str).collect();
        let embeddings = self
            .encode_texts(
                &prompts,
                request.negative_prompt.as_deref(),
                encoding.guided(),
                encoding.zero_negative,
                encoding.time_ids,
            )?
            .repeat_each(request.images_per_prompt)?;
        Ok(EncodedRequest { embeddings, encoding })
    }

    /// One guided denoiser per model (reference first), all sharing `embeddings`: the low-level
    /// form of [`Self::sample`] (for example [`EncodedRequest::embeddings`], repeated to a batch).
    /// Each runs its own UNet pass; [`Self::joint_denoisers`] runs LoRA-aligned models with the
    /// reference in one pass.
    pub fn denoisers<'a>(
        &'a self,
        embeddings: &'a PromptEmbeddings,
        guidance_scale: f64,
    ) -> Result<Vec<Guided<'a, crate::AdapterView<'a>>>> {
        self.models().into_iter().map(|m| Guided::new(m, embeddings, guidance_scale)).collect()
    }

    /// The joint guidance of `models` (indices in realigner order) that share the reference UNet
    /// (the reference and LoRA-aligned models), when there are at least two of them and
    /// [`Self::joint_pass`] is on: one UNet pass per step serves them all. The other models are
    /// left out.
    pub fn joint_denoisers<'a>(
        &'a self,
        models: &[usize],
        embeddings: &'a PromptEmbeddings,
        guidance_scale: f64,
    ) -> Result<Option<(Vec<usize>, crate::JointGuided<'a>)>> {
        let shared: Vec<usize> =
            models.iter().copied().filter(|&i| self.models.get(i).is_some_and(|m| m.unet == 0)).collect();
        if shared.len() < 2 || self.unets[0].num_adapters() == 0 || !self.joint_pass {
            return Ok(None);
        }
        let adapters = shared.iter().map(|&i| self.models[i].adapter).collect();
        Ok(Some((shared, crate::JointGuided::new(&self.unets[0], adapters, embeddings, guidance_scale)?)))
    }

    /// The latent shape `[batch, channels, height / f, width / f]` of a request, checked before
    /// anything is allocated:
    /// * an [`Error::InvalidRequest`] for a height or width that is not a positive multiple of
    ///   the VAE's scale factor `f`, or more than [`Self::MAX_IMAGE_SIDE`] pixels;
    /// * an [`Error::ConfigField`] naming `sample_size` when the request leaves the size to the
    ///   checkpoint and its default ([`Self::default_size`]) is more than that;
    /// * an [`Error::InvalidArgument`] for a `batch` of 0 or more than [`Self::MAX_BATCH`];
    /// * an [`Error::InvalidRequest`] when the latents would have more than
    ///   [`Self::MAX_LATENT_ELEMENTS`] elements.
    pub fn latent_shape(&self, request: &Request, batch: usize) -> Result<[usize; 4]> {
        let (h, w) = self.image_size(request)?;
        let f = self.vae.scale_factor();
        if batch == 0 || batch > Self::MAX_BATCH {
            return Err(Error::InvalidArgument(format!(
                "StableDiffusion::latent_shape: a batch of {batch} samples; it must be 1 to {} \
                 (StableDiffusion::MAX_BATCH)",
                Self::MAX_BATCH
            )));
        }
        let shape = [batch, self.unets[0].in_channels(), h / f, w / f];
        let elements = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        match elements {
            Some(n) if n <= Self::MAX_LATENT_ELEMENTS => Ok(shape),
            _ => Err(Error::request(
                if batch > 1 { "images_per_prompt" } else { "height" },
                format!(
                    "{batch} latents of {}x{}x{} are more than the {} latent elements one run may have \
                     (StableDiffusion::MAX_LATENT_ELEMENTS); ask for fewer images (prompts × images_per_prompt) or \
                     a smaller size",
                    shape[1],
                    shape[2],
                    shape[3],
                    Self::MAX_LATENT_ELEMENTS
                ),
            )),
        }
    }

    /// Checks everything about `request` that can be checked without running a model: prompts,
    /// images per prompt, steps, guidance scale, image size, SDXL's options, and that the
    /// scheduler can be built for its steps. [`Self::generate`] does this before encoding.
    pub fn check_request(&self, request: &Request) -> Result<()> {
        self.encoding(request)?;
        if request.steps == 0 {
            return Err(Error::request("steps", "is 0: it must be at least 1"));
        }
        self.latent_shape(request, 1)?;
        request.scheduler.build(&self.scheduler_config, request.steps)?;
        Ok(())
    }

    /// Runs the realigned sampling loop for `request` with its text encoding `encoded` (from
    /// [`Self::encode`] of this request, or of one that differs only in steps, scheduler, seed
    /// or a guidance scale on the same side of 1; anything else is an
    /// [`Error::EncodedRequestMismatch`]), drawing `x_T` and every step's noise from `noise`;
    /// `observer` sees every step. Models whose weight is 0 at every step are not run (λ = 0 or
    /// 1 costs one UNet per step).
    pub fn sample(
        &self,
        request: &Request,
        encoded: &EncodedRequest,
        realigner: &Realigner,
        noise: &mut dyn NoiseSource,
        observer: &mut dyn Observer,
    ) -> Result<SampleOutput> {
        if request.steps == 0 {
            return Err(Error::request("steps", "is 0: it must be at least 1"));
        }
        encoded.encoding.check_belongs(&self.encoding(request)?)?;
        if realigner.num_models() != self.models.len() {
            return Err(Error::InvalidArgument(format!(
                "StableDiffusion::sample: the realigner weighs {} models but {} UNets are loaded (reference + {} \
                 aligned); use Realigner::two_model(λ) for one aligned model, Realigner::multi_reward(&[λ…]) for \
                 several",
                realigner.num_models(),
                self.models.len(),
                self.models.len() - 1
            )));
        }
        let guidance_scale = self.guidance_scale(request)?;
        let shape = self.latent_shape(request, encoded.batch())?;
        let scheduler = request.scheduler.build(&self.scheduler_config, request.steps)?;
        // A per-step schedule of another length is an error here (not silently cut), and a
        // schedule given as a function of (step, steps) is evaluated for this run.
        let realigner = realigner.for_steps(request.steps)?;
        let (kept, realigner) = prune_zero_weights(&realigner, request.steps)?;
        // The reference and LoRA-aligned models in one UNet pass; full UNets on their own.
        let joint = self.joint_denoisers(&kept, &encoded.embeddings, guidance_scale)?;
        let (shared, joint_denoisers) = match &joint {
            Some((shared, j)) => (shared.clone(), j.denoisers()),
            None => (Vec::new(), Vec::new()),
        };
        let views = self.models();
        let guided: Vec<Guided<'_, crate::AdapterView<'_>>> = kept
            .iter()
            .filter(|i| !shared.contains(i))
            .map(|&i| Guided::new(views[i], &encoded.embeddings, guidance_scale))
            .collect::<Result<_>>()?;
        let (mut own, mut from_joint) = (guided.iter(), joint_denoisers.iter());
        let denoisers: Vec<&dyn Denoiser> = kept
            .iter()
            .map(|i| match shared.contains(i) {
                true => from_joint.next().map(|d| d as &dyn Denoiser),
                false => own.next().map(|g| g as &dyn Denoiser),
            })
            .collect::<Option<_>>()
            .ok_or(Error::Internal("the pipeline's denoisers do not cover its models"))?;
        let sampler = Sampler::new(scheduler.as_ref(), denoisers, realigner)?;
        Ok(sampler.run(shape.to_vec(), self.dtype, &self.device, noise, observer)?)
    }

    /// Decodes final latents (as [`Self::sample`] produces them) to 8-bit images, one VAE pass
    /// ([`Vae::decode`]).
    pub fn decode(&self, latents: &Tensor) -> Result<Vec<RgbImage>> {
        self.vae.decode(latents)
    }

    /// Decodes final latents (as [`Self::sample`] produces them) to images `[B, 3, H, W]` as f32
    /// in `[0, 1]` ([`Vae::decode_f32`]).
    pub fn decode_f32(&self, latents: &Tensor) -> Result<Tensor> {
        self.vae.decode_f32(latents)
    }

    /// Checks the request, encodes its prompts, samples with seeded noise and `realigner`,
    /// decodes.
    pub fn generate(
        &self,
        request: &Request,
        realigner: &Realigner,
        observer: &mut dyn Observer,
    ) -> Result<Generation> {
        self.check_request(request)?;
        let encoded = self.encode(request)?;
        let out = self.sample(request, &encoded, realigner, &mut SeededNoise::new(request.seed), observer)?;
        let images = self.decode(&out.latent)?;
        Ok(Generation { images, latents: out.latent, steps_taken: out.steps_taken, stopped_early: out.stopped_early })
    }
}

/// The text encoding of one [`Request`]: its prompt embeddings (prompts × images per prompt,
/// with negative-prompt embeddings when guided, and SDXL's added conditioning), made by
/// [`StableDiffusion::encode`] and taken by [`StableDiffusion::sample`], which checks that they
/// were encoded from the request it samples.
///
/// ```no_run
/// # fn demo(sd: &deradiff_sd::StableDiffusion) -> deradiff_sd::Result<()> {
/// use deradiff_core::{NoObserver, Realigner, SeededNoise};
/// let request = deradiff_sd::Request { prompts: vec!["a red cube".into()], ..Default::default() };
/// let encoded = sd.encode(&request)?;
/// for lambda in [0.0, 0.5, 1.0] {
///     let realigner = Realigner::two_model(lambda)?;
///     let out = sd.sample(&request, &encoded, &realigner, &mut SeededNoise::new(request.seed), &mut NoObserver)?;
///     sd.decode(&out.latent)?[0].save_png(format!("cube_{lambda}.png"))?;
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct EncodedRequest {
    embeddings: PromptEmbeddings,
    encoding: Encoding,
}

impl EncodedRequest {
    /// The prompt embeddings (for [`StableDiffusion::denoisers`] or your own [`Guided`]).
    pub fn embeddings(&self) -> &PromptEmbeddings {
        &self.embeddings
    }

    /// The prompt embeddings, consuming the encoding.
    pub fn into_embeddings(self) -> PromptEmbeddings {
        self.embeddings
    }

    /// Number of samples: prompts × images per prompt.
    pub fn batch(&self) -> usize {
        self.embeddings.batch()
    }

    /// The guidance scale the request was encoded with (its own, or the checkpoint's default).
    pub fn guidance_scale(&self) -> f64 {
        self.encoding.guidance_scale
    }
}

/// The fields of a request that SDXL's `time_ids` are computed from (for error messages).
#[derive(Debug, Clone, PartialEq)]
struct Micro {
    height: Option<usize>,
    width: Option<usize>,
    original_size: Option<(usize, usize)>,
    crop_top_left: (usize, usize),
    target_size: Option<(usize, usize)>,
}

impl Micro {
    fn of(r: &Request) -> Self {
        Self {
            height: r.height,
            width: r.width,
            original_size: r.original_size,
            crop_top_left: r.crop_top_left,
            target_size: r.target_size,
        }
    }
}

/// What a request's text encoding depends on.
#[derive(Debug, Clone)]
struct Encoding {
    sdxl: bool,
    prompts: Vec<String>,
    negative_prompt: Option<String>,
    images_per_prompt: usize,
    guidance_scale: f64,
    zero_negative: bool,
    time_ids: Option<[f64; 6]>,
    micro: Micro,
}

impl Encoding {
    fn guided(&self) -> bool {
        self.guidance_scale > 1.0
    }

    /// An error unless embeddings encoded for `self` are those of `now`.
    fn check_belongs(&self, now: &Encoding) -> Result<()> {
        let mismatch = |field: &'static str, detail: String| Err(Error::EncodedRequestMismatch { field, detail });
        if self.sdxl != now.sdxl {
            let kind = |sdxl: bool| if sdxl { "an SDXL" } else { "an SD 1.x / 2.x" };
            return Err(Error::ModelMismatch(format!(
                "StableDiffusion::sample: the encoded request was encoded by {} pipeline, this is {} pipeline",
                kind(self.sdxl),
                kind(now.sdxl)
            )));
        }
        if self.prompts != now.prompts {
            let detail = match self.prompts.iter().zip(&now.prompts).position(|(a, b)| a != b) {
                Some(i) => format!("prompt {i} was {:?} and is {:?}", self.prompts[i], now.prompts[i]),
                None => format!("{} prompts were encoded, the request has {}", self.prompts.len(), now.prompts.len()),
            };
            return mismatch("prompts", detail);
        }
        if self.negative_prompt != now.negative_prompt {
            return mismatch(
                "negative_prompt",
                format!("{:?} was encoded, the request has {:?}", self.negative_prompt, now.negative_prompt),
            );
        }
        if self.images_per_prompt != now.images_per_prompt {
            return mismatch(
                "images_per_prompt",
                format!("{} was encoded, the request has {}", self.images_per_prompt, now.images_per_prompt),
            );
        }
        if self.guided() != now.guided() {
            let on = |g: bool| if g { "on" } else { "off" };
            return mismatch(
                "guidance_scale",
                format!(
                    "encoded with guidance {} (scale {}), the request has it {} (scale {}); negative-prompt \
                     embeddings exist only when the scale is above 1",
                    on(self.guided()),
                    self.guidance_scale,
                    on(now.guided()),
                    now.guidance_scale
                ),
            );
        }
        if self.guided() && self.zero_negative != now.zero_negative {
            return mismatch(
                "force_zeros_for_empty_prompt",
                format!(
                    "the negative embeddings were encoded as {}, the request asks for {}",
                    if self.zero_negative { "zeros" } else { "the empty prompt's" },
                    if now.zero_negative { "zeros" } else { "the empty prompt's" }
                ),
            );
        }
        if self.time_ids != now.time_ids {
            let (a, b) = (&self.micro, &now.micro);
            let fields: [(&'static str, String, String); 5] = [
                ("height", format!("{:?}", a.height), format!("{:?}", b.height)),
                ("width", format!("{:?}", a.width), format!("{:?}", b.width)),
                ("original_size", format!("{:?}", a.original_size), format!("{:?}", b.original_size)),
                ("crop_top_left", format!("{:?}", a.crop_top_left), format!("{:?}", b.crop_top_left)),
                ("target_size", format!("{:?}", a.target_size), format!("{:?}", b.target_size)),
            ];
            let detail = |field: &str, was: &str, is: &str| {
                format!("{was} was encoded, the request has {is}; SDXL's time_ids depend on it ({field})")
            };
            return match fields.into_iter().find(|(_, was, is)| was != is) {
                Some((field, was, is)) => mismatch(field, detail(field, &was, &is)),
                None => Err(Error::ModelMismatch(
                    "StableDiffusion::sample: the encoded request was encoded by an SDXL pipeline of another \
                     default image size (its time_ids differ)"
                        .into(),
                )),
            };
        }
        Ok(())
    }
}

/// Drops the models whose weight is exactly 0 at every one of `steps` steps (their posteriors
/// do not enter the fusion), returning the kept model indices and the realigner over them.
fn prune_zero_weights(realigner: &Realigner, steps: usize) -> Result<(Vec<usize>, Realigner)> {
    let k = realigner.num_models();
    let per_step: Vec<Vec<f64>> =
        (0..steps).map(|s| realigner.weights(s).map(<[f64]>::to_vec)).collect::<deradiff_core::Result<_>>()?;
    let kept: Vec<usize> = (0..k).filter(|&i| per_step.iter().any(|w| w[i] != 0.0)).collect();
    if kept.len() == k || kept.is_empty() {
        return Ok(((0..k).collect(), realigner.clone()));
    }
    let pick = |w: &Vec<f64>| kept.iter().map(|&i| w[i]).collect::<Vec<f64>>();
    let constant = per_step.windows(2).all(|p| p[0] == p[1]);
    let pruned = if constant {
        Realigner::new(pick(&per_step[0]))?
    } else {
        Realigner::per_step(per_step.iter().map(pick).collect())?
    };
    Ok((kept, pruned.with_policy(realigner.policy())))
}
