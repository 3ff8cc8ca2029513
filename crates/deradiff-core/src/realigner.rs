//! The [`Realigner`]: fuses K Gaussian posteriors into the stepwise geometric mixture of
//! DeRaDiff (paper eq. 5, Theorem 1, A.4).
//!
//! The arithmetic is [`crate::fusion::FusionPlan`]'s; this module validates inputs, chooses the
//! weights of the step, and applies the plan to tensors:
//! * all variances scalar → one plan per step, and the fused mean is the linear combination
//!   `Σ α_i μ_i` (one pass over memory on CPU, candle ops elsewhere);
//! * any variance diagonal → one plan per element (on CPU, in f64).

use std::fmt;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::fusion::{FusionFailure, FusionPlan};
use crate::policy::PrecisionPolicy;
use crate::posterior::{Posterior, Variance};

/// Weights computed from `(step, steps)`.
type WeightFn = Arc<dyn Fn(usize, usize) -> Vec<f64> + Send + Sync>;

#[derive(Clone)]
enum Weights {
    Constant(Vec<f64>),
    PerStep(Vec<Vec<f64>>),
    /// Evaluated for a run by [`Realigner::for_steps`].
    Schedule {
        num_models: usize,
        f: WeightFn,
    },
}

impl PartialEq for Weights {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Weights::Constant(a), Weights::Constant(b)) => a == b,
            (Weights::PerStep(a), Weights::PerStep(b)) => a == b,
            (Weights::Schedule { num_models: m, f }, Weights::Schedule { num_models: n, f: g }) => {
                m == n && Arc::ptr_eq(f, g)
            }
            _ => false,
        }
    }
}

impl fmt::Debug for Weights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Weights::Constant(w) => f.debug_tuple("Constant").field(w).finish(),
            Weights::PerStep(w) => f.debug_tuple("PerStep").field(w).finish(),
            Weights::Schedule { num_models, .. } => {
                f.debug_struct("Schedule").field("num_models", num_models).finish_non_exhaustive()
            }
        }
    }
}

/// Fuses the posteriors of K models with weights `w` (`Σ w = 1`):
/// `p̂ ∝ Π_i N(μ_i, σ_i²)^{w_i}`.
///
/// * two models (reference, aligned at β): `w = [1 − λ, λ]` emulates the model aligned at β/λ;
///   λ > 1 extrapolates;
/// * K aligned models (one per reward, paper A.4): `w = [1 − Σλ_i, λ_1, …, λ_K]`.
///
/// Weights may also change from step to step: a list with one entry per inference step
/// ([`Realigner::per_step`], [`Realigner::two_model_per_step`]), whose length must equal the
/// number of steps of the run ([`Error::WeightScheduleLength`] otherwise, raised by
/// [`crate::Sampler::new`]), or a function of `(step, steps)` ([`Realigner::from_schedule`],
/// [`Realigner::two_model_schedule`]) that fits any number of steps.
/// [`crate::Sampler::new`] fixes the schedule for its scheduler's steps with
/// [`Realigner::for_steps`].
///
/// PartialEq compares the weights (a function schedule equals only its own clones).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use deradiff_core::{Posterior, Realigner};
/// let dev = Device::Cpu;
/// let reference = Posterior::scalar(Tensor::new(&[0.0f32, 1.0], &dev)?, 0.5);
/// let aligned = Posterior::scalar(Tensor::new(&[2.0f32, 3.0], &dev)?, 0.5);
/// let fused = Realigner::two_model(0.25)?.fuse(&[reference, aligned], 0)?;
/// assert_eq!(fused.mean.to_vec1::<f32>()?, vec![0.5, 1.5]);
/// assert_eq!(fused.variance.as_scalar(), Some(0.5));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Realigner {
    weights: Weights,
    policy: PrecisionPolicy,
}

/// Checks one weight vector; `what` prefixes the message (empty, or `"step 3: "`).
fn validate_weights(w: &[f64], what: &str) -> Result<()> {
    if w.is_empty() {
        return Err(Error::InvalidWeights(format!("{what}no weights; give one weight per model")));
    }
    if let Some((i, x)) = w.iter().enumerate().find(|(_, x)| !x.is_finite()) {
        return Err(Error::InvalidWeights(format!("{what}weight {i} is {x}; weights must be finite numbers")));
    }
    let sum: f64 = w.iter().sum();
    let scale: f64 = w.iter().map(|x| x.abs()).sum::<f64>().max(1.0);
    if (sum - 1.0).abs() > 1e-9 * scale {
        return Err(Error::InvalidWeights(format!(
            "{what}the weights {w:?} sum to {sum}, not 1; the geometric mixture needs Σ w = 1 \
             (use Realigner::two_model or multi_reward to get the reference weight right)"
        )));
    }
    Ok(())
}

fn validate_lambda(lambda: f64) -> Result<()> {
    if !lambda.is_finite() {
        return Err(Error::InvalidWeights(format!("λ = {lambda}; λ must be a finite number")));
    }
    Ok(())
}

impl Realigner {
    /// Fixed weights, one per model, summing to one (within 1e-9 relative).
    pub fn new(weights: Vec<f64>) -> Result<Self> {
        validate_weights(&weights, "")?;
        Ok(Self { weights: Weights::Constant(weights), policy: PrecisionPolicy::Error })
    }

    /// Reference and one aligned model: weights `[1 − λ, λ]` (paper eq. 7). λ = 0 is the
    /// reference, λ = 1 the aligned model, λ > 1 extrapolates toward smaller β.
    pub fn two_model(lambda: f64) -> Result<Self> {
        validate_lambda(lambda)?;
        Self::new(vec![1.0 - lambda, lambda])
    }

    /// Reference and K aligned models: weights `[1 − Σλ_i, λ_1, …, λ_K]` (paper A.4, eqs. 34–35).
    pub fn multi_reward(lambdas: &[f64]) -> Result<Self> {
        if lambdas.is_empty() {
            return Err(Error::InvalidWeights("multi_reward needs at least one λ".into()));
        }
        for &l in lambdas {
            validate_lambda(l)?;
        }
        let mut w = Vec::with_capacity(lambdas.len() + 1);
        w.push(1.0 - lambdas.iter().sum::<f64>());
        w.extend_from_slice(lambdas);
        Self::new(w)
    }

    /// A weight vector per inference step (`weights[step]`), each summing to one. The run must
    /// have exactly `weights.len()` steps ([`Realigner::for_steps`]).
    pub fn per_step(weights: Vec<Vec<f64>>) -> Result<Self> {
        let k = weights.first().map(Vec::len).unwrap_or(0);
        if weights.is_empty() {
            return Err(Error::InvalidWeights("per_step: no steps given".into()));
        }
        for (s, w) in weights.iter().enumerate() {
            if w.len() != k {
                return Err(Error::InvalidWeights(format!(
                    "per_step: step {s} has {} weights but step 0 has {k}",
                    w.len()
                )));
            }
            validate_weights(w, &format!("step {s}: "))?;
        }
        Ok(Self { weights: Weights::PerStep(weights), policy: PrecisionPolicy::Error })
    }

    /// Two models with a λ per inference step (`lambdas[step]`), e.g. to realign only late steps.
    /// The run must have exactly `lambdas.len()` steps.
    pub fn two_model_per_step(lambdas: &[f64]) -> Result<Self> {
        for &l in lambdas {
            validate_lambda(l)?;
        }
        Self::per_step(lambdas.iter().map(|&l| vec![1.0 - l, l]).collect())
    }

    /// Weights computed per step by `schedule(step, steps)` for `num_models` models, `steps`
    /// being the number of inference steps of the run: one realigner for any step count.
    ///
    /// The function is evaluated (and every result validated like [`Realigner::new`]'s weights,
    /// with `num_models` entries) by [`Realigner::for_steps`], which [`crate::Sampler::new`]
    /// calls; until then [`Realigner::weights`] and [`Realigner::fuse`] are errors.
    ///
    /// ```
    /// use deradiff_core::Realigner;
    /// // Reference only for the first half of the steps, then [0.5, 0.5].
    /// let r = Realigner::from_schedule(2, |step, steps| {
    ///     if 2 * step < steps { vec![1.0, 0.0] } else { vec![0.5, 0.5] }
    /// })?
    /// .for_steps(4)?;
    /// assert_eq!(r.weights(1)?, &[1.0, 0.0]);
    /// assert_eq!(r.weights(2)?, &[0.5, 0.5]);
    /// # Ok::<(), deradiff_core::Error>(())
    /// ```
    pub fn from_schedule<F>(num_models: usize, schedule: F) -> Result<Self>
    where
        F: Fn(usize, usize) -> Vec<f64> + Send + Sync + 'static,
    {
        if num_models == 0 {
            return Err(Error::InvalidWeights("from_schedule: no models; give one weight per model".into()));
        }
        Ok(Self { weights: Weights::Schedule { num_models, f: Arc::new(schedule) }, policy: PrecisionPolicy::Error })
    }

    /// Two models with `λ = lambda(step, steps)`, weights `[1 − λ, λ]` (see
    /// [`Realigner::from_schedule`]).
    ///
    /// ```
    /// use deradiff_core::Realigner;
    /// // λ ramps from 0 to 1 over the run, whatever its length.
    /// let r = Realigner::two_model_schedule(|step, steps| step as f64 / (steps - 1).max(1) as f64);
    /// assert_eq!(r.for_steps(5)?.weights(4)?, &[0.0, 1.0]);
    /// assert_eq!(r.for_steps(3)?.weights(1)?, &[0.5, 0.5]);
    /// # Ok::<(), deradiff_core::Error>(())
    /// ```
    pub fn two_model_schedule<F>(lambda: F) -> Self
    where
        F: Fn(usize, usize) -> f64 + Send + Sync + 'static,
    {
        let f: WeightFn = Arc::new(move |step, steps| {
            let l = lambda(step, steps);
            vec![1.0 - l, l]
        });
        Self { weights: Weights::Schedule { num_models: 2, f }, policy: PrecisionPolicy::Error }
    }

    /// This realigner fixed for a run of `num_steps` inference steps (what
    /// [`crate::Sampler::new`] does with its scheduler's step count):
    /// * constant weights: unchanged;
    /// * a per-step list: unchanged if it has exactly `num_steps` entries, else
    ///   [`Error::WeightScheduleLength`] (a longer list is not silently cut);
    /// * a function schedule: evaluated at `(step, num_steps)` for every step into a per-step
    ///   list; a result that is not finite, does not sum to one or has the wrong length is
    ///   [`Error::InvalidWeights`] naming the step.
    ///
    /// The policy is kept.
    pub fn for_steps(&self, num_steps: usize) -> Result<Self> {
        let weights = match &self.weights {
            Weights::Constant(_) => return Ok(self.clone()),
            Weights::PerStep(ws) if ws.len() == num_steps => return Ok(self.clone()),
            Weights::PerStep(ws) => {
                return Err(Error::WeightScheduleLength { schedule_steps: ws.len(), num_steps });
            }
            Weights::Schedule { num_models, f } => {
                if num_steps == 0 {
                    return Err(Error::InvalidArgument("a run needs at least one inference step".into()));
                }
                let mut ws = Vec::with_capacity(num_steps);
                for step in 0..num_steps {
                    let w = f(step, num_steps);
                    if w.len() != *num_models {
                        return Err(Error::InvalidWeights(format!(
                            "the weight schedule gave {} weights at step {step} of {num_steps}, \
                             but it was declared for {num_models} models",
                            w.len()
                        )));
                    }
                    validate_weights(&w, &format!("weight schedule at step {step} of {num_steps}: "))?;
                    ws.push(w);
                }
                Weights::PerStep(ws)
            }
        };
        Ok(Self { weights, policy: self.policy })
    }

    /// The number of steps of a per-step weight list; `None` for constant weights and for a
    /// function schedule (which fit any number of steps).
    pub fn schedule_len(&self) -> Option<usize> {
        match &self.weights {
            Weights::PerStep(ws) => Some(ws.len()),
            Weights::Constant(_) | Weights::Schedule { .. } => None,
        }
    }

    /// Chooses what happens where the fused Gaussian does not exist (default: an error).
    pub fn with_policy(mut self, policy: PrecisionPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The policy in force.
    pub fn policy(&self) -> PrecisionPolicy {
        self.policy
    }

    /// Number of models this realigner expects.
    pub fn num_models(&self) -> usize {
        match &self.weights {
            Weights::Constant(w) => w.len(),
            Weights::PerStep(ws) => ws[0].len(),
            Weights::Schedule { num_models, .. } => *num_models,
        }
    }

    /// The weights used at `step`. Errors past the end of a per-step schedule, and for a
    /// function schedule not yet fixed with [`Realigner::for_steps`].
    pub fn weights(&self, step: usize) -> Result<&[f64]> {
        match &self.weights {
            Weights::Constant(w) => Ok(w),
            Weights::PerStep(ws) => ws.get(step).map(Vec::as_slice).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "the realigner's weight schedule has {} steps; step {step} has no weights",
                    ws.len()
                ))
            }),
            Weights::Schedule { .. } => Err(Error::InvalidArgument(
                "this realigner's weights are a function of (step, steps): fix the number of steps \
                 with Realigner::for_steps(num_steps) first (Sampler::new does)"
                    .into(),
            )),
        }
    }

    /// Fuses the posteriors of step `step` (one per model, in weight order).
    ///
    /// Errors (never NaN/Inf) for: a count that differs from the weights; means of different
    /// shape, dtype or device; a diagonal variance of the wrong shape; a negative or non-finite
    /// variance; a zero variance beside a positive one or a non-positive fused precision (unless
    /// the policy says otherwise); a result that overflows.
    pub fn fuse(&self, posteriors: &[Posterior], step: usize) -> Result<Posterior> {
        let weights = self.weights(step)?;
        if posteriors.is_empty() {
            return Err(Error::NoModels);
        }
        if posteriors.len() != weights.len() {
            return Err(Error::WeightCountMismatch { weights: weights.len(), posteriors: posteriors.len() });
        }
        check_posteriors(posteriors)?;
        let scalars: Option<Vec<f64>> = posteriors.iter().map(|p| p.variance.as_scalar()).collect();
        match scalars {
            Some(vars) => self.fuse_scalar(weights, posteriors, &vars, step),
            None => self.fuse_diagonal(weights, posteriors, step),
        }
    }

    fn fuse_scalar(&self, weights: &[f64], posteriors: &[Posterior], vars: &[f64], step: usize) -> Result<Posterior> {
        let plan = FusionPlan::new(weights, vars, self.policy).map_err(|f| failure(f, step, 0))?;
        let variance = plan.variance();
        let terms: Vec<(f64, &Tensor)> = weights
            .iter()
            .zip(vars)
            .zip(posteriors)
            .filter(|((&w, _), _)| w != 0.0)
            .map(|((&w, &v), p)| (plan.coefficient(w, v), &p.mean))
            .collect();
        if let [(c, mean)] = terms.as_slice() {
            if *c == 1.0 {
                return Ok(Posterior::scalar((*mean).clone(), variance));
            }
        }
        let (mean, bad) = crate::ops::linear_combination(&terms, true)?;
        if let Some(element) = bad {
            return Err(Error::NonFiniteFusion { step, element });
        }
        Ok(Posterior::scalar(mean, variance))
    }

    fn fuse_diagonal(&self, weights: &[f64], posteriors: &[Posterior], step: usize) -> Result<Posterior> {
        let first = &posteriors[0].mean;
        let (shape, dtype, device) = (first.shape().clone(), first.dtype(), first.device().clone());
        let n = first.elem_count();
        let to_vec = |t: &Tensor| -> Result<Vec<f64>> {
            Ok(t.to_device(&Device::Cpu)?.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?)
        };
        let means: Vec<Vec<f64>> = posteriors.iter().map(|p| to_vec(&p.mean)).collect::<Result<_>>()?;
        enum Var {
            Scalar(f64),
            Diag(Vec<f64>),
        }
        let variances: Vec<Var> = posteriors
            .iter()
            .map(|p| {
                Ok(match &p.variance {
                    Variance::Scalar(v) => Var::Scalar(*v),
                    Variance::Diagonal(t) => Var::Diag(to_vec(t)?),
                })
            })
            .collect::<Result<_>>()?;
        let k = weights.len();
        let mut v = vec![0.0f64; k];
        let mut out_mean = Vec::with_capacity(n);
        let mut out_var = Vec::with_capacity(n);
        for j in 0..n {
            for (slot, var) in v.iter_mut().zip(&variances) {
                *slot = match var {
                    Var::Scalar(s) => *s,
                    Var::Diag(d) => d[j],
                };
            }
            let plan = FusionPlan::new(weights, &v, self.policy).map_err(|f| failure(f, step, j))?;
            let mut m = 0.0;
            for i in 0..k {
                if weights[i] != 0.0 {
                    m += plan.coefficient(weights[i], v[i]) * means[i][j];
                }
            }
            let var = plan.variance();
            if !m.is_finite() || !var.is_finite() {
                return Err(Error::NonFiniteFusion { step, element: j });
            }
            out_mean.push(m);
            out_var.push(var);
        }
        let back = |data: Vec<f64>| -> Result<Tensor> {
            Ok(Tensor::from_vec(data, shape.clone(), &Device::Cpu)?.to_dtype(dtype)?.to_device(&device)?)
        };
        Ok(Posterior { mean: back(out_mean)?, variance: Variance::Diagonal(back(out_var)?) })
    }
}

fn failure(f: FusionFailure, step: usize, element: usize) -> Error {
    match f {
        FusionFailure::InvalidVariance => {
            Error::InvalidVariance { step, detail: format!("element {element} has a negative or non-finite variance") }
        }
        FusionFailure::NonPositivePrecision => Error::NonPositivePrecision { step, element },
        FusionFailure::ZeroVarianceConflict => Error::ZeroVarianceConflict { step, element },
        FusionFailure::NonFinite => Error::NonFiniteFusion { step, element },
        FusionFailure::LengthMismatch => Error::InvalidArgument("weights and variances differ in length".into()),
    }
}

fn check_posteriors(posteriors: &[Posterior]) -> Result<()> {
    let first = &posteriors[0].mean;
    for (i, p) in posteriors.iter().enumerate() {
        let m = &p.mean;
        if m.shape() != first.shape() {
            return Err(Error::ShapeMismatch {
                context: format!("posterior mean of model {i} vs model 0"),
                expected: first.shape().clone(),
                got: m.shape().clone(),
            });
        }
        if m.dtype() != first.dtype() {
            return Err(Error::DTypeMismatch {
                context: format!("posterior mean of model {i} vs model 0"),
                expected: first.dtype(),
                got: m.dtype(),
            });
        }
        if !m.device().same_device(first.device()) {
            return Err(Error::DeviceMismatch {
                context: format!("posterior mean of model {i} vs model 0"),
                expected: first.device().location(),
                got: m.device().location(),
            });
        }
        if let Variance::Diagonal(v) = &p.variance {
            if v.shape() != m.shape() {
                return Err(Error::ShapeMismatch {
                    context: format!("diagonal variance of model {i} vs its mean"),
                    expected: m.shape().clone(),
                    got: v.shape().clone(),
                });
            }
            if !v.device().same_device(m.device()) {
                return Err(Error::DeviceMismatch {
                    context: format!("diagonal variance of model {i} vs its mean"),
                    expected: m.device().location(),
                    got: v.device().location(),
                });
            }
        }
    }
    Ok(())
}
