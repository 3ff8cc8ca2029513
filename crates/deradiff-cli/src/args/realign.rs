//! How λ realigns (`--realign`) and, for `deradiff sample`, the weights of the models
//! (`--lambda`, `--weights`), checked in the words of the command line.

use deradiff_core::Realigner;
use deradiff_tune::Realignment;

use crate::error::{CliError, Context, Result};

/// How `--realign` realigns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum RealignArg {
    /// The geometric mixture of the models' posteriors at every step (DeRaDiff).
    Posterior,
    /// LoRA adapters merged into the reference's weights at λ (weight-space baseline).
    Weights,
}

impl RealignArg {
    /// The sweep's realignment.
    pub(crate) fn realignment(self) -> Realignment {
        match self {
            RealignArg::Posterior => Realignment::Posterior,
            RealignArg::Weights => Realignment::Weights,
        }
    }
}

/// The realignment options of `deradiff sample`: how, and with which weights.
#[derive(Debug, clap::Args)]
pub(crate) struct RealignArgs {
    /// How λ realigns: `posterior` (DeRaDiff: the geometric mixture of the models' Gaussian
    /// posteriors at every step) or `weights` (the weight-space baseline, LoRA --aligned models
    /// only: one UNet with W + λ·B·A merged, sampled from the same seed).
    #[arg(long, value_enum, default_value = "posterior")]
    pub(crate) realign: RealignArg,
    /// With one aligned model: comma-separated λs, one image each (weights [1−λ, λ]; λ = 0 is the
    /// reference, 1 the aligned model, > 1 extrapolates, < 0 moves away from it). With K aligned
    /// models: K values λ_i, one image (weights [1 − Σλ_i, λ_1, …, λ_K]). Default 0.5 with one
    /// aligned model.
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true, conflicts_with = "weights")]
    lambda: Option<Vec<f64>>,
    /// The full weight vector instead of λ: comma-separated, the reference's weight first, then
    /// one per --aligned model in order; the weights must sum to 1 (e.g. -0.5,1.5).
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    weights: Option<Vec<f64>>,
}

/// One sampling setting: a realigner and its label.
pub(crate) struct Setting {
    /// The grid label: `λ = 0.5`, `w = [-0.5, 1.5]`, `reference`.
    pub(crate) label: String,
    /// The file-name tag: `l0.5`, `weights`, `multi`, `reference`.
    pub(crate) tag: String,
    /// The weights of the models at every step.
    pub(crate) realigner: Realigner,
}

/// `values` joined by `separator`.
fn joined(values: &[f64], separator: &str) -> String {
    values.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(separator)
}

/// `values` as the command line lists them: `0.5,1`.
fn list(values: &[f64]) -> String {
    joined(values, ",")
}

/// Checks `--weights` against the `k` aligned models, in the words of the command line (the
/// same rule as [`Realigner::new`]: finite, summing to 1 within 1e-9 relative).
fn check_weights(w: &[f64], k: usize) -> Result<()> {
    if w.len() != k + 1 {
        return Err(CliError::usage(format!(
            "--weights {} has {} value{} but there {} {k} --aligned model{}: give {}, the reference's weight first, \
             then one per --aligned model in order",
            list(w),
            w.len(),
            if w.len() == 1 { "" } else { "s" },
            if k == 1 { "is" } else { "are" },
            if k == 1 { "" } else { "s" },
            k + 1
        )));
    }
    if let Some((i, x)) = w.iter().enumerate().find(|(_, x)| !x.is_finite()) {
        return Err(CliError::usage(format!(
            "--weights: value {} is {x}; every weight must be a finite number",
            i + 1
        )));
    }
    let sum: f64 = w.iter().sum();
    let scale = w.iter().map(|x| x.abs()).sum::<f64>().max(1.0);
    if (sum - 1.0).abs() > 1e-9 * scale {
        return Err(CliError::usage(format!(
            "--weights {} sum to {sum}, not 1: the weights (the reference's first, then one per --aligned model) \
             must sum to 1; or give --lambda λ instead, for the weights [1 − λ, λ] (one --aligned model) or \
             [1 − Σλ_i, λ_1, …] (several)",
            list(w)
        )));
    }
    Ok(())
}

impl RealignArgs {
    /// The settings sampled with `k` aligned models: the reference alone (k = 0), the one
    /// `--weights` vector, one per λ (k = 1) or the one multi-reward λ vector (k > 1).
    pub(crate) fn settings(&self, k: usize) -> Result<Vec<Setting>> {
        if k == 0 {
            return self.reference_alone();
        }
        if let Some(w) = &self.weights {
            check_weights(w, k)?;
            let realigner = Realigner::new(w.clone()).usage_context(format!("--weights {}", list(w)))?;
            return Ok(vec![Setting { label: format!("w = [{}]", joined(w, ", ")), tag: "weights".into(), realigner }]);
        }
        let lambdas = self.lambda.clone().unwrap_or_else(|| vec![0.5]);
        if lambdas.is_empty() {
            return Err(CliError::usage("--lambda is empty; give at least one λ"));
        }
        if let Some(l) = lambdas.iter().find(|l| !l.is_finite()) {
            return Err(CliError::usage(format!("--lambda: λ = {l}; every λ must be a finite number")));
        }
        if k == 1 {
            one_per_lambda(&lambdas)
        } else {
            multi_reward(&lambdas, k)
        }
    }

    /// Without `--aligned`: the reference alone (no `--lambda` or `--weights` to weigh).
    fn reference_alone(&self) -> Result<Vec<Setting>> {
        for (flag, given) in [("--lambda", self.lambda.is_some()), ("--weights", self.weights.is_some())] {
            if given {
                return Err(CliError::usage(format!(
                    "{flag} weighs aligned models: give --aligned (without it the reference alone is sampled)"
                )));
            }
        }
        let realigner = Realigner::new(vec![1.0]).usage_context("the reference alone")?;
        Ok(vec![Setting { label: "reference".into(), tag: "reference".into(), realigner }])
    }
}

/// One aligned model: a setting per λ (weights [1 − λ, λ]), each λ once.
fn one_per_lambda(lambdas: &[f64]) -> Result<Vec<Setting>> {
    for (i, l) in lambdas.iter().enumerate() {
        if lambdas[..i].contains(l) {
            return Err(CliError::usage(format!(
                "--lambda {}: λ = {l} is given twice (each λ writes its own image)",
                list(lambdas)
            )));
        }
    }
    lambdas
        .iter()
        .map(|&l| {
            let realigner = Realigner::two_model(l).usage_context(format!("--lambda {l}"))?;
            Ok(Setting { label: format!("λ = {l}"), tag: format!("l{l}"), realigner })
        })
        .collect()
}

/// `k` aligned models: one setting, the weights [1 − Σλ_i, λ_1, …, λ_k].
fn multi_reward(lambdas: &[f64], k: usize) -> Result<Vec<Setting>> {
    if lambdas.len() != k {
        return Err(CliError::usage(format!(
            "with {k} --aligned models --lambda takes {k} values λ_1,…,λ_{k}, one per --aligned model \
             (weights [1 − Σλ_i, λ_1, …]); got {}",
            lambdas.len()
        )));
    }
    let realigner = Realigner::multi_reward(lambdas).usage_context(format!("--lambda {}", list(lambdas)))?;
    Ok(vec![Setting { label: format!("λ = [{}]", joined(lambdas, ", ")), tag: "multi".into(), realigner }])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_explained_in_options() {
        let e = check_weights(&[0.2, 0.2], 1).unwrap_err().to_string();
        assert!(e.contains("--weights 0.2,0.2 sum to 0.4") && e.contains("--lambda"), "{e}");
        assert!(!e.contains("Realigner"), "{e}");
        let e = check_weights(&[1.0], 1).unwrap_err().to_string();
        assert!(e.contains("give 2") && e.contains("--aligned"), "{e}");
        let e = check_weights(&[f64::NAN, 1.0], 1).unwrap_err().to_string();
        assert!(e.contains("finite"), "{e}");
        assert!(check_weights(&[-0.5, 1.5], 1).is_ok());
    }
}
