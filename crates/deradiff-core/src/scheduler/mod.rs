//! Schedulers: the Gaussian posterior `p(x_{t-1} | x_t)` of each reverse step.
//!
//! Unlike diffusers' `step`, which draws the noise and returns a sample (and, for Euler ancestral,
//! advances a hidden `_step_index`), a [`Scheduler`] here is **stateless** and returns the
//! posterior's mean and variance for a step index. That is what DeRaDiff fuses (paper Algorithm 1,
//! lines 10–11), and it is safe to call once per model per step.

mod ddim;
mod ddpm;
mod euler_ancestral;

pub use ddim::{Ddim, DdimConfig};
pub use ddpm::{Ddpm, DdpmConfig, VarianceType};
pub use euler_ancestral::{EulerAncestral, EulerAncestralConfig};

use candle_core::{DType, Tensor};

use crate::config::SchedulerConfig;
use crate::error::{Error, Result};
use crate::ops::linear_combination;
use crate::posterior::Posterior;
use crate::schedule::PredictionType;

/// A sampler's reverse step as a Gaussian posterior.
///
/// Implementations follow diffusers' numerics (the reference users trust). `x` is the current
/// latent `x_t` in the scheduler's own parameterisation (for Euler ancestral, the
/// variance-exploding `x = x_VP · √(σ² + 1)`); `model_output` is the denoiser's output for
/// [`Scheduler::scale_model_input`]`(x, step)`.
pub trait Scheduler: Send + Sync {
    /// Number of inference steps.
    fn num_steps(&self) -> usize;

    /// The training timestep of each inference step, descending (fractional for Euler ancestral
    /// with `linspace` spacing).
    fn timesteps(&self) -> &[f64];

    /// Standard deviation of the initial latent `x_T` (1 for DDPM/DDIM).
    fn init_noise_sigma(&self) -> f64;

    /// The denoiser input for `x` at `step` (identity for DDPM/DDIM, `x / √(σ² + 1)` for Euler).
    fn scale_model_input(&self, x: &Tensor, step: usize) -> Result<Tensor>;

    /// The Gaussian posterior `N(μ, σ²)` of `x_{t-1}` given `x_t = x` and the model output.
    fn posterior(&self, x: &Tensor, model_output: &Tensor, step: usize) -> Result<Posterior>;

    /// What the model output is expected to be.
    fn prediction_type(&self) -> PredictionType;

    /// The training timestep of `step`.
    fn timestep(&self, step: usize) -> Result<f64> {
        self.timesteps().get(step).copied().ok_or(Error::StepOutOfRange { step, num_steps: self.num_steps() })
    }
}

/// The samplers deradiff implements, for choosing one at run time (for example from a command
/// line) together with a checkpoint's [`SchedulerConfig`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SchedulerKind {
    /// DDPM ancestral sampling (variance from the config's `variance_type`).
    Ddpm,
    /// DDIM with the given `η` (0 = deterministic).
    Ddim {
        /// Stochasticity `η ∈ [0, 1]`.
        eta: f64,
    },
    /// Euler ancestral (k-diffusion's `sample_euler_ancestral`).
    EulerAncestral,
}

impl SchedulerKind {
    /// Builds this sampler for `num_inference_steps` from a checkpoint's scheduler config, the
    /// way diffusers' `from_config` does (this sampler's defaults for missing fields).
    pub fn build(&self, config: &SchedulerConfig, num_inference_steps: usize) -> Result<Box<dyn Scheduler>> {
        Ok(match *self {
            SchedulerKind::Ddpm => Box::new(Ddpm::new(DdpmConfig::from_diffusers(config)?, num_inference_steps)?),
            SchedulerKind::Ddim { eta } => {
                let mut c = DdimConfig::from_diffusers(config)?;
                c.eta = eta;
                Box::new(Ddim::new(c, num_inference_steps)?)
            }
            SchedulerKind::EulerAncestral => {
                Box::new(EulerAncestral::new(EulerAncestralConfig::from_diffusers(config)?, num_inference_steps)?)
            }
        })
    }
}

/// The dtype posterior arithmetic runs in: half precision is upcast to f32 (as diffusers'
/// Euler ancestral does), f32 and f64 stay as they are.
pub(crate) fn compute_dtype(dtype: DType) -> DType {
    match dtype {
        DType::F16 | DType::BF16 => DType::F32,
        d => d,
    }
}

pub(crate) fn check_step(step: usize, num_steps: usize) -> Result<()> {
    if step >= num_steps {
        return Err(Error::StepOutOfRange { step, num_steps });
    }
    Ok(())
}

/// Checks that `b` has `a`'s dtype and device, and (unless `channels_factor` ≠ 1 is allowed)
/// its shape.
pub(crate) fn check_compatible(x: &Tensor, model_output: &Tensor, output_channels_factor: usize) -> Result<()> {
    if x.dtype() != model_output.dtype() {
        return Err(Error::DTypeMismatch {
            context: "model output vs latent".into(),
            expected: x.dtype(),
            got: model_output.dtype(),
        });
    }
    if !x.device().same_device(model_output.device()) {
        return Err(Error::DeviceMismatch {
            context: "model output vs latent".into(),
            expected: x.device().location(),
            got: model_output.device().location(),
        });
    }
    let mut expected = x.dims().to_vec();
    if output_channels_factor != 1 && expected.len() >= 2 {
        expected[1] *= output_channels_factor;
    }
    if model_output.dims() != expected.as_slice() {
        return Err(Error::ShapeMismatch {
            context: "model output vs latent".into(),
            expected: expected.into(),
            got: model_output.shape().clone(),
        });
    }
    Ok(())
}

/// `x̂₀ = p·x + q·o` for the variance-preserving parameterisation `x_t = √ᾱ x₀ + √(1−ᾱ) ε`:
/// ε-prediction `(x − √(1−ᾱ) o)/√ᾱ`, v-prediction `√ᾱ x − √(1−ᾱ) o`, sample-prediction `o`.
pub(crate) fn x0_coefficients_vp(prediction: PredictionType, alpha_prod_t: f64) -> (f64, f64) {
    let (sa, sb) = (alpha_prod_t.sqrt(), (1.0 - alpha_prod_t).sqrt());
    match prediction {
        PredictionType::Epsilon => (1.0 / sa, -sb / sa),
        PredictionType::VPrediction => (sa, -sb),
        PredictionType::Sample => (0.0, 1.0),
    }
}

/// A posterior mean `μ = a·x̂₀ + b·x + c·o`, with `x̂₀ = p·x + q·o` clipped to `[−r, r]` when
/// `clip` is set. Every scheduler's mean has this form, so without clipping it is one linear
/// combination of the latent and the model output (one pass over memory on CPU).
#[derive(Debug, Clone, Copy)]
pub(crate) struct AffineMean {
    pub x0: (f64, f64),
    pub clip: Option<f64>,
    pub a: f64,
    pub b: f64,
    pub c: f64,
}

impl AffineMean {
    pub(crate) fn apply(&self, x: &Tensor, o: &Tensor) -> Result<Tensor> {
        let (p, q) = self.x0;
        let (mean, _) = match self.clip {
            None => linear_combination(&[(self.a * p + self.b, x), (self.a * q + self.c, o)], false)?,
            Some(r) => {
                let (x0, _) = linear_combination(&[(p, x), (q, o)], false)?;
                let x0 = x0.clamp(-r, r)?;
                linear_combination(&[(self.a, &x0), (self.b, x), (self.c, o)], false)?
            }
        };
        Ok(mean)
    }
}
