//! A static HTML report of a results folder: a sweep (or the shard files of a sharded one), a
//! tuning run, an agreement comparison — whatever the folder holds.
//!
//! [`write_report`] writes `report.html` into the folder, with its figures in `report_files/`
//! beside it; it references the sweep's saved images ([`SweepRow::images`]) and the figures the
//! commands wrote (`bo_trace.png`, `bland_altman.png`, `abs_error_ecdf.png`) by relative paths, so
//! the page opens from disk with no server and no network (no script or style from elsewhere; its
//! Content-Security-Policy allows nothing but its inline style and script and local images).
//!
//! * A sweep: its prompts as rows and its λ values as columns, each cell the row's images (or its
//!   numbers where the sweep saved none) with its rewards; a reward-vs-λ curve per reward with a
//!   95 % percentile bootstrap interval over the prompt entries
//!   ([`bootstrap_mean_interval`](crate::bootstrap_mean_interval)); a filter by prompt text and
//!   a sort by reward gain (a prompt's best mean reward over the grid minus its reward at λ = 0,
//!   or at the grid's smallest λ where 0 is not in it).
//! * A tuning run (`bo.json`): λ*, every evaluation, and the posterior figure.
//! * A comparison (`agreement.json`): the agreement statistics, the Bland–Altman and |Δ| ECDF
//!   figures.
//!
//! Every text from the files (prompts, ids, reward names, paths) is HTML-escaped. Opening the page
//! as `report.html#selftest=TEXT` runs a check in the page: every image and figure loaded, then
//! the filter `TEXT` applied; the outcome is written into the element `#selftest` (JSON).

mod html;

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::images::{folder_of, rebase_image_paths};
use crate::merge::merge_results;
use crate::plot::{reward_interval_png, IntervalPoint};
use crate::results::{read_results, SweepHeader, SweepRow};
use crate::spec::shard_of_file_name;
use crate::stats::{bootstrap_mean_interval, AgreementStats};

/// The report's file in the folder.
pub const REPORT_FILE: &str = "report.html";
/// The folder of the report's own figures, beside it.
pub const REPORT_ASSETS_DIR: &str = "report_files";
/// Bootstrap resamples of the reward curves' intervals.
const RESAMPLES: usize = 2000;
/// The largest JSON file (`bo.json`, `agreement.json`) read: 64 MiB.
const MAX_JSON_BYTES: u64 = 64 << 20;

/// What [`write_report`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportSummary {
    /// The page.
    pub html: PathBuf,
    /// The sections it has, in order (`sweep`, `tune`, `compare`).
    pub sections: Vec<&'static str>,
    /// Sweep rows shown.
    pub rows: usize,
    /// Images the page shows (saved images found on disk).
    pub images: usize,
    /// Images the rows list that are not on disk (shown as missing).
    pub missing_images: usize,
    /// Notes the page also gives (a sweep merged from its shards, items missing, no images).
    pub notes: Vec<String>,
}

/// A sweep as the report shows it.
pub(crate) struct SweepData {
    pub(crate) header: SweepHeader,
    pub(crate) rows: Vec<SweepRow>,
    /// Where the rows came from, in words.
    pub(crate) source: String,
    /// The reward curves: per reward, its figure's file name in [`REPORT_ASSETS_DIR`].
    pub(crate) curves: Vec<(String, String)>,
}

/// A tuning run as the report shows it.
pub(crate) struct TuneData {
    pub(crate) bo: serde_json::Value,
    pub(crate) trace: Option<String>,
}

/// A comparison as the report shows it.
pub(crate) struct CompareData {
    pub(crate) stats: AgreementStats,
    pub(crate) figures: Vec<String>,
}

/// Reads a JSON file of at most [`MAX_JSON_BYTES`].
fn read_json(path: &Path) -> Result<serde_json::Value> {
    let bytes = deradiff_core::io::read_regular_file(path, MAX_JSON_BYTES).map_err(Error::io(path))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::InvalidArgument(format!("{} is not the JSON deradiff writes: {e}", path.display())))
}

/// The sweep of `dir`: its `sweep.jsonl`, else its shard files merged (items missing allowed and
/// noted); `None` where it has neither.
fn load_sweep(dir: &Path, notes: &mut Vec<String>) -> Result<Option<SweepData>> {
    let whole = dir.join("sweep.jsonl");
    if whole.exists() {
        let file = read_results(&whole)?;
        return Ok(Some(SweepData {
            header: file.header,
            rows: file.rows,
            source: "sweep.jsonl".into(),
            curves: Vec::new(),
        }));
    }
    let mut shards: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(Error::io(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).and_then(shard_of_file_name).is_some_and(|s| s.is_some()))
        .collect();
    if shards.is_empty() {
        return Ok(None);
    }
    shards.sort();
    let mut merged = merge_results(&shards, true)?;
    let from = merged.folder.clone();
    rebase_image_paths(&mut merged.rows, &from, dir);
    let source = format!("{} shard files, merged for this report", shards.len());
    if !merged.missing.is_empty() {
        notes.push(format!(
            "{} of the sweep's work items have no row yet (a shard is missing or still running): their cells are \
             empty",
            merged.missing.len()
        ));
    }
    Ok(Some(SweepData { header: merged.header, rows: merged.rows, source, curves: Vec::new() }))
}

/// Per λ (sorted), the mean of `reward` over the rows' prompt entries and its bootstrap interval.
fn curve_points(rows: &[SweepRow], reward: &str) -> Vec<IntervalPoint> {
    let mut lambdas: Vec<f64> = rows.iter().map(|r| r.lambda + 0.0).collect();
    lambdas.sort_by(f64::total_cmp);
    lambdas.dedup();
    lambdas
        .into_iter()
        .filter_map(|l| {
            let means: Vec<f64> =
                rows.iter().filter(|r| r.lambda == l).filter_map(|r| r.reward(reward)).map(|s| s.mean).collect();
            let (low, high) = bootstrap_mean_interval(&means, RESAMPLES, 0, 0.95)?;
            let mean = means.iter().sum::<f64>() / means.len() as f64;
            Some(IntervalPoint { lambda: l, mean, low, high })
        })
        .collect()
}

/// Writes the reward curves of `sweep` into `assets` (one figure per reward, named by its index:
/// a reward's name is never a file name).
fn write_curves(sweep: &mut SweepData, assets: &Path) -> Result<()> {
    for (i, reward) in sweep.header.rewards.iter().enumerate() {
        let points = curve_points(&sweep.rows, reward);
        if points.is_empty() {
            continue;
        }
        let title = format!("{reward} against λ");
        let png = reward_interval_png(&points, reward, "95 % bootstrap interval over prompts", &title)?;
        let name = format!("reward_{i}.png");
        crate::error::write_atomic(&assets.join(&name), &png)?;
        sweep.curves.push((reward.clone(), format!("{REPORT_ASSETS_DIR}/{name}")));
    }
    Ok(())
}

/// Writes the report of the results folder `path` (see the module docs): `path/report.html` and
/// its figures in `path/report_files/`, each written atomically. An error when the folder holds
/// none of a sweep's results (`sweep.jsonl` or shard files), `bo.json` or `agreement.json`.
///
/// `path` may also be one results file (a merged file written under another name, `merge --out
/// all.jsonl`): its sweep alone is reported, in `report.html` beside it.
pub fn write_report(path: impl AsRef<Path>) -> Result<ReportSummary> {
    let path = path.as_ref();
    let (dir, file) = if path.is_file() { (folder_of(path), Some(path)) } else { (path, None) };
    if !dir.is_dir() {
        return Err(Error::InvalidArgument(format!(
            "{} is not a folder: give the output folder of a sweep, merge, tune or compare (or a results file)",
            dir.display()
        )));
    }
    let mut notes = Vec::new();
    let mut sweep = match file {
        Some(f) => {
            let results = read_results(f)?;
            let source = f.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            Some(SweepData { header: results.header, rows: results.rows, source, curves: Vec::new() })
        }
        None => load_sweep(dir, &mut notes)?,
    };
    let tune = match dir.join("bo.json") {
        p if file.is_none() && p.exists() => {
            let trace = dir.join("bo_trace.png").is_file().then(|| "bo_trace.png".to_string());
            Some(TuneData { bo: read_json(&p)?, trace })
        }
        _ => None,
    };
    let compare = match dir.join("agreement.json") {
        p if file.is_none() && p.exists() => {
            let stats: AgreementStats = serde_json::from_value(read_json(&p)?).map_err(|e| {
                Error::InvalidArgument(format!("{} is not the agreement.json compare writes: {e}", p.display()))
            })?;
            let figures = ["bland_altman.png", "abs_error_ecdf.png"]
                .into_iter()
                .filter(|f| dir.join(f).is_file())
                .map(String::from)
                .collect();
            Some(CompareData { stats, figures })
        }
        _ => None,
    };
    if sweep.is_none() && tune.is_none() && compare.is_none() {
        return Err(Error::InvalidArgument(format!(
            "{} holds no results to report: no sweep.jsonl or sweep.shard-00000-of-00004.jsonl-style shard files (deradiff sweep), \
             bo.json (deradiff tune) or agreement.json (deradiff compare)",
            dir.display()
        )));
    }
    let assets = dir.join(REPORT_ASSETS_DIR);
    let mut summary = ReportSummary {
        html: dir.join(REPORT_FILE),
        sections: Vec::new(),
        rows: 0,
        images: 0,
        missing_images: 0,
        notes: Vec::new(),
    };
    if let Some(s) = sweep.as_mut() {
        write_curves(s, &assets)?;
        summary.sections.push("sweep");
        summary.rows = s.rows.len();
        for image in s.rows.iter().flat_map(|r| &r.images) {
            if dir.join(image).is_file() {
                summary.images += 1;
            } else {
                summary.missing_images += 1;
            }
        }
        if s.rows.iter().all(|r| r.images.is_empty()) {
            notes.push(
                "this sweep saved no images (rerun it as deradiff sweep … --save-images to see them here): the table \
                 shows its numbers"
                    .into(),
            );
        }
        if summary.missing_images > 0 {
            notes.push(format!("{} images the rows list are not on disk", summary.missing_images));
        }
    }
    if tune.is_some() {
        summary.sections.push("tune");
    }
    if compare.is_some() {
        summary.sections.push("compare");
    }
    let page = html::page(dir, sweep.as_ref(), tune.as_ref(), compare.as_ref(), &notes);
    crate::error::write_atomic(&summary.html, page.as_bytes())?;
    summary.notes = notes;
    Ok(summary)
}
