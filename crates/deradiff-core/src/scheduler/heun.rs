//! Heun's method on the probability-flow ODE in σ-space (Karras et al. 2022, Algorithm 1), as
//! diffusers' `HeunDiscreteScheduler`: two model evaluations per step, both realigned.

use candle_core::Tensor;

use super::euler::{ve_init_noise_sigma, ve_scale_model_input, ve_x0};
use super::sigma_space::{check_record, compute_inputs, euler_schedule, EulerLayout};
use super::state::{ModelStep, SharedUpdate, StepContext};
use super::{check_step, Scheduler};
use crate::config::{SchedulerConfig, TrainingConfig};
use crate::error::{Error, Result};
use crate::ops::linear_combination;
use crate::posterior::Posterior;
use crate::schedule::{BetaSchedule, NoiseSchedule, PredictionType, TimestepSpacing};
use crate::sigmas::{FinalSigma, SigmaSpacing};

/// Configuration of [`Heun`]; [`Default`] is diffusers' `HeunDiscreteScheduler()` (`linspace`
/// spacing, **linear** betas 0.00085 → 0.012).
#[derive(Debug, Clone, PartialEq)]
pub struct HeunConfig {
    /// Training schedule and step placement (diffusers' Heun has no zero-SNR option).
    pub training: TrainingConfig,
    /// `use_karras_sigmas` / `use_exponential_sigmas` / `use_beta_sigmas`.
    pub sigma_spacing: SigmaSpacing,
    /// Clamp `x̂₀` to `[-r, r]` (`clip_sample`, off by default).
    pub clip_sample: Option<f64>,
}

impl Default for HeunConfig {
    fn default() -> Self {
        Self {
            training: TrainingConfig {
                beta_schedule: BetaSchedule::Linear { beta_start: 0.00085, beta_end: 0.012 },
                ..TrainingConfig::diffusers_default(TimestepSpacing::Linspace)
            },
            sigma_spacing: SigmaSpacing::Timesteps,
            clip_sample: None,
        }
    }
}

impl HeunConfig {
    /// From a checkpoint's `scheduler_config.json`, with `HeunDiscreteScheduler`'s defaults for
    /// missing fields. `rescale_betas_zero_snr = true` is refused: diffusers' Heun does not
    /// have it (its `from_config` would drop it silently).
    pub fn from_diffusers(config: &SchedulerConfig) -> Result<Self> {
        if config.rescale_betas_zero_snr == Some(true) {
            return Err(Error::Unsupported(
                "HeunDiscreteScheduler has no rescale_betas_zero_snr (diffusers would ignore it); use Euler or \
                 DPM-Solver++ for a zero-SNR model"
                    .into(),
            ));
        }
        Ok(Self {
            training: config.training(&Self::default().training)?,
            sigma_spacing: config.sigma_spacing()?,
            clip_sample: config.clip(false)?,
        })
    }
}

/// Heun: for `n` steps, diffusers' `2n − 1` model evaluations, and as many scheduler steps
/// (its `timesteps` repeat every timestep but the first). Step `2j` is an Euler step from
/// `σ_j` to `σ_{j+1}` (a point, variance 0) that also keeps the model's derivative
/// `d = (x − x̂₀)/σ_j` and the latent it started from; step `2j + 1` evaluates the model at
/// that Euler point and replaces the step by the trapezoid
/// `μ = x_j + (σ_{j+1} − σ_j)(d + d')/2`. The last step (to σ = 0) is an Euler step.
///
/// Realigned, each model's derivative is its own and the starting latent is the shared one, so
/// the fused trapezoid is Heun's step on the weighted model outputs.
#[derive(Debug, Clone)]
pub struct Heun {
    config: HeunConfig,
    schedule: NoiseSchedule,
    /// 2n − 1 timesteps.
    timesteps: Vec<f64>,
    /// 2n σ: `[σ_0, σ_1, σ_1, …, σ_{n−1}, σ_{n−1}, 0]`.
    sigmas: Vec<f64>,
}

impl Heun {
    /// A Heun sampler with `num_inference_steps` steps (`2·num_inference_steps − 1` model
    /// evaluations and scheduler steps).
    pub fn new(config: HeunConfig, num_inference_steps: usize) -> Result<Self> {
        let schedule = NoiseSchedule::from_training(&config.training)?;
        let layout = EulerLayout {
            log_linear: false,
            spacing: config.sigma_spacing,
            sigma_min: None,
            sigma_max: None,
            final_sigma: FinalSigma::Zero,
        };
        let s = euler_schedule(&config.training, num_inference_steps, &layout)?;
        let mut timesteps = vec![s.timesteps[0]];
        timesteps.extend(s.timesteps[1..].iter().flat_map(|&t| [t, t]));
        let mut sigmas = vec![s.sigmas[0]];
        sigmas.extend(s.sigmas[1..s.sigmas.len() - 1].iter().flat_map(|&x| [x, x]));
        sigmas.push(0.0);
        Ok(Self { config, schedule, timesteps, sigmas })
    }

    /// The configuration.
    pub fn config(&self) -> &HeunConfig {
        &self.config
    }

    /// Whether `step` is the first (Euler) evaluation of a Heun step.
    pub fn is_first_order(step: usize) -> bool {
        step.is_multiple_of(2)
    }

    /// `x̂₀` of the model output at noise level σ (clipped if configured).
    fn x0(&self, x: &Tensor, model_output: &Tensor, sigma: f64) -> Result<Tensor> {
        let (p, q) = ve_x0(self.config.training.prediction_type, sigma);
        let (x0, _) = linear_combination(&[(p, x), (q, model_output)], false)?;
        Ok(match self.config.clip_sample {
            Some(r) => x0.clamp(-r, r)?,
            None => x0,
        })
    }
}

impl Scheduler for Heun {
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
        "HeunDiscreteScheduler"
    }

    fn history_len(&self) -> usize {
        1
    }

    fn posterior(&self, x: &Tensor, model_output: &Tensor, step: usize) -> Result<Posterior> {
        Ok(self.step(x, model_output, step, StepContext::EMPTY)?.posterior)
    }

    fn step(&self, x: &Tensor, model_output: &Tensor, step: usize, context: StepContext<'_>) -> Result<ModelStep> {
        check_step(step, self.num_steps())?;
        let (x, model_output, dtype) = compute_inputs(x, model_output)?;
        if Self::is_first_order(step) {
            let (sigma, sigma_next) = (self.sigmas[step], self.sigmas[step + 1]);
            let x0 = self.x0(&x, &model_output, sigma)?;
            // d = (x − x̂₀)/σ; μ = x + d·(σ' − σ)
            let (d, _) = linear_combination(&[(1.0 / sigma, &x), (-1.0 / sigma, &x0)], false)?;
            let (mean, _) = linear_combination(&[(1.0, &x), (sigma_next - sigma, &d)], false)?;
            let posterior = Posterior::scalar(mean.to_dtype(dtype)?, 0.0);
            return Ok(ModelStep { posterior, record: Some(d), shared: SharedUpdate::Input });
        }
        let (Some(d1), Some(start)) = (context.history.last(), context.shared) else {
            return Err(Error::MissingHistory {
                scheduler: self.class_name(),
                step,
                needed: 2,
                got: context.history.len().min(1) + usize::from(context.shared.is_some()),
            });
        };
        check_record(d1, &x, "Heun's first derivative vs the latent")?;
        check_record(start, &x, "Heun's starting latent vs the latent")?;
        let (sigma, sigma_next) = (self.sigmas[step - 1], self.sigmas[step]);
        let x0 = self.x0(&x, &model_output, sigma_next)?;
        // d' = (x − x̂₀)/σ'; μ = x_start + (σ' − σ)(d + d')/2
        let dt = sigma_next - sigma;
        let (mean, _) = linear_combination(
            &[(1.0, start), (0.5 * dt, d1), (0.5 * dt / sigma_next, &x), (-0.5 * dt / sigma_next, &x0)],
            false,
        )?;
        Ok(ModelStep {
            posterior: Posterior::scalar(mean.to_dtype(dtype)?, 0.0),
            record: None,
            shared: SharedUpdate::Keep,
        })
    }
}
