//! # deradiff-analytic
//!
//! The exact analytic testbed of [deradiff](https://github.com/deradiff/deradiff): Gaussian-mixture
//! data, for which every quantity DeRaDiff approximates is known in closed form.
//!
//! * [`GaussianMixture`] — `p_ref(x) = Σ_k π_k N(x; m_k, diag(s_k²))`, exact sampling, noised
//!   marginals, log-density and score;
//! * [`Reward`] — separable rewards `r(x) = w·x − ½ Σ q_j x_j²`, `q ≥ 0`, and their exact mean
//!   under a mixture;
//! * [`GaussianMixture::tilt`] — the model aligned at any β, `p_ref · exp(r/β)`, again a mixture
//!   (paper eq. 3);
//! * [`ExactDenoiser`] — the Bayes-optimal ε / v / x₀ prediction of any mixture under the
//!   variance-preserving process, a [`deradiff_core::Denoiser`] exact under every scheduler;
//! * metrics — [`mean_reward`], [`coupled_distance`], [`energy_distance`];
//! * the study — the paper's Table 2 with exact targets ([`run_study`]), its table, CSV, JSON and
//!   PNG figures ([`plot`]).
//!
//! Since the models "aligned from scratch" are exact here, the only error left in a comparison
//! is DeRaDiff's own stepwise approximation: zero for one Gaussian and a linear reward, a few
//! percent for several modes.
//!
//! ```
//! use deradiff_analytic::{demo_linear_reward, demo_mixture, run_study, StudyConfig};
//!
//! let mut config = StudyConfig::new(demo_mixture(3)?, demo_linear_reward(), 1.0, vec![2.0, 0.5]);
//! config.samples = 64;
//! config.steps = 10;
//! let out = run_study(&config)?;
//! assert_eq!(out.result.rows.len(), 2);
//! assert_eq!(out.result.rows[1].lambda, 2.0);
//! println!("{}", out.result);
//! # Ok::<(), deradiff_analytic::Error>(())
//! ```

#![warn(missing_docs)]

mod demo;
mod denoiser;
mod error;
mod io;
#[doc(hidden)]
pub use io::write_atomic;
mod metrics;
mod mixture;
pub mod plot;
mod reward;
mod study;

pub use demo::{demo_linear_reward, demo_mixture, demo_quadratic_reward, MAX_DEMO_COMPONENTS};
pub use denoiser::ExactDenoiser;
pub use error::{Error, Result};
pub use metrics::{coupled_distance, energy_distance, mean_reward, ENERGY_DISTANCE_MAX_ROWS};
pub use mixture::{log_sum_exp, GaussianMixture};
pub use reward::Reward;
pub use study::{
    build_scheduler, build_scheduler_with, default_training, run_study, run_study_with_progress, scheduler_name,
    StudyConfig, StudyOutput, StudyProgress, StudyResult, StudyRow, StudySamples, STUDY_FILES,
};
