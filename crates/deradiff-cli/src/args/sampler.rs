//! `--scheduler` and `--eta`: the sampler of `demo`, `sample`, `sweep` and `tune` (each command
//! keeps its own default).

use clap::ValueEnum;
use deradiff_core::SchedulerKind;

use crate::error::{CliError, Result};

/// The sampler `--scheduler` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum SchedulerArg {
    /// DDPM ancestral sampling (fixed_small variance).
    Ddpm,
    /// DDIM (η from --eta; 0 = deterministic).
    Ddim,
    /// Euler ancestral.
    #[value(name = "euler-a")]
    EulerA,
}

impl SchedulerArg {
    /// The name `--scheduler` takes.
    pub(crate) fn name(self) -> &'static str {
        match self {
            SchedulerArg::Ddpm => "ddpm",
            SchedulerArg::Ddim => "ddim",
            SchedulerArg::EulerA => "euler-a",
        }
    }

    /// The sampler, with DDIM's η (only valid with `ddim`, and within [0, 1]).
    pub(crate) fn kind(self, eta: Option<f64>) -> Result<SchedulerKind> {
        Ok(match self {
            SchedulerArg::Ddpm | SchedulerArg::EulerA if eta.is_some() => {
                return Err(CliError::usage("--eta applies to --scheduler ddim only"));
            }
            SchedulerArg::Ddpm => SchedulerKind::Ddpm,
            SchedulerArg::EulerA => SchedulerKind::EulerAncestral,
            SchedulerArg::Ddim => {
                let eta = eta.unwrap_or(0.0);
                if !(0.0..=1.0).contains(&eta) {
                    return Err(CliError::usage(format!("--eta is {eta}; DDIM's η must lie in [0, 1]")));
                }
                SchedulerKind::Ddim { eta }
            }
        })
    }
}
