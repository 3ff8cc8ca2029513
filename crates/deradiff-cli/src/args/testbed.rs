//! The analytic testbed of `sweep` and `tune`: the built-in 2-D Gaussian mixture, its exact
//! reference and anchor models, the proxy reward and the "true" reward.

use deradiff_analytic::{default_training, demo_linear_reward, demo_mixture, demo_quadratic_reward};
use deradiff_core::{PredictionType, SchedulerKind};
use deradiff_rewards::MAX_PROMPTS;
use deradiff_tune::{AnalyticModel, AnalyticReward, AnalyticSetup, ManifoldPenalty, TrueReward};

use crate::args::SamplerArgs;
use crate::checks::{check_anchor_beta, check_at_least_one};
use crate::error::{CliError, Context, Result};

/// The built-in reward of the analytic testbed (`--reward`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum RewardArg {
    /// r(x) = x1 + 0.5 x2.
    Linear,
    /// r(x) = x1 + 0.5 x2 − ½(0.5 x1² + 0.5 x2²).
    Quadratic,
}

impl RewardArg {
    /// The reward on the testbed's 2-D data.
    pub(crate) fn reward(self) -> deradiff_analytic::Reward {
        match self {
            RewardArg::Linear => demo_linear_reward(),
            RewardArg::Quadratic => demo_quadratic_reward(),
        }
    }
}

/// The options of the analytic testbed (ignored with `--reference`).
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Analytic testbed")]
pub(crate) struct TestbedArgs {
    /// Mixture components of the built-in 2-D data.
    #[arg(long, default_value_t = 3)]
    components: usize,
    /// The proxy reward the anchor model was aligned with.
    #[arg(long, value_enum, default_value = "linear")]
    reward: RewardArg,
    /// KL strength β of the anchor (the one aligned model).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub(crate) anchor_beta: f64,
    /// Weight κ of the "true" reward's penalty for leaving the data: r_true = r_proxy + κ log p_ref.
    #[arg(long, default_value_t = 2.5, allow_negative_numbers = true)]
    penalty: f64,
    /// Number of prompts (independent noise seeds 0..N).
    #[arg(long, default_value_t = 4)]
    pub(crate) prompts: u64,
}

impl TestbedArgs {
    /// The model, the proxy reward and the true reward, sampled with `sampler` (default DDPM)
    /// in `steps` steps.
    pub(crate) fn build(
        &self,
        sampler: &SamplerArgs,
        steps: usize,
    ) -> Result<(AnalyticModel, AnalyticReward, TrueReward)> {
        check_anchor_beta(self.anchor_beta)?;
        check_at_least_one("--prompts", self.prompts)?;
        if self.prompts > MAX_PROMPTS as u64 {
            return Err(CliError::usage(format!(
                "--prompts {} is more than {MAX_PROMPTS}, the most one sweep takes",
                self.prompts
            )));
        }
        let mixture = demo_mixture(self.components).usage_context(format!("--components {}", self.components))?;
        let proxy = self.reward.reward();
        let (scheduler, options, training) =
            sampler.for_testbed(SchedulerKind::Ddpm, PredictionType::Epsilon, default_training)?;
        let mut setup = AnalyticSetup::new(mixture.clone(), proxy.clone(), self.anchor_beta);
        setup.scheduler = scheduler;
        setup.scheduler_options = options;
        setup.steps = steps;
        setup.training = Some(training);
        let model = AnalyticModel::new(setup).usage_context("the analytic testbed's options do not fit together")?;
        let truth = TrueReward::new("true", proxy.clone(), ManifoldPenalty::ReferenceLogDensity(mixture), self.penalty)
            .usage_context(format!("--penalty {}", self.penalty))?;
        Ok((model, AnalyticReward::new("proxy", proxy), truth))
    }
}
