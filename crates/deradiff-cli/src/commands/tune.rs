//! `deradiff tune`: Bayesian optimisation of λ (GP surrogate, EI or UCB) on the analytic testbed
//! or with Stable Diffusion (`--reference`); λ* and the KL strength it emulates.

use std::path::PathBuf;

use deradiff_tune::{equivalent_beta, optimize, plot, Acquisition, BoConfig, BoEvaluation, BoResult, SweepObjective};

use crate::args::{LambdaCount, SweepModelArgs};
use crate::error::{CliError, Context, Result};
use crate::guard::{check_out_dir, check_outputs, lock_dir};
use crate::output::{create_out_dir, print_stdout, write_file};

/// Options of `deradiff tune`.
#[derive(Debug, clap::Args)]
pub(crate) struct TuneArgs {
    /// Lower end of the λ range.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    lower: f64,
    /// Upper end of the λ range.
    #[arg(long, default_value_t = 2.0, allow_negative_numbers = true)]
    upper: f64,
    /// Evaluations in all (initial design included).
    #[arg(long, default_value_t = 10)]
    budget: usize,
    /// Points of the initial design.
    #[arg(long, default_value_t = 3)]
    initial: usize,
    /// Acquisition: ei (Expected Improvement) or ucb (GP-UCB schedule).
    #[arg(long, default_value = "ei")]
    acquisition: String,
    /// Seed of the initial design and the optimiser.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stable Diffusion: the KL strength β the aligned UNet was trained with, to print β/λ*.
    #[arg(long, allow_negative_numbers = true)]
    aligned_beta: Option<f64>,
    /// Output directory (bo.json, bo_trace.png).
    #[arg(long, default_value = "deradiff-out/tune")]
    out: PathBuf,
    /// No per-evaluation progress lines and no "wrote …" line after the result.
    #[arg(long, short)]
    quiet: bool,
    /// The model and its rewards: the analytic testbed, or Stable Diffusion with --reference
    /// (last: the options after its help headings would fall under them).
    #[command(flatten)]
    model: SweepModelArgs,
}

/// The optimiser's configuration from `--lower`, `--upper`, `--budget`, `--initial`,
/// `--acquisition` and `--seed`.
fn bo_config(args: &TuneArgs) -> Result<BoConfig> {
    let acquisition = match args.acquisition.as_str() {
        "ei" => Acquisition::ExpectedImprovement { xi: 0.0 },
        "ucb" => Acquisition::UpperConfidenceBound { delta: 0.1 },
        other => return Err(CliError::usage(format!("--acquisition '{other}' is not one of 'ei', 'ucb'"))),
    };
    let config = BoConfig {
        lower: args.lower,
        upper: args.upper,
        budget: args.budget,
        initial: args.initial,
        acquisition,
        seed: args.seed,
        ..BoConfig::default()
    };
    config.validate().usage_context("--lower, --upper, --budget and --initial do not fit together")?;
    if let Some(beta) = args.aligned_beta {
        if !(beta > 0.0 && beta.is_finite()) {
            return Err(CliError::usage(format!(
                "--aligned-beta is {beta}; the KL strength the aligned model was trained with is a positive finite \
                 number"
            )));
        }
    }
    Ok(config)
}

/// Runs `deradiff tune`.
pub(crate) fn run(args: TuneArgs) -> Result<()> {
    let config = bo_config(&args)?;
    check_out_dir("--out", &args.out)?;
    let (json, trace) = (args.out.join("bo.json"), args.out.join("bo_trace.png"));
    check_outputs(&[("--out", &json), ("--out", &trace)], &args.model.inputs())?;
    let built = args.model.build(LambdaCount { count: args.budget, options: "--budget" }, false)?;
    if built.anchor_beta.is_some() && args.aligned_beta.is_some() {
        return Err(CliError::usage(
            "--aligned-beta applies to Stable Diffusion (--reference and --aligned): the analytic testbed's anchor \
             has --anchor-beta",
        ));
    }
    let groups = if args.model.max_lambdas_per_batch > 0 { "--max-lambdas-per-batch" } else { "--initial" };
    let largest = match args.model.max_lambdas_per_batch {
        0 => args.initial.max(1),
        max => args.initial.clamp(1, max),
    };
    args.model.check_batch(&built, largest, groups)?;
    // The objective is the first reward: the true reward on the testbed, else --clip, else
    // --pickscore, else --hps, else --aesthetic, else --image-reward.
    let reward = built.rewards[0].as_ref();
    let mut objective = SweepObjective::new(built.model.as_ref(), reward, built.prompts.clone(), built.samples)
        .usage_context("the tuning objective's options do not fit together")?
        .with_max_lambdas_per_batch(args.model.max_lambdas_per_batch);
    create_out_dir(&args.out)?;
    let quiet = args.quiet;
    let mut progress = |e: &BoEvaluation| {
        if !quiet {
            eprintln!(
                "evaluation {:2}: λ = {:.4} → {:.4}   (best λ = {:.4})",
                e.index + 1,
                e.lambda,
                e.value,
                e.best_lambda
            );
        }
        Ok(())
    };
    let result = optimize(&mut objective, &config, &mut progress).context("the optimisation failed")?;
    write_files(&args, &result, &reward.name())?;
    print_stdout(&report(&args, &result, &reward.name(), built.anchor_beta.or(args.aligned_beta)))
}

/// Writes bo.json and bo_trace.png into `--out` (its lock held: another run writing there at
/// the same time waits, and the folder holds one run's pair of files).
fn write_files(args: &TuneArgs, result: &BoResult, reward: &str) -> Result<()> {
    let _lock = lock_dir(&args.out);
    write_file(&args.out.join("bo.json"), result.to_json()?.as_bytes())?;
    let title = format!("Bayesian optimisation of λ ({reward})");
    let png = plot::bo_trace_png(result, None, &title).context("cannot plot bo_trace.png")?;
    write_file(&args.out.join("bo_trace.png"), &png)
}

/// λ*, its reward, and the KL strength β_anchor/λ* it emulates where the anchor's β is known.
fn report(args: &TuneArgs, result: &BoResult, reward: &str, anchor: Option<f64>) -> String {
    let mut text = format!(
        "λ* = {:.4} ({} {:.4}, {} evaluations)\n",
        result.lambda_star,
        reward,
        result.value_star,
        result.history.len()
    );
    match anchor {
        Some(b) => {
            let beta = match equivalent_beta(b, result.lambda_star) {
                Ok(x) if x.is_finite() => format!("{x:.4}"),
                Ok(_) => "∞ (the reference)".into(),
                Err(_) => "none (a negative λ* moves away from the aligned model)".into(),
            };
            text.push_str(&format!("equivalent KL strength β_anchor/λ* = {b} / {:.4} = {beta}\n", result.lambda_star));
        }
        None => text.push_str("(give --aligned-beta to print the KL strength β/λ* it emulates)\n"),
    }
    if !args.quiet {
        text.push_str(&format!("wrote {}/{{bo.json, bo_trace.png}}\n", args.out.display()));
    }
    text
}
