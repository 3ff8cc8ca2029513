//! The timesteps and σ of the σ-space samplers (Euler, Heun, DPM-Solver++, UniPC), each as its
//! diffusers class's `set_timesteps` lays them out, and the arithmetic their steps share.

use candle_core::{DType, Tensor};

use crate::config::TrainingConfig;
use crate::error::{Error, Result};
use crate::schedule::{inference_timesteps, numpy_interp, BetaSchedule, PredictionType, TimestepSpacing};
use crate::sigmas::{
    beta_sigmas, exponential, float32_tables, karras, lu_sigmas, numpy_linspace, sigma_to_t, FinalSigma, Float32Tables,
    SigmaSpacing,
};

/// Timesteps (one per step) and σ (one per step plus the final one), float32 values.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SigmaSchedule {
    pub timesteps: Vec<f64>,
    pub sigmas: Vec<f64>,
    pub tables: Float32Tables,
}

fn f32_values(v: impl IntoIterator<Item = f64>) -> Vec<f64> {
    v.into_iter().map(|x| f64::from(x as f32)).collect()
}

/// σ_min / σ_max for the Karras, exponential and beta spacings: the config's if given, else
/// the ends of `in_sigmas` (descending).
fn ends(in_sigmas: &[f64], sigma_min: Option<f64>, sigma_max: Option<f64>) -> Result<(f64, f64)> {
    let lo = sigma_min.unwrap_or(in_sigmas[in_sigmas.len() - 1]);
    let hi = sigma_max.unwrap_or(in_sigmas[0]);
    if !(lo > 0.0 && hi > lo && hi.is_finite()) {
        return Err(Error::InvalidConfig(format!(
            "sigma_min = {lo} and sigma_max = {hi}: the σ range must satisfy 0 < sigma_min < sigma_max"
        )));
    }
    Ok((lo, hi))
}

/// The n σ of a Karras / exponential / beta spacing between the ends.
fn spaced(spacing: SigmaSpacing, lo: f64, hi: f64, n: usize) -> Vec<f64> {
    match spacing {
        SigmaSpacing::Karras => karras(lo, hi, n),
        SigmaSpacing::Exponential => exponential(lo, hi, n),
        SigmaSpacing::Beta => beta_sigmas(lo, hi, n),
        SigmaSpacing::Timesteps => unreachable!("spaced() is only called for the σ spacings"),
    }
}

/// Options of the Euler-family layout (`EulerDiscreteScheduler`, `HeunDiscreteScheduler`).
pub(crate) struct EulerLayout {
    pub log_linear: bool,
    pub spacing: SigmaSpacing,
    pub sigma_min: Option<f64>,
    pub sigma_max: Option<f64>,
    pub final_sigma: FinalSigma,
}

/// `EulerDiscreteScheduler.set_timesteps` (Heun's is the same without `interpolation_type`,
/// `sigma_min`/`sigma_max` and `final_sigmas_type`): float32 fractional timesteps, σ
/// interpolated (or log-linear), optionally re-spaced with `_sigma_to_t` timesteps.
pub(crate) fn euler_schedule(training: &TrainingConfig, n: usize, layout: &EulerLayout) -> Result<SigmaSchedule> {
    let tables = float32_tables(training, true)?;
    let t = tables.sigmas.len();
    let mut timesteps = f32_values(inference_timesteps(training.timestep_spacing, t, n, training.steps_offset, true)?);
    let mut sigmas: Vec<f64> = if layout.log_linear {
        // torch.linspace(log σ_{T−1}, log σ_0, n + 1) in float32, exp in float32.
        crate::schedule::torch_linspace_f32(tables.log_sigmas[t - 1] as f32, tables.log_sigmas[0] as f32, n + 1)
            .into_iter()
            .map(|l| f64::from(l.exp()))
            .collect()
    } else {
        timesteps.iter().map(|&ts| numpy_interp(ts, &tables.sigmas)).collect()
    };
    if layout.spacing != SigmaSpacing::Timesteps {
        let (lo, hi) = ends(&sigmas, layout.sigma_min, layout.sigma_max)?;
        sigmas = spaced(layout.spacing, lo, hi, n);
        timesteps = f32_values(sigmas.iter().map(|&s| sigma_to_t(s, &tables.log_sigmas)));
    }
    sigmas.push(match layout.final_sigma {
        FinalSigma::Zero => 0.0,
        FinalSigma::SigmaMin => tables.sigmas[0],
    });
    // Log-linear interpolation has n + 1 σ of its own: the last step ends at the smallest of
    // them and the final σ is never reached (as in diffusers).
    sigmas.truncate(n + 1);
    Ok(SigmaSchedule { timesteps, sigmas: f32_values(sigmas), tables })
}

/// Integer timesteps (`int64`): values that are whole numbers are kept, fractional ones
/// truncated toward zero as torch's `.to(torch.int64)` does.
fn int64(v: f64) -> f64 {
    v.trunc()
}

/// The integer timesteps of DPM-Solver and UniPC's spacings (`n + 1` points with the last
/// dropped for `linspace` and `leading`), up to `last` (the `lambda_min_clipped` cut, else `T`).
fn multistep_timesteps(training: &TrainingConfig, t: usize, last: usize, n: usize) -> Result<Vec<f64>> {
    if n == 0 || n > t {
        return Err(Error::InvalidConfig(format!(
            "{n} inference steps were asked for, with {t} training timesteps; use 1..={t}"
        )));
    }
    let ts: Vec<f64> = match training.timestep_spacing {
        TimestepSpacing::Linspace => {
            let mut v: Vec<f64> =
                numpy_linspace(0.0, last as f64 - 1.0, n + 1, true).into_iter().map(f64::round_ties_even).collect();
            v.reverse();
            v.pop();
            v
        }
        TimestepSpacing::Leading => {
            let ratio = last / (n + 1);
            if ratio == 0 {
                return Err(Error::InvalidConfig(format!(
                    "leading spacing gives repeated timesteps for {n} steps out of {last}; use fewer steps"
                )));
            }
            (1..=n).rev().map(|i| (i * ratio).saturating_add(training.steps_offset) as f64).collect()
        }
        TimestepSpacing::Trailing => {
            let ratio = t as f64 / n as f64;
            crate::schedule::numpy_arange(last as f64, 0.0, -ratio)
                .into_iter()
                .map(|v| v.round_ties_even() - 1.0)
                .collect()
        }
    };
    if let Some(bad) = ts.iter().find(|&&v| !(v >= 0.0 && v <= (t - 1) as f64)) {
        return Err(Error::InvalidConfig(format!(
            "timestep {bad} lies outside 0..{t} (spacing '{}', steps_offset {}); lower steps_offset",
            training.timestep_spacing.name(),
            training.steps_offset
        )));
    }
    Ok(ts)
}

/// Options of the multistep layouts.
pub(crate) struct MultistepLayout {
    pub spacing: SigmaSpacing,
    /// DPM-Solver's `use_lu_lambdas` (after Karras in diffusers' order of precedence).
    pub lu_lambdas: bool,
    pub sigma_min: Option<f64>,
    pub sigma_max: Option<f64>,
    pub final_sigma: FinalSigma,
    /// DPM-Solver's `lambda_min_clipped` (UniPC: −∞).
    pub lambda_min_clipped: f64,
    /// UniPC: the final `sigma_min` of a re-spaced schedule is its own last σ; DPM-Solver: the
    /// training σ_0. UniPC also rounds Karras timesteps for the cosine schedule.
    pub unipc: bool,
}

/// `DPMSolverMultistepScheduler.set_timesteps` / `UniPCMultistepScheduler.set_timesteps`.
pub(crate) fn multistep_schedule(
    training: &TrainingConfig,
    n: usize,
    layout: &MultistepLayout,
) -> Result<SigmaSchedule> {
    let tables = float32_tables(training, true)?;
    let t = tables.sigmas.len();
    let last = if layout.lambda_min_clipped == f64::NEG_INFINITY {
        t
    } else {
        // λ_t = log √ᾱ − log √(1 − ᾱ) in float32, flipped (ascending); searchsorted (left).
        let mut lambdas: Vec<f32> = tables
            .alphas_cumprod
            .iter()
            .map(|&a| {
                let a = a as f32;
                a.sqrt().ln() - (1.0 - a).sqrt().ln()
            })
            .collect();
        lambdas.reverse();
        let clipped = lambdas.iter().take_while(|&&l| f64::from(l) < layout.lambda_min_clipped).count();
        t - clipped
    };
    if last == 0 {
        return Err(Error::InvalidConfig(format!(
            "lambda_min_clipped = {} cuts every timestep",
            layout.lambda_min_clipped
        )));
    }
    let mut timesteps = multistep_timesteps(training, t, last, n)?;
    let cosine = matches!(training.beta_schedule, BetaSchedule::SquaredCosCapV2);
    let descending: Vec<f64> = tables.sigmas.iter().rev().copied().collect();
    let log_sigmas = &tables.log_sigmas;
    let round_karras = layout.unipc || !cosine;
    let mut sigmas: Vec<f64> = if layout.spacing == SigmaSpacing::Karras {
        let (lo, hi) = ends(&descending, layout.sigma_min, layout.sigma_max)?;
        let s = karras(lo, hi, n);
        timesteps = s
            .iter()
            .map(|&x| {
                let ts = sigma_to_t(x, log_sigmas);
                int64(if round_karras { ts.round_ties_even() } else { ts })
            })
            .collect();
        s
    } else if layout.lu_lambdas {
        let s = lu_sigmas(log_sigmas[0], log_sigmas[t - 1], n);
        timesteps = s
            .iter()
            .map(|&x| {
                let ts = sigma_to_t(x, log_sigmas);
                int64(if cosine { ts } else { ts.round_ties_even() })
            })
            .collect();
        s
    } else if layout.spacing != SigmaSpacing::Timesteps {
        let (lo, hi) = ends(&descending, layout.sigma_min, layout.sigma_max)?;
        let s = spaced(layout.spacing, lo, hi, n);
        timesteps = s.iter().map(|&x| int64(sigma_to_t(x, log_sigmas))).collect();
        s
    } else {
        timesteps.iter().map(|&ts| numpy_interp(ts, &tables.sigmas)).collect()
    };
    let respaced = layout.spacing != SigmaSpacing::Timesteps || (layout.lu_lambdas && !layout.unipc);
    let final_sigma = match layout.final_sigma {
        FinalSigma::Zero => 0.0,
        FinalSigma::SigmaMin if layout.unipc && respaced => sigmas[sigmas.len() - 1],
        FinalSigma::SigmaMin => tables.sigmas[0],
    };
    sigmas.push(final_sigma);
    Ok(SigmaSchedule { timesteps, sigmas: f32_values(sigmas), tables })
}

/// `(α_t, σ_t)` of the variance-preserving parameterisation at noise level σ:
/// `α_t = 1/√(σ² + 1)`, `σ_t = σ α_t` (f64; σ = 0 gives `(1, 0)`).
pub(crate) fn vp_alpha_sigma(sigma: f64) -> (f64, f64) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

/// `x̂₀ = p·x + q·o` in the variance-preserving parameterisation at `(α_t, σ_t)`.
pub(crate) fn vp_x0(prediction: PredictionType, alpha: f64, sigma: f64) -> Result<(f64, f64)> {
    Ok(match prediction {
        PredictionType::Epsilon => {
            if alpha == 0.0 {
                return Err(zero_snr_epsilon());
            }
            (1.0 / alpha, -sigma / alpha)
        }
        PredictionType::VPrediction => (alpha, -sigma),
        PredictionType::Sample => (0.0, 1.0),
    })
}

/// `ε̂ = p·x + q·o` in the variance-preserving parameterisation at `(α_t, σ_t)`.
pub(crate) fn vp_eps(prediction: PredictionType, alpha: f64, sigma: f64) -> Result<(f64, f64)> {
    Ok(match prediction {
        PredictionType::Epsilon => (0.0, 1.0),
        PredictionType::VPrediction => (sigma, alpha),
        PredictionType::Sample => {
            if sigma == 0.0 {
                return Err(Error::InvalidConfig(
                    "sample-prediction cannot be converted to ε at σ = 0 (predict_x0 = false)".into(),
                ));
            }
            (1.0 / sigma, -alpha / sigma)
        }
    })
}

pub(crate) fn zero_snr_epsilon() -> Error {
    Error::InvalidConfig(
        "ε-prediction is undefined at ᾱ = 0 (zero terminal SNR, rescale_betas_zero_snr): the clean sample \
         cannot be recovered from the noise there; use a v-prediction model"
            .into(),
    )
}

/// The latent and the model output in the dtype the step is computed in (f32 for half
/// precision), after the checks every scheduler makes.
pub(crate) fn compute_inputs(x: &Tensor, model_output: &Tensor) -> Result<(Tensor, Tensor, DType)> {
    super::check_compatible(x, model_output, 1)?;
    let dtype = x.dtype();
    let cdt = super::compute_dtype(dtype);
    Ok((x.to_dtype(cdt)?, model_output.to_dtype(cdt)?, dtype))
}

/// Checks that a history entry (or the shared latent) has the latent's shape, dtype and device.
pub(crate) fn check_record(record: &Tensor, like: &Tensor, what: &str) -> Result<()> {
    if record.shape() != like.shape() {
        return Err(Error::ShapeMismatch {
            context: what.into(),
            expected: like.shape().clone(),
            got: record.shape().clone(),
        });
    }
    if record.dtype() != like.dtype() {
        return Err(Error::DTypeMismatch { context: what.into(), expected: like.dtype(), got: record.dtype() });
    }
    if !record.device().same_device(like.device()) {
        return Err(Error::DeviceMismatch {
            context: what.into(),
            expected: like.device().location(),
            got: record.device().location(),
        });
    }
    Ok(())
}
