//! `deradiff merge`: the results files of a sharded sweep (one per shard in the sweep's output
//! folder) joined into the file an unsharded run writes. See docs/cluster.md.

use std::path::{Path, PathBuf};

use deradiff_tune::{lambda_summaries, merge_results, write_results, write_results_csv, Merged};

use crate::error::{CliError, Result};
use crate::output::{print_stdout, write_reward_vs_lambda};

/// The arguments of `deradiff merge`.
#[derive(Debug, clap::Args)]
pub(crate) struct MergeArgs {
    /// The sweep's output folder (its `sweep.shard-*-of-*.jsonl` files are merged), or results
    /// files to merge.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// The merged results file (default: `sweep.jsonl` in the folder), with its CSV and
    /// `reward_vs_lambda.png` beside it.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Merge even if work items are missing (listed on stderr); otherwise that is an error.
    #[arg(long)]
    allow_partial: bool,
    /// No summary lines.
    #[arg(long, short)]
    quiet: bool,
}

/// The shard files in `dir`, sorted.
fn shard_files_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| CliError::because(format!("cannot read the folder {}: {e}", dir.display()), e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("sweep.shard-") && n.ends_with(".jsonl"))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(CliError::runtime(format!(
            "{} has no shard files (sweep.shard-K-of-N.jsonl): give the output folder of a sharded sweep, or the \
             files to merge",
            dir.display()
        )));
    }
    Ok(files)
}

/// The files to merge and the default merged file: a folder's shard files and its
/// `sweep.jsonl`, or the files given and `sweep.jsonl` beside the first.
fn inputs(inputs: &[PathBuf]) -> Result<(Vec<PathBuf>, PathBuf)> {
    match inputs {
        [dir] if dir.is_dir() => Ok((shard_files_in(dir)?, dir.join("sweep.jsonl"))),
        inputs => {
            for p in inputs {
                if !p.is_file() {
                    return Err(CliError::runtime(format!(
                        "{} is not a results file (a folder goes alone)",
                        p.display()
                    )));
                }
            }
            let first =
                inputs.first().ok_or_else(|| CliError::runtime("give the sweep's output folder or its shard files"))?;
            Ok((inputs.to_vec(), first.parent().unwrap_or(Path::new(".")).join("sweep.jsonl")))
        }
    }
}

/// Runs `deradiff merge`.
pub(crate) fn run(args: MergeArgs) -> Result<()> {
    let (files, default_out) = inputs(&args.inputs)?;
    let out = args.out.unwrap_or(default_out);
    if files.contains(&out) {
        return Err(CliError::runtime(format!("--out {} is one of the inputs: choose another file", out.display())));
    }
    let merged = merge_results(&files, args.allow_partial)?;
    write_results(&out, &merged.header, &merged.rows)?;
    let csv = out.with_extension("csv");
    write_results_csv(&csv, &merged.header.rewards, &merged.rows)?;
    let mut text = format!(
        "merged {} files: {} rows{}\nwrote {} and {}\n",
        files.len(),
        merged.rows.len(),
        if merged.missing.is_empty() { String::new() } else { format!(", {} items missing", merged.missing.len()) },
        out.display(),
        csv.display()
    );
    for m in merged.missing.iter().take(20) {
        text.push_str(&format!("  missing: {m}\n"));
    }
    text.push_str(&write_figure(&merged, &out)?);
    print_stdout(if args.quiet { "" } else { &text })
}

/// Writes reward_vs_lambda.png beside the merged file `out` (of its first reward), and says so.
fn write_figure(merged: &Merged, out: &Path) -> Result<String> {
    let (Some(reward), false) = (merged.header.rewards.first(), merged.rows.is_empty()) else {
        return Ok(String::new());
    };
    let curve = lambda_summaries(&merged.rows, reward)?;
    let path = out.with_file_name("reward_vs_lambda.png");
    write_reward_vs_lambda(&path, &curve, reward)?;
    Ok(format!("wrote {}\n", path.display()))
}
