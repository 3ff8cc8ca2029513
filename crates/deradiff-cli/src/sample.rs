//! `deradiff sample`: realigned text-to-image sampling from a reference Stable Diffusion
//! checkpoint (SD 1.x / 2.x, or SDXL — detected from the checkpoint) and aligned UNets.

use std::path::{Path, PathBuf};

use deradiff_core::{Flow, Realigner, SeededNoise, StepEvent};
use deradiff_sd::{check_dtype_supported, parse_device, parse_dtype, LoadOptions, Request, RgbImage, StableDiffusion};
use plotters::prelude::*;

use crate::checkpoint::{check_aligned_family, check_reference_layout, reference_family, Family};
use crate::error::{CliError, Context, Result};
use crate::{progress_bar, SchedulerArg};

/// Options of `deradiff sample`.
#[derive(Debug, clap::Args)]
pub struct SampleArgs {
    /// The reference checkpoint: the diffusers pipeline directory (model_index.json, unet/,
    /// text_encoder/, tokenizer/, vae/, scheduler/scheduler_config.json; SDXL also
    /// text_encoder_2/ and tokenizer_2/, and is detected from unet/config.json), not one of its
    /// component folders.
    #[arg(long)]
    reference: PathBuf,
    /// An aligned UNet of the reference's architecture: a pipeline directory, a unet/ directory
    /// or one .safetensors file; or a LoRA adapter of the reference UNet (a .safetensors file in
    /// the diffusers, peft or kohya layout, or a folder with pytorch_lora_weights.safetensors or
    /// adapter_model.safetensors + adapter_config.json), which runs with the reference in one
    /// batched UNet pass. Repeat for several aligned models (one per reward). Without it the
    /// reference alone is sampled (one UNet per step: the baseline image and time).
    #[arg(long)]
    aligned: Vec<PathBuf>,
    /// Multiplier of every LoRA --aligned adapter (1: the adapter as trained, at its own
    /// alpha / rank scale).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    lora_scale: f64,
    /// How λ realigns: `posterior` (DeRaDiff: the geometric mixture of the models' Gaussian
    /// posteriors at every step) or `weights` (the weight-space baseline, LoRA --aligned models
    /// only: one UNet with W + λ·B·A merged, sampled from the same seed).
    #[arg(long, value_enum, default_value = "posterior")]
    realign: RealignArg,
    /// Run the reference and each LoRA --aligned model in a UNet call of its own per step
    /// (their weights still shared) instead of one joint call: a lower peak memory for large
    /// images, the same images.
    #[arg(long)]
    separate_passes: bool,
    /// With one aligned model: comma-separated λs, one image each (weights [1−λ, λ]; λ = 0 is the
    /// reference, 1 the aligned model, > 1 extrapolates, < 0 moves away from it). With K aligned
    /// models: K values λ_i, one image (weights [1 − Σλ_i, λ_1, …, λ_K]). Default 0.5 with one
    /// aligned model.
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true, conflicts_with = "weights")]
    lambda: Option<Vec<f64>>,
    /// The full weight vector instead of λ: comma-separated, the reference's weight first, then
    /// one per --aligned model in order; the weights must sum to 1 (e.g. -0.5,1.5).
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
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
    /// Classifier-free guidance scale (≤ 1 turns guidance off). Default: the checkpoint's, 7.5
    /// for SD 1.x / 2.x and 5.0 for SDXL.
    #[arg(long, allow_negative_numbers = true)]
    guidance: Option<f64>,
    /// Noise seed (the same for every λ, so a row of images shows the effect of λ alone).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Image size WxH in pixels: W and H positive multiples of 8, W·H at most 4096×4096
    /// (16777216 pixels). Default: the checkpoint's.
    #[arg(long, allow_hyphen_values = true)]
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
    /// Output PNG file, whose name must end in .png. A directory (an existing one, or a path
    /// ending in '/') means sample.png inside it; missing directories are created. With several
    /// images, each is written beside it (`NAME-l<λ>[-p<i>].png`) and this file is the labelled
    /// grid.
    #[arg(long, default_value = "deradiff-out/sample.png")]
    out: PathBuf,
    /// No progress bars, no checkpoint summary and no "wrote …" lines (errors are still printed).
    #[arg(long, short)]
    quiet: bool,
}

/// How `deradiff sample` realigns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RealignArg {
    /// The geometric mixture of the models' posteriors at every step (DeRaDiff).
    Posterior,
    /// LoRA adapters merged into the reference's weights at λ (weight-space baseline).
    Weights,
}

/// SDXL's micro-conditioning options of `deradiff sample`.
#[derive(Debug, clap::Args)]
struct MicroArgs {
    /// SDXL micro-conditioning: the original image size WxH (default: the image size).
    #[arg(long, allow_hyphen_values = true)]
    original_size: Option<String>,
    /// SDXL micro-conditioning: the crop's top-left corner as TOP,LEFT in pixels (default 0,0).
    #[arg(long, allow_hyphen_values = true)]
    crop_top_left: Option<String>,
    /// SDXL micro-conditioning: the target size WxH (default: the image size).
    #[arg(long, allow_hyphen_values = true)]
    target_size: Option<String>,
}

/// One sampling setting: a realigner and its label.
struct Setting {
    label: String,
    tag: String,
    realigner: Realigner,
}

/// `values` as the command line lists them: `0.5,1`.
fn list(values: &[f64]) -> String {
    values.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(",")
}

/// Checks `--weights` against the `k` aligned models, in the words of the command line (the
/// same rule as [`Realigner::new`]: finite, summing to 1 within 1e-9 relative).
fn check_weights(w: &[f64], k: usize) -> Result<()> {
    if w.len() != k + 1 {
        return Err(CliError::usage(format!(
            "--weights {} has {} value{} but there {} {k} --aligned model{}: give {}, the reference's weight first, \
             then one per --aligned model in order",
            list(w),
            w.len(),
            if w.len() == 1 { "" } else { "s" },
            if k == 1 { "is" } else { "are" },
            if k == 1 { "" } else { "s" },
            k + 1
        )));
    }
    if let Some((i, x)) = w.iter().enumerate().find(|(_, x)| !x.is_finite()) {
        return Err(CliError::usage(format!(
            "--weights: value {} is {x}; every weight must be a finite number",
            i + 1
        )));
    }
    let sum: f64 = w.iter().sum();
    let scale = w.iter().map(|x| x.abs()).sum::<f64>().max(1.0);
    if (sum - 1.0).abs() > 1e-9 * scale {
        return Err(CliError::usage(format!(
            "--weights {} sum to {sum}, not 1: the weights (the reference's first, then one per --aligned model) \
             must sum to 1; or give --lambda λ instead, for the weights [1 − λ, λ] (one --aligned model) or \
             [1 − Σλ_i, λ_1, …] (several)",
            list(w)
        )));
    }
    Ok(())
}

fn settings(args: &SampleArgs) -> Result<Vec<Setting>> {
    let k = args.aligned.len();
    if k == 0 {
        for (flag, given) in [("--lambda", args.lambda.is_some()), ("--weights", args.weights.is_some())] {
            if given {
                return Err(CliError::usage(format!(
                    "{flag} weighs aligned models: give --aligned (without it the reference alone is sampled)"
                )));
            }
        }
        let realigner = Realigner::new(vec![1.0]).usage_context("the reference alone")?;
        return Ok(vec![Setting { label: "reference".into(), tag: "reference".into(), realigner }]);
    }
    if let Some(w) = &args.weights {
        check_weights(w, k)?;
        let realigner = Realigner::new(w.clone()).usage_context(format!("--weights {}", list(w)))?;
        let shown = w.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", ");
        return Ok(vec![Setting { label: format!("w = [{shown}]"), tag: "weights".into(), realigner }]);
    }
    let lambdas = args.lambda.clone().unwrap_or_else(|| vec![0.5]);
    if lambdas.is_empty() {
        return Err(CliError::usage("--lambda is empty; give at least one λ"));
    }
    if let Some(l) = lambdas.iter().find(|l| !l.is_finite()) {
        return Err(CliError::usage(format!("--lambda: λ = {l}; every λ must be a finite number")));
    }
    if k == 1 {
        for (i, l) in lambdas.iter().enumerate() {
            if lambdas[..i].contains(l) {
                return Err(CliError::usage(format!(
                    "--lambda {}: λ = {l} is given twice (each λ writes its own image)",
                    list(&lambdas)
                )));
            }
        }
        lambdas
            .iter()
            .map(|&l| {
                let realigner = Realigner::two_model(l).usage_context(format!("--lambda {l}"))?;
                Ok(Setting { label: format!("λ = {l}"), tag: format!("l{l}"), realigner })
            })
            .collect()
    } else {
        if lambdas.len() != k {
            return Err(CliError::usage(format!(
                "with {k} --aligned models --lambda takes {k} values λ_1,…,λ_{k}, one per --aligned model \
                 (weights [1 − Σλ_i, λ_1, …]); got {}",
                lambdas.len()
            )));
        }
        let realigner = Realigner::multi_reward(&lambdas).usage_context(format!("--lambda {}", list(&lambdas)))?;
        let shown = lambdas.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", ");
        Ok(vec![Setting { label: format!("λ = [{shown}]"), tag: "multi".into(), realigner }])
    }
}

/// The largest image `deradiff sample` makes: W·H ≤ 4096 × 4096 pixels.
pub(crate) const MAX_PIXELS: u64 = 4096 * 4096;

/// Image sides must be multiples of this: Stable Diffusion's VAE maps 8×8 pixels to one latent.
const SIZE_MULTIPLE: usize = 8;

/// `WxH` → `(width, height)`, both positive integers.
fn parse_size_option(option: &str, size: &str) -> Result<(usize, usize)> {
    let bad = || CliError::usage(format!("{option} {size}: expected WxH in pixels, e.g. 512x512"));
    let (w, h) = size.split_once(['x', 'X']).ok_or_else(bad)?;
    let parse = |s: &str| -> Result<usize> {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        // All digits: the only failure left is a number too large for the machine.
        s.parse::<usize>().map_err(|_| {
            CliError::usage(format!("{option} {size}: {s} is too large (images are at most 4096x4096 pixels, W·H)"))
        })
    };
    let (w, h) = (parse(w)?, parse(h)?);
    if w == 0 || h == 0 {
        return Err(CliError::usage(format!("{option} {size}: W and H must be positive")));
    }
    Ok((w, h))
}

/// `--size WxH`: positive multiples of 8 with W·H ≤ [`MAX_PIXELS`] (checked without overflow).
fn parse_image_size(size: &str) -> Result<(usize, usize)> {
    let (w, h) = parse_size_option("--size", size)?;
    if w % SIZE_MULTIPLE != 0 || h % SIZE_MULTIPLE != 0 {
        let round = |x: usize| x.div_ceil(SIZE_MULTIPLE).max(1) * SIZE_MULTIPLE;
        return Err(CliError::usage(format!(
            "--size {size}: W and H must be positive multiples of {SIZE_MULTIPLE} (the VAE works on \
             {SIZE_MULTIPLE}×{SIZE_MULTIPLE} pixel blocks), e.g. {}x{}",
            round(w),
            round(h)
        )));
    }
    match (w as u64).checked_mul(h as u64) {
        Some(pixels) if pixels <= MAX_PIXELS => Ok((w, h)),
        _ => Err(CliError::usage(format!(
            "--size {size}: {w}x{h} is too large; images are limited to W·H ≤ 4096×4096 = {MAX_PIXELS} pixels"
        ))),
    }
}

/// `TOP,LEFT` → `(top, left)`.
fn parse_crop(crop: &str) -> Result<(usize, usize)> {
    let bad = || CliError::usage(format!("--crop-top-left {crop}: expected TOP,LEFT in pixels, e.g. 0,0"));
    let (t, l) = crop.split_once(',').ok_or_else(bad)?;
    let parse = |s: &str| s.trim().parse::<usize>().map_err(|_| bad());
    Ok((parse(t)?, parse(l)?))
}

/// The file name `deradiff sample` uses when `--out` is a directory.
pub(crate) const DEFAULT_NAME: &str = "sample.png";

/// Whether `path` was written with a trailing separator (`out/`): a directory by intent.
fn ends_with_separator(path: &Path) -> bool {
    let text = path.as_os_str().to_string_lossy();
    text.ends_with('/') || text.ends_with(std::path::MAIN_SEPARATOR)
}

/// The PNG file `--out` names: a directory (written `dir/`, or one that exists) gets
/// [`DEFAULT_NAME`] inside it; a file must end in `.png`.
fn resolve_out(out: &Path) -> Result<PathBuf> {
    if ends_with_separator(out) || out.is_dir() {
        return Ok(out.join(DEFAULT_NAME));
    }
    match out.extension().and_then(|e| e.to_str()) {
        Some(ext) if ext.eq_ignore_ascii_case("png") => Ok(out.to_path_buf()),
        None => Err(CliError::usage(format!(
            "--out {} has no extension: deradiff sample writes PNG images, so add .png (e.g. --out {}.png), or end \
             the path with '/' to write {DEFAULT_NAME} into that directory",
            out.display(),
            out.display()
        ))),
        Some(ext) => Err(CliError::usage(format!(
            "--out {}: .{ext} is not written; deradiff sample writes PNG images, so give a name ending in .png \
             (e.g. --out {})",
            out.display(),
            out.with_extension("png").display()
        ))),
    }
}

/// Fails early (before anything is loaded or written) if `out` cannot be written: its nearest
/// existing ancestor must be a writable directory. Nothing is created here; the missing
/// directories are made just before the first image is saved.
fn check_writable(out: &Path) -> Result<()> {
    if out.exists() && !out.is_file() {
        return Err(CliError::usage(format!("--out {} exists and is not a regular file", out.display())));
    }
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut existing = dir.as_path();
    while !existing.exists() {
        match existing.parent() {
            Some(p) if !p.as_os_str().is_empty() => existing = p,
            _ => {
                existing = Path::new(".");
                break;
            }
        }
    }
    if !existing.is_dir() {
        return Err(CliError::usage(format!(
            "cannot create the output directory {} of --out: {} is a file, not a directory",
            dir.display(),
            existing.display()
        )));
    }
    let probe = existing.join(format!(".deradiff-write-test-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .and_then(|()| std::fs::remove_file(&probe))
        .with_context(|| format!("cannot write to the output directory {} of --out", existing.display()))
}

/// Makes the output directory (if missing) and writes `image` to `path`.
fn save(image: &RgbImage, path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the output directory {}", dir.display()))?;
    }
    image.save_png(path).with_context(|| format!("cannot write {}", path.display()))
}

/// Where each image goes: the output itself for one image, else `NAME-<tag>[-p<i>].EXT` beside
/// it (and the output is the grid).
fn image_path(out: &Path, tag: &str, prompt: usize, prompts: usize) -> PathBuf {
    let stem = out.file_stem().and_then(|s| s.to_str()).unwrap_or("sample");
    let ext = out.extension().and_then(|s| s.to_str()).unwrap_or("png");
    let name = if prompts > 1 { format!("{stem}-{tag}-p{prompt}.{ext}") } else { format!("{stem}-{tag}.{ext}") };
    out.with_file_name(name)
}

use deradiff_analytic::plot::FONT;

/// The smallest grid cell width: smaller images are enlarged (nearest neighbour, integer factor)
/// in the grid so that their labels fit; the individual PNGs keep their size.
const MIN_CELL_WIDTH: usize = 160;

/// Nearest-neighbour enlargement by an integer factor.
fn enlarge(image: &RgbImage, factor: usize) -> Result<RgbImage> {
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
    Ok(RgbImage::new(w * factor, h * factor, data)?)
}

/// The image (enlarged if small) with a white band above it carrying `label`.
fn labelled(image: &RgbImage, label: &str) -> Result<RgbImage> {
    deradiff_analytic::plot::ensure_font()?;
    let image = &enlarge(image, MIN_CELL_WIDTH.div_ceil(image.width().max(1)))?;
    let (w, h) = (image.width(), image.height());
    let band = 28usize;
    let mut data = vec![255u8; w * (h + band) * 3];
    {
        let root = BitMapBackend::with_buffer(&mut data[..w * band * 3], (w as u32, band as u32)).into_drawing_area();
        let style = TextStyle::from((FONT, 18).into_font()).color(&BLACK);
        let drawn = root.draw_text(label, &style, (6, 4)).and_then(|()| root.present());
        drawn.map_err(|e| CliError::runtime(format!("cannot draw the grid label '{label}': {e}")))?;
    }
    data[w * band * 3..].copy_from_slice(image.data());
    Ok(RgbImage::new(w, h + band, data)?)
}

/// Runs `deradiff sample`.
pub fn sample(args: SampleArgs) -> Result<()> {
    // Every option is checked before anything is loaded or written.
    let settings = settings(&args)?;
    let kind = args.scheduler.kind(args.eta)?;
    if args.steps == 0 {
        return Err(CliError::usage("--steps must be at least 1"));
    }
    if let Some(g) = args.guidance.filter(|g| !(*g >= 0.0 && g.is_finite())) {
        return Err(CliError::usage(format!("--guidance is {g}; it must be a finite number ≥ 0")));
    }
    if args.prompt.is_empty() {
        return Err(CliError::usage("give at least one --prompt"));
    }
    let size = args.size.as_deref().map(parse_image_size).transpose()?;
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
    let micro = original_size.is_some() || target_size.is_some() || args.micro.crop_top_left.is_some();
    let dtype = parse_dtype(&args.dtype).usage_context(format!("--dtype {} is not a usable dtype", args.dtype))?;
    let device =
        parse_device(&args.device).usage_context(format!("--device {} is not a usable device", args.device))?;
    check_dtype_supported(dtype, &device)
        .usage_context(format!("--dtype {} cannot run on --device {}", args.dtype, args.device))?;
    let out = resolve_out(&args.out)?;
    check_writable(&out)?;
    check_reference_layout(&args.reference)?;
    check_aligned_family(&args.reference, &args.aligned)?;
    if micro && reference_family(&args.reference) == Some(Family::Sd) {
        return Err(micro_on_sd(&args.reference));
    }

    if !args.lora_scale.is_finite() {
        return Err(CliError::usage(format!("--lora-scale is {}; it must be a finite number", args.lora_scale)));
    }
    let options = LoadOptions { dtype, device, lora_multiplier: args.lora_scale, joint_pass: !args.separate_passes };
    let sd = StableDiffusion::load(&args.reference, &args.aligned, &options).with_context(|| {
        let aligned = args.aligned.iter().map(|a| a.display().to_string()).collect::<Vec<_>>().join(", ");
        format!("cannot load --reference {} with --aligned {aligned}", args.reference.display())
    })?;
    if micro && !sd.is_sdxl() {
        return Err(micro_on_sd(&args.reference));
    }
    if args.realign == RealignArg::Weights {
        let k = sd.num_models() - 1;
        sd.weight_space_unet(&vec![0.0; k]).usage_context("--realign weights")?;
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
    let guidance = sd.guidance_scale(&request).usage_context("--guidance")?;
    if !args.quiet {
        let (h, w) = sd.default_size();
        let kind = if sd.is_sdxl() { "SDXL" } else { "Stable Diffusion 1.x / 2.x" };
        eprintln!(
            "{kind} checkpoint {} ({} models, default size {w}x{h}, guidance scale {guidance})",
            args.reference.display(),
            sd.num_models()
        );
    }
    // What only the loaded checkpoint can tell, blamed on the option it concerns.
    if let Err(e) = sd.latent_shape(&request, 1) {
        return Err(match &args.size {
            Some(s) => CliError::usage_because(format!("--size {s} does not fit this checkpoint"), e),
            None => CliError::because(
                format!("the default image size of {} does not fit its VAE", args.reference.display()),
                e,
            ),
        });
    }
    kind.build(sd.scheduler_config(), args.steps).usage_context(format!(
        "--scheduler {} with --steps {} does not fit the checkpoint's scheduler config",
        args.scheduler.name(),
        args.steps
    ))?;
    if micro {
        sd.time_ids(&request)
            .usage_context("--original-size, --crop-top-left and --target-size do not fit together")?;
    }
    let (width, height) = size.unwrap_or_else(|| {
        let (h, w) = sd.default_size();
        (w, h)
    });

    // The prompts are encoded once for every setting and every UNet.
    let embeddings = sd.encode(&request).context("cannot encode the prompts")?;
    let n_prompts = args.prompt.len();
    let single = settings.len() * n_prompts == 1;
    let mut cells = Vec::new();
    for setting in &settings {
        let bar = progress_bar(args.quiet, "{spinner} {msg} [{elapsed_precise}] {bar:40} {pos}/{len} steps")?;
        bar.set_length(args.steps as u64);
        bar.set_message(setting.label.clone());
        let mut observer = |e: &StepEvent<'_>| {
            bar.set_position(e.step as u64 + 1);
            Flow::Continue
        };
        let mut noise = SeededNoise::new(args.seed);
        let sampled = match args.realign {
            RealignArg::Posterior => sd.sample(&request, &embeddings, &setting.realigner, &mut noise, &mut observer),
            RealignArg::Weights => {
                // λ_k are the aligned models' weights (the reference's is 1 − Σλ_k).
                let weights = setting.realigner.weights(0).map_err(deradiff_sd::Error::from)?;
                sd.sample_weight_space(&request, &embeddings, &weights[1..], &mut noise, &mut observer)
            }
        }
        .with_context(|| format!("sampling {width}x{height} images with {} failed", setting.label))?;
        bar.finish_and_clear();
        let images =
            sd.decode(&sampled.latent).with_context(|| format!("cannot decode the image of {}", setting.label))?;
        for (i, image) in images.iter().enumerate() {
            let path = if single { out.clone() } else { image_path(&out, &setting.tag, i, n_prompts) };
            save(image, &path)?;
            if !args.quiet {
                eprintln!("wrote {}", path.display());
            }
            let label = if n_prompts > 1 { format!("{}, prompt {i}", setting.label) } else { setting.label.clone() };
            cells.push((i, labelled(image, &label)?));
        }
    }
    if !single {
        // Rows are prompts, columns are settings (same seed across a row).
        cells.sort_by_key(|(prompt, _)| *prompt);
        let images: Vec<RgbImage> = cells.into_iter().map(|(_, c)| c).collect();
        let grid = RgbImage::grid(&images, settings.len(), 4, [255, 255, 255]).context("cannot assemble the grid")?;
        save(&grid, &out)?;
        if !args.quiet {
            eprintln!("wrote {} (grid)", out.display());
        }
    }
    Ok(())
}

/// Micro-conditioning options given with an SD 1.x / 2.x reference.
fn micro_on_sd(reference: &Path) -> CliError {
    CliError::usage(format!(
        "--original-size, --crop-top-left and --target-size are SDXL micro-conditioning, but {} is not an SDXL \
         checkpoint (no text_time conditioning in unet/config.json)",
        reference.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_checked_without_overflow() {
        assert_eq!(parse_image_size("512x768").unwrap(), (512, 768));
        assert_eq!(parse_image_size("4096X4096").unwrap(), (4096, 4096));
        assert_eq!(parse_image_size("8192x2048").unwrap(), (8192, 2048));
        for (bad, needle) in [
            ("17x16", "multiples of 8"),
            ("0x0", "positive"),
            ("-8x8", "expected WxH"),
            ("big", "expected WxH"),
            ("8x", "expected WxH"),
            ("4104x4096", "W·H ≤ 4096×4096"),
            ("4294967296x4294967296", "too large"),
            ("99999999999999999999999x8", "too large"),
        ] {
            let e = parse_image_size(bad).unwrap_err();
            assert!(e.to_string().starts_with(&format!("--size {bad}")), "{e}");
            assert!(e.to_string().contains(needle), "{bad}: {e}");
            assert_eq!(e.exit_code(), 2);
        }
    }

    #[test]
    fn out_directories_get_the_default_name_and_files_need_png() {
        assert_eq!(resolve_out(Path::new("runs/")).unwrap(), Path::new("runs/").join(DEFAULT_NAME));
        let tmp = std::env::temp_dir();
        assert_eq!(resolve_out(&tmp).unwrap(), tmp.join(DEFAULT_NAME));
        assert_eq!(resolve_out(Path::new("a/b.PNG")).unwrap(), Path::new("a/b.PNG"));
        let e = resolve_out(Path::new("a/b")).unwrap_err().to_string();
        assert!(e.contains("add .png"), "{e}");
        let e = resolve_out(Path::new("a/b.jpg")).unwrap_err().to_string();
        assert!(e.contains("a/b.png"), "{e}");
    }

    #[test]
    fn weights_are_explained_in_options() {
        let e = check_weights(&[0.2, 0.2], 1).unwrap_err().to_string();
        assert!(e.contains("--weights 0.2,0.2 sum to 0.4") && e.contains("--lambda"), "{e}");
        assert!(!e.contains("Realigner"), "{e}");
        let e = check_weights(&[1.0], 1).unwrap_err().to_string();
        assert!(e.contains("give 2") && e.contains("--aligned"), "{e}");
        let e = check_weights(&[f64::NAN, 1.0], 1).unwrap_err().to_string();
        assert!(e.contains("finite"), "{e}");
        assert!(check_weights(&[-0.5, 1.5], 1).is_ok());
    }
}
