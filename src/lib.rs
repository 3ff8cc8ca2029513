//! # deradiff
//!
//! Denoising-time realignment of diffusion models (DeRaDiff): align a diffusion model once at a
//! KL strength β, then emulate the model aligned at β/λ at sampling time by fusing the reference
//! and aligned models' Gaussian posteriors at every step — no retraining.
//!
//! This crate is the single entry point: the core ([`Scheduler`], [`Realigner`], [`Denoiser`],
//! [`Sampler`]) is re-exported at the top level, and the other parts of the workspace are modules
//! behind features:
//!
//! | feature | module | what |
//! |---|---|---|
//! | `analytic` (default) | [`analytic`] | the exact Gaussian-mixture testbed |
//! | `sd` (default) | [`sd`] | Stable Diffusion denoisers, guidance, the text-to-image pipeline |
//! | `tune` (default) | [`tune`] | λ search: sweeps, Bayesian optimisation, rewards, agreement statistics |
//! | `cuda`, `metal` | — | GPU backends of candle for the `sd` models |
//!
//! See `docs/math.md` for the derivation of the fusion and `examples/` for programs to copy.

pub use deradiff_core::*;

/// The exact analytic testbed (feature `analytic`).
#[cfg(feature = "analytic")]
pub use deradiff_analytic as analytic;

/// Stable Diffusion denoisers, guidance and the text-to-image pipeline (feature `sd`).
#[cfg(feature = "sd")]
pub use deradiff_sd as sd;

/// λ search: sweeps, Bayesian optimisation, rewards, agreement statistics (feature `tune`).
#[cfg(feature = "tune")]
pub use deradiff_tune as tune;
