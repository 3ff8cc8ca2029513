//! What to generate and how to load: [`Request`] (prompts and sampling settings),
//! [`LoadOptions`], the text encoding of a request ([`EncodedRequest`], with what it was encoded
//! from, checked when it is sampled) and the result of a run ([`Generation`]).

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use deradiff_core::{SchedulerConfig, SchedulerKind};

use crate::error::{Error, Result};
use crate::guidance::PromptEmbeddings;
use crate::image::RgbImage;
#[cfg(doc)]
use {super::StableDiffusion, crate::guidance::Guided, crate::vae::Vae};

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
    /// How a reference given as one original-layout `.safetensors` file is completed: its
    /// tokenizers, configs instead of the built-in templates, the prediction type.
    pub single_file: super::SingleFileOptions,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            dtype: DType::F32,
            device: Device::Cpu,
            lora_multiplier: 1.0,
            joint_pass: true,
            single_file: super::SingleFileOptions::default(),
        }
    }
}

/// The inference steps of a [`Request`] by default: 50, diffusers' default `num_inference_steps`
/// for SD 1.x / 2.x and SDXL pipelines alike. `deradiff sample` and Stable Diffusion sweeps use
/// it too.
pub const DEFAULT_STEPS: usize = 50;

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
    /// The scheduler config the sampler is built from (training schedule, prediction type,
    /// spacing); `None` (the default): the checkpoint's own
    /// ([`StableDiffusion::scheduler_config`]). [`Request::use_scheduler_config`] sets it and
    /// [`Request::scheduler`] from one `scheduler_config.json` in one call.
    pub scheduler_config: Option<SchedulerConfig>,
    /// Inference steps, default [`DEFAULT_STEPS`] (50).
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
            scheduler_config: None,
            steps: DEFAULT_STEPS,
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

impl Request {
    /// Samples with the scheduler a diffusers `scheduler_config.json` describes: its class
    /// (`_class_name`, [`SchedulerKind::from_config`]) becomes [`Request::scheduler`] and its
    /// options [`Request::scheduler_config`]. An unknown class or option is an error and leaves
    /// the request as it was.
    ///
    /// ```
    /// use deradiff_core::{SchedulerConfig, SchedulerKind};
    ///
    /// let mut request = deradiff_sd::Request { prompts: vec!["a red cube".into()], ..Default::default() };
    /// let config = SchedulerConfig::from_json(
    ///     r#"{"_class_name": "DDIMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085,
    ///         "beta_end": 0.012, "clip_sample": false, "set_alpha_to_one": false, "steps_offset": 1}"#,
    /// )?;
    /// request.use_scheduler_config(config)?;
    /// assert_eq!(request.scheduler, SchedulerKind::Ddim { eta: 0.0 });
    /// # Ok::<(), deradiff_core::Error>(())
    /// ```
    pub fn use_scheduler_config(&mut self, config: SchedulerConfig) -> deradiff_core::Result<()> {
        self.scheduler = SchedulerKind::from_config(&config)?;
        self.scheduler_config = Some(config);
        Ok(())
    }

    /// At least one step: the one check of the rule, for every entry point that samples.
    pub(crate) fn check_steps(&self) -> Result<()> {
        if self.steps == 0 {
            return Err(Error::request("steps", "is 0: it must be at least 1"));
        }
        Ok(())
    }

    /// [`Request::use_scheduler_config`] with the config read from a `scheduler_config.json`.
    pub fn use_scheduler_config_file(&mut self, path: impl AsRef<Path>) -> deradiff_core::Result<()> {
        self.use_scheduler_config(SchedulerConfig::from_file(path)?)
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
    pub(super) embeddings: PromptEmbeddings,
    pub(super) encoding: Encoding,
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
pub(super) struct Micro {
    height: Option<usize>,
    width: Option<usize>,
    original_size: Option<(usize, usize)>,
    crop_top_left: (usize, usize),
    target_size: Option<(usize, usize)>,
}

impl Micro {
    pub(super) fn of(r: &Request) -> Self {
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
pub(super) struct Encoding {
    pub(super) sdxl: bool,
    pub(super) prompts: Vec<String>,
    pub(super) negative_prompt: Option<String>,
    pub(super) images_per_prompt: usize,
    pub(super) guidance_scale: f64,
    pub(super) zero_negative: bool,
    pub(super) time_ids: Option<[f64; 6]>,
    pub(super) micro: Micro,
}

impl Encoding {
    pub(super) fn guided(&self) -> bool {
        self.guidance_scale > 1.0
    }

    /// An error unless embeddings encoded for `self` are those of `now`.
    pub(super) fn check_belongs(&self, now: &Encoding) -> Result<()> {
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
