//! Separable rewards `r(x) = w·x − ½ Σ_j q_j x_j²` (`q ≥ 0`): the family for which the aligned
//! model `p_ref · exp(r/β)` of a Gaussian mixture is again a Gaussian mixture.

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::mixture::GaussianMixture;

/// A separable reward `r(x) = w·x − ½ Σ_j q_j x_j²` with curvatures `q_j ≥ 0`.
///
/// ```
/// use deradiff_analytic::Reward;
/// let r = Reward::quadratic(vec![1.0, 0.0], vec![0.0, 2.0])?;
/// assert_eq!(r.value(&[3.0, 1.0])?, 3.0 - 1.0);
/// # Ok::<(), deradiff_analytic::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reward {
    linear: Vec<f64>,
    curvature: Vec<f64>,
}

impl Reward {
    /// A linear reward `r(x) = w·x` (finite coefficients, `d ≥ 1`).
    pub fn linear(w: Vec<f64>) -> Result<Self> {
        let q = vec![0.0; w.len()];
        Self::quadratic(w, q)
    }

    /// `r(x) = w·x − ½ Σ q_j x_j²`; `w` and `q` of one length `d ≥ 1`, finite, `q_j ≥ 0`.
    pub fn quadratic(w: Vec<f64>, q: Vec<f64>) -> Result<Self> {
        if w.is_empty() {
            return Err(Error::InvalidReward(
                "the reward has no coefficients: its dimension must be at least 1".into(),
            ));
        }
        if w.len() != q.len() {
            return Err(Error::InvalidReward(format!(
                "{} linear coefficients but {} curvatures; give one of each per dimension",
                w.len(),
                q.len()
            )));
        }
        if let Some((j, v)) = w.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(Error::InvalidReward(format!("linear coefficient {j} is {v}; it must be finite")));
        }
        if let Some((j, v)) = q.iter().enumerate().find(|(_, v)| !(v.is_finite() && **v >= 0.0)) {
            return Err(Error::InvalidReward(format!(
                "curvature {j} is {v}; curvatures must be finite and ≥ 0 (a negative one makes \
                 exp(r/β) unnormalisable)"
            )));
        }
        Ok(Self { linear: w, curvature: q })
    }

    /// The linear coefficients `w`.
    pub fn linear_coefficients(&self) -> &[f64] {
        &self.linear
    }

    /// The curvatures `q`.
    pub fn curvature(&self) -> &[f64] {
        &self.curvature
    }

    /// Dimension `d`.
    pub fn dim(&self) -> usize {
        self.linear.len()
    }

    /// Whether every curvature is zero.
    pub fn is_linear(&self) -> bool {
        self.curvature.iter().all(|q| *q == 0.0)
    }

    pub(crate) fn check_dim(&self, d: usize) -> Result<()> {
        if self.dim() != d {
            return Err(Error::InvalidReward(format!(
                "the reward has dimension {} but the data has dimension {d}",
                self.dim()
            )));
        }
        Ok(())
    }

    /// `r(x)` at one point.
    pub fn value(&self, x: &[f64]) -> Result<f64> {
        self.check_dim(x.len())?;
        Ok(self.value_unchecked(x))
    }

    fn value_unchecked(&self, x: &[f64]) -> f64 {
        x.iter().zip(&self.linear).zip(&self.curvature).map(|((x, w), q)| w * x - 0.5 * q * x * x).sum()
    }

    /// `r` of every row of a `[n, d]` tensor (any float dtype, any device).
    pub fn evaluate(&self, samples: &Tensor) -> Result<Vec<f64>> {
        let (n, d) = samples
            .dims2()
            .map_err(|_| Error::InvalidArgument(format!("samples must have shape [n, d], got {:?}", samples.dims())))?;
        self.check_dim(d)?;
        let flat = samples.to_device(&Device::Cpu)?.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        Ok((0..n).map(|i| self.value_unchecked(&flat[i * d..(i + 1) * d])).collect())
    }

    /// The exact mean reward under a mixture:
    /// `E[r] = Σ_k π_k (w·m_k − ½ Σ_j q_j (m_kj² + s_kj²))`.
    pub fn exact_mean(&self, mixture: &GaussianMixture) -> Result<f64> {
        self.check_dim(mixture.dim())?;
        let mut total = 0.0;
        for ((lw, m), s2) in mixture.log_weights().iter().zip(mixture.means()).zip(mixture.variances()) {
            let mut e = 0.0;
            for j in 0..self.dim() {
                e += self.linear[j] * m[j] - 0.5 * self.curvature[j] * (m[j] * m[j] + s2[j]);
            }
            total += lw.exp() * e;
        }
        Ok(total)
    }

    /// A short human-readable formula, e.g. `r(x) = 1·x1 + 0.5·x2 − ½(0.5·x1²)`.
    pub fn describe(&self) -> String {
        let mut lin: Vec<String> = Vec::new();
        for (j, w) in self.linear.iter().enumerate() {
            if *w != 0.0 {
                lin.push(format!("{w}·x{}", j + 1));
            }
        }
        let mut s = if lin.is_empty() { "0".to_string() } else { lin.join(" + ") };
        let quad: Vec<String> = self
            .curvature
            .iter()
            .enumerate()
            .filter(|(_, q)| **q != 0.0)
            .map(|(j, q)| format!("{q}·x{}²", j + 1))
            .collect();
        if !quad.is_empty() {
            s.push_str(&format!(" − ½({})", quad.join(" + ")));
        }
        format!("r(x) = {}", s.replace("+ -", "− "))
    }
}
