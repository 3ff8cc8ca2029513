//! `deradiff sweep`: the mean rewards of a λ grid, on the analytic testbed or with Stable
//! Diffusion (`--reference`), streamed to a results file, resumed, optionally one shard of it.

use std::path::PathBuf;

use deradiff_rewards::Reward;
use deradiff_tune::{
    equivalent_beta, run_sweep, IfExists, LambdaSummary, Shard, SweepConfig, SweepEvent, SweepOutput, SweepResult,
};

use crate::args::{Built, LambdaCount, SweepModelArgs};
use crate::checks::check_at_least_one;
use crate::error::{CliError, Context, Result};
use crate::grid::sweep_lambdas;
use crate::guard::{check_out_dir, check_outputs};
use crate::output::{create_out_dir, print_stdout, progress_bar, write_reward_vs_lambda};
use crate::shards::{shard_files, shard_of};

/// Options of `deradiff sweep`.
#[derive(Debug, clap::Args)]
pub(crate) struct SweepArgs {
    /// Comma-separated λ grid (e.g. -0.5,0,0.5,1).
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true, conflicts_with = "lambda_range")]
    lambdas: Option<Vec<f64>>,
    /// An even λ grid `FROM:TO:COUNT` (default 0:2:9; FROM may be negative, e.g. -1:1:5).
    #[arg(long, allow_hyphen_values = true)]
    lambda_range: Option<String>,
    /// Start afresh instead of resuming an existing results file.
    #[arg(long)]
    overwrite: bool,
    /// Output directory (sweep.jsonl, sweep.csv, reward_vs_lambda.png; a shard writes
    /// sweep.shard-KKKKK-of-NNNNN.jsonl / .csv, zero-padded: sweep.shard-00003-of-00008.jsonl; joined by
    /// `deradiff merge`).
    #[arg(long, default_value = "deradiff-out/sweep")]
    out: PathBuf,
    /// Compute only shard K (work items i with i mod N = K; see docs/cluster.md): `K` with
    /// --shards N (in a Slurm array: --shard $SLURM_ARRAY_TASK_ID), or `K/N`. Without it, the
    /// index of a Slurm array task (SLURM_ARRAY_TASK_ID, for an array 0-(N-1)) or a Kubernetes
    /// Indexed Job (JOB_COMPLETION_INDEX) is used, with --shards N.
    #[arg(long, value_name = "K|K/N")]
    shard: Option<String>,
    /// The number of shards N. Never taken from the environment: a Slurm array re-run for one
    /// index reports a task count of 1.
    #[arg(long, value_name = "N")]
    shards: Option<usize>,
    /// Prompts whose λ values share one batch (default 1): fewer, larger model calls, the same
    /// rows.
    #[arg(long, default_value_t = 1)]
    prompts_per_batch: usize,
    /// Save each row's images as PNG files in `images/` beside the results file
    /// (`p0003-s42-l0.500.png`: prompt, seed, λ; `-n1` … per sample when --samples > 1), listed
    /// in the row: the very images its rewards score, for `deradiff score` and `deradiff report`.
    /// With it a Stable Diffusion sweep may have no reward (images and seeds only).
    #[arg(long)]
    save_images: bool,
    /// No progress bar and no "wrote …" line after the table.
    #[arg(long, short)]
    quiet: bool,
    /// The model and its rewards: the analytic testbed, or Stable Diffusion with --reference
    /// (last: the options after its help headings would fall under them).
    #[command(flatten)]
    model: SweepModelArgs,
}

/// The sweep's configuration: `lambdas` × the model's prompts, streamed to the results file of
/// `shard` in `--out` (resumed unless `--overwrite`).
fn config(args: &SweepArgs, lambdas: Vec<f64>, built: &Built, shard: Option<Shard>) -> Result<SweepConfig> {
    let (jsonl, csv) = shard_files(&args.out, shard);
    let mut output = SweepOutput::jsonl(jsonl).with_csv(csv);
    output.if_exists = if args.overwrite { IfExists::Overwrite } else { IfExists::Resume };
    let mut config = SweepConfig::new(lambdas, built.prompts.clone(), built.samples);
    config.output = Some(output);
    config.shard = shard;
    config.prompts_per_batch = args.prompts_per_batch;
    config.max_lambdas_per_batch = args.model.max_lambdas_per_batch;
    config.save_images = args.save_images;
    config.validate().usage_context("the sweep's options do not fit together")?;
    Ok(config)
}

/// Runs the sweep with a progress bar of its rows.
fn sweep(quiet: bool, built: &Built, rewards: &[&dyn Reward], config: &SweepConfig) -> Result<SweepResult> {
    let progress = progress_bar(quiet, "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} rows  {msg}")?;
    progress.set_length(config.total() as u64);
    let mut observer = |e: &SweepEvent<'_>| {
        match e {
            SweepEvent::Row { row, done, .. } => {
                progress.set_position(*done as u64);
                if let Some(s) = row.saturation.filter(|s| *s >= deradiff_sd::Vae::SATURATED) {
                    let what = format!("an image of λ = {}, prompt {:?}", row.lambda, row.prompt);
                    progress.suspend(|| eprintln!("{}", crate::commands::sample::saturation_warning(&what, s)));
                }
            }
            SweepEvent::Step { step, num_steps, lambdas, .. } => {
                progress.set_message(format!("{} λ, step {}/{num_steps}", lambdas.len(), step + 1))
            }
        }
        Ok(())
    };
    let result = run_sweep(built.model.as_ref(), rewards, config, &mut observer).context("the sweep failed")?;
    progress.finish_and_clear();
    Ok(result)
}

/// Runs `deradiff sweep`.
pub(crate) fn run(args: SweepArgs) -> Result<()> {
    let lambdas = sweep_lambdas(args.lambdas.as_deref(), args.lambda_range.as_deref())?;
    check_out_dir("--out", &args.out)?;
    let shard = shard_of(args.shard.as_deref(), args.shards)?;
    check_at_least_one("--prompts-per-batch", args.prompts_per_batch)?;
    if args.model.makes_images() && !args.save_images && !args.model.has_rewards() {
        return Err(CliError::usage(
            "a Stable Diffusion sweep with neither a reward (--clip, --pickscore, --hps, --aesthetic, \
             --image-reward) nor --save-images produces nothing: give a reward to score its images, --save-images \
             to keep them (and score them later with deradiff score), or both",
        ));
    }
    if args.save_images && !args.model.makes_images() {
        return Err(CliError::usage(
            "--save-images applies to Stable Diffusion sweeps (the testbed makes no images): give --reference and \
             --aligned",
        ));
    }
    let (jsonl, csv) = shard_files(&args.out, shard);
    let figure = args.out.join("reward_vs_lambda.png");
    let mut outputs = vec![("--out", jsonl.as_path()), ("--out", csv.as_path())];
    if shard.is_none() {
        outputs.push(("--out", figure.as_path()));
    }
    check_outputs(&outputs, &args.model.inputs())?;
    let count = LambdaCount { count: lambdas.len(), options: "--lambdas / --lambda-range" };
    let built = args.model.build(count, args.save_images)?;
    let config = config(&args, lambdas, &built, shard)?;
    let groups = if args.model.max_lambdas_per_batch > 0 {
        "--max-lambdas-per-batch"
    } else {
        "the λ grid × --prompts-per-batch"
    };
    args.model.check_batch(&built, config.largest_batch(), groups)?;
    create_out_dir(&args.out)?;
    let rewards: Vec<&dyn Reward> = built.rewards.iter().map(|r| r.as_ref()).collect();
    let result = sweep(args.quiet, &built, &rewards, &config)?;
    let text = match shard {
        Some(s) => shard_report(&args, &config, &result, s),
        None if rewards.is_empty() => images_report(&args, &config, &result),
        None => {
            let names: Vec<String> = rewards.iter().map(|r| r.name()).collect();
            let curves = names.iter().map(|n| result.summaries(n)).collect::<Result<Vec<_>, _>>()?;
            write_reward_vs_lambda(&figure, &curves[0], &names[0])?;
            table(&args, &config, &result, (&names, &curves), built.anchor_beta)
        }
    };
    print_stdout(&text)
}

/// What a shard prints: a shard's rows are part of a curve, the table and the figure come with
/// the merge.
fn shard_report(args: &SweepArgs, config: &SweepConfig, result: &SweepResult, shard: Shard) -> String {
    let (jsonl, _) = shard_files(&args.out, Some(shard));
    let mut text = format!(
        "shard {shard}: {} of the sweep's {} work items ({} rows computed, {} resumed)\n",
        config.total(),
        config.spec().len(),
        result.computed,
        result.resumed
    );
    if !args.quiet {
        text.push_str(&format!(
            "wrote {}\nwhen every shard is done: deradiff merge {}\n",
            jsonl.display(),
            args.out.display()
        ));
    }
    text
}

/// What a sweep without rewards prints: its rows and where their images are.
fn images_report(args: &SweepArgs, config: &SweepConfig, result: &SweepResult) -> String {
    let images: usize = result.rows.iter().map(|r| r.images.len()).sum();
    let mut text = format!(
        "sweep of {} λ × {} prompts × {} samples ({} rows computed, {} resumed): {images} images, no rewards\n",
        config.lambdas.len(),
        config.prompts.len(),
        config.samples_per_prompt,
        result.computed,
        result.resumed
    );
    if !args.quiet {
        text.push_str(&format!(
            "wrote {0}/{{sweep.jsonl, sweep.csv}} and {0}/images/ (score them with deradiff score; view them with \
             deradiff report {0})\n",
            args.out.display()
        ));
    }
    text
}

/// The equivalent KL strength β_anchor/λ of a row, as the table shows it.
fn beta_column(anchor_beta: Option<f64>, lambda: f64) -> String {
    match anchor_beta {
        // λ = 0 is the reference (β = ∞); a negative λ emulates no KL strength.
        Some(b) => match equivalent_beta(b, lambda) {
            Ok(beta) if beta.is_finite() => format!("{beta:.4}"),
            Ok(_) => "∞".into(),
            Err(_) if lambda == 0.0 => "∞".into(),
            Err(_) => "—".into(),
        },
        None => "—".into(),
    }
}

/// The table of an unsharded sweep: per λ, β_anchor/λ and each reward's mean ± SEM; the best λ
/// of the first reward.
fn table(
    args: &SweepArgs,
    config: &SweepConfig,
    result: &SweepResult,
    (names, curves): (&[String], &[Vec<LambdaSummary>]),
    anchor_beta: Option<f64>,
) -> String {
    let mut text = format!(
        "sweep of {} λ × {} prompts × {} samples ({} rows computed, {} resumed)\n\n{:>8} {:>12}",
        curves[0].len(),
        config.prompts.len(),
        config.samples_per_prompt,
        result.computed,
        result.resumed,
        "λ",
        "β_anchor/λ"
    );
    for n in names {
        text.push_str(&format!(" {:>22}", format!("{n} ± SEM")));
    }
    text.push('\n');
    for (i, s0) in curves[0].iter().enumerate() {
        text.push_str(&format!("{:8.4} {:>12}", s0.lambda, beta_column(anchor_beta, s0.lambda)));
        for c in curves {
            text.push_str(&format!(" {:>22}", format!("{:.4} ± {:.4}", c[i].mean, c[i].sem)));
        }
        text.push('\n');
    }
    if let Some(best) = curves[0].iter().max_by(|a, b| a.mean.total_cmp(&b.mean)) {
        text.push_str(&format!("\nbest {} on the grid at λ = {}\n", names[0], best.lambda));
    }
    if !args.quiet {
        text.push_str(&format!("wrote {}/{{sweep.jsonl, sweep.csv, reward_vs_lambda.png}}\n", args.out.display()));
        if args.save_images {
            text.push_str(&format!("and {}/images/ (deradiff report {0} shows them)\n", args.out.display()));
        }
    }
    text
}
