//! The realignment study: the paper's Table 2 with exact targets.
//!
//! For an anchor β_a and target βs, with λ = β_a / β_target, the study samples, from the same
//! noise (same seed) and with the same scheduler and steps:
//!
//! * the exact model aligned at β_target ("target model": what the paper trains from scratch),
//! * DeRaDiff: [`Realigner::two_model`]`(λ)` over the exact reference and exact anchor models,
//!
//! and reports the exact mean reward of the target distribution, the sampled mean rewards of
//! both, their absolute difference in percent, the mean distance between coupled samples, and
//! the energy distance between the two sample sets. Because the target model is exact, the only
//! difference left between it and DeRaDiff is DeRaDiff's own stepwise approximation (paper
//! eq. 5); the difference between the target model and the exact mean is the sampler's
//! discretisation plus Monte-Carlo error.

use std::fmt;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use deradiff_core::{
    Denoiser, Flow, Observer, Realigner, Sampler, Scheduler, SchedulerConfig, SchedulerKind, SeededNoise, StepEvent,
    TimestepSpacing, TrainingConfig,
};
use serde::{Deserialize, Serialize};

use crate::denoiser::ExactDenoiser;
use crate::error::{Error, Result};
use crate::io::write_atomic;
use crate::metrics::{coupled_distance, energy_distance_flat, mean_reward, rows_of, ENERGY_DISTANCE_MAX_ROWS};
use crate::mixture::{check_beta, GaussianMixture};
use crate::reward::Reward;

/// Everything a study run needs. Build it with [`StudyConfig::new`] and adjust the public fields.
#[derive(Debug, Clone)]
pub struct StudyConfig {
    /// The reference data distribution.
    pub mixture: GaussianMixture,
    /// The reward the models are aligned to.
    pub reward: Reward,
    /// β of the one aligned model DeRaDiff gets (finite, > 0).
    pub anchor_beta: f64,
    /// The βs to emulate (> 0; `+∞` is the reference itself, λ = 0).
    pub target_betas: Vec<f64>,
    /// The sampler (DDPM, DDIM with η, Euler ancestral, Euler, Heun, DPM-Solver++, UniPC, LCM).
    pub scheduler: SchedulerKind,
    /// The sampler's options as diffusers names them (`use_karras_sigmas`, `solver_order`,
    /// `algorithm_type`, …); the training-schedule fields here are replaced by
    /// [`StudyConfig::training`]'s. Empty by default: the class's own defaults.
    pub scheduler_options: SchedulerConfig,
    /// Number of inference steps (≥ 1).
    pub steps: usize,
    /// Number of samples per run (≥ 1), all sampled in one `[n, d]` tensor.
    pub samples: usize,
    /// Seed of the noise: every run of the study uses the same noise (coupled samples).
    pub seed: u64,
    /// The training schedule of the exact models and the scheduler; `None` takes diffusers'
    /// default (T = 1000, linear betas 1e-4 → 0.02, ε-prediction) with the sampler's default
    /// timestep spacing (leading for DDPM and DDIM, linspace for Euler ancestral).
    pub training: Option<TrainingConfig>,
}

impl StudyConfig {
    /// A study of `mixture` and `reward` with an anchor β and target βs, and defaults for the
    /// rest: DDPM, 50 steps, 2000 samples, seed 0, diffusers' default training schedule.
    pub fn new(mixture: GaussianMixture, reward: Reward, anchor_beta: f64, target_betas: Vec<f64>) -> Self {
        Self {
            mixture,
            reward,
            anchor_beta,
            target_betas,
            scheduler: SchedulerKind::Ddpm,
            scheduler_options: SchedulerConfig::default(),
            steps: 50,
            samples: 2000,
            seed: 0,
            training: None,
        }
    }

    /// Checks every field; the study calls it before sampling anything.
    pub fn validate(&self) -> Result<()> {
        self.reward.check_dim(self.mixture.dim())?;
        if !(self.anchor_beta > 0.0 && self.anchor_beta.is_finite()) {
            return Err(Error::InvalidBeta(format!(
                "the anchor β is {}; it must be a positive finite number",
                self.anchor_beta
            )));
        }
        if self.target_betas.is_empty() {
            return Err(Error::InvalidArgument("no target βs: give at least one".into()));
        }
        for (i, &b) in self.target_betas.iter().enumerate() {
            check_beta(b).map_err(|_| {
                Error::InvalidBeta(format!(
                    "target β #{} is {b} (λ = β_anchor / β_target = {}); every target β must be positive",
                    i + 1,
                    self.anchor_beta / b
                ))
            })?;
        }
        if self.steps == 0 {
            return Err(Error::InvalidArgument("the number of steps must be at least 1".into()));
        }
        if self.samples == 0 {
            return Err(Error::InvalidArgument("the number of samples must be at least 1".into()));
        }
        if let SchedulerKind::Ddim { eta } = self.scheduler {
            if !(0.0..=1.0).contains(&eta) {
                return Err(Error::InvalidArgument(format!("DDIM η must lie in [0, 1], got {eta}")));
            }
        }
        Ok(())
    }

    /// λ = β_anchor / β_target for every target (0 for β_target = +∞).
    pub fn lambdas(&self) -> Vec<f64> {
        self.target_betas.iter().map(|b| self.anchor_beta / b).collect()
    }

    /// The training schedule in force (see [`StudyConfig::training`]).
    pub fn training_config(&self) -> TrainingConfig {
        self.training.clone().unwrap_or_else(|| default_training(self.scheduler))
    }

    /// The scheduler of the study, with `clip_sample` off (clipping x̂₀ to [−1, 1] would make
    /// the exact models inexact for data outside that box).
    pub fn build_scheduler(&self) -> Result<Box<dyn Scheduler>> {
        build_scheduler_with(self.scheduler, &self.training_config(), &self.scheduler_options, self.steps)
    }
}

/// diffusers' default training schedule with the sampler's default spacing (`leading` for
/// DDPM, DDIM and LCM, `linspace` for the others).
pub fn default_training(kind: SchedulerKind) -> TrainingConfig {
    let spacing = match kind {
        SchedulerKind::Ddpm | SchedulerKind::Ddim { .. } | SchedulerKind::Lcm => TimestepSpacing::Leading,
        _ => TimestepSpacing::Linspace,
    };
    TrainingConfig::diffusers_default(spacing)
}

/// Builds a sampler for the exact models with the class's default options: DDPM with
/// `fixed_small` variance, DDIM with the given η and `set_alpha_to_one`, …; `clip_sample` off.
pub fn build_scheduler(kind: SchedulerKind, training: &TrainingConfig, steps: usize) -> Result<Box<dyn Scheduler>> {
    build_scheduler_with(kind, training, &SchedulerConfig::default(), steps)
}

/// [`build_scheduler`] with the sampler's options (diffusers' names in a [`SchedulerConfig`]);
/// the training schedule is `training`'s and `clip_sample` is off (clipping x̂₀ to [−1, 1] would
/// make the exact models inexact for data outside that box).
pub fn build_scheduler_with(
    kind: SchedulerKind,
    training: &TrainingConfig,
    options: &SchedulerConfig,
    steps: usize,
) -> Result<Box<dyn Scheduler>> {
    let mut config = options.clone();
    config.set_training(training);
    config.clip_sample = Some(false);
    Ok(kind.build(&config, steps)?)
}

/// A short name of a sampler: `ddpm`, `ddim(eta=0)`, `euler-a`, `euler`, `dpm++`, ….
pub fn scheduler_name(kind: SchedulerKind) -> String {
    match kind {
        SchedulerKind::Ddim { eta } => format!("ddim(eta={eta})"),
        other => other.short_name().into(),
    }
}

/// The options set in `options`, as ` (key value, …)` with diffusers' names (empty if none).
fn describe_options(options: &SchedulerConfig) -> String {
    let Ok(serde_json::Value::Object(map)) = serde_json::to_value(options) else {
        return String::new();
    };
    if map.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = map.iter().map(|(k, v)| format!("{k} {v}")).collect();
    format!(" ({})", parts.join(", "))
}

/// One row of the study table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudyRow {
    /// β of the target model (`null` in JSON for +∞, the reference).
    pub target_beta: f64,
    /// λ = β_anchor / β_target.
    pub lambda: f64,
    /// The exact mean reward of the target distribution `p_ref · exp(r/β_target)`.
    pub exact_mean_reward: f64,
    /// The mean reward of samples of the exact target model (same scheduler, steps, noise).
    pub target_model_mean_reward: f64,
    /// The mean reward of DeRaDiff's samples.
    pub deradiff_mean_reward: f64,
    /// `100 · |DeRaDiff − target model| / |target model|` (`None` where the target model's mean
    /// reward is 0).
    pub abs_diff_pct: Option<f64>,
    /// Mean distance between DeRaDiff's and the target model's coupled samples (same noise).
    pub coupled_distance: f64,
    /// Energy distance between DeRaDiff's and the target model's sample sets (see
    /// [`crate::energy_distance`]), on their first
    /// [`crate::metrics::ENERGY_DISTANCE_MAX_ROWS`] rows.
    pub energy_distance: f64,
}

/// The study's numbers: settings and one [`StudyRow`] per target β.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudyResult {
    /// Sampler name (`ddpm`, `ddim(eta=…)`, `euler-a`).
    pub scheduler: String,
    /// What the models predict (`epsilon`, `v_prediction`, `sample`).
    pub prediction_type: String,
    /// Inference steps.
    pub steps: usize,
    /// Samples per run.
    pub samples: usize,
    /// Noise seed.
    pub seed: u64,
    /// Number of mixture components.
    pub components: usize,
    /// Data dimension.
    pub dim: usize,
    /// The reward's formula.
    pub reward: String,
    /// β of the anchor model.
    pub anchor_beta: f64,
    /// Exact mean reward of the reference distribution.
    pub reference_exact_mean_reward: f64,
    /// Mean reward of samples of the exact reference model.
    pub reference_model_mean_reward: f64,
    /// Exact mean reward of the anchor distribution.
    pub anchor_exact_mean_reward: f64,
    /// Mean reward of samples of the exact anchor model.
    pub anchor_model_mean_reward: f64,
    /// One row per target β, in the order given.
    pub rows: Vec<StudyRow>,
}

/// The samples behind a study (all `[n, d]`, f64, CPU), for pictures.
#[derive(Debug, Clone)]
pub struct StudySamples {
    /// The exact reference model's samples.
    pub reference: Tensor,
    /// The exact anchor model's samples.
    pub anchor: Tensor,
    /// DeRaDiff's samples, one tensor per target β.
    pub deradiff: Vec<Tensor>,
    /// The exact target models' samples, one tensor per target β.
    pub target: Vec<Tensor>,
}

/// What [`run_study`] returns: the configuration, the numbers and the samples.
#[derive(Debug, Clone)]
pub struct StudyOutput {
    /// The configuration that was run.
    pub config: StudyConfig,
    /// The table.
    pub result: StudyResult,
    /// The samples.
    pub samples: StudySamples,
}

/// Progress of a study: `done` of `total` sampling steps, in the run named by `stage`.
#[derive(Debug, Clone, Copy)]
pub struct StudyProgress<'a> {
    /// Sampling steps done so far (over all runs).
    pub done: u64,
    /// Sampling steps in the whole study.
    pub total: u64,
    /// The run in progress (e.g. `DeRaDiff λ=2`).
    pub stage: &'a str,
}

struct ProgressObserver<'a> {
    done: &'a mut u64,
    total: u64,
    stage: &'a str,
    callback: &'a mut dyn FnMut(StudyProgress<'_>),
}

impl Observer for ProgressObserver<'_> {
    fn on_step(&mut self, _event: &StepEvent<'_>) -> deradiff_core::Result<Flow> {
        *self.done += 1;
        (self.callback)(StudyProgress { done: *self.done, total: self.total, stage: self.stage });
        Ok(Flow::Continue)
    }
}

/// Runs the study (see the module docs).
pub fn run_study(config: &StudyConfig) -> Result<StudyOutput> {
    run_study_with_progress(config, &mut |_| {})
}

/// Runs the study, calling `progress` after every sampling step.
pub fn run_study_with_progress(
    config: &StudyConfig,
    progress: &mut dyn FnMut(StudyProgress<'_>),
) -> Result<StudyOutput> {
    config.validate()?;
    let training = config.training_config();
    let scheduler = config.build_scheduler()?;
    let (mixture, reward) = (&config.mixture, &config.reward);
    let reference = ExactDenoiser::from_training(mixture.clone(), &training)?;
    let anchor = ExactDenoiser::from_training(mixture.tilt(reward, config.anchor_beta)?, &training)?;
    let shape = [config.samples, mixture.dim()];
    let runs = 2 + 2 * config.target_betas.len() as u64;
    let total = runs * config.steps as u64;
    let mut done = 0u64;

    let mut sample = |denoisers: Vec<&dyn Denoiser>, realigner: Realigner, stage: &str| -> Result<Tensor> {
        let sampler = Sampler::new(scheduler.as_ref(), denoisers, realigner)?;
        let mut observer = ProgressObserver { done: &mut done, total, stage, callback: &mut *progress };
        let mut noise = SeededNoise::new(config.seed);
        Ok(sampler.run(&shape, DType::F64, &Device::Cpu, &mut noise, &mut observer)?.latent)
    };

    let single = Realigner::new(vec![1.0])?;
    let reference_samples = sample(vec![&reference], single.clone(), "reference model")?;
    let anchor_samples = sample(vec![&anchor], single.clone(), "anchor model")?;

    let mut rows = Vec::with_capacity(config.target_betas.len());
    let mut deradiff_all = Vec::with_capacity(config.target_betas.len());
    let mut target_all = Vec::with_capacity(config.target_betas.len());
    for (&beta, lambda) in config.target_betas.iter().zip(config.lambdas()) {
        let target_mixture = mixture.tilt(reward, beta)?;
        let exact_mean_reward = reward.exact_mean(&target_mixture)?;
        let target = ExactDenoiser::from_training(target_mixture, &training)?;
        let target_samples = sample(vec![&target], single.clone(), &format!("target model β={beta}"))?;
        let deradiff_samples =
            sample(vec![&reference, &anchor], Realigner::two_model(lambda)?, &format!("DeRaDiff λ={lambda:.3}"))?;
        let target_model_mean_reward = mean_reward(reward, &target_samples)?;
        let deradiff_mean_reward = mean_reward(reward, &deradiff_samples)?;
        let abs_diff_pct = (target_model_mean_reward != 0.0)
            .then(|| 100.0 * (deradiff_mean_reward - target_model_mean_reward).abs() / target_model_mean_reward.abs());
        let (xa, _, d) = rows_of(&deradiff_samples, "DeRaDiff samples")?;
        let (xb, _, _) = rows_of(&target_samples, "target samples")?;
        let cap = ENERGY_DISTANCE_MAX_ROWS.min(config.samples) * d;
        rows.push(StudyRow {
            target_beta: beta,
            lambda,
            exact_mean_reward,
            target_model_mean_reward,
            deradiff_mean_reward,
            abs_diff_pct,
            coupled_distance: coupled_distance(&deradiff_samples, &target_samples)?,
            energy_distance: energy_distance_flat(&xa[..cap], &xb[..cap], d),
        });
        deradiff_all.push(deradiff_samples);
        target_all.push(target_samples);
    }

    let result = StudyResult {
        scheduler: format!("{}{}", scheduler_name(config.scheduler), describe_options(&config.scheduler_options)),
        prediction_type: training.prediction_type.name().to_string(),
        steps: config.steps,
        samples: config.samples,
        seed: config.seed,
        components: mixture.num_components(),
        dim: mixture.dim(),
        reward: reward.describe(),
        anchor_beta: config.anchor_beta,
        reference_exact_mean_reward: reward.exact_mean(mixture)?,
        reference_model_mean_reward: mean_reward(reward, &reference_samples)?,
        anchor_exact_mean_reward: reward.exact_mean(anchor.mixture())?,
        anchor_model_mean_reward: mean_reward(reward, &anchor_samples)?,
        rows,
    };
    let samples = StudySamples {
        reference: reference_samples,
        anchor: anchor_samples,
        deradiff: deradiff_all,
        target: target_all,
    };
    Ok(StudyOutput { config: config.clone(), result, samples })
}

fn fmt_beta(b: f64) -> String {
    if b == f64::INFINITY {
        "inf".into()
    } else {
        format!("{b}")
    }
}

impl StudyResult {
    /// The table as CSV, one header line and one line per target β (`inf` for β = +∞, empty
    /// for an undefined percentage).
    pub fn to_csv(&self) -> String {
        let mut s = String::from(
            "target_beta,lambda,exact_mean_reward,target_model_mean_reward,deradiff_mean_reward,\
             abs_diff_pct,coupled_distance,energy_distance\n",
        );
        for r in &self.rows {
            s.push_str(&format!(
                "{},{},{},{},{},{},{},{}\n",
                fmt_beta(r.target_beta),
                r.lambda,
                r.exact_mean_reward,
                r.target_model_mean_reward,
                r.deradiff_mean_reward,
                r.abs_diff_pct.map(|p| p.to_string()).unwrap_or_default(),
                r.coupled_distance,
                r.energy_distance
            ));
        }
        s
    }

    /// The result as pretty-printed JSON (an infinite β is written as `null`).
    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(self)?)
    }

    /// Writes [`StudyResult::to_csv`] to `path`, atomically.
    pub fn write_csv(&self, path: impl AsRef<Path>) -> Result<()> {
        write_atomic(path, self.to_csv().as_bytes())
    }

    /// Writes [`StudyResult::to_json`] to `path`, atomically.
    pub fn write_json(&self, path: impl AsRef<Path>) -> Result<()> {
        let mut json = self.to_json()?;
        json.push('\n');
        write_atomic(path, json.as_bytes())
    }
}

impl fmt::Display for StudyResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "DeRaDiff vs exact aligned models: {}-component {}-D Gaussian mixture, {}",
            self.components, self.dim, self.reward
        )?;
        writeln!(
            f,
            "scheduler {}, {} steps, {} prediction, {} samples, seed {}; anchor β = {}",
            self.scheduler, self.steps, self.prediction_type, self.samples, self.seed, self.anchor_beta
        )?;
        writeln!(
            f,
            "exact E[r]: reference {:.4}, anchor {:.4}   (sampled: {:.4}, {:.4})",
            self.reference_exact_mean_reward,
            self.anchor_exact_mean_reward,
            self.reference_model_mean_reward,
            self.anchor_model_mean_reward
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "{:>9} {:>7} {:>11} {:>13} {:>13} {:>8} {:>11} {:>11}",
            "β target", "λ", "exact E[r]", "target model", "DeRaDiff", "|Δ| %", "coupled", "energy"
        )?;
        writeln!(
            f,
            "{:>9} {:>7} {:>11} {:>13} {:>13} {:>8} {:>11} {:>11}",
            "", "", "", "E[r]", "E[r]", "", "distance", "distance"
        )?;
        for r in &self.rows {
            let pct = r.abs_diff_pct.map(|p| format!("{p:.2}")).unwrap_or_else(|| "n/a".into());
            writeln!(
                f,
                "{:>9} {:>7.3} {:>11.4} {:>13.4} {:>13.4} {:>8} {:>11.2e} {:>11.2e}",
                fmt_beta(r.target_beta),
                r.lambda,
                r.exact_mean_reward,
                r.target_model_mean_reward,
                r.deradiff_mean_reward,
                pct,
                r.coupled_distance,
                r.energy_distance
            )?;
        }
        Ok(())
    }
}

/// The files [`StudyOutput::write_files`] writes, by name.
pub const STUDY_FILES: [&str; 4] = ["study.csv", "study.json", "samples.png", "reward_vs_lambda.png"];

impl StudyOutput {
    /// Writes `study.csv`, `study.json`, `samples.png` (2-D scatter; the first two coordinates
    /// when d > 2, skipped when d = 1) and `reward_vs_lambda.png` into `dir` (created if
    /// missing), each atomically; returns the paths written.
    pub fn write_files(&self, dir: impl AsRef<Path>) -> Result<Vec<PathBuf>> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.to_path_buf(), source })?;
        let mut written = Vec::new();
        let csv = dir.join(STUDY_FILES[0]);
        self.result.write_csv(&csv)?;
        written.push(csv);
        let json = dir.join(STUDY_FILES[1]);
        self.result.write_json(&json)?;
        written.push(json);
        if self.config.mixture.dim() >= 2 {
            let png = dir.join(STUDY_FILES[2]);
            write_atomic(&png, &crate::plot::samples_png(self)?)?;
            written.push(png);
        }
        let png = dir.join(STUDY_FILES[3]);
        write_atomic(&png, &crate::plot::reward_curve_png(self)?)?;
        written.push(png);
        Ok(written)
    }
}
