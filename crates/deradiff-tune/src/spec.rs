//! A sweep's work items and shards: the spec that numbers them, its hash, the split into shards.
//!
//! A sweep's work items are its (prompt, seed, λ) triples, enumerated from the spec in one
//! fixed order: prompt entries in order (each [`Prompt`] is one prompt with one seed; see
//! [`Prompt::with_seeds`]), and for each, the λ grid in order. Item `i` belongs to shard
//! `i mod n` ([`Shard`]): shards are disjoint, together they are the whole sweep, and their sizes
//! differ by at most one item. Because a λ's samples depend only on its prompt entry's seed, a
//! shard computes the very rows an unsharded run would.
//!
//! Each shard writes its own results file, whose header records the whole spec
//! ([`SweepSpec`]: the λ grid and the prompt entries), its hash and the shard; a killed shard
//! resumes on its own, and [`merge_results`](crate::merge_results) joins the shards' files.
//!
//! Schedulers give each task its shard index through the environment (Slurm job arrays:
//! `SLURM_ARRAY_TASK_ID`; Kubernetes Indexed Jobs: `JOB_COMPLETION_INDEX`); the shard count is
//! always given, never read from there; see [`Shard::from_env`].

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::Prompt;

/// Most shards a sweep may be split into.
pub const MAX_SHARDS: usize = 100_000;

/// One part of a sharded sweep: work items `i` with `i mod count == index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Shard {
    /// This shard, `0 ≤ index < count`.
    pub index: usize,
    /// The number of shards.
    pub count: usize,
}

impl Shard {
    /// Shard `index` of `count`, checked (`count` at most [`MAX_SHARDS`]).
    pub fn new(index: usize, count: usize) -> Result<Self> {
        if count == 0 || count > MAX_SHARDS {
            return Err(Error::InvalidArgument(format!(
                "{count} shards: give 1 to {MAX_SHARDS} (the shard is k/n with 0 ≤ k < n)"
            )));
        }
        if index >= count {
            return Err(Error::InvalidArgument(format!(
                "shard {index} of {count} does not exist: shards are numbered 0 to {} (k/n with 0 ≤ k < n)",
                count - 1
            )));
        }
        Ok(Self { index, count })
    }

    /// Whether work item `item` is this shard's.
    pub fn owns(&self, item: usize) -> bool {
        item % self.count == self.index
    }

    /// The shard a cluster scheduler gives this process, from the environment `env` (a lookup such
    /// as `|k| std::env::var(k).ok()`) and the shard count `shards`, or `None` outside a job array.
    ///
    /// The environment gives the index only, never the count: a Slurm array re-run for one failed
    /// index (`sbatch --array=3`) reports `SLURM_ARRAY_TASK_COUNT=1`, and a count taken from there
    /// would silently turn shard 3 of 8 into the whole sweep. So:
    ///
    /// * Slurm job arrays: the shard is `SLURM_ARRAY_TASK_ID` of `shards`, for an array numbered
    ///   exactly like the shards (`--array=0-(N-1)`): `SLURM_ARRAY_TASK_COUNT` must equal `shards`,
    ///   `SLURM_ARRAY_TASK_MIN` be 0 and `SLURM_ARRAY_TASK_STEP` 1 where they are set. To re-run
    ///   some indices, or with any other array, pass the index itself (`--shard
    ///   $SLURM_ARRAY_TASK_ID` with `--shards N`), which does not read the environment.
    /// * Kubernetes Indexed Jobs: `JOB_COMPLETION_INDEX` of `shards` (the Job's `completions`).
    ///
    /// Every inconsistency — a variable that is not a number, no `shards`, an index at or past
    /// `shards`, a count, first index or step that does not match — is an
    /// [`Error::ShardEnvironment`] naming the variable and saying what to pass instead.
    pub fn from_env(shards: Option<usize>, env: impl Fn(&str) -> Option<String>) -> Result<Option<Self>> {
        let var = |name: &str| env(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let bad = |name: &str, value: &str, detail: String| Error::ShardEnvironment {
            variable: name.into(),
            value: value.into(),
            detail,
        };
        let number = |name: &str| -> Result<Option<(usize, String)>> {
            match var(name) {
                None => Ok(None),
                Some(v) => match v.parse::<usize>() {
                    Ok(n) => Ok(Some((n, v))),
                    Err(_) => Err(bad(name, &v, "not a non-negative integer".into())),
                },
            }
        };
        if let Some((id, id_text)) = number("SLURM_ARRAY_TASK_ID")? {
            let Some(n) = shards else {
                return Err(bad(
                    "SLURM_ARRAY_TASK_ID",
                    &id_text,
                    "this is a Slurm array task but the shard count is not given, and it is never taken from the \
                     array (a re-run of one index reports SLURM_ARRAY_TASK_COUNT=1): pass --shards N --shard \
                     $SLURM_ARRAY_TASK_ID, N the number of shards; to run the whole sweep in this task instead, \
                     unset SLURM_ARRAY_TASK_ID"
                        .into(),
                ));
            };
            let explicit = format!(
                "submit the array as --array=0-{last} (one task per shard), or pass the index itself: --shards {n} \
                 --shard $SLURM_ARRAY_TASK_ID (it also re-runs single indices: sbatch --array=K)",
                last = n.saturating_sub(1)
            );
            if let Some((count, text)) = number("SLURM_ARRAY_TASK_COUNT")? {
                if count != n {
                    return Err(bad(
                        "SLURM_ARRAY_TASK_COUNT",
                        &text,
                        format!(
                            "the array has {count} task{} but --shards is {n}: {explicit}",
                            if count == 1 { "" } else { "s" }
                        ),
                    ));
                }
            }
            if let Some((min, text)) = number("SLURM_ARRAY_TASK_MIN")?.filter(|m| m.0 != 0) {
                return Err(bad(
                    "SLURM_ARRAY_TASK_MIN",
                    &text,
                    format!("the array starts at {min} but shards are numbered from 0: {explicit}"),
                ));
            }
            if let Some((step, text)) = number("SLURM_ARRAY_TASK_STEP")?.filter(|s| s.0 != 1) {
                return Err(bad(
                    "SLURM_ARRAY_TASK_STEP",
                    &text,
                    format!("a stepped array (step {step}) skips shards: {explicit}"),
                ));
            }
            if id >= n {
                return Err(bad(
                    "SLURM_ARRAY_TASK_ID",
                    &id_text,
                    format!("shard {id} of --shards {n} does not exist (shards are 0 to {}): {explicit}", n - 1),
                ));
            }
            return Self::new(id, n).map(Some);
        }
        if let Some((index, text)) = number("JOB_COMPLETION_INDEX")? {
            let Some(n) = shards else {
                return Err(bad(
                    "JOB_COMPLETION_INDEX",
                    &text,
                    "a Kubernetes Indexed Job: pass --shards N, N the Job's completions".into(),
                ));
            };
            if index >= n {
                return Err(bad(
                    "JOB_COMPLETION_INDEX",
                    &text,
                    format!("shard {index} of --shards {n} does not exist: --shards must equal the Job's completions"),
                ));
            }
            return Self::new(index, n).map(Some);
        }
        Ok(None)
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl std::str::FromStr for Shard {
    type Err = Error;

    /// `k/n`, e.g. `0/4` … `3/4`.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::InvalidArgument(format!("shard {s:?}: write k/n with 0 ≤ k < n, e.g. 0/4"));
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let k = k.trim().parse::<usize>().map_err(|_| bad())?;
        let n = n.trim().parse::<usize>().map_err(|_| bad())?;
        Self::new(k, n)
    }
}

/// The name of a sweep's results file in its output folder: `sweep.jsonl` for a whole sweep
/// (`None`), `sweep.shard-KKKKK-of-NNNNN.jsonl` for a shard (`deradiff sweep` writes them, and
/// `deradiff merge` and `status` find them by these names).
pub fn results_file_name(shard: Option<Shard>) -> String {
    match shard {
        None => "sweep.jsonl".into(),
        Some(s) => format!("sweep.shard-{:05}-of-{:05}.jsonl", s.index, s.count),
    }
}

/// The shard a results file's name says it holds: `Some(None)` for `sweep.jsonl`, `Some(Some(s))`
/// for `sweep.shard-K-of-N.jsonl` (any number of digits, K < N), `None` for any other name
/// (including shard names whose numbers do not make a shard).
pub fn shard_of_file_name(name: &str) -> Option<Option<Shard>> {
    if name == "sweep.jsonl" {
        return Some(None);
    }
    let (k, n) = name.strip_prefix("sweep.shard-")?.strip_suffix(".jsonl")?.split_once("-of-")?;
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    if !digits(k) || !digits(n) {
        return None;
    }
    Shard::new(k.parse().ok()?, n.parse().ok()?).ok().map(Some)
}

/// What a sweep covers: its λ grid and its prompt entries (each a prompt with one seed), in the
/// order that numbers the work items.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepSpec {
    /// The λ grid.
    pub lambdas: Vec<f64>,
    /// The prompt entries.
    pub prompts: Vec<Prompt>,
}

/// One work item: the row a sweep computes for (prompt entry, λ).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WorkItem {
    /// Its number in the spec's order.
    pub index: usize,
    /// The prompt entry (index into [`SweepSpec::prompts`]).
    pub prompt: usize,
    /// The λ (index into [`SweepSpec::lambdas`]).
    pub lambda: usize,
}

impl SweepSpec {
    /// Number of work items (prompt entries × λ).
    pub fn len(&self) -> usize {
        self.prompts.len() * self.lambdas.len()
    }

    /// Whether the spec has no work item.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every work item, in order (prompt-major).
    pub fn items(&self) -> impl Iterator<Item = WorkItem> + '_ {
        let n = self.lambdas.len();
        (0..self.len()).map(move |index| WorkItem { index, prompt: index / n.max(1), lambda: index % n.max(1) })
    }

    /// The items of `shard` (all of them for `None`).
    pub fn shard_items(&self, shard: Option<Shard>) -> impl Iterator<Item = WorkItem> + '_ {
        self.items().filter(move |it| shard.is_none_or(|s| s.owns(it.index)))
    }
}

/// The hash a results file's header records for a whole sweep: FNV-1a (64 bits, hex) of the JSON
/// of the model description, samples per prompt, reward names, λ grid (−0 as 0) and prompt
/// entries. Shards of one sweep share it; [`merge_results`](crate::merge_results) joins only
/// files that do.
pub fn spec_hash(model: &str, samples_per_prompt: usize, rewards: &[String], spec: &SweepSpec) -> String {
    let lambdas: Vec<f64> = spec.lambdas.iter().map(|l| l + 0.0).collect();
    let prompts: Vec<(&str, Option<&str>, u64)> =
        spec.prompts.iter().map(|p| (p.id.as_str(), p.text.as_deref(), p.seed)).collect();
    let key = serde_json::json!([model, samples_per_prompt, rewards, lambdas, prompts]);
    format!("{:016x}", crate::model::fnv1a(key.to_string().as_bytes()))
}

/// The hash a results file's header records for a prompt set: FNV-1a (64 bits, hex) of the
/// JSON of every prompt's id, text and seed, in order.
pub fn prompts_hash(prompts: &[Prompt]) -> String {
    let key: Vec<(&str, Option<&str>, u64)> =
        prompts.iter().map(|p| (p.id.as_str(), p.text.as_deref(), p.seed)).collect();
    let json = serde_json::to_string(&key).unwrap_or_default();
    format!("{:016x}", crate::model::fnv1a(json.as_bytes()))
}
