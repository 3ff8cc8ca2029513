//! Euler's method on the probability-flow ODE in σ-space (Karras et al. 2022, Algorithm 1 without
//! churn), as diffusers' `EulerDiscreteScheduler` — Stable Diffusion XL's own scheduler.

use candle_core::Tensor;

use super::sigma_space::{compute_inputs, euler_schedule, EulerLayout};
use super::{check_step, AffineMean, Scheduler};
use crate::config::{SchedulerConfig, TrainingConfig};
use crate::error::{Error, Result};
use crate::posterior::Posterior;
use crate::schedule::{NoiseSchedule, PredictionType, TimestepSpacing};
use crate::sigmas::{FinalSigma, SigmaSpacing};

/// How Euler places σ at the spacing's timesteps (diffusers' `interpolation_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Interpolation {
    /// Linear in the timestep between training timesteps (`linear`).
    #[default]
    Linear,
    /// `n + 1` values uniform in `log σ` from the largest to the smallest training σ
    /// (`log_linear`; the last step then ends at the training σ_0, as in diffusers).
    LogLinear,
}

impl Interpolation {
    /// Parses diffusers' name.
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "linear" => Ok(Self::Linear),
            "log_linear" => Ok(Self::LogLinear),
            other => {
                Err(Error::InvalidConfig(format!("interpolation_type '{other}' is not one of 'linear', 'log_linear'")))
            }
        }
    }
}

/// Configuration of [`Euler`]; [`Default`] is diffusers' `EulerDiscreteScheduler()` (`linspace`
/// spacing, linear betas 1e-4 → 0.02).
#[derive(Debug, Clone, PartialEq)]
pub struct EulerConfig {
    /// Training schedule and step placement (`rescale_betas_zero_snr` included).
    pub training: TrainingConfig,
    /// `interpolation_type`.
    pub interpolation: Interpolation,
    /// `use_karras_sigmas` / `use_exponential_sigmas` / `use_beta_sigmas`.
    pub sigma_spacing: SigmaSpacing,
    /// `sigma_min` of a re-spaced schedule (default: the smallest interpolated σ).
    pub sigma_min: Option<f64>,
    /// `sigma_max` of a re-spaced schedule (default: the largest interpolated σ).
    pub sigma_max: Option<f64>,
    /// `final_sigmas_type`.
    pub final_sigma: FinalSigma,
}

impl Default for EulerConfig {
    fn default() -> Self {
        Self {
            training: TrainingConfig::diffusers_default(TimestepSpacing::Linspace),
            interpolation: Interpolation::Linear,
            sigma_spacing: SigmaSpacing::Timesteps,
            sigma_min: None,
            sigma_max: None,
            final_sigma: FinalSigma::Zero,
        }
    }
}

impl EulerConfig {
    /// From a checkpoint's `scheduler_config.json`, with `EulerDiscreteScheduler`'s defaults for
    /// missing fields.
    pub fn from_diffusers(config: &SchedulerConfig) -> Result<Self> {
        let training = config.training(&Self::default().training)?;
        if config.timestep_type.as_deref() == Some("continuous")
            && training.prediction_type == PredictionType::VPrediction
        {
            return Err(Error::Unsupported(
                "timestep_type 'continuous' with v-prediction (EDM timesteps 0.25·log σ) is not implemented".into(),
            ));
        }
        Ok(Self {
            training,
            interpolation: config
                .interpolation_type
                .as_deref()
                .map_or(Ok(Interpolation::Linear), Interpolation::from_name)?,
            sigma_spacing: config.sigma_spacing()?,
            sigma_min: SchedulerConfig::sigma_bound(config.sigma_min, "sigma_min")?,
            sigma_max: SchedulerConfig::sigma_bound(config.sigma_max, "sigma_max")?,
            final_sigma: config.final_sigma()?,
        })
    }
}

/// Euler: with `σ = σ_i`, `σ' = σ_{i+1}` and `x̂₀` from the model output,
/// `μ = x + (x − x̂₀)/σ · (σ' − σ)`, variance 0 (a deterministic step).
///
/// The latent lives in σ-space (`x = x_VP √(σ² + 1)`). The timesteps and σ are diffusers'
/// float32 values (`docs/math.md` §6); the step's arithmetic is exact f64 from them.
#[derive(Debug, Clone)]
pub struct Euler {
    config: EulerConfig,
    schedule: NoiseSchedule,
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
}

impl Euler {
    /// An Euler sampler with `num_inference_steps` steps.
    pub fn new(config: EulerConfig, num_inference_steps: usize) -> Result<Self> {
        let schedule = NoiseSchedule::from_training(&config.training)?;
        let layout = EulerLayout {
            log_linear: config.interpolation == Interpolation::LogLinear,
            spacing: config.sigma_spacing,
            sigma_min: config.sigma_min,
            sigma_max: config.sigma_max,
            final_sigma: config.final_sigma,
        };
        let s = euler_schedule(&config.training, num_inference_steps, &layout)?;
        Ok(Self { config, schedule, timesteps: s.timesteps, sigmas: s.sigmas })
    }

    /// The configuration.
    pub fn config(&self) -> &EulerConfig {
        &self.config
    }
}

/// `√(σ² + 1)` in float32, as diffusers' `(sigma**2 + 1) ** 0.5` on a float32 tensor.
pub(crate) fn vp_scale(sigma: f64) -> f64 {
    let s = sigma as f32;
    f64::from((s * s + 1.0).sqrt())
}

/// diffusers' `init_noise_sigma` of the Euler family: the largest σ, or `√(σ² + 1)` of it for
/// `leading` spacing (float32).
pub(crate) fn ve_init_noise_sigma(sigmas: &[f64], spacing: TimestepSpacing) -> f64 {
    let max = sigmas.iter().copied().fold(0.0, f64::max);
    match spacing {
        TimestepSpacing::Linspace | TimestepSpacing::Trailing => max,
        TimestepSpacing::Leading => vp_scale(max),
    }
}

/// `x / √(σ² + 1)` (the variance-preserving model input at noise level σ).
pub(crate) fn ve_scale_model_input(x: &Tensor, sigma: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    Ok(x.to_dtype(super::compute_dtype(dtype))?.affine(1.0 / vp_scale(sigma), 0.0)?.to_dtype(dtype)?)
}

/// `x̂₀ = p·x + q·o` in σ-space (diffusers' Euler family): ε `x − σ o`, v `o·(−σ/√(σ²+1)) +
/// x/(σ²+1)`, sample `o`.
pub(crate) fn ve_x0(prediction: PredictionType, sigma: f64) -> (f64, f64) {
    match prediction {
        PredictionType::Epsilon => (1.0, -sigma),
        PredictionType::VPrediction => {
            let s2 = sigma * sigma + 1.0;
            (1.0 / s2, -sigma / s2.sqrt())
        }
        PredictionType::Sample => (0.0, 1.0),
    }
}

impl Scheduler for Euler {
    fn num_steps(&self) -> usize {
        self.timesteps.len()
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        ve_init_noise_sigma(&self.sigmas, self.config.training.timestep_spacing)
    }

    fn scale_model_input(&self, x: &Tensor, step: usize) -> Result<Tensor> {
        check_step(step, self.num_steps())?;
        ve_scale_model_input(x, self.sigmas[step])
    }

    fn prediction_type(&self) -> PredictionType {
        self.config.training.prediction_type
    }

    fn noise_schedule(&self) -> Option<&NoiseSchedule> {
        Some(&self.schedule)
    }

    fn sigmas(&self) -> Option<&[f64]> {
        Some(&self.sigmas)
    }

    fn class_name(&self) -> &'static str {
        "EulerDiscreteScheduler"
    }

    fn posterior(&self, x: &Tensor, model_output: &Tensor, step: usize) -> Result<Posterior> {
        check_step(step, self.num_steps())?;
        let (x, model_output, dtype) = compute_inputs(x, model_output)?;
        let (sigma, sigma_next) = (self.sigmas[step], self.sigmas[step + 1]);
        // μ = x + (x − x̂₀)/σ · (σ' − σ) = (1 + r) x − r x̂₀ with r = (σ' − σ)/σ.
        let r = (sigma_next - sigma) / sigma;
        let x0 = ve_x0(self.config.training.prediction_type, sigma);
        let mean =
            AffineMean { x0, clip: None, a: -r, b: 1.0 + r, c: 0.0 }.apply(&x, &model_output)?.to_dtype(dtype)?;
        Ok(Posterior::scalar(mean, 0.0))
    }
}
