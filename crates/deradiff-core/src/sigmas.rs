//! diffusers' noise-level (σ) schedules for the σ-space samplers: Euler, Heun, DPM-Solver++,
//! UniPC (and Euler ancestral's table).
//!
//! These samplers step between the noise levels `σ_i` of a variance-exploding parameterisation
//! (`x = x_VP · √(σ² + 1)`), which diffusers derives from its **float32** training schedule and
//! stores as float32. To take diffusers' steps rather than nearby ones, this module reproduces
//! those tables dtype for dtype:
//! * the float32 betas (torch's float32 `linspace` with its fused multiply-add, squared in float32
//!   for `scaled_linear`; the float64 cosine or trained betas rounded), zero-terminal-SNR
//!   rescaling in float32 as `rescale_zero_terminal_snr` does it, `ᾱ = cumprod(1 − β)`
//!   accumulated in double and rounded per element (torch's CPU `cumprod`), and for the σ-space
//!   samplers `ᾱ_{T−1} = 2⁻²⁴` after the rescaling;
//! * `σ_t = ((1 − ᾱ_t)/ᾱ_t) ** 0.5` and `log σ_t` in float32;
//! * numpy's float64 `interp`, `linspace` and diffusers' `_sigma_to_t`, Karras, exponential,
//!   beta and λ-uniform (`use_lu_lambdas`) conversions in float64, rounded to float32 at the end
//!   as diffusers does (`astype(np.float32)`).
//!
//! What remains are last-bit differences of transcendental functions: torch's float32 square
//! root and numpy's float32 logarithm are not always correctly rounded (ours are), so a σ may
//! differ from diffusers' by one float32 ulp, and a fractional timestep obtained by `_sigma_to_t`
//! by a float32 ulp or two. The golden tests measure both.

use crate::config::TrainingConfig;
use crate::error::{Error, Result};
use crate::schedule::{squaredcos_cap_v2, torch_linspace_f32, BetaSchedule};

/// Where a σ-space sampler puts its noise levels (diffusers' `use_karras_sigmas`,
/// `use_exponential_sigmas`, `use_beta_sigmas`; at most one may be set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SigmaSpacing {
    /// σ of the training schedule at the spacing's timesteps (interpolated at fractional ones).
    #[default]
    Timesteps,
    /// Karras et al. (2022), eq. 5 with ρ = 7: `(σ_max^{1/ρ} + i/(n−1) (σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ`.
    Karras,
    /// Uniform in `log σ` from σ_max to σ_min.
    Exponential,
    /// `σ_min + F⁻¹(1 − i/(n−1)) (σ_max − σ_min)` with `F` the Beta(0.6, 0.6) distribution function
    /// (Lee et al. 2024, "Beta sampling is all you need").
    Beta,
}

impl SigmaSpacing {
    /// diffusers' option name of this spacing (`"use_karras_sigmas"`, …; `"timesteps"` for the
    /// default).
    pub fn name(&self) -> &'static str {
        match self {
            SigmaSpacing::Timesteps => "timesteps",
            SigmaSpacing::Karras => "use_karras_sigmas",
            SigmaSpacing::Exponential => "use_exponential_sigmas",
            SigmaSpacing::Beta => "use_beta_sigmas",
        }
    }

    /// The spacing named by diffusers' three flags; more than one set is
    /// [`Error::InvalidConfig`] (diffusers raises the same).
    pub fn from_flags(karras: bool, exponential: bool, beta: bool) -> Result<Self> {
        match (karras, exponential, beta) {
            (false, false, false) => Ok(SigmaSpacing::Timesteps),
            (true, false, false) => Ok(SigmaSpacing::Karras),
            (false, true, false) => Ok(SigmaSpacing::Exponential),
            (false, false, true) => Ok(SigmaSpacing::Beta),
            _ => Err(Error::InvalidConfig(
                "only one of use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas may be true".into(),
            )),
        }
    }
}

/// The noise level after the last step (diffusers' `final_sigmas_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FinalSigma {
    /// σ = 0: the last step returns the model's clean-sample prediction.
    #[default]
    Zero,
    /// The smallest σ of the schedule (the training `σ_0`, or for UniPC with Karras, exponential
    /// or beta sigmas the last of those).
    SigmaMin,
}

impl FinalSigma {
    /// Parses diffusers' name (`"zero"`, `"sigma_min"`).
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "zero" => Ok(FinalSigma::Zero),
            "sigma_min" => Ok(FinalSigma::SigmaMin),
            other => {
                Err(Error::InvalidConfig(format!("final_sigmas_type '{other}' is not one of 'zero', 'sigma_min'")))
            }
        }
    }

    /// diffusers' name.
    pub fn name(&self) -> &'static str {
        match self {
            FinalSigma::Zero => "zero",
            FinalSigma::SigmaMin => "sigma_min",
        }
    }
}

/// diffusers' float32 training tables: `ᾱ_t`, `σ_t` and `log σ_t` for `t = 0..T`, as float32
/// values held in f64 (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Float32Tables {
    /// `ᾱ_t` (float32 values).
    pub alphas_cumprod: Vec<f64>,
    /// `σ_t = √((1 − ᾱ_t)/ᾱ_t)` (float32 values).
    pub sigmas: Vec<f64>,
    /// `log σ_t` (float32 values).
    pub log_sigmas: Vec<f64>,
}

/// diffusers' float32 betas of a schedule.
fn betas_f32(schedule: &BetaSchedule, num_train_timesteps: usize) -> Vec<f32> {
    match schedule {
        BetaSchedule::Linear { beta_start, beta_end } => {
            torch_linspace_f32(*beta_start as f32, *beta_end as f32, num_train_timesteps)
        }
        BetaSchedule::ScaledLinear { beta_start, beta_end } => {
            torch_linspace_f32(beta_start.sqrt() as f32, beta_end.sqrt() as f32, num_train_timesteps)
                .into_iter()
                .map(|b| b * b)
                .collect()
        }
        BetaSchedule::SquaredCosCapV2 => squaredcos_cap_v2(num_train_timesteps).into_iter().map(|b| b as f32).collect(),
        BetaSchedule::Trained(betas) => betas.iter().map(|&b| b as f32).collect(),
    }
}

/// torch's CPU `cumprod` of a float32 tensor: accumulated in double, rounded per element.
fn cumprod_f32(alphas: impl IntoIterator<Item = f32>) -> Vec<f32> {
    let mut acc = 1.0f64;
    alphas
        .into_iter()
        .map(|a| {
            acc *= f64::from(a);
            acc as f32
        })
        .collect()
}

/// diffusers' `rescale_zero_terminal_snr` on float32 betas (Lin et al. 2023, Algorithm 1), every
/// operation in float32 as torch does it.
fn rescale_zero_terminal_snr_f32(betas: &[f32]) -> Vec<f32> {
    let ac = cumprod_f32(betas.iter().map(|b| 1.0 - b));
    let sqrt: Vec<f32> = ac.iter().map(|a| a.sqrt()).collect();
    let (first, last) = (sqrt[0], sqrt[sqrt.len() - 1]);
    let scale = first / (first - last);
    let alphas_bar: Vec<f32> = sqrt
        .iter()
        .map(|s| {
            let s = (s - last) * scale;
            s * s
        })
        .collect();
    let mut out = Vec::with_capacity(betas.len());
    out.push(1.0 - alphas_bar[0]);
    out.extend(alphas_bar.windows(2).map(|w| 1.0 - w[1] / w[0]));
    out
}

/// diffusers' `rescale_zero_terminal_snr` in float64 (what DDPM and DDIM use with the exact f64
/// schedule): `√ᾱ` shifted so that `√ᾱ_{T−1} = 0` and scaled so that `√ᾱ_0` is unchanged.
pub(crate) fn rescale_zero_terminal_snr_f64(betas: &[f64]) -> Vec<f64> {
    let mut acc = 1.0;
    let sqrt: Vec<f64> = betas
        .iter()
        .map(|b| {
            acc *= 1.0 - b;
            f64::sqrt(acc)
        })
        .collect();
    let (first, last) = (sqrt[0], sqrt[sqrt.len() - 1]);
    let scale = first / (first - last);
    let alphas_bar: Vec<f64> = sqrt.iter().map(|s| ((s - last) * scale).powi(2)).collect();
    let mut out = Vec::with_capacity(betas.len());
    out.push(1.0 - alphas_bar[0]);
    out.extend(alphas_bar.windows(2).map(|w| 1.0 - w[1] / w[0]));
    out
}

/// diffusers' float32 `alphas_cumprod` for `training` (see [`float32_tables`]), without the σ
/// table (LCM and the DDIM-style samplers need `ᾱ` only, and accept `ᾱ_{T−1} = 0`).
pub(crate) fn float32_alphas_cumprod(training: &TrainingConfig, terminal_fix: bool) -> Result<Vec<f32>> {
    if training.num_train_timesteps == 0 && !matches!(training.beta_schedule, BetaSchedule::Trained(_)) {
        return Err(Error::InvalidConfig("num_train_timesteps must be at least 1".into()));
    }
    if training.num_train_timesteps > crate::MAX_TRAIN_TIMESTEPS {
        return Err(Error::InvalidConfig(format!(
            "num_train_timesteps = {}: at most {} are supported",
            training.num_train_timesteps,
            crate::MAX_TRAIN_TIMESTEPS
        )));
    }
    let mut betas = betas_f32(&training.beta_schedule, training.num_train_timesteps);
    if betas.is_empty() || betas.len() > crate::MAX_TRAIN_TIMESTEPS {
        return Err(Error::InvalidConfig(format!("the beta schedule has {} entries", betas.len())));
    }
    if training.rescale_betas_zero_snr {
        if betas.len() < 2 {
            return Err(Error::InvalidConfig("rescale_betas_zero_snr needs at least 2 training timesteps".into()));
        }
        betas = rescale_zero_terminal_snr_f32(&betas);
    }
    let mut ac = cumprod_f32(betas.iter().map(|b| 1.0 - b));
    if training.rescale_betas_zero_snr && terminal_fix {
        if let Some(last) = ac.last_mut() {
            *last = 2f32.powi(-24);
        }
    }
    Ok(ac)
}

/// diffusers' float32 tables for `training`. `terminal_fix` sets `ᾱ_{T−1} = 2⁻²⁴` when the
/// betas are rescaled to zero terminal SNR (diffusers' σ-space samplers do, so that `σ_{T−1}` is
/// finite: ≈ 4096).
///
/// Errors if a float32 `ᾱ` is 0 or not finite where σ is needed (betas too large for float32).
pub(crate) fn float32_tables(training: &TrainingConfig, terminal_fix: bool) -> Result<Float32Tables> {
    let ac = float32_alphas_cumprod(training, terminal_fix)?;
    let mut sigmas = Vec::with_capacity(ac.len());
    let mut log_sigmas = Vec::with_capacity(ac.len());
    for (t, &a) in ac.iter().enumerate() {
        let sigma = ((1.0 - a) / a).sqrt();
        if !(sigma.is_finite() && sigma > 0.0) {
            return Err(Error::InvalidConfig(format!(
                "alphas_cumprod is {a} at timestep {t} in float32, so σ = {sigma} there; diffusers' float32 \
                 σ schedule needs 0 < ᾱ < 1 (check the betas, or rescale_betas_zero_snr)"
            )));
        }
        sigmas.push(f64::from(sigma));
        // numpy's float32 log, as `np.log(sigmas)` in diffusers' set_timesteps.
        log_sigmas.push(f64::from(numpy_log_f32(sigma)));
    }
    Ok(Float32Tables { alphas_cumprod: ac.into_iter().map(f64::from).collect(), sigmas, log_sigmas })
}

/// numpy's float32 `log` as its AVX2 / AVX-512F kernels compute it (`simd_log_FLOAT`, numpy ≥
/// 1.18 on x86-64): the mantissa `m ∈ (√½, √2]` and exponent `e` of `x`, a degree-5/5 rational
/// approximation of `log(1 + y)` at `y = m − 1` evaluated by Horner's rule with fused
/// multiply-adds, then `e·ln 2 + P/Q` fused. It is not correctly rounded (up to 3.8 ulps), and
/// diffusers' `_sigma_to_t` reads its values: a one-ulp difference in `log σ_t` moves a Karras
/// timestep by several float32 ulps. For positive normal `x`; anything else takes `ln` rounded.
pub(crate) fn numpy_log_f32(x: f32) -> f32 {
    const P: [&str; 6] = [
        "0.0",
        "9.999999999999998702752e-01",
        "2.112677543073053063722e+00",
        "1.480000633576506585156e+00",
        "3.808837741388407920751e-01",
        "2.589979117907922693523e-02",
    ];
    const Q: [&str; 6] = [
        "1.0",
        "2.612677543073109236779e+00",
        "2.453006071784736363091e+00",
        "9.864942958519418960339e-01",
        "1.546476374983906719538e-01",
        "5.875095403124574342950e-03",
    ];
    if !(x.is_normal() && x > 0.0) {
        return (f64::from(x)).ln() as f32;
    }
    // The decimal constants as the C compiler rounds them to float32.
    let c = |s: &str| s.parse::<f32>().unwrap_or(f32::NAN);
    let bits = x.to_bits();
    let mut e = ((bits >> 23) as i32 - 126) as f32;
    let mut m = f32::from_bits((bits & 0x007F_FFFF) | 0x3F00_0000);
    if m <= std::f32::consts::FRAC_1_SQRT_2 {
        m += m;
        e -= 1.0;
    }
    let y = m - 1.0;
    let mut num = c(P[5]).mul_add(y, c(P[4]));
    let mut den = c(Q[5]).mul_add(y, c(Q[4]));
    for k in (0..4).rev() {
        num = num.mul_add(y, c(P[k]));
        den = den.mul_add(y, c(Q[k]));
    }
    e.mul_add(std::f32::consts::LN_2, num / den)
}

/// numpy's float64 `linspace(start, stop, num, endpoint)`: `start + i · step`, the endpoint set
/// exactly.
pub(crate) fn numpy_linspace(start: f64, stop: f64, num: usize, endpoint: bool) -> Vec<f64> {
    let div = if endpoint { num.saturating_sub(1) } else { num };
    let delta = stop - start;
    let step = if div > 0 { delta / div as f64 } else { f64::NAN };
    let mut out: Vec<f64> = (0..num)
        .map(|i| {
            if div > 0 && step != 0.0 {
                i as f64 * step + start
            } else {
                i as f64 / div.max(1) as f64 * delta + start
            }
        })
        .collect();
    if endpoint && num > 1 {
        out[num - 1] = stop;
    }
    out
}

/// diffusers' `_sigma_to_t`: the fractional training timestep of σ, interpolated linearly in
/// `log σ` between the two training timesteps around it (clipped to the table).
pub(crate) fn sigma_to_t(sigma: f64, log_sigmas: &[f64]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let n = log_sigmas.len();
    if n < 2 {
        return 0.0;
    }
    // cumsum(dists >= 0).argmax(): the last index with log σ_j <= log σ (0 if none).
    let low = log_sigmas.iter().rposition(|&l| log_sigma - l >= 0.0).unwrap_or(0).min(n - 2);
    let (lo, hi) = (log_sigmas[low], log_sigmas[low + 1]);
    let w = ((lo - log_sigma) / (lo - hi)).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * (low + 1) as f64
}

/// Karras et al.'s σ (ρ = 7) from σ_max down to σ_min, `n` values.
pub(crate) fn karras(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    let rho = 7.0;
    let (min_inv, max_inv) = (sigma_min.powf(1.0 / rho), sigma_max.powf(1.0 / rho));
    numpy_linspace(0.0, 1.0, n, true).into_iter().map(|r| (max_inv + r * (min_inv - max_inv)).powf(rho)).collect()
}

/// σ uniform in `log σ` from σ_max down to σ_min, `n` values.
pub(crate) fn exponential(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    numpy_linspace(sigma_max.ln(), sigma_min.ln(), n, true).into_iter().map(f64::exp).collect()
}

/// σ placed by the Beta(0.6, 0.6) quantiles, from σ_max down to σ_min, `n` values.
pub(crate) fn beta_sigmas(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    numpy_linspace(0.0, 1.0, n, true)
        .into_iter()
        .map(|p| sigma_min + beta_ppf(1.0 - p, 0.6, 0.6) * (sigma_max - sigma_min))
        .collect()
}

/// DPM-Solver's `use_lu_lambdas` (Lu et al. 2022): `log σ` uniform from its largest to its
/// smallest value (ρ = 1), `n` values of σ.
pub(crate) fn lu_sigmas(log_sigma_min: f64, log_sigma_max: f64, n: usize) -> Vec<f64> {
    numpy_linspace(0.0, 1.0, n, true)
        .into_iter()
        .map(|r| (log_sigma_max + r * (log_sigma_min - log_sigma_max)).exp())
        .collect()
}

/// `ln Γ(x)` for `x > 0` (Lanczos, g = 7, n = 9; relative error ≈ 1e-15).
fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x) Γ(1 − x) = π / sin(πx).
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + G + 0.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// The continued fraction of the incomplete beta function (modified Lentz).
fn beta_continued_fraction(x: f64, a: f64, b: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..=300 {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < 1e-16 {
            break;
        }
    }
    h
}

/// The regularised incomplete beta function `I_x(a, b)`.
fn beta_cdf(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    if x < (a + 1.0) / (a + b + 2.0) {
        ln_front.exp() * beta_continued_fraction(x, a, b) / a
    } else {
        1.0 - ln_front.exp() * beta_continued_fraction(1.0 - x, b, a) / b
    }
}

/// The quantile function of Beta(a, b) (scipy's `beta.ppf`): bisection to a bracket, then
/// safeguarded Newton steps to full double precision.
pub(crate) fn beta_ppf(p: f64, a: f64, b: f64) -> f64 {
    if p <= 0.0 {
        return 0.0;
    }
    if p >= 1.0 {
        return 1.0;
    }
    let ln_beta = ln_gamma(a) + ln_gamma(b) - ln_gamma(a + b);
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    let mut x = 0.5;
    for _ in 0..200 {
        let f = beta_cdf(x, a, b) - p;
        if f == 0.0 {
            return x;
        }
        if f < 0.0 {
            lo = x;
        } else {
            hi = x;
        }
        let pdf = ((a - 1.0) * x.ln() + (b - 1.0) * (1.0 - x).ln() - ln_beta).exp();
        let newton = x - f / pdf;
        let next = if newton.is_finite() && newton > lo && newton < hi { newton } else { 0.5 * (lo + hi) };
        if (next - x).abs() <= 1e-17 * x.max(1e-300) || hi - lo <= f64::EPSILON * hi {
            return next;
        }
        x = next;
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::{PredictionType, TimestepSpacing};

    #[test]
    fn beta_ppf_matches_scipy() {
        // scipy 1.17.1: scipy.stats.beta.ppf(p, 0.6, 0.6)
        let cases = [
            (0.9, 0.960_415_594_411_219_2),
            (0.5, 0.500_000_000_000_000_1),
            (0.1, 0.039_584_405_588_780_85),
            (0.01, 0.000_861_238_821_542_905_9),
            (0.999, 0.999_981_441_261_482_6),
            (0.3, 0.234_017_003_875_235_72),
        ];
        for (p, expected) in cases {
            let got = beta_ppf(p, 0.6, 0.6);
            assert!((got - expected).abs() <= 4e-15 * expected.max(1e-3), "ppf({p}) = {got:e}, scipy {expected:e}");
        }
    }

    #[test]
    fn sigma_to_t_inverts_the_table() {
        let t = TrainingConfig::stable_diffusion(PredictionType::Epsilon, TimestepSpacing::Leading, 0);
        let tables = float32_tables(&t, true).unwrap();
        for j in [0usize, 1, 17, 500, 998, 999] {
            let got = sigma_to_t((tables.log_sigmas[j]).exp(), &tables.log_sigmas);
            assert!((got - j as f64).abs() < 1e-6, "{j}: {got}");
        }
        // Outside the table: clipped.
        assert_eq!(sigma_to_t(1e-6, &tables.log_sigmas), 0.0);
        assert_eq!(sigma_to_t(1e6, &tables.log_sigmas), 999.0);
    }

    #[test]
    fn zero_snr_tables_end_at_sigma_4096() {
        let mut t = TrainingConfig::stable_diffusion(PredictionType::VPrediction, TimestepSpacing::Trailing, 0);
        t.rescale_betas_zero_snr = true;
        let tables = float32_tables(&t, true).unwrap();
        // diffusers: EulerDiscreteScheduler(SD betas, rescale_betas_zero_snr=True).sigmas[0] is
        // √((1 − 2⁻²⁴)/2⁻²⁴) in float32.
        assert_eq!(tables.sigmas[999] as f32, 16_777_215f32.sqrt());
        assert!(float32_tables(&t, false).is_err());
    }

    #[test]
    fn numpy_float32_log_is_bit_exact() {
        // (x, np.log(np.float32 x)) bit patterns, numpy 2.4 on x86-64 (AVX-512F / AVX2): SD σ
        // table entries where numpy is not correctly rounded, and random ones.
        let cases = [
            (1034607053u32, 3223254796u32),
            (1037797644, 3222203189),
            (1043027058, 3219446090),
            (1044216970, 3218601130),
            (1050039505, 3214728352),
            (1053083336, 3212102964),
            (1142898066, 1087282526),
            (1132913867, 1085480914),
            (1109648863, 1080926455),
            (1099184797, 1077118631),
            (1147416669, 1088036994),
        ];
        for (x, expected) in cases {
            let got = numpy_log_f32(f32::from_bits(x));
            assert_eq!(
                got.to_bits(),
                expected,
                "log({}) = {got}, numpy {}",
                f32::from_bits(x),
                f32::from_bits(expected)
            );
        }
    }

    #[test]
    fn numpy_linspace_endpoints() {
        assert_eq!(numpy_linspace(0.0, 1.0, 5, true), vec![0.0, 0.25, 0.5, 0.75, 1.0]);
        assert_eq!(numpy_linspace(0.0, 10.0, 4, false), vec![0.0, 2.5, 5.0, 7.5]);
        assert_eq!(numpy_linspace(3.0, 7.0, 1, true), vec![3.0]);
    }
}
