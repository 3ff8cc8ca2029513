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
        let (_, this_hash) = spec_of(path, h)?;
        // The whole header but the shard: a spec edited under its old hash is another sweep too.
        let unsharded = |h: &SweepHeader| SweepHeader { shard: None, ..h.clone() };
        if this_hash != hash {
            return Err(merge_error(format!(
                "{} is a shard of another sweep (spec {this_hash}) than {} (spec {hash}): merge the files of \
                 one sweep only",
                path.display(),
                first_path.display()
            )));
        }
        if unsharded(h) != unsharded(&first.header) {
            return Err(merge_error(format!(
                "{} and {} record the same spec hash {hash} but headers that differ in more than their shard \
                 (the model, samples, rewards, prompts or λ grid): was one edited? Merge the files of one sweep only",
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
        return Err(Error::MissingItems { missing: missing.len(), total: spec.len(), first: shown.join("; ") });
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

/// What [`sweep_status`] finds in a folder.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FolderStatus {
    /// The progress of every sweep with a results file there, one entry per spec.
    pub sweeps: Vec<SweepProgress>,
    /// The files there that a sweep would have written (named `sweep.jsonl` or
    /// `sweep.shard-K-of-N.jsonl`, or starting with a deradiff-sweep header) but that cannot be
    /// read as its results file, each with the reason: a FIFO or a device (never opened), no
    /// permission, another format, a malformed line, a header whose shard is not the one its
    /// name says. Their shards are not counted as "not started": they are listed here.
    pub unreadable: Vec<(PathBuf, String)>,
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
        let group = match status.sweeps.iter_mut().position(|g| g.spec_hash == hash) {
            Some(i) => &mut status.sweeps[i],
            None => {
                status.sweeps.push(SweepProgress {
                    spec_hash: hash.clone(),
                    model: h.model.clone(),
                    total,
                    done: 0,
                    shards: h.shard.map(|s| s.count),
                    files: Vec::new(),
                    shards_without_file: Vec::new(),
                });
                status.sweeps.last_mut().expect("just pushed")
            }
        };
        group.done += file.rows.len();
        group.files.push((path.clone(), h.shard, file.rows.len(), expected));
    }
    // A shard whose file is unreadable is not "not started": it is listed as unreadable.
    let unreadable_shards: HashSet<Shard> = status
        .unreadable
        .iter()
        .filter_map(|(p, _)| p.file_name().and_then(|n| n.to_str()).and_then(shard_of_file_name).flatten())
        .collect();
    for g in &mut status.sweeps {
        if let Some(n) = g.shards {
            let have: HashSet<usize> = g.files.iter().filter_map(|f| f.1.map(|s| s.index)).collect();
            g.shards_without_file = (0..n)
                .filter(|&k| !have.contains(&k) && !unreadable_shards.contains(&Shard { index: k, count: n }))
                .collect();
        }
        // Merged and shard files of one spec both count their rows: report the larger view.
        g.done = g.done.min(g.total);
    }
    Ok(status)
}
