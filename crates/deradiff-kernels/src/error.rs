//! The one error type of `deradiff-kernels`.

/// Errors of the kernels' public functions.
///
/// `op` names the kernel that refused, as its functions' family: `"attention"` ([`attention`],
/// [`attention_heads`], [`attention_reference`]), `"conv2d"` ([`conv2d`], [`conv2d_add`],
/// [`conv2d_reference`]), `"geglu"` ([`geglu`], [`geglu_reference`]), `"group_norm"`
/// ([`group_norm`], [`group_norm_reference`]) or `"linear"` ([`linear`], [`linear_add`],
/// [`linear_from_channels`], [`linear_to_channels`], [`linear_reference`]); `"gemm"` for the
/// GEMM the convolution and linear kernels share; `"matmul"` for the device path's matrix
/// products (an operand layout candle's CUDA matmul would refuse: a bug of this crate, caught on
/// any device).
///
/// Model code that works in `candle_core::Result` converts these with `?` (see the
/// `From<Error> for candle_core::Error` impl).
///
/// [`attention`]: crate::attention
/// [`attention_heads`]: crate::attention_heads
/// [`attention_reference`]: crate::attention_reference
/// [`conv2d`]: crate::conv2d
/// [`conv2d_add`]: crate::conv2d_add
/// [`conv2d_reference`]: crate::conv2d_reference
/// [`geglu`]: crate::geglu
/// [`geglu_reference`]: crate::geglu_reference
/// [`group_norm`]: crate::group_norm
/// [`group_norm_reference`]: crate::group_norm_reference
/// [`linear`]: crate::linear
/// [`linear_add`]: crate::linear_add
/// [`linear_from_channels`]: crate::linear_from_channels
/// [`linear_to_channels`]: crate::linear_to_channels
/// [`linear_reference`]: crate::linear_reference
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The arguments do not fit the kernel: a tensor of the wrong rank or shape, mismatched
    /// dtypes, channels that do not split into the heads or groups asked for, a zero stride, a
    /// convolution kernel larger than the padded input. Nothing was computed.
    #[error("{op}: {reason}")]
    InvalidInput {
        /// The kernel that refused (see [`Error`]).
        op: &'static str,
        /// What was wrong, with the shapes or dtypes given.
        reason: String,
    },

    /// Sizes whose product overflows `usize`: more elements than memory can address (an
    /// operand's or the output's element count, or the rows of a linear's input, the product of
    /// its leading dimensions). Nothing was allocated.
    #[error("{op}: the sizes {dims:?} multiply to more elements than memory can address")]
    TooLarge {
        /// The kernel that refused (see [`Error`]).
        op: &'static str,
        /// The sizes whose product overflows (a tensor's shape, or a linear input's leading
        /// dimensions).
        dims: Vec<usize>,
    },

    /// A kernel's own check of its buffers failed: a slice that does not hold the elements its
    /// shape says, storage that is not the contiguous f32 CPU data the kernel made it. The
    /// public functions prepare their operands so that this does not happen: it is a bug of this
    /// crate, reported instead of an out-of-bounds access.
    #[error("{op}: {reason}")]
    Internal {
        /// The kernel whose check failed (see [`Error`]).
        op: &'static str,
        /// What did not fit.
        reason: String,
    },

    /// An error raised inside candle: its tensor operations (dtype conversion, copies, the
    /// reference computations), allocation, or a kernel body run through candle's custom-op
    /// interface (which returns candle's errors).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An [`Error::InvalidInput`] of kernel `op`.
    pub(crate) fn invalid(op: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidInput { op, reason: reason.into() }
    }

    /// An [`Error::Internal`] of kernel `op`.
    pub(crate) fn internal(op: &'static str, reason: impl Into<String>) -> Self {
        Self::Internal { op, reason: reason.into() }
    }
}

/// For model code that works in `candle_core::Result`: [`Error::Candle`] gives back candle's own
/// error, every other variant is wrapped ([`candle_core::Error::wrap`], which keeps its message
/// but not its type: match on [`Error`] before converting).
impl From<Error> for candle_core::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Candle(e) => e,
            other => candle_core::Error::wrap(other),
        }
    }
}
