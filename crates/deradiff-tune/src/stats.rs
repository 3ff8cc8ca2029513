//! Agreement statistics between original values `x_i` (models aligned from scratch) and their
//! approximations `y_i` (DeRaDiff): the paper's Table 5.
//!
//! With `d_i = y_i − x_i`:
//!
//! | statistic | definition |
//! | --- | --- |
//! | MAE | `1/n Σ |d_i|` |
//! | MAE (bootstrap mean) | `1/B Σ_b MAE⁽ᵇ⁾` over B resamples of the n pairs with replacement |
//! | MAE 95 % CI | 2.5th and 97.5th percentiles of the `MAE⁽ᵇ⁾` (linear interpolation, numpy's default) |
//! | RMSE | `√(1/n Σ d_i²)` |
//! | median absolute error | `median |d_i|` |
//! | Bland–Altman bias | `d̄ = 1/n Σ d_i` |
//! | SD of differences | `s_d = √(1/(n−1) Σ (d_i − d̄)²)` |
//! | limits of agreement | `d̄ ± 1.96 s_d` |
//! | relative | `100 · M / x̄_orig` (x̄_orig: the originals' mean, or a given mean of a larger set) |
//!
//! # The bootstrap stream
//!
//! Resampling indices come from a documented, portable generator so that any language can
//! reproduce a bootstrap bit for bit: SplitMix64 seeded with `seed`, one draw per index,
//! `index = ⌊draw · n / 2⁶⁴⌋` (the high 64 bits of the 128-bit product), resample after
//! resample, index after index. `scripts/gen_tune_fixtures.py` implements the same stream in
//! Python and checks it against numpy's own bootstrap.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::results::SweepRow;

/// The portable generator of the bootstrap (SplitMix64, Steele et al. 2014).
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// An index in `0..n` (`n ≥ 1`): the high word of `draw · n`.
    pub fn index(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

/// A percentile bootstrap interval of the mean of `values` (`confidence`, e.g. 0.95: the 2.5th
/// and 97.5th percentiles of `resamples` resampled means), seeded for reproducibility. One value
/// (or none resampled) gives the mean at both ends; no values give `None`.
pub fn bootstrap_mean_interval(values: &[f64], resamples: usize, seed: u64, confidence: f64) -> Option<(f64, f64)> {
    if values.is_empty() {
        return None;
    }
    let n = values.len();
    let mean = values.iter().sum::<f64>() / n as f64;
    if n == 1 || resamples == 0 {
        return Some((mean, mean));
    }
    // The resampled means are the bootstrap stream of the module docs (as for the MAEs).
    let mut means = bootstrap_maes(values, resamples.min(MAX_BOOTSTRAP), seed);
    means.sort_by(f64::total_cmp);
    let tail = ((1.0 - confidence.clamp(0.0, 1.0)) / 2.0).max(0.0);
    Some((quantile_sorted(&means, tail), quantile_sorted(&means, 1.0 - tail)))
}

/// Settings of [`agreement`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AgreementConfig {
    /// Number of bootstrap resamples B (≥ 1).
    pub bootstrap: usize,
    /// Seed of the bootstrap stream.
    pub seed: u64,
    /// Coverage of the bootstrap interval (0.95: the 2.5th and 97.5th percentiles).
    pub confidence: f64,
    /// Multiplier of the SD in the limits of agreement (1.96).
    pub loa_z: f64,
    /// The mean the relative values divide by (`None`: the mean of the originals given).
    pub reference_mean: Option<f64>,
}

impl Default for AgreementConfig {
    /// B = 10 000, seed 0, 95 %, 1.96, the originals' mean.
    fn default() -> Self {
        Self { bootstrap: 10_000, seed: 0, confidence: 0.95, loa_z: 1.96, reference_mean: None }
    }
}

/// A statistic and its value relative to the originals' mean (`100 · value / x̄_orig` percent;
/// `None` where that mean is 0).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    /// The value, on the data's scale.
    pub value: f64,
    /// The value in percent of the originals' mean.
    pub percent: Option<f64>,
}

/// The agreement statistics of Table 5 (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgreementStats {
    /// Number of pairs n.
    pub n: usize,
    /// The mean the relative values divide by.
    pub reference_mean: f64,
    /// Mean absolute error.
    pub mae: Stat,
    /// Mean of the bootstrap MAEs.
    pub mae_bootstrap_mean: Stat,
    /// Lower end of the bootstrap interval of the MAE.
    pub mae_ci_low: Stat,
    /// Upper end of the bootstrap interval of the MAE.
    pub mae_ci_high: Stat,
    /// Root mean squared error.
    pub rmse: Stat,
    /// Median absolute error.
    pub median_abs: Stat,
    /// Largest absolute error.
    pub max_abs: Stat,
    /// Bland–Altman bias (mean of y − x).
    pub bias: Stat,
    /// Sample SD of the differences.
    pub sd_diff: Stat,
    /// Lower limit of agreement, bias − z·SD.
    pub loa_low: Stat,
    /// Upper limit of agreement, bias + z·SD.
    pub loa_high: Stat,
    /// The settings used.
    pub config: AgreementConfig,
}

/// The `q`-quantile (`q ∈ [0, 1]`) of sorted data with linear interpolation, as numpy's
/// default `np.quantile(..., method="linear")` (including its two-sided interpolation form).
pub fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len();
    if n == 0 {
        return f64::NAN;
    }
    let pos = q * (n - 1) as f64;
    let lo = (pos.floor() as usize).min(n - 1);
    let hi = (lo + 1).min(n - 1);
    let t = pos - lo as f64;
    let (a, b) = (sorted[lo], sorted[hi]);
    // numpy's _lerp: a + (b − a)·t, computed from the nearer end.
    if t >= 0.5 {
        b - (b - a) * (1.0 - t)
    } else {
        a + (b - a) * t
    }
}

/// The median (mean of the two middle values for even n).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// The B bootstrap MAEs of `abs_diff` (the stream of the module docs), in draw order: the means
/// of B resamples of the values given (also those of [`bootstrap_mean_interval`]).
pub fn bootstrap_maes(abs_diff: &[f64], resamples: usize, seed: u64) -> Vec<f64> {
    let n = abs_diff.len();
    let mut rng = SplitMix64::new(seed);
    (0..resamples)
        .map(|_| {
            let mut s = 0.0;
            for _ in 0..n {
                s += abs_diff[rng.index(n)];
            }
            s / n as f64
        })
        .collect()
}

/// Agreement between `original` (x) and `approx` (y), paired by index (see the module docs).
/// Errors for fewer than two pairs, unequal lengths, non-finite values or bad settings.
///
/// ```
/// use deradiff_tune::{agreement, AgreementConfig};
/// let x = [1.0, 2.0, 3.0, 4.0];
/// let y = [1.1, 1.9, 3.2, 4.0];
/// let s = agreement(&x, &y, &AgreementConfig::default())?;
/// assert!((s.mae.value - 0.1).abs() < 1e-12);
/// assert!((s.mae.percent.unwrap() - 4.0).abs() < 1e-9); // 0.1 / mean 2.5
/// assert!((s.bias.value - 0.05).abs() < 1e-12);
/// # Ok::<(), deradiff_tune::Error>(())
/// ```
pub fn agreement(original: &[f64], approx: &[f64], config: &AgreementConfig) -> Result<AgreementStats> {
    if original.len() != approx.len() {
        return Err(Error::InvalidArgument(format!(
            "{} original values but {} approximations: the statistics need pairs",
            original.len(),
            approx.len()
        )));
    }
    let n = original.len();
    if n < 2 {
        return Err(Error::InvalidArgument(format!("{n} pair(s): the SD of the differences needs at least 2 pairs")));
    }
    for (what, v) in [("original", original), ("approximation", approx)] {
        if let Some((i, x)) = v.iter().enumerate().find(|(_, x)| !x.is_finite()) {
            return Err(Error::NonFiniteReward { reward: what.into(), value: *x, context: format!("pair {i}") });
        }
    }
    if config.bootstrap == 0 {
        return Err(Error::InvalidArgument("the bootstrap needs at least 1 resample".into()));
    }
    if config.bootstrap > MAX_BOOTSTRAP {
        return Err(Error::InvalidArgument(format!(
            "{} bootstrap resamples: at most {MAX_BOOTSTRAP} are allowed (10 000 is the default and plenty for a 95 % CI)",
            config.bootstrap
        )));
    }
    if !(config.confidence > 0.0 && config.confidence < 1.0) {
        return Err(Error::InvalidArgument(format!("confidence {} must lie in (0, 1)", config.confidence)));
    }
    if !(config.loa_z.is_finite() && config.loa_z >= 0.0) {
        return Err(Error::InvalidArgument(format!("the limits' multiplier {} must be finite and ≥ 0", config.loa_z)));
    }
    let nf = n as f64;
    let reference_mean = match config.reference_mean {
        Some(m) if m.is_finite() => m,
        Some(m) => return Err(Error::InvalidArgument(format!("the reference mean {m} is not finite"))),
        None => original.iter().sum::<f64>() / nf,
    };
    let stat = |value: f64| Stat { value, percent: (reference_mean != 0.0).then(|| 100.0 * value / reference_mean) };
    let d: Vec<f64> = approx.iter().zip(original).map(|(y, x)| y - x).collect();
    let abs: Vec<f64> = d.iter().map(|v| v.abs()).collect();
    let mae = abs.iter().sum::<f64>() / nf;
    let rmse = (d.iter().map(|v| v * v).sum::<f64>() / nf).sqrt();
    let bias = d.iter().sum::<f64>() / nf;
    let sd = (d.iter().map(|v| (v - bias) * (v - bias)).sum::<f64>() / (nf - 1.0)).sqrt();
    let mut boot = bootstrap_maes(&abs, config.bootstrap, config.seed);
    let boot_mean = boot.iter().sum::<f64>() / boot.len() as f64;
    boot.sort_by(f64::total_cmp);
    let tail = (1.0 - config.confidence) / 2.0;
    let stats = AgreementStats {
        n,
        reference_mean,
        mae: stat(mae),
        mae_bootstrap_mean: stat(boot_mean),
        mae_ci_low: stat(quantile_sorted(&boot, tail)),
        mae_ci_high: stat(quantile_sorted(&boot, 1.0 - tail)),
        rmse: stat(rmse),
        median_abs: stat(median(&abs)),
        max_abs: stat(abs.iter().copied().fold(0.0, f64::max)),
        bias: stat(bias),
        sd_diff: stat(sd),
        loa_low: stat(bias - config.loa_z * sd),
        loa_high: stat(bias + config.loa_z * sd),
        config: *config,
    };
    stats.check_finite()?;
    Ok(stats)
}

/// Most bootstrap resamples [`agreement`] takes (each costs one pass over the pairs and 8 bytes).
pub const MAX_BOOTSTRAP: usize = 1_000_000;

impl AgreementStats {
    /// Every statistic (and its percentage) is a finite number, or an
    /// [`Error::NonFiniteStatistic`] naming the first that is not (rewards so large that their
    /// squares or sums overflow f64, for example).
    pub fn check_finite(&self) -> Result<()> {
        let all = [
            ("reference mean", &Stat { value: self.reference_mean, percent: None }),
            ("MAE", &self.mae),
            ("MAE bootstrap mean", &self.mae_bootstrap_mean),
            ("MAE CI low", &self.mae_ci_low),
            ("MAE CI high", &self.mae_ci_high),
            ("RMSE", &self.rmse),
            ("median absolute error", &self.median_abs),
            ("maximum absolute error", &self.max_abs),
            ("bias", &self.bias),
            ("SD of differences", &self.sd_diff),
            ("limit of agreement low", &self.loa_low),
            ("limit of agreement high", &self.loa_high),
        ];
        for (name, s) in all {
            let pct_ok = s.percent.is_none_or(f64::is_finite);
            if !s.value.is_finite() || !pct_ok {
                return Err(Error::NonFiniteStatistic {
                    statistic: name.into(),
                    value: if s.value.is_finite() { s.percent.unwrap_or(s.value) } else { s.value },
                });
            }
        }
        Ok(())
    }

    /// The table as Markdown: one line per statistic, value and percent of the originals' mean.
    pub fn to_markdown(&self) -> String {
        let pct = |s: &Stat| s.percent.map(|p| format!("{p:.3} %")).unwrap_or_else(|| "n/a".into());
        let mut out = String::from("| metric | value | relative to mean(original) |\n| --- | --- | --- |\n");
        let mut line = |name: &str, s: &Stat| out.push_str(&format!("| {name} | {:.6e} | {} |\n", s.value, pct(s)));
        line("mean absolute error (MAE)", &self.mae);
        line("MAE (bootstrap mean)", &self.mae_bootstrap_mean);
        let ci = format!("MAE {:.0} % CI (bootstrap), low", 100.0 * self.config.confidence);
        line(&ci, &self.mae_ci_low);
        let ci = format!("MAE {:.0} % CI (bootstrap), high", 100.0 * self.config.confidence);
        line(&ci, &self.mae_ci_high);
        line("root mean squared error (RMSE)", &self.rmse);
        line("median absolute error", &self.median_abs);
        line("maximum absolute error", &self.max_abs);
        line("Bland–Altman mean difference (mean of y − x)", &self.bias);
        line("Bland–Altman SD of differences", &self.sd_diff);
        line(&format!("limit of agreement, low (bias − {} SD)", self.config.loa_z), &self.loa_low);
        line(&format!("limit of agreement, high (bias + {} SD)", self.config.loa_z), &self.loa_high);
        out.push_str(&format!(
            "\nn = {} pairs; mean(original) = {}; bootstrap: {} resamples, seed {}\n",
            self.n, self.reference_mean, self.config.bootstrap, self.config.seed
        ));
        out
    }
}

/// How [`pair_rows`] matches the rows of two result sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PairBy {
    /// The same λ and prompt id.
    LambdaAndPrompt,
    /// The same prompt id (each set must hold one row per prompt, e.g. one λ each).
    Prompt,
}

/// Paired values of one reward from two result sets (for [`crate::agreement`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pairs {
    /// One label per pair (`λ=…, <prompt>` or the prompt id).
    pub labels: Vec<String>,
    /// The first set's mean reward (the originals `x`).
    pub original: Vec<f64>,
    /// The second set's mean reward (the approximations `y`).
    pub approx: Vec<f64>,
}

/// Pairs the mean `reward` of `original` and `approx` rows by key, in `original`'s order. Errors
/// for a key that appears twice in a set, a row without a partner, or a row without `reward`.
pub fn pair_rows(original: &[SweepRow], approx: &[SweepRow], reward: &str, by: PairBy) -> Result<Pairs> {
    let key = |r: &SweepRow| match by {
        // −0 and 0 are one λ, as in a sweep's own keys.
        PairBy::LambdaAndPrompt => format!("λ={}, {}, seed {}", r.lambda + 0.0, r.prompt, r.seed),
        PairBy::Prompt => format!("{}, seed {}", r.prompt, r.seed),
    };
    let index = |rows: &[SweepRow], which: &str| -> Result<std::collections::HashMap<String, f64>> {
        let mut map = std::collections::HashMap::new();
        for r in rows {
            let v = r.reward(reward).ok_or_else(|| {
                Error::InvalidArgument(format!("a row of the {which} set ({}) has no reward {reward:?}", key(r)))
            })?;
            if map.insert(key(r), v.mean).is_some() {
                return Err(Error::InvalidArgument(format!(
                    "the {which} set has two rows for {}; pair by λ and prompt, or keep one λ per set",
                    key(r)
                )));
            }
        }
        Ok(map)
    };
    let b = index(approx, "approximation")?;
    index(original, "original")?;
    let mut pairs = Pairs { labels: Vec::new(), original: Vec::new(), approx: Vec::new() };
    for r in original {
        let k = key(r);
        let y = *b.get(&k).ok_or_else(|| {
            Error::InvalidArgument(format!("the approximation set has no row for {k} of the original set"))
        })?;
        pairs.original.push(r.reward(reward).map(|s| s.mean).unwrap_or(f64::NAN));
        pairs.approx.push(y);
        pairs.labels.push(k);
    }
    if pairs.labels.len() != b.len() {
        return Err(Error::InvalidArgument(format!(
            "the approximation set has {} rows without a partner in the original set",
            b.len() - pairs.labels.len()
        )));
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_the_reference_implementation() {
        // Vigna's splitmix64.c: seed 0 and seed 1234567.
        let mut r = SplitMix64::new(0);
        assert_eq!(
            [r.next_u64(), r.next_u64(), r.next_u64()],
            [0xe220a8397b1dcdaf, 0x6e789e6aa1b965f4, 0x06c45d188009454f]
        );
        let mut r = SplitMix64::new(1234567);
        assert_eq!([r.next_u64(), r.next_u64()], [6457827717110365317, 3203168211198807973]);
        let mut r = SplitMix64::new(5);
        assert!((0..10_000).all(|_| r.index(7) < 7));
        assert!((0..100).all(|_| r.index(1) == 0));
    }

    #[test]
    fn quantiles_and_medians_follow_numpy() {
        let v = [1.0, 2.0, 4.0, 8.0];
        assert_eq!(quantile_sorted(&v, 0.0), 1.0);
        assert_eq!(quantile_sorted(&v, 1.0), 8.0);
        assert_eq!(quantile_sorted(&v, 0.5), 3.0); // np.quantile([1,2,4,8], 0.5)
        assert!((quantile_sorted(&v, 0.025) - 1.075).abs() < 1e-15); // np.quantile(..., 0.025)
        assert!((quantile_sorted(&v, 0.975) - 7.7).abs() < 1e-12);
        assert_eq!(quantile_sorted(&[3.0], 0.3), 3.0);
        assert!(quantile_sorted(&[], 0.5).is_nan());
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
