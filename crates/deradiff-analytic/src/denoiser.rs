//! The exact denoiser of a Gaussian mixture under the variance-preserving process.

use candle_core::{DType, Device, Tensor};
use deradiff_core::{Denoiser, NoiseSchedule, PredictionType, TrainingConfig};

use crate::error::{Error, Result};
use crate::mixture::GaussianMixture;

/// The Bayes-optimal model of a Gaussian-mixture data distribution: at `ᾱ` the noised marginal is
/// `p_t(x) = Σ_k π_k N(x; √ᾱ m_k, ᾱ s_k² + 1 − ᾱ)`, and
///
/// * ε̂(x) = `−√(1−ᾱ) ∇ log p_t(x) = √(1−ᾱ) Σ_k r_k(x) (x − √ᾱ m_k) / (ᾱ s_k² + 1 − ᾱ)`,
/// * x̂₀(x) = `E[x₀ | x_t = x] = Σ_k r_k(x) (m_k + √ᾱ s_k² (x − √ᾱ m_k) / (ᾱ s_k² + 1 − ᾱ))`,
/// * v̂ = `√ᾱ ε̂ − √(1−ᾱ) x̂₀`,
///
/// with the responsibilities `r_k(x)` computed by log-sum-exp, so nothing overflows at small
/// noise. The timestep is mapped to `ᾱ` by [`NoiseSchedule::alpha_cumprod_at`], which makes the
/// denoiser exact under DDPM, DDIM and Euler ancestral alike (Euler ancestral feeds it
/// `x / √(σ² + 1)`, which is exactly the variance-preserving `x_t`).
///
/// Inputs have shape `[…, d]` (usually `[n_samples, d]`), any float dtype, any device; the
/// arithmetic is done in f64 on the CPU and the output comes back in the input's dtype and
/// device.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use deradiff_analytic::{ExactDenoiser, GaussianMixture};
/// use deradiff_core::{Denoiser, PredictionType, TimestepSpacing, TrainingConfig};
///
/// let data = GaussianMixture::gaussian(vec![0.0], vec![1.0])?;
/// let training = TrainingConfig::diffusers_default(TimestepSpacing::Leading);
/// let model = ExactDenoiser::from_training(data, &training)?;
/// // For standard-normal data x_t is standard normal at every t, and ε̂ = √(1−ᾱ) x.
/// let x = Tensor::new(&[[2.0f64]], &Device::Cpu)?;
/// let eps = model.predict(&x, 500.0)?.to_vec2::<f64>()?[0][0];
/// let a = model.alpha_bar(500.0);
/// assert!((eps - (1.0 - a).sqrt() * 2.0).abs() < 1e-12);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct ExactDenoiser {
    mixture: GaussianMixture,
    schedule: NoiseSchedule,
    prediction: PredictionType,
}

impl ExactDenoiser {
    /// The exact model of `mixture` for a noise schedule and an output parameterisation.
    pub fn new(mixture: GaussianMixture, schedule: NoiseSchedule, prediction: PredictionType) -> Self {
        Self { mixture, schedule, prediction }
    }

    /// The exact model of `mixture` trained with `training` (its betas and prediction type): pass
    /// the same training config the scheduler is built with.
    pub fn from_training(mixture: GaussianMixture, training: &TrainingConfig) -> Result<Self> {
        let schedule = NoiseSchedule::from_training(training)?;
        Ok(Self::new(mixture, schedule, training.prediction_type))
    }

    /// The data distribution this model denoises.
    pub fn mixture(&self) -> &GaussianMixture {
        &self.mixture
    }

    /// The noise schedule.
    pub fn schedule(&self) -> &NoiseSchedule {
        &self.schedule
    }

    /// What the model outputs.
    pub fn prediction_type(&self) -> PredictionType {
        self.prediction
    }

    /// `ᾱ` at a (possibly fractional) training timestep.
    pub fn alpha_bar(&self, timestep: f64) -> f64 {
        self.schedule.alpha_cumprod_at(timestep)
    }

    /// The model output for variance-preserving `x_t` at a given `ᾱ ∈ [0, 1)` rather than a
    /// timestep (for tests and for other schedules). At `ᾱ = 0` (zero terminal SNR) `x_t` is
    /// pure noise: ε̂ = x_t and x̂₀ is the data mean.
    pub fn predict_at_alpha_bar(&self, x: &Tensor, alpha_bar: f64) -> Result<Tensor> {
        if !(0.0..1.0).contains(&alpha_bar) {
            return Err(Error::InvalidArgument(format!("ᾱ must lie in [0, 1), got {alpha_bar}")));
        }
        let d = self.mixture.dim();
        let last = x.dims().last().copied().unwrap_or(0);
        if last != d {
            return Err(Error::InvalidArgument(format!(
                "the exact denoiser of a {d}-dimensional mixture needs inputs of shape [n, {d}], got {:?}",
                x.dims()
            )));
        }
        let flat = x.to_device(&Device::Cpu)?.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        let out = self.compute(&flat, alpha_bar);
        Ok(Tensor::from_vec(out, x.shape(), &Device::Cpu)?.to_dtype(x.dtype())?.to_device(x.device())?)
    }

    /// The output for a flat row-major `[n, d]` buffer.
    fn compute(&self, x: &[f64], a: f64) -> Vec<f64> {
        let m = &self.mixture;
        let (k, d) = (m.num_components(), m.dim());
        let sa = a.sqrt();
        let sb = (1.0 - a).sqrt();
        let ln_2pi = (2.0 * std::f64::consts::PI).ln();
        // Per component and dimension: noised mean, inverse variance, posterior gain.
        let mut mu = Vec::with_capacity(k * d);
        let mut inv_var = Vec::with_capacity(k * d);
        let mut gain = Vec::with_capacity(k * d);
        let mut log_norm = Vec::with_capacity(k);
        for c in 0..k {
            let mut ln = m.log_weights()[c];
            for j in 0..d {
                let s2 = m.variances()[c][j];
                let v = a * s2 + (1.0 - a);
                mu.push(sa * m.means()[c][j]);
                inv_var.push(1.0 / v);
                gain.push(sa * s2 / v);
                ln -= 0.5 * (ln_2pi + v.ln());
            }
            log_norm.push(ln);
        }
        let mut out = vec![0.0; x.len()];
        let mut logits = vec![0.0; k];
        for (row, o) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
            let mut max = f64::NEG_INFINITY;
            for c in 0..k {
                let mut l = log_norm[c];
                for j in 0..d {
                    let z = row[j] - mu[c * d + j];
                    l -= 0.5 * z * z * inv_var[c * d + j];
                }
                logits[c] = l;
                max = max.max(l);
            }
            let mut total = 0.0;
            for l in logits.iter_mut() {
                *l = (*l - max).exp();
                total += *l;
            }
            for (j, oj) in o.iter_mut().enumerate() {
                let mut eps = 0.0;
                let mut x0 = 0.0;
                for c in 0..k {
                    let r = logits[c] / total;
                    let z = row[j] - mu[c * d + j];
                    eps += r * z * inv_var[c * d + j];
                    x0 += r * (m.means()[c][j] + gain[c * d + j] * z);
                }
                let eps = sb * eps;
                *oj = match self.prediction {
                    PredictionType::Epsilon => eps,
                    PredictionType::Sample => x0,
                    PredictionType::VPrediction => sa * eps - sb * x0,
                };
            }
        }
        out
    }
}

impl Denoiser for ExactDenoiser {
    fn predict(&self, x: &Tensor, timestep: f64) -> deradiff_core::Result<Tensor> {
        if !timestep.is_finite() {
            return Err(deradiff_core::Error::InvalidArgument(format!("timestep {timestep} is not finite")));
        }
        let a = self.alpha_bar(timestep);
        self.predict_at_alpha_bar(x, a).map_err(|e| match e {
            Error::Core(c) => c,
            Error::Candle(c) => deradiff_core::Error::Candle(c),
            other => deradiff_core::Error::InvalidArgument(other.to_string()),
        })
    }
}
