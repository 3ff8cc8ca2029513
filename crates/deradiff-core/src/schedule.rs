//! Noise schedules (betas, cumulative alphas) and inference timestep spacing, as diffusers
//! computes them.
//!
//! [`NoiseSchedule`] is computed in `f64`. diffusers computes its betas and `alphas_cumprod` in
//! `float32` (`torch.linspace(..., dtype=torch.float32)`, `torch.cumprod`), so our values differ
//! from its by float32 rounding only (relative ≈ 1e-7 for betas, ≤ 1e-5 for the products; more
//! for `1 − ᾱ` near `t = 0`, where float32 cancels). DDPM and DDIM use these f64 values.
//!
//! Euler ancestral is the exception: its σ table feeds float32 straight into every step, and
//! diffusers' float32 rounding there reaches 1e-4 relative in the variances. So for it this
//! crate reproduces diffusers' float32 σ table operation by operation (torch's CPU float32
//! `linspace` with its fused multiply-add, `cumprod` accumulated in double, `((1 − ᾱ)/ᾱ) ** 0.5`
//! in float32; `crate::sigmas`) and numpy's `interp`; see [`crate::EulerAncestral`]. The other
//! σ-space samplers (Euler, Heun, DPM-Solver++, UniPC) use the same float32 tables.
//!
//! Three places where candle-transformers 0.11's schedulers depart from diffusers are done as
//! diffusers does them, with tests that would catch each:
//! * `squaredcos_cap_v2` uses real division (`i / T`), not integer division;
//! * `trailing` spacing uses the fractional step ratio `T / n` and numpy's `arange` fill;
//! * `linspace` spacing rounds (ties to even, like `numpy.round`) instead of truncating.

use crate::error::{Error, Result};

/// How the betas `β_1..β_T` of the forward process are laid out (diffusers' `beta_schedule`).
#[derive(Debug, Clone, PartialEq)]
pub enum BetaSchedule {
    /// `linspace(beta_start, beta_end, T)` (DDPM, Ho et al. 2020).
    Linear {
        /// First beta.
        beta_start: f64,
        /// Last beta.
        beta_end: f64,
    },
    /// `linspace(√beta_start, √beta_end, T)²` — the latent-diffusion / Stable Diffusion schedule.
    ScaledLinear {
        /// First beta.
        beta_start: f64,
        /// Last beta.
        beta_end: f64,
    },
    /// The cosine schedule of Nichol & Dhariwal (2021), `ᾱ(t) = cos²((t + 0.008)/1.008 · π/2)`,
    /// betas capped at 0.999 (diffusers' `squaredcos_cap_v2`).
    SquaredCosCapV2,
    /// Betas given explicitly (diffusers' `trained_betas`); their count sets `T`.
    Trained(Vec<f64>),
}

/// Where the inference timesteps are placed among the training timesteps (diffusers'
/// `timestep_spacing`, see Lin et al. 2023, Table 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestepSpacing {
    /// `[0, r, 2r, …] + steps_offset`, reversed, with the integer ratio `r = T // n`.
    Leading,
    /// `round(arange(T, 0, -T/n)) - 1`: always starts at the last training timestep.
    Trailing,
    /// `linspace(0, T - 1, n)`, reversed (rounded to integers by DDPM and DDIM, kept fractional by
    /// Euler ancestral).
    Linspace,
}

impl TimestepSpacing {
    /// Parses diffusers' name (`"leading"`, `"trailing"`, `"linspace"`).
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "leading" => Ok(Self::Leading),
            "trailing" => Ok(Self::Trailing),
            "linspace" => Ok(Self::Linspace),
            other => Err(Error::InvalidConfig(format!(
                "timestep_spacing '{other}' is not one of 'leading', 'trailing', 'linspace'"
            ))),
        }
    }

    /// diffusers' name of this spacing.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Leading => "leading",
            Self::Trailing => "trailing",
            Self::Linspace => "linspace",
        }
    }
}

/// What the denoiser predicts (diffusers' `prediction_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictionType {
    /// The noise ε (DDPM, SD 1.x, SD 2.x base, SDXL).
    Epsilon,
    /// The velocity v = √ᾱ ε − √(1−ᾱ) x₀ (Salimans & Ho 2022; SD 2.x 768).
    VPrediction,
    /// The clean sample x₀ directly.
    Sample,
}

impl PredictionType {
    /// Parses diffusers' name (`"epsilon"`, `"v_prediction"`, `"sample"`).
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "epsilon" => Ok(Self::Epsilon),
            "v_prediction" => Ok(Self::VPrediction),
            "sample" => Ok(Self::Sample),
            other => Err(Error::InvalidConfig(format!(
                "prediction_type '{other}' is not one of 'epsilon', 'v_prediction', 'sample'"
            ))),
        }
    }

    /// diffusers' name of this prediction type.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Epsilon => "epsilon",
            Self::VPrediction => "v_prediction",
            Self::Sample => "sample",
        }
    }
}

/// The forward process of a variance-preserving diffusion model: betas and `ᾱ_t = Π_{s≤t}(1−β_s)`.
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseSchedule {
    betas: Vec<f64>,
    alphas_cumprod: Vec<f64>,
}

/// torch's `linspace` on CPU: the first half counts up from `start`, the second half down from
/// `end`, so both endpoints are exact.
fn torch_linspace(start: f64, end: f64, steps: usize) -> Vec<f64> {
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f64;
    let half = steps / 2;
    (0..steps).map(|i| if i < half { start + step * i as f64 } else { end - step * (steps - 1 - i) as f64 }).collect()
}

/// torch's CPU `linspace(start, end, steps, dtype=torch.float32)`: `step = (end − start) /
/// (steps − 1)` in float32, then `start + step·i` for the first half and `end − step·(steps−1−i)`
/// for the second, each a fused multiply-add (as torch's kernel is compiled for AVX2/AVX-512;
/// checked against torch 2.15 for every element of the schedules diffusers builds).
pub(crate) fn torch_linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    let half = steps / 2;
    (0..steps)
        .map(|i| if i < half { step.mul_add(i as f32, start) } else { (-step).mul_add((steps - 1 - i) as f32, end) })
        .collect()
}

/// numpy's `interp(x, arange(len(fp)), fp)` in float64: `fp[j]` at an integer `x = j`,
/// `(fp[j+1] − fp[j])·(x − j) + fp[j]` between, `fp[0]` / `fp[last]` outside.
pub(crate) fn numpy_interp(x: f64, fp: &[f64]) -> f64 {
    let last = fp.len() - 1;
    if x.is_nan() {
        return x;
    }
    if x <= 0.0 {
        return fp[0];
    }
    if x >= last as f64 {
        return fp[last];
    }
    let j = x.floor() as usize;
    if x == j as f64 {
        return fp[j];
    }
    (fp[j + 1] - fp[j]) * (x - j as f64) + fp[j]
}

/// diffusers' `betas_for_alpha_bar` with the cosine transform and `max_beta = 0.999`.
pub(crate) fn squaredcos_cap_v2(num_train_timesteps: usize) -> Vec<f64> {
    let alpha_bar = |t: f64| ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0).cos().powi(2);
    let n = num_train_timesteps as f64;
    (0..num_train_timesteps)
        .map(|i| {
            // Real division: candle 0.11 divides integers here, which makes every beta but the
            // last zero.
            let t1 = i as f64 / n;
            let t2 = (i + 1) as f64 / n;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999)
        })
        .collect()
}

/// Most training timesteps a noise schedule may have (diffusers' checkpoints use 1000); a larger
/// `num_train_timesteps` is an error before anything is allocated.
pub const MAX_TRAIN_TIMESTEPS: usize = 100_000;

impl NoiseSchedule {
    /// Builds the schedule of `num_train_timesteps` steps (ignored for [`BetaSchedule::Trained`],
    /// whose length is `T`).
    ///
    /// Errors if there are no steps, or if any beta lies outside `(0, 1)`, or if the betas
    /// decrease anywhere.
    pub fn new(schedule: &BetaSchedule, num_train_timesteps: usize) -> Result<Self> {
        let betas = match schedule {
            BetaSchedule::Trained(betas) => betas.clone(),
            _ if num_train_timesteps == 0 => {
                return Err(Error::InvalidConfig("num_train_timesteps must be at least 1".into()))
            }
            _ if num_train_timesteps > MAX_TRAIN_TIMESTEPS => {
                return Err(Error::InvalidConfig(format!(
                    "num_train_timesteps = {num_train_timesteps}: at most {MAX_TRAIN_TIMESTEPS} are supported \
                     (Stable Diffusion checkpoints use 1000)"
                )))
            }
            BetaSchedule::Linear { beta_start, beta_end } => {
                torch_linspace(*beta_start, *beta_end, num_train_timesteps)
            }
            BetaSchedule::ScaledLinear { beta_start, beta_end } => {
                if !(*beta_start >= 0.0 && *beta_end >= 0.0) {
                    return Err(Error::InvalidConfig(format!(
                        "scaled_linear needs non-negative beta_start and beta_end, got {beta_start} and {beta_end}"
                    )));
                }
                torch_linspace(beta_start.sqrt(), beta_end.sqrt(), num_train_timesteps)
                    .into_iter()
                    .map(|b| b * b)
                    .collect()
            }
            BetaSchedule::SquaredCosCapV2 => squaredcos_cap_v2(num_train_timesteps),
        };
        Self::from_betas(betas)
    }

    /// The schedule of a [`crate::TrainingConfig`]: its betas, rescaled to zero terminal SNR
    /// (`ᾱ_{T−1} = 0`, Lin et al. 2023) when `rescale_betas_zero_snr` is set, as diffusers'
    /// `rescale_zero_terminal_snr` does in float64.
    pub fn from_training(training: &crate::TrainingConfig) -> Result<Self> {
        let plain = Self::new(&training.beta_schedule, training.num_train_timesteps)?;
        if !training.rescale_betas_zero_snr {
            return Ok(plain);
        }
        if plain.betas.len() < 2 {
            return Err(Error::InvalidConfig("rescale_betas_zero_snr needs at least 2 training timesteps".into()));
        }
        let betas = crate::sigmas::rescale_zero_terminal_snr_f64(&plain.betas);
        // The last beta is 1 (ᾱ_{T−1} = 0): valid here, and only here.
        let (last, rest) =
            betas.split_last().ok_or_else(|| Error::InvalidConfig("the beta schedule is empty".into()))?;
        let mut schedule = Self::from_betas(rest.to_vec())?;
        if !(*last > 0.0 && *last <= 1.0) {
            return Err(Error::InvalidConfig(format!("the rescaled last beta is {last}, not in (0, 1]")));
        }
        schedule.betas.push(*last);
        let prev = schedule.alphas_cumprod.last().copied().unwrap_or(1.0);
        schedule.alphas_cumprod.push(prev * (1.0 - last));
        Ok(schedule)
    }

    /// Builds the schedule from explicit betas, validated: each in `(0, 1)`, non-decreasing.
    pub fn from_betas(betas: Vec<f64>) -> Result<Self> {
        if betas.is_empty() {
            return Err(Error::InvalidConfig("the beta schedule is empty".into()));
        }
        if betas.len() > MAX_TRAIN_TIMESTEPS {
            return Err(Error::InvalidConfig(format!(
                "{} betas: at most {MAX_TRAIN_TIMESTEPS} training timesteps are supported",
                betas.len()
            )));
        }
        if let Some((t, b)) = betas.iter().enumerate().find(|(_, b)| !(**b > 0.0 && **b < 1.0)) {
            return Err(Error::InvalidConfig(format!(
                "beta at timestep {t} is {b}; every beta must lie strictly between 0 and 1"
            )));
        }
        if let Some(t) = betas.windows(2).position(|w| w[1] < w[0]) {
            return Err(Error::InvalidConfig(format!(
                "betas decrease at timestep {} ({} then {}); a noise schedule must not decrease \
                 (check beta_start <= beta_end)",
                t + 1,
                betas[t],
                betas[t + 1]
            )));
        }
        let mut acc = 1.0;
        let alphas_cumprod = betas
            .iter()
            .map(|b| {
                acc *= 1.0 - b;
                acc
            })
            .collect();
        Ok(Self { betas, alphas_cumprod })
    }

    /// Number of training timesteps `T`.
    pub fn num_train_timesteps(&self) -> usize {
        self.betas.len()
    }

    /// `β_t` for `t = 0..T`.
    pub fn betas(&self) -> &[f64] {
        &self.betas
    }

    /// `ᾱ_t = Π_{s≤t} (1 − β_s)` for `t = 0..T`.
    pub fn alphas_cumprod(&self) -> &[f64] {
        &self.alphas_cumprod
    }

    /// `σ_t = √((1 − ᾱ_t) / ᾱ_t)` for `t = 0..T`: the noise level of the variance-exploding
    /// parameterisation used by Euler samplers (Karras et al. 2022).
    pub fn sigmas(&self) -> Vec<f64> {
        self.alphas_cumprod.iter().map(|a| ((1.0 - a) / a).sqrt()).collect()
    }

    /// `σ(t)` at a possibly fractional timestep, interpolated linearly in `t` between the
    /// training timesteps (as diffusers' Euler schedulers do, `numpy.interp`).
    pub fn sigma_at(&self, t: f64) -> f64 {
        let t = t.clamp(0.0, (self.betas.len() - 1) as f64);
        let j = t.floor() as usize;
        let sigma = |a: f64| ((1.0 - a) / a).sqrt();
        if t == j as f64 {
            return sigma(self.alphas_cumprod[j]);
        }
        let (s0, s1) = (sigma(self.alphas_cumprod[j]), sigma(self.alphas_cumprod[j + 1]));
        (s1 - s0) * (t - j as f64) + s0
    }

    /// `ᾱ` at a possibly fractional timestep: `ᾱ_t` itself at integer `t`, and `1 / (1 + σ(t)²)`
    /// with [`Self::sigma_at`] between them — the `ᾱ` that Euler ancestral's
    /// `scale_model_input` implies (up to the float32 rounding of its σ table, a few 1e-7 relative
    /// in `ᾱ`), so an exact denoiser stays exact under every scheduler.
    pub fn alpha_cumprod_at(&self, t: f64) -> f64 {
        let tc = t.clamp(0.0, (self.betas.len() - 1) as f64);
        if tc == tc.floor() {
            return self.alphas_cumprod[tc as usize];
        }
        let s = self.sigma_at(tc);
        1.0 / (1.0 + s * s)
    }
}

/// `numpy.arange(start, stop, step)` for floats: length `ceil((stop − start) / step)`, values
/// `start + i · ((start + step) − start)` (numpy's `fill`), reproduced so that the trailing
/// spacing has exactly diffusers' length and values.
pub(crate) fn numpy_arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil();
    if len.is_nan() || len <= 0.0 {
        return Vec::new();
    }
    let len = len as usize;
    let delta = (start + step) - start;
    (0..len).map(|i| if i == 0 { start } else { start + i as f64 * delta }).collect()
}

fn validate_counts(num_train_timesteps: usize, num_inference_steps: usize) -> Result<()> {
    if num_inference_steps == 0 {
        return Err(Error::InvalidConfig("the number of inference steps must be at least 1".into()));
    }
    if num_inference_steps > num_train_timesteps {
        return Err(Error::InvalidConfig(format!(
            "{num_inference_steps} inference steps were asked for, but the model was trained with only \
             {num_train_timesteps} timesteps; use at most {num_train_timesteps}"
        )));
    }
    Ok(())
}

/// Inference timesteps, descending, for `n` steps among `T` training timesteps.
///
/// With `fractional = false` (DDPM, DDIM) linspace timesteps are rounded to integers; with
/// `fractional = true` (Euler ancestral) they are kept as the exact `linspace` values
/// (978.6122… for n = 50). Leading and trailing timesteps are integers either way.
///
/// Errors for `n = 0`, `n > T`, or a `steps_offset` that pushes a timestep past `T − 1`.
pub fn inference_timesteps(
    spacing: TimestepSpacing,
    num_train_timesteps: usize,
    num_inference_steps: usize,
    steps_offset: usize,
    fractional: bool,
) -> Result<Vec<f64>> {
    validate_counts(num_train_timesteps, num_inference_steps)?;
    let t = num_train_timesteps;
    let n = num_inference_steps;
    let timesteps: Vec<f64> = match spacing {
        TimestepSpacing::Linspace => {
            let last = (t - 1) as f64;
            // numpy.linspace: i * (delta / div) + start, the endpoint set exactly.
            let step = last / (n.max(2) - 1) as f64;
            (0..n)
                .rev()
                .map(|i| {
                    let v = if n > 1 && i == n - 1 { last } else { i as f64 * step };
                    if fractional {
                        v
                    } else {
                        v.round_ties_even()
                    }
                })
                .collect()
        }
        TimestepSpacing::Leading => {
            let ratio = t / n;
            // Saturating: an absurd steps_offset lands out of range and is reported below.
            (0..n).rev().map(|i| (i * ratio).saturating_add(steps_offset) as f64).collect()
        }
        TimestepSpacing::Trailing => {
            let ratio = t as f64 / n as f64;
            numpy_arange(t as f64, 0.0, -ratio).into_iter().map(|v| v.round_ties_even() - 1.0).collect()
        }
    };
    if let Some(bad) = timesteps.iter().find(|&&v| !(v >= 0.0 && v <= (t - 1) as f64)) {
        return Err(Error::InvalidConfig(format!(
            "timestep {bad} lies outside 0..{t} (spacing '{}', steps_offset {steps_offset}); \
             lower steps_offset",
            spacing.name()
        )));
    }
    if timesteps.windows(2).any(|w| w[1] >= w[0]) {
        return Err(Error::InvalidConfig(format!(
            "spacing '{}' gives repeated timesteps for {n} steps out of {t}",
            spacing.name()
        )));
    }
    Ok(timesteps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_betas_are_not_integer_divided() {
        let s = NoiseSchedule::new(&BetaSchedule::SquaredCosCapV2, 1000).unwrap();
        // candle 0.11 computes i / T with integers: every beta but the last would be 0.
        assert!(s.betas()[0] > 0.0 && s.betas()[0] < 1e-4);
        assert!(s.betas()[500] > 1e-3);
        assert_eq!(s.betas()[999], 0.999);
    }

    #[test]
    fn trailing_uses_fractional_ratio() {
        let ts = inference_timesteps(TimestepSpacing::Trailing, 1000, 30, 0, false).unwrap();
        assert_eq!(ts.len(), 30);
        assert_eq!(&ts[..4], &[999.0, 966.0, 932.0, 899.0]);
        assert_eq!(*ts.last().unwrap(), 32.0);
    }

    #[test]
    fn linspace_rounds_instead_of_truncating() {
        let ts = inference_timesteps(TimestepSpacing::Linspace, 1000, 50, 0, false).unwrap();
        assert_eq!(ts[0], 999.0);
        assert_eq!(ts[1], 979.0); // candle 0.11 truncates to 978
        let frac = inference_timesteps(TimestepSpacing::Linspace, 1000, 50, 0, true).unwrap();
        assert!((frac[1] - 978.612_244_897_959_2).abs() < 1e-9);
    }

    #[test]
    fn leading_with_offset() {
        let ts = inference_timesteps(TimestepSpacing::Leading, 1000, 50, 1, false).unwrap();
        assert_eq!((ts[0], ts[1], ts[49]), (981.0, 961.0, 1.0));
    }

    #[test]
    fn constructors_validate() {
        assert!(inference_timesteps(TimestepSpacing::Leading, 1000, 0, 0, false).is_err());
        assert!(inference_timesteps(TimestepSpacing::Leading, 1000, 1001, 0, false).is_err());
        assert!(inference_timesteps(TimestepSpacing::Leading, 1000, 10, 200, false).is_err());
        assert!(NoiseSchedule::new(&BetaSchedule::Linear { beta_start: 0.02, beta_end: 0.0001 }, 10).is_err());
        assert!(NoiseSchedule::new(&BetaSchedule::Linear { beta_start: 0.0, beta_end: 0.02 }, 10).is_err());
        assert!(NoiseSchedule::new(&BetaSchedule::Linear { beta_start: 0.5, beta_end: 1.0 }, 10).is_err());
        assert!(NoiseSchedule::new(&BetaSchedule::Trained(vec![]), 10).is_err());
        assert!(NoiseSchedule::new(&BetaSchedule::Linear { beta_start: 1e-4, beta_end: 0.02 }, 0).is_err());
    }

    #[test]
    fn numpy_arange_matches_numpy_lengths() {
        // np.arange(1000, 0, -1000/30) has 30 elements; np.arange(1000, 0, -1000/7) has 7.
        assert_eq!(numpy_arange(1000.0, 0.0, -1000.0 / 30.0).len(), 30);
        assert_eq!(numpy_arange(1000.0, 0.0, -1000.0 / 7.0).len(), 7);
    }

    #[test]
    fn float32_linspace_is_torch_bit_for_bit() {
        // torch.linspace(1e-4, 0.02, 1000, dtype=torch.float32) (torch 2.15, CPU): element 7 is
        // one ulp below the unfused `start + step * 7`.
        let t = torch_linspace_f32(1e-4, 0.02, 1000);
        let bits: Vec<u32> = [7, 14, 15, 500, 998].iter().map(|&i| t[i].to_bits()).collect();
        assert_eq!(bits, [964366857, 969319491, 970003934, 1009046151, 1017359684]);
        let unfused = 1e-4f32 + (0.02f32 - 1e-4f32) / 999.0 * 7.0;
        assert_eq!(unfused.to_bits(), 964366858);
        assert_eq!((t[0], t[999]), (1e-4, 0.02));
        // The scaled-linear square roots.
        let t = torch_linspace_f32(0.00085f64.sqrt() as f32, 0.012f64.sqrt() as f32, 1000);
        assert_eq!([t[57].to_bits(), t[58].to_bits(), t[700].to_bits()], [1024078999, 1024100601, 1034883632]);
    }

    #[test]
    fn numpy_interp_matches_numpy() {
        let fp = [1.0, 2.0, 4.0];
        assert_eq!(numpy_interp(0.5, &fp), 1.5);
        assert_eq!(numpy_interp(1.25, &fp), 2.5);
        assert_eq!(numpy_interp(1.0, &fp), 2.0);
        assert_eq!(numpy_interp(-1.0, &fp), 1.0);
        assert_eq!(numpy_interp(2.0, &fp), 4.0);
        assert_eq!(numpy_interp(7.0, &fp), 4.0);
        assert!(numpy_interp(f64::NAN, &fp).is_nan());
    }

    #[test]
    fn float32_sigma_table_is_diffusers() {
        let training = crate::TrainingConfig::stable_diffusion(PredictionType::Epsilon, TimestepSpacing::Leading, 0);
        let table = crate::sigmas::float32_tables(&training, true).unwrap().sigmas;
        // diffusers' EulerAncestralDiscreteScheduler(SD betas).sigmas[0] (float32) = σ_999.
        assert_eq!(table[999] as f32, 14.614_647);
        let exact = NoiseSchedule::new(&training.beta_schedule, 1000).unwrap().sigmas();
        // float32 cancellation in 1 − ᾱ near t = 0 moves σ_0 by ~1e-5 relative.
        let rel0 = (table[0] - exact[0]).abs() / exact[0];
        assert!(rel0 > 1e-7 && rel0 < 1e-4, "{rel0}");
        let huge = crate::TrainingConfig {
            beta_schedule: BetaSchedule::Trained(vec![0.9999999999; 40]),
            num_train_timesteps: 40,
            ..training
        };
        assert!(crate::sigmas::float32_tables(&huge, true).is_err());
    }

    #[test]
    fn sigma_at_interpolates_linearly_in_t() {
        let s = NoiseSchedule::new(&BetaSchedule::ScaledLinear { beta_start: 0.00085, beta_end: 0.012 }, 1000).unwrap();
        let sig = s.sigmas();
        assert_eq!(s.sigma_at(500.0), sig[500]);
        assert!((s.sigma_at(500.25) - (0.75 * sig[500] + 0.25 * sig[501])).abs() < 1e-15);
        assert_eq!(s.sigma_at(-3.0), sig[0]);
        assert_eq!(s.sigma_at(1e6), sig[999]);
        assert_eq!(s.alpha_cumprod_at(500.0), s.alphas_cumprod()[500]);
        let a = s.alpha_cumprod_at(500.5);
        assert!(a < s.alphas_cumprod()[500] && a > s.alphas_cumprod()[501]);
    }
}
