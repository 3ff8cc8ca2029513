//! DDIM (Song et al. 2021, eq. 12), as diffusers' `DDIMScheduler`.

use candle_core::Tensor;

use super::{check_compatible, check_step, compute_dtype, x0_coefficients_vp, AffineMean, Scheduler};
use crate::config::{SchedulerConfig, TrainingConfig};
use crate::error::{Error, Result};
use crate::posterior::{Posterior, Variance};
use crate::schedule::{inference_timesteps, NoiseSchedule, PredictionType, TimestepSpacing};

/// Configuration of [`Ddim`].
///
/// [`Default`] is the plain sampler for a model deradiff knows nothing about: diffusers'
/// `DDIMScheduler()` schedule with `η = 0` and **no** clipping of `x̂₀`. [`DdimConfig::diffusers`]
/// is diffusers' class default, which clamps `x̂₀` to `[-1, 1]` (right for pixel-space models
/// trained on data in `[-1, 1]`, silently wrong for any other); a checkpoint's own
/// `scheduler_config.json` is read by [`DdimConfig::from_diffusers`].
///
/// ```
/// use deradiff_core::DdimConfig;
///
/// let own_model = DdimConfig { eta: 0.5, ..Default::default() };
/// assert_eq!(own_model.clip_sample, None);
/// assert_eq!(DdimConfig::diffusers().clip_sample, Some(1.0));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct DdimConfig {
    /// Training schedule and step placement.
    pub training: TrainingConfig,
    /// Stochasticity `η ∈ [0, 1]`: 0 is deterministic DDIM, 1 has DDPM's posterior variance.
    pub eta: f64,
    /// Past the last step use `ᾱ = 1` (true) or `ᾱ_0` (false).
    pub set_alpha_to_one: bool,
    /// Clamp `x̂₀` to `[-r, r]` (`clip_sample`); off in [`Default`], on with `r = 1` in
    /// [`DdimConfig::diffusers`] (diffusers' class default).
    pub clip_sample: Option<f64>,
    /// Recompute ε from the clipped `x̂₀` (diffusers' `use_clipped_model_output`).
    pub use_clipped_model_output: bool,
}

impl Default for DdimConfig {
    /// diffusers' `DDIMScheduler()` schedule, `η = 0`, no `x̂₀` clipping.
    fn default() -> Self {
        Self {
            training: TrainingConfig::diffusers_default(TimestepSpacing::Leading),
            eta: 0.0,
            set_alpha_to_one: true,
            clip_sample: None,
            use_clipped_model_output: false,
        }
    }
}

impl DdimConfig {
    /// diffusers' `DDIMScheduler()` exactly, `x̂₀` clipped to `[-1, 1]` included (`η = 0`).
    pub fn diffusers() -> Self {
        Self { clip_sample: Some(1.0), ..Self::default() }
    }

    /// From a checkpoint's `scheduler_config.json`, with `DDIMScheduler`'s defaults for missing
    /// fields (`η` is a sampling choice, not part of the file: 0 here).
    pub fn from_diffusers(config: &SchedulerConfig) -> Result<Self> {
        let d = Self::diffusers();
        Ok(Self {
            training: config.training(&d.training)?,
            set_alpha_to_one: config.set_alpha_to_one.unwrap_or(d.set_alpha_to_one),
            clip_sample: config.clip(true)?,
            ..d
        })
    }
}

/// DDIM: `μ = √ᾱ_prev x̂₀ + √(1 − ᾱ_prev − σ_t²) ε̂`, `σ_t² = η² (1−ᾱ_prev)/(1−ᾱ_t) (1 − ᾱ_t/ᾱ_prev)`.
///
/// The previous timestep is `t − T / n` (integer division) whatever the spacing, exactly as
/// diffusers; with `η = 0` every step has variance 0.
#[derive(Debug, Clone)]
pub struct Ddim {
    config: DdimConfig,
    schedule: NoiseSchedule,
    timesteps: Vec<f64>,
    final_alpha_cumprod: f64,
}

impl Ddim {
    /// A DDIM sampler with `num_inference_steps` steps. Errors if `η` is outside `[0, 1]`.
    pub fn new(config: DdimConfig, num_inference_steps: usize) -> Result<Self> {
        if !(0.0..=1.0).contains(&config.eta) {
            return Err(Error::InvalidConfig(format!("DDIM eta must lie in [0, 1], got {}", config.eta)));
        }
        let schedule = NoiseSchedule::from_training(&config.training)?;
        let timesteps = inference_timesteps(
            config.training.timestep_spacing,
            schedule.num_train_timesteps(),
            num_inference_steps,
            config.training.steps_offset,
            false,
        )?;
        super::check_zero_snr_epsilon(config.training.prediction_type, &schedule, &timesteps)?;
        let final_alpha_cumprod = if config.set_alpha_to_one { 1.0 } else { schedule.alphas_cumprod()[0] };
        Ok(Self { config, schedule, timesteps, final_alpha_cumprod })
    }

    /// The configuration.
    pub fn config(&self) -> &DdimConfig {
        &self.config
    }

    /// The noise schedule.
    pub fn schedule(&self) -> &NoiseSchedule {
        &self.schedule
    }
}

impl Scheduler for Ddim {
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
        "DDIMScheduler"
    }

    fn posterior(&self, x: &Tensor, model_output: &Tensor, step: usize) -> Result<Posterior> {
        check_step(step, self.num_steps())?;
        check_compatible(x, model_output, 1)?;
        let dtype = x.dtype();
        let cdt = compute_dtype(dtype);
        let (x, model_output) = (x.to_dtype(cdt)?, model_output.to_dtype(cdt)?);

        let ac = self.schedule.alphas_cumprod();
        let t = self.timesteps[step] as i64;
        let prev_t = t - (self.schedule.num_train_timesteps() / self.num_steps()) as i64;
        let alpha_prod_t = ac[t as usize];
        let alpha_prod_t_prev = if prev_t >= 0 { ac[prev_t as usize] } else { self.final_alpha_cumprod };
        let beta_prod_t = 1.0 - alpha_prod_t;
        let beta_prod_t_prev = 1.0 - alpha_prod_t_prev;
        let prediction = self.config.training.prediction_type;

        // Song et al. eq. 12 with η (eq. 16): μ = √ᾱ_prev x̂₀ + √(1 − ᾱ_prev − σ_t²) ε̂.
        let variance = (beta_prod_t_prev / beta_prod_t) * (1.0 - alpha_prod_t / alpha_prod_t_prev);
        let std_dev_t = self.config.eta * variance.sqrt();
        let direction = (1.0 - alpha_prod_t_prev - std_dev_t * std_dev_t).max(0.0).sqrt();
        let (sa, sb) = (alpha_prod_t.sqrt(), beta_prod_t.sqrt());
        let (a, b, c) = if self.config.use_clipped_model_output {
            // ε̂ = (x − √ᾱ x̂₀)/√(1−ᾱ) from the clipped x̂₀.
            (alpha_prod_t_prev.sqrt() - direction * sa / sb, direction / sb, 0.0)
        } else {
            // ε̂ from the raw model output (diffusers computes it before clipping x̂₀).
            let (ex, eo) = match prediction {
                PredictionType::Epsilon => (0.0, 1.0),
                PredictionType::Sample => (1.0 / sb, -sa / sb),
                PredictionType::VPrediction => (sb, sa),
            };
            (alpha_prod_t_prev.sqrt(), direction * ex, direction * eo)
        };
        let mean =
            AffineMean { x0: x0_coefficients_vp(prediction, alpha_prod_t)?, clip: self.config.clip_sample, a, b, c }
                .apply(&x, &model_output)?
                .to_dtype(dtype)?;
        let var = if self.config.eta > 0.0 { std_dev_t * std_dev_t } else { 0.0 };
        Ok(Posterior { mean, variance: Variance::Scalar(var) })
    }
}
