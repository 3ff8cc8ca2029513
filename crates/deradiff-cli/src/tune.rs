//! `deradiff sweep`, `deradiff tune` and `deradiff compare`: finding λ on the analytic testbed,
//! and comparing two result files with the paper's agreement statistics (Table 5).

use std::path::{Path, PathBuf};

use candle_core::DType;
use deradiff_analytic::{default_training, demo_linear_reward, demo_mixture, demo_quadratic_reward};
use std::sync::Arc;

use deradiff_sd::{parse_device, parse_dtype, LoadOptions};
use deradiff_tune::{
    agreement, equivalent_beta, optimize, pair_rows, plot, read_results, run_sweep, Acquisition, AgreementConfig,
    AnalyticModel, AnalyticReward, AnalyticSetup, BoConfig, BoEvaluation, ClipScore, ClipScorer, IfExists,
    ManifoldPenalty, PairBy, PickScore, Prompt, Reward, SdModel, SdSetup, SweepConfig, SweepEvent, SweepModel,
    SweepObjective, SweepOutput, TrueReward,
};
use indicatif::{ProgressBar, ProgressStyle};

use crate::{print_stdout, RewardArg, SchedulerArg};

/// The model and rewards shared by `sweep` and `tune`: the analytic testbed by default, Stable
/// Diffusion when `--reference` is given.
#[derive(Debug, clap::Args)]
pub struct TestbedArgs {
    /// Stable Diffusion: the reference checkpoint (diffusers layout). Without it the analytic
    /// testbed is used.
    #[arg(long, requires = "aligned", help_heading = "Stable Diffusion")]
    reference: Option<PathBuf>,
    /// Stable Diffusion: the aligned UNet (pipeline dir, unet/ dir or .safetensors file).
    #[arg(long, requires = "reference", help_heading = "Stable Diffusion")]
    aligned: Option<PathBuf>,
    /// Stable Diffusion: a prompt (repeatable).
    #[arg(long, help_heading = "Stable Diffusion")]
    prompt: Vec<String>,
    /// Stable Diffusion: a file with one prompt per line (blank lines skipped).
    #[arg(long, help_heading = "Stable Diffusion")]
    prompts_file: Option<PathBuf>,
    /// Stable Diffusion: CLIP score reward from a Hugging Face CLIPModel directory.
    #[arg(long, help_heading = "Stable Diffusion")]
    clip: Option<PathBuf>,
    /// Stable Diffusion: PickScore reward from a CLIPModel directory (e.g. PickScore_v1).
    #[arg(long, help_heading = "Stable Diffusion")]
    pickscore: Option<PathBuf>,
    /// Stable Diffusion: the tokenizer/preprocessor directory of --pickscore, if it is not in
    /// the model directory (PickScore_v1 uses laion/CLIP-ViT-H-14-laion2B-s32B-b79K's).
    #[arg(long, help_heading = "Stable Diffusion")]
    pickscore_processor: Option<PathBuf>,
    /// Stable Diffusion: guidance scale.
    #[arg(long, default_value_t = 7.5, allow_negative_numbers = true, help_heading = "Stable Diffusion")]
    guidance: f64,
    /// Stable Diffusion: weights dtype (f32, f16, bf16).
    #[arg(long, default_value = "f32", help_heading = "Stable Diffusion")]
    dtype: String,
    /// Stable Diffusion: device (cpu, cuda[:N], metal[:N]).
    #[arg(long, default_value = "cpu", help_heading = "Stable Diffusion")]
    device: String,
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
    /// Analytic testbed: number of prompts (independent noise seeds 0..N).
    #[arg(long, default_value_t = 4)]
    prompts: u64,
    /// Samples per prompt and λ (default: 256 on the testbed, 2 images with Stable Diffusion).
    #[arg(long)]
    samples: Option<usize>,
    /// Stable Diffusion: seed of the first prompt (prompt i uses seed + i; results are keyed by
    /// the prompt text, which must be unique).
    #[arg(long = "prompt-seed", default_value_t = 0)]
    prompt_seed: u64,
}

/// The model a sweep or a tuning run samples, its rewards, prompts and samples per prompt.
struct Built {
    model: Box<dyn SweepModel>,
    rewards: Vec<Box<dyn Reward>>,
    prompts: Vec<Prompt>,
    samples: usize,
    anchor_beta: Option<f64>,
}

impl TestbedArgs {
    /// The analytic testbed or Stable Diffusion, by the options given.
    fn build(&self) -> Result<Built, String> {
        if self.steps == 0 {
            return Err("--steps must be at least 1".into());
        }
        if self.samples == Some(0) {
            return Err("--samples must be at least 1".into());
        }
        match (&self.reference, &self.aligned) {
            (Some(reference), Some(aligned)) => self.build_sd(reference, aligned),
            _ => {
                for (flag, given) in [
                    ("--prompt", !self.prompt.is_empty()),
                    ("--prompts-file", self.prompts_file.is_some()),
                    ("--clip", self.clip.is_some()),
                    ("--pickscore", self.pickscore.is_some()),
                ] {
                    if given {
                        return Err(format!(
                            "{flag} applies to Stable Diffusion sweeps: give --reference and --aligned"
                        ));
                    }
                }
                let (model, proxy, truth) = self.build_analytic()?;
                Ok(Built {
                    model: Box::new(model),
                    rewards: vec![Box::new(truth), Box::new(proxy)],
                    prompts: Prompt::seeds(0..self.prompts),
                    samples: self.samples.unwrap_or(256),
                    anchor_beta: Some(self.anchor_beta),
                })
            }
        }
    }

    fn build_sd(&self, reference: &std::path::Path, aligned: &std::path::Path) -> Result<Built, String> {
        let mut texts = self.prompt.clone();
        if let Some(file) = &self.prompts_file {
            let content = std::fs::read_to_string(file)
                .map_err(|e| format!("cannot read --prompts-file {}: {e}", file.display()))?;
            texts.extend(content.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from));
        }
        if texts.is_empty() {
            return Err("give prompts for a Stable Diffusion sweep: --prompt \"…\" or --prompts-file FILE".into());
        }
        let prompts: Vec<Prompt> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| Prompt::text(t.clone(), t.clone(), self.prompt_seed.wrapping_add(i as u64)))
            .collect();
        let dtype = parse_dtype(&self.dtype).map_err(|e| e.to_string())?;
        let device = parse_device(&self.device).map_err(|e| e.to_string())?;
        let mut rewards: Vec<Box<dyn Reward>> = Vec::new();
        if let Some(dir) = &self.clip {
            let scorer = ClipScorer::load(dir, DType::F32, &device).map_err(|e| format!("--clip: {e}"))?;
            rewards.push(Box::new(ClipScore::new(Arc::new(scorer))));
        }
        if let Some(dir) = &self.pickscore {
            let processor = self.pickscore_processor.as_deref().unwrap_or(dir);
            let scorer = ClipScorer::load_with_processor(dir, processor, DType::F32, &device)
                .map_err(|e| format!("--pickscore: {e}"))?;
            rewards.push(Box::new(PickScore::new(Arc::new(scorer))));
        }
        if rewards.is_empty() {
            return Err("give a reward for a Stable Diffusion sweep: --clip DIR and/or --pickscore DIR".into());
        }
        let mut setup = SdSetup::new(reference, aligned);
        setup.load = LoadOptions { dtype, device };
        setup.scheduler = self.scheduler.kind(self.eta)?;
        setup.steps = self.steps;
        setup.guidance_scale = self.guidance;
        let model = SdModel::load(setup).map_err(|e| e.to_string())?;
        Ok(Built { model: Box::new(model), rewards, prompts, samples: self.samples.unwrap_or(2), anchor_beta: None })
    }

    /// The model, the proxy reward and the true reward.
    fn build_analytic(&self) -> Result<(AnalyticModel, AnalyticReward, TrueReward), String> {
        if !(self.anchor_beta > 0.0 && self.anchor_beta.is_finite()) {
            return Err(format!("--anchor-beta is {}; it must be a positive finite number", self.anchor_beta));
        }
        if self.prompts == 0 {
            return Err("--prompts must be at least 1".into());
        }
        let mixture = demo_mixture(self.components).map_err(|e| format!("--components {}: {e}", self.components))?;
        let proxy = match self.reward {
            RewardArg::Linear => demo_linear_reward(),
            RewardArg::Quadratic => demo_quadratic_reward(),
        };
        let scheduler = self.scheduler.kind(self.eta)?;
        let mut setup = AnalyticSetup::new(mixture.clone(), proxy.clone(), self.anchor_beta);
        setup.scheduler = scheduler;
        setup.steps = self.steps;
        setup.training = Some(default_training(scheduler));
        let model = AnalyticModel::new(setup).map_err(|e| e.to_string())?;
        let truth = TrueReward::new("true", proxy.clone(), ManifoldPenalty::ReferenceLogDensity(mixture), self.penalty)
            .map_err(|e| format!("--penalty: {e}"))?;
        Ok((model, AnalyticReward::new("proxy", proxy), truth))
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
    let built = args.testbed.build()?;
    std::fs::create_dir_all(&args.out).map_err(|e| format!("cannot create {}: {e}", args.out.display()))?;
    let mut output = SweepOutput::jsonl(args.out.join("sweep.jsonl")).with_csv(args.out.join("sweep.csv"));
    output.if_exists = if args.overwrite { IfExists::Overwrite } else { IfExists::Resume };
    let mut config = SweepConfig::new(lambdas, built.prompts.clone(), built.samples);
    config.output = Some(output);
    config.validate().map_err(|e| e.to_string())?;
    let progress = bar(args.quiet, "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} rows  {msg}")?;
    progress.set_length(config.total() as u64);
    let rewards: Vec<&dyn Reward> = built.rewards.iter().map(|r| r.as_ref()).collect();
    let mut observer = |e: &SweepEvent<'_>| {
        match e {
            SweepEvent::Row { done, .. } => progress.set_position(*done as u64),
            SweepEvent::Step { step, num_steps, lambdas, .. } => {
                progress.set_message(format!("{} λ, step {}/{num_steps}", lambdas.len(), step + 1))
            }
        }
        Ok(())
    };
    let result = run_sweep(built.model.as_ref(), &rewards, &config, &mut observer).map_err(|e| e.to_string())?;
    progress.finish_and_clear();
    let names: Vec<String> = rewards.iter().map(|r| r.name()).collect();
    let curves = names.iter().map(|n| result.summaries(n)).collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())?;
    let png = plot::reward_vs_lambda_png(&curves[0], &names[0], 1.96, "Mean reward vs λ").map_err(|e| e.to_string())?;
    plot::write_png(args.out.join("reward_vs_lambda.png"), &png).map_err(|e| e.to_string())?;
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
    for n in &names {
        text.push_str(&format!(" {:>22}", format!("{n} ± SEM")));
    }
    text.push('\n');
    for (i, s0) in curves[0].iter().enumerate() {
        let beta = match built.anchor_beta {
            Some(b) => equivalent_beta(b, s0.lambda).map(|b| format!("{b:.4}")).unwrap_or_else(|_| "∞".into()),
            None => "—".into(),
        };
        text.push_str(&format!("{:8.4} {beta:>12}", s0.lambda));
        for c in &curves {
            text.push_str(&format!(" {:>22}", format!("{:.4} ± {:.4}", c[i].mean, c[i].sem)));
        }
        text.push('\n');
    }
    if let Some(best) = curves[0].iter().max_by(|a, b| a.mean.total_cmp(&b.mean)) {
        text.push_str(&format!("\nbest {} on the grid at λ = {}\n", names[0], best.lambda));
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
    /// Stable Diffusion: the KL strength β the aligned UNet was trained with, to print β/λ*.
    #[arg(long, allow_negative_numbers = true)]
    aligned_beta: Option<f64>,
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
    let built = args.testbed.build()?;
    std::fs::create_dir_all(&args.out).map_err(|e| format!("cannot create {}: {e}", args.out.display()))?;
    // The objective is the first reward: the true reward on the testbed, else --clip, else --pickscore.
    let reward = built.rewards[0].as_ref();
    let mut objective = SweepObjective::new(built.model.as_ref(), reward, built.prompts.clone(), built.samples)
        .map_err(|e| e.to_string())?;
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
    let title = format!("Bayesian optimisation of λ ({})", reward.name());
    let png = plot::bo_trace_png(&result, None, &title).map_err(|e| e.to_string())?;
    plot::write_png(args.out.join("bo_trace.png"), &png).map_err(|e| e.to_string())?;
    let mut text = format!(
        "λ* = {:.4} ({} {:.4}, {} evaluations)\n",
        result.lambda_star,
        reward.name(),
        result.value_star,
        result.history.len()
    );
    let anchor = built.anchor_beta.or(args.aligned_beta);
    match anchor {
        Some(b) => {
            let beta = equivalent_beta(b, result.lambda_star)
                .map(|x| format!("{x:.4}"))
                .unwrap_or_else(|_| "∞ (the reference)".into());
            text.push_str(&format!("equivalent KL strength β_anchor/λ* = {b} / {:.4} = {beta}\n", result.lambda_star));
        }
        None => text.push_str("(give --aligned-beta to print the KL strength β/λ* it emulates)\n"),
    }
    text.push_str(&format!("wrote {}/{{bo.json, bo_trace.png}}\n", args.out.display()));
    print_stdout(&text)
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
