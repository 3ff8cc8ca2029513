//! `deradiff status`: the progress of the sweeps in an output folder, across their shards.

use std::path::PathBuf;

use deradiff_tune::sweep_status;

use crate::error::{CliError, Result};
use crate::output::print_stdout;

/// The arguments of `deradiff status`.
#[derive(Debug, clap::Args)]
pub(crate) struct StatusArgs {
    /// A sweep's output folder.
    dir: PathBuf,
}

/// Runs `deradiff status`.
pub(crate) fn run(args: StatusArgs) -> Result<()> {
    let sweeps = sweep_status(&args.dir)?;
    if sweeps.is_empty() {
        return Err(CliError::runtime(format!("{} holds no sweep results files", args.dir.display())));
    }
    print_stdout(&sweeps.iter().map(|s| s.to_string()).collect::<Vec<_>>().join("\n"))
}
