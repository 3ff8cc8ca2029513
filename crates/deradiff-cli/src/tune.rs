//! `deradiff sweep`, `deradiff tune` and `deradiff compare`: finding λ on the analytic testbed,
//! and comparing two result files with the paper's agreement statistics (Table 5).

use std::path::{Path, PathBuf};

use deradiff_analytic::{default_training, demo_linear_reward, demo_mixture, demo_quadratic_reward};
use deradiff_core::SchedulerKind;
use deradiff_tune::{
    agreement, equivalent_beta, optimize, pair_rows, plot, read_results, run_sweep, Acquisition, AgreementConfig,
    AnalyticModel, AnalyticReward, AnalyticSetup, BoConfig, BoEvaluation, IfExists, ManifoldPenalty, PairBy, Prompt,
    Reward, SweepConfig, SweepEvent, SweepObjective, SweepOutput, TrueReward,
};
use indicatif::{ProgressBar, ProgressStyle};

use crate::{print_stdout, RewardArg, SchedulerArg};

/// The testbed model and rewards shared by `sweep` and `tune`.
#[derive(Debug, clap::Args)]
pub struct TestbedArgs {
    /// Sampler.
    #[arg(long, value_enum, default_value = "ddpm")]
    scheduler: SchedulerArg,
    /// DDIM's η in [0, 1] (only with --scheduler ddim).
    #[arg(long, allow_negative_numbers = true)]
    eta: Option<f64>,
    /// Inference steps.
    #[arg(long, default_value_t = 25)]
    steps: usize,
    /// Mixture components of the built-in 2-D data.
    #[arg(long, default_value_t = 3)]
    components: usize,
    /// The proxy reward the anchor model was aligned with.
    #[arg(long, value_enum, default_value = "linear")]
    reward: RewardArg,
    /// KL strength β of the anchor (the one aligned model).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    anchor_beta: f64,
    /// Weight κ of the "true" reward's penalty for leaving the data: r_true = r_proxy + κ log p_ref.
    #[arg(long, default_value_t = 2.5, allow_negative_numbers = true)]
    penalty: f64,
    /// Prompts (for the testbed: independent noise seeds 0..N).
    #[arg(long, default_value_t = 4)]
    prompts: u64,
    /// Samples per prompt and λ.
    #[arg(long, default_value_t = 256)]
    samples: usize,
}

impl TestbedArgs {
    fn scheduler_kind(&self) -> Result<SchedulerKind, String> {
        Ok(match self.scheduler {
            SchedulerArg::Ddpm | SchedulerArg::EulerA if self.eta.is_some() => {
                return Err("--eta applies to --scheduler ddim only".into());
            }
            SchedulerArg::Ddpm => SchedulerKind::Ddpm,
            SchedulerArg::EulerA => SchedulerKind::EulerAncestral,
            SchedulerArg::Ddim => SchedulerKind::Ddim { eta: self.eta.unwrap_or(0.0) },
        })
    }

    /// The model, the proxy reward and the true reward.
    fn build(&self) -> Result<(AnalyticModel, AnalyticReward, TrueReward), String> {
        if !(self.anchor_beta > 0.0 && self.anchor_beta.is_finite()) {
            return Err(format!("--anchor-beta is {}; it must be a positive finite number", self.anchor_beta));
        }
        if self.steps == 0 {
            return Err("--steps must be at least 1".into());
        }
        if self.prompts == 0 {
            return Err("--prompts must be at least 1".into());
        }
        if self.samples == 0 {
            return Err("--samples must be at least 1".into());
        }
        let mixture = demo_mixture(self.components).map_err(|e| format!("--components {}: {e}", self.components))?;
        let proxy = match self.reward {
            RewardArg::Linear => demo_linear_reward(),
            RewardArg::Quadratic => demo_quadratic_reward(),
        };
        let scheduler = self.scheduler_kind()?;
        let mut setup = AnalyticSetup::new(mixture.clone(), proxy.clone(), self.anchor_beta);
        setup.scheduler = scheduler;
        setup.steps = self.steps;
        setup.training = Some(default_training(scheduler));
        let model = AnalyticModel::new(setup).map_err(|e| e.to_string())?;
        let truth = TrueReward::new("true", proxy.clone(), ManifoldPenalty::ReferenceLogDensity(mixture), self.penalty)
            .map_err(|e| format!("--penalty: {e}"))?;
        Ok((model, AnalyticReward::new("proxy", proxy), truth))
    }

    fn prompts(&self) -> Vec<Prompt> {
        Prompt::seeds(0..self.prompts)
    }
}

/// Options of `deradiff sweep`.
#[derive(Debug, clap::Args)]
pub struct SweepArgs {
    #[command(flatten)]
    testbed: TestbedArgs,
    /// Comma-separated λ grid.
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true, conflicts_with = "lambda_range")]
    lambdas: Option<Vec<f64>>,
    /// An even λ grid `FROM:TO:COUNT` (default 0:2:9).
    #[arg(long)]
    lambda_range: Option<String>,
    /// Start afresh instead of resuming an existing results file.
    #[arg(long)]
    overwrite: bool,
    /// Output directory (sweep.jsonl, sweep.csv, reward_vs_lambda.png).
    #[arg(long, default_value = "deradiff-out/sweep")]
    out: PathBuf,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

fn parse_range(text: &str) -> Result<Vec<f64>, String> {
    let bad = || format!("--lambda-range {text}: expected FROM:TO:COUNT, e.g. 0:2:9");
    let parts: Vec<&str> = text.split(':').collect();
    let [from, to, count] = parts.as_slice() else { return Err(bad()) };
    let from: f64 = from.trim().parse().map_err(|_| bad())?;
    let to: f64 = to.trim().parse().map_err(|_| bad())?;
    let count: usize = count.trim().parse().map_err(|_| bad())?;
    if from > to {
        return Err(format!("--lambda-range {text}: the range is reversed ({from} > {to})"));
    }
    deradiff_tune::linspace(from, to, count).map_err(|e| format!("--lambda-range {text}: {e}"))
}

fn bar(quiet: bool, template: &str) -> Result<ProgressBar, String> {
    let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new(0) };
    bar.set_style(ProgressStyle::with_template(template).map_err(|e| e.to_string())?);
    Ok(bar)
}

/// Runs `deradiff sweep`.
pub fn sweep(args: SweepArgs) -> Result<(), String> {
    let lambdas = match (&args.lambdas, &args.lambda_range) {
        (Some(l), _) => l.clone(),
        (None, Some(r)) => parse_range(r)?,
        (None, None) => parse_range("0:2:9")?,
    };
    let (model, proxy, truth) = args.testbed.build()?;
    std::fs::create_dir_all(&args.out).map_err(|e| format!("cannot create {}: {e}", args.out.display()))?;
    let mut output = SweepOutput::jsonl(args.out.join("sweep.jsonl")).with_csv(args.out.join("sweep.csv"));
    output.if_exists = if args.overwrite { IfExists::Overwrite } else { IfExists::Resume };
    let mut config = SweepConfig::new(lambdas, args.testbed.prompts(), args.testbed.samples);
    config.output = Some(output);
    config.validate().map_err(|e| e.to_string())?;
    let progress = bar(args.quiet, "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} rows")?;
    progress.set_length(config.total() as u64);
    let rewards: [&dyn Reward; 2] = [&proxy, &truth];
    let mut observer = |e: &SweepEvent<'_>| {
        if let SweepEvent::Row { done, .. } = e {
            progress.set_position(*done as u64);
        }
        Ok(())
    };
    let result = run_sweep(&model, &rewards, &config, &mut observer).map_err(|e| e.to_string())?;
    progress.finish_and_clear();
    let proxy_curve = result.summaries("proxy").map_err(|e| e.to_string())?;
    let true_curve = result.summaries("true").map_err(|e| e.to_string())?;
    let png = plot::reward_vs_lambda_png(&true_curve, "true reward (proxy + κ log p_ref)", 1.96, "Mean reward vs λ")
        .map_err(|e| e.to_string())?;
    plot::write_png(args.out.join("reward_vs_lambda.png"), &png).map_err(|e| e.to_string())?;
    let mut text = format!(
        "sweep of {} λ × {} prompts × {} samples ({} rows computed, {} resumed)\n\n       λ   β_anchor/λ   proxy E[r]    true E[r] ± SEM\n",
        proxy_curve.len(),
        config.prompts.len(),
        config.samples_per_prompt,
        result.computed,
        result.resumed
    );
    for (p, t) in proxy_curve.iter().zip(&true_curve) {
        let beta = equivalent_beta(args.testbed.anchor_beta, p.lambda).map(|b| format!("{b:.4}")).unwrap_or("∞".into());
        text.push_str(&format!("{:8.4} {:>12} {:12.4} {:12.4} ± {:.4}\n", p.lambda, beta, p.mean, t.mean, t.sem));
    }
    if let Some(best) = true_curve.iter().max_by(|a, b| a.mean.total_cmp(&b.mean)) {
        text.push_str(&format!("\nbest true reward on the grid at λ = {}\n", best.lambda));
    }
    text.push_str(&format!("wrote {}/{{sweep.jsonl, sweep.csv, reward_vs_lambda.png}}\n", args.out.display()));
    print_stdout(&text)
}

/// Options of `deradiff tune`.
#[derive(Debug, clap::Args)]
pub struct TuneArgs {
    #[command(flatten)]
    testbed: TestbedArgs,
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
    /// Output directory (bo.json, bo_trace.png).
    #[arg(long, default_value = "deradiff-out/tune")]
    out: PathBuf,
    /// No progress output.
    #[arg(long, short)]
    quiet: bool,
}

/// Runs `deradiff tune`.
pub fn tune(args: TuneArgs) -> Result<(), String> {
    let acquisition = match args.acquisition.as_str() {
        "ei" => Acquisition::ExpectedImprovement { xi: 0.0 },
        "ucb" => Acquisition::UpperConfidenceBound { delta: 0.1 },
        other => return Err(format!("--acquisition '{other}' is not one of 'ei', 'ucb'")),
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
    config.validate().map_err(|e| e.to_string())?;
    let (model, _proxy, truth) = args.testbed.build()?;
    std::fs::create_dir_all(&args.out).map_err(|e| format!("cannot create {}: {e}", args.out.display()))?;
    let mut objective =
        SweepObjective::new(&model, &truth, args.testbed.prompts(), args.testbed.samples).map_err(|e| e.to_string())?;
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
    let result = optimize(&mut objective, &config, &mut progress).map_err(|e| e.to_string())?;
    let json = result.to_json().map_err(|e| e.to_string())?;
    deradiff_analytic::write_atomic(args.out.join("bo.json"), json.as_bytes()).map_err(|e| e.to_string())?;
    let png =
        plot::bo_trace_png(&result, None, "Bayesian optimisation of λ (true reward)").map_err(|e| e.to_string())?;
    plot::write_png(args.out.join("bo_trace.png"), &png).map_err(|e| e.to_string())?;
    let beta = equivalent_beta(args.testbed.anchor_beta, result.lambda_star)
        .map(|b| format!("{b:.4}"))
        .unwrap_or_else(|_| "∞ (the reference)".into());
    print_stdout(&format!(
        "λ* = {:.4} (true reward {:.4}, {} evaluations)\nequivalent KL strength β_anchor/λ* = {} / {:.4} = {beta}\nwrote {}/{{bo.json, bo_trace.png}}\n",
        result.lambda_star,
        result.value_star,
        result.history.len(),
        args.testbed.anchor_beta,
        result.lambda_star,
        args.out.display()
    ))
}

/// Options of `deradiff compare`.
#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// Results of the originals (e.g. models aligned from scratch), a sweep's JSONL file.
    original: PathBuf,
    /// Results of the approximation (e.g. DeRaDiff), a sweep's JSONL file.
    approx: PathBuf,
    /// The reward to compare (a name in both files).
    #[arg(long, default_value = "true")]
    reward: String,
    /// Pair rows by λ and prompt (`lambda-prompt`) or by prompt only (`prompt`).
    #[arg(long, default_value = "lambda-prompt")]
    by: String,
    /// Bootstrap resamples of the MAE.
    #[arg(long, default_value_t = 10_000)]
    bootstrap: usize,
    /// Bootstrap seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output directory (agreement.json, bland_altman.png, abs_error_ecdf.png).
    #[arg(long, default_value = "deradiff-out/compare")]
    out: PathBuf,
}

fn read(path: &Path) -> Result<Vec<deradiff_tune::SweepRow>, String> {
    Ok(read_results(path).map_err(|e| format!("{}: {e}", path.display()))?.rows)
}

/// Runs `deradiff compare`.
pub fn compare(args: CompareArgs) -> Result<(), String> {
    let by = match args.by.as_str() {
        "lambda-prompt" => PairBy::LambdaAndPrompt,
        "prompt" => PairBy::Prompt,
        other => return Err(format!("--by '{other}' is not one of 'lambda-prompt', 'prompt'")),
    };
    let pairs = pair_rows(&read(&args.original)?, &read(&args.approx)?, &args.reward, by).map_err(|e| e.to_string())?;
    let config = AgreementConfig { bootstrap: args.bootstrap, seed: args.seed, ..AgreementConfig::default() };
    let stats = agreement(&pairs.original, &pairs.approx, &config).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&args.out).map_err(|e| format!("cannot create {}: {e}", args.out.display()))?;
    let json = serde_json::to_string_pretty(&stats).map_err(|e| e.to_string())?;
    deradiff_analytic::write_atomic(args.out.join("agreement.json"), json.as_bytes()).map_err(|e| e.to_string())?;
    let title = format!("{} vs {}", args.approx.display(), args.original.display());
    let png = plot::bland_altman_png(&pairs.original, &pairs.approx, &stats, &title).map_err(|e| e.to_string())?;
    plot::write_png(args.out.join("bland_altman.png"), &png).map_err(|e| e.to_string())?;
    let png = plot::abs_error_ecdf_png(&pairs.original, &pairs.approx, &stats, &title).map_err(|e| e.to_string())?;
    plot::write_png(args.out.join("abs_error_ecdf.png"), &png).map_err(|e| e.to_string())?;
    let pct = |s: &deradiff_tune::Stat| s.percent.map(|p| format!("{p:.3} %")).unwrap_or("—".into());
    let mut text = format!(
        "agreement on '{}' over {} pairs (mean of the originals {:.4})\n\n{:<28} {:>12} {:>12}\n",
        args.reward, stats.n, stats.reference_mean, "statistic", "value", "% of mean"
    );
    for (name, s) in [
        ("MAE", &stats.mae),
        ("MAE, bootstrap mean", &stats.mae_bootstrap_mean),
        ("MAE, 95% CI low", &stats.mae_ci_low),
        ("MAE, 95% CI high", &stats.mae_ci_high),
        ("RMSE", &stats.rmse),
        ("median |Δ|", &stats.median_abs),
        ("max |Δ|", &stats.max_abs),
        ("Bland–Altman bias", &stats.bias),
        ("SD of differences", &stats.sd_diff),
        ("limit of agreement, low", &stats.loa_low),
        ("limit of agreement, high", &stats.loa_high),
    ] {
        text.push_str(&format!("{name:<28} {:>12.5} {:>12}\n", s.value, pct(s)));
    }
    text.push_str(&format!(
        "\nwrote {}/{{agreement.json, bland_altman.png, abs_error_ecdf.png}}\n",
        args.out.display()
    ));
    print_stdout(&text)
}
