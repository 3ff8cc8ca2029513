//! The objective of λ search: the DeRaDiff realigned sampler's measured mean reward,
//! `Ĵ(λ) = mean over prompts and samples of R(x)`, `x` sampled with weights `[1 − λ, λ]`.
//!
//! Every λ of a prompt is sampled from the same noise (the prompt's seed): common random
//! numbers, so `Ĵ` is a smooth function of λ rather than a noisy one, and a Bayesian
//! optimiser or a dense grid compares λ values on equal terms. The λ of one call share the
//! batch dimension (one model call per step for all of them).

use std::collections::HashSet;

use deradiff_rewards::Reward;

use crate::bo::Objective;
use crate::error::{Error, Result};
use crate::model::{check_prompts, Prompt, SweepModel};
use crate::results::SweepRow;
use crate::sweep::{check_lambdas, compute_rows, NoSweepObserver};

/// [`Objective`] of a model, a reward and a prompt set (see the module docs).
///
/// ```
/// use deradiff_analytic::{demo_linear_reward, demo_mixture};
/// use deradiff_tune::*;
///
/// let mut setup = AnalyticSetup::new(demo_mixture(1)?, demo_linear_reward(), 1.0);
/// setup.steps = 10;
/// let model = AnalyticModel::new(setup)?;
/// let reward = AnalyticReward::new("proxy", demo_linear_reward());
/// let mut objective = SweepObjective::new(&model, &reward, Prompt::seeds([7]), 64)?;
/// let j = objective.evaluate(&[0.0, 1.0])?;
/// assert!(j[1] > j[0]);
/// assert_eq!(objective.evaluations(), 2);
/// # Ok::<(), deradiff_tune::Error>(())
/// ```
pub struct SweepObjective<'a> {
    model: &'a dyn SweepModel,
    reward: &'a dyn Reward,
    prompts: Vec<Prompt>,
    samples_per_prompt: usize,
    max_lambdas_per_batch: usize,
    evaluations: usize,
}

impl<'a> SweepObjective<'a> {
    /// The mean of `reward` over `samples_per_prompt` samples of each prompt.
    pub fn new(
        model: &'a dyn SweepModel,
        reward: &'a dyn Reward,
        prompts: Vec<Prompt>,
        samples_per_prompt: usize,
    ) -> Result<Self> {
        check_prompts(&prompts)?;
        if samples_per_prompt == 0 {
            return Err(Error::InvalidArgument("samples per prompt must be at least 1".into()));
        }
        Ok(Self { model, reward, prompts, samples_per_prompt, max_lambdas_per_batch: 0, evaluations: 0 })
    }

    /// Caps the number of λ stacked in one batch (0: no cap).
    pub fn with_max_lambdas_per_batch(mut self, max: usize) -> Self {
        self.max_lambdas_per_batch = max;
        self
    }

    /// Number of λ evaluated so far.
    pub fn evaluations(&self) -> usize {
        self.evaluations
    }

    /// The rows behind an evaluation (per prompt), for callers that want more than the mean.
    pub fn rows(&mut self, lambdas: &[f64]) -> Result<Vec<SweepRow>> {
        check_lambdas(lambdas)?;
        let mut rows = Vec::with_capacity(lambdas.len() * self.prompts.len());
        let mut on_row = |row: SweepRow, _: &mut dyn crate::sweep::SweepObserver| -> Result<()> {
            rows.push(row);
            Ok(())
        };
        compute_rows(
            self.model,
            &[self.reward],
            lambdas,
            &self.prompts,
            self.samples_per_prompt,
            (self.max_lambdas_per_batch, 1),
            false,
            None,
            &HashSet::new(),
            None,
            &mut NoSweepObserver,
            &mut on_row,
        )?;
        self.evaluations += lambdas.len();
        Ok(rows)
    }
}

impl Objective for SweepObjective<'_> {
    fn evaluate(&mut self, lambdas: &[f64]) -> Result<Vec<f64>> {
        let rows = self.rows(lambdas)?;
        let p = self.prompts.len() as f64;
        Ok(lambdas
            .iter()
            .map(|&l| rows.iter().filter(|r| r.lambda == l).map(|r| r.rewards[0].mean).sum::<f64>() / p)
            .collect())
    }
}
