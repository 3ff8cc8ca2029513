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

/// Runs `deradiff status`: the progress on stdout; files that should be results files but
/// cannot be read as one (a FIFO, a folder, another format, a renamed shard) are named, and make
/// the status fail (exit status 1) after the progress is printed.
pub(crate) fn run(args: StatusArgs) -> Result<()> {
    let status = sweep_status(&args.dir)?;
    if status.sweeps.is_empty() && status.unreadable.is_empty() {
        return Err(CliError::runtime(format!("{} holds no sweep results files", args.dir.display())));
    }
    print_stdout(&status.sweeps.iter().map(|s| s.to_string()).collect::<Vec<_>>().join("\n"))?;
    if status.unreadable.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = status.unreadable.iter().map(|(p, why)| format!("  {}: {why}", p.display())).collect();
    Err(CliError::runtime(format!(
        "{} file{} in {} cannot be read as a sweep's results file (their shards are not counted as started or \
         not started): move them away, or rerun those shards (`deradiff sweep … --shard K/N --overwrite`)\n{}",
        status.unreadable.len(),
        if status.unreadable.len() == 1 { "" } else { "s" },
        args.dir.display(),
        list.join("\n")
    )))
}
