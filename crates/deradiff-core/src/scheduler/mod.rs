//! Schedulers: the Gaussian posterior `p(x_{t-1} | x_t)` of each reverse step.
//!
//! Unlike diffusers' `step`, which draws the noise and returns a sample (and advances a hidden
//! `_step_index`, and for the multistep solvers keeps the last model outputs), a [`Scheduler`]
//! here returns the posterior's mean and variance for a step index. That is what DeRaDiff fuses
//! (paper Algorithm 1, lines 10–11). DDPM, DDIM, Euler, Euler ancestral and LCM are stateless:
//! `posterior` may be called once per model per step in any order. DPM-Solver++, UniPC and Heun
//! read earlier steps; each model's history is kept by a [`SolverState`] (the [`crate::Sampler`]
//! owns one per run).

mod ddim;
mod ddpm;
mod dpm_solver;
mod euler;
mod euler_ancestral;
mod heun;
mod lcm;
mod sigma_space;
mod state;
mod unipc;

pub use ddim::{Ddim, DdimConfig};
pub use ddpm::{Ddpm, DdpmConfig, VarianceType};
pub use dpm_solver::{DpmAlgorithm, DpmSolverConfig, DpmSolverMultistep, DpmSolverType};
pub use euler::{Euler, EulerConfig, Interpolation};
pub use euler_ancestral::{EulerAncestral, EulerAncestralConfig};
pub use heun::{Heun, HeunConfig};
pub use lcm::{Lcm, LcmConfig};
pub use state::{ModelStep, SharedUpdate, SolverState, StepContext};
pub use unipc::{UniPc, UniPcConfig, UniPcSolverType};

use std::path::Path;
use std::str::FromStr;

use candle_core::{DType, Tensor};

use crate::config::{read_text, SchedulerConfig};
use crate::error::{Error, Result};
use crate::ops::linear_combination;
use crate::posterior::Posterior;
use crate::schedule::{NoiseSchedule, PredictionType};

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
    ///
    /// For a scheduler that reads earlier steps ([`Scheduler::history_len`] > 0) this is the step
    /// without any history — exact at step 0, and [`crate::Error::MissingHistory`] where the step
    /// needs more; drive such a scheduler with a [`SolverState`].
    fn posterior(&self, x: &Tensor, model_output: &Tensor, step: usize) -> Result<Posterior>;

    /// How many earlier records per model a step reads (0 for the stateless schedulers: DDPM,
    /// DDIM, Euler, Euler ancestral, LCM; the solver order for DPM-Solver++ and UniPC; 1 for
    /// Heun).
    fn history_len(&self) -> usize {
        0
    }

    /// One model's step given its own history and the shared latent ([`StepContext`]): the
    /// posterior and what the run keeps ([`ModelStep`]). The default is [`Scheduler::posterior`]
    /// keeping nothing; [`SolverState`] calls this once per model per step.
    fn step(&self, x: &Tensor, model_output: &Tensor, step: usize, context: StepContext<'_>) -> Result<ModelStep> {
        let _ = context;
        Ok(ModelStep::stateless(self.posterior(x, model_output, step)?))
    }

    /// What the model output is expected to be.
    fn prediction_type(&self) -> PredictionType;

    /// The training timestep of `step`.
    fn timestep(&self, step: usize) -> Result<f64> {
        self.timesteps().get(step).copied().ok_or(Error::StepOutOfRange { step, num_steps: self.num_steps() })
    }

    /// The training noise schedule (betas and `ᾱ`, in f64) this scheduler was built on, if it
    /// has one. [`Ddpm`], [`Ddim`] and [`EulerAncestral`] all do; the default is `None`.
    fn noise_schedule(&self) -> Option<&NoiseSchedule> {
        None
    }

    /// `ᾱ_t = Π_{s≤t} (1 − β_s)` for every **training** timestep `t = 0..T` (the training
    /// schedule, in f64; index it with [`Scheduler::timesteps`] for the inference steps).
    /// Empty for a scheduler without a [`Scheduler::noise_schedule`].
    fn alphas_cumprod(&self) -> &[f64] {
        self.noise_schedule().map_or(&[], NoiseSchedule::alphas_cumprod)
    }

    /// For a scheduler with a σ schedule (Euler, Euler ancestral, Heun, DPM-Solver++, UniPC):
    /// the noise level σ of every inference step followed by the final one (0, or σ_min), so
    /// `num_steps() + 1` values — diffusers' float32 values, which the steps use. `None` (the
    /// default) for DDPM, DDIM and LCM, which have no σ of their own.
    fn sigmas(&self) -> Option<&[f64]> {
        None
    }

    /// diffusers' class name of this scheduler (`"DDIMScheduler"`, …; `"custom"` by default).
    fn class_name(&self) -> &'static str {
        "custom"
    }
}

/// The samplers deradiff implements, for choosing one at run time (for example from a command
/// line) together with a checkpoint's [`SchedulerConfig`], which carries the class's options
/// (Karras sigmas, solver order, algorithm, …).
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
    /// Euler (`EulerDiscreteScheduler`, SDXL's own).
    Euler,
    /// Heun (`HeunDiscreteScheduler`: two model evaluations per step).
    Heun,
    /// DPM-Solver++ multistep (`DPMSolverMultistepScheduler`: "DPM++ 2M", "DPM++ 2M SDE" with
    /// `algorithm_type = sde-dpmsolver++`, …).
    DpmSolverMultistep,
    /// UniPC (`UniPCMultistepScheduler`).
    UniPc,
    /// LCM (`LCMScheduler`, for latent-consistency models and LCM-LoRA).
    Lcm,
}

impl SchedulerKind {
    /// The names [`SchedulerKind::from_str`] accepts: diffusers' `_class_name`s, then the short
    /// names of the command line. `Ddim` is parsed with `η = 0`.
    pub const ACCEPTED_NAMES: &'static [&'static str] = &[
        "DDPMScheduler",
        "DDIMScheduler",
        "EulerAncestralDiscreteScheduler",
        "EulerDiscreteScheduler",
        "HeunDiscreteScheduler",
        "DPMSolverMultistepScheduler",
        "UniPCMultistepScheduler",
        "LCMScheduler",
        "ddpm",
        "ddim",
        "euler-a",
        "euler",
        "heun",
        "dpm++",
        "unipc",
        "lcm",
    ];

    /// Every kind (DDIM with η = 0), in [`SchedulerKind::ACCEPTED_NAMES`]' order.
    pub const ALL: [SchedulerKind; 8] = [
        SchedulerKind::Ddpm,
        SchedulerKind::Ddim { eta: 0.0 },
        SchedulerKind::EulerAncestral,
        SchedulerKind::Euler,
        SchedulerKind::Heun,
        SchedulerKind::DpmSolverMultistep,
        SchedulerKind::UniPc,
        SchedulerKind::Lcm,
    ];

    /// Builds this sampler for `num_inference_steps` from a checkpoint's scheduler config, the
    /// way diffusers' `from_config` does (this sampler's defaults for missing fields; the
    /// config's `_class_name` is not read).
    pub fn build(&self, config: &SchedulerConfig, num_inference_steps: usize) -> Result<Box<dyn Scheduler>> {
        let n = num_inference_steps;
        Ok(match *self {
            SchedulerKind::Ddpm => Box::new(Ddpm::new(DdpmConfig::from_diffusers(config)?, n)?),
            SchedulerKind::Ddim { eta } => {
                let mut c = DdimConfig::from_diffusers(config)?;
                c.eta = eta;
                Box::new(Ddim::new(c, n)?)
            }
            SchedulerKind::EulerAncestral => {
                Box::new(EulerAncestral::new(EulerAncestralConfig::from_diffusers(config)?, n)?)
            }
            SchedulerKind::Euler => Box::new(Euler::new(EulerConfig::from_diffusers(config)?, n)?),
            SchedulerKind::Heun => Box::new(Heun::new(HeunConfig::from_diffusers(config)?, n)?),
            SchedulerKind::DpmSolverMultistep => {
                Box::new(DpmSolverMultistep::new(DpmSolverConfig::from_diffusers(config)?, n)?)
            }
            SchedulerKind::UniPc => Box::new(UniPc::new(UniPcConfig::from_diffusers(config)?, n)?),
            SchedulerKind::Lcm => Box::new(Lcm::new(LcmConfig::from_diffusers(config)?, n)?),
        })
    }

    /// diffusers' class name of this sampler (`"DDPMScheduler"`, `"DDIMScheduler"`, …).
    pub fn class_name(&self) -> &'static str {
        match self {
            SchedulerKind::Ddpm => "DDPMScheduler",
            SchedulerKind::Ddim { .. } => "DDIMScheduler",
            SchedulerKind::EulerAncestral => "EulerAncestralDiscreteScheduler",
            SchedulerKind::Euler => "EulerDiscreteScheduler",
            SchedulerKind::Heun => "HeunDiscreteScheduler",
            SchedulerKind::DpmSolverMultistep => "DPMSolverMultistepScheduler",
            SchedulerKind::UniPc => "UniPCMultistepScheduler",
            SchedulerKind::Lcm => "LCMScheduler",
        }
    }

    /// The short (command-line) name of this sampler (`"ddpm"`, `"ddim"`, `"euler-a"`, `"euler"`,
    /// `"heun"`, `"dpm++"`, `"unipc"`, `"lcm"`).
    pub fn short_name(&self) -> &'static str {
        match self {
            SchedulerKind::Ddpm => "ddpm",
            SchedulerKind::Ddim { .. } => "ddim",
            SchedulerKind::EulerAncestral => "euler-a",
            SchedulerKind::Euler => "euler",
            SchedulerKind::Heun => "heun",
            SchedulerKind::DpmSolverMultistep => "dpm++",
            SchedulerKind::UniPc => "unipc",
            SchedulerKind::Lcm => "lcm",
        }
    }

    /// The sampler named by a parsed config's `_class_name` ([`SchedulerConfig::class_name`]).
    ///
    /// Errors: [`Error::MissingSchedulerClass`] without a class name, [`Error::UnknownScheduler`]
    /// for a class deradiff does not implement (for example SD 1.5's `PNDMScheduler`).
    pub fn from_config(config: &SchedulerConfig) -> Result<Self> {
        config.class_name.as_deref().ok_or(Error::MissingSchedulerClass { path: None })?.parse()
    }

    /// The sampler named by the `_class_name` of a `scheduler_config.json` document already
    /// parsed into a JSON value.
    ///
    /// Errors: [`Error::MissingSchedulerClass`] if the value is not an object with a string
    /// `_class_name`; [`Error::UnknownScheduler`] (naming it) for a class deradiff does not
    /// implement.
    pub fn from_config_value(value: &serde_json::Value) -> Result<Self> {
        value
            .get("_class_name")
            .and_then(serde_json::Value::as_str)
            .ok_or(Error::MissingSchedulerClass { path: None })?
            .parse()
    }

    /// The sampler named by the `_class_name` of a `scheduler_config.json` file.
    ///
    /// Errors: [`Error::Io`] if the file cannot be read, [`Error::ConfigFileParse`] if it is not
    /// JSON, [`Error::MissingSchedulerClass`] (with the path) without a string `_class_name`,
    /// [`Error::UnknownScheduler`] for a class deradiff does not implement.
    pub fn from_config_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = read_text(path)?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|source| Error::ConfigFileParse { path: path.to_path_buf(), source })?;
        Self::from_config_value(&value).map_err(|e| match e {
            Error::MissingSchedulerClass { path: None } => Error::MissingSchedulerClass { path: Some(path.into()) },
            other => other,
        })
    }
}

impl FromStr for SchedulerKind {
    type Err = Error;

    /// Parses diffusers' `_class_name` (`"DDPMScheduler"`, `"EulerDiscreteScheduler"`, …) or a
    /// short name (`"ddpm"`, `"euler"`, `"dpm++"`, …), exactly as written
    /// ([`SchedulerKind::ACCEPTED_NAMES`]). DDIM comes with `η = 0`; set another η on the result.
    /// Anything else is [`Error::UnknownScheduler`], whose message lists the accepted names.
    fn from_str(name: &str) -> Result<Self> {
        SchedulerKind::ALL
            .into_iter()
            .find(|k| k.class_name() == name || k.short_name() == name)
            .ok_or_else(|| Error::UnknownScheduler { name: name.to_string() })
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
/// A sampler of ε-prediction whose timesteps reach `ᾱ = 0` (zero terminal SNR) cannot take
/// that step: refused when it is built, not mid-run.
pub(crate) fn check_zero_snr_epsilon(
    prediction: PredictionType,
    schedule: &NoiseSchedule,
    timesteps: &[f64],
) -> Result<()> {
    let ac = schedule.alphas_cumprod();
    if prediction == PredictionType::Epsilon && timesteps.iter().any(|&t| ac.get(t as usize) == Some(&0.0)) {
        return Err(sigma_space::zero_snr_epsilon());
    }
    Ok(())
}

/// ε-prediction at `ᾱ = 0` (zero terminal SNR) is an error: x̂₀ cannot be recovered there.
pub(crate) fn x0_coefficients_vp(prediction: PredictionType, alpha_prod_t: f64) -> Result<(f64, f64)> {
    let (sa, sb) = (alpha_prod_t.sqrt(), (1.0 - alpha_prod_t).sqrt());
    Ok(match prediction {
        PredictionType::Epsilon if alpha_prod_t == 0.0 => return Err(sigma_space::zero_snr_epsilon()),
        PredictionType::Epsilon => (1.0 / sa, -sb / sa),
        PredictionType::VPrediction => (sa, -sb),
        PredictionType::Sample => (0.0, 1.0),
    })
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
