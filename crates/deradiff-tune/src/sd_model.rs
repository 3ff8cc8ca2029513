//! Stable Diffusion as a [`SweepModel`]: a reference checkpoint and one aligned UNet or LoRA, sampled
//! with classifier-free guidance for each prompt of a sweep, decoded by the VAE into images in
//! `[-1, 1]` (what [`deradiff_rewards::ClipScore`] and [`deradiff_rewards::PickScore`] score).

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;

use candle_core::{DType, Device, Tensor, TensorId};
use deradiff_core::{Denoiser, Scheduler, SchedulerConfig, SchedulerKind};
use deradiff_sd::{
    AdapterView, Guided, JointGuided, LoadOptions, PromptEmbeddings, Request, RowGroup, StableDiffusion,
};

use crate::error::{Error, Result};
use crate::model::{fnv1a, Prompt, SweepModel};

/// What a Stable Diffusion sweep samples with.
#[derive(Debug, Clone)]
pub struct SdSetup {
    /// The reference checkpoint (diffusers layout).
    pub reference: PathBuf,
    /// The aligned model: a UNet (pipeline directory, `unet/` directory or `.safetensors` file)
    /// or a LoRA adapter (file or folder, any layout of [`deradiff_sd::lora::LoraFormat`]), which then
    /// runs with the reference in one UNet pass per step.
    pub aligned: PathBuf,
    /// dtype and device.
    pub load: LoadOptions,
    /// The sampler.
    pub scheduler: SchedulerKind,
    /// The scheduler config it is built from (options included); `None`: the reference's own
    /// `scheduler_config.json`.
    pub scheduler_config: Option<SchedulerConfig>,
    /// Inference steps.
    pub steps: usize,
    /// Classifier-free guidance scale; `None`: the checkpoint's, as a [`Request`] without one
    /// samples with ([`StableDiffusion::default_guidance_scale`]: 7.5 for SD 1.x / 2.x, 5.0 for
    /// SDXL).
    pub guidance_scale: Option<f64>,
    /// Negative prompt (None: the empty prompt).
    pub negative_prompt: Option<String>,
    /// Image size (height, width) in pixels (None: the checkpoint's).
    pub size: Option<(usize, usize)>,
    /// How λ realigns: posterior fusion (DeRaDiff, the default) or the weight-space baseline.
    pub realign: Realignment,
}

/// How a Stable Diffusion sweep realigns at λ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Realignment {
    /// The geometric mixture of the reference's and the aligned model's posteriors (DeRaDiff).
    #[default]
    Posterior,
    /// The single model `base + λ · scale · up · down` (the aligned model's LoRA merged at λ,
    /// "rewarded soups"): the baseline. Needs a LoRA-aligned model.
    Weights,
}

impl SdSetup {
    /// Euler ancestral (the paper's SD 1.5 sampler), [`deradiff_sd::DEFAULT_STEPS`] steps (50) and
    /// the checkpoint's guidance scale (7.5 for SD 1.x / 2.x, 5.0 for SDXL), f32 on CPU.
    pub fn new(reference: impl Into<PathBuf>, aligned: impl Into<PathBuf>) -> Self {
        Self {
            reference: reference.into(),
            aligned: aligned.into(),
            load: LoadOptions::default(),
            scheduler: SchedulerKind::EulerAncestral,
            scheduler_config: None,
            steps: deradiff_sd::DEFAULT_STEPS,
            guidance_scale: None,
            negative_prompt: None,
            size: None,
            realign: Realignment::Posterior,
        }
    }
}

/// A reference Stable Diffusion checkpoint and one aligned UNet as a [`SweepModel`].
///
/// Each prompt is encoded once per [`SweepModel::denoisers`] call and shared by both UNets; the
/// denoisers accept any batch (the λ groups of a batched sweep are stacked along dimension 0)
/// by repeating the prompt's embeddings to the batch, cached per batch size.
///
/// Several prompts can share one batch ([`SweepModel::batch_denoisers`], used by sweeps with
/// `prompts_per_batch > 1`): each group's rows are conditioned on its own prompt's text
/// embeddings (and, for SDXL, its own pooled text embeddings and time_ids), guided by its own
/// negative-prompt embeddings, in one UNet call per step for the whole batch.
pub struct SdModel {
    setup: SdSetup,
    sd: StableDiffusion,
    scheduler: Box<dyn Scheduler>,
    request: Request,
    /// The guidance scale sampled with: the setup's, else the checkpoint's.
    guidance: f64,
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
        let config = setup.scheduler_config.as_ref().unwrap_or(sd.scheduler_config());
        let scheduler = setup.scheduler.build(config, setup.steps)?;
        let request = Request {
            prompts: vec![String::new()],
            negative_prompt: setup.negative_prompt.clone(),
            scheduler: setup.scheduler,
            scheduler_config: setup.scheduler_config.clone(),
            steps: setup.steps,
            guidance_scale: setup.guidance_scale,
            height: setup.size.map(|s| s.0),
            width: setup.size.map(|s| s.1),
            ..Default::default()
        };
        // Validates the size against the VAE's scale factor now, not mid-sweep.
        sd.latent_shape(&request, 1)?;
        if setup.realign == Realignment::Weights {
            // A full aligned UNet has no low-rank delta to scale: say so before sampling.
            sd.weight_space_unet(&[0.0])?;
        }
        // The one rule of `sample` and sweeps: the request's scale, else the checkpoint's.
        let guidance = sd.guidance_scale(&request)?;
        Ok(Self { setup, sd, scheduler, request, guidance })
    }

    /// The loaded pipeline.
    pub fn pipeline(&self) -> &StableDiffusion {
        &self.sd
    }
}

/// A guided UNet whose embeddings follow the batch size of its input: `base` holds one row per
/// group of the batch (one row, the prompt's, for a single-prompt batch; one per λ group, each
/// its prompt's, for a prompt-batched one), and an input of `B` rows gets each base row
/// repeated `B / groups` times, cached per batch size (shared by the UNets of one batch).
///
/// The reference and LoRA-aligned models (rows of one UNet with adapters attached) share a
/// [`JointPass`]: the first of them asked at a step runs one UNet pass for all
/// ([`JointGuided::predict_all`]), the others take their rows from it.
struct PromptDenoiser<'a> {
    model: AdapterView<'a>,
    base: Rc<PromptEmbeddings>,
    scale: f64,
    cache: Rc<RefCell<HashMap<usize, Rc<PromptEmbeddings>>>>,
    joint: Option<(Rc<JointPass>, usize)>,
}

/// The models of one joint UNet pass and its last outputs: (latents tensor id, timestep bits,
/// each model's guided output).
struct JointPass {
    models: Vec<Option<usize>>,
    last: RefCell<Option<(TensorId, u64, Vec<Tensor>)>>,
}

impl PromptDenoiser<'_> {
    fn embeddings(&self, batch: usize) -> deradiff_core::Result<Rc<PromptEmbeddings>> {
        let mut cache = self.cache.borrow_mut();
        if let Some(e) = cache.get(&batch) {
            return Ok(e.clone());
        }
        let groups = self.base.batch();
        if batch == 0 || !batch.is_multiple_of(groups) {
            return Err(deradiff_core::Error::denoiser(Error::InvalidArgument(format!(
                "a batch of {batch} latents for {groups} prompt group(s): the batch must be a positive multiple of \
                 the groups"
            ))));
        }
        let e = Rc::new(self.base.repeat_each(batch / groups).map_err(deradiff_core::Error::denoiser)?);
        cache.insert(batch, e.clone());
        Ok(e)
    }
}

impl Denoiser for PromptDenoiser<'_> {
    fn predict(&self, x: &Tensor, timestep: f64) -> deradiff_core::Result<Tensor> {
        let embeddings = self.embeddings(x.dim(0)?)?;
        let Some((joint, index)) = &self.joint else {
            return Guided::new(self.model, &embeddings, self.scale)
                .map_err(deradiff_core::Error::denoiser)?
                .predict(x, timestep);
        };
        let key = (x.id(), timestep.to_bits());
        if let Some((id, t, outs)) = joint.last.borrow().as_ref() {
            if (*id, *t) == key {
                return Ok(outs[*index].clone());
            }
        }
        let outs = JointGuided::new(self.model.unet(), joint.models.clone(), &embeddings, self.scale)
            .and_then(|j| j.predict_all(x, timestep))
            .map_err(deradiff_core::Error::denoiser)?;
        let out = outs[*index].clone();
        *joint.last.borrow_mut() = Some((key.0, key.1, outs));
        Ok(out)
    }
}

impl SdModel {
    /// The prompt's text, or an error naming it.
    fn text_of(prompt: &Prompt) -> Result<&str> {
        prompt.text.as_deref().ok_or_else(|| {
            Error::InvalidArgument(format!("prompt {:?} has no text; Stable Diffusion sweeps need prompts", prompt.id))
        })
    }

    /// The embeddings of `prompts[group_prompts[g]]` for every group `g` (one row each; each
    /// distinct text encoded once).
    fn group_embeddings(&self, prompts: &[&Prompt], group_prompts: &[usize]) -> Result<PromptEmbeddings> {
        if let Some(&bad) = group_prompts.iter().find(|&&p| p >= prompts.len()) {
            return Err(Error::InvalidArgument(format!(
                "a group of the batch names prompt {bad} but the batch has {} prompts",
                prompts.len()
            )));
        }
        let mut texts: Vec<&str> = Vec::new();
        let mut encoded: Vec<PromptEmbeddings> = Vec::new();
        let mut of_prompt: Vec<usize> = Vec::with_capacity(prompts.len());
        for prompt in prompts {
            let text = Self::text_of(prompt)?;
            match texts.iter().position(|t| *t == text) {
                Some(i) => of_prompt.push(i),
                None => {
                    encoded.push(self.encode_text(text)?);
                    texts.push(text);
                    of_prompt.push(texts.len() - 1);
                }
            }
        }
        let rows: Vec<PromptEmbeddings> = group_prompts.iter().map(|&p| encoded[of_prompt[p]].clone()).collect();
        Ok(PromptEmbeddings::concat(&rows)?)
    }

    /// The embeddings of one text (batch 1), encoded as the sweep's request encodes it.
    fn encode_text(&self, text: &str) -> Result<PromptEmbeddings> {
        let request = Request { prompts: vec![text.to_string()], ..self.request.clone() };
        Ok(self.sd.encode(&request)?.into_embeddings())
    }

    /// One [`PromptDenoiser`] per model (reference first) over `base`, sharing one cache; the
    /// reference and LoRA-aligned models share one UNet pass per step.
    fn guided_denoisers(&self, base: PromptEmbeddings) -> Vec<Box<dyn Denoiser + '_>> {
        let base = Rc::new(base);
        let cache = Rc::new(RefCell::new(HashMap::new()));
        let models = self.sd.models();
        let reference = models[0].unet();
        let shared: Vec<usize> = (0..models.len()).filter(|&i| std::ptr::eq(models[i].unet(), reference)).collect();
        let joint = (shared.len() > 1 && reference.num_adapters() > 0 && self.sd.joint_pass()).then(|| {
            Rc::new(JointPass {
                models: shared.iter().map(|&i| models[i].adapter()).collect(),
                last: RefCell::new(None),
            })
        });
        models
            .iter()
            .enumerate()
            .map(|(i, &model)| {
                let slot = shared.iter().position(|&s| s == i);
                Box::new(PromptDenoiser {
                    model,
                    base: base.clone(),
                    scale: self.guidance,
                    cache: cache.clone(),
                    joint: joint.clone().zip(slot),
                }) as Box<dyn Denoiser + '_>
            })
            .collect()
    }
}

/// The weight-space sweep's denoiser: one λ per row group of a joint UNet, guided.
struct WeightSpaceDenoiser {
    unet: deradiff_sd::Unet,
    groups: Vec<RowGroup>,
    embeddings: PromptEmbeddings,
    scale: f64,
}

impl Denoiser for WeightSpaceDenoiser {
    fn predict(&self, x: &Tensor, timestep: f64) -> deradiff_core::Result<Tensor> {
        let view = self.unet.grouped_view(self.groups.clone()).map_err(deradiff_core::Error::denoiser)?;
        Guided::new(view, &self.embeddings, self.scale).map_err(deradiff_core::Error::denoiser)?.predict(x, timestep)
    }
}

impl SweepModel for SdModel {
    fn scheduler(&self) -> &dyn Scheduler {
        self.scheduler.as_ref()
    }

    fn denoisers(&self, prompt: &Prompt) -> Result<Vec<Box<dyn Denoiser + '_>>> {
        let base = self.encode_text(Self::text_of(prompt)?)?;
        Ok(self.guided_denoisers(base))
    }

    /// Per-row text conditioning: each distinct text of `prompts` is encoded once (as
    /// [`SweepModel::denoisers`] encodes it), and the rows of group `g` get
    /// `prompts[group_prompts[g]]`'s embeddings — its text embeddings and negative-prompt
    /// embeddings and, for SDXL, its pooled text embeddings and time_ids — stacked with
    /// [`PromptEmbeddings::concat`]; classifier-free guidance runs on the whole batch at once.
    fn batch_denoisers(
        &self,
        prompts: &[&Prompt],
        group_prompts: &[usize],
        rows_per_group: usize,
    ) -> Result<Vec<Box<dyn Denoiser + '_>>> {
        if prompts.is_empty() || group_prompts.is_empty() {
            return Err(Error::InvalidArgument("a batch of no prompts or no groups".into()));
        }
        if rows_per_group == 0 {
            return Err(Error::InvalidArgument("a batch of groups of no rows".into()));
        }
        // One base row per group (each distinct text encoded once: the same prompt id with
        // several seeds shares its text); the denoisers repeat each to the group's rows.
        Ok(self.guided_denoisers(self.group_embeddings(prompts, group_prompts)?))
    }

    /// With [`Realignment::Weights`]: the reference UNet with the aligned model's adapter
    /// attached once per group at that group's λ, run as one [`deradiff_sd::GroupedView`] (one
    /// UNet pass per step for every λ of the batch; the base weights shared), guided with each
    /// group's prompt. Equals [`StableDiffusion::sample_weight_space`] at each λ.
    fn weight_space_denoiser(
        &self,
        prompts: &[&Prompt],
        group_prompts: &[usize],
        group_lambdas: &[f64],
        rows_per_group: usize,
    ) -> Result<Option<Box<dyn Denoiser + '_>>> {
        if self.setup.realign != Realignment::Weights {
            return Ok(None);
        }
        if group_lambdas.len() != group_prompts.len() || group_lambdas.is_empty() || rows_per_group == 0 {
            return Err(Error::InvalidArgument(format!(
                "a weight-space batch of {} λ for {} groups of {rows_per_group} rows",
                group_lambdas.len(),
                group_prompts.len()
            )));
        }
        let Some(adapter) = self.sd.lora_adapters().first() else {
            return Err(Error::InvalidArgument("weight-space realignment needs a LoRA-aligned model".into()));
        };
        let attached: Vec<(&deradiff_sd::lora::LoraAdapter, f64)> =
            group_lambdas.iter().map(|&l| (adapter, l)).collect();
        let unet = self.sd.models()[0].unet().with_adapters(&attached)?;
        let embeddings = self.group_embeddings(prompts, group_prompts)?.repeat_each(rows_per_group)?;
        let groups = (0..group_lambdas.len()).map(|g| RowGroup { adapter: Some(g), rows: rows_per_group }).collect();
        Ok(Some(Box::new(WeightSpaceDenoiser { unet, groups, embeddings, scale: self.guidance })))
    }

    fn latent_shape(&self, samples: usize) -> Result<Vec<usize>> {
        Ok(self.sd.latent_shape(&self.request, samples)?.to_vec())
    }

    fn dtype(&self) -> DType {
        self.sd.dtype()
    }

    fn device(&self) -> Device {
        self.sd.device().clone()
    }

    fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        Ok(self.decode_with_saturation(latents)?.0)
    }

    /// The decoded images (clamped to `[-1, 1]`, as diffusers' post-processing does before
    /// images are scored) and each one's saturation ([`deradiff_sd::Vae::saturation`]); a value
    /// that is not finite is an error naming the VAE.
    fn decode_with_saturation(&self, latents: &Tensor) -> Result<(Tensor, Option<Vec<f64>>)> {
        let vae = self.sd.vae();
        let raw = vae.decode_unscaled(&vae.unscale(latents)?)?;
        let saturation = vae.saturation(&raw)?;
        Ok((raw.clamp(-1.0, 1.0)?, Some(saturation)))
    }

    /// Each decoded image rounded to 8 bits as diffusers' post-processing does
    /// ([`deradiff_sd::RgbImage::from_tensor`], what the image rewards score), as PNG.
    fn png_images(&self, decoded: &Tensor) -> Result<Option<Vec<Vec<u8>>>> {
        let images = deradiff_sd::RgbImage::from_tensor(decoded)?;
        Ok(Some(images.iter().map(|i| i.encode_png()).collect::<std::result::Result<_, _>>()?))
    }

    fn describe_model(&self, index: usize, weight_space: bool) -> Option<String> {
        Some(match (weight_space, self.sd.lora_adapters().first()) {
            (true, Some(adapter)) => format!(
                "the weight-space model (the reference UNet with the LoRA adapter {} at each group's λ)",
                adapter.source().display()
            ),
            _ => self.sd.describe_model(index),
        })
    }

    fn describe(&self) -> String {
        let s = &self.setup;
        let mut text = format!(
            "sd: reference {} aligned {}, {:?}, {} steps, guidance {}, negative {:?}, size {:?}, {:?} #{:016x}",
            s.reference.display(),
            s.aligned.display(),
            s.scheduler,
            s.steps,
            self.guidance,
            s.negative_prompt,
            s.size,
            s.load.dtype,
            fnv1a(format!("{:?}", s.scheduler_config.as_ref().unwrap_or(self.sd.scheduler_config())).as_bytes()),
        );
        // Appended only when set: results files of posterior sweeps keep their description.
        if s.load.lora_multiplier != 1.0 {
            text.push_str(&format!(", LoRA multiplier {}", s.load.lora_multiplier));
        }
        if s.realign == Realignment::Weights {
            text.push_str(", weight-space realignment");
        }
        text
    }
}
