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
//! | `sd` (default) | [`sd`], [`kernels`] | Stable Diffusion (UNet, CLIP, VAE, pipeline), its fused CPU kernels |
//! | `rewards` (default) | [`rewards`] | the `Reward` trait; with `sd`, CLIP score, PickScore, HPS v2, the aesthetic predictor, ImageReward and their towers |
//! | `tune` (default) | [`tune`] | λ search: sweeps, Bayesian optimisation, agreement statistics (SD sweeps with `sd`); pulls `rewards` |
//! | `cuda`, `metal` | — | GPU backends of candle for the `sd` models |
//!
//! The default features are `analytic`, `sd`, `rewards` and `tune`: everything the README shows. A program
//! that needs only the core (its own [`Denoiser`]s, the schedulers, the fusion, the sampling
//! loop) depends on `deradiff = { version = "0.1", default-features = false }` and builds
//! without the Stable Diffusion models, candle-nn or candle-transformers.
//!
//! candle's tensor types are re-exported ([`Tensor`], [`Device`], [`DType`], and the whole crate
//! as [`candle`]), so a program needs `deradiff` alone in its `Cargo.toml`, never a pinned
//! `candle-core` of its own.
//!
//! See `docs/architecture.md` for the crate graph and the data flow, `docs/math.md` for the
//! derivation of the fusion and `examples/` for programs to copy.

#![warn(missing_docs)]

pub use deradiff_core::*;

/// candle, the tensor library every model runs on (the exact version deradiff is built with).
pub use candle_core as candle;
pub use candle_core::{DType, Device, Tensor};

/// The exact analytic testbed (feature `analytic`).
#[cfg(feature = "analytic")]
#[doc(inline)]
pub use deradiff_analytic as analytic;

/// Stable Diffusion denoisers, guidance and the text-to-image pipeline (feature `sd`).
#[cfg(feature = "sd")]
#[doc(inline)]
pub use deradiff_sd as sd;

/// The fused CPU kernels the models run (feature `sd`).
#[cfg(feature = "sd")]
#[doc(inline)]
pub use deradiff_kernels as kernels;

/// Rewards: the `Reward` trait sweeps score with and, with `sd`, the image rewards (CLIP score,
/// PickScore, HPS v2, the LAION aesthetic predictor, ImageReward) and their CLIP and BLIP towers
/// (feature `rewards`, pulled by `tune`).
#[cfg(feature = "rewards")]
#[doc(inline)]
pub use deradiff_rewards as rewards;

/// λ search: sweeps, Bayesian optimisation, agreement statistics (feature `tune`).
#[cfg(feature = "tune")]
#[doc(inline)]
pub use deradiff_tune as tune;

/// The README's Rust program, compiled and run as a doc test (against the tiny checkpoints).
#[cfg(all(doctest, feature = "sd"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
