//! DDPM ancestral sampling (Ho et al. 2020, eqs. 6–7), as diffusers' `DDPMScheduler`.

use candle_core::Tensor;

use super::{check_compatible, check_step, compute_dtype, x0_coefficients_vp, AffineMean, Scheduler};
use crate::config::{SchedulerConfig, TrainingConfig};
use crate::error::{Error, Result};
use crate::posterior::{Posterior, Variance};
use crate::schedule::{inference_timesteps, NoiseSchedule, PredictionType, TimestepSpacing};

/// The variance of DDPM's reverse step (diffusers' `variance_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarianceType {
    /// `β̃_t = (1 − ᾱ_{t−1}) / (1 − ᾱ_t) · β_t`, the true posterior variance, floored at 1e-20 as
    /// diffusers does. `fixed_small_log` is the same variance.
    FixedSmall,
    /// `β_t = 1 − ᾱ_t / ᾱ_{t−1}` (the upper bound of Ho et al.).
    FixedLarge,
    /// The model's extra channels are the variance itself.
    Learned,
    /// The model's extra channels `v ∈ [−1, 1]` interpolate the log-variance between `β̃_t` and
    /// `β_t` (Nichol & Dhariwal 2021, eq. 15): `exp(((v+1)/2) log β_t + ((1−v)/2) log β̃_t)`.
    LearnedRange,
}

impl VarianceType {
    /// Parses diffusers' name.
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "fixed_small" | "fixed_small_log" => Ok(Self::FixedSmall),
            "fixed_large" => Ok(Self::FixedLarge),
            "learned" => Ok(Self::Learned),
            "learned_range" => Ok(Self::LearnedRange),
            // diffusers' step takes the square root of a log-variance for this one.
            "fixed_large_log" => Err(Error::Unsupported(
                "variance_type 'fixed_large_log' (diffusers takes the square root of a log-variance \
                 there); use 'fixed_large'"
                    .into(),
            )),
            other => Err(Error::InvalidConfig(format!(
                "variance_type '{other}' is not one of 'fixed_small', 'fixed_small_log', 'fixed_large', \
                 'learned', 'learned_range'"
            ))),
        }
    }

    fn is_learned(&self) -> bool {
        matches!(self, Self::Learned | Self::LearnedRange)
    }
}

/// Configuration of [`Ddpm`].
///
/// [`Default`] is the plain sampler for a model deradiff knows nothing about: diffusers'
/// `DDPMScheduler()` schedule and variance with **no** clipping of `x̂₀`.
/// [`DdpmConfig::diffusers`] is diffusers' class default, which clamps `x̂₀` to `[-1, 1]`; a
/// checkpoint's own `scheduler_config.json` is read by [`DdpmConfig::from_diffusers`].
///
/// ```
/// use deradiff_core::DdpmConfig;
///
/// assert_eq!(DdpmConfig::default().clip_sample, None);
/// assert_eq!(DdpmConfig::diffusers().clip_sample, Some(1.0));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct DdpmConfig {
    /// Training schedule and step placement.
    pub training: TrainingConfig,
    /// Reverse-step variance.
    pub variance_type: VarianceType,
    /// Clamp `x̂₀` to `[-r, r]` (`clip_sample`); off in [`Default`], on with `r = 1` in
    /// [`DdpmConfig::diffusers`] (diffusers' class default).
    pub clip_sample: Option<f64>,
}

impl Default for DdpmConfig {
    /// diffusers' `DDPMScheduler()` schedule and variance, no `x̂₀` clipping.
    fn default() -> Self {
        Self {
            training: TrainingConfig::diffusers_default(TimestepSpacing::Leading),
            variance_type: VarianceType::FixedSmall,
            clip_sample: None,
        }
    }
}

impl DdpmConfig {
    /// diffusers' `DDPMScheduler()` exactly, `x̂₀` clipped to `[-1, 1]` included.
    pub fn diffusers() -> Self {
        Self { clip_sample: Some(1.0), ..Self::default() }
    }

    /// From a checkpoint's `scheduler_config.json`, with `DDPMScheduler`'s defaults for missing
    /// fields.
    pub fn from_diffusers(config: &SchedulerConfig) -> Result<Self> {
        let d = Self::diffusers();
        Ok(Self {
            training: config.training(&d.training)?,
            variance_type: match &config.variance_type {
                Some(v) => VarianceType::from_name(v)?,
                None => d.variance_type,
            },
            clip_sample: config.clip(true)?,
        })
    }
}

/// DDPM: `μ = c₀ x̂₀ + c_t x_t` (Ho et al. eq. 7) with a fixed or learned variance.
///
/// The previous timestep is the next one in the inference schedule (−1 after the last), as in
/// diffusers; at training timestep 0 the step is deterministic (variance 0).
#[derive(Debug, Clone)]
pub struct Ddpm {
    config: DdpmConfig,
    schedule: NoiseSchedule,
    timesteps: Vec<f64>,
}

impl Ddpm {
    /// A DDPM sampler with `num_inference_steps` steps.
    pub fn new(config: DdpmConfig, num_inference_steps: usize) -> Result<Self> {
        let schedule = NoiseSchedule::from_training(&config.training)?;
        let timesteps = inference_timesteps(
            config.training.timestep_spacing,
            schedule.num_train_timesteps(),
            num_inference_steps,
            config.training.steps_offset,
            false,
        )?;
        super::check_zero_snr_epsilon(config.training.prediction_type, &schedule, &timesteps)?;
        Ok(Self { config, schedule, timesteps })
    }

    /// The configuration.
    pub fn config(&self) -> &DdpmConfig {
        &self.config
    }

    /// The noise schedule.
    pub fn schedule(&self) -> &NoiseSchedule {
        &self.schedule
    }

    /// `(ᾱ_t, ᾱ_prev)` of a step: the previous timestep is the next inference timestep.
    fn alphas(&self, step: usize) -> (usize, f64, f64) {
        let ac = self.schedule.alphas_cumprod();
        let t = self.timesteps[step] as usize;
        let a_prev = match self.timesteps.get(step + 1) {
            Some(&prev) => ac[prev as usize],
            None => 1.0,
        };
        (t, ac[t], a_prev)
    }
}

impl Scheduler for Ddpm {
    fn num_steps(&self) -> usize {
        self.timesteps.len()
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn scale_model_input(&self, x: &Tensor, step: usize) -> Result<Tensor> {
        check_step(step, self.num_steps())?;
        Ok(x.clone())
    }

    fn prediction_type(&self) -> PredictionType {
        self.config.training.prediction_type
    }

    fn noise_schedule(&self) -> Option<&NoiseSchedule> {
        Some(&self.schedule)
    }

    fn class_name(&self) -> &'static str {
        "DDPMScheduler"
    }

    fn posterior(&self, x: &Tensor, model_output: &Tensor, step: usize) -> Result<Posterior> {
        check_step(step, self.num_steps())?;
        let learned = self.config.variance_type.is_learned();
        check_compatible(x, model_output, if learned { 2 } else { 1 })?;
        let dtype = x.dtype();
        let cdt = compute_dtype(dtype);
        let (x, model_output) = (x.to_dtype(cdt)?, model_output.to_dtype(cdt)?);
        let (model_output, predicted_variance) = if learned {
            let c = x.dim(1)?;
            (model_output.narrow(1, 0, c)?, Some(model_output.narrow(1, c, c)?))
        } else {
            (model_output, None)
        };

        let (t, alpha_prod_t, alpha_prod_t_prev) = self.alphas(step);
        let beta_prod_t = 1.0 - alpha_prod_t;
        let beta_prod_t_prev = 1.0 - alpha_prod_t_prev;
        let current_alpha_t = alpha_prod_t / alpha_prod_t_prev;
        let current_beta_t = 1.0 - current_alpha_t;

        // Ho et al. eq. 7: μ = c₀ x̂₀ + c_t x_t.
        let mean = AffineMean {
            x0: x0_coefficients_vp(self.config.training.prediction_type, alpha_prod_t)?,
            clip: self.config.clip_sample,
            a: alpha_prod_t_prev.sqrt() * current_beta_t / beta_prod_t,
            b: current_alpha_t.sqrt() * beta_prod_t_prev / beta_prod_t,
            c: 0.0,
        }
        .apply(&x, &model_output)?
        .to_dtype(dtype)?;

        if t == 0 {
            return Ok(Posterior { mean, variance: Variance::Scalar(0.0) });
        }
        let fixed_small = (beta_prod_t_prev / beta_prod_t * current_beta_t).max(1e-20);
        let variance = match (self.config.variance_type, predicted_variance) {
            (VarianceType::FixedSmall, _) => Variance::Scalar(fixed_small),
            (VarianceType::FixedLarge, _) => Variance::Scalar(current_beta_t),
            (VarianceType::Learned, Some(v)) => Variance::Diagonal(v.to_dtype(dtype)?),
            (VarianceType::LearnedRange, Some(v)) => {
                let (min_log, max_log) = (fixed_small.ln(), current_beta_t.ln());
                // frac = (v + 1) / 2; log σ² = frac · max_log + (1 − frac) · min_log
                let frac = v.affine(0.5, 0.5)?;
                let log_var = frac.affine(max_log - min_log, min_log)?;
                Variance::Diagonal(log_var.exp()?.to_dtype(dtype)?)
            }
            (_, None) => unreachable!("learned variance types always split the model output"),
        };
        Ok(Posterior { mean, variance })
    }
}
