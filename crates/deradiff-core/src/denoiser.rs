//! The [`Denoiser`] trait: anything that predicts the model output for a latent at a timestep.
//!
//! deradiff's own implementations are the Stable Diffusion UNets of `deradiff-sd` (our own blocks,
//! with classifier-free guidance inside: `deradiff_sd::Guided`) and the exact Gaussian-mixture
//! denoiser of the analytic testbed; users compose their own by implementing this one method.

use std::sync::Arc;

use candle_core::Tensor;

use crate::error::Result;

/// A diffusion model's network: the model output (ε, v or x₀, as the scheduler's
/// [`crate::PredictionType`] says) for the scaled input `x` at training timestep `timestep`.
///
/// `x` is what [`crate::Scheduler::scale_model_input`] returned; `timestep` may be fractional
/// (Euler ancestral with linspace spacing). The output has `x`'s shape (twice its channels for
/// DDPM's learned variances), dtype and device.
///
/// ```
/// use candle_core::Tensor;
/// use deradiff_core::{Denoiser, Result};
///
/// /// Predicts ε = 0 everywhere: the data distribution is a point mass at the origin... of x/√ᾱ.
/// struct Zero;
/// impl Denoiser for Zero {
///     fn predict(&self, x: &Tensor, _timestep: f64) -> Result<Tensor> {
///         Ok(x.zeros_like()?)
///     }
/// }
/// ```
pub trait Denoiser {
    /// The model output for `x` at `timestep`.
    fn predict(&self, x: &Tensor, timestep: f64) -> Result<Tensor>;
}

impl<D: Denoiser + ?Sized> Denoiser for &D {
    fn predict(&self, x: &Tensor, timestep: f64) -> Result<Tensor> {
        (**self).predict(x, timestep)
    }
}

impl<D: Denoiser + ?Sized> Denoiser for Box<D> {
    fn predict(&self, x: &Tensor, timestep: f64) -> Result<Tensor> {
        (**self).predict(x, timestep)
    }
}

impl<D: Denoiser + ?Sized> Denoiser for Arc<D> {
    fn predict(&self, x: &Tensor, timestep: f64) -> Result<Tensor> {
        (**self).predict(x, timestep)
    }
}

/// A [`Denoiser`] made from a closure.
///
/// ```
/// use deradiff_core::{Denoiser, FnDenoiser};
/// let zero = FnDenoiser(|x: &candle_core::Tensor, _t: f64| Ok(x.zeros_like()?));
/// # let _ = &zero as &dyn Denoiser;
/// ```
pub struct FnDenoiser<F>(pub F);

impl<F> Denoiser for FnDenoiser<F>
where
    F: Fn(&Tensor, f64) -> Result<Tensor>,
{
    fn predict(&self, x: &Tensor, timestep: f64) -> Result<Tensor> {
        (self.0)(x, timestep)
    }
}
