//! `deradiff report`: a static HTML report of a results folder (a sweep, merged or sharded, a
//! `tune` run, a `compare`), opening from disk; built by [`deradiff_tune::write_report`].

use std::path::{Path, PathBuf};

use deradiff_tune::write_report;

use crate::error::{Context, Result};
use crate::guard::lock_dir;
use crate::output::print_stdout;

/// The arguments of `deradiff report`.
#[derive(Debug, clap::Args)]
pub(crate) struct ReportArgs {
    /// The output folder of a sweep (its sweep.jsonl, or its shard files merged for the report),
    /// `merge`, `tune` or `compare`: the report is written into it as report.html, its figures
    /// in report_files/. Or one results file (`merge --out all.jsonl`): its sweep, reported
    /// beside it.
    dir: PathBuf,
    /// No summary line.
    #[arg(long, short)]
    quiet: bool,
}

/// Runs `deradiff report`.
pub(crate) fn run(args: ReportArgs) -> Result<()> {
    // Held while the page and its figures are written: two reports of one folder leave one.
    let folder = if args.dir.is_file() { args.dir.parent().unwrap_or(Path::new(".")) } else { &args.dir };
    let _lock = lock_dir(if folder.as_os_str().is_empty() { Path::new(".") } else { folder });
    let summary = write_report(&args.dir).with_context(|| format!("cannot report on {}", args.dir.display()))?;
    let mut text = format!(
        "wrote {} ({}: {} sweep rows, {} images)\n",
        summary.html.display(),
        summary.sections.join(", "),
        summary.rows,
        summary.images
    );
    for note in &summary.notes {
        text.push_str(&format!("note: {note}\n"));
    }
    print_stdout(if args.quiet { "" } else { &text })
}
