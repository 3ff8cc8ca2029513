//! What a sweep samples from: a [`SweepModel`] (scheduler, reference and aligned denoisers per
//! prompt, decoder) and the [`Prompt`]s it is evaluated on; [`AnalyticModel`] is the analytic
//! testbed's.

use candle_core::{DType, Device, Tensor};
use deradiff_analytic::{build_scheduler_with, default_training, ExactDenoiser, GaussianMixture};
use deradiff_core::{Denoiser, Scheduler, SchedulerConfig, SchedulerKind, TrainingConfig};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One element of a prompt set: an id (unique within a sweep; the key of its rows in a results
/// file), an optional text (what an image model is conditioned on and a text–image reward
/// scores against) and the seed of its noise.
///
/// On the analytic testbed a "prompt" is a seeded group of samples: [`Prompt::seeded`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prompt {
    /// Unique id.
    pub id: String,
    /// The text, if the model is text-conditioned.
    pub text: Option<String>,
    /// Seed of this prompt's noise: every λ of the prompt gets the same noise.
    pub seed: u64,
}

impl Prompt {
    /// A text prompt with an id and a seed.
    pub fn text(id: impl Into<String>, text: impl Into<String>, seed: u64) -> Self {
        Self { id: id.into(), text: Some(text.into()), seed }
    }

    /// A group of samples without text, named `seed-<seed>`.
    pub fn seeded(seed: u64) -> Self {
        Self { id: format!("seed-{seed}"), text: None, seed }
    }

    /// [`Prompt::seeded`] for every seed.
    pub fn seeds(seeds: impl IntoIterator<Item = u64>) -> Vec<Self> {
        seeds.into_iter().map(Self::seeded).collect()
    }

    /// Every prompt once per seed, prompt-major (`p0` with each seed, then `p1`, …): the same id
    /// and text, one row per (λ, prompt, seed) in a sweep. The prompts' own seeds are replaced.
    pub fn with_seeds(prompts: &[Prompt], seeds: &[u64]) -> Vec<Self> {
        prompts.iter().flat_map(|p| seeds.iter().map(move |&seed| Self { seed, ..p.clone() })).collect()
    }
}

use deradiff_rewards::MAX_PROMPTS;

/// Checks that a prompt set is not empty, its ids are not empty and its (id, seed) pairs unique.
pub(crate) fn check_prompts(prompts: &[Prompt]) -> Result<()> {
    if prompts.is_empty() {
        return Err(Error::InvalidArgument("the prompt set is empty: give at least one prompt (or seed)".into()));
    }
    if prompts.len() > MAX_PROMPTS {
        return Err(Error::InvalidArgument(format!(
            "{} prompts; at most {MAX_PROMPTS} are allowed in one sweep (split the set over several results files)",
            prompts.len()
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, p) in prompts.iter().enumerate() {
        if p.id.is_empty() {
            return Err(Error::InvalidArgument(format!("prompt #{} has an empty id", i + 1)));
        }
        if !seen.insert((p.id.as_str(), p.seed)) {
            return Err(Error::InvalidArgument(format!(
                "the prompt id {:?} appears twice with seed {}; (id, seed) pairs must be unique (they key the \
                 results file)",
                p.id, p.seed
            )));
        }
    }
    Ok(())
}

/// A reference and aligned model pair that a sweep can sample from, for any prompt.
///
/// A Stable Diffusion implementation returns the UNet denoisers conditioned on the prompt's
/// text (classifier-free guidance inside), latents of shape `[m, 4, h, w]`, and decodes with
/// the VAE; the analytic one ([`AnalyticModel`]) returns exact denoisers and samples `[m, d]`
/// as they are. Denoisers must accept any batch size along dimension 0: the λ values of a
/// batched sweep are stacked there.
pub trait SweepModel {
    /// The scheduler (stateless; shared by all models).
    fn scheduler(&self) -> &dyn Scheduler;

    /// The denoisers for `prompt`, in realigner weight order (reference first, then the
    /// aligned model(s)).
    fn denoisers(&self, prompt: &Prompt) -> Result<Vec<Box<dyn Denoiser + '_>>>;

    /// The denoisers for a batch of several prompts: the rows of group `g`
    /// (`g·rows_per_group .. (g+1)·rows_per_group`) are conditioned on
    /// `prompts[group_prompts[g]]`. The default serves models whose denoisers do not depend on
    /// the prompt's text (the analytic testbed: [`SweepModel::denoisers`] of the first prompt)
    /// and refuses text prompts.
    fn batch_denoisers(
        &self,
        prompts: &[&Prompt],
        group_prompts: &[usize],
        rows_per_group: usize,
    ) -> Result<Vec<Box<dyn Denoiser + '_>>> {
        let _ = (group_prompts, rows_per_group);
        match prompts {
            [] => Err(Error::InvalidArgument("a batch of no prompts".into())),
            [one] => self.denoisers(one),
            _ if prompts.iter().all(|p| p.text.is_none()) => self.denoisers(prompts[0]),
            _ => Err(Error::InvalidArgument(format!(
                "{} cannot condition one batch on several prompts: set prompts_per_batch to 1",
                self.describe()
            ))),
        }
    }

    /// Weight-space realignment (the "rewarded soups" baseline): `Some(denoiser)` when this model
    /// realigns in weight space rather than by posterior fusion — one denoiser whose group `g`
    /// (rows `g·rows_per_group .. (g+1)·rows_per_group`) runs the model merged at
    /// `group_lambdas[g]`, conditioned on `prompts[group_prompts[g]]`; the sweep samples it alone
    /// (weight 1). `None` (the default): the sweep fuses [`SweepModel::denoisers`]' posteriors.
    fn weight_space_denoiser(
        &self,
        prompts: &[&Prompt],
        group_prompts: &[usize],
        group_lambdas: &[f64],
        rows_per_group: usize,
    ) -> Result<Option<Box<dyn Denoiser + '_>>> {
        let _ = (prompts, group_prompts, group_lambdas, rows_per_group);
        Ok(None)
    }

    /// The latent shape of `samples` samples of one prompt (`[samples, …]`); an error when the
    /// model's request cannot give one (an image size the VAE cannot halve, a latent too large).
    fn latent_shape(&self, samples: usize) -> Result<Vec<usize>>;

    /// The latent dtype.
    fn dtype(&self) -> DType;

    /// The device the models run on.
    fn device(&self) -> Device;

    /// The samples a reward scores, from final latents (identity by default; a VAE decode for
    /// latent diffusion).
    fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        Ok(latents.clone())
    }

    /// [`SweepModel::decode`] and, per sample, the saturation of its image: the fraction of its
    /// pixels that the decoder's clamp changes (`None`, the default, where that means nothing).
    /// A sweep records the largest of a row's samples in [`crate::SweepRow::saturation`].
    fn decode_with_saturation(&self, latents: &Tensor) -> Result<(Tensor, Option<Vec<f64>>)> {
        Ok((self.decode(latents)?, None))
    }

    /// The samples of [`SweepModel::decode`] as PNG files (8-bit RGB, one per sample): exactly
    /// the images the image rewards score (they make decoded samples 8-bit first). `None`, the
    /// default, where samples are not images (the analytic testbed).
    fn png_images(&self, decoded: &Tensor) -> Result<Option<Vec<Vec<u8>>>> {
        let _ = decoded;
        Ok(None)
    }

    /// Denoiser `index` (of [`SweepModel::denoisers`], or the one of
    /// [`SweepModel::weight_space_denoiser`] when `weight_space`) in words, with its file, for
    /// an error about its output; `None` (the default) leaves the index in the error.
    fn describe_model(&self, index: usize, weight_space: bool) -> Option<String> {
        let _ = (index, weight_space);
        None
    }

    /// A one-line description of the model, scheduler and steps; a results file records it and
    /// refuses to be resumed by a sweep with a different one.
    fn describe(&self) -> String;
}

/// The analytic testbed's model pair: the exact model of a Gaussian mixture (reference) and the
/// exact model aligned to a reward at `anchor_beta` (the anchor), both exact denoisers under
/// the chosen scheduler.
#[derive(Debug, Clone)]
pub struct AnalyticSetup {
    /// The reference data distribution.
    pub mixture: GaussianMixture,
    /// The (proxy) reward the anchor model is aligned with.
    pub proxy: deradiff_analytic::Reward,
    /// KL strength of the anchor (finite, > 0); λ emulates `anchor_beta / λ`.
    pub anchor_beta: f64,
    /// The sampler.
    pub scheduler: SchedulerKind,
    /// The sampler's options as diffusers names them (`use_karras_sigmas`, `solver_order`, …);
    /// its training-schedule fields are replaced by [`AnalyticSetup::training`]'s.
    pub scheduler_options: SchedulerConfig,
    /// Inference steps (≥ 1).
    pub steps: usize,
    /// The training schedule (`None`: diffusers' default with the sampler's default spacing).
    pub training: Option<TrainingConfig>,
}

impl AnalyticSetup {
    /// A setup with DDPM and 50 steps.
    pub fn new(mixture: GaussianMixture, proxy: deradiff_analytic::Reward, anchor_beta: f64) -> Self {
        Self {
            mixture,
            proxy,
            anchor_beta,
            scheduler: SchedulerKind::Ddpm,
            scheduler_options: SchedulerConfig::default(),
            steps: 50,
            training: None,
        }
    }
}

/// [`SweepModel`] of the analytic testbed (see [`AnalyticSetup`]); prompts are seeded groups of
/// `[m, d]` samples and their text is ignored.
pub struct AnalyticModel {
    setup: AnalyticSetup,
    scheduler: Box<dyn Scheduler>,
    reference: ExactDenoiser,
    anchor: ExactDenoiser,
}

impl std::fmt::Debug for AnalyticModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnalyticModel").field("setup", &self.setup).finish_non_exhaustive()
    }
}

impl AnalyticModel {
    /// Builds the scheduler and the two exact models. Errors for a non-positive or infinite
    /// anchor β, zero steps, a reward of another dimension.
    pub fn new(setup: AnalyticSetup) -> Result<Self> {
        if !(setup.anchor_beta > 0.0 && setup.anchor_beta.is_finite()) {
            return Err(Error::InvalidArgument(format!(
                "the anchor β is {}; it must be a positive finite number",
                setup.anchor_beta
            )));
        }
        if setup.steps == 0 {
            return Err(Error::InvalidArgument("the number of inference steps must be at least 1".into()));
        }
        let training = setup.training.clone().unwrap_or_else(|| default_training(setup.scheduler));
        let scheduler = build_scheduler_with(setup.scheduler, &training, &setup.scheduler_options, setup.steps)?;
        let reference = ExactDenoiser::from_training(setup.mixture.clone(), &training)?;
        let anchor = ExactDenoiser::from_training(setup.mixture.tilt(&setup.proxy, setup.anchor_beta)?, &training)?;
        Ok(Self { setup, scheduler, reference, anchor })
    }

    /// The setup.
    pub fn setup(&self) -> &AnalyticSetup {
        &self.setup
    }

    /// The exact reference model.
    pub fn reference(&self) -> &ExactDenoiser {
        &self.reference
    }

    /// The exact anchor model (aligned at `anchor_beta`).
    pub fn anchor(&self) -> &ExactDenoiser {
        &self.anchor
    }
}

impl SweepModel for AnalyticModel {
    fn scheduler(&self) -> &dyn Scheduler {
        self.scheduler.as_ref()
    }

    fn denoisers(&self, _prompt: &Prompt) -> Result<Vec<Box<dyn Denoiser + '_>>> {
        Ok(vec![Box::new(&self.reference), Box::new(&self.anchor)])
    }

    fn latent_shape(&self, samples: usize) -> Result<Vec<usize>> {
        Ok(vec![samples, self.setup.mixture.dim()])
    }

    fn dtype(&self) -> DType {
        DType::F64
    }

    fn device(&self) -> Device {
        Device::Cpu
    }

    fn describe(&self) -> String {
        let s = &self.setup;
        let training = s.training.clone().unwrap_or_else(|| default_training(s.scheduler));
        let mixture = serde_json::to_string(&s.mixture).unwrap_or_default();
        // Options only when set, so that a results file of the class defaults keeps its line.
        let options = if s.scheduler_options == SchedulerConfig::default() {
            String::new()
        } else {
            format!(
                " (options #{:016x})",
                fnv1a(serde_json::to_string(&s.scheduler_options).unwrap_or_default().as_bytes())
            )
        };
        format!(
            "analytic: {}-component {}-D mixture #{:016x}, proxy {}, anchor β = {}, {}{options} {} steps #{:016x}",
            s.mixture.num_components(),
            s.mixture.dim(),
            fnv1a(mixture.as_bytes()),
            s.proxy.describe(),
            s.anchor_beta,
            deradiff_analytic::scheduler_name(s.scheduler),
            s.steps,
            fnv1a(format!("{training:?}").as_bytes()),
        )
    }
}

/// 64-bit FNV-1a: a short, stable fingerprint of a setting for [`SweepModel::describe`].
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
