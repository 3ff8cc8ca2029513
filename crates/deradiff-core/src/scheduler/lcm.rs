//! Latent-consistency multistep sampling (Luo et al. 2023), as diffusers' `LCMScheduler`: for
//! distilled models (LCM, LCM-LoRA) at 2–8 steps.

use candle_core::Tensor;

use super::sigma_space::{compute_inputs, zero_snr_epsilon};
use super::{check_step, AffineMean, Scheduler};
use crate::config::{SchedulerConfig, TrainingConfig};
use crate::error::{Error, Result};
use crate::posterior::Posterior;
use crate::schedule::{NoiseSchedule, PredictionType, TimestepSpacing};
use crate::sigmas::{float32_alphas_cumprod, numpy_linspace};

/// Configuration of [`Lcm`]; [`Default`] is diffusers' `LCMScheduler()` (scaled-linear betas
/// 0.00085 → 0.012, 50 original steps, timestep scaling 10).
#[derive(Debug, Clone, PartialEq)]
pub struct LcmConfig {
    /// Training schedule (`rescale_betas_zero_snr` included; LCM places its own timesteps, so
    /// `timestep_spacing` and `steps_offset` are not read).
    pub training: TrainingConfig,
    /// `original_inference_steps`: the distillation schedule the timesteps are taken from.
    pub original_inference_steps: usize,
    /// `timestep_scaling` of the consistency boundary condition.
    pub timestep_scaling: f64,
    /// Clamp `x̂₀` to `[-r, r]` (`clip_sample`, off by default).
    pub clip_sample: Option<f64>,
}

impl Default for LcmConfig {
    fn default() -> Self {
        Self {
            training: TrainingConfig::stable_diffusion(PredictionType::Epsilon, TimestepSpacing::Leading, 0),
            original_inference_steps: 50,
            timestep_scaling: 10.0,
            clip_sample: None,
        }
    }
}

impl LcmConfig {
    /// From a checkpoint's `scheduler_config.json`, with `LCMScheduler`'s defaults for missing
    /// fields.
    pub fn from_diffusers(config: &SchedulerConfig) -> Result<Self> {
        let d = Self::default();
        Ok(Self {
            training: config.training(&d.training)?,
            original_inference_steps: config.original_inference_steps.unwrap_or(d.original_inference_steps),
            timestep_scaling: config.timestep_scaling.unwrap_or(d.timestep_scaling),
            clip_sample: config.clip(false)?,
        })
    }
}

/// LCM: with `t` the step's timestep and `t'` the next one, the consistency function
/// `d = c_out x̂₀ + c_skip x` (`c_skip = σ_d²/((s t)² + σ_d²)`, `c_out = s t/√((s t)² + σ_d²)`,
/// σ_d = 0.5, s = `timestep_scaling`), then `N(√ᾱ_{t'} d, 1 − ᾱ_{t'})` — a fresh noising of the
/// prediction — and the prediction itself at the last step (variance 0).
///
/// Stateless: each step is a Gaussian posterior of the latent and the model output, fused as
/// DDPM's are. `ᾱ` is diffusers' float32 table, `c_skip` and `c_out` are computed in float32 as
/// diffusers does (its timestep is an integer tensor), the rest in f64.
#[derive(Debug, Clone)]
pub struct Lcm {
    config: LcmConfig,
    schedule: NoiseSchedule,
    timesteps: Vec<f64>,
    /// diffusers' float32 ᾱ (as f64).
    alphas_cumprod: Vec<f64>,
}

impl Lcm {
    /// An LCM sampler with `num_inference_steps` steps (at most `original_inference_steps`).
    pub fn new(config: LcmConfig, num_inference_steps: usize) -> Result<Self> {
        let schedule = NoiseSchedule::from_training(&config.training)?;
        let t = schedule.num_train_timesteps();
        let original = config.original_inference_steps;
        if original == 0 || original > t {
            return Err(Error::InvalidConfig(format!(
                "original_inference_steps = {original}: it must lie in 1..={t} (the training timesteps)"
            )));
        }
        if num_inference_steps == 0 || num_inference_steps > original {
            return Err(Error::InvalidConfig(format!(
                "{num_inference_steps} LCM steps were asked for; use 1..={original} (original_inference_steps)"
            )));
        }
        if !(config.timestep_scaling.is_finite() && config.timestep_scaling > 0.0) {
            return Err(Error::InvalidConfig(format!(
                "timestep_scaling must be a positive number, got {}",
                config.timestep_scaling
            )));
        }
        // lcm_origin_timesteps = arange(1, original + 1) · (T // original) − 1, reversed; the
        // inference steps at floor(linspace(0, original, n, endpoint=False)).
        let k = t / original;
        let origin: Vec<usize> = (1..=original).rev().map(|i| i * k - 1).collect();
        let timesteps: Vec<f64> = numpy_linspace(0.0, original as f64, num_inference_steps, false)
            .into_iter()
            .map(|i| origin[(i.floor() as usize).min(original - 1)] as f64)
            .collect();
        let alphas_cumprod = float32_alphas_cumprod(&config.training, false)?.into_iter().map(f64::from).collect();
        super::check_zero_snr_epsilon(config.training.prediction_type, &schedule, &timesteps)?;
        Ok(Self { config, schedule, timesteps, alphas_cumprod })
    }

    /// The configuration.
    pub fn config(&self) -> &LcmConfig {
        &self.config
    }

    /// `(c_skip, c_out)` of a timestep, in float32 as diffusers computes them.
    pub fn boundary_scalings(&self, timestep: f64) -> (f64, f64) {
        let scaled = timestep as f32 * self.config.timestep_scaling as f32;
        let denom = scaled * scaled + 0.25;
        (f64::from(0.25 / denom), f64::from(scaled / denom.sqrt()))
    }
}

impl Scheduler for Lcm {
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
        "LCMScheduler"
    }

    fn posterior(&self, x: &Tensor, model_output: &Tensor, step: usize) -> Result<Posterior> {
        check_step(step, self.num_steps())?;
        let (x, model_output, dtype) = compute_inputs(x, model_output)?;
        let t = self.timesteps[step];
        let last = step + 1 == self.num_steps();
        let alpha_t = self.alphas_cumprod[t as usize];
        let alpha_prev = if last { 1.0 } else { self.alphas_cumprod[self.timesteps[step + 1] as usize] };
        let (sa, sb) = (alpha_t.sqrt(), (1.0 - alpha_t).sqrt());
        let x0 = match self.config.training.prediction_type {
            PredictionType::Epsilon if alpha_t == 0.0 => return Err(zero_snr_epsilon()),
            PredictionType::Epsilon => (1.0 / sa, -sb / sa),
            PredictionType::VPrediction => (sa, -sb),
            PredictionType::Sample => (0.0, 1.0),
        };
        let (c_skip, c_out) = self.boundary_scalings(t);
        // μ = √ᾱ' (c_out x̂₀ + c_skip x); the last step returns the prediction itself.
        let scale = alpha_prev.sqrt();
        let mean = AffineMean { x0, clip: self.config.clip_sample, a: scale * c_out, b: scale * c_skip, c: 0.0 }
            .apply(&x, &model_output)?
            .to_dtype(dtype)?;
        Ok(Posterior::scalar(mean, if last { 0.0 } else { 1.0 - alpha_prev }))
    }
}
