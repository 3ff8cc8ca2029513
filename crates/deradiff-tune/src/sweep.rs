//! Batched λ sweeps over a prompt set, streamed to JSONL (and CSV), resumable.
//!
//! For every prompt, the λ values of the grid that are not yet done share the batch dimension
//! ([`BatchedSampler`]): each model runs once per step for all of them. As soon as a batch
//! finishes, one [`SweepRow`] per (λ, prompt) is appended to the results file as a complete
//! JSON line and flushed to disk, then reported to the [`SweepObserver`].
//!
//! # Results file
//!
//! JSON lines: the first is a [`SweepHeader`] (model description, samples per prompt, reward
//! names), every other one a [`SweepRow`]; [`read_results`](crate::read_results) reads one back.
//!
//! # Resuming
//!
//! Rerunning a sweep on an existing file ([`IfExists::Resume`](crate::IfExists::Resume), the default) reads the rows
//! already there, checks the header matches this sweep, and computes only the missing
//! (λ, prompt) pairs: a sweep stopped part-way (an observer error, a kill, a crash) completes
//! with no duplicated or lost rows. A last line cut short by a crash (no final newline, not
//! valid JSON) is dropped and recomputed; any other line that is not a row is an error
//! ([`Error::MalformedResults`]). Because a λ's samples depend only on its prompt's seed (every
//! λ of a prompt gets the noise of an unbatched run with that seed), a resumed sweep writes the
//! very rows an uninterrupted one would. The CSV is rewritten from the JSONL when a sweep
//! starts, then appended to.

use std::collections::HashSet;
use std::path::Path;

use candle_core::Tensor;
use deradiff_core::{Realigner, SeededNoise};
use deradiff_rewards::{score_checked, Reward};
use serde::{Deserialize, Serialize};

use crate::batch::{BatchStep, BatchedSampler};
use crate::error::{Error, Result};
use crate::images::{sweep_image_name, IMAGES_DIR};
use crate::model::{check_prompts, Prompt, SweepModel};
use crate::results::{
    ResultsWriter, RewardSummary, SweepHeader, SweepOutput, SweepRow, RESULTS_FORMAT, RESULTS_VERSION,
};
use crate::spec::{prompts_hash, spec_hash, Shard, SweepSpec};

/// A λ sweep: a grid of λ evaluated on a prompt set.
#[derive(Debug, Clone)]
pub struct SweepConfig {
    /// The λ grid (finite, distinct; λ = 0 is the reference, 1 the anchor, > 1 extrapolates).
    pub lambdas: Vec<f64>,
    /// The prompts (unique ids).
    pub prompts: Vec<Prompt>,
    /// Samples per (λ, prompt) (≥ 1).
    pub samples_per_prompt: usize,
    /// The most λ values stacked in one batch (0: all of a prompt's missing λ at once).
    pub max_lambdas_per_batch: usize,
    /// Prompts whose λ groups share one batch (1, the default: one prompt per batch). More
    /// prompts per batch mean fewer, larger model calls; every row stays that of an unbatched
    /// run with the prompt's seed.
    pub prompts_per_batch: usize,
    /// Store every sample's score in the rows (for per-sample statistics later).
    pub keep_scores: bool,
    /// Where to write rows (`None`: in memory only).
    pub output: Option<SweepOutput>,
    /// Compute only this shard's work items (`None`: all of them); see [`Shard`].
    pub shard: Option<Shard>,
    /// Save each row's images as PNG files in the folder [`IMAGES_DIR`](crate::IMAGES_DIR)
    /// beside the results file, named by [`sweep_image_name`](crate::sweep_image_name) and
    /// listed in [`SweepRow::images`]: the very 8-bit images the rewards score. Needs an
    /// [`output`](Self::output) and a model that makes images
    /// ([`SweepModel::png_images`]); with it the sweep may have no reward at all.
    pub save_images: bool,
}

impl SweepConfig {
    /// A sweep of `lambdas` over `prompts` with `samples_per_prompt` samples each, all λ of a
    /// prompt in one batch, no per-sample scores, in memory.
    pub fn new(lambdas: Vec<f64>, prompts: Vec<Prompt>, samples_per_prompt: usize) -> Self {
        Self {
            lambdas,
            prompts,
            samples_per_prompt,
            max_lambdas_per_batch: 0,
            prompts_per_batch: 1,
            keep_scores: false,
            output: None,
            shard: None,
            save_images: false,
        }
    }

    /// The spec: the λ grid and the prompt entries that number the work items.
    pub fn spec(&self) -> SweepSpec {
        SweepSpec { lambdas: self.lambdas.clone(), prompts: self.prompts.clone() }
    }

    /// Checks the grid, the prompts and the sample count.
    pub fn validate(&self) -> Result<()> {
        check_lambdas(&self.lambdas)?;
        check_prompts(&self.prompts)?;
        if self.samples_per_prompt == 0 {
            return Err(Error::InvalidArgument("samples per prompt must be at least 1".into()));
        }
        if self.save_images && self.output.is_none() {
            return Err(Error::InvalidArgument(
                "save_images writes the images beside the results file: give the sweep an output".into(),
            ));
        }
        if self.samples_per_prompt > MAX_SAMPLES_PER_PROMPT {
            return Err(Error::InvalidArgument(format!(
                "{} samples per prompt: at most {MAX_SAMPLES_PER_PROMPT} are allowed; use more prompts or seeds instead",
                self.samples_per_prompt
            )));
        }
        check_sweep_size(self.lambdas.len(), self.prompts.len(), self.samples_per_prompt)
    }

    /// The most λ groups one batch of this sweep stacks: `max_lambdas_per_batch` (when set) or
    /// every λ of `prompts_per_batch` prompts (at most all of them).
    pub fn largest_batch(&self) -> usize {
        let prompts = self.prompts_per_batch.clamp(1, self.prompts.len().max(1));
        let all = prompts.saturating_mul(self.lambdas.len());
        if self.max_lambdas_per_batch > 0 {
            all.min(self.max_lambdas_per_batch)
        } else {
            all
        }
    }

    /// Errors (before anything is sampled or written) when the largest batch
    /// ([`SweepConfig::largest_batch`] groups of a model's latents `latent_shape` for the
    /// samples per prompt) would hold more than [`MAX_BATCH_ELEMENTS`] values.
    pub fn check_batch(&self, latent_shape: &[usize]) -> Result<()> {
        let groups = self.largest_batch();
        let elements = latent_shape.iter().try_fold(groups, |n, &d| n.checked_mul(d));
        if elements.is_none_or(|n| n > MAX_BATCH_ELEMENTS) {
            return Err(Error::InvalidArgument(format!(
                "a batch of {groups} λ groups × latents {latent_shape:?} holds more than {MAX_BATCH_ELEMENTS} values \
                 (MAX_BATCH_ELEMENTS); lower the samples per prompt or prompts_per_batch, or set \
                 max_lambdas_per_batch to fewer λ per batch"
            )));
        }
        Ok(())
    }

    /// Number of work items this run covers: (λ, prompt entry) pairs, of its shard only when
    /// sharded.
    pub fn total(&self) -> usize {
        match self.shard {
            None => self.lambdas.len() * self.prompts.len(),
            Some(s) => self.spec().shard_items(Some(s)).count(),
        }
    }
}

/// Most samples per (λ, prompt) a sweep takes.
pub const MAX_SAMPLES_PER_PROMPT: usize = 1_000_000;
/// Most work items — (λ, prompt entry) pairs, one row each — one sweep may have: 10⁷ (a results
/// file of a few GB). Split a larger sweep over several results files.
pub const MAX_WORK_ITEMS: usize = 10_000_000;
/// Most samples one sweep may draw in all (work items × samples per prompt): 10¹⁰.
pub const MAX_SWEEP_SAMPLES: u64 = 10_000_000_000;

/// Checks the products of a sweep's counts — `lambdas` λ × `prompts` prompt entries (prompts ×
/// seeds) at most [`MAX_WORK_ITEMS`], times `samples` per prompt at most [`MAX_SWEEP_SAMPLES`] —
/// without overflow.
pub fn check_sweep_size(lambdas: usize, prompts: usize, samples: usize) -> Result<()> {
    let items = lambdas.checked_mul(prompts).filter(|&n| n <= MAX_WORK_ITEMS);
    let Some(items) = items else {
        return Err(Error::InvalidArgument(format!(
            "{lambdas} λ × {prompts} prompt entries (prompts × seeds) is more than {MAX_WORK_ITEMS} work items \
             (MAX_WORK_ITEMS): use fewer λ, prompts or seeds, or split the prompt set over several sweeps"
        )));
    };
    if (items as u64).checked_mul(samples as u64).is_none_or(|n| n > MAX_SWEEP_SAMPLES) {
        return Err(Error::InvalidArgument(format!(
            "{items} work items × {samples} samples per prompt is more than {MAX_SWEEP_SAMPLES} samples \
             (MAX_SWEEP_SAMPLES): use fewer samples, λ, prompts or seeds"
        )));
    }
    Ok(())
}
/// Most λ values in a grid.
pub const MAX_LAMBDAS: usize = 100_000;
/// Most elements (latent values) one batch of a sweep may hold: 2³⁰, 4 GiB in f32. A larger
/// batch is an error that says to lower the samples or `max_lambdas_per_batch`.
pub const MAX_BATCH_ELEMENTS: usize = 1 << 30;

/// Checks a λ grid: not empty, at most [`MAX_LAMBDAS`] values, finite, no value twice (−0 and 0
/// are one value).
pub fn check_lambdas(lambdas: &[f64]) -> Result<()> {
    if lambdas.is_empty() {
        return Err(Error::EmptyGrid);
    }
    if lambdas.len() > MAX_LAMBDAS {
        return Err(Error::InvalidLambda(format!(
            "the grid has {} values; at most {MAX_LAMBDAS} are allowed",
            lambdas.len()
        )));
    }
    let mut seen = HashSet::new();
    for (i, &l) in lambdas.iter().enumerate() {
        if !l.is_finite() {
            return Err(Error::InvalidLambda(format!("λ #{} of the grid is {l}; λ must be a finite number", i + 1)));
        }
        if !seen.insert((l + 0.0).to_bits()) {
            return Err(Error::InvalidLambda(format!("λ = {l} appears twice in the grid")));
        }
    }
    Ok(())
}

/// What a [`SweepObserver`] is told.
#[derive(Debug)]
pub enum SweepEvent<'a> {
    /// A sampling step of a batch finished.
    Step {
        /// The prompt being sampled.
        prompt: &'a Prompt,
        /// The λ values sharing the batch.
        lambdas: &'a [f64],
        /// The step (0-based).
        step: usize,
        /// Steps per run.
        num_steps: usize,
    },
    /// A row was computed and written.
    Row {
        /// The row.
        row: &'a SweepRow,
        /// Rows done so far, those found in the file when resuming included.
        done: usize,
        /// Rows in the whole sweep.
        total: usize,
    },
}

/// Progress and control of a sweep: an error returned here stops it (rows already written are
/// kept, and a rerun resumes after them).
pub trait SweepObserver {
    /// Sees an event.
    fn on_event(&mut self, event: &SweepEvent<'_>) -> Result<()>;
}

impl<F: FnMut(&SweepEvent<'_>) -> Result<()>> SweepObserver for F {
    fn on_event(&mut self, event: &SweepEvent<'_>) -> Result<()> {
        self(event)
    }
}

/// An observer that does nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoSweepObserver;

impl SweepObserver for NoSweepObserver {
    fn on_event(&mut self, _event: &SweepEvent<'_>) -> Result<()> {
        Ok(())
    }
}

/// Mean reward at one λ over the prompts of a sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LambdaSummary {
    /// λ.
    pub lambda: f64,
    /// Mean over prompts of the per-prompt mean reward (prompts weigh equally).
    pub mean: f64,
    /// Standard error of `mean`: across prompts (SD/√P) with two or more prompts; with one, the
    /// samples' SD/√n.
    pub sem: f64,
    /// Number of prompts.
    pub prompts: usize,
}

/// What a sweep returns.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepResult {
    /// The header of this sweep.
    pub header: SweepHeader,
    /// Every row: those found in the file first (in file order), then the new ones.
    pub rows: Vec<SweepRow>,
    /// Rows computed by this call.
    pub computed: usize,
    /// Rows found in the file (resumed).
    pub resumed: usize,
}

impl SweepResult {
    /// The row of (λ, prompt id).
    pub fn row(&self, lambda: f64, prompt: &str) -> Option<&SweepRow> {
        self.rows.iter().find(|r| r.lambda == lambda && r.prompt == prompt)
    }

    /// Mean reward `reward` per λ, sorted by λ (see [`lambda_summaries`]).
    pub fn summaries(&self, reward: &str) -> Result<Vec<LambdaSummary>> {
        lambda_summaries(&self.rows, reward)
    }
}

/// Mean reward per λ over the rows' prompts, sorted by λ. Errors if a row lacks `reward`.
pub fn lambda_summaries(rows: &[SweepRow], reward: &str) -> Result<Vec<LambdaSummary>> {
    let mut lambdas: Vec<f64> = Vec::new();
    for r in rows {
        if !lambdas.contains(&r.lambda) {
            lambdas.push(r.lambda);
        }
    }
    lambdas.sort_by(f64::total_cmp);
    let mut out = Vec::with_capacity(lambdas.len());
    for l in lambdas {
        let mut stats = Vec::new();
        for r in rows.iter().filter(|r| r.lambda == l) {
            let s = r.reward(reward).ok_or_else(|| {
                Error::InvalidArgument(format!("the row of λ = {l}, prompt {:?} has no reward {reward:?}", r.prompt))
            })?;
            stats.push((s.mean, s.std, r.samples));
        }
        let p = stats.len() as f64;
        let mean = stats.iter().map(|s| s.0).sum::<f64>() / p;
        let sem = if stats.len() >= 2 {
            (stats.iter().map(|s| (s.0 - mean) * (s.0 - mean)).sum::<f64>() / (p - 1.0)).sqrt() / p.sqrt()
        } else {
            stats[0].1 / (stats[0].2.max(1) as f64).sqrt()
        };
        out.push(LambdaSummary { lambda: l, mean, sem, prompts: stats.len() });
    }
    Ok(out)
}

fn check_rewards(rewards: &[&dyn Reward], save_images: bool) -> Result<Vec<String>> {
    if rewards.is_empty() && !save_images {
        return Err(Error::InvalidArgument(
            "no rewards and no images saved: a sweep with neither produces nothing; give at least one reward to \
             score the samples, or set save_images"
                .into(),
        ));
    }
    let names: Vec<String> = rewards.iter().map(|r| r.name()).collect();
    for (i, n) in names.iter().enumerate() {
        if n.is_empty() || n.contains([',', '"', '\n', '\r']) {
            return Err(Error::InvalidArgument(format!(
                "reward name {n:?} cannot be a column name (empty, or with a comma, quote or newline)"
            )));
        }
        if names[..i].contains(n) {
            return Err(Error::InvalidArgument(format!("two rewards are called {n:?}; names must be unique")));
        }
    }
    Ok(names)
}

/// Samples and scores the missing (λ, prompt) pairs, calling `on_row` for each row as its batch
/// finishes. Prompts are taken `prompts_per_batch` at a time (at least one): their missing λ
/// values form the groups of one batch (each prompt with its own noise stream, see
/// [`BatchedSampler::run_streams`]), split into batches of at most `max_batch` groups when
/// `max_batch` is not 0. Rows come out prompt-major, λ in grid order. With `images` (a folder
/// and the path the rows name it by), each row's images are written there as PNG files before
/// the row is reported.
#[allow(clippy::too_many_arguments)]
pub(crate) fn compute_rows(
    model: &dyn SweepModel,
    rewards: &[&dyn Reward],
    lambdas: &[f64],
    prompts: &[Prompt],
    samples: usize,
    (max_batch, prompts_per_batch): (usize, usize),
    keep_scores: bool,
    shard: Option<Shard>,
    done: &HashSet<(u64, String, u64)>,
    images: Option<(&Path, &str)>,
    observer: &mut dyn SweepObserver,
    on_row: &mut dyn FnMut(SweepRow, &mut dyn SweepObserver) -> Result<()>,
) -> Result<()> {
    let scheduler = model.scheduler();
    let distinct = distinct_prompt_indices(prompts);
    let shape = model.latent_shape(samples)?;
    let (dtype, device) = (model.dtype(), model.device());
    // Every missing (prompt index, λ) in order.
    let mut work: Vec<(usize, f64)> = Vec::new();
    for (pi, prompt) in prompts.iter().enumerate() {
        for (li, &l) in lambdas.iter().enumerate() {
            if shard.is_some_and(|s| !s.owns(pi * lambdas.len() + li)) {
                continue;
            }
            if !done.contains(&((l + 0.0).to_bits(), prompt.id.clone(), prompt.seed)) {
                work.push((pi, l));
            }
        }
    }
    let per_prompts = prompts_per_batch.max(1);
    let mut start = 0;
    while start < work.len() {
        // The next `per_prompts` prompts with work, then at most `max_batch` of their groups.
        let first_prompt = work[start].0;
        let mut end = start;
        let mut seen = 0usize;
        let mut last = usize::MAX;
        while end < work.len() {
            if work[end].0 != last {
                if seen == per_prompts {
                    break;
                }
                seen += 1;
                last = work[end].0;
            }
            end += 1;
        }
        if max_batch > 0 {
            end = end.min(start + max_batch);
        }
        let batch = &work[start..end];
        start = end;
        let chunk = batch.len();
        let elements = shape.iter().try_fold(chunk, |n, &d| n.checked_mul(d));
        if elements.is_none_or(|n| n > MAX_BATCH_ELEMENTS) {
            return Err(Error::InvalidArgument(format!(
                "a batch of {chunk} λ × latents {shape:?} holds more than {MAX_BATCH_ELEMENTS} values; lower the \
                 samples per prompt or set max_lambdas_per_batch to fewer λ per batch"
            )));
        }
        // The batch's prompts (streams) and each group's stream.
        let mut stream_prompts: Vec<usize> = Vec::new();
        let mut group_streams: Vec<usize> = Vec::with_capacity(chunk);
        for &(pi, _) in batch {
            if stream_prompts.last() != Some(&pi) {
                stream_prompts.push(pi);
            }
            group_streams.push(stream_prompts.len() - 1);
        }
        let batch_prompts: Vec<&Prompt> = stream_prompts.iter().map(|&pi| &prompts[pi]).collect();
        let group_lambdas: Vec<f64> = batch.iter().map(|&(_, l)| l).collect();
        // Weight space: one model per group, merged at its λ; else the posteriors fused at λ.
        let weight_space = model.weight_space_denoiser(&batch_prompts, &group_streams, &group_lambdas, samples)?;
        let merged = weight_space.is_some();
        let (denoisers, realigners) = match weight_space {
            Some(one) => (vec![one], vec![Realigner::new(vec![1.0])?; chunk]),
            None => {
                let denoisers = if batch_prompts.len() == 1 {
                    model.denoisers(batch_prompts[0])?
                } else {
                    model.batch_denoisers(&batch_prompts, &group_streams, samples)?
                };
                let realigners: Vec<Realigner> =
                    batch.iter().map(|&(_, l)| Realigner::two_model(l)).collect::<Result<_, _>>()?;
                (denoisers, realigners)
            }
        };
        let refs: Vec<&dyn deradiff_core::Denoiser> = denoisers.iter().map(|d| d.as_ref() as _).collect();
        let sampler = BatchedSampler::new(scheduler, refs)?;
        let groups: Vec<(&Realigner, usize)> = realigners.iter().zip(&group_streams).map(|(r, &s)| (r, s)).collect();
        let mut sources: Vec<SeededNoise> = batch_prompts.iter().map(|p| SeededNoise::new(p.seed)).collect();
        let mut noises: Vec<&mut dyn deradiff_core::NoiseSource> =
            sources.iter_mut().map(|n| n as &mut dyn deradiff_core::NoiseSource).collect();
        let mut progress = |s: BatchStep| {
            observer.on_event(&SweepEvent::Step {
                prompt: &prompts[first_prompt],
                lambdas: &group_lambdas,
                step: s.step,
                num_steps: s.num_steps,
            })
        };
        let latents = sampler
            .run_streams(&groups, shape.as_slice(), dtype, &device, &mut noises, &mut progress)
            .map_err(|e| name_model(e, model, merged, &group_lambdas))?;
        for (&(pi, lambda), latent) in batch.iter().zip(&latents) {
            let prompt = &prompts[pi];
            let text: Vec<&str> = vec![prompt.text.as_deref().unwrap_or(""); samples];
            let prompt_texts = prompt.text.as_ref().map(|_| text.as_slice());
            let (decoded, saturation) = model.decode_with_saturation(latent)?;
            let saturation = saturation.and_then(|s| s.into_iter().reduce(f64::max));
            let images = match images {
                Some(folder) => {
                    save_row_images(model, &decoded, folder, (distinct.0[pi], distinct.1), prompt.seed, lambda)?
                }
                None => Vec::new(),
            };
            let mut summaries = Vec::with_capacity(rewards.len());
            for reward in rewards {
                let context = format!("λ = {lambda}, prompt {:?}", prompt.id);
                let scores = score_checked(*reward, &decoded, prompt_texts, &context)?;
                summaries.push(RewardSummary::from_scores(reward.name(), &scores, keep_scores));
            }
            let row = SweepRow {
                lambda,
                prompt_index: pi,
                prompt: prompt.id.clone(),
                seed: prompt.seed,
                samples,
                rewards: summaries,
                saturation,
                images,
            };
            on_row(row, observer)?;
        }
    }
    Ok(())
}

/// Per prompt entry, the index of its prompt among the distinct prompt ids (entries of one
/// prompt with several seeds share it), and the number of distinct prompts.
fn distinct_prompt_indices(prompts: &[Prompt]) -> (Vec<usize>, usize) {
    let mut ids: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let indices = prompts
        .iter()
        .map(|p| {
            let next = ids.len();
            *ids.entry(p.id.as_str()).or_insert(next)
        })
        .collect();
    (indices, ids.len())
}

/// Writes the images of one row (`decoded`, one per sample) as PNG files into `folder.0`, named
/// by [`sweep_image_name`]; their paths as the row lists them (under `folder.1`).
fn save_row_images(
    model: &dyn SweepModel,
    decoded: &Tensor,
    (dir, name): (&Path, &str),
    (prompt_index, prompts): (usize, usize),
    seed: u64,
    lambda: f64,
) -> Result<Vec<String>> {
    let pngs = model.png_images(decoded)?.ok_or_else(|| {
        Error::InvalidArgument(format!(
            "{} makes no images: saving images applies to image models (Stable Diffusion)",
            model.describe()
        ))
    })?;
    let samples = pngs.len();
    pngs.iter()
        .enumerate()
        .map(|(k, png)| {
            let file = sweep_image_name(prompt_index, prompts, seed, &[lambda], k, samples);
            let path = dir.join(&file);
            deradiff_core::io::write_atomic(&path, png).map_err(Error::io(&path))?;
            Ok(format!("{name}/{file}"))
        })
        .collect()
}

/// A model's non-finite output as [`Error::NonFiniteOutput`] when `model` can name it.
fn name_model(e: Error, model: &dyn SweepModel, weight_space: bool, lambdas: &[f64]) -> Error {
    match e {
        Error::Core(deradiff_core::Error::NonFiniteModelOutput { step, timestep, model: index }) => {
            match model.describe_model(index, weight_space) {
                Some(name) => Error::NonFiniteOutput {
                    model: name,
                    at: format!("at step {step} (timestep {timestep}) of the batch of λ = {lambdas:?}"),
                },
                None => Error::Core(deradiff_core::Error::NonFiniteModelOutput { step, timestep, model: index }),
            }
        }
        other => other,
    }
}

/// Runs a sweep (see the module docs): every (λ, prompt) of `config` not yet in its output file
/// is sampled (λ values batched), scored by every reward, appended to the file(s) and reported
/// to `observer`.
///
/// ```
/// use deradiff_analytic::{demo_linear_reward, demo_mixture};
/// use deradiff_tune::*;
///
/// let mut setup = AnalyticSetup::new(demo_mixture(1)?, demo_linear_reward(), 1.0);
/// setup.steps = 10;
/// let model = AnalyticModel::new(setup)?;
/// let reward = AnalyticReward::new("proxy", demo_linear_reward());
/// let config = SweepConfig::new(vec![0.0, 0.5, 1.0], Prompt::seeds(0..2), 32);
/// let result = run_sweep(&model, &[&reward], &config, &mut NoSweepObserver)?;
/// assert_eq!(result.rows.len(), 6);
/// let curve = result.summaries("proxy")?;
/// assert!(curve[0].mean < curve[2].mean); // aligning raises the proxy reward
/// # Ok::<(), deradiff_tune::Error>(())
/// ```
pub fn run_sweep(
    model: &dyn SweepModel,
    rewards: &[&dyn Reward],
    config: &SweepConfig,
    observer: &mut dyn SweepObserver,
) -> Result<SweepResult> {
    config.validate()?;
    let names = check_rewards(rewards, config.save_images)?;
    // The batch size is known from the model: refused before the results file is touched.
    config.check_batch(&model.latent_shape(config.samples_per_prompt)?)?;
    let header = SweepHeader {
        format: RESULTS_FORMAT.into(),
        version: RESULTS_VERSION,
        model: model.describe(),
        samples_per_prompt: config.samples_per_prompt,
        prompts: Some(prompts_hash(&config.prompts)),
        spec_hash: Some(spec_hash(&model.describe(), config.samples_per_prompt, &names, &config.spec())),
        spec: Some(config.spec()),
        shard: config.shard,
        rewards: names,
    };
    let mut writer = match &config.output {
        Some(out) => Some(ResultsWriter::open(out, &header, &config.prompts)?),
        None => None,
    };
    let images = match (&config.output, config.save_images) {
        (Some(out), true) => Some((crate::images::folder_of(&out.jsonl).join(IMAGES_DIR), IMAGES_DIR.to_string())),
        _ => None,
    };
    let mut rows = writer.as_ref().map(|w| w.existing.clone()).unwrap_or_default();
    let resumed = rows.len();
    let done_keys: HashSet<(u64, String, u64)> = rows.iter().map(SweepRow::key).collect();
    let total = config.total();
    let spec = config.spec();
    let mut done =
        rows.iter().filter(|r| spec.item_of(r).is_some_and(|it| config.shard.is_none_or(|s| s.owns(it.index)))).count();
    let mut computed = 0usize;
    let mut on_row = |row: SweepRow, obs: &mut dyn SweepObserver| -> Result<()> {
        if let Some(w) = writer.as_mut() {
            w.append(&row)?;
        }
        computed += 1;
        done += 1;
        obs.on_event(&SweepEvent::Row { row: &row, done, total })?;
        rows.push(row);
        Ok(())
    };
    compute_rows(
        model,
        rewards,
        &config.lambdas,
        &config.prompts,
        config.samples_per_prompt,
        (config.max_lambdas_per_batch, config.prompts_per_batch),
        config.keep_scores,
        config.shard,
        &done_keys,
        images.as_ref().map(|(dir, name)| (dir.as_path(), name.as_str())),
        observer,
        &mut on_row,
    )?;
    Ok(SweepResult { header, rows, computed, resumed })
}
