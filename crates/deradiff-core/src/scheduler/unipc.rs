//! UniPC (Zhao et al. 2023): a unified predictor (UniP) and corrector (UniC), multistep, as
//! diffusers' `UniPCMultistepScheduler`.

use candle_core::Tensor;

use super::sigma_space::{
    check_record, compute_inputs, multistep_schedule, vp_alpha_sigma, vp_eps, vp_x0, MultistepLayout,
};
use super::state::{ModelStep, SharedUpdate, StepContext};
use super::{check_step, Scheduler};
use crate::config::{SchedulerConfig, TrainingConfig};
use crate::error::{Error, Result};
use crate::ops::linear_combination;
use crate::posterior::Posterior;
use crate::schedule::{NoiseSchedule, PredictionType, TimestepSpacing};
use crate::sigmas::{FinalSigma, SigmaSpacing};

/// diffusers' `solver_type` of UniPC: the choice of `B(h)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UniPcSolverType {
    /// `bh1`: `B(h) = h` (better for unconditional sampling at few steps).
    Bh1,
    /// `bh2`: `B(h) = e^h − 1` (diffusers' default, for guided sampling).
    #[default]
    Bh2,
}

impl UniPcSolverType {
    /// Parses diffusers' name (`midpoint`, `heun`, `logrho` are read as `bh2`, as diffusers does).
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "bh1" => Ok(Self::Bh1),
            "bh2" | "midpoint" | "heun" | "logrho" => Ok(Self::Bh2),
            other => Err(Error::InvalidConfig(format!("solver_type '{other}' is not one of 'bh1', 'bh2'"))),
        }
    }
}

/// Configuration of [`UniPc`]; [`Default`] is diffusers' `UniPCMultistepScheduler()` (order 2,
/// `bh2`, `linspace` spacing, linear betas 1e-4 → 0.02).
#[derive(Debug, Clone, PartialEq)]
pub struct UniPcConfig {
    /// Training schedule and step placement (`rescale_betas_zero_snr` included).
    pub training: TrainingConfig,
    /// `solver_order`: 1, 2 or 3.
    pub solver_order: usize,
    /// `solver_type`.
    pub solver_type: UniPcSolverType,
    /// `predict_x0`: solve in data (true) or noise prediction.
    pub predict_x0: bool,
    /// `lower_order_final`.
    pub lower_order_final: bool,
    /// `disable_corrector`: steps after which no corrector is applied (the corrector of step
    /// `k + 1` corrects step `k`).
    pub disable_corrector: Vec<usize>,
    /// `use_karras_sigmas` / `use_exponential_sigmas` / `use_beta_sigmas`.
    pub sigma_spacing: SigmaSpacing,
    /// `sigma_min` of a re-spaced schedule (default: the training σ_0).
    pub sigma_min: Option<f64>,
    /// `sigma_max` of a re-spaced schedule (default: the training σ_{T−1}).
    pub sigma_max: Option<f64>,
    /// `final_sigmas_type`.
    pub final_sigma: FinalSigma,
}

impl Default for UniPcConfig {
    fn default() -> Self {
        Self {
            training: TrainingConfig::diffusers_default(TimestepSpacing::Linspace),
            solver_order: 2,
            solver_type: UniPcSolverType::Bh2,
            predict_x0: true,
            lower_order_final: true,
            disable_corrector: Vec::new(),
            sigma_spacing: SigmaSpacing::Timesteps,
            sigma_min: None,
            sigma_max: None,
            final_sigma: FinalSigma::Zero,
        }
    }
}

impl UniPcConfig {
    /// From a checkpoint's `scheduler_config.json`, with `UniPCMultistepScheduler`'s defaults for
    /// missing fields.
    pub fn from_diffusers(config: &SchedulerConfig) -> Result<Self> {
        let d = Self::default();
        Ok(Self {
            training: config.training(&d.training)?,
            solver_order: config.order(d.solver_order)?,
            solver_type: config.solver_type.as_deref().map_or(Ok(d.solver_type), UniPcSolverType::from_name)?,
            predict_x0: config.predict_x0.unwrap_or(d.predict_x0),
            lower_order_final: config.lower_order_final.unwrap_or(d.lower_order_final),
            disable_corrector: config.disable_corrector.clone().unwrap_or_default(),
            sigma_spacing: config.sigma_spacing()?,
            sigma_min: SchedulerConfig::sigma_bound(config.sigma_min, "sigma_min")?,
            sigma_max: SchedulerConfig::sigma_bound(config.sigma_max, "sigma_max")?,
            final_sigma: config.final_sigma()?,
        })
    }
}

/// UniPC: each step first corrects the current latent with the new model output (UniC, from the
/// previous step's corrected latent, which the run carries as the shared latent), then predicts
/// the next one (UniP). Both are affine in the latents and in the model's converted outputs of
/// the last `solver_order` steps; the step is deterministic (`docs/math.md` §7).
#[derive(Debug, Clone)]
pub struct UniPc {
    config: UniPcConfig,
    schedule: NoiseSchedule,
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
}

/// Solves `a·ρ = b` (k ≤ 3) by Gaussian elimination with partial pivoting.
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Result<Vec<f64>> {
    let k = b.len();
    for col in 0..k {
        let pivot = (col..k).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs())).unwrap_or(col);
        if a[pivot][col] == 0.0 || !a[pivot][col].is_finite() {
            return Err(Error::InvalidConfig("UniPC's order conditions are singular at this step".into()));
        }
        a.swap(col, pivot);
        b.swap(col, pivot);
        let (top, below) = a.split_at_mut(col + 1);
        let pivot_row = &top[col];
        for (offset, row) in below.iter_mut().enumerate() {
            let f = row[col] / pivot_row[col];
            for (x, p) in row[col..].iter_mut().zip(&pivot_row[col..]) {
                *x -= f * p;
            }
            b[col + 1 + offset] -= f * b[col];
        }
    }
    let mut x = vec![0.0; k];
    for row in (0..k).rev() {
        let s: f64 = (row + 1..k).map(|c| a[row][c] * x[c]).sum();
        x[row] = (b[row] - s) / a[row][row];
    }
    Ok(x)
}

/// One UniP / UniC update as coefficients: `x_t = cx·x + c0·m0 + Σ_k ck·m_k (+ ct·m_t)`.
struct Update {
    cx: f64,
    c0: f64,
    /// Coefficients of the earlier outputs `m_1, m_2` (newest first).
    ck: Vec<f64>,
    /// Corrector only: the coefficient of this step's output.
    ct: f64,
}

impl UniPc {
    /// A UniPC sampler with `num_inference_steps` steps.
    ///
    /// Errors, besides invalid options, for `lower_order_final = false` with `final_sigmas_type
    /// = zero` and `solver_order > 1`: the last step then divides by `h = ∞` (diffusers returns
    /// NaN).
    pub fn new(config: UniPcConfig, num_inference_steps: usize) -> Result<Self> {
        if !(1..=3).contains(&config.solver_order) {
            return Err(Error::InvalidConfig(format!("solver_order must be 1, 2 or 3, got {}", config.solver_order)));
        }
        if !config.lower_order_final && config.final_sigma == FinalSigma::Zero && config.solver_order > 1 {
            return Err(Error::InvalidConfig(
                "UniPC with lower_order_final = false and final_sigmas_type = 'zero' takes a multistep step to σ = 0, \
                 which is undefined (diffusers returns NaN); set lower_order_final = true or final_sigmas_type = \
                 'sigma_min'"
                    .into(),
            ));
        }
        let schedule = NoiseSchedule::from_training(&config.training)?;
        let layout = MultistepLayout {
            spacing: config.sigma_spacing,
            lu_lambdas: false,
            sigma_min: config.sigma_min,
            sigma_max: config.sigma_max,
            final_sigma: config.final_sigma,
            lambda_min_clipped: f64::NEG_INFINITY,
            unipc: true,
        };
        let s = multistep_schedule(&config.training, num_inference_steps, &layout)?;
        Ok(Self { config, schedule, timesteps: s.timesteps, sigmas: s.sigmas })
    }

    /// The configuration.
    pub fn config(&self) -> &UniPcConfig {
        &self.config
    }

    /// The order of the predictor at `step` (diffusers' `this_order`).
    pub fn order_at(&self, step: usize) -> usize {
        let (c, n) = (&self.config, self.timesteps.len());
        let cap = if c.lower_order_final { c.solver_order.min(n - step) } else { c.solver_order };
        cap.min(step.min(c.solver_order) + 1)
    }

    /// Whether `step` starts with a corrector.
    pub fn corrects(&self, step: usize) -> bool {
        step > 0 && !self.config.disable_corrector.contains(&(step - 1))
    }

    /// `(α, σ)` of σ-index `i`, and `λ = −log σ`.
    fn point(&self, i: usize) -> (f64, f64, f64) {
        let s = self.sigmas[i];
        let (a, v) = vp_alpha_sigma(s);
        (a, v, -s.ln())
    }

    /// The UniP (`corrector = false`, from σ-index `s0` to `s0 + 1`) or UniC (`corrector = true`,
    /// from `s0 − 1` to `s0`) update of `order`, diffusers' `multistep_uni_p_bh_update` /
    /// `multistep_uni_c_bh_update`. `earlier[i − 1]` is the σ-index of the output `m_i`.
    fn update(&self, from: usize, to: usize, earlier: &[usize], order: usize, corrector: bool) -> Result<Update> {
        let (alpha_s0, vp_s0, lambda_s0) = self.point(from);
        let (alpha_t, vp_t, lambda_t) = self.point(to);
        let h = lambda_t - lambda_s0;
        let x0 = self.config.predict_x0;
        let rks: Vec<f64> = earlier.iter().map(|&i| (self.point(i).2 - lambda_s0) / h).chain([1.0]).collect();
        let hh = if x0 { -h } else { h };
        let h_phi_1 = hh.exp_m1();
        let mut h_phi_k = h_phi_1 / hh - 1.0;
        let b_h = match self.config.solver_type {
            UniPcSolverType::Bh1 => hh,
            UniPcSolverType::Bh2 => hh.exp_m1(),
        };
        let mut factorial = 1.0;
        let (mut r, mut b) = (Vec::new(), Vec::new());
        for i in 1..=order {
            r.push(rks.iter().map(|rk| rk.powi(i as i32 - 1)).collect::<Vec<f64>>());
            b.push(h_phi_k * factorial / b_h);
            factorial *= (i + 1) as f64;
            h_phi_k = h_phi_k / hh - 1.0 / factorial;
        }
        let (scale, cx) = if x0 { (alpha_t, vp_t / vp_s0) } else { (vp_t, alpha_t / alpha_s0) };
        // x_t = cx·x − scale·h_phi_1·m0 − scale·B_h·(Σ ρ_k (m_k − m0)/r_k [+ ρ_t (m_t − m0)])
        let rhos: Vec<f64> = if corrector {
            if order == 1 {
                vec![0.5]
            } else {
                solve(r.clone(), b.clone())?
            }
        } else if order == 1 {
            Vec::new()
        } else if order == 2 {
            vec![0.5]
        } else {
            let k = order - 1;
            solve(r[..k].iter().map(|row| row[..k].to_vec()).collect(), b[..k].to_vec())?
        };
        let g = scale * b_h;
        let mut c0 = -scale * h_phi_1;
        let mut ck = Vec::with_capacity(order.saturating_sub(1));
        for (k, rk) in rks.iter().take(order - 1).enumerate() {
            let c = -g * rhos[k] / rk;
            ck.push(c);
            c0 -= c;
        }
        let ct = if corrector {
            let rho_t = rhos[rhos.len() - 1];
            c0 += g * rho_t;
            -g * rho_t
        } else {
            0.0
        };
        Ok(Update { cx, c0, ck, ct })
    }

    /// This step's output converted to what the solver works in (`x̂₀`, or `ε̂` with
    /// `predict_x0 = false`), at the step's (uncorrected) latent.
    fn convert(&self, step: usize, x: &Tensor, model_output: &Tensor) -> Result<Tensor> {
        let (alpha, sigma, _) = self.point(step);
        let prediction = self.config.training.prediction_type;
        let (p, q) =
            if self.config.predict_x0 { vp_x0(prediction, alpha, sigma)? } else { vp_eps(prediction, alpha, sigma)? };
        Ok(linear_combination(&[(p, x), (q, model_output)], false)?.0)
    }
}

impl Scheduler for UniPc {
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
        "UniPCMultistepScheduler"
    }

    fn history_len(&self) -> usize {
        self.config.solver_order
    }

    fn posterior(&self, x: &Tensor, model_output: &Tensor, step: usize) -> Result<Posterior> {
        Ok(self.step(x, model_output, step, StepContext::EMPTY)?.posterior)
    }

    fn step(&self, x: &Tensor, model_output: &Tensor, step: usize, context: StepContext<'_>) -> Result<ModelStep> {
        check_step(step, self.num_steps())?;
        let (x, model_output, dtype) = compute_inputs(x, model_output)?;
        let m_t = self.convert(step, &x, &model_output)?;
        let history = context.history;
        let newest = |i: usize| -> Result<&Tensor> {
            let record = &history[history.len() - i];
            check_record(record, &m_t, "UniPC history vs the latent")?;
            Ok(record)
        };
        let corrector_order = if step > 0 { self.order_at(step - 1) } else { 0 };
        let order = self.order_at(step);
        let corrects = self.corrects(step);
        let needed = if corrects { corrector_order } else { order - 1 };
        let shared = match context.shared {
            Some(s) if corrects => {
                check_record(s, &m_t, "UniPC's corrected latent vs the latent")?;
                Some(s)
            }
            _ => None,
        };
        if history.len() < needed.max(order - 1) || (corrects && shared.is_none()) {
            return Err(Error::MissingHistory {
                scheduler: self.class_name(),
                step,
                needed: needed.max(order - 1) + usize::from(corrects),
                got: history.len() + usize::from(context.shared.is_some()),
            });
        }
        // UniC: the corrected latent at this step, from the previous corrected one.
        let corrected = match shared {
            Some(last) => {
                let earlier: Vec<usize> = (1..corrector_order).map(|i| step - 1 - i).collect();
                let u = self.update(step - 1, step, &earlier, corrector_order, true)?;
                let mut terms: Vec<(f64, &Tensor)> = vec![(u.cx, last), (u.c0, newest(1)?), (u.ct, &m_t)];
                for (i, c) in u.ck.iter().enumerate() {
                    terms.push((*c, newest(i + 2)?));
                }
                Some(linear_combination(&terms, false)?.0)
            }
            None => None,
        };
        let base = corrected.as_ref().unwrap_or(&x);
        let mean = if self.sigmas[step + 1] == 0.0 {
            // σ = 0 after the last step (a first-order step, h = ∞): the limit is the data
            // prediction, m_t itself for predict_x0, else (x − σ ε̂)/α from the (corrected) latent
            // (diffusers returns NaN for bh1 and for predict_x0 = false, multiplying ∞ by 0).
            if self.config.predict_x0 {
                m_t.clone()
            } else {
                let (alpha, sigma, _) = self.point(step);
                linear_combination(&[(1.0 / alpha, base), (-sigma / alpha, &m_t)], false)?.0
            }
        } else {
            // UniP from the (corrected) latent.
            let earlier: Vec<usize> = (1..order).map(|i| step - i).collect();
            let u = self.update(step, step + 1, &earlier, order, false)?;
            let mut terms: Vec<(f64, &Tensor)> = vec![(u.cx, base), (u.c0, &m_t)];
            for (i, c) in u.ck.iter().enumerate() {
                terms.push((*c, newest(i + 1)?));
            }
            linear_combination(&terms, false)?.0
        };
        let shared = match corrected {
            Some(c) => SharedUpdate::Fused(c),
            None => SharedUpdate::Input,
        };
        Ok(ModelStep { posterior: Posterior::scalar(mean.to_dtype(dtype)?, 0.0), record: Some(m_t), shared })
    }
}
