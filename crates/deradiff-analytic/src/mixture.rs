//! Gaussian mixtures with diagonal covariances: the data distribution of the testbed, its exact
//! reward tilt at any β, its noised marginals, and exact sampling.

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rand_distr::StandardNormal;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::reward::Reward;

/// `log Σ exp(v_i)`, computed around the maximum so that nothing overflows (−∞ for an empty or
/// all −∞ slice).
pub fn log_sum_exp(values: &[f64]) -> f64 {
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !max.is_finite() {
        return max;
    }
    max + values.iter().map(|v| (v - max).exp()).sum::<f64>().ln()
}

/// `p(x) = Σ_k π_k N(x; m_k, diag(s_k²))` in `d` dimensions.
///
/// Weights are kept as normalised log-weights, so that tilting at a small β (which multiplies
/// weights by huge or tiny factors) neither overflows nor underflows.
///
/// ```
/// use deradiff_analytic::GaussianMixture;
/// let p = GaussianMixture::new(vec![1.0, 3.0], vec![vec![-1.0], vec![2.0]], vec![vec![0.5], vec![0.25]])?;
/// assert_eq!(p.num_components(), 2);
/// assert!((p.weights()[1] - 0.75).abs() < 1e-15);
/// # Ok::<(), deradiff_analytic::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GaussianMixture {
    log_weights: Vec<f64>,
    means: Vec<Vec<f64>>,
    variances: Vec<Vec<f64>>,
}

impl GaussianMixture {
    /// A mixture from weights (positive, finite; normalised here), means and per-dimension
    /// variances (positive, finite), one row per component, every row of the same length `d ≥ 1`.
    pub fn new(weights: Vec<f64>, means: Vec<Vec<f64>>, variances: Vec<Vec<f64>>) -> Result<Self> {
        if let Some((k, w)) = weights.iter().enumerate().find(|(_, w)| !(w.is_finite() && **w > 0.0)) {
            return Err(Error::InvalidMixture(format!(
                "weight {k} is {w}; mixture weights must be positive finite numbers"
            )));
        }
        let log_weights: Vec<f64> = weights.iter().map(|w| w.ln()).collect();
        Self::from_log_weights(log_weights, means, variances)
    }

    /// A mixture from unnormalised log-weights (finite), means and variances.
    pub fn from_log_weights(log_weights: Vec<f64>, means: Vec<Vec<f64>>, variances: Vec<Vec<f64>>) -> Result<Self> {
        let k = log_weights.len();
        if k == 0 {
            return Err(Error::InvalidMixture("no components: give at least one weight".into()));
        }
        if means.len() != k || variances.len() != k {
            return Err(Error::InvalidMixture(format!(
                "{k} weights, {} means and {} variance rows were given; give one of each per component",
                means.len(),
                variances.len()
            )));
        }
        let d = means[0].len();
        if d == 0 {
            return Err(Error::InvalidMixture("means have no coordinates: the dimension must be at least 1".into()));
        }
        for c in 0..k {
            if means[c].len() != d || variances[c].len() != d {
                return Err(Error::InvalidMixture(format!(
                    "component {c} has a mean of length {} and variances of length {}, but the dimension is {d}",
                    means[c].len(),
                    variances[c].len()
                )));
            }
            if !log_weights[c].is_finite() {
                return Err(Error::InvalidMixture(format!(
                    "log-weight {c} is {}; log-weights must be finite",
                    log_weights[c]
                )));
            }
            if let Some((j, m)) = means[c].iter().enumerate().find(|(_, m)| !m.is_finite()) {
                return Err(Error::InvalidMixture(format!("mean of component {c}, coordinate {j}, is {m}")));
            }
            if let Some((j, v)) = variances[c].iter().enumerate().find(|(_, v)| !(v.is_finite() && **v > 0.0)) {
                return Err(Error::InvalidMixture(format!(
                    "variance of component {c}, coordinate {j}, is {v}; variances must be positive and finite"
                )));
            }
        }
        let lse = log_sum_exp(&log_weights);
        let log_weights = log_weights.iter().map(|l| l - lse).collect();
        Ok(Self { log_weights, means, variances })
    }

    /// One Gaussian `N(mean, diag(variance))`.
    pub fn gaussian(mean: Vec<f64>, variance: Vec<f64>) -> Result<Self> {
        Self::new(vec![1.0], vec![mean], vec![variance])
    }

    /// Number of components `K`.
    pub fn num_components(&self) -> usize {
        self.log_weights.len()
    }

    /// Dimension `d`.
    pub fn dim(&self) -> usize {
        self.means[0].len()
    }

    /// Normalised log-weights `log π_k`.
    pub fn log_weights(&self) -> &[f64] {
        &self.log_weights
    }

    /// Normalised weights `π_k` (they may underflow to 0 for a far tilt; the log-weights do not).
    pub fn weights(&self) -> Vec<f64> {
        self.log_weights.iter().map(|l| l.exp()).collect()
    }

    /// Component means, `K` rows of length `d`.
    pub fn means(&self) -> &[Vec<f64>] {
        &self.means
    }

    /// Component variances (the covariance diagonals), `K` rows of length `d`.
    pub fn variances(&self) -> &[Vec<f64>] {
        &self.variances
    }

    /// The mean of the mixture, `Σ_k π_k m_k`.
    pub fn mean(&self) -> Vec<f64> {
        let mut out = vec![0.0; self.dim()];
        for (lw, m) in self.log_weights.iter().zip(&self.means) {
            let w = lw.exp();
            for (o, x) in out.iter_mut().zip(m) {
                *o += w * x;
            }
        }
        out
    }

    /// The model aligned at KL strength β (paper eq. 3): `p_β ∝ p · exp(r/β)`, again a mixture,
    /// computed exactly component by component and dimension by dimension:
    /// `1/s'² = 1/s² + q/β`, `m' = s'² (m/s² + w/β)`,
    /// `log π'_k = log π_k + Σ_j [½ log(s'²/s²) + ½ m'²/s'² − ½ m²/s²]` (then normalised).
    ///
    /// `β = +∞` gives the mixture itself (no alignment). Errors for β that is NaN or not positive
    /// and for a reward of another dimension.
    pub fn tilt(&self, reward: &Reward, beta: f64) -> Result<Self> {
        check_beta(beta)?;
        reward.check_dim(self.dim())?;
        if beta == f64::INFINITY {
            return Ok(self.clone());
        }
        let (w, q) = (reward.linear_coefficients(), reward.curvature());
        let k = self.num_components();
        let mut log_weights = Vec::with_capacity(k);
        let mut means = Vec::with_capacity(k);
        let mut variances = Vec::with_capacity(k);
        for c in 0..k {
            let mut lw = self.log_weights[c];
            let mut mc = Vec::with_capacity(self.dim());
            let mut vc = Vec::with_capacity(self.dim());
            for j in 0..self.dim() {
                let (m, s2) = (self.means[c][j], self.variances[c][j]);
                let s2p = 1.0 / (1.0 / s2 + q[j] / beta);
                let mp = s2p * (m / s2 + w[j] / beta);
                lw += 0.5 * (s2p / s2).ln() + 0.5 * mp * mp / s2p - 0.5 * m * m / s2;
                mc.push(mp);
                vc.push(s2p);
            }
            log_weights.push(lw);
            means.push(mc);
            variances.push(vc);
        }
        Self::from_log_weights(log_weights, means, variances).map_err(|e| match e {
            Error::InvalidMixture(msg) => Error::InvalidBeta(format!(
                "tilting at β = {beta:?} overflows ({msg}); use a larger β or a smaller reward"
            )),
            other => other,
        })
    }

    /// The marginal of the variance-preserving forward process at `ᾱ = alpha_bar ∈ [0, 1]`:
    /// `p_t(x) = Σ_k π_k N(x; √ᾱ m_k, ᾱ s_k² + 1 − ᾱ)`.
    pub fn noised(&self, alpha_bar: f64) -> Result<Self> {
        if !(0.0..=1.0).contains(&alpha_bar) {
            return Err(Error::InvalidArgument(format!("ᾱ must lie in [0, 1], got {alpha_bar}")));
        }
        let sa = alpha_bar.sqrt();
        let means = self.means.iter().map(|m| m.iter().map(|x| sa * x).collect()).collect();
        let variances =
            self.variances.iter().map(|v| v.iter().map(|s2| alpha_bar * s2 + (1.0 - alpha_bar)).collect()).collect();
        Self::from_log_weights(self.log_weights.clone(), means, variances)
    }

    fn check_point(&self, x: &[f64]) -> Result<()> {
        if x.len() != self.dim() {
            return Err(Error::InvalidArgument(format!(
                "a point of dimension {} was given to a mixture of dimension {}",
                x.len(),
                self.dim()
            )));
        }
        Ok(())
    }

    /// `log π_k + log N(x; m_k, s_k²)` for every component.
    fn component_log_densities(&self, x: &[f64]) -> Vec<f64> {
        let ln_2pi = (2.0 * std::f64::consts::PI).ln();
        (0..self.num_components())
            .map(|c| {
                let mut l = self.log_weights[c];
                for ((xj, m), s2) in x.iter().zip(&self.means[c]).zip(&self.variances[c]) {
                    let z = xj - m;
                    l -= 0.5 * (ln_2pi + s2.ln() + z * z / s2);
                }
                l
            })
            .collect()
    }

    /// `log p(x)`, by log-sum-exp over components.
    pub fn log_density(&self, x: &[f64]) -> Result<f64> {
        self.check_point(x)?;
        Ok(log_sum_exp(&self.component_log_densities(x)))
    }

    /// The posterior probabilities of the components given `x` (computed in log space).
    pub fn responsibilities(&self, x: &[f64]) -> Result<Vec<f64>> {
        self.check_point(x)?;
        let l = self.component_log_densities(x);
        let lse = log_sum_exp(&l);
        Ok(l.iter().map(|v| (v - lse).exp()).collect())
    }

    /// The score `∇ log p(x) = −Σ_k r_k(x) (x − m_k) / s_k²`.
    pub fn grad_log_density(&self, x: &[f64]) -> Result<Vec<f64>> {
        let r = self.responsibilities(x)?;
        let mut g = vec![0.0; self.dim()];
        for (c, rc) in r.iter().enumerate() {
            for (j, gj) in g.iter_mut().enumerate() {
                *gj -= rc * (x[j] - self.means[c][j]) / self.variances[c][j];
            }
        }
        Ok(g)
    }

    /// `n` exact, independent samples as rows (component by inverse CDF of a uniform, then a
    /// Gaussian), from ChaCha20 seeded with `seed`.
    pub fn sample_rows(&self, n: usize, seed: u64) -> Result<Vec<Vec<f64>>> {
        if n == 0 {
            return Err(Error::InvalidArgument("the number of samples must be at least 1".into()));
        }
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let weights = self.weights();
        let mut cdf = Vec::with_capacity(weights.len());
        let mut acc = 0.0;
        for w in &weights {
            acc += w;
            cdf.push(acc);
        }
        let last = weights.len() - 1;
        let mut rows = Vec::with_capacity(n);
        for _ in 0..n {
            let u: f64 = rng.random::<f64>() * acc;
            let c = cdf.iter().position(|&f| u < f).unwrap_or(last);
            let row = (0..self.dim())
                .map(|j| {
                    let z: f64 = rng.sample(StandardNormal);
                    self.means[c][j] + self.variances[c][j].sqrt() * z
                })
                .collect();
            rows.push(row);
        }
        Ok(rows)
    }

    /// `n` exact samples as an f64 tensor of shape `[n, d]` on the CPU.
    pub fn sample(&self, n: usize, seed: u64) -> Result<Tensor> {
        let rows = self.sample_rows(n, seed)?;
        let flat: Vec<f64> = rows.into_iter().flatten().collect();
        Ok(Tensor::from_vec(flat, (n, self.dim()), &Device::Cpu)?)
    }
}

/// Checks a KL strength: positive, not NaN (`+∞` allowed: the reference itself).
pub(crate) fn check_beta(beta: f64) -> Result<()> {
    if beta.is_nan() || beta <= 0.0 {
        return Err(Error::InvalidBeta(format!("β = {beta}; the KL strength β must be a positive number")));
    }
    Ok(())
}
