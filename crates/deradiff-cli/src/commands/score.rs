//! `deradiff score`: scores a folder of images (made by any tool) against their prompts with the
//! rewards of a sweep, writing one row per image (JSON lines or CSV).
//!
//! Each file is decoded into the mode PIL opens it in and made RGB as each reward's reference
//! does ([`deradiff_rewards::ClipPreprocessor::reference_rgb`]: transformers' compositing on
//! white for CLIP score and PickScore, PIL's `convert("RGB")` for HPS v2, a resize in the file's
//! own mode for the aesthetic predictor and ImageReward); the `mode` column says what the file
//! was (`RGBA`, `P 4-bit tRNS`, `I;16 16-bit`, …).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use candle_core::DType;
use deradiff_core::io::{path_kind, PathKind};
use deradiff_rewards::{ImageScorer, PilImage};

use crate::args::{device_option, read_prompts_file, RewardArgs};
use crate::error::{CliError, Context, Result};
use crate::guard::{check_out_file, check_outputs};
use crate::output::write_file;

/// The most images one `score` run reads.
const MAX_IMAGES: usize = 100_000;

/// Images scored per model call.
const BATCH: usize = 32;

/// Options of `deradiff score`.
#[derive(Debug, clap::Args)]
pub(crate) struct ScoreArgs {
    /// Folder of PNG images, scored in file-name order (byte order of the names), 32 per model
    /// call (the scores of a library call on the same images).
    #[arg(long)]
    images: PathBuf,
    /// One prompt for every image.
    #[arg(long, conflicts_with = "prompts_file")]
    prompt: Option<String>,
    /// A prompt file (plain text, JSON lines, CSV, YAML, as `sweep` reads them): its prompts in
    /// order, one per image in file-name order; the counts must agree.
    #[arg(long)]
    prompts_file: Option<PathBuf>,
    /// The field / CSV column holding the prompt.
    #[arg(long, requires = "prompts_file")]
    prompt_column: Option<String>,
    /// Device: cpu, cuda[:N] or metal[:N].
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Output file: `.jsonl` (one JSON object per image) or `.csv`; written atomically.
    #[arg(long, default_value = "deradiff-out/scores.jsonl")]
    out: PathBuf,
    /// No "wrote …" line.
    #[arg(long, short)]
    quiet: bool,
    /// The rewards (last: the options after a help heading fall under it).
    #[command(flatten, next_help_heading = "Rewards")]
    rewards: RewardArgs,
}

/// One scored image.
struct Row {
    image: String,
    mode: String,
    prompt_id: Option<String>,
    prompt: Option<String>,
    scores: Vec<f64>,
}

/// The PNG files of `dir`, sorted by name.
fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(dir).map_err(|e| CliError::usage_because(format!("--images {}", dir.display()), e))?;
    if !meta.is_dir() {
        return Err(CliError::usage(format!("--images {} is not a folder", dir.display())));
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| CliError::because(format!("cannot list {}", dir.display()), e))? {
        let path = entry.map_err(|e| CliError::because(format!("cannot list {}", dir.display()), e))?.path();
        if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")) {
            // Never opened unless it is a regular file: a FIFO would block the read.
            match path_kind(&path) {
                Ok(PathKind::File) => {}
                Ok(kind) => {
                    return Err(CliError::usage(format!(
                        "--images {}: {} is {}, not a PNG file: move it out of the folder",
                        dir.display(),
                        path.display(),
                        kind.describe()
                    )))
                }
                Err(e) => return Err(CliError::because(format!("cannot inspect {}", path.display()), e)),
            }
            files.push(path);
            if files.len() > MAX_IMAGES {
                return Err(CliError::usage(format!(
                    "--images {} holds more than {MAX_IMAGES} PNG files; score them in parts",
                    dir.display()
                )));
            }
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(CliError::usage(format!("--images {} holds no .png files", dir.display())));
    }
    Ok(files)
}

/// The prompt of each of `images` images, as (id, text): `--prompt` for all, or
/// `--prompts-file` in order; none where no reward needs prompts.
fn prompts(args: &ScoreArgs, images: usize) -> Result<Option<Vec<(String, String)>>> {
    Ok(match (&args.prompt, &args.prompts_file) {
        (Some(p), _) => Some(vec![(p.clone(), p.clone()); images]),
        (None, Some(file)) => {
            let entries = read_prompts_file(file, args.prompt_column.as_deref())?;
            if entries.len() != images {
                return Err(CliError::usage(format!(
                    "--prompts-file {} has {} prompts for the {} PNG files of --images {}: give one prompt per image \
                     (in file-name order)",
                    file.display(),
                    entries.len(),
                    images,
                    args.images.display()
                )));
            }
            Some(entries.into_iter().map(|e| (e.id, e.text)).collect())
        }
        (None, None) => match args.rewards.needing_prompts() {
            Some(flag) => {
                return Err(CliError::usage(format!(
                    "{flag} scores images against prompts: give --prompt or --prompts-file"
                )))
            }
            None => None,
        },
    })
}

/// Scores `files` (with their `prompts`) by every reward, in batches (as a library call on a
/// slice of images scores them), the images read per batch.
fn score_files(
    files: &[PathBuf],
    prompts: Option<&[(String, String)]>,
    rewards: &[Box<dyn ImageScorer>],
) -> Result<Vec<Row>> {
    let mut rows = Vec::with_capacity(files.len());
    for (b, chunk) in files.chunks(BATCH).enumerate() {
        let images: Vec<PilImage> = chunk
            .iter()
            .map(PilImage::load_png)
            .collect::<std::result::Result<_, _>>()
            .context("an image of --images cannot be scored")?;
        let first = b * BATCH;
        let texts: Vec<&str> = match prompts {
            Some(p) => p[first..first + chunk.len()].iter().map(|(_, t)| t.as_str()).collect(),
            None => Vec::new(),
        };
        let texts = prompts.map(|_| texts.as_slice());
        let columns = rewards
            .iter()
            .map(|r| r.score_pil(&images, texts).with_context(|| format!("the {} of --images", r.name())))
            .collect::<Result<Vec<_>>>()?;
        for (i, file) in chunk.iter().enumerate() {
            rows.push(Row {
                image: file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                mode: images[i].description(),
                prompt_id: prompts.map(|p| p[first + i].0.clone()),
                prompt: prompts.map(|p| p[first + i].1.clone()),
                scores: columns.iter().map(|c| c[i]).collect(),
            });
        }
    }
    Ok(rows)
}

/// Runs `deradiff score`.
pub(crate) fn run(args: ScoreArgs) -> Result<()> {
    let format_csv = match args.out.extension().and_then(|e| e.to_str()) {
        Some("jsonl") => false,
        Some("csv") => true,
        _ => return Err(CliError::usage(format!("--out {}: the name must end in .jsonl or .csv", args.out.display()))),
    };
    args.rewards.require("give a reward")?;
    check_out_file("--out", &args.out)?;
    let files = image_files(&args.images)?;
    let mut inputs: Vec<(&str, &Path)> = files.iter().map(|f| ("--images", f.as_path())).collect();
    inputs.extend(args.prompts_file.as_deref().map(|p| ("--prompts-file", p)));
    inputs.extend(args.rewards.inputs());
    check_outputs(&[("--out", &args.out)], &inputs)?;
    let prompts = prompts(&args, files.len())?;
    let device = device_option(&args.device)?;
    let rewards = args.rewards.load(DType::F32, &device)?;
    let names: Vec<String> = rewards.iter().map(|r| r.name()).collect();
    let rows = score_files(&files, prompts.as_deref(), &rewards)?;
    let text = if format_csv { csv(&names, &rows)? } else { jsonl(&names, &rows)? };
    write_file(&args.out, text.as_bytes())?;
    if !args.quiet {
        eprintln!("wrote {} ({} images)", args.out.display(), rows.len());
    }
    Ok(())
}

/// The rows as JSON lines: the image, its mode, its prompt (id and text) and one field per reward.
fn jsonl(names: &[String], rows: &[Row]) -> Result<String> {
    let mut out = String::new();
    for row in rows {
        let mut obj = serde_json::Map::new();
        obj.insert("image".into(), row.image.clone().into());
        obj.insert("mode".into(), row.mode.clone().into());
        if let (Some(id), Some(p)) = (&row.prompt_id, &row.prompt) {
            obj.insert("prompt_id".into(), id.clone().into());
            obj.insert("prompt".into(), p.clone().into());
        }
        for (name, &s) in names.iter().zip(&row.scores) {
            let v = serde_json::Number::from_f64(s).ok_or_else(|| not_finite(row, name, s))?;
            obj.insert(name.clone(), v.into());
        }
        out.push_str(&serde_json::Value::Object(obj).to_string());
        out.push('\n');
    }
    Ok(out)
}

/// The error for a score that is NaN or infinite: refused in both formats (JSON has no NaN, and
/// a CSV `NaN` would pass as a number).
fn not_finite(row: &Row, name: &str, score: f64) -> CliError {
    CliError::runtime(format!("{}: the {name} is {score}, not a finite number", row.image))
}

/// The rows as CSV: image, mode, prompt_id, prompt and one column per reward (a score that is not
/// finite is an error, as in the JSON lines).
fn csv(names: &[String], rows: &[Row]) -> Result<String> {
    let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    let mut out = String::from("image,mode,prompt_id,prompt");
    for n in names {
        let _ = write!(out, ",{n}");
    }
    out.push('\n');
    for row in rows {
        let _ = write!(
            out,
            "{},{},{},{}",
            quote(&row.image),
            quote(&row.mode),
            quote(row.prompt_id.as_deref().unwrap_or("")),
            quote(row.prompt.as_deref().unwrap_or(""))
        );
        for (name, &s) in names.iter().zip(&row.scores) {
            if !s.is_finite() {
                return Err(not_finite(row, name, s));
            }
            let _ = write!(out, ",{s:?}");
        }
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_formats_refuse_a_score_that_is_not_finite() {
        let names = vec!["clip_score".to_string()];
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let rows = vec![Row {
                image: "a.png".into(),
                mode: "RGB".into(),
                prompt_id: Some("p".into()),
                prompt: Some("p".into()),
                scores: vec![bad],
            }];
            for text in [csv(&names, &rows).map(|_| ()), jsonl(&names, &rows).map(|_| ())] {
                let err = text.unwrap_err().to_string();
                assert!(err.contains("a.png: the clip_score is") && err.contains("not a finite number"), "{err}");
            }
        }
        let rows =
            vec![Row { image: "a.png".into(), mode: "RGB".into(), prompt_id: None, prompt: None, scores: vec![0.25] }];
        assert_eq!(
            csv(&names, &rows).unwrap(),
            "image,mode,prompt_id,prompt,clip_score\n\"a.png\",\"RGB\",\"\",\"\",0.25\n"
        );
    }
}
