//! The analytic testbed's rewards, as [`Reward`]s (the trait of deradiff-rewards) over `[n, d]`
//! batches of points.

use candle_core::Tensor;
use deradiff_analytic::GaussianMixture;
use deradiff_rewards::Reward;

use crate::error::{Error, Result};

/// A tune error as the error of a [`Reward`]: boxed as [`deradiff_rewards::Error::User`], and
/// unboxed again by `From<deradiff_rewards::Error> for Error` when it reaches a sweep.
fn reward_error(e: impl Into<Error>) -> deradiff_rewards::Error {
    deradiff_rewards::Error::user(e.into())
}

/// The analytic testbed's separable reward `r(x) = w·x − ½ Σ q_j x_j²` as a [`Reward`] over
/// `[n, d]` batches (prompts are ignored).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use deradiff_rewards::Reward;
/// use deradiff_tune::AnalyticReward;
///
/// let reward = AnalyticReward::new("x1", deradiff_analytic::Reward::linear(vec![1.0, 0.0])?);
/// let batch = Tensor::new(&[[1.0f64, 5.0], [-2.0, 0.0]], &Device::Cpu)?;
/// assert_eq!(reward.score(&batch, None)?, vec![1.0, -2.0]);
/// # Ok::<(), deradiff_tune::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct AnalyticReward {
    name: String,
    reward: deradiff_analytic::Reward,
}

impl AnalyticReward {
    /// Wraps `reward` under `name`.
    pub fn new(name: impl Into<String>, reward: deradiff_analytic::Reward) -> Self {
        Self { name: name.into(), reward }
    }

    /// The wrapped reward.
    pub fn inner(&self) -> &deradiff_analytic::Reward {
        &self.reward
    }
}

impl Reward for AnalyticReward {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn score(&self, samples: &Tensor, _prompts: Option<&[&str]>) -> deradiff_rewards::Result<Vec<f64>> {
        self.reward.evaluate(samples).map_err(reward_error)
    }
}

/// How a [`TrueReward`] penalises samples that leave the data manifold.
#[derive(Debug, Clone, PartialEq)]
pub enum ManifoldPenalty {
    /// Adds `weight · log p_ref(x)`: the reference density itself, low off the data.
    ReferenceLogDensity(GaussianMixture),
    /// Subtracts `weight · ½ ‖x − center‖²`.
    Quadratic {
        /// The point the penalty is centred on (usually the data mean).
        center: Vec<f64>,
    },
}

/// A "true" reward for the analytic testbed: the proxy reward the anchor model was aligned with
/// plus a penalty for leaving the data manifold,
///
/// * `r_true(x) = r_proxy(x) + weight · log p_ref(x)`, or
/// * `r_true(x) = r_proxy(x) − weight · ½ ‖x − c‖²`.
///
/// With a linear proxy, aligning harder (larger λ) keeps raising the proxy but eventually
/// drives samples off the data, so `E[r_true]` along λ has an interior optimum: the situation
/// in which searching λ pays (paper §6, A.5). For one Gaussian `N(m, s² I)`, a linear proxy
/// `w·x` and anchor β_a, the model at λ is `N(m + s² w λ/β_a, s² I)` and the log-density
/// penalty gives `E[r_true](λ) = const + s²‖w‖² (λ/β_a − weight λ²/(2β_a²))`, maximal at
/// `λ* = β_a / weight`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use deradiff_analytic::GaussianMixture;
/// use deradiff_rewards::Reward;
/// use deradiff_tune::{ManifoldPenalty, TrueReward};
///
/// let proxy = deradiff_analytic::Reward::linear(vec![1.0])?;
/// let data = GaussianMixture::gaussian(vec![0.0], vec![1.0])?;
/// let r = TrueReward::new("true", proxy, ManifoldPenalty::ReferenceLogDensity(data), 2.0)?;
/// let x = Tensor::new(&[[0.0f64], [3.0]], &Device::Cpu)?;
/// let s = r.score(&x, None)?;
/// let log_norm = -0.5 * (2.0 * std::f64::consts::PI).ln();
/// assert!((s[0] - 2.0 * log_norm).abs() < 1e-12);
/// assert!((s[1] - (3.0 + 2.0 * (log_norm - 4.5))).abs() < 1e-12);
/// # Ok::<(), deradiff_tune::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct TrueReward {
    name: String,
    proxy: deradiff_analytic::Reward,
    penalty: ManifoldPenalty,
    weight: f64,
}

impl TrueReward {
    /// `proxy` plus `weight` times the penalty (`weight ≥ 0`, finite; the penalty's dimension
    /// must be the proxy's).
    pub fn new(
        name: impl Into<String>,
        proxy: deradiff_analytic::Reward,
        penalty: ManifoldPenalty,
        weight: f64,
    ) -> Result<Self> {
        if !(weight.is_finite() && weight >= 0.0) {
            return Err(Error::InvalidArgument(format!(
                "the manifold penalty's weight is {weight}; it must be a finite number ≥ 0"
            )));
        }
        let d = proxy.dim();
        let pd = match &penalty {
            ManifoldPenalty::ReferenceLogDensity(m) => m.dim(),
            ManifoldPenalty::Quadratic { center } => {
                if let Some((j, c)) = center.iter().enumerate().find(|(_, c)| !c.is_finite()) {
                    return Err(Error::InvalidArgument(format!("coordinate {j} of the penalty's centre is {c}")));
                }
                center.len()
            }
        };
        if pd != d {
            return Err(Error::InvalidArgument(format!(
                "the proxy reward has dimension {d} but the manifold penalty has dimension {pd}"
            )));
        }
        Ok(Self { name: name.into(), proxy, penalty, weight })
    }

    /// The proxy reward (what the anchor model was aligned with).
    pub fn proxy(&self) -> &deradiff_analytic::Reward {
        &self.proxy
    }

    /// The penalty.
    pub fn penalty(&self) -> &ManifoldPenalty {
        &self.penalty
    }

    /// The penalty's weight.
    pub fn weight(&self) -> f64 {
        self.weight
    }

    /// `r_true` at one point.
    pub fn value(&self, x: &[f64]) -> Result<f64> {
        let r = self.proxy.value(x)?;
        let p = match &self.penalty {
            ManifoldPenalty::ReferenceLogDensity(m) => m.log_density(x)?,
            ManifoldPenalty::Quadratic { center } => {
                -0.5 * x.iter().zip(center).map(|(a, c)| (a - c) * (a - c)).sum::<f64>()
            }
        };
        Ok(r + self.weight * p)
    }
}

impl Reward for TrueReward {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn score(&self, samples: &Tensor, _prompts: Option<&[&str]>) -> deradiff_rewards::Result<Vec<f64>> {
        let (n, d) = samples.dims2().map_err(|_| {
            deradiff_rewards::Error::InvalidArgument(format!(
                "analytic samples must have shape [n, d], got {:?}",
                samples.dims()
            ))
        })?;
        let flat = samples
            .to_device(&candle_core::Device::Cpu)?
            .to_dtype(candle_core::DType::F64)?
            .flatten_all()?
            .to_vec1()?;
        (0..n).map(|i| self.value(&flat[i * d..(i + 1) * d]).map_err(reward_error)).collect()
    }
}
