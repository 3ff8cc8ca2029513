//! The results file of a sweep: its header and rows, reading, resuming, writing (JSONL and CSV).
//!
//! JSON lines: the first is a [`SweepHeader`] (model description, samples per prompt, reward
//! names), every other one a [`SweepRow`]. Rows are keyed by (λ, prompt id); λ is written with
//! round-trip precision, so a row read back matches its grid value exactly.
//!
//! A last line cut short by a crash (no final newline, not valid JSON) is dropped; any other
//! line that is not a row is an error ([`Error::MalformedResults`]).

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::Prompt;
use crate::spec::{Shard, SweepSpec, WorkItem};

/// The `format` field of a results file's header.
pub const RESULTS_FORMAT: &str = "deradiff-sweep";
/// The version of the results file format.
pub const RESULTS_VERSION: u32 = 1;
/// The largest results file read: 4 GiB (a sweep of [`MAX_WORK_ITEMS`](crate::MAX_WORK_ITEMS)
/// rows writes a few hundred bytes per row).
pub const MAX_RESULTS_FILE_BYTES: u64 = 4 << 30;

/// What to do when the output file exists already.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum IfExists {
    /// Keep its rows and compute only the missing ones (the default).
    #[default]
    Resume,
    /// Start afresh, discarding it.
    Overwrite,
    /// Refuse ([`Error::OutputExists`]).
    Fail,
}

/// Where a sweep writes its rows.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepOutput {
    /// The JSON-lines file (the record a sweep resumes from).
    pub jsonl: PathBuf,
    /// An optional CSV copy (one line per row; columns `<reward>_mean`, `<reward>_std`).
    pub csv: Option<PathBuf>,
    /// What to do when `jsonl` exists.
    pub if_exists: IfExists,
}

impl SweepOutput {
    /// Rows to `jsonl` only, resuming it if it exists.
    pub fn jsonl(path: impl Into<PathBuf>) -> Self {
        Self { jsonl: path.into(), csv: None, if_exists: IfExists::Resume }
    }

    /// Adds a CSV copy.
    pub fn with_csv(mut self, path: impl Into<PathBuf>) -> Self {
        self.csv = Some(path.into());
        self
    }
}

/// A reward's summary over the samples of one (λ, prompt).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RewardSummary {
    /// The reward's name.
    pub name: String,
    /// Mean score.
    pub mean: f64,
    /// Sample standard deviation of the scores (0 for one sample).
    pub std: f64,
    /// Every sample's score, when the sweep keeps them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scores: Option<Vec<f64>>,
}

impl RewardSummary {
    /// Mean and sample SD of `scores` (at least one).
    pub fn from_scores(name: impl Into<String>, scores: &[f64], keep: bool) -> Self {
        let n = scores.len().max(1) as f64;
        let mean = scores.iter().sum::<f64>() / n;
        let std = if scores.len() > 1 {
            (scores.iter().map(|s| (s - mean) * (s - mean)).sum::<f64>() / (n - 1.0)).sqrt()
        } else {
            0.0
        };
        Self { name: name.into(), mean, std, scores: keep.then(|| scores.to_vec()) }
    }
}

/// One (λ, prompt) result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepRow {
    /// λ.
    pub lambda: f64,
    /// Index of the prompt in the sweep's prompt list when the row was computed.
    pub prompt_index: usize,
    /// The prompt's id.
    pub prompt: String,
    /// The prompt's seed.
    pub seed: u64,
    /// Number of samples.
    pub samples: usize,
    /// One summary per reward, in the sweep's reward order.
    pub rewards: Vec<RewardSummary>,
    /// The largest saturation of the row's images: the fraction of an image's pixels that the
    /// decoder's clamp changed (near 1: black, white or pure colours everywhere, as a λ far
    /// outside `[0, 1]` gives). Absent where the model has no images (the analytic testbed) and
    /// in files written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saturation: Option<f64>,
    /// The row's images as PNG files (one per sample, in sample order), where the sweep saved
    /// them ([`SweepConfig::save_images`](crate::SweepConfig::save_images)): paths relative to
    /// the results file's folder (`images/p0003-s42-l0.500.png`, see
    /// [`sweep_image_name`](crate::sweep_image_name)). Empty, and absent from the JSON, where no
    /// images were saved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<String>,
}

impl SweepRow {
    /// The summary of the reward called `name`.
    pub fn reward(&self, name: &str) -> Option<&RewardSummary> {
        self.rewards.iter().find(|r| r.name == name)
    }

    pub(crate) fn key(&self) -> (u64, String, u64) {
        ((self.lambda + 0.0).to_bits(), self.prompt.clone(), self.seed)
    }
}

/// The first line of a results file: what the rows were computed with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepHeader {
    /// Always [`RESULTS_FORMAT`].
    pub format: String,
    /// [`RESULTS_VERSION`].
    pub version: u32,
    /// [`SweepModel::describe`](crate::SweepModel::describe) of the model.
    pub model: String,
    /// Samples per (λ, prompt).
    pub samples_per_prompt: usize,
    /// The rewards' names, in column order.
    pub rewards: Vec<String>,
    /// A hash of the prompt set (ids, texts and seeds, in order;
    /// [`prompts_hash`](crate::prompts_hash)): a resume with another prompt set is an error.
    /// Absent in files written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompts: Option<String>,
    /// The whole sweep: its λ grid and prompt entries, which number the work items (absent in
    /// files written before sharding existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<SweepSpec>,
    /// [`spec_hash`](crate::spec_hash) of the sweep: shards of one sweep share it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_hash: Option<String>,
    /// The shard this file holds (`None`: the whole sweep).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<Shard>,
}

// The work item of a row: with the rows, so that `spec` knows nothing of the results format.
impl SweepSpec {
    /// The item a row belongs to, if it is one of this spec's.
    pub fn item_of(&self, row: &SweepRow) -> Option<WorkItem> {
        let lambda = self.lambdas.iter().position(|&l| (l + 0.0).to_bits() == (row.lambda + 0.0).to_bits())?;
        let prompt = self.prompts.iter().position(|p| p.id == row.prompt && p.seed == row.seed)?;
        let index = prompt * self.lambdas.len() + lambda;
        Some(WorkItem { index, prompt, lambda })
    }
}

/// The contents of a results file.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultsFile {
    /// Its header.
    pub header: SweepHeader,
    /// Its rows, in file order.
    pub rows: Vec<SweepRow>,
    /// Whether its last line was cut short (and was ignored).
    pub truncated_tail: bool,
}

/// Reads a results file: the header, then every row. A last line cut short by a crash is
/// ignored (and reported in [`ResultsFile::truncated_tail`]); anything else that is not a row
/// is an [`Error::MalformedResults`] naming the line.
///
/// Only a regular file of at most [`MAX_RESULTS_FILE_BYTES`] is read: a FIFO, a device or a
/// folder is refused without being opened for a blocking read, naming what it is.
pub fn read_results(path: impl AsRef<Path>) -> Result<ResultsFile> {
    let path = path.as_ref();
    let bytes = deradiff_core::io::read_regular_file(path, MAX_RESULTS_FILE_BYTES).map_err(|e| {
        if e.kind() == std::io::ErrorKind::FileTooLarge {
            Error::MalformedResults {
                path: path.to_path_buf(),
                line: 1,
                detail: format!(
                    "the file is larger than {} GiB (MAX_RESULTS_FILE_BYTES), more than a sweep of MAX_WORK_ITEMS \
                     rows writes: is it a results file?",
                    MAX_RESULTS_FILE_BYTES >> 30
                ),
            }
        } else {
            Error::io(path)(e)
        }
    })?;
    let parsed = parse_results(&bytes, path)?;
    let header = parsed.header.ok_or_else(|| Error::MalformedResults {
        path: path.to_path_buf(),
        line: 1,
        detail: "the file is empty: it has no deradiff-sweep header line".into(),
    })?;
    Ok(ResultsFile { header, rows: parsed.rows, truncated_tail: parsed.good_len < bytes.len() && !parsed.tail_ok })
}

struct Parsed {
    header: Option<SweepHeader>,
    rows: Vec<SweepRow>,
    /// Bytes up to the end of the last complete, valid line.
    good_len: usize,
    /// Whether the unterminated last line (if any) was a valid row, kept in `rows`.
    tail_ok: bool,
}

fn parse_results(bytes: &[u8], path: &Path) -> Result<Parsed> {
    let malformed = |line: usize, detail: String| Error::MalformedResults { path: path.to_path_buf(), line, detail };
    let mut header: Option<SweepHeader> = None;
    let mut rows = Vec::new();
    let mut keys = HashSet::new();
    let mut good_len = 0usize;
    let mut tail_ok = false;
    let mut start = 0usize;
    let mut line_no = 0usize;
    while start < bytes.len() {
        line_no += 1;
        let (end, terminated) = match bytes[start..].iter().position(|&b| b == b'\n') {
            Some(i) => (start + i, true),
            None => (bytes.len(), false),
        };
        let raw = &bytes[start..end];
        let next = if terminated { end + 1 } else { end };
        let parsed: std::result::Result<Option<Line>, String> = std::str::from_utf8(raw)
            .map_err(|e| format!("not UTF-8 text ({e})"))
            .and_then(|text| parse_line(text.trim(), header.is_none()));
        match parsed {
            Ok(None) => {}
            Ok(Some(Line::Header(h))) => header = Some(h),
            Ok(Some(Line::Row(row))) => {
                if !keys.insert(row.key()) {
                    return Err(malformed(
                        line_no,
                        format!("a second row for λ = {}, prompt {:?}, seed {}", row.lambda, row.prompt, row.seed),
                    ));
                }
                rows.push(row);
            }
            Err(detail) if !terminated => {
                // A last line without its newline that does not parse: a write cut short.
                let _ = detail;
                break;
            }
            Err(detail) => return Err(malformed(line_no, detail)),
        }
        if terminated {
            good_len = next;
        } else {
            tail_ok = true;
        }
        start = next;
    }
    Ok(Parsed { header, rows, good_len, tail_ok })
}

enum Line {
    Header(SweepHeader),
    Row(SweepRow),
}

fn parse_line(text: &str, expect_header: bool) -> std::result::Result<Option<Line>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    if expect_header {
        let h: SweepHeader = serde_json::from_str(text)
            .map_err(|e| format!("expected the deradiff-sweep header line, found something else ({e})"))?;
        if h.format != RESULTS_FORMAT {
            return Err(format!("the header's format is {:?}, not {RESULTS_FORMAT:?}", h.format));
        }
        if h.version != RESULTS_VERSION {
            return Err(format!("results format version {} is not supported (this is {RESULTS_VERSION})", h.version));
        }
        return Ok(Some(Line::Header(h)));
    }
    let row: SweepRow = serde_json::from_str(text).map_err(|e| format!("not a sweep row ({e})"))?;
    if !row.lambda.is_finite() {
        return Err(format!("λ is {}", row.lambda));
    }
    Ok(Some(Line::Row(row)))
}

/// Appends rows to the JSONL (and CSV) of a sweep.
pub(crate) struct ResultsWriter {
    jsonl_path: PathBuf,
    jsonl: File,
    csv: Option<(PathBuf, File)>,
    /// The rows found in the file when resuming.
    pub(crate) existing: Vec<SweepRow>,
    /// The lock record beside the file ([`crate::lock`]), removed when the writer is dropped.
    lock_record: Option<PathBuf>,
}

impl Drop for ResultsWriter {
    fn drop(&mut self) {
        // Before the file's lock is released (the fields are dropped after this).
        if let Some(path) = &self.lock_record {
            crate::lock::remove_record(path);
        }
    }
}

/// Removes a lock record when opening a results file fails after it was written.
struct RecordGuard(Option<PathBuf>);

impl Drop for RecordGuard {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            crate::lock::remove_record(path);
        }
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The CSV header line of a sweep with these rewards.
fn csv_header(rewards: &[String]) -> String {
    let mut s = String::from("lambda,prompt_index,prompt,seed,samples");
    for r in rewards {
        s.push_str(&format!(",{r}_mean,{r}_std"));
    }
    s.push('\n');
    s
}

/// Errors unless every mean and SD of `row` is a finite number: JSON has no NaN or ∞ (they
/// would be written as `null` and the file would not read back), and the CSV copy refuses them
/// as the JSON lines do.
fn check_finite(row: &SweepRow) -> Result<()> {
    for r in &row.rewards {
        for (what, v) in [("mean", r.mean), ("SD", r.std)] {
            if !v.is_finite() {
                return Err(Error::NonFiniteReward {
                    reward: r.name.clone(),
                    value: v,
                    context: format!("the {what} of λ = {}, prompt {:?}, seed {}", row.lambda, row.prompt, row.seed),
                });
            }
        }
    }
    Ok(())
}

/// One CSV line of a row (the reward columns in `rewards` order; empty where a row lacks one).
fn csv_line(row: &SweepRow, rewards: &[String]) -> String {
    let mut s = format!("{},{},{},{},{}", row.lambda, row.prompt_index, csv_field(&row.prompt), row.seed, row.samples);
    for r in rewards {
        match row.reward(r) {
            Some(x) => s.push_str(&format!(",{},{}", x.mean, x.std)),
            None => s.push_str(",,"),
        }
    }
    s.push('\n');
    s
}

fn append_line(file: &mut File, path: &Path, line: &str) -> Result<()> {
    file.write_all(line.as_bytes()).map_err(Error::io(path))?;
    file.flush().map_err(Error::io(path))?;
    file.sync_data().map_err(Error::io(path))
}

impl ResultsWriter {
    pub(crate) fn open(out: &SweepOutput, header: &SweepHeader, prompts: &[Prompt]) -> Result<Self> {
        let path = &out.jsonl;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        }
        if let Ok(meta) = std::fs::metadata(path) {
            if !meta.is_file() {
                return Err(Error::InvalidArgument(format!(
                    "the results file {} exists and is not a regular file (a directory, device or FIFO): \
                     choose a file path",
                    path.display()
                )));
            }
        }
        // Opened (created if missing) and locked before anything is read: a second sweep on the
        // same file fails here at once instead of interleaving rows with this one.
        let mut jsonl = OpenOptions::new().read(true).append(true).create(true).open(path).map_err(Error::io(path))?;
        match jsonl.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(Error::ResultsLocked(path.clone())),
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(path)(e)),
        }
        // Who holds the lock, for `status`: kept until this writer is dropped, left behind by a kill.
        let lock_record = crate::lock::write_record(path);
        let mut guard = RecordGuard(lock_record.clone());
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut jsonl, &mut bytes).map_err(Error::io(path))?;
        let has_content = bytes.iter().any(|b| !b.is_ascii_whitespace());
        if has_content && out.if_exists == IfExists::Fail {
            return Err(Error::OutputExists(path.clone()));
        }
        let resume = has_content && out.if_exists == IfExists::Resume;
        let mut existing = Vec::new();
        let mut keep_len = 0usize;
        let mut needs_newline = false;
        let mut have_header = false;
        if resume {
            let parsed = parse_results(&bytes, path)?;
            if let Some(h) = &parsed.header {
                check_header(path, h, header)?;
                check_rows_fit(path, &parsed.rows, prompts)?;
                existing = parsed.rows;
                have_header = true;
                keep_len = parsed.good_len;
                if parsed.tail_ok {
                    keep_len = bytes.len();
                    needs_newline = true;
                }
            }
        }
        jsonl.set_len(keep_len as u64).map_err(Error::io(path))?;
        if needs_newline {
            append_line(&mut jsonl, path, "\n")?;
        }
        if !have_header {
            let mut line = serde_json::to_string(header)?;
            line.push('\n');
            append_line(&mut jsonl, path, &line)?;
        }
        let csv = match &out.csv {
            None => None,
            Some(csv_path) => {
                let mut text = csv_header(&header.rewards);
                for r in &existing {
                    text.push_str(&csv_line(r, &header.rewards));
                }
                crate::error::write_atomic(csv_path, text.as_bytes())?;
                let f = OpenOptions::new().append(true).open(csv_path).map_err(Error::io(csv_path))?;
                Some((csv_path.clone(), f))
            }
        };
        guard.0 = None;
        Ok(Self { jsonl_path: path.clone(), jsonl, csv, existing, lock_record })
    }

    pub(crate) fn append(&mut self, row: &SweepRow) -> Result<()> {
        check_finite(row)?;
        let mut line = serde_json::to_string(row)?;
        line.push('\n');
        append_line(&mut self.jsonl, &self.jsonl_path, &line)?;
        if let Some((path, f)) = self.csv.as_mut() {
            let names: Vec<String> = row.rewards.iter().map(|r| r.name.clone()).collect();
            append_line(f, path, &csv_line(row, &names))?;
        }
        Ok(())
    }
}

/// Errors unless the file's header `file` may be resumed by the sweep of header `config`: the
/// same model, samples and rewards, prompt entries and, for a shard, the same shard of the same
/// spec (an unsharded file may be resumed with more λ). The error names the setting that differs,
/// with both values.
fn check_header(path: &Path, file: &SweepHeader, config: &SweepHeader) -> Result<()> {
    let mismatch = |field: &str, a: String, b: String| Error::ResumeMismatch {
        path: path.to_path_buf(),
        field: field.into(),
        in_file: a,
        in_config: b,
    };
    let sharded = file.shard.is_some() || config.shard.is_some();
    // A shard resumes only as the same shard of the same sweep: its items depend on both.
    if sharded && file.shard != config.shard {
        let show = |s: Option<Shard>| s.map_or("none (the whole sweep)".to_string(), |s| s.to_string());
        return Err(mismatch("shard", show(file.shard), show(config.shard)));
    }
    match crate::difference::header_difference(file, config, sharded) {
        Some(d) => Err(mismatch(&d.field, d.first, d.second)),
        None => Ok(()),
    }
}

/// Every row of a file being resumed belongs to this sweep's prompt set, with the prompt's seed
/// (files written before headers recorded the prompt set are checked row by row).
fn check_rows_fit(path: &Path, rows: &[SweepRow], prompts: &[Prompt]) -> Result<()> {
    let entries: HashSet<(&str, u64)> = prompts.iter().map(|p| (p.id.as_str(), p.seed)).collect();
    for row in rows {
        if !entries.contains(&(row.prompt.as_str(), row.seed)) {
            let seeds: Vec<u64> = prompts.iter().filter(|p| p.id == row.prompt).map(|p| p.seed).collect();
            return Err(Error::ResumeMismatch {
                path: path.to_path_buf(),
                field: "prompts".into(),
                in_file: format!("a row for prompt {:?} with seed {}", row.prompt, row.seed),
                in_config: if seeds.is_empty() {
                    "no prompt with that id".into()
                } else {
                    format!("that prompt with seeds {seeds:?}")
                },
            });
        }
    }
    Ok(())
}

/// Writes a results file (header, then the rows) atomically — a mean or SD that is NaN or
/// infinite is an [`Error::NonFiniteReward`] and nothing is written: what
/// [`merge_results`](crate::merge_results) gives, in the format [`read_results`] and a resumed
/// sweep read.
pub fn write_results(path: impl AsRef<Path>, header: &SweepHeader, rows: &[SweepRow]) -> Result<()> {
    let mut text = serde_json::to_string(header)?;
    text.push('\n');
    for r in rows {
        check_finite(r)?;
        text.push_str(&serde_json::to_string(r)?);
        text.push('\n');
    }
    crate::error::write_atomic(path.as_ref(), text.as_bytes())
}

/// Writes the CSV of results rows atomically (a NaN or infinite mean or SD is an
/// [`Error::NonFiniteReward`], as in the JSON lines): the columns a sweep's CSV has (`lambda`,
/// `prompt_index`, `prompt`, `seed`, `samples`, then `<reward>_mean`, `<reward>_std` for each of
/// `rewards`).
pub fn write_results_csv(path: impl AsRef<Path>, rewards: &[String], rows: &[SweepRow]) -> Result<()> {
    let mut text = csv_header(rewards);
    for r in rows {
        check_finite(r)?;
        text.push_str(&csv_line(r, rewards));
    }
    crate::error::write_atomic(path.as_ref(), text.as_bytes())
}

/// Whether `path` starts with a deradiff-sweep header line (a cheap look at its first line).
pub(crate) fn is_results_file(path: &Path) -> bool {
    use std::io::{BufRead, Read};
    // Never opened unless it is a regular file: a FIFO would block the read.
    if !matches!(deradiff_core::io::path_kind(path), Ok(deradiff_core::io::PathKind::File)) {
        return false;
    }
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
