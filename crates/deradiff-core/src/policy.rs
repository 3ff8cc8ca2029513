//! [`PrecisionPolicy`]: what the fusion does where the fused Gaussian does not exist.

/// What to do where the fused Gaussian does not exist (non-positive fused precision, or a zero
/// variance beside a positive one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PrecisionPolicy {
    /// Return an error naming the step and element (the default).
    #[default]
    Error,
    /// Where (and only where) the fused Gaussian does not exist, use the weighted mean of the
    /// means `Σ w_i μ_i / Σ w_i` (the equal-variance answer) with the largest input variance.
    /// Still an error if `Σ w_i ≤ 0`.
    MeanOfMeans,
}
