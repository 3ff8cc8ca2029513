//! The Gaussian reverse-step posterior `p(x_{t-1} | x_t) = N(mean, variance)` that every
//! scheduler returns and the [`crate::Realigner`] fuses.

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};

/// The variance of a Gaussian posterior.
#[derive(Debug, Clone)]
pub enum Variance {
    /// One variance for every element (`σ² I`): fixed-variance DDPM, DDIM, Euler ancestral.
    Scalar(f64),
    /// One variance per element, same shape as the mean (`diag(σ²)`): DDPM `learned_range`.
    Diagonal(Tensor),
}

impl Variance {
    /// The scalar variance, if this is one.
    pub fn as_scalar(&self) -> Option<f64> {
        match self {
            Variance::Scalar(v) => Some(*v),
            Variance::Diagonal(_) => None,
        }
    }

    /// The variance as a tensor of `mean`'s shape, dtype and device.
    pub fn to_tensor_like(&self, mean: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Variance::Scalar(v) => Tensor::full(*v, mean.shape(), mean.device())?.to_dtype(mean.dtype())?,
            Variance::Diagonal(t) => t.clone(),
        })
    }
}

/// A Gaussian `N(mean, variance)` over the next latent `x_{t-1}`.
#[derive(Debug, Clone)]
pub struct Posterior {
    /// The mean `μ`.
    pub mean: Tensor,
    /// The variance `σ²` (scalar or per element).
    pub variance: Variance,
}

impl Posterior {
    /// A posterior with a scalar variance.
    pub fn scalar(mean: Tensor, variance: f64) -> Self {
        Self { mean, variance: Variance::Scalar(variance) }
    }

    /// Draws `mean + √variance · z` for standard-normal `z` of the mean's shape (paper
    /// Algorithm 1, line 15). `z` is converted to the mean's dtype.
    pub fn sample_with(&self, z: &Tensor) -> Result<Tensor> {
        if z.shape() != self.mean.shape() {
            return Err(Error::ShapeMismatch {
                context: "posterior noise".into(),
                expected: self.mean.shape().clone(),
                got: z.shape().clone(),
            });
        }
        let z = z.to_dtype(self.mean.dtype())?;
        Ok(match &self.variance {
            Variance::Scalar(v) if *v == 0.0 => self.mean.clone(),
            Variance::Scalar(v) => (&self.mean + z.affine(v.sqrt(), 0.0)?)?,
            Variance::Diagonal(var) => (&self.mean + (var.sqrt()? * z)?)?,
        })
    }

    /// Casts mean (and a diagonal variance) to `dtype`.
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        Ok(Self {
            mean: self.mean.to_dtype(dtype)?,
            variance: match &self.variance {
                Variance::Scalar(v) => Variance::Scalar(*v),
                Variance::Diagonal(t) => Variance::Diagonal(t.to_dtype(dtype)?),
            },
        })
    }
}
