//! Bayesian optimisation of λ (paper A.5, Algorithm 2).
//!
//! 1. **Initial design**: `initial` points in `[lower, upper]` (uniform draws as in Algorithm 2,
//!    a Latin-hypercube stratification, or an even grid), evaluated in one call of the
//!    [`Objective`] (a [`SweepObjective`](crate::SweepObjective) stacks them in one batch).
//! 2. Until `budget` evaluations: fit the [`GaussianProcess`] surrogate (RBF kernel + noise,
//!    hyper-parameters by marginal likelihood), maximise the acquisition over the range by a
//!    1-D line search (a grid of `candidates` points, then golden-section refinement around the
//!    best), evaluate the objective there.
//! 3. Return λ* (the best observed point, Algorithm 2 line 16, or the maximiser of the final
//!    GP mean), its value and the history.
//!
//! Acquisitions (eq. 43 and the UCB of A.5.2), on standardised values:
//! * Expected Improvement `EI = (μ − f⁺ − ξ) Φ(z) + σ φ(z)`, `z = (μ − f⁺ − ξ)/σ`, with `f⁺`
//!   the best observation;
//! * UCB `μ + β_n σ` with `β_n = √(2 log(n² π² / (6δ)))` (n = evaluations so far), or a fixed
//!   `κ`.
//!
//! Where the acquisition vanishes everywhere (nothing left to improve within the model) the
//! next point is the one of largest posterior SD, so that the budget still explores.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::gp::{GaussianProcess, GpBounds, GpHyper};

/// A function of λ to maximise, evaluated on several λ at once (an implementation may batch
/// them). Values must be finite.
pub trait Objective {
    /// One value per λ, in order.
    fn evaluate(&mut self, lambdas: &[f64]) -> Result<Vec<f64>>;
}

impl<F: FnMut(&[f64]) -> Result<Vec<f64>>> Objective for F {
    fn evaluate(&mut self, lambdas: &[f64]) -> Result<Vec<f64>> {
        self(lambdas)
    }
}

/// How the next λ is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Acquisition {
    /// Expected Improvement over the best observation, with exploration margin `xi ≥ 0` (in
    /// units of the observations' SD).
    ExpectedImprovement {
        /// The margin ξ.
        xi: f64,
    },
    /// Upper confidence bound with the schedule `β_n = √(2 log(n² π² / (6δ)))`, `δ ∈ (0, 1)`.
    UpperConfidenceBound {
        /// The confidence parameter δ.
        delta: f64,
    },
    /// Upper confidence bound `μ + κσ` with a fixed `κ ≥ 0`.
    UcbFixed {
        /// The multiplier κ.
        kappa: f64,
    },
}

impl Default for Acquisition {
    fn default() -> Self {
        Acquisition::ExpectedImprovement { xi: 0.0 }
    }
}

/// Where the first points go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum InitialDesign {
    /// Independent uniform draws (Algorithm 2, line 4).
    Uniform,
    /// One uniform draw in each of `initial` equal strata (no two points crowd together).
    #[default]
    LatinHypercube,
    /// An even grid including both ends (the midpoint for one point).
    Grid,
}

/// Which point is returned as λ*.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum Incumbent {
    /// The evaluated λ with the best value (Algorithm 2, line 16).
    #[default]
    BestObserved,
    /// The maximiser of the final GP posterior mean over the range.
    BestPredicted,
}

/// Settings of [`optimize`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BoConfig {
    /// Lower end of the λ range.
    pub lower: f64,
    /// Upper end of the λ range (> lower).
    pub upper: f64,
    /// Total number of objective evaluations, the initial design included (≥ 1).
    pub budget: usize,
    /// Size of the initial design (1 ≤ initial ≤ budget).
    pub initial: usize,
    /// Where the initial points go.
    pub design: InitialDesign,
    /// The acquisition function.
    pub acquisition: Acquisition,
    /// Seed of the initial design's draws.
    pub seed: u64,
    /// Grid points of the acquisition's line search (≥ 3).
    pub candidates: usize,
    /// What is returned as λ*.
    pub incumbent: Incumbent,
    /// Bounds of the hyper-parameter fit.
    pub bounds: GpBounds,
    /// Fixed hyper-parameters instead of fitting them (`None`: fit by marginal likelihood).
    pub hyper: Option<GpHyper>,
    /// Convergence tolerance, as a fraction of the range width: the search stops before the
    /// budget is spent when the acquisition proposes a λ within `xtol · (upper − lower)` of one
    /// already evaluated (with common random numbers it would only repeat a known value).
    /// 0 spends the whole budget (an exact repeat is then replaced by the point of largest
    /// posterior SD).
    pub xtol: f64,
}

impl Default for BoConfig {
    /// λ ∈ [0, 1] (paper A.5), budget 10, 3 Latin-hypercube points, EI, seed 0, 401 candidates,
    /// the best observed point as λ*, stop when proposals come within 10⁻³ of the range.
    fn default() -> Self {
        Self {
            lower: 0.0,
            upper: 1.0,
            budget: 10,
            initial: 3,
            design: InitialDesign::default(),
            acquisition: Acquisition::default(),
            seed: 0,
            candidates: 401,
            incumbent: Incumbent::default(),
            bounds: GpBounds::default(),
            hyper: None,
            xtol: 1e-3,
        }
    }
}

/// Most evaluations a Bayesian optimisation may spend.
pub const MAX_BUDGET: usize = 10_000;
/// Most points of a grid ([`linspace`], the acquisition's line-search candidates).
pub const MAX_GRID_POINTS: usize = 100_000;

impl BoConfig {
    /// Checks the range, budget, design size, acquisition parameters and candidate count.
    pub fn validate(&self) -> Result<()> {
        if !(self.lower.is_finite() && self.upper.is_finite() && self.lower < self.upper) {
            return Err(Error::InvalidRange { lower: self.lower, upper: self.upper });
        }
        if self.budget == 0 {
            return Err(Error::InvalidBudget("the budget is 0: give at least one evaluation".into()));
        }
        if self.budget > MAX_BUDGET {
            return Err(Error::InvalidBudget(format!(
                "the budget is {} evaluations; at most {MAX_BUDGET} are allowed (the GP's cost grows as the cube \
                 of the evaluations; the paper uses 10)",
                self.budget
            )));
        }
        if self.initial == 0 {
            return Err(Error::InvalidBudget("the initial design is empty: give at least one point".into()));
        }
        if self.initial > self.budget {
            return Err(Error::InvalidBudget(format!(
                "the initial design has {} points but the budget is {} evaluations",
                self.initial, self.budget
            )));
        }
        if !(self.xtol.is_finite() && (0.0..1.0).contains(&self.xtol)) {
            return Err(Error::InvalidArgument(format!("xtol is {}; it must lie in [0, 1)", self.xtol)));
        }
        if self.candidates < 3 || self.candidates > MAX_GRID_POINTS {
            return Err(Error::InvalidArgument(format!(
                "{} line-search candidates; give 3 to {MAX_GRID_POINTS}",
                self.candidates
            )));
        }
        match self.acquisition {
            Acquisition::ExpectedImprovement { xi } if !(xi.is_finite() && xi >= 0.0) => {
                return Err(Error::InvalidArgument(format!("EI's ξ is {xi}; it must be finite and ≥ 0")));
            }
            Acquisition::UpperConfidenceBound { delta } if !(delta > 0.0 && delta < 1.0) => {
                return Err(Error::InvalidArgument(format!("UCB's δ is {delta}; it must lie in (0, 1)")));
            }
            Acquisition::UcbFixed { kappa } if !(kappa.is_finite() && kappa >= 0.0) => {
                return Err(Error::InvalidArgument(format!("UCB's κ is {kappa}; it must be finite and ≥ 0")));
            }
            _ => {}
        }
        Ok(())
    }
}

/// Whether an evaluation belonged to the initial design or was chosen by the acquisition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum BoPhase {
    /// Initial design.
    Initial,
    /// Chosen by maximising the acquisition.
    Acquisition,
    /// Chosen as the point of largest posterior SD (the acquisition vanished).
    Exploration,
}

/// One evaluation of the objective.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BoEvaluation {
    /// 0-based evaluation number.
    pub index: usize,
    /// The λ evaluated.
    pub lambda: f64,
    /// The objective there.
    pub value: f64,
    /// How λ was chosen.
    pub phase: BoPhase,
    /// The acquisition value that chose it (standardised units), for acquisition steps.
    pub acquisition: Option<f64>,
    /// The best λ observed so far (this evaluation included).
    pub best_lambda: f64,
    /// The best value observed so far.
    pub best_value: f64,
}

/// The result of [`optimize`].
#[derive(Debug, Clone, Serialize)]
pub struct BoResult {
    /// λ* (see [`BoConfig::incumbent`]).
    pub lambda_star: f64,
    /// The objective at λ*: observed for [`Incumbent::BestObserved`], the GP mean for
    /// [`Incumbent::BestPredicted`].
    pub value_star: f64,
    /// The best observed point `(λ, value)`.
    pub best_observed: (f64, f64),
    /// The maximiser of the final GP mean and the mean there.
    pub best_predicted: (f64, f64),
    /// Every evaluation, in order.
    pub history: Vec<BoEvaluation>,
    /// The final surrogate's hyper-parameters.
    pub hyper: GpHyper,
    /// Whether the search stopped before the budget because it converged (see
    /// [`BoConfig::xtol`]).
    pub converged: bool,
    /// The settings used.
    pub config: BoConfig,
    /// The final surrogate, fitted on every evaluation.
    #[serde(skip)]
    pub gp: GaussianProcess,
}

impl BoResult {
    /// The result as pretty JSON (the GP itself is summarised by its hyper-parameters).
    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(self)?)
    }
}

/// The standard normal CDF.
pub fn normal_cdf(z: f64) -> f64 {
    0.5 * libm::erfc(-z / std::f64::consts::SQRT_2)
}

/// The standard normal density.
pub fn normal_pdf(z: f64) -> f64 {
    (-0.5 * z * z).exp() / (2.0 * std::f64::consts::PI).sqrt()
}

/// Expected Improvement `E[max(f − best − ξ, 0)]` for `f ~ N(mean, sd²)` (eq. 43).
pub fn expected_improvement(mean: f64, sd: f64, best: f64, xi: f64) -> f64 {
    let d = mean - best - xi;
    if sd <= 1e-300 {
        return d.max(0.0);
    }
    let z = d / sd;
    (d * normal_cdf(z) + sd * normal_pdf(z)).max(0.0)
}

/// `β_n = √(2 log(n² π² / (6δ)))` of the UCB schedule (0 where the log is negative).
pub fn ucb_beta(n: usize, delta: f64) -> f64 {
    let n = n.max(1) as f64;
    (2.0 * (n * n * std::f64::consts::PI.powi(2) / (6.0 * delta)).ln()).max(0.0).sqrt()
}

fn initial_design(config: &BoConfig) -> Vec<f64> {
    let (lo, hi, n) = (config.lower, config.upper, config.initial);
    let w = hi - lo;
    let mut rng = ChaCha20Rng::seed_from_u64(config.seed);
    match config.design {
        InitialDesign::Uniform => (0..n).map(|_| lo + w * rng.random::<f64>()).collect(),
        InitialDesign::LatinHypercube => (0..n).map(|i| lo + w * (i as f64 + rng.random::<f64>()) / n as f64).collect(),
        InitialDesign::Grid if n == 1 => vec![lo + 0.5 * w],
        InitialDesign::Grid => (0..n).map(|i| lo + w * i as f64 / (n - 1) as f64).collect(),
    }
}

/// Maximises `f` over `[lo, hi]`: a grid of `n` points, then golden-section search between the
/// neighbours of the best grid point.
pub(crate) fn line_search(f: &dyn Fn(f64) -> f64, lo: f64, hi: f64, n: usize) -> (f64, f64) {
    let at = |i: usize| lo + (hi - lo) * i as f64 / (n - 1) as f64;
    let (mut bi, mut bv) = (0usize, f64::NEG_INFINITY);
    for i in 0..n {
        let v = f(at(i));
        if v > bv {
            (bi, bv) = (i, v);
        }
    }
    let (mut a, mut b) = (at(bi.saturating_sub(1)), at((bi + 1).min(n - 1)));
    let g = (5f64.sqrt() - 1.0) / 2.0;
    let (mut c, mut d) = (b - g * (b - a), a + g * (b - a));
    let (mut fc, mut fd) = (f(c), f(d));
    for _ in 0..40 {
        if fc > fd {
            b = d;
            (d, fd) = (c, fc);
            c = b - g * (b - a);
            fc = f(c);
        } else {
            a = c;
            (c, fc) = (d, fd);
            d = a + g * (b - a);
            fd = f(d);
        }
    }
    let (x, v) = if fc > fd { (c, fc) } else { (d, fd) };
    if v > bv {
        (x, v)
    } else {
        (at(bi), bv)
    }
}

fn check_values(lambdas: &[f64], values: &[f64]) -> Result<()> {
    if values.len() != lambdas.len() {
        return Err(Error::InvalidArgument(format!(
            "the objective returned {} values for {} λ",
            values.len(),
            lambdas.len()
        )));
    }
    for (l, v) in lambdas.iter().zip(values) {
        if !v.is_finite() {
            return Err(Error::NonFiniteReward { reward: "objective".into(), value: *v, context: format!("λ = {l}") });
        }
    }
    Ok(())
}

fn fit(config: &BoConfig, lambdas: &[f64], values: &[f64]) -> Result<GaussianProcess> {
    match config.hyper {
        Some(h) => GaussianProcess::with_hyper(lambdas, values, config.lower, config.upper, h),
        None => GaussianProcess::fit(lambdas, values, config.lower, config.upper, &config.bounds),
    }
}

/// Bayesian optimisation of `objective` over λ (see the module docs); `progress` sees every
/// evaluation as it is made (an error there stops the search).
///
/// ```
/// use deradiff_tune::{optimize, BoConfig};
///
/// // A smooth objective with its maximum at λ = 0.62.
/// let mut objective = |ls: &[f64]| Ok(ls.iter().map(|l| -(l - 0.62f64).powi(2)).collect());
/// let result = optimize(&mut objective, &BoConfig::default(), &mut |_| Ok(()))?;
/// assert!((result.lambda_star - 0.62).abs() < 0.01);
/// // It stopped once the acquisition proposed a point it had already evaluated.
/// assert!(result.converged && result.history.len() < 10);
/// # Ok::<(), deradiff_tune::Error>(())
/// ```
pub fn optimize(
    objective: &mut dyn Objective,
    config: &BoConfig,
    progress: &mut dyn FnMut(&BoEvaluation) -> Result<()>,
) -> Result<BoResult> {
    config.validate()?;
    let (lo, hi) = (config.lower, config.upper);
    let mut lambdas: Vec<f64> = Vec::with_capacity(config.budget);
    let mut values: Vec<f64> = Vec::with_capacity(config.budget);
    let mut history: Vec<BoEvaluation> = Vec::with_capacity(config.budget);
    let mut best = (f64::NAN, f64::NEG_INFINITY);
    let mut record = |lambda: f64,
                      value: f64,
                      phase: BoPhase,
                      acquisition: Option<f64>,
                      history: &mut Vec<BoEvaluation>,
                      progress: &mut dyn FnMut(&BoEvaluation) -> Result<()>|
     -> Result<()> {
        if value > best.1 {
            best = (lambda, value);
        }
        let e = BoEvaluation {
            index: history.len(),
            lambda,
            value,
            phase,
            acquisition,
            best_lambda: best.0,
            best_value: best.1,
        };
        progress(&e)?;
        history.push(e);
        Ok(())
    };

    let design = initial_design(config);
    let first = objective.evaluate(&design)?;
    check_values(&design, &first)?;
    for (&l, &v) in design.iter().zip(&first) {
        lambdas.push(l);
        values.push(v);
        record(l, v, BoPhase::Initial, None, &mut history, progress)?;
    }

    let mut converged = false;
    while lambdas.len() < config.budget {
        let gp = fit(config, &lambdas, &values)?;
        let n = lambdas.len();
        let best_std = gp.standardise(values.iter().copied().fold(f64::NEG_INFINITY, f64::max));
        let acq = |l: f64| -> f64 {
            let (m, s) = gp.predict_standardised(l);
            match config.acquisition {
                Acquisition::ExpectedImprovement { xi } => expected_improvement(m, s, best_std, xi),
                Acquisition::UpperConfidenceBound { delta } => m + ucb_beta(n, delta) * s,
                Acquisition::UcbFixed { kappa } => m + kappa * s,
            }
        };
        let (mut next, a) = line_search(&acq, lo, hi, config.candidates);
        let width = hi - lo;
        let nearest = lambdas.iter().map(|&l| (l - next).abs()).fold(f64::INFINITY, f64::min);
        if config.xtol > 0.0 && nearest <= config.xtol * width {
            converged = true;
            break;
        }
        let duplicate = nearest <= 1e-9 * width;
        let vanished = matches!(config.acquisition, Acquisition::ExpectedImprovement { .. }) && a <= 1e-12;
        let (phase, acquisition) = if duplicate || vanished {
            let (x, _) = line_search(&|l: f64| gp.predict_standardised(l).1, lo, hi, config.candidates);
            next = x;
            (BoPhase::Exploration, None)
        } else {
            (BoPhase::Acquisition, Some(a))
        };
        let v = objective.evaluate(&[next])?;
        check_values(&[next], &v)?;
        lambdas.push(next);
        values.push(v[0]);
        record(next, v[0], phase, acquisition, &mut history, progress)?;
    }

    let gp = fit(config, &lambdas, &values)?;
    let (bp, _) = line_search(&|l: f64| gp.predict(l).0, lo, hi, config.candidates);
    let best_predicted = (bp, gp.predict(bp).0);
    let best_observed = best;
    let (lambda_star, value_star) = match config.incumbent {
        Incumbent::BestObserved => best_observed,
        Incumbent::BestPredicted => best_predicted,
    };
    Ok(BoResult {
        lambda_star,
        value_star,
        best_observed,
        best_predicted,
        history,
        hyper: gp.hyper(),
        converged,
        config: config.clone(),
        gp,
    })
}

/// The KL strength DeRaDiff emulates at `lambda` with an anchor aligned at `anchor_beta`:
/// `β_anchor / λ` (`+∞` for λ = 0, the reference). Errors for an anchor β that is not positive
/// and finite, or a λ that is negative or not finite.
///
/// ```
/// assert_eq!(deradiff_tune::equivalent_beta(500.0, 0.25)?, 2000.0);
/// assert_eq!(deradiff_tune::equivalent_beta(500.0, 0.0)?, f64::INFINITY);
/// # Ok::<(), deradiff_tune::Error>(())
/// ```
pub fn equivalent_beta(anchor_beta: f64, lambda: f64) -> Result<f64> {
    if !(anchor_beta.is_finite() && anchor_beta > 0.0) {
        return Err(Error::InvalidArgument(format!("the anchor β is {anchor_beta}; it must be positive and finite")));
    }
    if !(lambda.is_finite() && lambda >= 0.0) {
        return Err(Error::InvalidLambda(format!("λ = {lambda} has no equivalent β; it must be finite and ≥ 0")));
    }
    Ok(if lambda == 0.0 { f64::INFINITY } else { anchor_beta / lambda })
}

/// `n` evenly spaced λ from `lower` to `upper` inclusive (n ≥ 2; the midpoint for n = 1), for
/// dense grids and sweeps. Errors for a reversed or non-finite range or n = 0.
pub fn linspace(lower: f64, upper: f64, n: usize) -> Result<Vec<f64>> {
    if !(lower.is_finite() && upper.is_finite() && lower < upper) {
        return Err(Error::InvalidRange { lower, upper });
    }
    if n > MAX_GRID_POINTS {
        return Err(Error::InvalidArgument(format!("{n} grid points; at most {MAX_GRID_POINTS} are allowed")));
    }
    match n {
        0 => Err(Error::EmptyGrid),
        1 => Ok(vec![0.5 * (lower + upper)]),
        _ => Ok((0..n).map(|i| lower + (upper - lower) * i as f64 / (n - 1) as f64).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_search_finds_interior_and_boundary_maxima() {
        let (x, v) = line_search(&|l: f64| -(l - 0.3141).powi(2), 0.0, 1.0, 11);
        assert!((x - 0.3141).abs() < 1e-6 && v <= 0.0);
        let (x, _) = line_search(&|l: f64| l, 0.0, 1.0, 11);
        assert_eq!(x, 1.0);
        let (x, _) = line_search(&|l: f64| -l, -2.0, 1.0, 3);
        assert_eq!(x, -2.0);
    }

    #[test]
    fn initial_designs_stay_in_range_and_are_seeded() {
        for design in [InitialDesign::Uniform, InitialDesign::LatinHypercube, InitialDesign::Grid] {
            let config = BoConfig { lower: -1.0, upper: 3.0, initial: 5, design, seed: 4, ..BoConfig::default() };
            let a = initial_design(&config);
            assert_eq!(a.len(), 5);
            assert!(a.iter().all(|x| (-1.0..=3.0).contains(x)));
            assert_eq!(a, initial_design(&config));
            if design == InitialDesign::LatinHypercube {
                for (i, x) in a.iter().enumerate() {
                    assert!(*x >= -1.0 + 0.8 * i as f64 && *x <= -1.0 + 0.8 * (i + 1) as f64, "stratum {i}: {x}");
                }
            }
        }
        let one = BoConfig { initial: 1, design: InitialDesign::Grid, ..BoConfig::default() };
        assert_eq!(initial_design(&one), vec![0.5]);
    }

    #[test]
    fn acquisition_helpers() {
        assert_eq!(expected_improvement(1.0, 0.0, 0.5, 0.0), 0.5);
        assert_eq!(expected_improvement(0.0, 0.0, 0.5, 0.0), 0.0);
        // EI(μ = best, σ) = σ φ(0).
        assert!((expected_improvement(0.2, 2.0, 0.2, 0.0) - 2.0 * normal_pdf(0.0)).abs() < 1e-15);
        assert!(ucb_beta(10, 0.1) > ucb_beta(2, 0.1));
        assert!((ucb_beta(1, 0.1) - (2.0 * (std::f64::consts::PI.powi(2) / 0.6).ln()).sqrt()).abs() < 1e-12);
    }
}
