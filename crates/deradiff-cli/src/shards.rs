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

/// `--shard`, given as `K/N` or as `K` with `--shards N`.
fn explicit_shard(shard: &str, shards: Option<usize>) -> Result<Shard> {
    if shard.contains('/') {
        let s: Shard = shard.parse().map_err(|e| CliError::usage_because(format!("--shard {shard}"), e))?;
        if let Some(n) = shards.filter(|&n| n != s.count) {
            return Err(CliError::usage(format!("--shard {s} and --shards {n} disagree on the number of shards")));
        }
        return Ok(s);
    }
    let k: usize = shard.trim().parse().map_err(|_| {
        CliError::usage(format!("--shard {shard:?}: give the shard's index K with --shards N, or K/N (e.g. 0/4)"))
    })?;
    let Some(n) = shards else {
        return Err(CliError::usage(format!(
            "--shard {k} needs the number of shards: give --shards N too, or write --shard {k}/N"
        )));
    };
    Shard::new(k, n).map_err(|_| {
        CliError::usage(format!(
            "--shard {k} with --shards {n}: shard {k} does not exist (shards are 0 to {}; a Slurm array for them is \
             --array=0-{})",
            n - 1,
            n - 1
        ))
    })
}

/// The shard this process computes: `--shard K/N` or `--shard K --shards N`, else the index a
/// cluster scheduler gives (Slurm job arrays, Kubernetes Indexed Jobs) of `--shards N`, else
/// none. The shard count is never read from the environment ([`Shard::from_env`]). Every error
/// is a bad option.
pub(crate) fn shard_of(shard: Option<&str>, shards: Option<usize>) -> Result<Option<Shard>> {
    if let Some(n) = shards.filter(|&n| n == 0 || n > MAX_SHARDS) {
        return Err(CliError::usage(format!("--shards {n}: give 1 to {MAX_SHARDS}")));
    }
    if let Some(s) = shard {
        return explicit_shard(s, shards).map(Some);
    }
    match Shard::from_env(shards, |k| std::env::var(k).ok()).map_err(CliError::usage_from)? {
        Some(s) => Ok(Some(s)),
        None if shards.is_some() => Err(CliError::usage(
            "--shards N needs the shard's index: give --shard K (K from 0 to N − 1), or run as a Slurm array task \
             or a Kubernetes Indexed Job (SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX)",
        )),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_explicit_shard_is_k_of_n_or_k_with_shards() {
        assert_eq!(explicit_shard("3", Some(8)).unwrap(), Shard::new(3, 8).unwrap());
        assert_eq!(explicit_shard("3/8", Some(8)).unwrap(), Shard::new(3, 8).unwrap());
        assert_eq!(explicit_shard("3/8", None).unwrap(), Shard::new(3, 8).unwrap());
        for (shard, shards, needle) in [
            ("3", None, "--shards N"),
            ("8", Some(8), "--array=0-7"),
            ("3/8", Some(4), "disagree"),
            ("x", Some(4), "--shard \"x\""),
            ("8/8", None, "--shard 8/8"),
        ] {
            let err = explicit_shard(shard, shards).unwrap_err();
            assert_eq!(err.exit_code(), 2);
            assert!(err.report().contains(needle), "{shard} {shards:?}: {}", err.report());
        }
    }
}
