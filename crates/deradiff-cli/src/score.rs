//! `deradiff score`: scores a folder of images (made by any tool) against their prompts with the
//! rewards of a sweep, writing one row per image (JSON lines or CSV).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::DType;
use deradiff_sd::{parse_device, RgbImage};
use deradiff_tune::{AestheticScore, ClipScore, ClipScorer, HpsScore, PickScore};

use crate::error::{CliError, Context, Result};

/// The most images one `score` run reads.
const MAX_IMAGES: usize = 100_000;

/// Images scored per model call.
const BATCH: usize = 32;

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
    /// CLIP score from a CLIPModel directory.
    #[arg(long)]
    clip: Option<PathBuf>,
    /// PickScore from a CLIPModel directory (e.g. PickScore_v1).
    #[arg(long)]
    pickscore: Option<PathBuf>,
    /// The tokenizer/preprocessor directory of --pickscore, if it is not in the model directory.
    #[arg(long)]
    pickscore_processor: Option<PathBuf>,
    /// HPS v2 / v2.1 from its open_clip checkpoint as safetensors (with --hps-config and
    /// --hps-tokenizer).
    #[arg(long, requires_all = ["hps_config", "hps_tokenizer"])]
    hps: Option<PathBuf>,
    /// The open_clip_config.json of --hps.
    #[arg(long, requires = "hps")]
    hps_config: Option<PathBuf>,
    /// A CLIP tokenizer directory for --hps.
    #[arg(long, requires = "hps")]
    hps_tokenizer: Option<PathBuf>,
    /// The LAION aesthetic predictor's CLIP model directory (with --aesthetic-mlp).
    #[arg(long, requires = "aesthetic_mlp")]
    aesthetic: Option<PathBuf>,
    /// The aesthetic predictor's MLP (safetensors).
    #[arg(long, requires = "aesthetic")]
    aesthetic_mlp: Option<PathBuf>,
    /// Device: cpu, cuda[:N] or metal[:N].
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Output file: `.jsonl` (one JSON object per image) or `.csv`; written atomically.
    #[arg(long, default_value = "deradiff-out/scores.jsonl")]
    out: PathBuf,
    /// No "wrote …" line.
    #[arg(long, short)]
    quiet: bool,
}

/// One scored image.
struct Row {
    image: String,
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

pub(crate) fn score(args: ScoreArgs) -> Result<()> {
    let format_csv = match args.out.extension().and_then(|e| e.to_str()) {
        Some("jsonl") => false,
        Some("csv") => true,
        _ => return Err(CliError::usage(format!("--out {}: the name must end in .jsonl or .csv", args.out.display()))),
    };
    if args.clip.is_none() && args.pickscore.is_none() && args.aesthetic.is_none() && args.hps.is_none() {
        return Err(CliError::usage(
            "give a reward: --clip DIR, --pickscore DIR, --hps FILE (with --hps-config, --hps-tokenizer) and/or \
             --aesthetic DIR --aesthetic-mlp FILE",
        ));
    }
    let needs_prompts = args.clip.is_some() || args.pickscore.is_some() || args.hps.is_some();
    let files = image_files(&args.images)?;
    // The prompt of each image: (id, text).
    let prompts: Option<Vec<(String, String)>> = match (&args.prompt, &args.prompts_file) {
        (Some(p), _) => Some(vec![(p.clone(), p.clone()); files.len()]),
        (None, Some(file)) => {
            let entries = deradiff_tune::read_prompt_file(file, args.prompt_column.as_deref())
                .with_context(|| format!("cannot read --prompts-file {}", file.display()))?;
            if entries.len() != files.len() {
                return Err(CliError::usage(format!(
                    "--prompts-file {} has {} prompts for the {} PNG files of --images {}: give one prompt per image \
                     (in file-name order)",
                    file.display(),
                    entries.len(),
                    files.len(),
                    args.images.display()
                )));
            }
            Some(entries.into_iter().map(|e| (e.id, e.text)).collect())
        }
        (None, None) if needs_prompts => {
            return Err(CliError::usage(
                "--clip, --pickscore and --hps score images against prompts: give --prompt or --prompts-file",
            ))
        }
        (None, None) => None,
    };
    let device =
        parse_device(&args.device).usage_context(format!("--device {} is not a usable device", args.device))?;
    let mut names = Vec::new();
    let mut clip = None;
    let mut pick = None;
    let mut aesthetic = None;
    let mut hps = None;
    if let Some(dir) = &args.clip {
        clip = Some(
            ClipScore::load(dir, DType::F32, &device)
                .with_context(|| format!("cannot load --clip {}", dir.display()))?,
        );
        names.push("clip_score");
    }
    if let Some(dir) = &args.pickscore {
        let processor = args.pickscore_processor.as_deref().unwrap_or(dir);
        let scorer = ClipScorer::load_with_processor(dir, processor, DType::F32, &device)
            .with_context(|| format!("cannot load --pickscore {}", dir.display()))?;
        pick = Some(PickScore::new(Arc::new(scorer)));
        names.push("pickscore");
    }
    if let (Some(file), Some(config), Some(tokenizer)) = (&args.hps, &args.hps_config, &args.hps_tokenizer) {
        hps = Some(
            HpsScore::load_open_clip(file, config, tokenizer, DType::F32, &device)
                .with_context(|| format!("cannot load --hps {}", file.display()))?,
        );
        names.push("hps");
    }
    if let (Some(dir), Some(mlp)) = (&args.aesthetic, &args.aesthetic_mlp) {
        aesthetic = Some(AestheticScore::load(dir, mlp, DType::F32, &device).with_context(|| {
            format!(
                "cannot load the aesthetic predictor (--aesthetic {} --aesthetic-mlp {})",
                dir.display(),
                mlp.display()
            )
        })?);
        names.push("aesthetic");
    }
    let mut rows = Vec::with_capacity(files.len());
    // In batches (as a library call on a slice of images scores them), images read per batch.
    for (b, chunk) in files.chunks(BATCH).enumerate() {
        let images: Vec<RgbImage> = chunk
            .iter()
            .map(RgbImage::load_png)
            .collect::<std::result::Result<_, _>>()
            .context("an image of --images cannot be scored")?;
        let first = b * BATCH;
        let texts: Vec<&str> = match &prompts {
            Some(p) => p[first..first + chunk.len()].iter().map(|(_, t)| t.as_str()).collect(),
            None => Vec::new(),
        };
        let mut columns: Vec<Vec<f64>> = Vec::new();
        if let Some(r) = &clip {
            columns.push(r.score_images(&images, &texts).context("CLIP score")?);
        }
        if let Some(r) = &pick {
            columns.push(r.score_images(&images, &texts).context("PickScore")?);
        }
        if let Some(r) = &hps {
            columns.push(r.score_images(&images, &texts).context("HPS")?);
        }
        if let Some(r) = &aesthetic {
            columns.push(r.score_images(&images).context("aesthetic score")?);
        }
        for (i, file) in chunk.iter().enumerate() {
            rows.push(Row {
                image: file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                prompt_id: prompts.as_ref().map(|p| p[first + i].0.clone()),
                prompt: prompts.as_ref().map(|p| p[first + i].1.clone()),
                scores: columns.iter().map(|c| c[i]).collect(),
            });
        }
    }
    let text = if format_csv { csv(&names, &rows) } else { jsonl(&names, &rows)? };
    deradiff_core::io::write_atomic(&args.out, text.as_bytes())
        .map_err(|e| CliError::because(format!("cannot write {}", args.out.display()), e))?;
    if !args.quiet {
        eprintln!("wrote {} ({} images)", args.out.display(), rows.len());
    }
    Ok(())
}

fn jsonl(names: &[&str], rows: &[Row]) -> Result<String> {
    let mut out = String::new();
    for row in rows {
        let mut obj = serde_json::Map::new();
        obj.insert("image".into(), row.image.clone().into());
        if let (Some(id), Some(p)) = (&row.prompt_id, &row.prompt) {
            obj.insert("prompt_id".into(), id.clone().into());
            obj.insert("prompt".into(), p.clone().into());
        }
        for (name, &s) in names.iter().zip(&row.scores) {
            let v = serde_json::Number::from_f64(s)
                .ok_or_else(|| CliError::runtime(format!("{}: the {name} is {s}, not a finite number", row.image)))?;
            obj.insert((*name).into(), v.into());
        }
        out.push_str(&serde_json::Value::Object(obj).to_string());
        out.push('\n');
    }
    Ok(out)
}

fn csv(names: &[&str], rows: &[Row]) -> String {
    let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    let mut out = String::from("image,prompt_id,prompt");
    for n in names {
        let _ = write!(out, ",{n}");
    }
    out.push('\n');
    for row in rows {
        let _ = write!(
            out,
            "{},{},{}",
            quote(&row.image),
            quote(row.prompt_id.as_deref().unwrap_or("")),
            quote(row.prompt.as_deref().unwrap_or(""))
        );
        for s in &row.scores {
            let _ = write!(out, ",{s:?}");
        }
        out.push('\n');
    }
    out
}
