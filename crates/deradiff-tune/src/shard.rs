//! Sweeps that outgrow one machine: deterministic work items, shards, merging and progress.
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
//! resumes on its own. [`merge_results`] joins the files of one spec (an error for another spec,
//! a duplicate row, a foreign row or, unless allowed, a missing item) into the rows of an
//! unsharded run in item order; [`sweep_status`] reports progress over a folder of shard files.
//!
//! Schedulers give each task its shard through the environment: Slurm job arrays
//! (`SLURM_ARRAY_TASK_ID`, `SLURM_ARRAY_TASK_MIN`, `SLURM_ARRAY_TASK_COUNT`) and Kubernetes
//! Indexed Jobs (`JOB_COMPLETION_INDEX`, with the shard count given); see [`Shard::from_env`].

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::Prompt;
use crate::sweep::{read_results, ResultsFile, SweepHeader, SweepRow, RESULTS_FORMAT, RESULTS_VERSION};

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
    /// as `|k| std::env::var(k).ok()`), or `None` outside a job array:
    ///
    /// * Slurm job arrays: `SLURM_ARRAY_TASK_ID` minus `SLURM_ARRAY_TASK_MIN` (0 if unset) of
    ///   `SLURM_ARRAY_TASK_COUNT` (or `shards` when given: they must agree);
    /// * Kubernetes Indexed Jobs: `JOB_COMPLETION_INDEX` of `shards` (which must be given: the
    ///   Job's `completions`).
    ///
    /// A malformed or inconsistent variable is an error naming it.
    pub fn from_env(shards: Option<usize>, env: impl Fn(&str) -> Option<String>) -> Result<Option<Self>> {
        let number = |name: &str| -> Result<Option<usize>> {
            match env(name) {
                None => Ok(None),
                Some(v) if v.trim().is_empty() => Ok(None),
                Some(v) => v
                    .trim()
                    .parse::<usize>()
                    .map(Some)
                    .map_err(|_| Error::InvalidArgument(format!("{name} = {v:?} is not a non-negative integer"))),
            }
        };
        if let Some(id) = number("SLURM_ARRAY_TASK_ID")? {
            let min = number("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let index = id.checked_sub(min).ok_or_else(|| {
                Error::InvalidArgument(format!("SLURM_ARRAY_TASK_ID = {id} is below SLURM_ARRAY_TASK_MIN = {min}"))
            })?;
            let count = match (number("SLURM_ARRAY_TASK_COUNT")?, shards) {
                (Some(c), Some(s)) if c != s => {
                    return Err(Error::InvalidArgument(format!(
                        "SLURM_ARRAY_TASK_COUNT = {c} but --shards {s}: they must agree (or leave --shards out)"
                    )))
                }
                (Some(c), _) => c,
                (None, Some(s)) => s,
                (None, None) => {
                    return Err(Error::InvalidArgument(
                        "SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not: give --shards n".into(),
                    ))
                }
            };
            return Self::new(index, count).map(Some);
        }
        if let Some(index) = number("JOB_COMPLETION_INDEX")? {
            let count = shards.ok_or_else(|| {
                Error::InvalidArgument(
                    "JOB_COMPLETION_INDEX is set (a Kubernetes Indexed Job): give --shards n, the Job's completions"
                        .into(),
                )
            })?;
            return Self::new(index, count).map(Some);
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

    /// The item a row belongs to, if it is one of this spec's.
    pub fn item_of(&self, row: &SweepRow) -> Option<WorkItem> {
        let lambda = self.lambdas.iter().position(|&l| (l + 0.0).to_bits() == (row.lambda + 0.0).to_bits())?;
        let prompt = self.prompts.iter().position(|p| p.id == row.prompt && p.seed == row.seed)?;
        let index = prompt * self.lambdas.len() + lambda;
        Some(WorkItem { index, prompt, lambda })
    }
}

/// The hash a results file's header records for a whole sweep: FNV-1a (64 bits, hex) of the JSON
/// of the model description, samples per prompt, reward names, λ grid (−0 as 0) and prompt
/// entries. Shards of one sweep share it; [`merge_results`] joins only files that do.
pub fn spec_hash(model: &str, samples_per_prompt: usize, rewards: &[String], spec: &SweepSpec) -> String {
    let lambdas: Vec<f64> = spec.lambdas.iter().map(|l| l + 0.0).collect();
    let prompts: Vec<(&str, Option<&str>, u64)> =
        spec.prompts.iter().map(|p| (p.id.as_str(), p.text.as_deref(), p.seed)).collect();
    let key = serde_json::json!([model, samples_per_prompt, rewards, lambdas, prompts]);
    format!("{:016x}", crate::model::fnv1a(key.to_string().as_bytes()))
}

/// A results file of a sharded sweep, or of a merge (see [`merge_results`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Merged {
    /// The merged header: the shards' own, without a shard.
    pub header: SweepHeader,
    /// Every row, in work-item order (an unsharded run's order).
    pub rows: Vec<SweepRow>,
    /// The items no file has a row for (empty unless partial merges are allowed).
    pub missing: Vec<MissingItem>,
}

/// A work item without a row.
#[derive(Debug, Clone, PartialEq)]
pub struct MissingItem {
    /// The item's number.
    pub index: usize,
    /// Its prompt id.
    pub prompt: String,
    /// Its seed.
    pub seed: u64,
    /// Its λ.
    pub lambda: f64,
    /// The shard that owns it (of the files' shard count).
    pub shard: Option<Shard>,
}

impl std::fmt::Display for MissingItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "item {} (prompt {:?}, seed {}, λ = {})", self.index, self.prompt, self.seed, self.lambda)?;
        if let Some(s) = self.shard {
            write!(f, " of shard {s}")?;
        }
        Ok(())
    }
}

fn merge_error(detail: String) -> Error {
    Error::Merge(detail)
}

/// The spec and its hash a sharded (or merged) file's header records, or an error naming `path`.
fn spec_of(path: &Path, header: &SweepHeader) -> Result<(SweepSpec, String)> {
    match (&header.spec, &header.spec_hash) {
        (Some(spec), Some(hash)) => Ok((spec.clone(), hash.clone())),
        _ => Err(merge_error(format!(
            "{} records no sweep spec (it was written before sweeps recorded one): rerun it with this version",
            path.display()
        ))),
    }
}

/// Joins the results files of the shards of one sweep (see the module docs). Every file must
/// record the same spec (hash, model, samples, rewards) and the same shard count; no row may
/// appear twice or lie outside the spec or outside its file's shard. Items no file has are an
/// error listing them (the first few) unless `allow_partial`, when they are returned in
/// [`Merged::missing`]. The rows come out in work-item order, as an unsharded run writes them.
pub fn merge_results(paths: &[PathBuf], allow_partial: bool) -> Result<Merged> {
    if paths.is_empty() {
        return Err(merge_error("no results files to merge".into()));
    }
    let files: Vec<(PathBuf, ResultsFile)> =
        paths.iter().map(|p| read_results(p).map(|f| (p.clone(), f))).collect::<Result<_>>()?;
    let (first_path, first) = &files[0];
    let (spec, hash) = spec_of(first_path, &first.header)?;
    let count = first.header.shard.map(|s| s.count);
    let mut seen_shards: HashMap<usize, PathBuf> = HashMap::new();
    let mut by_item: HashMap<usize, (SweepRow, PathBuf)> = HashMap::new();
    for (path, file) in &files {
        let h = &file.header;
        let (_, this_hash) = spec_of(path, h)?;
        if this_hash != hash
            || h.model != first.header.model
            || h.samples_per_prompt != first.header.samples_per_prompt
            || h.rewards != first.header.rewards
        {
            return Err(merge_error(format!(
                "{} is a shard of another sweep (spec {this_hash}) than {} (spec {hash}): merge the files of \
                 one sweep only",
                path.display(),
                first_path.display()
            )));
        }
        if h.shard.map(|s| s.count) != count {
            return Err(merge_error(format!(
                "{} was written as shard {} but {} as shard {}: the files must split the sweep the same way",
                path.display(),
                h.shard.map_or("none (unsharded)".to_string(), |s| s.to_string()),
                first_path.display(),
                first.header.shard.map_or("none (unsharded)".to_string(), |s| s.to_string()),
            )));
        }
        if let Some(s) = h.shard {
            if let Some(other) = seen_shards.insert(s.index, path.clone()) {
                return Err(merge_error(format!(
                    "{} and {} are both shard {s}: give each shard's file once",
                    other.display(),
                    path.display()
                )));
            }
        }
        for row in &file.rows {
            let item = spec.item_of(row).ok_or_else(|| {
                merge_error(format!(
                    "{} has a row outside the sweep's spec (λ = {}, prompt {:?}, seed {})",
                    path.display(),
                    row.lambda,
                    row.prompt,
                    row.seed
                ))
            })?;
            if let Some(s) = h.shard {
                if !s.owns(item.index) {
                    return Err(merge_error(format!(
                        "{} (shard {s}) has a row of another shard: λ = {}, prompt {:?}, seed {}",
                        path.display(),
                        row.lambda,
                        row.prompt,
                        row.seed
                    )));
                }
            }
            if let Some((_, other)) = by_item.insert(item.index, (row.clone(), path.clone())) {
                return Err(merge_error(format!(
                    "two rows for λ = {}, prompt {:?}, seed {}: in {} and {}",
                    row.lambda,
                    row.prompt,
                    row.seed,
                    other.display(),
                    path.display()
                )));
            }
        }
    }
    let mut rows = Vec::with_capacity(by_item.len());
    let mut missing = Vec::new();
    for item in spec.items() {
        match by_item.remove(&item.index) {
            Some((row, _)) => rows.push(row),
            None => {
                let p = &spec.prompts[item.prompt];
                missing.push(MissingItem {
                    index: item.index,
                    prompt: p.id.clone(),
                    seed: p.seed,
                    lambda: spec.lambdas[item.lambda],
                    shard: count.map(|n| Shard { index: item.index % n, count: n }),
                });
            }
        }
    }
    if !missing.is_empty() && !allow_partial {
        let shown: Vec<String> = missing.iter().take(10).map(|m| m.to_string()).collect();
        return Err(Error::MissingItems { missing: missing.len(), total: spec.len(), first: shown.join("; ") });
    }
    let mut header = first.header.clone();
    header.shard = None;
    Ok(Merged { header, rows, missing })
}

/// Writes a results file (header, then the rows) atomically: what [`merge_results`] gives, in
/// the format [`read_results`] and a resumed sweep read.
pub fn write_results(path: impl AsRef<Path>, header: &SweepHeader, rows: &[SweepRow]) -> Result<()> {
    let mut text = serde_json::to_string(header)?;
    text.push('\n');
    for r in rows {
        text.push_str(&serde_json::to_string(r)?);
        text.push('\n');
    }
    crate::error::write_atomic(path.as_ref(), text.as_bytes())
}

/// Writes the CSV of results rows atomically: the columns a sweep's CSV has (`lambda`,
/// `prompt_index`, `prompt`, `seed`, `samples`, then `<reward>_mean`, `<reward>_std` for each of
/// `rewards`).
pub fn write_results_csv(path: impl AsRef<Path>, rewards: &[String], rows: &[SweepRow]) -> Result<()> {
    let mut text = crate::sweep::csv_header(rewards);
    for r in rows {
        text.push_str(&crate::sweep::csv_line(r, rewards));
    }
    crate::error::write_atomic(path.as_ref(), text.as_bytes())
}

/// Progress of one sweep over the shard files found for it.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepProgress {
    /// The spec's hash.
    pub spec_hash: String,
    /// The model the sweep samples.
    pub model: String,
    /// Work items in the whole sweep.
    pub total: usize,
    /// Rows found (over all its files).
    pub done: usize,
    /// The shard count (`None`: unsharded or merged files).
    pub shards: Option<usize>,
    /// Per file: its path, its shard, rows found and rows it will hold when finished.
    pub files: Vec<(PathBuf, Option<Shard>, usize, usize)>,
    /// Shards of the count without a file yet.
    pub shards_without_file: Vec<usize>,
}

impl std::fmt::Display for SweepProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pct = if self.total == 0 { 100.0 } else { 100.0 * self.done as f64 / self.total as f64 };
        writeln!(f, "sweep {} ({}): {}/{} items ({pct:.1} %)", self.spec_hash, self.model, self.done, self.total)?;
        for (path, shard, done, expected) in &self.files {
            let state = if done >= expected { "done" } else { "running or stopped" };
            let shard = shard.map_or("unsharded".to_string(), |s| format!("shard {s}"));
            writeln!(f, "  {shard:>14}: {done}/{expected} {state}  {}", path.display())?;
        }
        if !self.shards_without_file.is_empty() {
            let list: Vec<String> = self.shards_without_file.iter().map(|k| k.to_string()).collect();
            writeln!(f, "  not started: shards {}", list.join(", "))?;
        }
        Ok(())
    }
}

/// Progress of every sweep whose results files (`*.jsonl` with a deradiff-sweep header) lie in
/// `dir`, one entry per spec (files of other formats are skipped; a results file without a spec
/// is reported on its own). An error for a folder that cannot be read or a broken results file.
pub fn sweep_status(dir: impl AsRef<Path>) -> Result<Vec<SweepProgress>> {
    let dir = dir.as_ref();
    let meta = std::fs::metadata(dir).map_err(Error::io(dir))?;
    if !meta.is_dir() {
        return Err(Error::InvalidArgument(format!(
            "{} is not a folder: give the sweep's output folder",
            dir.display()
        )));
    }
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(Error::io(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl") && p.is_file())
        .collect();
    paths.sort();
    let mut groups: Vec<SweepProgress> = Vec::new();
    for path in paths {
        if !is_results_file(&path) {
            continue;
        }
        let file = read_results(&path)?;
        let h = &file.header;
        let (spec, hash) = match (&h.spec, &h.spec_hash) {
            (Some(s), Some(hash)) => (Some(s), hash.clone()),
            _ => (None, format!("(no spec: {})", path.display())),
        };
        let total = spec.map_or(file.rows.len(), |s| s.len());
        let expected = spec.map_or(file.rows.len(), |s| s.shard_items(h.shard).count());
        let group = match groups.iter_mut().find(|g| g.spec_hash == hash) {
            Some(g) => g,
            None => {
                groups.push(SweepProgress {
                    spec_hash: hash.clone(),
                    model: h.model.clone(),
                    total,
                    done: 0,
                    shards: h.shard.map(|s| s.count),
                    files: Vec::new(),
                    shards_without_file: Vec::new(),
                });
                groups.last_mut().expect("just pushed")
            }
        };
        group.done += file.rows.len();
        group.files.push((path.clone(), h.shard, file.rows.len(), expected));
    }
    for g in &mut groups {
        if let Some(n) = g.shards {
            let have: HashSet<usize> = g.files.iter().filter_map(|f| f.1.map(|s| s.index)).collect();
            g.shards_without_file = (0..n).filter(|k| !have.contains(k)).collect();
        }
        // Merged and shard files of one spec both count their rows: report the larger view.
        g.done = g.done.min(g.total);
    }
    Ok(groups)
}

/// Whether `path` starts with a deradiff-sweep header line (a cheap look at its first line).
fn is_results_file(path: &Path) -> bool {
    use std::io::{BufRead, Read};
    let Ok(f) = std::fs::File::open(path) else { return false };
    let mut first = String::new();
    if std::io::BufReader::new(f).take(1 << 20).read_line(&mut first).is_err() {
        return false;
    }
    serde_json::from_str::<serde_json::Value>(&first).is_ok_and(|v| {
        v.get("format").and_then(|f| f.as_str()) == Some(RESULTS_FORMAT)
            && v.get("version").and_then(|v| v.as_u64()) == Some(u64::from(RESULTS_VERSION))
    })
}
