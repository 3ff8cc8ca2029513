//! `deradiff sweep`, `deradiff tune` and `deradiff compare`: finding λ on the analytic testbed,
//! and comparing two result files with the paper's agreement statistics (Table 5).

use std::path::{Path, PathBuf};

use candle_core::DType;
use deradiff_analytic::{default_training, demo_linear_reward, demo_mixture, demo_quadratic_reward};

use crate::checkpoint::{check_aligned_family, check_reference_layout};
use crate::error::{CliError, Context, Result};
use crate::rewards::{RewardArgs, GIVE_A_REWARD};
use crate::{check_out_dir, print_stdout, progress_bar, RewardArg, SchedulerArg};
use deradiff_rewards::Reward;
use deradiff_sd::{check_dtype_supported, parse_device, parse_dtype, LoadOptions};
use deradiff_tune::{
    agreement, equivalent_beta, optimize, pair_rows, plot, read_results, run_sweep, Acquisition, AgreementConfig,
    AnalyticModel, AnalyticReward, AnalyticSetup, BoConfig, BoEvaluation, IfExists, ManifoldPenalty, PairBy, Prompt,
    Realignment, SdModel, SdSetup, SweepConfig, SweepEvent, SweepModel, SweepObjective, SweepOutput, TrueReward,
    MAX_PROMPTS,
};

/// The model and rewards shared by `sweep` and `tune`: the analytic testbed by default, Stable
/// Diffusion when `--reference` is given.
#[derive(Debug, clap::Args)]
pub struct TestbedArgs {
    /// Stable Diffusion: the reference checkpoint (diffusers layout). Without it the analytic
    /// testbed is used.
    #[arg(long, requires = "aligned", help_heading = "Stable Diffusion")]
    reference: Option<PathBuf>,
    /// Stable Diffusion: the aligned model: a UNet (pipeline dir, unet/ dir or .safetensors file)
    /// or a LoRA adapter (file or folder; diffusers, peft or kohya layout).
    #[arg(long, requires = "reference", help_heading = "Stable Diffusion")]
    aligned: Option<PathBuf>,
    /// Stable Diffusion: a prompt (repeatable).
    #[arg(long, help_heading = "Stable Diffusion")]
    prompt: Vec<String>,
    /// Stable Diffusion: a prompt file: plain text (one per line), JSON lines, CSV (a header row;
    /// see --prompt-column) or YAML (a list, a `prompts:` list, or lists by category).
    #[arg(long, help_heading = "Stable Diffusion")]
    prompts_file: Option<PathBuf>,
    /// Stable Diffusion: the field / CSV column holding the prompt (default: prompt, caption or
    /// text, the first present).
    #[arg(long, help_heading = "Stable Diffusion", requires = "prompts_file")]
    prompt_column: Option<String>,
    #[command(flatten)]
    rewards: RewardArgs,
    /// Stable Diffusion: guidance scale.
    #[arg(long, default_value_t = 7.5, allow_negative_numbers = true, help_heading = "Stable Diffusion")]
    guidance: f64,
    /// Stable Diffusion: how λ realigns: `posterior` (DeRaDiff's posterior fusion) or `weights`
    /// (the weight-space baseline: the aligned LoRA merged at λ; needs a LoRA --aligned).
    #[arg(long, value_enum, default_value = "posterior", help_heading = "Stable Diffusion")]
    realign: crate::sample::RealignArg,
    /// Stable Diffusion: multiplier of a LoRA --aligned (aligned = base + m · scale · up · down).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true, help_heading = "Stable Diffusion")]
    lora_scale: f64,
    /// Stable Diffusion: run the reference and a LoRA --aligned model in a UNet call each per
    /// step (weights still shared) instead of one joint call: a lower peak memory, same rows.
    #[arg(long, help_heading = "Stable Diffusion")]
    separate_passes: bool,
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
    /// the prompt text, which must be unique). Ignored with --seeds.
    #[arg(long = "prompt-seed", default_value_t = 0)]
    prompt_seed: u64,
    /// Several seeds per prompt, one row per (λ, prompt, seed): a range `A..B` (B excluded, e.g.
    /// 0..4) or a list `0,7,9`.
    #[arg(long)]
    seeds: Option<String>,
}

/// `--seeds`: `A..B` (B excluded) or a comma-separated list; at most MAX_PROMPTS seeds.
fn parse_seeds(text: &str) -> Result<Vec<u64>> {
    let bad = || CliError::usage(format!("--seeds {text}: expected a range A..B (e.g. 0..4) or a list 0,7,9"));
    let seeds: Vec<u64> = if let Some((a, b)) = text.split_once("..") {
        let (a, b): (u64, u64) = (a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?);
        if b <= a {
            return Err(CliError::usage(format!("--seeds {text}: the range is empty (B must exceed A)")));
        }
        if b - a > MAX_PROMPTS as u64 {
            return Err(CliError::usage(format!("--seeds {text}: at most {MAX_PROMPTS} seeds")));
        }
        (a..b).collect()
    } else {
        text.split(',').map(|t| t.trim().parse::<u64>().map_err(|_| bad())).collect::<Result<_>>()?
    };
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = seeds.iter().find(|s| !seen.insert(**s)) {
        return Err(CliError::usage(format!("--seeds {text}: seed {dup} appears twice")));
    }
    Ok(seeds)
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
    fn build(&self) -> Result<Built> {
        if self.steps == 0 {
            return Err(CliError::usage("--steps must be at least 1"));
        }
        if self.samples == Some(0) {
            return Err(CliError::usage("--samples must be at least 1"));
        }
        match (&self.reference, &self.aligned) {
            (Some(reference), Some(aligned)) => self.build_sd(reference, aligned),
            _ => {
                let reward_flag = self.rewards.given().first().copied();
                for (flag, given) in [
                    ("--prompt", !self.prompt.is_empty()),
                    ("--prompts-file", self.prompts_file.is_some()),
                    (reward_flag.unwrap_or_default(), reward_flag.is_some()),
                    ("--realign weights", self.realign == crate::sample::RealignArg::Weights),
                    ("--lora-scale", self.lora_scale != 1.0),
                    ("--separate-passes", self.separate_passes),
                ] {
                    if given {
                        return Err(CliError::usage(format!(
                            "{flag} applies to Stable Diffusion sweeps: give --reference and --aligned"
                        )));
                    }
                }
                let (model, proxy, truth) = self.build_analytic()?;
                let mut prompts = Prompt::seeds(0..self.prompts);
                if let Some(seeds) = &self.seeds {
                    prompts = Prompt::with_seeds(&prompts, &parse_seeds(seeds)?);
                }
                Ok(Built {
                    model: Box::new(model),
                    rewards: vec![Box::new(truth), Box::new(proxy)],
                    prompts,
                    samples: self.samples.unwrap_or(256),
                    anchor_beta: Some(self.anchor_beta),
                })
            }
        }
    }

    fn build_sd(&self, reference: &Path, aligned: &Path) -> Result<Built> {
        let mut entries: Vec<(String, String)> = self.prompt.iter().map(|t| (t.clone(), t.clone())).collect();
        if let Some(file) = &self.prompts_file {
            let read = deradiff_tune::read_prompt_file(file, self.prompt_column.as_deref())
                .with_context(|| format!("cannot read --prompts-file {}", file.display()))?;
            entries.extend(read.into_iter().map(|e| (e.id, e.text)));
        }
        if entries.is_empty() {
            return Err(CliError::usage(
                "give prompts for a Stable Diffusion sweep: --prompt \"…\" or --prompts-file FILE (with at least one \
                 non-blank line)",
            ));
        }
        let mut prompts: Vec<Prompt> = entries
            .iter()
            .enumerate()
            .map(|(i, (id, t))| Prompt::text(id.clone(), t.clone(), self.prompt_seed.wrapping_add(i as u64)))
            .collect();
        if let Some(seeds) = &self.seeds {
            prompts = Prompt::with_seeds(&prompts, &parse_seeds(seeds)?);
        }
        let dtype = parse_dtype(&self.dtype).usage_context(format!("--dtype {} is not a usable dtype", self.dtype))?;
        let device =
            parse_device(&self.device).usage_context(format!("--device {} is not a usable device", self.device))?;
        check_dtype_supported(dtype, &device)
            .usage_context(format!("--dtype {} cannot run on --device {}", self.dtype, self.device))?;
        if self.rewards.given().is_empty() {
            return Err(CliError::usage(format!("give a reward for a Stable Diffusion sweep: {GIVE_A_REWARD}")));
        }
        let scheduler = self.scheduler.kind(self.eta)?;
        check_reference_layout(reference)?;
        check_aligned_family(reference, &[aligned.to_path_buf()])?;
        let rewards: Vec<Box<dyn Reward>> =
            self.rewards.load(DType::F32, &device)?.into_iter().map(|r| -> Box<dyn Reward> { r }).collect();
        if !self.lora_scale.is_finite() {
            return Err(CliError::usage(format!("--lora-scale is {}; it must be a finite number", self.lora_scale)));
        }
        let mut setup = SdSetup::new(reference, aligned);
        setup.load = LoadOptions { dtype, device, lora_multiplier: self.lora_scale, joint_pass: !self.separate_passes };
        setup.realign = match self.realign {
            crate::sample::RealignArg::Posterior => Realignment::Posterior,
            crate::sample::RealignArg::Weights => Realignment::Weights,
        };
        setup.scheduler = scheduler;
        setup.steps = self.steps;
        setup.guidance_scale = self.guidance;
        let model = SdModel::load(setup).with_context(|| {
            format!("cannot load --reference {} with --aligned {}", reference.display(), aligned.display())
        })?;
        Ok(Built { model: Box::new(model), rewards, prompts, samples: self.samples.unwrap_or(2), anchor_beta: None })
    }

    /// The model, the proxy reward and the true reward.
    fn build_analytic(&self) -> Result<(AnalyticModel, AnalyticReward, TrueReward)> {
        if !(self.anchor_beta > 0.0 && self.anchor_beta.is_finite()) {
            return Err(CliError::usage(format!(
                "--anchor-beta is {}; it must be a positive finite number",
                self.anchor_beta
            )));
        }
        if self.prompts == 0 {
            return Err(CliError::usage("--prompts must be at least 1"));
        }
        if self.prompts > MAX_PROMPTS as u64 {
            return Err(CliError::usage(format!(
                "--prompts {} is more than {MAX_PROMPTS}, the most one sweep takes",
                self.prompts
            )));
        }
        let mixture = demo_mixture(self.components).usage_context(format!("--components {}", self.components))?;
        let proxy = match self.reward {
            RewardArg::Linear => demo_linear_reward(),
            RewardArg::Quadratic => demo_quadratic_reward(),
        };
        let scheduler = self.scheduler.kind(self.eta)?;
        let mut setup = AnalyticSetup::new(mixture.clone(), proxy.clone(), self.anchor_beta);
        setup.scheduler = scheduler;
        setup.steps = self.steps;
        setup.training = Some(default_training(scheduler));
        let model = AnalyticModel::new(setup).usage_context("the analytic testbed's options do not fit together")?;
        let truth = TrueReward::new("true", proxy.clone(), ManifoldPenalty::ReferenceLogDensity(mixture), self.penalty)
            .usage_context(format!("--penalty {}", self.penalty))?;
        Ok((model, AnalyticReward::new("proxy", proxy), truth))
    }
}

/// Options of `deradiff sweep`.
#[derive(Debug, clap::Args)]
pub struct SweepArgs {
    #[command(flatten)]
    testbed: TestbedArgs,
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
    /// sweep.shard-K-of-N.jsonl / .csv, joined by `deradiff merge`).
    #[arg(long, default_value = "deradiff-out/sweep")]
    out: PathBuf,
    /// Compute only shard K of N (work items i with i mod N = K; see docs/cluster.md). Without
    /// it, Slurm job arrays (SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_COUNT) and Kubernetes Indexed
    /// Jobs (JOB_COMPLETION_INDEX with --shards) give the shard.
    #[arg(long, value_name = "K/N")]
    shard: Option<String>,
    /// The number of shards, for a Kubernetes Indexed Job (JOB_COMPLETION_INDEX gives K).
    #[arg(long, value_name = "N")]
    shards: Option<usize>,
    /// Prompts whose λ values share one batch (default 1): fewer, larger model calls, the same
    /// rows.
    #[arg(long, default_value_t = 1)]
    prompts_per_batch: usize,
    /// No progress bar and no "wrote …" line after the table.
    #[arg(long, short)]
    quiet: bool,
}

fn parse_range(text: &str) -> Result<Vec<f64>> {
    let bad = || CliError::usage(format!("--lambda-range {text}: expected FROM:TO:COUNT, e.g. 0:2:9"));
    let parts: Vec<&str> = text.split(':').collect();
    let [from, to, count] = parts.as_slice() else { return Err(bad()) };
    let from: f64 = from.trim().parse().map_err(|_| bad())?;
    let to: f64 = to.trim().parse().map_err(|_| bad())?;
    let count: usize = count.trim().parse().map_err(|_| bad())?;
    if from > to {
        return Err(CliError::usage(format!("--lambda-range {text}: the range is reversed ({from} > {to})")));
    }
    deradiff_tune::linspace(from, to, count).usage_context(format!("--lambda-range {text}"))
}

/// Runs `deradiff sweep`.
pub fn sweep(args: SweepArgs) -> Result<()> {
    let lambdas = match (&args.lambdas, &args.lambda_range) {
        (Some(l), _) => l.clone(),
        (None, Some(r)) => parse_range(r)?,
        (None, None) => parse_range("0:2:9")?,
    };
    check_out_dir("--out", &args.out)?;
    let shard = crate::shards::shard_of(args.shard.as_deref(), args.shards).map_err(CliError::usage)?;
    if args.prompts_per_batch == 0 {
        return Err(CliError::usage("--prompts-per-batch must be at least 1"));
    }
    let built = args.testbed.build()?;
    let (jsonl, csv) = crate::shards::shard_files(&args.out, shard);
    let mut output = SweepOutput::jsonl(jsonl).with_csv(csv);
    output.if_exists = if args.overwrite { IfExists::Overwrite } else { IfExists::Resume };
    let mut config = SweepConfig::new(lambdas, built.prompts.clone(), built.samples);
    config.output = Some(output);
    config.shard = shard;
    config.prompts_per_batch = args.prompts_per_batch;
    config.validate().usage_context("the sweep's options do not fit together")?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create --out {}", args.out.display()))?;
    let progress = progress_bar(args.quiet, "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} rows  {msg}")?;
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
    let result = run_sweep(built.model.as_ref(), &rewards, &config, &mut observer).context("the sweep failed")?;
    progress.finish_and_clear();
    if let Some(s) = shard {
        // A shard's rows are part of a curve: the table and the figure come with the merge.
        let (jsonl, _) = crate::shards::shard_files(&args.out, shard);
        let mut text = format!(
            "shard {s}: {} of the sweep's {} work items ({} rows computed, {} resumed)\n",
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
        return print_stdout(&text);
    }
    let names: Vec<String> = rewards.iter().map(|r| r.name()).collect();
    let curves = names.iter().map(|n| result.summaries(n)).collect::<Result<Vec<_>, _>>()?;
    let png = plot::reward_vs_lambda_png(&curves[0], &names[0], 1.96, "Mean reward vs λ")
        .context("cannot plot reward_vs_lambda.png")?;
    let path = args.out.join("reward_vs_lambda.png");
    plot::write_png(&path, &png).with_context(|| format!("cannot write {}", path.display()))?;
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
            // λ = 0 is the reference (β = ∞); a negative λ emulates no KL strength.
            Some(b) => match equivalent_beta(b, s0.lambda) {
                Ok(beta) if beta.is_finite() => format!("{beta:.4}"),
                Ok(_) => "∞".into(),
                Err(_) if s0.lambda == 0.0 => "∞".into(),
                Err(_) => "—".into(),
            },
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
    if !args.quiet {
        text.push_str(&format!("wrote {}/{{sweep.jsonl, sweep.csv, reward_vs_lambda.png}}\n", args.out.display()));
    }
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
    /// No per-evaluation progress lines and no "wrote …" line after the result.
    #[arg(long, short)]
    quiet: bool,
}

/// Runs `deradiff tune`.
pub fn tune(args: TuneArgs) -> Result<()> {
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
    check_out_dir("--out", &args.out)?;
    let built = args.testbed.build()?;
    // The objective is the first reward: the true reward on the testbed, else --clip, else
    // --pickscore, else --hps, else --aesthetic, else --image-reward.
    let reward = built.rewards[0].as_ref();
    let mut objective = SweepObjective::new(built.model.as_ref(), reward, built.prompts.clone(), built.samples)
        .usage_context("the tuning objective's options do not fit together")?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create --out {}", args.out.display()))?;
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
    let json = result.to_json()?;
    let path = args.out.join("bo.json");
    deradiff_analytic::write_atomic(&path, json.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    let title = format!("Bayesian optimisation of λ ({})", reward.name());
    let png = plot::bo_trace_png(&result, None, &title).context("cannot plot bo_trace.png")?;
    let path = args.out.join("bo_trace.png");
    plot::write_png(&path, &png).with_context(|| format!("cannot write {}", path.display()))?;
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
    /// No "wrote …" line after the table.
    #[arg(long, short)]
    quiet: bool,
}

fn read(path: &Path) -> Result<Vec<deradiff_tune::SweepRow>> {
    Ok(read_results(path).with_context(|| format!("cannot read the results file {}", path.display()))?.rows)
}

/// Runs `deradiff compare`.
pub fn compare(args: CompareArgs) -> Result<()> {
    let by = match args.by.as_str() {
        "lambda-prompt" => PairBy::LambdaAndPrompt,
        "prompt" => PairBy::Prompt,
        other => return Err(CliError::usage(format!("--by '{other}' is not one of 'lambda-prompt', 'prompt'"))),
    };
    check_out_dir("--out", &args.out)?;
    let pairs = pair_rows(&read(&args.original)?, &read(&args.approx)?, &args.reward, by).with_context(|| {
        format!("cannot pair the rows of {} and {}", args.original.display(), args.approx.display())
    })?;
    let config = AgreementConfig { bootstrap: args.bootstrap, seed: args.seed, ..AgreementConfig::default() };
    let stats = agreement(&pairs.original, &pairs.approx, &config).context("cannot compute the agreement")?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create --out {}", args.out.display()))?;
    let json = serde_json::to_string_pretty(&stats)?;
    let path = args.out.join("agreement.json");
    deradiff_analytic::write_atomic(&path, json.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    let title = format!("{} vs {}", args.approx.display(), args.original.display());
    let png = plot::bland_altman_png(&pairs.original, &pairs.approx, &stats, &title)
        .context("cannot plot bland_altman.png")?;
    let path = args.out.join("bland_altman.png");
    plot::write_png(&path, &png).with_context(|| format!("cannot write {}", path.display()))?;
    let png = plot::abs_error_ecdf_png(&pairs.original, &pairs.approx, &stats, &title)
        .context("cannot plot abs_error_ecdf.png")?;
    let path = args.out.join("abs_error_ecdf.png");
    plot::write_png(&path, &png).with_context(|| format!("cannot write {}", path.display()))?;
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
    if !args.quiet {
        text.push_str(&format!(
            "\nwrote {}/{{agreement.json, bland_altman.png, abs_error_ecdf.png}}\n",
            args.out.display()
        ));
    }
    print_stdout(&text)
}
