//! # deradiff-core
//!
//! The core of [deradiff](https://github.com/deradiff/deradiff): denoising-time realignment of
//! diffusion models (DeRaDiff). At every reverse step each model's scheduler posterior
//! `N(μ_i, σ_i²)` is computed exactly as HuggingFace diffusers does, and the step is taken from
//! their normalised geometric mixture `Π_i N(μ_i, σ_i²)^{w_i}` (paper eq. 5), a Gaussian in closed
//! form (Theorem 1, eq. 7; A.4, eqs. 34–35). With a reference and a model aligned at KL strength
//! β, weights `[1 − λ, λ]` emulate the model aligned at β/λ without training.
//!
//! * [`Scheduler`] — the Gaussian posterior of a step, numerically diffusers' class of the same
//!   name: [`Ddpm`], [`Ddim`], [`EulerAncestral`], [`Euler`], [`Lcm`] (stateless:
//!   `posterior(x, out, step)`), [`DpmSolverMultistep`], [`UniPc`], [`Heun`] (they read earlier
//!   steps: each model's history is kept by a [`SolverState`]).
//! * [`Realigner`] — fuses K posteriors ([`fusion`] holds the scalar math).
//! * [`Denoiser`] — the model interface; [`Sampler`] — the loop of Algorithm 1 with seeded
//!   noise ([`SeededNoise`]) and an [`Observer`] per step.
//! * [`SchedulerConfig`] — diffusers' `scheduler_config.json` and presets (SD 1.5, SD 2.1, SDXL);
//!   [`SchedulerKind`] — a sampler chosen by name (`"euler-a"`, `"DDIMScheduler"`, …) or by a
//!   config's `_class_name`.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use deradiff_core::*;
//!
//! let scheduler = SchedulerKind::EulerAncestral.build(&SchedulerConfig::stable_diffusion_xl(), 20)?;
//! let reference = FnDenoiser(|x: &Tensor, _t: f64| Ok(x.zeros_like()?));
//! let aligned = FnDenoiser(|x: &Tensor, _t: f64| Ok(x.affine(0.01, 0.0)?));
//! let sampler = Sampler::new(scheduler.as_ref(), vec![&reference, &aligned], Realigner::two_model(0.5)?)?;
//! let out = sampler.run(&[1, 4, 8, 8], DType::F32, &Device::Cpu, &mut SeededNoise::new(42), &mut NoObserver)?;
//! assert_eq!(out.steps_taken, 20);
//! # Ok::<(), deradiff_core::Error>(())
//! ```

#![warn(missing_docs)]

mod config;
mod denoiser;
mod error;
pub mod fusion;
pub mod io;
mod noise;
mod ops;
mod policy;
mod posterior;
mod realigner;
mod sampler;
mod schedule;
mod scheduler;
mod sigmas;

pub use config::{SchedulerConfig, TrainingConfig};
pub use denoiser::{Denoiser, FnDenoiser};
pub use error::{Error, Result};
pub use noise::{InjectedNoise, NoiseSource, SeededNoise};
pub use policy::PrecisionPolicy;
pub use posterior::{Posterior, Variance};
pub use realigner::Realigner;
pub use sampler::{Flow, FnObserver, NoObserver, Observer, SampleOutput, Sampler, StepEvent};
pub use schedule::{
    inference_timesteps, BetaSchedule, NoiseSchedule, PredictionType, TimestepSpacing, MAX_TRAIN_TIMESTEPS,
};
pub use scheduler::{
    Ddim, DdimConfig, Ddpm, DdpmConfig, DpmAlgorithm, DpmSolverConfig, DpmSolverMultistep, DpmSolverType, Euler,
    EulerAncestral, EulerAncestralConfig, EulerConfig, Heun, HeunConfig, Interpolation, Lcm, LcmConfig, ModelStep,
    Scheduler, SchedulerKind, SharedUpdate, SolverState, StepContext, UniPc, UniPcConfig, UniPcSolverType,
    VarianceType,
};
pub use sigmas::{FinalSigma, SigmaSpacing};
