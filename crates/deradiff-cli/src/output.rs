//! What every command writes: text on stdout, a progress bar on stderr, files in its output
//! folder — each failure naming the file or stream.

use std::io::Write;
use std::path::Path;

use deradiff_tune::{plot, LambdaSummary};
use indicatif::{ProgressBar, ProgressStyle};

use crate::error::{CliError, Context, Result};

/// Writes to stdout; a closed pipe (`deradiff demo | head`) is not an error.
pub(crate) fn print_stdout(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(CliError::because("cannot write to stdout", e)),
        _ => Ok(()),
    }
}

/// A progress bar (hidden with `--quiet`, and when stderr is not a terminal).
pub(crate) fn progress_bar(quiet: bool, template: &str) -> Result<ProgressBar> {
    let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new(0) };
    let style = ProgressStyle::with_template(template)
        .map_err(|e| CliError::because(format!("progress bar template: {e}"), e))?;
    bar.set_style(style);
    Ok(bar)
}

/// Creates the output folder `--out` (and its parents) if missing.
pub(crate) fn create_out_dir(out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create --out {}", out.display()))
}

/// Writes `bytes` to `path` atomically (a temporary file beside it, then a rename).
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    deradiff_core::io::write_atomic(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// Plots a sweep's mean `reward` against λ (with 95 % intervals) and writes the PNG to `path`.
pub(crate) fn write_reward_vs_lambda(path: &Path, curve: &[LambdaSummary], reward: &str) -> Result<()> {
    let png = plot::reward_vs_lambda_png(curve, reward, 1.96, "Mean reward vs λ")
        .with_context(|| format!("cannot plot {}", path.display()))?;
    write_file(path, &png)
}
