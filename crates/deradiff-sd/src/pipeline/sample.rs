//! Sampling: one guided denoiser per model (the reference and LoRA-aligned models in one joint
//! UNet pass), the realigned loop of deradiff-core with zero-weight models pruned, weight-space
//! realignment for comparison, and the VAE decode.

use candle_core::Tensor;
use deradiff_core::{Denoiser, NoiseSource, Observer, Realigner, SampleOutput, Sampler, SeededNoise};

use super::request::{EncodedRequest, Generation, Request};
use super::StableDiffusion;
use crate::error::{Error, Result};
use crate::guidance::{Guided, PromptEmbeddings};
use crate::image::RgbImage;
use crate::unet::Unet;
#[cfg(doc)]
use crate::vae::Vae;

impl StableDiffusion {
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
        self.check_encoded(request, encoded)?;
        let unet = self.weight_space_unet(lambdas)?;
        let guidance_scale = self.guidance_scale(request)?;
        let shape = self.latent_shape(request, encoded.batch())?;
        let scheduler = self.scheduler(request)?;
        let guided = Guided::new(&unet, &encoded.embeddings, guidance_scale)?;
        let sampler = Sampler::new(scheduler.as_ref(), vec![&guided as &dyn Denoiser], Realigner::new(vec![1.0])?)?;
        sampler.run(shape.to_vec(), self.dtype, &self.device, noise, observer).map_err(|e| {
            name_model(e, |_| {
                format!("the weight-space model (the reference UNet with the LoRA adapters merged at λ = {lambdas:?})")
            })
        })
    }

    /// The checks [`Self::sample`] and [`Self::sample_weight_space`] share: at least one step, and
    /// `encoded` made from this request (or one that differs only where the encoding does not).
    fn check_encoded(&self, request: &Request, encoded: &EncodedRequest) -> Result<()> {
        request.check_steps()?;
        encoded.encoding.check_belongs(&self.encoding(request)?)
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
        self.check_encoded(request, encoded)?;
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
        let scheduler = self.scheduler(request)?;
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
        sampler
            .run(shape.to_vec(), self.dtype, &self.device, noise, observer)
            .map_err(|e| name_model(e, |i| self.describe_model(kept.get(i).copied().unwrap_or(i))))
    }

    /// Decodes final latents (as [`Self::sample`] produces them) to 8-bit images, one VAE pass
    /// ([`Vae::decode`]).
    pub fn decode(&self, latents: &Tensor) -> Result<Vec<RgbImage>> {
        self.vae.decode(latents)
    }

    /// [`Self::decode`] and each image's saturation, the fraction of its pixels clipped to black,
    /// white or a pure colour ([`Vae::decode_with_saturation`]; at [`Vae::SATURATED`] or more the
    /// image is reported as saturated).
    pub fn decode_with_saturation(&self, latents: &Tensor) -> Result<(Vec<RgbImage>, Vec<f64>)> {
        self.vae.decode_with_saturation(latents)
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

/// A core error of the sampling loop as this crate's, with a model whose output went non-finite
/// named by `describe` (from its index among the sampler's denoisers).
pub(crate) fn name_model(e: deradiff_core::Error, describe: impl Fn(usize) -> String) -> Error {
    match e {
        deradiff_core::Error::NonFiniteModelOutput { step, timestep, model } => {
            Error::NonFiniteOutput { model: describe(model), at: format!("at step {step} (timestep {timestep})") }
        }
        other => other.into(),
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
