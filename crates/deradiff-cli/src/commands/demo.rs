//! `deradiff demo`: the realignment study on the exact analytic testbed (a built-in 2-D Gaussian
//! mixture), its table (CSV, JSON) and figures (PNG).

use std::path::PathBuf;
use std::time::Instant;

use clap::ValueEnum;
use deradiff_analytic::{default_training, demo_mixture, run_study_with_progress, StudyConfig};
use deradiff_core::{PredictionType, SchedulerKind};

use crate::args::{RewardArg, SamplerArgs};
use crate::checks::{check_anchor_beta, check_at_least_one, check_steps};
use crate::error::{CliError, Context, Result};
use crate::grid::target_betas;
use crate::guard::{check_out_dir, lock_dir};
use crate::output::{create_out_dir, print_stdout, progress_bar};

/// What the models predict (`--prediction`).
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

impl PredictionArg {
    /// The library's prediction type.
    fn prediction_type(self) -> PredictionType {
        match self {
            PredictionArg::Epsilon => PredictionType::Epsilon,
            PredictionArg::VPrediction => PredictionType::VPrediction,
            PredictionArg::Sample => PredictionType::Sample,
        }
    }
}

/// Options of `deradiff demo`.
#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// The sampler (default ddpm) and its options.
    #[command(flatten)]
    sampler: SamplerArgs,
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

/// The most samples per run `deradiff demo` accepts (each of the study's runs keeps an
/// `[n, 2]` f64 tensor; 10⁷ samples is about 2 GB in all).
const MAX_SAMPLES: usize = 10_000_000;

/// `--steps` and `--samples`: at least one each, and samples that fit in memory.
fn check_counts(args: &DemoArgs) -> Result<()> {
    check_steps(args.steps)?;
    check_at_least_one("--samples", args.samples)?;
    if args.samples > MAX_SAMPLES {
        return Err(CliError::usage(format!(
            "--samples {} is more than {MAX_SAMPLES}; every run keeps its samples in memory",
            args.samples
        )));
    }
    Ok(())
}

/// Turns the options into a study configuration, with a message for every bad value.
fn config_from(args: &DemoArgs) -> Result<StudyConfig> {
    check_anchor_beta(args.anchor_beta)?;
    let target_betas = target_betas(args.anchor_beta, args.lambdas.as_deref(), &args.target_betas)?;
    check_counts(args)?;
    let (scheduler, options, training) =
        args.sampler.for_testbed(SchedulerKind::Ddpm, args.prediction.prediction_type(), default_training)?;
    let mixture = demo_mixture(args.components).usage_context(format!("--components {}", args.components))?;
    if args.steps > training.num_train_timesteps {
        return Err(CliError::usage(format!(
            "--steps {} is more than the {} training timesteps of the exact models",
            args.steps, training.num_train_timesteps
        )));
    }
    let mut config = StudyConfig::new(mixture, args.reward.reward(), args.anchor_beta, target_betas);
    config.scheduler = scheduler;
    config.scheduler_options = options;
    config.steps = args.steps;
    config.samples = args.samples;
    config.seed = args.seed;
    config.training = Some(training);
    config.validate().usage_context("the study's options do not fit together")?;
    check_out_dir("--out", &args.out)?;
    Ok(config)
}

/// Runs `deradiff demo`.
pub(crate) fn run(args: DemoArgs) -> Result<()> {
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
    // The folder's lock is held while the four files are written: two runs on one --out leave
    // the files of one of them, not a mix.
    create_out_dir(&args.out)?;
    let lock = lock_dir(&args.out);
    let written = output
        .write_files(&args.out)
        .with_context(|| format!("cannot write the study's files to {}", args.out.display()))?;
    drop(lock);
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
