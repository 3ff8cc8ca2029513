//! `deradiff sample`: realigned text-to-image sampling from a reference Stable Diffusion
//! checkpoint (SD 1.x / 2.x, or SDXL — detected from the checkpoint) and aligned UNets.
//!
//! The run goes in steps: `check` every option (before anything is loaded or written), `load`
//! the models, build the `request`, then sample each setting (`sample_setting`) and write its
//! images (`output::Writer`).

mod output;
mod size;

use std::path::{Path, PathBuf};

use deradiff_core::{Flow, SeededNoise, StepEvent};
use deradiff_sd::{EncodedRequest, LoadOptions, Request, RgbImage, StableDiffusion, Vae};

use self::output::{check_grid, check_image_count, check_writable, image_paths, resolve_out, Writer};
use self::size::{parse_image_size, Micro, MicroArgs};
use crate::args::{ModelArgs, RealignArg, RealignArgs, SamplerArgs, Setting};
use crate::checkpoint::{reference_family, Family};
use crate::checks::{check_guidance, check_steps};
use crate::error::{CliError, Context, Result};
use crate::guard::{check_out_file, check_outputs};
use crate::output::progress_bar;

/// Options of `deradiff sample`.
#[derive(Debug, clap::Args)]
pub(crate) struct SampleArgs {
    /// The reference, the aligned models and how they are loaded.
    #[command(flatten)]
    models: ModelArgs,
    /// How λ realigns, and the weights of the models.
    #[command(flatten)]
    realign: RealignArgs,
    /// Prompt; repeat for a batch of prompts.
    #[arg(long, required = true)]
    prompt: Vec<String>,
    /// Negative prompt (default: the empty prompt, as diffusers).
    #[arg(long)]
    negative_prompt: Option<String>,
    /// The sampler (default: the checkpoint's own, from its scheduler_config.json) and its
    /// options.
    #[command(flatten)]
    sampler: SamplerArgs,
    /// Inference steps.
    #[arg(long, default_value_t = deradiff_sd::DEFAULT_STEPS)]
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

/// The options of a run, checked and parsed.
struct Plan {
    settings: Vec<Setting>,
    size: Option<(usize, usize)>,
    micro: Micro,
    load: LoadOptions,
    out: PathBuf,
}

/// The loaded models and the request, its prompts encoded once for every setting and UNet.
struct Loaded {
    sd: StableDiffusion,
    request: Request,
    embeddings: EncodedRequest,
    /// The image size (width, height).
    size: (usize, usize),
}

/// Micro-conditioning options given with an SD 1.x / 2.x reference.
fn micro_on_sd(reference: &Path) -> CliError {
    CliError::usage(format!(
        "--original-size, --crop-top-left and --target-size are SDXL micro-conditioning, but {} is not an SDXL \
         checkpoint (no text_time conditioning in unet/config.json)",
        reference.display()
    ))
}

/// Every option is checked before anything is loaded or written.
fn check(args: &SampleArgs) -> Result<Plan> {
    let settings = args.realign.settings(args.models.aligned.len())?;
    args.sampler.check()?;
    check_steps(args.steps)?;
    check_guidance(args.guidance)?;
    if args.prompt.is_empty() {
        return Err(CliError::usage("give at least one --prompt"));
    }
    let size = args.size.as_deref().map(parse_image_size).transpose()?;
    let micro = args.micro.parse()?;
    let (dtype, device) = args.models.load.dtype_and_device()?;
    check_image_count(settings.len(), args.prompt.len())?;
    let out = resolve_out(&args.out)?;
    check_writable(&out)?;
    check_out_file("--out", &out)?;
    let outputs = image_paths(&out, &settings, args.prompt.len());
    let mut inputs = vec![("--reference", args.models.reference.as_path())];
    inputs.extend(args.models.aligned.iter().map(|a| ("--aligned", a.as_path())));
    inputs.extend(args.models.load.single_file_inputs());
    check_outputs(&outputs.iter().map(|p| ("--out", p.as_path())).collect::<Vec<_>>(), &inputs)?;
    args.models.check()?;
    if micro.given && reference_family(&args.models.reference) == Some(Family::Sd) {
        return Err(micro_on_sd(&args.models.reference));
    }
    let load = args.models.load.options(dtype, device)?;
    Ok(Plan { settings, size, micro, load, out })
}

/// Loads the models, and checks what only they can tell: SDXL for micro-conditioning, LoRA
/// aligned models for `--realign weights`.
fn load(args: &SampleArgs, plan: &Plan) -> Result<StableDiffusion> {
    let sd = args.models.load(&plan.load)?;
    if plan.micro.given && !sd.is_sdxl() {
        return Err(micro_on_sd(&args.models.reference));
    }
    if args.realign.realign == RealignArg::Weights {
        let k = sd.num_models() - 1;
        sd.weight_space_unet(&vec![0.0; k]).usage_context("--realign weights")?;
    }
    Ok(sd)
}

/// The request of every setting, checked against the loaded checkpoint (each failure blamed on
/// the option it concerns); prints the checkpoint summary.
fn request(args: &SampleArgs, plan: &Plan, sd: &StableDiffusion) -> Result<Request> {
    // The checkpoint's own scheduler unless --scheduler, the options given on top.
    let (kind, scheduler_config, note) = args.sampler.for_checkpoint(sd.scheduler_config())?;
    let request = Request {
        prompts: args.prompt.clone(),
        negative_prompt: args.negative_prompt.clone(),
        scheduler: kind,
        scheduler_config: Some(scheduler_config),
        steps: args.steps,
        guidance_scale: args.guidance,
        seed: args.seed,
        width: plan.size.map(|s| s.0),
        height: plan.size.map(|s| s.1),
        original_size: plan.micro.original_size,
        crop_top_left: plan.micro.crop_top_left,
        target_size: plan.micro.target_size,
        ..Default::default()
    };
    let guidance = sd.guidance_scale(&request).usage_context("--guidance")?;
    if !args.quiet {
        let (h, w) = sd.default_size();
        let kind = if sd.is_sdxl() { "SDXL" } else { "Stable Diffusion 1.x / 2.x" };
        eprintln!(
            "{kind} checkpoint {} ({} models, default size {w}x{h}, guidance scale {guidance})",
            args.models.reference.display(),
            sd.num_models()
        );
        if let Some(note) = &note {
            eprintln!("note: {note}");
        }
    }
    check_request(args, plan, sd, &request)?;
    Ok(request)
}

/// What only the loaded checkpoint can tell, blamed on the option it concerns.
fn check_request(args: &SampleArgs, plan: &Plan, sd: &StableDiffusion, request: &Request) -> Result<()> {
    if let Err(e) = sd.latent_shape(request, 1) {
        return Err(match &args.size {
            Some(s) => CliError::usage_because(format!("--size {s} does not fit this checkpoint"), e),
            None => CliError::because(
                format!("the default image size of {} does not fit its VAE", args.models.reference.display()),
                e,
            ),
        });
    }
    sd.scheduler(request).usage_context(format!(
        "{} with --steps {} does not fit the checkpoint's scheduler config",
        args.sampler.describe(),
        args.steps
    ))?;
    if plan.micro.given {
        sd.time_ids(request).usage_context("--original-size, --crop-top-left and --target-size do not fit together")?;
    }
    Ok(())
}

/// The images of one setting (one per prompt), sampled from `--seed` with a progress bar.
fn sample_setting(args: &SampleArgs, loaded: &Loaded, setting: &Setting) -> Result<Vec<RgbImage>> {
    let Loaded { sd, request, embeddings, size: (width, height) } = loaded;
    let bar = progress_bar(args.quiet, "{spinner} {msg} [{elapsed_precise}] {bar:40} {pos}/{len} steps")?;
    bar.set_length(args.steps as u64);
    bar.set_message(setting.label.clone());
    let mut observer = |e: &StepEvent<'_>| {
        // Heun evaluates the model 2n − 1 times for n steps: the bar counts scheduler steps.
        bar.set_length(e.num_steps as u64);
        bar.set_position(e.step as u64 + 1);
        Flow::Continue
    };
    let mut noise = SeededNoise::new(args.seed);
    let sampled = match args.realign.realign {
        RealignArg::Posterior => sd.sample(request, embeddings, &setting.realigner, &mut noise, &mut observer),
        RealignArg::Weights => {
            // λ_k are the aligned models' weights (the reference's is 1 − Σλ_k).
            let weights = setting.realigner.weights(0).map_err(deradiff_sd::Error::from)?;
            sd.sample_weight_space(request, embeddings, &weights[1..], &mut noise, &mut observer)
        }
    }
    .with_context(|| format!("sampling {width}x{height} images with {} failed", setting.label))?;
    bar.finish_and_clear();
    let (images, saturation) = sd
        .decode_with_saturation(&sampled.latent)
        .with_context(|| format!("cannot decode the image of {}", setting.label))?;
    for (i, s) in saturation.iter().enumerate().filter(|(_, s)| **s >= Vae::SATURATED) {
        let which = if saturation.len() > 1 { format!(" (prompt {})", i + 1) } else { String::new() };
        eprintln!("{}", saturation_warning(&format!("the image of {}{which}", setting.label), *s));
    }
    Ok(images)
}

/// The warning for a saturated image: what was measured and what to change.
pub(crate) fn saturation_warning(what: &str, saturation: f64) -> String {
    format!(
        "warning: {what} is saturated: {:.1}% of its pixels are clipped to black, white or a pure colour (the \
         realignment weights or the models' weights extrapolate far outside what the VAE decodes; try a λ nearer \
         [0, 1])",
        100.0 * saturation
    )
}

/// Runs `deradiff sample`.
pub(crate) fn run(args: SampleArgs) -> Result<()> {
    let plan = check(&args)?;
    let sd = load(&args, &plan)?;
    let request = request(&args, &plan, &sd)?;
    let size = plan.size.unwrap_or_else(|| {
        let (h, w) = sd.default_size();
        (w, h)
    });
    check_grid(plan.settings.len(), args.prompt.len(), size)?;
    // The prompts are encoded once for every setting and every UNet.
    let embeddings = sd.encode(&request).context("cannot encode the prompts")?;
    let loaded = Loaded { sd, request, embeddings, size };
    let mut writer = Writer::new(plan.out.clone(), plan.settings.len(), args.prompt.len(), args.quiet);
    for setting in &plan.settings {
        writer.add(setting, &sample_setting(&args, &loaded, setting)?)?;
    }
    writer.finish()
}
