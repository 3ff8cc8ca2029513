//! Stable Diffusion as a [`SweepModel`]: a reference checkpoint and one aligned UNet, sampled
//! with classifier-free guidance for each prompt of a sweep, decoded by the VAE into images in
//! `[-1, 1]` (what [`crate::ClipScore`] and [`crate::PickScore`] score).

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;

use candle_core::{DType, Device, Tensor};
use deradiff_core::{Denoiser, Scheduler, SchedulerKind};
use deradiff_sd::{Guided, LoadOptions, PromptEmbeddings, Request, StableDiffusion, Unet};

use crate::error::{Error, Result};
use crate::model::{fnv1a, Prompt, SweepModel};

/// What a Stable Diffusion sweep samples with.
#[derive(Debug, Clone)]
pub struct SdSetup {
    /// The reference checkpoint (diffusers layout).
    pub reference: PathBuf,
    /// The aligned UNet (pipeline directory, `unet/` directory or `.safetensors` file).
    pub aligned: PathBuf,
    /// dtype and device.
    pub load: LoadOptions,
    /// The sampler.
    pub scheduler: SchedulerKind,
    /// Inference steps.
    pub steps: usize,
    /// Classifier-free guidance scale.
    pub guidance_scale: f64,
    /// Negative prompt (None: the empty prompt).
    pub negative_prompt: Option<String>,
    /// Image size (height, width) in pixels (None: the checkpoint's).
    pub size: Option<(usize, usize)>,
}

impl SdSetup {
    /// The paper's SD 1.5 setting: Euler ancestral, 50 steps, guidance 7.5, f32 on CPU.
    pub fn new(reference: impl Into<PathBuf>, aligned: impl Into<PathBuf>) -> Self {
        Self {
            reference: reference.into(),
            aligned: aligned.into(),
            load: LoadOptions::default(),
            scheduler: SchedulerKind::EulerAncestral,
            steps: 50,
            guidance_scale: 7.5,
            negative_prompt: None,
            size: None,
        }
    }
}

/// A reference Stable Diffusion checkpoint and one aligned UNet as a [`SweepModel`].
///
/// Each prompt is encoded once per [`SweepModel::denoisers`] call and shared by both UNets; the
/// denoisers accept any batch (the λ groups of a batched sweep are stacked along dimension 0)
/// by repeating the prompt's embeddings to the batch, cached per batch size.
pub struct SdModel {
    setup: SdSetup,
    sd: StableDiffusion,
    scheduler: Box<dyn Scheduler>,
    request: Request,
}

impl std::fmt::Debug for SdModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SdModel").field("setup", &self.setup).finish_non_exhaustive()
    }
}

impl SdModel {
    /// Loads the checkpoints and builds the scheduler from the reference's scheduler config.
    pub fn load(setup: SdSetup) -> Result<Self> {
        let sd = StableDiffusion::load(&setup.reference, std::slice::from_ref(&setup.aligned), &setup.load)?;
        let scheduler = setup.scheduler.build(sd.scheduler_config(), setup.steps)?;
        let request = Request {
            prompts: vec![String::new()],
            negative_prompt: setup.negative_prompt.clone(),
            scheduler: setup.scheduler,
            steps: setup.steps,
            guidance_scale: Some(setup.guidance_scale),
            height: setup.size.map(|s| s.0),
            width: setup.size.map(|s| s.1),
            ..Default::default()
        };
        // Validates the size against the VAE's scale factor now, not mid-sweep.
        sd.latent_shape(&request, 1)?;
        deradiff_sd::GuidanceScale::new(setup.guidance_scale)?;
        Ok(Self { setup, sd, scheduler, request })
    }

    /// The loaded pipeline.
    pub fn pipeline(&self) -> &StableDiffusion {
        &self.sd
    }
}

/// A guided UNet for one prompt whose embeddings follow the batch size of its input.
struct PromptDenoiser<'a> {
    unet: &'a Unet,
    base: Rc<PromptEmbeddings>,
    scale: f64,
    cache: Rc<RefCell<HashMap<usize, Rc<PromptEmbeddings>>>>,
}

impl Denoiser for PromptDenoiser<'_> {
    fn predict(&self, x: &Tensor, timestep: f64) -> deradiff_core::Result<Tensor> {
        let batch = x.dim(0)?;
        let embeddings = {
            let mut cache = self.cache.borrow_mut();
            match cache.get(&batch) {
                Some(e) => e.clone(),
                None => {
                    let e = Rc::new(self.base.repeat_each(batch).map_err(deradiff_core::Error::denoiser)?);
                    cache.insert(batch, e.clone());
                    e
                }
            }
        };
        Guided::new(self.unet, &embeddings, self.scale).map_err(deradiff_core::Error::denoiser)?.predict(x, timestep)
    }
}

impl SweepModel for SdModel {
    fn scheduler(&self) -> &dyn Scheduler {
        self.scheduler.as_ref()
    }

    fn denoisers(&self, prompt: &Prompt) -> Result<Vec<Box<dyn Denoiser + '_>>> {
        let text = prompt.text.as_deref().ok_or_else(|| {
            Error::InvalidArgument(format!("prompt {:?} has no text; Stable Diffusion sweeps need prompts", prompt.id))
        })?;
        let request = Request { prompts: vec![text.to_string()], ..self.request.clone() };
        let base = Rc::new(self.sd.encode(&request)?.into_embeddings());
        let cache = Rc::new(RefCell::new(HashMap::new()));
        Ok(self
            .sd
            .unets()
            .iter()
            .map(|unet| {
                Box::new(PromptDenoiser {
                    unet,
                    base: base.clone(),
                    scale: self.setup.guidance_scale,
                    cache: cache.clone(),
                }) as Box<dyn Denoiser + '_>
            })
            .collect())
    }

    fn latent_shape(&self, samples: usize) -> Vec<usize> {
        // Validated in `load`; the fallback is never reached.
        self.sd.latent_shape(&self.request, samples).map(|s| s.to_vec()).unwrap_or_else(|_| vec![samples])
    }

    fn dtype(&self) -> DType {
        self.sd.dtype()
    }

    fn device(&self) -> Device {
        self.sd.device().clone()
    }

    fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let vae = self.sd.vae();
        let decode = || -> deradiff_sd::Result<Tensor> {
            // diffusers' post-processing clamps to [-1, 1] before images are scored.
            Ok(vae.decode_unscaled(&vae.unscale(latents)?)?.clamp(-1.0, 1.0)?)
        };
        Ok(decode()?)
    }

    fn describe(&self) -> String {
        let s = &self.setup;
        format!(
            "sd: reference {} aligned {}, {:?}, {} steps, guidance {}, negative {:?}, size {:?}, {:?} #{:016x}",
            s.reference.display(),
            s.aligned.display(),
            s.scheduler,
            s.steps,
            s.guidance_scale,
            s.negative_prompt,
            s.size,
            s.load.dtype,
            fnv1a(format!("{:?}", self.sd.scheduler_config()).as_bytes()),
        )
    }
}
