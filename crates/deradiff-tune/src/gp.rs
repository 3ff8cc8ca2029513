//! A one-dimensional Gaussian-process regression: the surrogate of Bayesian optimisation
//! (paper A.5.1, eqs. 40–42).
//!
//! * inputs are mapped to `u = (λ − lower) / (upper − lower) ∈ [0, 1]`;
//! * outputs are standardised, `y = (R̂ − mean R̂) / sd R̂` (population SD; 1 when all values
//!   are equal), so the zero-mean prior of the paper is a prior around the data mean;
//! * kernel `k(u, u') = σ_f² exp(−(u − u')² / (2ℓ²))` (RBF) plus observation noise `σ_n²`;
//! * posterior mean `μ(u) = k(u, U) [K + σ_n² I]⁻¹ y`, variance
//!   `σ²(u) = k(u, u) − k(u, U) [K + σ_n² I]⁻¹ k(U, u)` (eqs. 41–42; the latent function,
//!   without the observation noise), through the Cholesky factor of `K + σ_n² I`;
//! * hyper-parameters `(ℓ, σ_f², σ_n²)` maximise the log marginal likelihood
//!   `−½ yᵀ[K + σ_n² I]⁻¹y − ½ log|K + σ_n² I| − n/2 log 2π` within [`GpBounds`], by
//!   Nelder–Mead in log space from the best points of a log grid (multi-start).
//!
//! Hand-written on purpose: for n ≤ ~50 points in one dimension a Cholesky of an n×n matrix is
//! all the linear algebra needed, and the GP crates (egobox-gp, friedrich) would bring ndarray
//! or nalgebra, linfa, rayon and a second `rand` for it.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Kernel and noise hyper-parameters, in the normalised units of the module docs (inputs in
/// `[0, 1]`, standardised outputs).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GpHyper {
    /// RBF length-scale `ℓ` (in units of the search range).
    pub length_scale: f64,
    /// Signal variance `σ_f²`.
    pub signal_variance: f64,
    /// Observation-noise variance `σ_n²`.
    pub noise_variance: f64,
}

impl GpHyper {
    fn check(&self) -> Result<()> {
        let ok = |v: f64| v.is_finite() && v > 0.0;
        if !(ok(self.length_scale) && ok(self.signal_variance) && self.noise_variance.is_finite())
            || self.noise_variance < 0.0
        {
            return Err(Error::Gp(format!(
                "hyper-parameters {self:?} are not valid: ℓ and σ_f² must be positive, σ_n² ≥ 0, all finite"
            )));
        }
        Ok(())
    }
}

/// The box the marginal-likelihood fit searches, in normalised units.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GpBounds {
    /// `[min, max]` of the length-scale.
    pub length_scale: (f64, f64),
    /// `[min, max]` of the signal variance.
    pub signal_variance: (f64, f64),
    /// `[min, max]` of the noise variance.
    pub noise_variance: (f64, f64),
}

impl Default for GpBounds {
    /// ℓ ∈ [0.05, 2] of the range (a bump narrower than 1/20 of the range is not resolvable
    /// with a BO budget), σ_f² ∈ [0.01, 100], σ_n² ∈ [10⁻⁸, 1] (in units of the data variance).
    fn default() -> Self {
        Self { length_scale: (0.05, 2.0), signal_variance: (0.01, 100.0), noise_variance: (1e-8, 1.0) }
    }
}

impl GpBounds {
    fn check(&self) -> Result<()> {
        for (name, (lo, hi)) in [
            ("length_scale", self.length_scale),
            ("signal_variance", self.signal_variance),
            ("noise_variance", self.noise_variance),
        ] {
            if !(lo.is_finite() && hi.is_finite() && lo > 0.0 && lo <= hi) {
                return Err(Error::Gp(format!("bounds of {name} [{lo}, {hi}] must be positive, finite, increasing")));
            }
        }
        Ok(())
    }

    fn lower(&self) -> [f64; 3] {
        [self.length_scale.0.ln(), self.signal_variance.0.ln(), self.noise_variance.0.ln()]
    }

    fn upper(&self) -> [f64; 3] {
        [self.length_scale.1.ln(), self.signal_variance.1.ln(), self.noise_variance.1.ln()]
    }
}

/// A fitted 1-D Gaussian process (see the module docs).
///
/// ```
/// use deradiff_tune::{GaussianProcess, GpBounds};
/// let lambdas = [0.0, 0.25, 0.5, 0.75, 1.0];
/// let values: Vec<f64> = lambdas.iter().map(|l: &f64| -(l - 0.6) * (l - 0.6)).collect();
/// let gp = GaussianProcess::fit(&lambdas, &values, 0.0, 1.0, &GpBounds::default())?;
/// let (mean, sd) = gp.predict(0.6);
/// assert!((mean - 0.0).abs() < 0.01 && sd < 0.05);
/// # Ok::<(), deradiff_tune::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct GaussianProcess {
    lower: f64,
    upper: f64,
    lambdas: Vec<f64>,
    values: Vec<f64>,
    u: Vec<f64>,
    y: Vec<f64>,
    y_mean: f64,
    y_std: f64,
    hyper: GpHyper,
    jitter: f64,
    chol: Vec<f64>,
    alpha: Vec<f64>,
    lml: f64,
}

const MAX_POINTS: usize = 2000;

fn check_data(lambdas: &[f64], values: &[f64], lower: f64, upper: f64) -> Result<()> {
    if !(lower.is_finite() && upper.is_finite() && lower < upper) {
        return Err(Error::InvalidRange { lower, upper });
    }
    if lambdas.is_empty() {
        return Err(Error::Gp("no data: a Gaussian process needs at least one evaluated point".into()));
    }
    if lambdas.len() != values.len() {
        return Err(Error::Gp(format!("{} λ values but {} observations", lambdas.len(), values.len())));
    }
    if lambdas.len() > MAX_POINTS {
        return Err(Error::Gp(format!("{} points; this 1-D GP handles at most {MAX_POINTS}", lambdas.len())));
    }
    if let Some(l) = lambdas.iter().find(|l| !l.is_finite()) {
        return Err(Error::InvalidLambda(format!("λ = {l} in the GP data")));
    }
    if let Some(v) = values.iter().find(|v| !v.is_finite()) {
        return Err(Error::NonFiniteReward {
            reward: "objective".into(),
            value: *v,
            context: "the Gaussian process data".into(),
        });
    }
    Ok(())
}

/// Lower Cholesky factor of a symmetric n×n matrix (row-major), or `None` if not positive
/// definite.
fn cholesky(a: &[f64], n: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= l[i * n + k] * l[j * n + k];
            }
            if i == j {
                if s.is_nan() || s <= 0.0 || !s.is_finite() {
                    return None;
                }
                l[i * n + i] = s.sqrt();
            } else {
                l[i * n + j] = s / l[j * n + j];
            }
        }
    }
    Some(l)
}

/// Solves `L v = b` (forward substitution).
fn forward(l: &[f64], n: usize, b: &[f64]) -> Vec<f64> {
    let mut v = vec![0.0; n];
    for i in 0..n {
        let mut s = b[i];
        for k in 0..i {
            s -= l[i * n + k] * v[k];
        }
        v[i] = s / l[i * n + i];
    }
    v
}

/// Solves `Lᵀ x = v` (back substitution).
fn backward(l: &[f64], n: usize, v: &[f64]) -> Vec<f64> {
    let mut x = vec![0.0; n];
    for i in (0..n).rev() {
        let mut s = v[i];
        for k in i + 1..n {
            s -= l[k * n + i] * x[k];
        }
        x[i] = s / l[i * n + i];
    }
    x
}

fn rbf(a: f64, b: f64, h: &GpHyper) -> f64 {
    let d = a - b;
    h.signal_variance * (-d * d / (2.0 * h.length_scale * h.length_scale)).exp()
}

/// Factor, weights and log marginal likelihood for standardised data, with the smallest jitter
/// (0, then 1e-10 … 1e-4 times σ_f²) that makes the matrix positive definite.
fn factor(u: &[f64], y: &[f64], h: &GpHyper) -> Option<(Vec<f64>, Vec<f64>, f64, f64)> {
    let n = u.len();
    let mut k = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            k[i * n + j] = rbf(u[i], u[j], h);
        }
        k[i * n + i] += h.noise_variance;
    }
    for jitter in [0.0, 1e-10, 1e-8, 1e-6, 1e-4] {
        let mut kj = k.clone();
        for i in 0..n {
            kj[i * n + i] += jitter * h.signal_variance;
        }
        if let Some(l) = cholesky(&kj, n) {
            let alpha = backward(&l, n, &forward(&l, n, y));
            let fit: f64 = y.iter().zip(&alpha).map(|(a, b)| a * b).sum();
            let logdet: f64 = (0..n).map(|i| l[i * n + i].ln()).sum();
            let lml = -0.5 * fit - logdet - 0.5 * n as f64 * (2.0 * std::f64::consts::PI).ln();
            if lml.is_finite() {
                return Some((l, alpha, lml, jitter * h.signal_variance));
            }
        }
    }
    None
}

/// Minimises `f` by Nelder–Mead from `x0` with initial steps `step`; `f` may return +∞ (outside
/// the feasible box). Returns the best point and value.
pub(crate) fn nelder_mead<const D: usize>(
    f: &mut dyn FnMut(&[f64; D]) -> f64,
    x0: [f64; D],
    step: [f64; D],
    max_evals: usize,
    tol: f64,
) -> ([f64; D], f64) {
    let mut simplex: Vec<([f64; D], f64)> = Vec::with_capacity(D + 1);
    simplex.push((x0, f(&x0)));
    for i in 0..D {
        let mut x = x0;
        x[i] += step[i];
        let v = f(&x);
        simplex.push((x, v));
    }
    let mut evals = D + 1;
    let key = |v: f64| if v.is_nan() { f64::INFINITY } else { v };
    while evals < max_evals {
        simplex.sort_by(|a, b| key(a.1).total_cmp(&key(b.1)));
        let (best, worst) = (key(simplex[0].1), key(simplex[D].1));
        if worst.is_finite() && (worst - best).abs() <= tol * (1.0 + best.abs()) {
            break;
        }
        let mut centroid = [0.0; D];
        for (x, _) in &simplex[..D] {
            for j in 0..D {
                centroid[j] += x[j] / D as f64;
            }
        }
        let along = |t: f64| -> [f64; D] {
            let mut x = [0.0; D];
            for j in 0..D {
                x[j] = centroid[j] + t * (simplex[D].0[j] - centroid[j]);
            }
            x
        };
        let xr = along(-1.0);
        let fr = key(f(&xr));
        evals += 1;
        if fr < best {
            let xe = along(-2.0);
            let fe = key(f(&xe));
            evals += 1;
            simplex[D] = if fe < fr { (xe, fe) } else { (xr, fr) };
        } else if fr < key(simplex[D - 1].1) {
            simplex[D] = (xr, fr);
        } else {
            let (xc, fc) = if fr < worst {
                let x = along(-0.5);
                (x, key(f(&x)))
            } else {
                let x = along(0.5);
                (x, key(f(&x)))
            };
            evals += 1;
            if fc < worst.min(fr) {
                simplex[D] = (xc, fc);
            } else {
                let x_best = simplex[0].0;
                for s in simplex.iter_mut().skip(1) {
                    for (sj, bj) in s.0.iter_mut().zip(&x_best) {
                        *sj = bj + 0.5 * (*sj - bj);
                    }
                    s.1 = key(f(&s.0));
                }
                evals += D;
            }
        }
    }
    simplex.sort_by(|a, b| key(a.1).total_cmp(&key(b.1)));
    (simplex[0].0, simplex[0].1)
}

impl GaussianProcess {
    /// A GP with given hyper-parameters on observations `values` at `lambdas` within
    /// `[lower, upper]`.
    pub fn with_hyper(lambdas: &[f64], values: &[f64], lower: f64, upper: f64, hyper: GpHyper) -> Result<Self> {
        check_data(lambdas, values, lower, upper)?;
        hyper.check()?;
        let n = values.len() as f64;
        let y_mean = values.iter().sum::<f64>() / n;
        let sd = (values.iter().map(|v| (v - y_mean) * (v - y_mean)).sum::<f64>() / n).sqrt();
        let y_std = if sd > 0.0 && sd.is_finite() { sd } else { 1.0 };
        let u: Vec<f64> = lambdas.iter().map(|l| (l - lower) / (upper - lower)).collect();
        let y: Vec<f64> = values.iter().map(|v| (v - y_mean) / y_std).collect();
        let (chol, alpha, lml, jitter) = factor(&u, &y, &hyper).ok_or_else(|| {
            Error::Gp(format!("the kernel matrix is not positive definite with {hyper:?}, even with jitter"))
        })?;
        Ok(Self {
            lower,
            upper,
            lambdas: lambdas.to_vec(),
            values: values.to_vec(),
            u,
            y,
            y_mean,
            y_std,
            hyper,
            jitter,
            chol,
            alpha,
            lml,
        })
    }

    /// A GP whose hyper-parameters maximise the log marginal likelihood within `bounds`
    /// (multi-start Nelder–Mead in log space; deterministic).
    pub fn fit(lambdas: &[f64], values: &[f64], lower: f64, upper: f64, bounds: &GpBounds) -> Result<Self> {
        check_data(lambdas, values, lower, upper)?;
        bounds.check()?;
        // Standardise once to score candidates cheaply.
        let probe = Self::with_hyper(
            lambdas,
            values,
            lower,
            upper,
            GpHyper {
                length_scale: bounds.length_scale.0.max(bounds.length_scale.1.min(0.3)),
                signal_variance: 1.0f64.clamp(bounds.signal_variance.0, bounds.signal_variance.1),
                noise_variance: 1e-2f64.clamp(bounds.noise_variance.0, bounds.noise_variance.1),
            },
        )?;
        let (u, y) = (probe.u.clone(), probe.y.clone());
        let (lo, hi) = (bounds.lower(), bounds.upper());
        let mut neg_lml = |t: &[f64; 3]| -> f64 {
            if (0..3).any(|i| !(t[i] >= lo[i] - 1e-12 && t[i] <= hi[i] + 1e-12)) {
                return f64::INFINITY;
            }
            let h = GpHyper { length_scale: t[0].exp(), signal_variance: t[1].exp(), noise_variance: t[2].exp() };
            factor(&u, &y, &h).map(|(_, _, lml, _)| -lml).unwrap_or(f64::INFINITY)
        };
        // Log grid of 6 × 3 × 4 starting points, inside the box.
        let grid = |i: usize, k: usize, m: usize| lo[i] + (hi[i] - lo[i]) * (k as f64 + 0.5) / m as f64;
        let mut starts: Vec<([f64; 3], f64)> = Vec::new();
        for a in 0..6 {
            for b in 0..3 {
                for c in 0..4 {
                    let t = [grid(0, a, 6), grid(1, b, 3), grid(2, c, 4)];
                    let v = neg_lml(&t);
                    starts.push((t, v));
                }
            }
        }
        starts.sort_by(|a, b| a.1.total_cmp(&b.1));
        let step = [(hi[0] - lo[0]) / 6.0, (hi[1] - lo[1]) / 3.0, (hi[2] - lo[2]) / 4.0];
        let mut best: Option<([f64; 3], f64)> = None;
        for (t0, v0) in starts.into_iter().take(3) {
            if !v0.is_finite() {
                continue;
            }
            let (t, v) = nelder_mead(&mut neg_lml, t0, step, 400, 1e-10);
            if best.as_ref().is_none_or(|b| v < b.1) {
                best = Some((t, v));
            }
        }
        let (t, _) = best.ok_or_else(|| {
            Error::Gp("no hyper-parameters within the bounds give a positive-definite kernel matrix".into())
        })?;
        let hyper = GpHyper { length_scale: t[0].exp(), signal_variance: t[1].exp(), noise_variance: t[2].exp() };
        Self::with_hyper(lambdas, values, lower, upper, hyper)
    }

    /// The hyper-parameters (normalised units).
    pub fn hyper(&self) -> GpHyper {
        self.hyper
    }

    /// The log marginal likelihood of the standardised data under these hyper-parameters.
    pub fn log_marginal_likelihood(&self) -> f64 {
        self.lml
    }

    /// The jitter added to the diagonal to factor the kernel matrix (usually 0).
    pub fn jitter(&self) -> f64 {
        self.jitter
    }

    /// The search range `(lower, upper)`.
    pub fn range(&self) -> (f64, f64) {
        (self.lower, self.upper)
    }

    /// The data, `(λ, value)` pairs.
    pub fn data(&self) -> impl Iterator<Item = (f64, f64)> + '_ {
        self.lambdas.iter().copied().zip(self.values.iter().copied())
    }

    /// Mean and standard deviation of the latent function at `lambda` in the data's units
    /// (eqs. 41–42; the observation noise is not included).
    pub fn predict(&self, lambda: f64) -> (f64, f64) {
        let (m, s) = self.predict_standardised(lambda);
        (self.y_mean + self.y_std * m, self.y_std * s)
    }

    /// Mean and SD in standardised units.
    pub(crate) fn predict_standardised(&self, lambda: f64) -> (f64, f64) {
        let u = (lambda - self.lower) / (self.upper - self.lower);
        let n = self.u.len();
        let ks: Vec<f64> = self.u.iter().map(|&ui| rbf(u, ui, &self.hyper)).collect();
        let mean: f64 = ks.iter().zip(&self.alpha).map(|(a, b)| a * b).sum();
        let v = forward(&self.chol, n, &ks);
        let var = self.hyper.signal_variance - v.iter().map(|x| x * x).sum::<f64>();
        (mean, var.max(0.0).sqrt())
    }

    /// Standardises a value of the data's units.
    pub(crate) fn standardise(&self, value: f64) -> f64 {
        (value - self.y_mean) / self.y_std
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cholesky_solves_and_rejects_indefinite_matrices() {
        let a = [4.0, 2.0, 2.0, 3.0];
        let l = cholesky(&a, 2).unwrap();
        let x = backward(&l, 2, &forward(&l, 2, &[2.0, 1.0]));
        assert!((4.0 * x[0] + 2.0 * x[1] - 2.0).abs() < 1e-14 && (2.0 * x[0] + 3.0 * x[1] - 1.0).abs() < 1e-14);
        assert!(cholesky(&[1.0, 2.0, 2.0, 1.0], 2).is_none());
        assert!(cholesky(&[f64::NAN], 1).is_none());
    }

    #[test]
    fn nelder_mead_minimises_rosenbrock_and_respects_infinite_walls() {
        let mut f = |x: &[f64; 2]| (1.0 - x[0]).powi(2) + 100.0 * (x[1] - x[0] * x[0]).powi(2);
        let (x, v) = nelder_mead(&mut f, [-1.2, 1.0], [0.5, 0.5], 4000, 1e-16);
        assert!(v < 1e-8 && (x[0] - 1.0).abs() < 1e-3, "{x:?} {v}");
        let mut walled = |x: &[f64; 1]| if x[0] < 0.0 { f64::INFINITY } else { (x[0] - 0.0).powi(2) + x[0] };
        let (x, _) = nelder_mead(&mut walled, [1.0], [0.5], 500, 1e-14);
        assert!(x[0] >= 0.0 && x[0] < 1e-3, "{x:?}");
    }

    #[test]
    fn one_point_and_constant_data_are_fine() {
        let gp = GaussianProcess::fit(&[0.3], &[2.0], 0.0, 1.0, &GpBounds::default()).unwrap();
        let (m, s) = gp.predict(0.3);
        assert!((m - 2.0).abs() < 1e-6 && s < 0.1, "{m} {s}");
        let gp = GaussianProcess::fit(&[0.1, 0.5, 0.9], &[1.0, 1.0, 1.0], 0.0, 1.0, &GpBounds::default()).unwrap();
        assert!((gp.predict(0.7).0 - 1.0).abs() < 1e-9);
    }
}
