//! `deradiff merge`: the results files of a sharded sweep (one per shard in the sweep's output
//! folder) joined into the file an unsharded run writes. See docs/cluster.md.

use std::path::{Path, PathBuf};

use deradiff_core::io::{path_kind, PathKind};
use deradiff_tune::{
    lambda_summaries, merge_results, rebase_image_paths, shard_of_file_name, write_results, write_results_csv, Merged,
};

use crate::error::{CliError, Result};
use crate::guard::{check_out_file, check_outputs, lock_dir};
use crate::output::{print_stdout, write_reward_vs_lambda};

/// The arguments of `deradiff merge`.
#[derive(Debug, clap::Args)]
pub(crate) struct MergeArgs {
    /// The sweep's output folder (its `sweep.shard-*-of-*.jsonl` files are merged), or results
    /// files to merge.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// The merged results file, ending in .jsonl (default: `sweep.jsonl` in the folder), with
    /// its CSV and `reward_vs_lambda.png` beside it; never one of the inputs.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Merge even if work items are missing (listed on stderr); otherwise that is an error.
    #[arg(long)]
    allow_partial: bool,
    /// No summary lines.
    #[arg(long, short)]
    quiet: bool,
}

/// The shard files in `dir` (by name: `sweep.shard-00003-of-00008.jsonl`), sorted. Whatever they are
/// is checked when they are read: a FIFO or a folder so named is refused, never opened for a
/// blocking read.
fn shard_files_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| CliError::because(format!("cannot read the folder {}: {e}", dir.display()), e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).and_then(shard_of_file_name).is_some_and(|s| s.is_some()))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(CliError::runtime(format!(
            "{} has no shard files (sweep.shard-KKKKK-of-NNNNN.jsonl, e.g. sweep.shard-00003-of-00008.jsonl): give the output folder of a sharded sweep, or the \
             files to merge",
            dir.display()
        )));
    }
    Ok(files)
}

/// The files to merge and the default merged file: a folder's shard files and its
/// `sweep.jsonl`, or the files given (each a regular file: a folder goes alone, a FIFO or a
/// device is named) and `sweep.jsonl` beside the first.
fn inputs(inputs: &[PathBuf]) -> Result<(Vec<PathBuf>, PathBuf)> {
    if let [dir] = inputs {
        if matches!(path_kind(dir), Ok(PathKind::Dir)) {
            return Ok((shard_files_in(dir)?, dir.join("sweep.jsonl")));
        }
    }
    for p in inputs {
        let what = match path_kind(p) {
            Ok(PathKind::File) => continue,
            Ok(PathKind::Dir) => "a folder (a folder goes alone: its shard files are merged)".to_string(),
            Ok(kind) => kind.describe().to_string(),
            Err(e) => format!("not readable ({e})"),
        };
        return Err(CliError::runtime(format!("{} is {what}, not a results file", p.display())));
    }
    let first = inputs.first().ok_or_else(|| CliError::runtime("give the sweep's output folder or its shard files"))?;
    Ok((inputs.to_vec(), first.parent().unwrap_or(Path::new(".")).join("sweep.jsonl")))
}

/// The merged file (`--out`, else the default beside the inputs), its CSV and its figure,
/// checked before anything is read: the file ends in `.jsonl` (its CSV beside it must not be
/// the file itself), and none of the three is one of the inputs, however spelled.
fn outputs(out: Option<PathBuf>, default_out: PathBuf, files: &[PathBuf]) -> Result<(PathBuf, PathBuf, PathBuf)> {
    let given = out.is_some();
    let out = out.unwrap_or(default_out);
    if given && out.extension().is_none_or(|e| e != "jsonl") {
        return Err(CliError::usage(format!(
            "--out {}: the merged results file's name must end in .jsonl (its CSV is written beside it, as {})",
            out.display(),
            out.with_extension("csv").display()
        )));
    }
    check_out_file("--out", &out)?;
    let (csv, figure) = (out.with_extension("csv"), out.with_file_name("reward_vs_lambda.png"));
    let inputs: Vec<(&str, &Path)> = files.iter().map(|f| ("the input", f.as_path())).collect();
    check_outputs(&[("--out", &out), ("--out", &csv), ("--out", &figure)], &inputs)?;
    Ok((out, csv, figure))
}

/// Runs `deradiff merge`.
pub(crate) fn run(args: MergeArgs) -> Result<()> {
    let (files, default_out) = inputs(&args.inputs)?;
    let (out, csv, figure) = outputs(args.out, default_out, &files)?;
    let mut merged = merge_results(&files, args.allow_partial)?;
    let out_folder = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    // Saved images stay where the shards wrote them; the merged rows name them from its folder.
    let from = merged.folder.clone();
    rebase_image_paths(&mut merged.rows, &from, out_folder);
    // The folder's lock is held while the three files are written.
    let _lock = lock_dir(out_folder);
    write_results(&out, &merged.header, &merged.rows)?;
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
    text.push_str(&write_figure(&merged, &figure)?);
    print_stdout(if args.quiet { "" } else { &text })
}

/// Writes the figure reward_vs_lambda.png `path` (of the first reward), and says so.
fn write_figure(merged: &Merged, path: &Path) -> Result<String> {
    let (Some(reward), false) = (merged.header.rewards.first(), merged.rows.is_empty()) else {
        return Ok(String::new());
    };
    let curve = lambda_summaries(&merged.rows, reward)?;
    write_reward_vs_lambda(path, &curve, reward)?;
    Ok(format!("wrote {}\n", path.display()))
}
