//! The one error type of `deradiff-analytic`.

use std::path::PathBuf;

/// Errors of the analytic testbed. Every bad input (a mixture weight that is not positive, a
/// variance of zero, a β that is not positive, a reward of the wrong dimension, zero samples)
/// comes back as one of these with a message that says what to fix; nothing here panics on user
/// input.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An error of the core crate (schedulers, the sampling loop, the realigner).
    #[error(transparent)]
    Core(#[from] deradiff_core::Error),

    /// An error raised inside candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// A Gaussian mixture that cannot exist (weights, means or variances).
    #[error("invalid Gaussian mixture: {0}")]
    InvalidMixture(String),

    /// A reward with a wrong dimension, a negative curvature or a non-finite coefficient.
    #[error("invalid reward: {0}")]
    InvalidReward(String),

    /// A KL strength β that is not a positive number.
    #[error("invalid beta: {0}")]
    InvalidBeta(String),

    /// An argument that fits none of the above (zero samples, mismatched sample sets, …).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },

    /// JSON (de)serialisation failed.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),

    /// A figure could not be drawn or encoded.
    #[error("cannot draw {what}: {detail}")]
    Plot {
        /// Which figure.
        what: String,
        /// What went wrong.
        detail: String,
    },
}

/// Result alias of the analytic crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
