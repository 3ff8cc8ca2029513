//! The built-in data of `deradiff demo`: 2-D Gaussian mixtures and rewards.

use crate::error::{Error, Result};
use crate::mixture::GaussianMixture;
use crate::reward::Reward;

/// The most components [`demo_mixture`] lays out.
pub const MAX_DEMO_COMPONENTS: usize = 16;

/// A built-in 2-D mixture with `components` components.
///
/// * 1: `N((0, 0), diag(1, 0.5))` — with a linear reward, the case where DeRaDiff is exact;
/// * 3 (the demo's default): three unequal, well-separated modes at (0, 0), (4, 0) and (2, 3)
///   with weights 0.5, 0.3, 0.2 — a reward tilt moves mass between modes, which the stepwise
///   mixture only approximates (the layout keeps the demo rewards positive, so that differences
///   in percent mean something);
/// * any other count up to [`MAX_DEMO_COMPONENTS`]: modes on a circle of radius 2.5 with
///   decreasing weights and alternating elongation.
pub fn demo_mixture(components: usize) -> Result<GaussianMixture> {
    match components {
        0 => Err(Error::InvalidArgument("the mixture needs at least 1 component".into())),
        1 => GaussianMixture::gaussian(vec![0.0, 0.0], vec![1.0, 0.5]),
        3 => GaussianMixture::new(
            vec![0.5, 0.3, 0.2],
            vec![vec![0.0, 0.0], vec![4.0, 0.0], vec![2.0, 3.0]],
            vec![vec![0.4, 0.3], vec![0.3, 0.5], vec![0.5, 0.25]],
        ),
        k if k <= MAX_DEMO_COMPONENTS => {
            let mut weights = Vec::with_capacity(k);
            let mut means = Vec::with_capacity(k);
            let mut variances = Vec::with_capacity(k);
            for i in 0..k {
                let angle = std::f64::consts::PI * (0.5 + 2.0 * i as f64 / k as f64);
                weights.push((k - i) as f64);
                means.push(vec![2.5 * angle.cos(), 2.5 * angle.sin()]);
                variances.push(if i % 2 == 0 { vec![0.3, 0.15] } else { vec![0.15, 0.3] });
            }
            GaussianMixture::new(weights, means, variances)
        }
        k => Err(Error::InvalidArgument(format!(
            "{k} components asked for; the built-in mixtures have 1 to {MAX_DEMO_COMPONENTS}"
        ))),
    }
}

/// The demo's linear reward `r(x) = x₁ + ½ x₂`.
pub fn demo_linear_reward() -> Reward {
    // Constant, finite coefficients: the constructor cannot fail.
    Reward::linear(vec![1.0, 0.5]).expect("constant reward is valid")
}

/// The demo's quadratic reward `r(x) = x₁ + ½ x₂ − ½ (½ x₁² + ½ x₂²)`: a bonus toward (2, 1) that
/// also narrows every mode.
pub fn demo_quadratic_reward() -> Reward {
    Reward::quadratic(vec![1.0, 0.5], vec![0.5, 0.5]).expect("constant reward is valid")
}
