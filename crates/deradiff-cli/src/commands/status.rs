//! `deradiff status`: the progress of the sweeps in an output folder, across their shards.

use std::path::PathBuf;

use deradiff_tune::sweep_status;

use crate::error::{CliError, Result};
use crate::output::print_stdout;

/// The exit status of `status` while work items are missing (a sweep not finished yet).
pub(crate) const EXIT_INCOMPLETE: u8 = 3;

/// The arguments of `deradiff status`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Exit status: 0 when every sweep in the folder is complete, 3 while work items are missing \
                        (running, stopped or not started shards), 1 when a file there cannot be read as its results \
                        file or the folder holds none, 2 for bad options.")]
pub(crate) struct StatusArgs {
    /// A sweep's output folder.
    dir: PathBuf,
}

/// Runs `deradiff status`: the progress on stdout, each shard's file as done, running, dead
/// (its process killed), stopped or not started. Files that should be results files but cannot
/// be read as one (a FIFO, a folder, another format, a renamed shard) are named, and make the
/// status fail (exit status 1) after the progress is printed; otherwise the exit status is
/// [`EXIT_INCOMPLETE`] while items are missing, 0 when every sweep is complete.
pub(crate) fn run(args: StatusArgs) -> Result<()> {
    let status = sweep_status(&args.dir)?;
    if status.sweeps.is_empty() && status.unreadable.is_empty() {
        return Err(CliError::runtime(format!("{} holds no sweep results files", args.dir.display())));
    }
    print_stdout(&status.sweeps.iter().map(|s| s.to_string()).collect::<Vec<_>>().join("\n"))?;
    if !status.unreadable.is_empty() {
        let list: Vec<String> = status.unreadable.iter().map(|(p, why)| format!("  {}: {why}", p.display())).collect();
        return Err(CliError::runtime(format!(
            "{} file{} in {} cannot be read as a sweep's results file (their shards are not counted as started or \
             not started): move them away, or rerun those shards (`deradiff sweep … --shard K/N --overwrite`)\n{}",
            status.unreadable.len(),
            if status.unreadable.len() == 1 { "" } else { "s" },
            args.dir.display(),
            list.join("\n")
        )));
    }
    match status.missing() {
        0 => Ok(()),
        n => Err(CliError::incomplete(
            format!(
                "{n} work item{} of the sweep{} in {} {} no row yet: wait for the running shards, rerun the dead, \
                 stopped and not started ones (the same command resumes a shard), then `deradiff merge {}`",
                if n == 1 { "" } else { "s" },
                if status.sweeps.len() == 1 { "" } else { "s" },
                args.dir.display(),
                if n == 1 { "has" } else { "have" },
                args.dir.display()
            ),
            EXIT_INCOMPLETE,
        )),
    }
}
