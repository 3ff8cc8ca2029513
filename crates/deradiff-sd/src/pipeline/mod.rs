//! The realigned text-to-image pipeline: a reference checkpoint, aligned UNets, one text
//! encoding, the realigned sampling loop of deradiff-core, one VAE decode.
//!
//! The UNets are our own ([`crate::unet`]), the text encoders our CLIP ([`crate::clip`]), the VAE
//! candle-transformers' `AutoEncoderKL` ([`crate::Vae`]). [`StableDiffusion::generate`] does it
//! all; to reuse one text encoding for several runs, [`StableDiffusion::encode`] a [`Request`]
//! and give the [`EncodedRequest`] to [`StableDiffusion::sample`] with that request (or one that
//! differs only in its steps, scheduler, seed or guidance scale), then
//! [`StableDiffusion::decode`].
//!
//! In layers: `request` (what to generate and how to load: [`Request`], [`LoadOptions`],
//! [`EncodedRequest`], [`Generation`]), `load` (a diffusers-layout directory checked and loaded,
//! or parts assembled), this file (the pipeline, its accessors and its size policy), `encode`
//! (the prompts through one or two text encoders, SDXL's micro-conditioning) and `sample` (the
//! guided denoisers, the realigned loop, weight-space realignment, decoding).

mod encode;
mod load;
mod request;
mod sample;
mod single;

use candle_core::{DType, Device};
use deradiff_core::SchedulerConfig;

use crate::error::{Error, Result};
use crate::guidance::GuidanceScale;
use crate::limits;
use crate::text::TextEncoder;
use crate::unet::Unet;
use crate::vae::Vae;
pub use request::{EncodedRequest, Generation, LoadOptions, Request, DEFAULT_STEPS};
pub use single::SingleFileOptions;

/// Where one model of a pipeline lives: a loaded UNet, with one of its attached LoRA adapters
/// or its own weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ModelSlot {
    unet: usize,
    adapter: Option<usize>,
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
    adapters: Vec<crate::lora::LoraAdapter>,
    /// [`LoadOptions::joint_pass`].
    joint_pass: bool,
    scheduler_config: SchedulerConfig,
    dtype: DType,
    device: Device,
}

impl StableDiffusion {
    /// The largest image height or width, in pixels, a [`Request`] may ask for (or a checkpoint's
    /// default size may be): 8192, four times SDXL's 2048. Checked by [`Self::latent_shape`],
    /// [`Self::check_request`] and [`Self::generate`] before anything is allocated.
    pub const MAX_IMAGE_SIDE: usize = limits::MAX_IMAGE_SIDE;

    /// The most samples (prompts × images per prompt) one request may have, and the largest
    /// `batch` [`Self::latent_shape`] takes: 4096.
    pub const MAX_BATCH: usize = limits::MAX_BATCH;

    /// The most latent elements (batch × channels × height / f × width / f) one run may have:
    /// 2^28 (1 GiB of f32 latents: 4096 SDXL latents of 1024 px, or 64 SD latents of 8192 px).
    /// [`Unet::forward`] and [`Vae::decode`] refuse empty latents and latents of more than twice
    /// this (classifier-free guidance doubles the batch) with an [`Error::ShapeMismatch`].
    pub const MAX_LATENT_ELEMENTS: usize = limits::MAX_LATENT_ELEMENTS;

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
    pub fn lora_adapters(&self) -> &[crate::lora::LoraAdapter] {
        &self.adapters
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

    /// Model `i` of [`Self::models`] in words, with the file or folder it came from: "the
    /// reference UNet (…)", "aligned model 1 (the LoRA adapter … on the reference UNet)",
    /// "aligned model 2 (the UNet …)". What errors about one model name.
    pub fn describe_model(&self, i: usize) -> String {
        let Some(slot) = self.models.get(i) else { return format!("model {i}") };
        let unet = self.unets[slot.unet].source().display();
        match (i, slot.adapter.and_then(|k| self.adapters.get(k))) {
            (0, _) => format!("the reference UNet ({unet})"),
            (_, Some(adapter)) => {
                format!("aligned model {i} (the LoRA adapter {} on the reference UNet)", adapter.source().display())
            }
            (_, None) => format!("aligned model {i} (the UNet {unet})"),
        }
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

    /// Replaces the checkpoint's scheduler config for every request (for example to force
    /// `v_prediction`); one request can bring its own instead ([`Request::use_scheduler_config`]).
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
        request.check_steps()?;
        self.latent_shape(request, 1)?;
        self.scheduler(request)?;
        Ok(())
    }

    /// The sampler of `request`: its [`Request::scheduler`] built from its
    /// [`Request::scheduler_config`], or from the checkpoint's when that is `None`.
    pub fn scheduler(&self, request: &Request) -> Result<Box<dyn deradiff_core::Scheduler>> {
        let config = request.scheduler_config.as_ref().unwrap_or(&self.scheduler_config);
        Ok(request.scheduler.build(config, request.steps)?)
    }
}
