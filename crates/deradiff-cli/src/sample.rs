//! `deradiff sample`: realigned text-to-image sampling from a reference Stable Diffusion
//! checkpoint (SD 1.x / 2.x, or SDXL — detected from the checkpoint) and aligned UNets.

use std::path::{Path, PathBuf};

use deradiff_core::{Flow, Realigner, SeededNoise, StepEvent};
use deradiff_sd::{parse_device, parse_dtype, LoadOptions, Request, RgbImage, StableDiffusion};
use indicatif::{ProgressBar, ProgressStyle};
use plotters::prelude::*;

use crate::SchedulerArg;

/// Options of `deradiff sample`.
#[derive(Debug, clap::Args)]
pub struct SampleArgs {
    /// The reference checkpoint: a diffusers-layout directory (unet/, text_encoder/, tokenizer/,
    /// vae/, scheduler/scheduler_config.json; SDXL also text_encoder_2/ and tokenizer_2/, and is
    /// detected from unet/config.json).
    #[arg(long)]
    reference: PathBuf,
    /// An aligned UNet: a pipeline directory, a unet/ directory or one .safetensors file. Repeat
    /// for several aligned models (one per reward).
    #[arg(long, required = true)]
    aligned: Vec<PathBuf>,
    /// With one aligned model: comma-separated λs, one image each (weights [1−λ, λ]; λ = 0 is the
    /// reference, 1 the aligned model, > 1 extrapolates). With K aligned models: K values λ_i,
    /// one image (weights [1 − Σλ_i, λ_1, …, λ_K]).
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true, conflicts_with = "weights")]
    lambda: Option<Vec<f64>>,
    /// The full weight vector instead of λ: reference first, then each aligned model; sums to 1.
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    weights: Option<Vec<f64>>,
    /// Prompt; repeat for a batch of prompts.
    #[arg(long, required = true)]
    prompt: Vec<String>,
    /// Negative prompt (default: the empty prompt, as diffusers).
    #[arg(long)]
    negative_prompt: Option<String>,
    /// Sampler.
    #[arg(long, value_enum, default_value = "euler-a")]
    scheduler: SchedulerArg,
    /// DDIM's η in [0, 1] (only with --scheduler ddim).
    #[arg(long, allow_negative_numbers = true)]
    eta: Option<f64>,
    /// Inference steps.
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// Classifier-free guidance scale (≤ 1 turns guidance off).
    #[arg(long, default_value_t = 7.5, allow_negative_numbers = true)]
    guidance: f64,
    /// Noise seed (the same for every λ, so a row of images shows the effect of λ alone).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Image size WxH in pixels (default: the checkpoint's).
    #[arg(long)]
    size: Option<String>,
    /// SDXL micro-conditioning (boxed: it keeps the command enum small).
    #[command(flatten)]
    micro: Box<MicroArgs>,
    /// Weights dtype: f32, f16 or bf16 (bf16 needs a GPU).
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Device: cpu, cuda[:N] or metal[:N].
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Output PNG. With several images, each is written beside it (`NAME-l<λ>[-p<i>].png`) and
    /// this file is the labelled grid.
    #[arg(long, default_value = "deradiff-out/sample.png")]
    out: PathBuf,
    /// No progress bars.
    #[arg(long, short)]
    quiet: bool,
}

/// SDXL's micro-conditioning options of `deradiff sample`.
#[derive(Debug, clap::Args)]
struct MicroArgs {
    /// SDXL micro-conditioning: the original image size WxH (default: the image size).
    #[arg(long)]
    original_size: Option<String>,
    /// SDXL micro-conditioning: the crop's top-left corner as TOP,LEFT in pixels (default 0,0).
    #[arg(long)]
    crop_top_left: Option<String>,
    /// SDXL micro-conditioning: the target size WxH (default: the image size).
    #[arg(long)]
    target_size: Option<String>,
}

/// One sampling setting: a realigner and its label.
struct Setting {
    label: String,
    tag: String,
    realigner: Realigner,
}

fn settings(args: &SampleArgs) -> Result<Vec<Setting>, String> {
    let k = args.aligned.len();
    let fmt = |v: f64| format!("{v}");
    if let Some(w) = &args.weights {
        if w.len() != k + 1 {
            return Err(format!(
                "--weights has {} values; give {} (the reference first, then each of the {k} aligned models)",
                w.len(),
                k + 1
            ));
        }
        let realigner = Realigner::new(w.clone()).map_err(|e| format!("--weights: {e}"))?;
        let list = w.iter().map(|&v| fmt(v)).collect::<Vec<_>>().join(", ");
        return Ok(vec![Setting { label: format!("w = [{list}]"), tag: "weights".into(), realigner }]);
    }
    let lambdas = args.lambda.clone().unwrap_or_else(|| vec![0.5]);
    if lambdas.is_empty() {
        return Err("--lambda is empty; give at least one λ".into());
    }
    if let Some(l) = lambdas.iter().find(|l| !l.is_finite()) {
        return Err(format!("λ = {l}; every λ must be a finite number"));
    }
    if k == 1 {
        lambdas
            .iter()
            .map(|&l| {
                let realigner = Realigner::two_model(l).map_err(|e| format!("--lambda {l}: {e}"))?;
                Ok(Setting { label: format!("λ = {l}"), tag: format!("l{l}"), realigner })
            })
            .collect()
    } else {
        if lambdas.len() != k {
            return Err(format!(
                "with {k} aligned models --lambda takes {k} values λ_i (weights [1 − Σλ_i, λ_1, …]); got {}",
                lambdas.len()
            ));
        }
        let realigner = Realigner::multi_reward(&lambdas).map_err(|e| format!("--lambda: {e}"))?;
        let list = lambdas.iter().map(|&v| fmt(v)).collect::<Vec<_>>().join(", ");
        Ok(vec![Setting { label: format!("λ = [{list}]"), tag: "multi".into(), realigner }])
    }
}

fn parse_size(size: &str) -> Result<(usize, usize), String> {
    parse_size_option("--size", size)
}

/// `WxH` → `(width, height)`.
fn parse_size_option(option: &str, size: &str) -> Result<(usize, usize), String> {
    let bad = || format!("{option} {size}: expected WxH, e.g. 1024x1024");
    let (w, h) = size.split_once(['x', 'X']).ok_or_else(bad)?;
    let parse = |s: &str| s.trim().parse::<usize>().map_err(|_| bad());
    Ok((parse(w)?, parse(h)?))
}

/// `TOP,LEFT` → `(top, left)`.
fn parse_crop(crop: &str) -> Result<(usize, usize), String> {
    let bad = || format!("--crop-top-left {crop}: expected TOP,LEFT in pixels, e.g. 0,0");
    let (t, l) = crop.split_once(',').ok_or_else(bad)?;
    let parse = |s: &str| s.trim().parse::<usize>().map_err(|_| bad());
    Ok((parse(t)?, parse(l)?))
}

/// Where each image goes: the output itself for one image, else `NAME-<tag>[-p<i>].EXT` beside
/// it (and the output is the grid).
fn image_path(out: &Path, tag: &str, prompt: usize, prompts: usize) -> PathBuf {
    let stem = out.file_stem().and_then(|s| s.to_str()).unwrap_or("sample");
    let ext = out.extension().and_then(|s| s.to_str()).unwrap_or("png");
    let name = if prompts > 1 { format!("{stem}-{tag}-p{prompt}.{ext}") } else { format!("{stem}-{tag}.{ext}") };
    out.with_file_name(name)
}

/// Fails early (before any sampling) if the output directory cannot be written.
fn check_writable(out: &Path) -> Result<(), String> {
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create the output directory {}: {e}", dir.display()))?;
    let probe = dir.join(format!(".deradiff-write-test-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| format!("cannot write to the output directory {}: {e}", dir.display()))
}

use deradiff_analytic::plot::FONT;

fn ensure_font() -> Result<(), String> {
    deradiff_analytic::plot::ensure_font().map_err(|e| e.to_string())
}

/// The smallest grid cell width: smaller images are enlarged (nearest neighbour, integer factor)
/// in the grid so that their labels fit; the individual PNGs keep their size.
const MIN_CELL_WIDTH: usize = 160;

/// Nearest-neighbour enlargement by an integer factor.
fn enlarge(image: &RgbImage, factor: usize) -> Result<RgbImage, String> {
    if factor <= 1 {
        return Ok(image.clone());
    }
    let (w, h) = (image.width(), image.height());
    let src = image.data();
    let mut data = Vec::with_capacity(w * h * factor * factor * 3);
    for y in 0..h * factor {
        let row = &src[(y / factor) * w * 3..(y / factor + 1) * w * 3];
        for x in 0..w * factor {
            data.extend_from_slice(&row[(x / factor) * 3..(x / factor) * 3 + 3]);
        }
    }
    RgbImage::new(w * factor, h * factor, data).map_err(|e| e.to_string())
}

/// The image (enlarged if small) with a white band above it carrying `label`.
fn labelled(image: &RgbImage, label: &str) -> Result<RgbImage, String> {
    ensure_font()?;
    let image = &enlarge(image, MIN_CELL_WIDTH.div_ceil(image.width().max(1)))?;
    let (w, h) = (image.width(), image.height());
    let band = 28usize;
    let mut data = vec![255u8; w * (h + band) * 3];
    {
        let root = BitMapBackend::with_buffer(&mut data[..w * band * 3], (w as u32, band as u32)).into_drawing_area();
        let style = TextStyle::from((FONT, 18).into_font()).color(&BLACK);
        root.draw_text(label, &style, (6, 4)).map_err(|e| format!("drawing the label: {e}"))?;
        root.present().map_err(|e| format!("drawing the label: {e}"))?;
    }
    data[w * band * 3..].copy_from_slice(image.data());
    RgbImage::new(w, h + band, data).map_err(|e| e.to_string())
}

/// Runs `deradiff sample`.
pub fn sample(args: SampleArgs) -> Result<(), String> {
    let settings = settings(&args)?;
    let kind = args.scheduler.kind(args.eta)?;
    if args.steps == 0 {
        return Err("--steps must be at least 1".into());
    }
    if !(args.guidance >= 0.0 && args.guidance.is_finite()) {
        return Err(format!("--guidance is {}; it must be a finite number ≥ 0", args.guidance));
    }
    if args.prompt.is_empty() {
        return Err("give at least one --prompt".into());
    }
    let size = args.size.as_deref().map(parse_size).transpose()?;
    // (width, height) on the command line, (height, width) in the request (diffusers' order).
    let original_size = args
        .micro
        .original_size
        .as_deref()
        .map(|s| parse_size_option("--original-size", s))
        .transpose()?
        .map(|(w, h)| (h, w));
    let target_size = args
        .micro
        .target_size
        .as_deref()
        .map(|s| parse_size_option("--target-size", s))
        .transpose()?
        .map(|(w, h)| (h, w));
    let crop_top_left = args.micro.crop_top_left.as_deref().map(parse_crop).transpose()?.unwrap_or((0, 0));
    let dtype = parse_dtype(&args.dtype).map_err(|e| e.to_string())?;
    let device = parse_device(&args.device).map_err(|e| e.to_string())?;
    check_writable(&args.out)?;

    let options = LoadOptions { dtype, device };
    let sd = StableDiffusion::load(&args.reference, &args.aligned, &options).map_err(|e| e.to_string())?;
    let micro = original_size.is_some() || target_size.is_some() || args.micro.crop_top_left.is_some();
    if micro && !sd.is_sdxl() {
        return Err(format!(
            "--original-size, --crop-top-left and --target-size are SDXL micro-conditioning, but {} is not an SDXL \
             checkpoint (no text_time conditioning in unet/config.json)",
            args.reference.display()
        ));
    }
    if !args.quiet {
        let (h, w) = sd.default_size();
        let kind = if sd.is_sdxl() { "SDXL" } else { "Stable Diffusion 1.x / 2.x" };
        eprintln!("{kind} checkpoint {} ({} models, default size {w}x{h})", args.reference.display(), sd.num_models());
    }
    let request = Request {
        prompts: args.prompt.clone(),
        negative_prompt: args.negative_prompt.clone(),
        scheduler: kind,
        steps: args.steps,
        guidance_scale: args.guidance,
        seed: args.seed,
        width: size.map(|s| s.0),
        height: size.map(|s| s.1),
        original_size,
        crop_top_left,
        target_size,
        ..Default::default()
    };
    // The prompts are encoded once for every setting and every UNet.
    let embeddings = sd.encode(&request).map_err(|e| e.to_string())?;
    let n_prompts = args.prompt.len();
    let single = settings.len() * n_prompts == 1;
    let mut cells = Vec::new();
    for setting in &settings {
        let bar = if args.quiet { ProgressBar::hidden() } else { ProgressBar::new(args.steps as u64) };
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} [{elapsed_precise}] {bar:40} {pos}/{len} steps")
                .map_err(|e| e.to_string())?,
        );
        bar.set_message(setting.label.clone());
        let mut observer = |e: &StepEvent<'_>| {
            bar.set_position(e.step as u64 + 1);
            Flow::Continue
        };
        let out = sd
            .sample(&request, &embeddings, &setting.realigner, &mut SeededNoise::new(args.seed), &mut observer)
            .map_err(|e| format!("{}: {e}", setting.label))?;
        bar.finish_and_clear();
        let images = sd.decode(&out.latent).map_err(|e| e.to_string())?;
        for (i, image) in images.iter().enumerate() {
            let path = if single { args.out.clone() } else { image_path(&args.out, &setting.tag, i, n_prompts) };
            image.save_png(&path).map_err(|e| e.to_string())?;
            eprintln!("wrote {}", path.display());
            let label = if n_prompts > 1 { format!("{}, prompt {i}", setting.label) } else { setting.label.clone() };
            cells.push((i, labelled(image, &label)?));
        }
    }
    if !single {
        // Rows are prompts, columns are settings (same seed across a row).
        cells.sort_by_key(|(prompt, _)| *prompt);
        let images: Vec<RgbImage> = cells.into_iter().map(|(_, c)| c).collect();
        let grid = RgbImage::grid(&images, settings.len(), 4, [255, 255, 255]).map_err(|e| e.to_string())?;
        grid.save_png(&args.out).map_err(|e| e.to_string())?;
        eprintln!("wrote {} (grid)", args.out.display());
    }
    Ok(())
}
