//! The Gaussian fusion kernel: the one place where the realignment math lives.
//!
//! DeRaDiff replaces each reverse step by the normalised geometric mixture of the models'
//! Gaussian posteriors (paper eq. 5, Theorem 1 eq. 7, multi-reward A.4 eqs. 34–35):
//!
//! ```text
//! p̂(x_{t-1} | x_t) ∝ Π_i N(x_{t-1}; μ_i, σ_i²)^{w_i},   Σ_i w_i = 1
//!
//! precision  P  = Σ_i w_i / σ_i²
//! variance   σ² = 1 / P
//! mean       μ  = σ² Σ_i (w_i / σ_i²) μ_i
//! ```
//!
//! This module evaluates that closed form one element at a time, generic over
//! [`num_traits::Float`], in a form that is exact where exactness is owed:
//!
//! * Precisions are taken **relative to a pivot** input `p` (the one with the largest `|w_i|`):
//!   `r_i = σ_p² / σ_i²`, `P' = Σ_i w_i r_i`, `α_i = w_i r_i / P'`, `μ = Σ_i α_i μ_i`,
//!   `σ² = σ_p² / P'`. This is the same Gaussian (multiply numerator and denominator by `σ_p²`),
//!   but a one-hot weight vector (λ = 0 or λ = 1) gives `r_p = 1`, `P' = 1`, `α_p = 1` and so
//!   returns that input's mean and variance **bit for bit**, and tiny variances do not overflow.
//! * A weight of exactly zero removes its factor (`p^0 = 1`): that model's mean and variance are
//!   never read into the result.
//! * Equal variances, zero included (DDIM with η = 0, the last step of every sampler), give the
//!   weighted mean of the means with that variance: for `σ² > 0` this falls out of the formula
//!   (`r_i = 1`); for `σ² = 0` it is the exact limit, taken explicitly instead of `0/0`.
//! * Unequal variances with a zero among them, or `P' ≤ 0` (λ > 1 with unequal variances), have no
//!   Gaussian answer: the kernel reports them, and the caller's [`PrecisionPolicy`] decides.
//!
//! The tensor path of [`crate::Realigner::fuse`] calls [`FusionPlan::new`] and
//! [`FusionPlan::coefficient`] — for scalar variances once per step, for diagonal variances once
//! per element — so there is no second copy of this math.

use num_traits::Float;

use crate::policy::PrecisionPolicy;

/// Why an element could not be fused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FusionFailure {
    /// A variance is negative, NaN or infinite.
    InvalidVariance,
    /// The fused precision is zero or negative.
    NonPositivePrecision,
    /// One model has zero variance where another has a positive one.
    ZeroVarianceConflict,
    /// The result overflowed.
    NonFinite,
    /// `weights`, `means` and `variances` have different lengths.
    LengthMismatch,
}

/// `x > 0`, false for NaN.
fn positive<T: Float>(x: T) -> bool {
    x > T::zero()
}

/// A scalar Gaussian: mean and variance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gaussian<T> {
    /// Mean.
    pub mean: T,
    /// Variance (zero for a point mass).
    pub variance: T,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode<T> {
    /// Pivot-relative precisions: `α_i = w_i (σ_p²/σ_i²) / P'`.
    Precision { pivot_variance: T, precision: T },
    /// Every active variance is zero: `α_i = w_i / Σ w`, variance 0.
    PointMass { weight_sum: T },
    /// [`PrecisionPolicy::MeanOfMeans`] applied: `α_i = w_i / Σ w`, variance = largest.
    Fallback { weight_sum: T, variance: T },
}

/// The fusion coefficients for one element: `μ = Σ_i α_i μ_i` and the fused variance.
///
/// Build it once from the weights and variances, then ask for each model's coefficient.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FusionPlan<T> {
    mode: Mode<T>,
}

impl<T: Float> FusionPlan<T> {
    /// Plans the fusion of `weights.len()` Gaussians with the given variances.
    ///
    /// `weights` and `variances` must have the same length. Weights are assumed finite (the
    /// [`crate::Realigner`] validates them once).
    pub fn new(weights: &[T], variances: &[T], policy: PrecisionPolicy) -> Result<Self, FusionFailure> {
        if weights.len() != variances.len() {
            return Err(FusionFailure::LengthMismatch);
        }
        // Validate every variance, active or not: a NaN variance is a bug upstream.
        let mut pivot: Option<usize> = None;
        let mut max_variance = T::zero();
        let mut weight_sum = T::zero();
        for (i, (&w, &v)) in weights.iter().zip(variances).enumerate() {
            if !v.is_finite() || v < T::zero() {
                return Err(FusionFailure::InvalidVariance);
            }
            if w == T::zero() {
                continue;
            }
            weight_sum = weight_sum + w;
            if v > max_variance {
                max_variance = v;
            }
            match pivot {
                Some(p) if weights[p].abs() >= w.abs() => {}
                _ => pivot = Some(i),
            }
        }
        let Some(p) = pivot else {
            // All weights zero: the product of densities is flat.
            return Err(FusionFailure::NonPositivePrecision);
        };
        let pivot_variance = variances[p];
        let fallback = |failure| match policy {
            PrecisionPolicy::Error => Err(failure),
            PrecisionPolicy::MeanOfMeans if weight_sum > T::zero() => {
                Ok(FusionPlan { mode: Mode::Fallback { weight_sum, variance: max_variance } })
            }
            PrecisionPolicy::MeanOfMeans => Err(FusionFailure::NonPositivePrecision),
        };

        let active = || weights.iter().zip(variances).filter(|(&w, _)| w != T::zero());
        if pivot_variance == T::zero() {
            if active().any(|(_, &v)| v != T::zero()) {
                return fallback(FusionFailure::ZeroVarianceConflict);
            }
            if !positive(weight_sum) {
                return Err(FusionFailure::NonPositivePrecision);
            }
            return Ok(FusionPlan { mode: Mode::PointMass { weight_sum } });
        }
        let mut precision = T::zero();
        for (&w, &v) in active() {
            if v == T::zero() {
                return fallback(FusionFailure::ZeroVarianceConflict);
            }
            precision = precision + w * (pivot_variance / v);
        }
        if !precision.is_finite() {
            return Err(FusionFailure::NonFinite);
        }
        if !positive(precision) {
            return fallback(FusionFailure::NonPositivePrecision);
        }
        Ok(FusionPlan { mode: Mode::Precision { pivot_variance, precision } })
    }

    /// The coefficient `α_i` of model `i` (weight `w`, variance `v`) in the fused mean.
    /// Zero for a zero weight; the coefficients of all models sum to one.
    #[inline]
    pub fn coefficient(&self, w: T, v: T) -> T {
        if w == T::zero() {
            return T::zero();
        }
        match self.mode {
            Mode::Precision { pivot_variance, precision } => w * (pivot_variance / v) / precision,
            Mode::PointMass { weight_sum } | Mode::Fallback { weight_sum, .. } => w / weight_sum,
        }
    }

    /// The fused variance `1 / Σ_i (w_i / σ_i²)` (zero for fused point masses).
    #[inline]
    pub fn variance(&self) -> T {
        match self.mode {
            Mode::Precision { pivot_variance, precision } => pivot_variance / precision,
            Mode::PointMass { .. } => T::zero(),
            Mode::Fallback { variance, .. } => variance,
        }
    }

    /// Whether [`PrecisionPolicy::MeanOfMeans`] replaced the Gaussian answer here.
    pub fn is_fallback(&self) -> bool {
        matches!(self.mode, Mode::Fallback { .. })
    }
}

/// Fuses scalar Gaussians `N(means[i], variances[i])` raised to `weights[i]`: the closed form of
/// paper eqs. 7 and 34–35, evaluated as described in the [module docs](self).
///
/// ```
/// use deradiff_core::{fusion::fuse, PrecisionPolicy};
/// // λ = 0.5 between N(0, 1) and N(2, 1): equal variances give the midpoint, variance 1.
/// let g = fuse(&[0.5f64, 0.5], &[0.0, 2.0], &[1.0, 1.0], PrecisionPolicy::Error).unwrap();
/// assert_eq!((g.mean, g.variance), (1.0, 1.0));
/// // Unequal variances: precision-weighted.
/// let g = fuse(&[0.5f64, 0.5], &[0.0, 2.0], &[1.0, 3.0], PrecisionPolicy::Error).unwrap();
/// assert!((g.variance - 1.5).abs() < 1e-15 && (g.mean - 0.5).abs() < 1e-15);
/// ```
pub fn fuse<T: Float>(
    weights: &[T],
    means: &[T],
    variances: &[T],
    policy: PrecisionPolicy,
) -> Result<Gaussian<T>, FusionFailure> {
    if weights.len() != means.len() || means.len() != variances.len() {
        return Err(FusionFailure::LengthMismatch);
    }
    let plan = FusionPlan::new(weights, variances, policy)?;
    let mut mean = T::zero();
    for ((&w, &m), &v) in weights.iter().zip(means).zip(variances) {
        if w != T::zero() {
            mean = mean + plan.coefficient(w, v) * m;
        }
    }
    let variance = plan.variance();
    if !mean.is_finite() || !variance.is_finite() {
        return Err(FusionFailure::NonFinite);
    }
    Ok(Gaussian { mean, variance })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_hot_weights_return_input_bit_for_bit() {
        let means = [0.1f64, -3.7];
        let vars = [3.0f64, 0.7];
        let g = fuse(&[1.0, 0.0], &means, &vars, PrecisionPolicy::Error).unwrap();
        assert_eq!(g, Gaussian { mean: 0.1, variance: 3.0 });
        let g = fuse(&[0.0, 1.0], &means, &vars, PrecisionPolicy::Error).unwrap();
        assert_eq!(g, Gaussian { mean: -3.7, variance: 0.7 });
    }

    #[test]
    fn zero_weight_ignores_nan_mean_and_zero_variance() {
        let g = fuse(&[1.0, 0.0], &[2.0f64, f64::NAN], &[1.0, 0.0], PrecisionPolicy::Error).unwrap();
        assert_eq!(g, Gaussian { mean: 2.0, variance: 1.0 });
    }

    #[test]
    fn equal_zero_variances_give_weighted_mean() {
        let g = fuse(&[-0.5, 1.5], &[1.0f64, 3.0], &[0.0, 0.0], PrecisionPolicy::Error).unwrap();
        assert_eq!(g, Gaussian { mean: 4.0, variance: 0.0 });
    }

    #[test]
    fn zero_beside_positive_variance_is_reported() {
        let r = fuse(&[0.5, 0.5], &[1.0f64, 3.0], &[0.0, 1.0], PrecisionPolicy::Error);
        assert_eq!(r, Err(FusionFailure::ZeroVarianceConflict));
        let g = fuse(&[0.5, 0.5], &[1.0f64, 3.0], &[0.0, 1.0], PrecisionPolicy::MeanOfMeans).unwrap();
        assert_eq!(g, Gaussian { mean: 2.0, variance: 1.0 });
    }

    #[test]
    fn extrapolation_with_unequal_variances_can_lose_positivity() {
        // λ = 3: precision = -2/1 + 3/2 = -0.5 < 0.
        let r = fuse(&[-2.0, 3.0], &[0.0f64, 1.0], &[1.0, 2.0], PrecisionPolicy::Error);
        assert_eq!(r, Err(FusionFailure::NonPositivePrecision));
        // λ = 1.5: precision = -0.5 + 0.75 = 0.25 > 0 → variance 4, mean 4·(1.5/2·1) = 3.
        let g = fuse(&[-0.5, 1.5], &[0.0f64, 1.0], &[1.0, 2.0], PrecisionPolicy::Error).unwrap();
        assert!((g.variance - 4.0).abs() < 1e-14 && (g.mean - 3.0).abs() < 1e-14);
    }

    #[test]
    fn invalid_variances_are_rejected() {
        for v in [-1.0f64, f64::NAN, f64::INFINITY] {
            let r = fuse(&[0.5, 0.5], &[0.0, 1.0], &[1.0, v], PrecisionPolicy::Error);
            assert_eq!(r, Err(FusionFailure::InvalidVariance));
        }
    }

    #[test]
    fn works_in_f32() {
        let g = fuse(&[0.25f32, 0.75], &[0.0, 4.0], &[2.0, 2.0], PrecisionPolicy::Error).unwrap();
        assert_eq!(g, Gaussian { mean: 3.0, variance: 2.0 });
    }
}
