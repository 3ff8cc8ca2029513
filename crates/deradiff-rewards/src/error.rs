//! The one error type of `deradiff-rewards`.

/// Errors of the rewards: a reward model that does not load (a [`deradiff_sd::Error`] naming the
/// file and the tensor), a batch or prompts that do not fit, a score that is not a finite number,
/// or the error of a reward implemented outside this crate. Nothing here panics on user input.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An error of deradiff-sd: a reward checkpoint (its config, weights, tokenizer), one of the
    /// CLIP or BLIP towers, an image (feature `sd`).
    #[cfg(feature = "sd")]
    #[error(transparent)]
    Sd(#[from] deradiff_sd::Error),

    /// An error raised inside candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// A reward gave NaN or ±∞.
    #[error("the reward {reward:?} is {value} for {context}; rewards must be finite numbers")]
    NonFiniteReward {
        /// The reward's name.
        reward: String,
        /// The offending value.
        value: f64,
        /// Where: λ, prompt and sample index.
        context: String,
    },

    /// An argument that does not fit: prompts missing or not one per sample, a batch of the
    /// wrong shape, a reward head whose layers do not chain.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// A prompt file that cannot be read as prompts.
    #[error("prompt file {path}: {detail}")]
    PromptFile {
        /// The file.
        path: std::path::PathBuf,
        /// Where and what is wrong.
        detail: String,
    },

    /// A file could not be read.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },

    /// The error of a reward implemented outside this crate (the analytic testbed's rewards of
    /// deradiff-tune, a user's own reward).
    #[error("{0}")]
    User(Box<dyn std::error::Error + Send + Sync>),
}

/// Result alias of the rewards crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<std::path::PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    /// Wraps any error of a reward implemented outside this crate.
    pub fn user<E: Into<Box<dyn std::error::Error + Send + Sync>>>(err: E) -> Self {
        Error::User(err.into())
    }
}
