//! Euler ancestral sampling in σ-space (Karras et al. 2022; k-diffusion's
//! `sample_euler_ancestral`), as diffusers' `EulerAncestralDiscreteScheduler`.

use candle_core::Tensor;

use super::{check_compatible, check_step, compute_dtype, AffineMean, Scheduler};
use crate::config::{SchedulerConfig, TrainingConfig};
use crate::error::Result;
use crate::posterior::{Posterior, Variance};
use crate::schedule::{inference_timesteps, NoiseSchedule, PredictionType, TimestepSpacing};

/// Configuration of [`EulerAncestral`]; [`Default`] is diffusers'
/// `EulerAncestralDiscreteScheduler()` (note its default spacing is `linspace`).
#[derive(Debug, Clone, PartialEq)]
pub struct EulerAncestralConfig {
    /// Training schedule and step placement.
    pub training: TrainingConfig,
}

impl Default for EulerAncestralConfig {
    fn default() -> Self {
        Self { training: TrainingConfig::diffusers_default(TimestepSpacing::Linspace) }
    }
}

impl EulerAncestralConfig {
    /// From a checkpoint's `scheduler_config.json`, with `EulerAncestralDiscreteScheduler`'s
    /// defaults for missing fields.
    pub fn from_diffusers(config: &SchedulerConfig) -> Result<Self> {
        Ok(Self { training: config.training(&Self::default().training)? })
    }
}

/// Euler ancestral: with `σ = σ_i`, `σ' = σ_{i+1}`,
/// `σ_up = √(σ'² (σ² − σ'²) / σ²)`, `σ_down = √(σ'² − σ_up²)`, `x̂₀` from the model output,
/// `μ = x + (x − x̂₀)/σ · (σ_down − σ)` and variance `σ_up²`.
///
/// The latent lives in σ-space (`x = x_VP √(σ² + 1)`); σ at fractional timesteps is interpolated
/// linearly in t as diffusers does. The last step goes to σ = 0 (variance 0).
#[derive(Debug, Clone)]
pub struct EulerAncestral {
    config: EulerAncestralConfig,
    schedule: NoiseSchedule,
    timesteps: Vec<f64>,
    /// σ of each step, then a final 0.
    sigmas: Vec<f64>,
}

impl EulerAncestral {
    /// An Euler-ancestral sampler with `num_inference_steps` steps.
    pub fn new(config: EulerAncestralConfig, num_inference_steps: usize) -> Result<Self> {
        let schedule = NoiseSchedule::new(&config.training.beta_schedule, config.training.num_train_timesteps)?;
        let timesteps = inference_timesteps(
            config.training.timestep_spacing,
            schedule.num_train_timesteps(),
            num_inference_steps,
            config.training.steps_offset,
            true,
        )?;
        let mut sigmas: Vec<f64> = timesteps.iter().map(|&t| schedule.sigma_at(t)).collect();
        sigmas.push(0.0);
        Ok(Self { config, schedule, timesteps, sigmas })
    }

    /// The configuration.
    pub fn config(&self) -> &EulerAncestralConfig {
        &self.config
    }

    /// The noise schedule.
    pub fn schedule(&self) -> &NoiseSchedule {
        &self.schedule
    }

    /// σ of every step, followed by the final 0.
    pub fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }
}

impl Scheduler for EulerAncestral {
    fn num_steps(&self) -> usize {
        self.timesteps.len()
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        let max = self.sigmas.iter().copied().fold(0.0, f64::max);
        match self.config.training.timestep_spacing {
            TimestepSpacing::Linspace | TimestepSpacing::Trailing => max,
            TimestepSpacing::Leading => (max * max + 1.0).sqrt(),
        }
    }

    fn scale_model_input(&self, x: &Tensor, step: usize) -> Result<Tensor> {
        check_step(step, self.num_steps())?;
        let sigma = self.sigmas[step];
        let dtype = x.dtype();
        Ok(x.to_dtype(compute_dtype(dtype))?.affine(1.0 / (sigma * sigma + 1.0).sqrt(), 0.0)?.to_dtype(dtype)?)
    }

    fn prediction_type(&self) -> PredictionType {
        self.config.training.prediction_type
    }

    fn posterior(&self, x: &Tensor, model_output: &Tensor, step: usize) -> Result<Posterior> {
        check_step(step, self.num_steps())?;
        check_compatible(x, model_output, 1)?;
        let dtype = x.dtype();
        let cdt = compute_dtype(dtype);
        let (x, model_output) = (x.to_dtype(cdt)?, model_output.to_dtype(cdt)?);

        let sigma = self.sigmas[step];
        let sigma_to = self.sigmas[step + 1];
        let x0 = match self.config.training.prediction_type {
            PredictionType::Epsilon => (1.0, -sigma),
            PredictionType::VPrediction => {
                let s2 = sigma * sigma + 1.0;
                (1.0 / s2, -sigma / s2.sqrt())
            }
            // diffusers raises NotImplementedError here; the x₀ parameterisation is exact.
            PredictionType::Sample => (0.0, 1.0),
        };
        let sigma_up = (sigma_to * sigma_to * (sigma * sigma - sigma_to * sigma_to) / (sigma * sigma)).max(0.0).sqrt();
        let sigma_down = (sigma_to * sigma_to - sigma_up * sigma_up).max(0.0).sqrt();
        // μ = x + (x − x̂₀)/σ · (σ_down − σ)
        let r = (sigma_down - sigma) / sigma;
        let mean =
            AffineMean { x0, clip: None, a: -r, b: 1.0 + r, c: 0.0 }.apply(&x, &model_output)?.to_dtype(dtype)?;
        Ok(Posterior { mean, variance: Variance::Scalar(sigma_up * sigma_up) })
    }
}
