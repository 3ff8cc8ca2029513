//! Euler ancestral sampling in σ-space (Karras et al. 2022; k-diffusion's
//! `sample_euler_ancestral`), as diffusers' `EulerAncestralDiscreteScheduler`.

use candle_core::Tensor;

use super::{check_compatible, check_step, compute_dtype, AffineMean, Scheduler};
use crate::config::{SchedulerConfig, TrainingConfig};
use crate::error::Result;
use crate::posterior::{Posterior, Variance};
use crate::schedule::{inference_timesteps, numpy_interp, NoiseSchedule, PredictionType, TimestepSpacing};
use crate::sigmas::float32_tables;

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
/// The latent lives in σ-space (`x = x_VP √(σ² + 1)`). The last step goes to σ = 0 (variance 0).
///
/// # float32, as diffusers
///
/// diffusers keeps this scheduler's timesteps and σ in float32, and its float32 rounding is
/// large here (1e-5 to 1e-4 relative in the variances: `1 − ᾱ` cancels near `t = 0`, and
/// `σ² − σ'²` cancels between close steps). This sampler reproduces it dtype for dtype, so that
/// it takes diffusers' steps rather than those of exact arithmetic:
/// * timesteps: `linspace` spacing is numpy's float64 `linspace` rounded to float32
///   (`np.linspace(0, T − 1, n, dtype=np.float32)`: 978.61224… becomes 978.6122436523438 for
///   n = 50); `leading` and `trailing` timesteps are integers, exact in float32;
/// * σ of each step: diffusers' float32 σ table of the training schedule (float32 betas,
///   `cumprod`, `√((1 − ᾱ)/ᾱ)`), interpolated at the float32 timesteps in float64 as numpy's
///   `interp` does, then rounded to float32;
/// * `σ_up`, `σ_down`, `σ_down − σ`, `√(σ² + 1)` (for `scale_model_input`, `init_noise_sigma`
///   and v-prediction) are evaluated in float32 from those σ, as diffusers' 0-d float32 tensors
///   are.
///
/// The remaining differences from diffusers are in the last float32 bit (torch's float32 square
/// root is not always correctly rounded; the latent arithmetic itself runs in the latent's
/// dtype). Where float32 rounding would make `σ'² − σ_up²` negative (diffusers: NaN) it is taken
/// as 0.
#[derive(Debug, Clone)]
pub struct EulerAncestral {
    config: EulerAncestralConfig,
    schedule: NoiseSchedule,
    timesteps: Vec<f64>,
    /// σ of each step, then a final 0: float32 values.
    sigmas: Vec<f64>,
}

impl EulerAncestral {
    /// An Euler-ancestral sampler with `num_inference_steps` steps.
    pub fn new(config: EulerAncestralConfig, num_inference_steps: usize) -> Result<Self> {
        let schedule = NoiseSchedule::from_training(&config.training)?;
        // diffusers: timesteps = np.linspace(..., dtype=np.float32) (or integer float32 ones).
        let timesteps: Vec<f64> = inference_timesteps(
            config.training.timestep_spacing,
            schedule.num_train_timesteps(),
            num_inference_steps,
            config.training.steps_offset,
            true,
        )?
        .into_iter()
        .map(|t| f64::from(t as f32))
        .collect();
        // sigmas = np.interp(timesteps, np.arange(T), float32 σ table); concatenate [0];
        // astype(np.float32).
        // (With rescale_betas_zero_snr, ᾱ_{T−1} = 2⁻²⁴ as in diffusers: σ ≈ 4096.)
        let table = float32_tables(&config.training, true)?.sigmas;
        let mut sigmas: Vec<f64> = timesteps.iter().map(|&t| f64::from(numpy_interp(t, &table) as f32)).collect();
        sigmas.push(0.0);
        Ok(Self { config, schedule, timesteps, sigmas })
    }

    /// The configuration.
    pub fn config(&self) -> &EulerAncestralConfig {
        &self.config
    }

    /// The noise schedule (the exact f64 training schedule; the steps use diffusers' float32 σ,
    /// see [`EulerAncestral::sigmas`]).
    pub fn schedule(&self) -> &NoiseSchedule {
        &self.schedule
    }

    /// σ of every step, followed by the final 0 (float32 values, as diffusers' `sigmas`).
    pub fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    /// σ of `step` and of the step after it, as the float32 values they are.
    fn sigma_pair(&self, step: usize) -> (f32, f32) {
        (self.sigmas[step] as f32, self.sigmas[step + 1] as f32)
    }
}

/// `√(σ² + 1)` in float32, as diffusers' `(sigma**2 + 1) ** 0.5` on a float32 tensor.
fn vp_scale(sigma: f32) -> f32 {
    (sigma * sigma + 1.0).sqrt()
}

impl Scheduler for EulerAncestral {
    fn num_steps(&self) -> usize {
        self.timesteps.len()
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        let max = self.sigmas.iter().map(|&s| s as f32).fold(0.0f32, f32::max);
        f64::from(match self.config.training.timestep_spacing {
            TimestepSpacing::Linspace | TimestepSpacing::Trailing => max,
            TimestepSpacing::Leading => vp_scale(max),
        })
    }

    fn scale_model_input(&self, x: &Tensor, step: usize) -> Result<Tensor> {
        check_step(step, self.num_steps())?;
        let scale = f64::from(vp_scale(self.sigmas[step] as f32));
        let dtype = x.dtype();
        Ok(x.to_dtype(compute_dtype(dtype))?.affine(1.0 / scale, 0.0)?.to_dtype(dtype)?)
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
        "EulerAncestralDiscreteScheduler"
    }

    fn posterior(&self, x: &Tensor, model_output: &Tensor, step: usize) -> Result<Posterior> {
        check_step(step, self.num_steps())?;
        check_compatible(x, model_output, 1)?;
        let dtype = x.dtype();
        let cdt = compute_dtype(dtype);
        let (x, model_output) = (x.to_dtype(cdt)?, model_output.to_dtype(cdt)?);

        // The step's scalars in float32, as diffusers computes them from its float32 sigmas.
        let (sigma, sigma_to) = self.sigma_pair(step);
        let x0 = match self.config.training.prediction_type {
            PredictionType::Epsilon => (1.0, -f64::from(sigma)),
            PredictionType::VPrediction => {
                // model_output * (-sigma / (sigma**2 + 1) ** 0.5) + sample / (sigma**2 + 1)
                let s2 = sigma * sigma + 1.0;
                (1.0 / f64::from(s2), f64::from(-sigma / s2.sqrt()))
            }
            // diffusers raises NotImplementedError here; the x₀ parameterisation is exact.
            PredictionType::Sample => (0.0, 1.0),
        };
        let (from2, to2) = (sigma * sigma, sigma_to * sigma_to);
        let sigma_up = (to2 * (from2 - to2) / from2).max(0.0).sqrt();
        let sigma_down = (to2 - sigma_up * sigma_up).max(0.0).sqrt();
        // μ = x + (x − x̂₀)/σ · dt with dt = σ_down − σ (float32).
        let r = f64::from(sigma_down - sigma) / f64::from(sigma);
        let mean =
            AffineMean { x0, clip: None, a: -r, b: 1.0 + r, c: 0.0 }.apply(&x, &model_output)?.to_dtype(dtype)?;
        let var = f64::from(sigma_up);
        Ok(Posterior { mean, variance: Variance::Scalar(var * var) })
    }
}
