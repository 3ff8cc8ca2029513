//! DPM-Solver++ (Lu et al. 2022), multistep, in its ODE (`dpmsolver++`, "DPM++ 2M") and SDE
//! (`sde-dpmsolver++`, "DPM++ 2M SDE") forms, as diffusers' `DPMSolverMultistepScheduler`.

use candle_core::Tensor;

use super::sigma_space::{check_record, compute_inputs, multistep_schedule, vp_alpha_sigma, vp_x0, MultistepLayout};
use super::state::{ModelStep, SharedUpdate, StepContext};
use super::{check_step, Scheduler};
use crate::config::{SchedulerConfig, TrainingConfig};
use crate::error::{Error, Result};
use crate::ops::linear_combination;
use crate::posterior::Posterior;
use crate::schedule::{NoiseSchedule, PredictionType, TimestepSpacing};
use crate::sigmas::{FinalSigma, SigmaSpacing};

/// diffusers' `algorithm_type` (the data-prediction forms; the deprecated noise-prediction
/// `dpmsolver` / `sde-dpmsolver` are refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DpmAlgorithm {
    /// `dpmsolver++`: the probability-flow ODE, deterministic ("DPM++ 2M").
    #[default]
    DpmSolverPlusPlus,
    /// `sde-dpmsolver++`: the reverse SDE, a Gaussian step ("DPM++ 2M SDE").
    SdeDpmSolverPlusPlus,
}

impl DpmAlgorithm {
    /// Parses diffusers' name (`deis` is read as `dpmsolver++`, as diffusers does).
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "dpmsolver++" | "deis" => Ok(Self::DpmSolverPlusPlus),
            "sde-dpmsolver++" => Ok(Self::SdeDpmSolverPlusPlus),
            "dpmsolver" | "sde-dpmsolver" => Err(Error::Unsupported(format!(
                "algorithm_type '{name}' (deprecated in diffusers) is not implemented; use 'dpmsolver++' or \
                 'sde-dpmsolver++'"
            ))),
            other => Err(Error::InvalidConfig(format!(
                "algorithm_type '{other}' is not one of 'dpmsolver++', 'sde-dpmsolver++'"
            ))),
        }
    }

    /// diffusers' name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::DpmSolverPlusPlus => "dpmsolver++",
            Self::SdeDpmSolverPlusPlus => "sde-dpmsolver++",
        }
    }
}

/// diffusers' `solver_type` of the second-order step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DpmSolverType {
    /// `midpoint` (diffusers' default).
    #[default]
    Midpoint,
    /// `heun`.
    Heun,
}

impl DpmSolverType {
    /// Parses diffusers' name (`logrho`, `bh1`, `bh2` are read as `midpoint`, as diffusers does).
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "midpoint" | "logrho" | "bh1" | "bh2" => Ok(Self::Midpoint),
            "heun" => Ok(Self::Heun),
            other => Err(Error::InvalidConfig(format!("solver_type '{other}' is not one of 'midpoint', 'heun'"))),
        }
    }
}

/// Configuration of [`DpmSolverMultistep`]; [`Default`] is diffusers'
/// `DPMSolverMultistepScheduler()` (DPM++ 2M, `linspace` spacing, linear betas 1e-4 → 0.02).
#[derive(Debug, Clone, PartialEq)]
pub struct DpmSolverConfig {
    /// Training schedule and step placement (`rescale_betas_zero_snr` included).
    pub training: TrainingConfig,
    /// `solver_order`: 1, 2 or 3.
    pub solver_order: usize,
    /// `algorithm_type`.
    pub algorithm: DpmAlgorithm,
    /// `solver_type`.
    pub solver_type: DpmSolverType,
    /// `lower_order_final`: first- and second-order last steps for runs under 15 steps.
    pub lower_order_final: bool,
    /// `euler_at_final`: a first-order last step.
    pub euler_at_final: bool,
    /// `use_karras_sigmas` / `use_exponential_sigmas` / `use_beta_sigmas`.
    pub sigma_spacing: SigmaSpacing,
    /// `use_lu_lambdas`: σ uniform in `log σ` between the training extremes (Karras wins if both
    /// are set, as in diffusers).
    pub use_lu_lambdas: bool,
    /// `final_sigmas_type`.
    pub final_sigma: FinalSigma,
    /// `lambda_min_clipped` (−∞: no cut).
    pub lambda_min_clipped: f64,
}

impl Default for DpmSolverConfig {
    fn default() -> Self {
        Self {
            training: TrainingConfig::diffusers_default(TimestepSpacing::Linspace),
            solver_order: 2,
            algorithm: DpmAlgorithm::DpmSolverPlusPlus,
            solver_type: DpmSolverType::Midpoint,
            lower_order_final: true,
            euler_at_final: false,
            sigma_spacing: SigmaSpacing::Timesteps,
            use_lu_lambdas: false,
            final_sigma: FinalSigma::Zero,
            lambda_min_clipped: f64::NEG_INFINITY,
        }
    }
}

impl DpmSolverConfig {
    /// From a checkpoint's `scheduler_config.json`, with `DPMSolverMultistepScheduler`'s defaults
    /// for missing fields.
    pub fn from_diffusers(config: &SchedulerConfig) -> Result<Self> {
        let d = Self::default();
        if matches!(config.variance_type.as_deref(), Some("learned" | "learned_range")) {
            return Err(Error::Unsupported(
                "DPM-Solver with a learned variance (variance_type 'learned' / 'learned_range') is not implemented"
                    .into(),
            ));
        }
        let lambda_min_clipped = config.lambda_min_clipped.unwrap_or(d.lambda_min_clipped);
        if lambda_min_clipped.is_nan() || lambda_min_clipped == f64::INFINITY {
            return Err(Error::InvalidConfig(format!("lambda_min_clipped is {lambda_min_clipped}")));
        }
        Ok(Self {
            training: config.training(&d.training)?,
            solver_order: config.order(d.solver_order)?,
            algorithm: config.algorithm_type.as_deref().map_or(Ok(d.algorithm), DpmAlgorithm::from_name)?,
            solver_type: config.solver_type.as_deref().map_or(Ok(d.solver_type), DpmSolverType::from_name)?,
            lower_order_final: config.lower_order_final.unwrap_or(d.lower_order_final),
            euler_at_final: config.euler_at_final.unwrap_or(d.euler_at_final),
            sigma_spacing: config.sigma_spacing()?,
            use_lu_lambdas: config.use_lu_lambdas.unwrap_or(d.use_lu_lambdas),
            final_sigma: config.final_sigma()?,
            lambda_min_clipped,
        })
    }
}

/// DPM-Solver++ multistep: each step is affine in the latent and in the model's clean-sample
/// predictions `x̂₀` of the last `solver_order` steps (diffusers' formulas; `docs/math.md` §7).
/// The ODE form is deterministic (variance 0); the SDE form adds `σ_t² (1 − e^{−2h})`.
///
/// Each model's `x̂₀` history is kept by a [`crate::SolverState`]; the timesteps and σ are
/// diffusers' float32 values, the step's arithmetic exact f64 from them.
#[derive(Debug, Clone)]
pub struct DpmSolverMultistep {
    config: DpmSolverConfig,
    schedule: NoiseSchedule,
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
}

/// Coefficients of a step over `[x, m0, m1, m2]` (the latent and the clean-sample predictions
/// of this and the two previous steps) and the step's standard deviation.
struct StepCoefficients {
    terms: [f64; 4],
    std: f64,
}

impl DpmSolverMultistep {
    /// A DPM-Solver++ sampler with `num_inference_steps` steps.
    pub fn new(config: DpmSolverConfig, num_inference_steps: usize) -> Result<Self> {
        if !(1..=3).contains(&config.solver_order) {
            return Err(Error::InvalidConfig(format!("solver_order must be 1, 2 or 3, got {}", config.solver_order)));
        }
        let schedule = NoiseSchedule::from_training(&config.training)?;
        let layout = MultistepLayout {
            spacing: config.sigma_spacing,
            lu_lambdas: config.use_lu_lambdas,
            sigma_min: None,
            sigma_max: None,
            final_sigma: config.final_sigma,
            lambda_min_clipped: config.lambda_min_clipped,
            unipc: false,
        };
        let s = multistep_schedule(&config.training, num_inference_steps, &layout)?;
        Ok(Self { config, schedule, timesteps: s.timesteps, sigmas: s.sigmas })
    }

    /// The configuration.
    pub fn config(&self) -> &DpmSolverConfig {
        &self.config
    }

    /// The order of `step`'s update (lower at the start, and at the end as diffusers'
    /// `lower_order_final`, `euler_at_final` and `final_sigmas_type = zero` say).
    pub fn order_at(&self, step: usize) -> usize {
        let (c, n) = (&self.config, self.timesteps.len());
        let lower_final =
            step + 1 == n && (c.euler_at_final || (c.lower_order_final && n < 15) || c.final_sigma == FinalSigma::Zero);
        let lower_second = step + 2 == n && c.lower_order_final && n < 15;
        let warm = step.min(c.solver_order);
        if c.solver_order == 1 || warm < 1 || lower_final {
            1
        } else if c.solver_order == 2 || warm < 2 || lower_second {
            2
        } else {
            3
        }
    }

    fn coefficients(&self, step: usize, order: usize) -> StepCoefficients {
        let s = &self.sigmas;
        let (sigma_s0, sigma_t) = (s[step], s[step + 1]);
        let (_, vp_s0) = vp_alpha_sigma(sigma_s0);
        let (alpha_t, vp_t) = vp_alpha_sigma(sigma_t);
        let sde = self.config.algorithm == DpmAlgorithm::SdeDpmSolverPlusPlus;
        if sigma_t == 0.0 {
            // h = ∞: every form returns D0 = x̂₀ (only first-order steps reach σ = 0).
            return StepCoefficients { terms: [0.0, 1.0, 0.0, 0.0], std: 0.0 };
        }
        // λ = log α − log σ_VP = −log σ, so h = λ_t − λ_s0 = log(σ_s0 / σ_t).
        let h = (sigma_s0 / sigma_t).ln();
        let (x_coef, phi, std) = if sde {
            // e^{−h} σ_t/σ_s0, 1 − e^{−2h}
            let one_minus = -(-2.0 * h).exp_m1();
            (vp_t / vp_s0 * (-h).exp(), one_minus, vp_t * one_minus.sqrt())
        } else {
            // σ_t/σ_s0, −(e^{−h} − 1)
            (vp_t / vp_s0, -(-h).exp_m1(), 0.0)
        };
        // D0 coefficient: α_t (1 − e^{−h}) for the ODE, α_t (1 − e^{−2h}) for the SDE.
        let d0 = alpha_t * phi;
        // The D1 coefficient (midpoint: half of D0's; heun / third order: the φ₂ term) and D2's.
        let (d1, d2) = if sde {
            let h2 = -2.0 * h;
            let phi2 = phi / h2 + 1.0; // (1 − e^{−2h})/(−2h) + 1
            let phi3 = (phi + h2) / (h2 * h2) - 0.5; // (1 − e^{−2h} − 2h)/(2h)² − 0.5
            (alpha_t * phi2, alpha_t * phi3)
        } else {
            let em1 = (-h).exp_m1();
            let phi2 = em1 / h + 1.0; // (e^{−h} − 1)/h + 1
            let phi3 = (em1 + h) / (h * h) - 0.5; // (e^{−h} − 1 + h)/h² − 0.5
            (alpha_t * phi2, -alpha_t * phi3)
        };
        let mut m = [0.0f64; 3];
        m[0] = d0;
        match order {
            1 => {}
            2 => {
                let r0 = (s[step - 1] / sigma_s0).ln() / h;
                let c1 = match self.config.solver_type {
                    DpmSolverType::Midpoint => 0.5 * d0,
                    DpmSolverType::Heun => d1,
                };
                // D1 = (m0 − m1)/r0
                m[0] += c1 / r0;
                m[1] -= c1 / r0;
            }
            _ => {
                let r0 = (s[step - 1] / sigma_s0).ln() / h;
                let r1 = (s[step - 2] / s[step - 1]).ln() / h;
                // D1_0 = (m0 − m1)/r0, D1_1 = (m1 − m2)/r1, Δ = D1_0 − D1_1,
                // D1 = D1_0 + r0/(r0 + r1) Δ, D2 = Δ/(r0 + r1).
                let d1_0 = [1.0 / r0, -1.0 / r0, 0.0];
                let delta = [1.0 / r0, -1.0 / r0 - 1.0 / r1, 1.0 / r1];
                let c = r0 / (r0 + r1);
                for j in 0..3 {
                    let dd1 = d1_0[j] + c * delta[j];
                    let dd2 = delta[j] / (r0 + r1);
                    m[j] += d1 * dd1 + d2 * dd2;
                }
            }
        }
        StepCoefficients { terms: [x_coef, m[0], m[1], m[2]], std }
    }
}

impl Scheduler for DpmSolverMultistep {
    fn num_steps(&self) -> usize {
        self.timesteps.len()
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn scale_model_input(&self, x: &Tensor, step: usize) -> Result<Tensor> {
        check_step(step, self.num_steps())?;
        Ok(x.clone())
    }

    fn prediction_type(&self) -> PredictionType {
        self.config.training.prediction_type
    }

    fn noise_schedule(&self) -> Option<&NoiseSchedule> {
        Some(&self.schedule)
    }

    fn sigmas(&self) -> Option<&[f64]> {
        Some(&self.sigmas)
    }

    fn class_name(&self) -> &'static str {
        "DPMSolverMultistepScheduler"
    }

    fn history_len(&self) -> usize {
        self.config.solver_order - 1
    }

    fn posterior(&self, x: &Tensor, model_output: &Tensor, step: usize) -> Result<Posterior> {
        Ok(self.step(x, model_output, step, StepContext::EMPTY)?.posterior)
    }

    fn step(&self, x: &Tensor, model_output: &Tensor, step: usize, context: StepContext<'_>) -> Result<ModelStep> {
        check_step(step, self.num_steps())?;
        let (x, model_output, dtype) = compute_inputs(x, model_output)?;
        let order = self.order_at(step);
        let history = context.history;
        if history.len() + 1 < order {
            return Err(Error::MissingHistory {
                scheduler: self.class_name(),
                step,
                needed: order - 1,
                got: history.len(),
            });
        }
        let (alpha_s, sigma_s) = vp_alpha_sigma(self.sigmas[step]);
        let (p, q) = vp_x0(self.config.training.prediction_type, alpha_s, sigma_s)?;
        let (m0, _) = linear_combination(&[(p, &x), (q, &model_output)], false)?;
        let c = self.coefficients(step, order);
        let mut terms: Vec<(f64, &Tensor)> = vec![(c.terms[0], &x), (c.terms[1], &m0)];
        for (j, coef) in c.terms[2..].iter().enumerate().take(order - 1) {
            let record = &history[history.len() - 1 - j];
            check_record(record, &m0, "DPM-Solver history vs the latent")?;
            terms.push((*coef, record));
        }
        let (mean, _) = linear_combination(&terms, false)?;
        let posterior = Posterior::scalar(mean.to_dtype(dtype)?, c.std * c.std);
        let record = (self.history_len() > 0).then_some(m0);
        Ok(ModelStep { posterior, record, shared: SharedUpdate::Keep })
    }
}
