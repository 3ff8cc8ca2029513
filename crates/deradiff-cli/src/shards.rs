//! `deradiff merge` and `deradiff status`: the results of a sharded sweep (one file per shard in
//! the sweep's output folder) joined into the file an unsharded run writes, and progress across
//! the shards. See docs/cluster.md.

use std::path::{Path, PathBuf};

use deradiff_tune::{merge_results, plot, sweep_status, write_results, write_results_csv, Shard, MAX_SHARDS};

/// The results file of `shard` in a sweep's output folder (`None`: the unsharded `sweep.jsonl`),
/// with the CSV beside it.
pub fn shard_files(out: &Path, shard: Option<Shard>) -> (PathBuf, PathBuf) {
    match shard {
        None => (out.join("sweep.jsonl"), out.join("sweep.csv")),
        Some(s) => {
            let stem = format!("sweep.shard-{:05}-of-{:05}", s.index, s.count);
            (out.join(format!("{stem}.jsonl")), out.join(format!("{stem}.csv")))
        }
    }
}

/// The shard this process computes: `--shard k/n`, else the cluster scheduler's environment
/// (Slurm job arrays; Kubernetes Indexed Jobs with `--shards n`), else none.
pub fn shard_of(shard: Option<&str>, shards: Option<usize>) -> Result<Option<Shard>, String> {
    if let Some(s) = shard {
        let s: Shard = s.parse().map_err(|e| format!("--shard: {e}"))?;
        if shards.is_some_and(|n| n != s.count) {
            return Err(format!("--shard {s} and --shards {} disagree on the number of shards", shards.unwrap_or(0)));
        }
        return Ok(Some(s));
    }
    if shards.is_some_and(|n| n == 0 || n > MAX_SHARDS) {
        return Err(format!("--shards {}: give 1 to {MAX_SHARDS}", shards.unwrap_or(0)));
    }
    match Shard::from_env(shards, |k| std::env::var(k).ok()).map_err(|e| e.to_string())? {
        Some(s) => Ok(Some(s)),
        None if shards.is_some() => {
            Err("--shards n needs the shard index: give --shard k/n, or run as a Slurm array task or a Kubernetes \
             Indexed Job (SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX)"
                .into())
        }
        None => Ok(None),
    }
}

/// The arguments of `deradiff merge`.
#[derive(Debug, clap::Args)]
pub struct MergeArgs {
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
fn shard_files_in(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read the folder {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("sweep.shard-") && n.ends_with(".jsonl"))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!(
            "{} has no shard files (sweep.shard-K-of-N.jsonl): give the output folder of a sharded sweep, or the \
             files to merge",
            dir.display()
        ));
    }
    Ok(files)
}

/// Runs `deradiff merge`.
pub fn merge(args: MergeArgs) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let (files, default_out) = match args.inputs.as_slice() {
        [dir] if dir.is_dir() => (shard_files_in(dir)?, dir.join("sweep.jsonl")),
        inputs => {
            for p in inputs {
                if !p.is_file() {
                    return Err(format!("{} is not a results file (a folder goes alone)", p.display()).into());
                }
            }
            let first = inputs.first().ok_or("give the sweep's output folder or its shard files")?;
            (inputs.to_vec(), first.parent().unwrap_or(Path::new(".")).join("sweep.jsonl"))
        }
    };
    let out = args.out.unwrap_or(default_out);
    if files.contains(&out) {
        return Err(format!("--out {} is one of the inputs: choose another file", out.display()).into());
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
    if let (Some(reward), false) = (merged.header.rewards.first(), merged.rows.is_empty()) {
        let curve = deradiff_tune::lambda_summaries(&merged.rows, reward)?;
        let png = plot::reward_vs_lambda_png(&curve, reward, 1.96, "Mean reward vs λ")?;
        let path = out.with_file_name("reward_vs_lambda.png");
        plot::write_png(&path, &png)?;
        text.push_str(&format!("wrote {}\n", path.display()));
    }
    Ok(if args.quiet { String::new() } else { text })
}

/// The arguments of `deradiff status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// A sweep's output folder.
    dir: PathBuf,
}

/// Runs `deradiff status`.
pub fn status(args: StatusArgs) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let sweeps = sweep_status(&args.dir)?;
    if sweeps.is_empty() {
        return Err(format!("{} holds no sweep results files", args.dir.display()).into());
    }
    Ok(sweeps.iter().map(|s| s.to_string()).collect::<Vec<_>>().join("\n"))
}
