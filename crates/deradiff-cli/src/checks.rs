//! The checks of option values that several commands share: one function per rule, each error
//! naming the option as the command line spells it (a bad option: exit status 2).

use crate::error::{CliError, Result};

/// A count option (`--steps`, `--samples`, `--prompts`, …) must be at least 1 (not zero, its
/// default value).
pub(crate) fn check_at_least_one<T: Default + PartialEq>(option: &str, value: T) -> Result<()> {
    if value == T::default() {
        return Err(CliError::usage(format!("{option} must be at least 1")));
    }
    Ok(())
}

/// `--steps`: at least one inference step.
pub(crate) fn check_steps(steps: usize) -> Result<()> {
    check_at_least_one("--steps", steps)
}

/// `--guidance` of `sample` and Stable Diffusion sweeps: a finite number ≥ 0 where given (without
/// it, the checkpoint's scale is used).
pub(crate) fn check_guidance(guidance: Option<f64>) -> Result<()> {
    if let Some(g) = guidance.filter(|g| !(*g >= 0.0 && g.is_finite())) {
        return Err(CliError::usage(format!("--guidance is {g}; it must be a finite number ≥ 0")));
    }
    Ok(())
}

/// `--anchor-beta`: the anchor's KL strength β is a positive finite number.
pub(crate) fn check_anchor_beta(anchor_beta: f64) -> Result<()> {
    if !(anchor_beta > 0.0 && anchor_beta.is_finite()) {
        return Err(CliError::usage(format!("--anchor-beta is {anchor_beta}; it must be a positive finite number")));
    }
    Ok(())
}
