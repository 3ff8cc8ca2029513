//! # deradiff-tune
//!
//! Finding the right λ for [deradiff](https://github.com/deradiff/deradiff) without retraining
//! (paper §6, A.5): with a reference model and one model aligned at β, weights `[1 − λ, λ]`
//! emulate the model aligned at β/λ, so the regularisation strength can be searched at sampling
//! time.
//!
//! * Rewards — what a sweep scores samples with: any [`deradiff_rewards::Reward`] (one score per
//!   sample of a batch, optionally with one prompt per sample); [`AnalyticReward`] and
//!   [`TrueReward`] for the analytic testbed here, the image rewards (CLIP score, PickScore,
//!   HPS v2, the LAION aesthetic predictor, ImageReward) in `deradiff-rewards`.
//! * [`SweepModel`] — what is sampled ([`AnalyticModel`] for the testbed); [`Prompt`]s.
//! * [`BatchedSampler`] — many λ in one run: the λ values share the batch dimension, each model
//!   runs once per step for all of them, and every λ gets the noise of an unbatched run.
//! * [`run_sweep`] — a λ grid over a prompt set, streamed to JSONL/CSV as each (λ, prompt)
//!   finishes, resumable after an interruption ([`read_results`] reads a file back).
//! * [`optimize`] — Bayesian optimisation of λ (Algorithm 2): [`GaussianProcess`] surrogate
//!   with RBF kernel and noise fitted by marginal likelihood, Expected Improvement or UCB, on an
//!   [`Objective`] such as [`SweepObjective`] (the realigned sampler's measured mean reward,
//!   with common random numbers).
//! * [`equivalent_beta`] — the KL strength `β_anchor / λ` a λ emulates.
//! * [`agreement`] — the paper's Table 5: MAE with a seeded bootstrap CI, RMSE, median absolute
//!   error, Bland–Altman bias, SD and limits of agreement, each relative to the originals' mean;
//!   [`pair_rows`] pairs two result sets for it.
//! * [`plot`] — PNG figures: reward vs λ, the BO trace, Bland–Altman, ECDF of |Δ|.
//!
//! Everything a command line needs is a plain struct ([`SweepConfig`], [`BoConfig`],
//! [`AgreementConfig`]), a callback ([`SweepObserver`], the `progress` of [`optimize`]) and a
//! file path.
//!
//! ```
//! use deradiff_analytic::{demo_linear_reward, demo_mixture, GaussianMixture};
//! use deradiff_tune::*;
//!
//! // One Gaussian, a linear proxy reward, anchor β = 1: the true reward penalises leaving the
//! // data with weight 2 × log p_ref, so the best λ is β / 2 = 0.5.
//! let data = demo_mixture(1)?;
//! let mut setup = AnalyticSetup::new(data.clone(), demo_linear_reward(), 1.0);
//! setup.steps = 10;
//! let model = AnalyticModel::new(setup)?;
//! let truth = TrueReward::new("true", demo_linear_reward(), ManifoldPenalty::ReferenceLogDensity(data), 2.0)?;
//! let mut objective = SweepObjective::new(&model, &truth, Prompt::seeds([1]), 256)?;
//! let result = optimize(&mut objective, &BoConfig::default(), &mut |_| Ok(()))?;
//! assert!((result.lambda_star - 0.5).abs() < 0.1, "λ* = {}", result.lambda_star);
//! # Ok::<(), deradiff_tune::Error>(())
//! ```

#![warn(missing_docs)]

mod batch;
mod bo;
mod difference;
mod error;
mod gp;
mod images;
mod lock;
mod merge;
mod model;
mod objective;
pub mod plot;
mod report;
mod results;
mod reward;
#[cfg(feature = "sd")]
mod sd_model;
mod spec;
mod stats;
mod sweep;

pub use batch::{BatchStep, BatchedSampler};
pub use bo::{
    equivalent_beta, expected_improvement, linspace, normal_cdf, normal_pdf, optimize, ucb_beta, Acquisition, BoConfig,
    BoEvaluation, BoPhase, BoResult, Incumbent, InitialDesign, Objective, MAX_BUDGET, MAX_GRID_POINTS,
};
pub use error::{Error, Result};
pub use gp::{GaussianProcess, GpBounds, GpHyper};
pub use images::{lambda_tag, rebase_image_paths, sweep_image_name, IMAGES_DIR};
pub use lock::{lock_record_path, writer_state, LockRecord, WriterState};
pub use merge::{merge_results, sweep_status, FileProgress, FolderStatus, Merged, MissingItem, SweepProgress};
pub use model::{AnalyticModel, AnalyticSetup, Prompt, SweepModel};
pub use objective::SweepObjective;
pub use report::{write_report, ReportSummary, REPORT_ASSETS_DIR, REPORT_FILE};
pub use results::{
    read_results, write_results, write_results_csv, IfExists, ResultsFile, RewardSummary, SweepHeader, SweepOutput,
    SweepRow, MAX_RESULTS_FILE_BYTES, RESULTS_FORMAT, RESULTS_VERSION,
};
pub use reward::{AnalyticReward, ManifoldPenalty, TrueReward};
#[cfg(feature = "sd")]
pub use sd_model::{Realignment, SdModel, SdSetup};
pub use spec::{
    prompts_hash, results_file_name, shard_of_file_name, spec_hash, Shard, SweepSpec, WorkItem, MAX_SHARDS,
};
pub use stats::{
    agreement, bootstrap_maes, bootstrap_mean_interval, median, pair_rows, quantile_sorted, AgreementConfig,
    AgreementStats, PairBy, Pairs, Stat, MAX_BOOTSTRAP,
};
pub use sweep::{
    check_lambdas, check_sweep_size, lambda_summaries, run_sweep, LambdaSummary, NoSweepObserver, SweepConfig,
    SweepEvent, SweepObserver, SweepResult, MAX_BATCH_ELEMENTS, MAX_LAMBDAS, MAX_SAMPLES_PER_PROMPT, MAX_SWEEP_SAMPLES,
    MAX_WORK_ITEMS,
};
