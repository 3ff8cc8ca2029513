//! Sweeps that outgrow one machine: merging the results files of a sharded sweep, and its
//! progress.
//!
//! [`merge_results`] joins the files of one spec (an error for another spec, a duplicate row, a
//! foreign row or, unless allowed, a missing item) into the rows of an unsharded run in item
//! order; [`sweep_status`] reports progress over a folder of shard files. How a sweep is split
//! into work items and shards: [`Shard`], [`SweepSpec`].

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::images::{folder_of, rebase_image_paths};
use crate::lock::{writer_state, WriterState};
use crate::results::{is_results_file, read_results, ResultsFile, SweepHeader, SweepRow};
use crate::spec::{shard_of_file_name, Shard, SweepSpec};

/// A results file of a sharded sweep, or of a merge (see [`merge_results`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Merged {
    /// The merged header: the shards' own, without a shard.
    pub header: SweepHeader,
    /// Every row, in work-item order (an unsharded run's order). Their image paths
    /// ([`SweepRow::images`]) are relative to [`Merged::folder`].
    pub rows: Vec<SweepRow>,
    /// The folder the rows' image paths are relative to: the first file's. Writing the rows
    /// into another folder, rebase them first ([`rebase_image_paths`](crate::rebase_image_paths)).
    pub folder: PathBuf,
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
        write!(f, "item {} (prompt \"{}\", seed {}, λ = {})", self.index, self.prompt, self.seed, self.lambda)?;
        if let Some(s) = self.shard {
            write!(f, " of shard {s}")?;
        }
        Ok(())
    }
}

/// The shards that own `missing` items (of `count` shards), each with how many it misses:
/// `"3/8 (15 items), 5/8 (2 items)"`; empty for unsharded files.
fn missing_by_shard(missing: &[MissingItem], count: Option<usize>) -> String {
    let Some(n) = count else { return String::new() };
    let mut per = std::collections::BTreeMap::new();
    for m in missing {
        *per.entry(m.index % n).or_insert(0usize) += 1;
    }
    let parts: Vec<String> =
        per.iter().map(|(k, c)| format!("{k}/{n} ({c} item{})", if *c == 1 { "" } else { "s" })).collect();
    parts.join(", ")
}

/// The spec hash a header records ("" without one).
fn this_hash(h: &SweepHeader) -> &str {
    h.spec_hash.as_deref().unwrap_or("")
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
/// record the same header but for its shard (spec and its hash, model, samples, rewards, prompt
/// hash) and the same shard count; no row may
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
        spec_of(path, h)?;
        if let Some(d) = crate::difference::header_difference(&first.header, h, true) {
            let edited = if this_hash(h) == hash { " (both record the same spec hash: was one edited?)" } else { "" };
            return Err(merge_error(format!(
                "{} is a shard of another sweep than {}{edited}: {} is {} in {} but {} in {}; merge the files of \
                 one sweep only",
                path.display(),
                first_path.display(),
                d.field,
                d.first,
                first_path.display(),
                d.second,
                path.display()
            )));
        }
        if h.shard.map(|s| s.count) != count {
            return Err(merge_error(format!(
                "{} was written as shard {} but {} as shard {}: the files must split the sweep the same way",
                path.display(),
                h.shard.map_or("none (the whole sweep)".to_string(), |s| s.to_string()),
                first_path.display(),
                first.header.shard.map_or("none (the whole sweep)".to_string(), |s| s.to_string()),
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
    let folder = folder_of(first_path);
    let mut rows = Vec::with_capacity(by_item.len());
    let mut missing = Vec::new();
    for item in spec.items() {
        match by_item.remove(&item.index) {
            Some((mut row, path)) => {
                let from = folder_of(&path);
                if from != folder {
                    rebase_image_paths(std::slice::from_mut(&mut row), from, folder);
                }
                rows.push(row)
            }
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
        return Err(Error::MissingItems {
            missing: missing.len(),
            total: spec.len(),
            shards: missing_by_shard(&missing, count),
            first: shown.join("; "),
        });
    }
    let mut header = first.header.clone();
    header.shard = None;
    Ok(Merged { header, rows, missing, folder: folder.to_path_buf() })
}

/// Progress of one sweep over the shard files found for it.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepProgress {
    /// The spec's hash.
    pub spec_hash: String,
    /// The model the sweep samples.
    pub model: String,
    /// The sweep's spec (`None` for a file written before sweeps recorded one).
    pub spec: Option<SweepSpec>,
    /// Work items in the whole sweep.
    pub total: usize,
    /// Work items with a row in at least one of its files.
    pub done: usize,
    /// The shard count (`None`: only unsharded or merged files).
    pub shards: Option<usize>,
    /// Its files, in name order.
    pub files: Vec<FileProgress>,
    /// Shards of the count without a file yet.
    pub shards_without_file: Vec<usize>,
}

/// One results file of a sweep in [`SweepProgress`].
#[derive(Debug, Clone, PartialEq)]
pub struct FileProgress {
    /// The file.
    pub path: PathBuf,
    /// The shard it holds (`None`: the whole sweep — an unsharded run's or a merge's file).
    pub shard: Option<Shard>,
    /// Rows it has.
    pub done: usize,
    /// Rows it holds when finished.
    pub expected: usize,
    /// Whether a process is writing it, by its lock record.
    pub writer: WriterState,
}

impl SweepProgress {
    /// Work items without a row in any file (0 when the sweep is complete).
    pub fn missing(&self) -> usize {
        self.total - self.done.min(self.total)
    }
}

impl std::fmt::Display for SweepProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pct = if self.total == 0 { 100.0 } else { 100.0 * self.done as f64 / self.total as f64 };
        write!(f, "sweep {}: {}/{} items ({pct:.1} %)", self.spec_hash, self.done, self.total)?;
        if let Some(spec) = &self.spec {
            write!(f, " = {} prompt entries × {} λ", spec.prompts.len(), spec.lambdas.len())?;
        }
        match self.shards {
            Some(n) => writeln!(f, ", in {n} shards")?,
            None => writeln!(f)?,
        }
        for file in &self.files {
            let what = match file.shard {
                Some(s) => format!("shard {s}"),
                None if self.shards.is_some() => "merged".to_string(),
                None => "whole sweep".to_string(),
            };
            let state = if file.done >= file.expected {
                "done".to_string()
            } else {
                match &file.writer {
                    WriterState::Idle => "stopped: no process is writing it; rerun it to resume".to_string(),
                    WriterState::Dead { .. } => format!("{}; rerun it to resume", file.writer),
                    w => w.to_string(),
                }
            };
            let name = file.path.file_name().map_or(file.path.display(), |n| Path::new(n).display());
            writeln!(f, "  {what:>14}: {:>6}/{:<6} {name}  {state}", file.done, file.expected)?;
        }
        if !self.shards_without_file.is_empty() && self.missing() > 0 {
            let list: Vec<String> = self.shards_without_file.iter().map(|k| k.to_string()).collect();
            writeln!(f, "  not started: shards {}", list.join(", "))?;
        }
        Ok(())
    }
}

/// What [`sweep_status`] finds in a folder.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FolderStatus {
    /// The progress of every sweep with a results file there, one entry per spec.
    pub sweeps: Vec<SweepProgress>,
    /// The files there that a sweep would have written (named `sweep.jsonl` or
    /// `sweep.shard-00003-of-00008.jsonl`, or starting with a deradiff-sweep header) but that cannot be
    /// read as its results file, each with the reason: a FIFO or a device (never opened), no
    /// permission, another format, a malformed line, a header whose shard is not the one its
    /// name says. Their shards are not counted as "not started": they are listed here.
    pub unreadable: Vec<(PathBuf, String)>,
}

impl FolderStatus {
    /// Work items of its sweeps that no file has a row for yet (0: every sweep is complete).
    pub fn missing(&self) -> usize {
        self.sweeps.iter().map(SweepProgress::missing).sum()
    }
}

/// Why `path`, named `name`, is not the results file it should be; `Ok` with the file if it is.
fn check_results_file(path: &Path, name: &str) -> std::result::Result<ResultsFile, String> {
    let file = read_results(path).map_err(|e| match e {
        Error::MalformedResults { line, detail, .. } => format!("line {line}: {detail}"),
        Error::Io { source, .. } => source.to_string(),
        other => other.to_string(),
    })?;
    if let Some(named) = shard_of_file_name(name) {
        if named != file.header.shard {
            let show = |s: Option<Shard>| s.map_or("the whole sweep".to_string(), |s| format!("shard {s}"));
            return Err(format!(
                "its header holds {} but its name says {}: it was renamed or copied from another folder",
                show(file.header.shard),
                show(named)
            ));
        }
    }
    Ok(file)
}

/// Progress of every sweep whose results files lie in `dir` (see [`FolderStatus`]), one entry
/// per spec; other files are skipped (a results file without a spec is reported on its own).
/// Files that should be results files and are not are listed in [`FolderStatus::unreadable`],
/// never opened for a blocking read. An error only for a folder that cannot be read.
pub fn sweep_status(dir: impl AsRef<Path>) -> Result<FolderStatus> {
    let dir = dir.as_ref();
    let meta = std::fs::metadata(dir).map_err(Error::io(dir))?;
    if !meta.is_dir() {
        return Err(Error::InvalidArgument(format!(
            "{} is not a folder: give the sweep's output folder",
            dir.display()
        )));
    }
    let mut paths: Vec<(PathBuf, String)> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(Error::io(dir))? {
        let path = entry.map_err(Error::io(dir))?.path();
        if let Some(name) = path.file_name().and_then(|n| n.to_str()).filter(|n| n.ends_with(".jsonl")) {
            paths.push((path.clone(), name.to_string()));
        }
    }
    paths.sort();
    let mut status = FolderStatus::default();
    // Per sweep, the items some file has a row for.
    let mut items: Vec<HashSet<usize>> = Vec::new();
    for (path, name) in paths {
        if shard_of_file_name(&name).is_none() && !is_results_file(&path) {
            continue;
        }
        let file = match check_results_file(&path, &name) {
            Ok(f) => f,
            Err(why) => {
                status.unreadable.push((path, why));
                continue;
            }
        };
        let h = &file.header;
        let (spec, hash) = match (&h.spec, &h.spec_hash) {
            (Some(s), Some(hash)) => (Some(s), hash.clone()),
            _ => (None, format!("(no spec: {})", path.display())),
        };
        let total = spec.map_or(file.rows.len(), |s| s.len());
        let expected = spec.map_or(file.rows.len(), |s| s.shard_items(h.shard).count());
        let i = match status.sweeps.iter().position(|g| g.spec_hash == hash) {
            Some(i) => i,
            None => {
                status.sweeps.push(SweepProgress {
                    spec_hash: hash.clone(),
                    model: h.model.clone(),
                    spec: spec.cloned(),
                    total,
                    done: 0,
                    shards: None,
                    files: Vec::new(),
                    shards_without_file: Vec::new(),
                });
                items.push(HashSet::new());
                status.sweeps.len() - 1
            }
        };
        let group = &mut status.sweeps[i];
        group.shards = group.shards.or(h.shard.map(|s| s.count));
        // Rows counted once per item: a merged file and the shard files hold the same ones.
        match spec {
            Some(spec) => items[i].extend(file.rows.iter().filter_map(|r| spec.item_of(r)).map(|it| it.index)),
            None => items[i].extend(0..file.rows.len()),
        }
        let writer = writer_state(&path);
        group.files.push(FileProgress { path, shard: h.shard, done: file.rows.len(), expected, writer });
    }
    // A shard whose file is unreadable is not "not started": it is listed as unreadable.
    let unreadable_shards: HashSet<Shard> = status
        .unreadable
        .iter()
        .filter_map(|(p, _)| p.file_name().and_then(|n| n.to_str()).and_then(shard_of_file_name).flatten())
        .collect();
    for (g, items) in status.sweeps.iter_mut().zip(&items) {
        g.done = items.len().min(g.total);
        if let Some(n) = g.shards {
            let have: HashSet<usize> = g.files.iter().filter_map(|f| f.shard.map(|s| s.index)).collect();
            g.shards_without_file = (0..n)
                .filter(|&k| !have.contains(&k) && !unreadable_shards.contains(&Shard { index: k, count: n }))
                .collect();
        }
    }
    Ok(status)
}
