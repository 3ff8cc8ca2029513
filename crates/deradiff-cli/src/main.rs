//! `deradiff`: the command line of deradiff.
//!
//! `deradiff demo` runs the realignment study on the exact analytic testbed (a built-in 2-D
//! Gaussian mixture) and writes its table (CSV, JSON) and figures (PNG); `deradiff sample`
//! realigns Stable Diffusion checkpoints and writes PNGs.

mod checkpoint;
mod error;
mod lora;
mod rewards;
mod sample;
mod score;
mod shards;
mod tune;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand, ValueEnum};
use deradiff_analytic::{
    default_training, demo_linear_reward, demo_mixture, demo_quadratic_reward, run_study_with_progress, StudyConfig,
};
use deradiff_core::{PredictionType, SchedulerKind};
use indicatif::{ProgressBar, ProgressStyle};

use crate::error::{CliError, Context, Result};

/// Denoising-time realignment of diffusion models (DeRaDiff).
#[derive(Debug, Parser)]
#[command(
    name = "deradiff",
    version,
    about,
    long_about = None,
    after_help = "Exit status: 0 on success, 1 when a run fails (the error and each of its causes are \
                  printed), 2 for bad options."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the realignment study on the exact analytic testbed (no weights, seconds on a CPU).
    ///
    /// Samples a built-in 2-D Gaussian mixture with the exact reference model, the exact model
    /// aligned at the anchor β, the exact models aligned at each target β ("from scratch"), and
    /// DeRaDiff (reference + anchor, λ = β_anchor / β_target), all from the same noise; prints
    /// the table and writes study.csv, study.json, samples.png and reward_vs_lambda.png.
    Demo(DemoArgs),
    /// Realigned text-to-image sampling: a reference Stable Diffusion checkpoint (diffusers
    /// layout) and aligned UNets, fused at every step with weights [1 − λ, λ] (or K weights).
    ///
    /// Several λ give one image each (same seed) and a labelled grid.
    Sample(sample::SampleArgs),
    /// Sweep a λ grid on the analytic testbed: mean proxy and true reward per λ, streamed to
    /// sweep.jsonl / sweep.csv and resumed where an interrupted run stopped.
    Sweep(tune::SweepArgs),
    /// Bayesian optimisation of λ on the analytic testbed (GP surrogate, EI or UCB): prints λ*
    /// and the KL strength β_anchor/λ* it emulates.
    Tune(tune::TuneArgs),
    /// Agreement statistics (paper Table 5) between two sweep result files, with a
    /// Bland–Altman plot and the ECDF of |Δ|.
    Compare(tune::CompareArgs),
    /// Join the results files of a sharded sweep (sweep.shard-K-of-N.jsonl in its output folder)
    /// into the file an unsharded run writes: same spec or an error, no duplicate or missing item
    /// (missing ones listed; --allow-partial to merge anyway).
    Merge(shards::MergeArgs),
    /// Progress of the sweeps in an output folder, across their shards.
    Status(shards::StatusArgs),
    /// Extract a LoRA from a full aligned UNet: per layer, the truncated SVD of the weight
    /// difference to the reference at --rank, written as a diffusers-layout LoRA that
    /// `--aligned` (and diffusers' load_lora_weights) loads; prints each layer's relative
    /// Frobenius error and the adapter's size.
    ExtractLora(lora::ExtractLoraArgs),
    /// Score a folder of PNG images (made by any tool) against their prompts with CLIP score,
    /// PickScore, HPS v2, the LAION aesthetic predictor and/or ImageReward, one row per image
    /// (JSON lines or CSV).
    Score(score::ScoreArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum SchedulerArg {
    /// DDPM ancestral sampling (fixed_small variance).
    Ddpm,
    /// DDIM (η from --eta; 0 = deterministic).
    Ddim,
    /// Euler ancestral.
    #[value(name = "euler-a")]
    EulerA,
}

impl SchedulerArg {
    /// The name `--scheduler` takes.
    pub(crate) fn name(self) -> &'static str {
        match self {
            SchedulerArg::Ddpm => "ddpm",
            SchedulerArg::Ddim => "ddim",
            SchedulerArg::EulerA => "euler-a",
        }
    }

    /// The sampler, with DDIM's η (only valid with `ddim`, and within [0, 1]).
    pub(crate) fn kind(self, eta: Option<f64>) -> Result<SchedulerKind> {
        Ok(match self {
            SchedulerArg::Ddpm | SchedulerArg::EulerA if eta.is_some() => {
                return Err(CliError::usage("--eta applies to --scheduler ddim only"));
            }
            SchedulerArg::Ddpm => SchedulerKind::Ddpm,
            SchedulerArg::EulerA => SchedulerKind::EulerAncestral,
            SchedulerArg::Ddim => {
                let eta = eta.unwrap_or(0.0);
                if !(0.0..=1.0).contains(&eta) {
                    return Err(CliError::usage(format!("--eta is {eta}; DDIM's η must lie in [0, 1]")));
                }
                SchedulerKind::Ddim { eta }
            }
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum RewardArg {
    /// r(x) = x1 + 0.5 x2.
    Linear,
    /// r(x) = x1 + 0.5 x2 − ½(0.5 x1² + 0.5 x2²).
    Quadratic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PredictionArg {
    /// The models predict the noise ε.
    Epsilon,
    /// The models predict v = √ᾱ ε − √(1−ᾱ) x₀.
    #[value(name = "v_prediction", alias = "v")]
    VPrediction,
    /// The models predict x₀.
    Sample,
}

#[derive(Debug, clap::Args)]
struct DemoArgs {
    /// Sampler.
    #[arg(long, value_enum, default_value = "ddpm")]
    scheduler: SchedulerArg,
    /// DDIM's η in [0, 1] (only with --scheduler ddim).
    #[arg(long, allow_negative_numbers = true)]
    eta: Option<f64>,
    /// Inference steps.
    #[arg(long, default_value_t = 50, allow_negative_numbers = true)]
    steps: usize,
    /// Samples per run (all runs share the same noise).
    #[arg(long, default_value_t = 2000, allow_negative_numbers = true)]
    samples: usize,
    /// Mixture components of the built-in data (1 = one Gaussian: realignment is exact with a
    /// linear reward).
    #[arg(long, default_value_t = 3, allow_negative_numbers = true)]
    components: usize,
    /// Reward.
    #[arg(long, value_enum, default_value = "linear")]
    reward: RewardArg,
    /// KL strength β of the one aligned model DeRaDiff is given.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    anchor_beta: f64,
    /// Comma-separated target βs to emulate (λ = anchor β / target β).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "4,2,1,0.5,0.25",
        allow_hyphen_values = true,
        conflicts_with = "lambdas"
    )]
    target_betas: Vec<f64>,
    /// Comma-separated λs instead of target βs (target β = anchor β / λ; λ = 0 is the reference).
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    lambdas: Option<Vec<f64>>,
    /// What the models predict.
    #[arg(long, value_enum, default_value = "epsilon")]
    prediction: PredictionArg,
    /// Noise seed.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    seed: u64,
    /// Directory for study.csv, study.json and the PNG figures (created if missing).
    #[arg(long, default_value = "deradiff-out/demo")]
    out: PathBuf,
    /// Print the result as JSON on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// No progress bar, and no "wrote …" and "done in …" lines after the table.
    #[arg(long, short)]
    quiet: bool,
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Demo(args) => demo(args),
        Command::Sample(args) => sample::sample(args),
        Command::Sweep(args) => tune::sweep(args),
        Command::Tune(args) => tune::tune(args),
        Command::Compare(args) => tune::compare(args),
        Command::Merge(args) => print_stdout(&shards::merge(args)?),
        Command::Status(args) => print_stdout(&shards::status(args)?),
        Command::ExtractLora(args) => lora::extract(args),
        Command::Score(args) => score::score(args),
    }
}

/// Parses the command line (clap prints usage errors and exits with status 2), runs the
/// subcommand and prints a failure as its whole cause chain: exit status 1 for a failed run, 2
/// for a bad option. A panic (a bug) is reported as an internal error with status 1, not 101.
fn main() -> ExitCode {
    let cli = Cli::parse();
    std::panic::set_hook(Box::new(|info| {
        eprintln!("error: internal error in deradiff (a bug; please report it): {info}");
    }));
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(cli.command))) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("{}", e.report());
            ExitCode::from(e.exit_code())
        }
        Err(_) => ExitCode::FAILURE,
    }
}

/// Errors (a bad option, before anything runs) if the output directory `dir` of `option` exists
/// and is not a directory.
pub(crate) fn check_out_dir(option: &str, dir: &Path) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        return Err(CliError::usage(format!("{option} {} exists and is not a directory", dir.display())));
    }
    Ok(())
}

/// The most samples per run `deradiff demo` accepts (each of the study's runs keeps an
/// `[n, 2]` f64 tensor; 10⁷ samples is about 2 GB in all).
const MAX_SAMPLES: usize = 10_000_000;

/// Turns the options into a study configuration, with a message for every bad value.
fn config_from(args: &DemoArgs) -> Result<StudyConfig> {
    if !(args.anchor_beta > 0.0 && args.anchor_beta.is_finite()) {
        return Err(CliError::usage(format!(
            "--anchor-beta is {}; it must be a positive finite number",
            args.anchor_beta
        )));
    }
    let target_betas = match &args.lambdas {
        Some(lambdas) => {
            if lambdas.is_empty() {
                return Err(CliError::usage("--lambdas is empty; give at least one λ"));
            }
            let mut betas = Vec::with_capacity(lambdas.len());
            for &l in lambdas {
                if !(l >= 0.0 && l.is_finite()) {
                    return Err(CliError::usage(format!(
                        "--lambdas: λ = {l} gives the target β = {} / {l} = {}; λ must be finite and ≥ 0 so \
                         that every target β is positive",
                        args.anchor_beta,
                        args.anchor_beta / l
                    )));
                }
                betas.push(if l == 0.0 { f64::INFINITY } else { args.anchor_beta / l });
            }
            betas
        }
        None => {
            if args.target_betas.is_empty() {
                return Err(CliError::usage("--target-betas is empty; give at least one β"));
            }
            if let Some(b) = args.target_betas.iter().find(|b| b.is_nan() || **b <= 0.0) {
                return Err(CliError::usage(format!(
                    "--target-betas: target β = {b} (λ = {}); every target β must be positive",
                    args.anchor_beta / b
                )));
            }
            args.target_betas.clone()
        }
    };
    if args.steps == 0 {
        return Err(CliError::usage("--steps must be at least 1"));
    }
    if args.samples == 0 {
        return Err(CliError::usage("--samples must be at least 1"));
    }
    if args.samples > MAX_SAMPLES {
        return Err(CliError::usage(format!(
            "--samples {} is more than {MAX_SAMPLES}; every run keeps its samples in memory",
            args.samples
        )));
    }
    let scheduler = args.scheduler.kind(args.eta)?;
    let mixture = demo_mixture(args.components).usage_context(format!("--components {}", args.components))?;
    let reward = match args.reward {
        RewardArg::Linear => demo_linear_reward(),
        RewardArg::Quadratic => demo_quadratic_reward(),
    };
    let mut training = default_training(scheduler);
    training.prediction_type = match args.prediction {
        PredictionArg::Epsilon => PredictionType::Epsilon,
        PredictionArg::VPrediction => PredictionType::VPrediction,
        PredictionArg::Sample => PredictionType::Sample,
    };
    if args.steps > training.num_train_timesteps {
        return Err(CliError::usage(format!(
            "--steps {} is more than the {} training timesteps of the exact models",
            args.steps, training.num_train_timesteps
        )));
    }
    let mut config = StudyConfig::new(mixture, reward, args.anchor_beta, target_betas);
    config.scheduler = scheduler;
    config.steps = args.steps;
    config.samples = args.samples;
    config.seed = args.seed;
    config.training = Some(training);
    config.validate().usage_context("the study's options do not fit together")?;
    check_out_dir("--out", &args.out)?;
    Ok(config)
}

/// A progress bar (hidden with `--quiet`, and when stderr is not a terminal).
pub(crate) fn progress_bar(quiet: bool, template: &str) -> Result<ProgressBar> {
    let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new(0) };
    let style =
        ProgressStyle::with_template(template).map_err(|e| CliError::runtime(format!("progress bar template: {e}")))?;
    bar.set_style(style);
    Ok(bar)
}

fn demo(args: DemoArgs) -> Result<()> {
    let config = config_from(&args)?;
    let start = Instant::now();
    let bar = progress_bar(args.quiet, "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} steps  {msg}")?;
    let output = run_study_with_progress(&config, &mut |p| {
        bar.set_length(p.total);
        bar.set_position(p.done);
        bar.set_message(p.stage.to_string());
    })
    .context("the study failed")?;
    bar.finish_and_clear();
    let written = output
        .write_files(&args.out)
        .with_context(|| format!("cannot write the study's files to {}", args.out.display()))?;
    let elapsed = start.elapsed().as_secs_f64();
    let mut text = if args.json {
        output.result.to_json()?
    } else {
        let mut t = output.result.to_string();
        if !args.quiet {
            t.push_str("\nwrote:\n");
            for path in &written {
                t.push_str(&format!("  {}\n", path.display()));
            }
            t.push_str(&format!("done in {elapsed:.2} s"));
        }
        t
    };
    text.push('\n');
    print_stdout(&text)
}

/// Writes to stdout; a closed pipe (`deradiff demo | head`) is not an error.
pub(crate) fn print_stdout(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(CliError::because("cannot write to stdout", e)),
        _ => Ok(()),
    }
}
