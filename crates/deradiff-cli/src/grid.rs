//! The grids a run covers, from their options: the λ values of a sweep (`--lambdas`,
//! `--lambda-range`), the target βs of the demo (`--target-betas`, or `--lambdas` turned into
//! βs) and the noise seeds of every prompt (`--seeds`).

use std::collections::HashSet;

use deradiff_rewards::MAX_PROMPTS;

use crate::error::{CliError, Context, Result};

/// The λ grid of a sweep without `--lambdas` or `--lambda-range`.
const DEFAULT_LAMBDA_RANGE: &str = "0:2:9";

/// The λ grid of `deradiff sweep`: `--lambdas` as given, else the even grid of `--lambda-range`
/// (default 0:2:9).
pub(crate) fn sweep_lambdas(lambdas: Option<&[f64]>, range: Option<&str>) -> Result<Vec<f64>> {
    match (lambdas, range) {
        (Some(l), _) => Ok(l.to_vec()),
        (None, Some(r)) => parse_range(r),
        (None, None) => parse_range(DEFAULT_LAMBDA_RANGE),
    }
}

/// `--lambda-range FROM:TO:COUNT`: COUNT evenly spaced λ from FROM to TO.
fn parse_range(text: &str) -> Result<Vec<f64>> {
    let bad = || CliError::usage(format!("--lambda-range {text}: expected FROM:TO:COUNT, e.g. 0:2:9"));
    let parts: Vec<&str> = text.split(':').collect();
    let [from, to, count] = parts.as_slice() else { return Err(bad()) };
    let from: f64 = from.trim().parse().map_err(|_| bad())?;
    let to: f64 = to.trim().parse().map_err(|_| bad())?;
    let count: usize = count.trim().parse().map_err(|_| bad())?;
    if from > to {
        return Err(CliError::usage(format!("--lambda-range {text}: the range is reversed ({from} > {to})")));
    }
    deradiff_tune::linspace(from, to, count).usage_context(format!("--lambda-range {text}"))
}

/// The demo's target βs: `--lambdas` turned into βs (target β = anchor β / λ, λ = 0 the
/// reference at β = ∞), else `--target-betas`; every one positive.
pub(crate) fn target_betas(anchor_beta: f64, lambdas: Option<&[f64]>, target_betas: &[f64]) -> Result<Vec<f64>> {
    match lambdas {
        Some(lambdas) => {
            if lambdas.is_empty() {
                return Err(CliError::usage("--lambdas is empty; give at least one λ"));
            }
            let mut betas = Vec::with_capacity(lambdas.len());
            for &l in lambdas {
                if !(l >= 0.0 && l.is_finite()) {
                    return Err(CliError::usage(format!(
                        "--lambdas: λ = {l} gives the target β = {} / {l} = {}; λ must be finite and ≥ 0 so \
                         that every target β is positive",
                        anchor_beta,
                        anchor_beta / l
                    )));
                }
                betas.push(if l == 0.0 { f64::INFINITY } else { anchor_beta / l });
            }
            Ok(betas)
        }
        None => {
            if target_betas.is_empty() {
                return Err(CliError::usage("--target-betas is empty; give at least one β"));
            }
            if let Some(b) = target_betas.iter().find(|b| b.is_nan() || **b <= 0.0) {
                return Err(CliError::usage(format!(
                    "--target-betas: target β = {b} (λ = {}); every target β must be positive",
                    anchor_beta / b
                )));
            }
            Ok(target_betas.to_vec())
        }
    }
}

/// `--seeds`: `A..B` (B excluded) or a comma-separated list; at most MAX_PROMPTS seeds.
pub(crate) fn parse_seeds(text: &str) -> Result<Vec<u64>> {
    let bad = || CliError::usage(format!("--seeds {text}: expected a range A..B (e.g. 0..4) or a list 0,7,9"));
    let seeds: Vec<u64> = if let Some((a, b)) = text.split_once("..") {
        let (a, b): (u64, u64) = (a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?);
        if b <= a {
            return Err(CliError::usage(format!("--seeds {text}: the range is empty (B must exceed A)")));
        }
        if b - a > MAX_PROMPTS as u64 {
            return Err(CliError::usage(format!("--seeds {text}: at most {MAX_PROMPTS} seeds")));
        }
        // A range holds each seed once.
        return Ok((a..b).collect());
    } else {
        text.split(',').map(|t| t.trim().parse::<u64>().map_err(|_| bad())).collect::<Result<_>>()?
    };
    let mut seen = HashSet::new();
    if let Some(dup) = seeds.iter().find(|s| !seen.insert(**s)) {
        return Err(CliError::usage(format!("--seeds {text}: seed {dup} appears twice")));
    }
    Ok(seeds)
}
