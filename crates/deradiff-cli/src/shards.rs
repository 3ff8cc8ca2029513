//! The shards of a sweep (one results file per shard in the sweep's output folder): which shard
//! this process computes, and the files it writes. See docs/cluster.md.

use std::path::{Path, PathBuf};

use deradiff_tune::{results_file_name, Shard, MAX_SHARDS};

use crate::error::{CliError, Result};

/// The results file of `shard` in a sweep's output folder (`None`: the unsharded `sweep.jsonl`),
/// with the CSV beside it.
pub(crate) fn shard_files(out: &Path, shard: Option<Shard>) -> (PathBuf, PathBuf) {
    let jsonl = out.join(results_file_name(shard));
    let csv = jsonl.with_extension("csv");
    (jsonl, csv)
}

/// The shard this process computes: `--shard k/n`, else the cluster scheduler's environment
/// (Slurm job arrays; Kubernetes Indexed Jobs with `--shards n`), else none. Every error is a bad
/// option.
pub(crate) fn shard_of(shard: Option<&str>, shards: Option<usize>) -> Result<Option<Shard>> {
    if let Some(s) = shard {
        let s: Shard = s.parse().map_err(|e| CliError::usage_because(format!("--shard: {e}"), e))?;
        if shards.is_some_and(|n| n != s.count) {
            return Err(CliError::usage(format!(
                "--shard {s} and --shards {} disagree on the number of shards",
                shards.unwrap_or(0)
            )));
        }
        return Ok(Some(s));
    }
    if shards.is_some_and(|n| n == 0 || n > MAX_SHARDS) {
        return Err(CliError::usage(format!("--shards {}: give 1 to {MAX_SHARDS}", shards.unwrap_or(0))));
    }
    match Shard::from_env(shards, |k| std::env::var(k).ok()).map_err(CliError::usage_from)? {
        Some(s) => Ok(Some(s)),
        None if shards.is_some() => Err(CliError::usage(
            "--shards n needs the shard index: give --shard k/n, or run as a Slurm array task or a Kubernetes \
             Indexed Job (SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX)",
        )),
        None => Ok(None),
    }
}
