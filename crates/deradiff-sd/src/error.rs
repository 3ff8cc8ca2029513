//! The one error type of `deradiff-sd`.
//!
//! Every problem with a checkpoint names the file (and, for weights, the tensor) so that a user
//! can fix it; bad arguments say which argument and why. Nothing in this crate panics on user
//! input.

use std::path::PathBuf;

use candle_core::{DType, Shape};

/// Errors of the Stable Diffusion crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An error raised inside candle (tensor arithmetic, allocation, device transfer).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// An error of deradiff-core (scheduler, realigner, sampling loop).
    #[error(transparent)]
    Core(deradiff_core::Error),

    /// A file or directory the checkpoint needs does not exist.
    #[error("{what} not found: {path} does not exist")]
    NotFound {
        /// What was being looked for ("UNet config", "VAE weights", …).
        what: String,
        /// The path that was tried.
        path: PathBuf,
    },

    /// Reading or writing a file failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// "read", "write", "create the directory of", ….
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },

    /// A `config.json` (or tokenizer config) that cannot be parsed.
    #[error("cannot parse {path}: {message}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },

    /// A model whose configuration asks for something this crate does not implement (rather
    /// than silently computing something else).
    #[error("unsupported model ({path}): {message}")]
    Unsupported {
        /// The config or weight file.
        path: PathBuf,
        /// What is not supported, and what is.
        message: String,
    },

    /// A weight file that is not valid safetensors (or not safetensors at all).
    #[error("cannot load weights from {file}: {message}")]
    Weights {
        /// The file.
        file: PathBuf,
        /// What was wrong.
        message: String,
    },

    /// A tensor the model needs is not in its weight file.
    #[error("{file}: missing tensor `{tensor}`{hint}")]
    MissingTensor {
        /// The weight file (the first shard for sharded checkpoints).
        file: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// Extra help (for example a prefix the file's names carry), starting with "; " if any.
        hint: String,
    },

    /// A tensor whose shape is not the one the model's config implies.
    #[error("{file}: tensor `{tensor}` has shape {got:?} but the model config expects {expected:?}")]
    TensorShape {
        /// The weight file holding the tensor.
        file: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// The shape the configuration implies.
        expected: Shape,
        /// The shape in the file.
        got: Shape,
    },

    /// A tensor stored with a dtype that cannot be used as a weight.
    #[error("{file}: tensor `{tensor}` has dtype {dtype:?}; weights must be floating point")]
    TensorDType {
        /// The weight file holding the tensor.
        file: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// Its dtype.
        dtype: DType,
    },

    /// The reference and an aligned model do not have the same architecture (or the text encoder
    /// does not fit the UNet).
    #[error("models do not fit together: {0}")]
    ModelMismatch(String),

    /// A tokenizer that cannot be built or that fails on a prompt.
    #[error("tokenizer ({path}): {message}")]
    Tokenizer {
        /// The tokenizer directory or file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },

    /// A dtype the chosen device cannot run (for example bf16 on CPU in candle 0.11).
    #[error("dtype {dtype:?} is not supported on {device}: {message}")]
    UnsupportedDType {
        /// The dtype asked for.
        dtype: DType,
        /// The device, in words.
        device: String,
        /// Why, and what to use instead.
        message: String,
    },

    /// A device that cannot be opened (for example CUDA in a build without the `cuda` feature).
    #[error("cannot use device `{device}`: {message}")]
    Device {
        /// The device as given.
        device: String,
        /// Why.
        message: String,
    },

    /// A classifier-free guidance scale that is negative or not finite.
    #[error("guidance scale must be a finite number >= 0, got {0}")]
    InvalidGuidance(f64),

    /// Any other invalid argument (zero steps, no prompts, a size the VAE cannot produce, …).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// A broken invariant of this crate (a bug, never the user's input): please report it.
    #[error("internal error in deradiff-sd (please report it): {0}")]
    Internal(&'static str),
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<deradiff_core::Error> for Error {
    /// Unwraps errors of this crate that travelled through the core's sampling loop (a
    /// [`crate::Guided`] denoiser reports them as `deradiff_core::Error::Denoiser`).
    fn from(e: deradiff_core::Error) -> Self {
        match e {
            deradiff_core::Error::Denoiser(inner) => match inner.downcast::<Error>() {
                Ok(ours) => *ours,
                Err(other) => Error::Core(deradiff_core::Error::Denoiser(other)),
            },
            deradiff_core::Error::Candle(c) => Error::Candle(c),
            other => Error::Core(other),
        }
    }
}

impl From<Error> for deradiff_core::Error {
    /// Lets this crate's errors leave a [`deradiff_core::Denoiser`] (candle errors stay candle
    /// errors; the rest are wrapped, and [`Error::from`] unwraps them again).
    fn from(e: Error) -> Self {
        match e {
            Error::Candle(c) => deradiff_core::Error::Candle(c),
            Error::Core(c) => c,
            other => deradiff_core::Error::denoiser(other),
        }
    }
}

impl Error {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { action, path: path.into(), source }
    }

    pub(crate) fn config(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Config { path: path.into(), message: message.into() }
    }

    pub(crate) fn unsupported(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Unsupported { path: path.into(), message: message.into() }
    }
}
