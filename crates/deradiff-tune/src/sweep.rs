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
//! names), every other one a [`SweepRow`]. Rows are keyed by (λ, prompt id); λ is written with
//! round-trip precision, so a row read back matches its grid value exactly.
//!
//! # Resuming
//!
//! Rerunning a sweep on an existing file ([`IfExists::Resume`], the default) reads the rows
//! already there, checks the header matches this sweep, and computes only the missing
//! (λ, prompt) pairs: a sweep stopped part-way (an observer error, a kill, a crash) completes
//! with no duplicated or lost rows. A last line cut short by a crash (no final newline, not
//! valid JSON) is dropped and recomputed; any other line that is not a row is an error
//! ([`Error::MalformedResults`]). Because a λ's samples depend only on its prompt's seed (every
//! λ of a prompt gets the noise of an unbatched run with that seed), a resumed sweep writes the
//! very rows an uninterrupted one would. The CSV is rewritten from the JSONL when a sweep
//! starts, then appended to.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use deradiff_core::{Realigner, SeededNoise};
use deradiff_rewards::{score_checked, Reward};
use serde::{Deserialize, Serialize};

use crate::batch::{BatchStep, BatchedSampler};
use crate::error::{Error, Result};
use crate::model::{check_prompts, Prompt, SweepModel};
use crate::shard::{spec_hash, Shard, SweepSpec};

/// The `format` field of a results file's header.
pub const RESULTS_FORMAT: &str = "deradiff-sweep";
/// The version of the results file format.
pub const RESULTS_VERSION: u32 = 1;

/// What to do when the output file exists already.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum IfExists {
    /// Keep its rows and compute only the missing ones (the default).
    #[default]
    Resume,
    /// Start afresh, discarding it.
    Overwrite,
    /// Refuse ([`Error::OutputExists`]).
    Fail,
}

/// Where a sweep writes its rows.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepOutput {
    /// The JSON-lines file (the record a sweep resumes from).
    pub jsonl: PathBuf,
    /// An optional CSV copy (one line per row; columns `<reward>_mean`, `<reward>_std`).
    pub csv: Option<PathBuf>,
    /// What to do when `jsonl` exists.
    pub if_exists: IfExists,
}

impl SweepOutput {
    /// Rows to `jsonl` only, resuming it if it exists.
    pub fn jsonl(path: impl Into<PathBuf>) -> Self {
        Self { jsonl: path.into(), csv: None, if_exists: IfExists::Resume }
    }

    /// Adds a CSV copy.
    pub fn with_csv(mut self, path: impl Into<PathBuf>) -> Self {
        self.csv = Some(path.into());
        self
    }
}

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
    /// Compute only this shard's work items (`None`: all of them); see [`crate::shard`].
    pub shard: Option<Shard>,
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
        if self.samples_per_prompt > MAX_SAMPLES_PER_PROMPT {
            return Err(Error::InvalidArgument(format!(
                "{} samples per prompt: at most {MAX_SAMPLES_PER_PROMPT} are allowed; use more prompts or seeds instead",
                self.samples_per_prompt
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

/// A reward's summary over the samples of one (λ, prompt).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RewardSummary {
    /// The reward's name.
    pub name: String,
    /// Mean score.
    pub mean: f64,
    /// Sample standard deviation of the scores (0 for one sample).
    pub std: f64,
    /// Every sample's score, when the sweep keeps them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scores: Option<Vec<f64>>,
}

impl RewardSummary {
    /// Mean and sample SD of `scores` (at least one).
    pub fn from_scores(name: impl Into<String>, scores: &[f64], keep: bool) -> Self {
        let n = scores.len().max(1) as f64;
        let mean = scores.iter().sum::<f64>() / n;
        let std = if scores.len() > 1 {
            (scores.iter().map(|s| (s - mean) * (s - mean)).sum::<f64>() / (n - 1.0)).sqrt()
        } else {
            0.0
        };
        Self { name: name.into(), mean, std, scores: keep.then(|| scores.to_vec()) }
    }
}

/// One (λ, prompt) result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepRow {
    /// λ.
    pub lambda: f64,
    /// Index of the prompt in the sweep's prompt list when the row was computed.
    pub prompt_index: usize,
    /// The prompt's id.
    pub prompt: String,
    /// The prompt's seed.
    pub seed: u64,
    /// Number of samples.
    pub samples: usize,
    /// One summary per reward, in the sweep's reward order.
    pub rewards: Vec<RewardSummary>,
}

impl SweepRow {
    /// The summary of the reward called `name`.
    pub fn reward(&self, name: &str) -> Option<&RewardSummary> {
        self.rewards.iter().find(|r| r.name == name)
    }

    fn key(&self) -> (u64, String, u64) {
        ((self.lambda + 0.0).to_bits(), self.prompt.clone(), self.seed)
    }
}

/// The first line of a results file: what the rows were computed with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepHeader {
    /// Always [`RESULTS_FORMAT`].
    pub format: String,
    /// [`RESULTS_VERSION`].
    pub version: u32,
    /// [`SweepModel::describe`] of the model.
    pub model: String,
    /// Samples per (λ, prompt).
    pub samples_per_prompt: usize,
    /// The rewards' names, in column order.
    pub rewards: Vec<String>,
    /// A hash of the prompt set (ids, texts and seeds, in order; [`prompts_hash`]): a resume
    /// with another prompt set is an error. Absent in files written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompts: Option<String>,
    /// The whole sweep: its λ grid and prompt entries, which number the work items (absent in
    /// files written before sharding existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<SweepSpec>,
    /// [`spec_hash`] of the sweep: shards of one sweep share it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_hash: Option<String>,
    /// The shard this file holds (`None`: the whole sweep).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<Shard>,
}

/// The hash a results file's header records for a prompt set: FNV-1a (64 bits, hex) of the
/// JSON of every prompt's id, text and seed, in order.
pub fn prompts_hash(prompts: &[Prompt]) -> String {
    let key: Vec<(&str, Option<&str>, u64)> =
        prompts.iter().map(|p| (p.id.as_str(), p.text.as_deref(), p.seed)).collect();
    let json = serde_json::to_string(&key).unwrap_or_default();
    format!("{:016x}", crate::model::fnv1a(json.as_bytes()))
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

/// How [`pair_rows`] matches the rows of two result sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PairBy {
    /// The same λ and prompt id.
    LambdaAndPrompt,
    /// The same prompt id (each set must hold one row per prompt, e.g. one λ each).
    Prompt,
}

/// Paired values of one reward from two result sets (for [`crate::agreement`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pairs {
    /// One label per pair (`λ=…, <prompt>` or the prompt id).
    pub labels: Vec<String>,
    /// The first set's mean reward (the originals `x`).
    pub original: Vec<f64>,
    /// The second set's mean reward (the approximations `y`).
    pub approx: Vec<f64>,
}

/// Pairs the mean `reward` of `original` and `approx` rows by key, in `original`'s order. Errors
/// for a key that appears twice in a set, a row without a partner, or a row without `reward`.
pub fn pair_rows(original: &[SweepRow], approx: &[SweepRow], reward: &str, by: PairBy) -> Result<Pairs> {
    let key = |r: &SweepRow| match by {
        // −0 and 0 are one λ, as in a sweep's own keys.
        PairBy::LambdaAndPrompt => format!("λ={}, {}, seed {}", r.lambda + 0.0, r.prompt, r.seed),
        PairBy::Prompt => format!("{}, seed {}", r.prompt, r.seed),
    };
    let index = |rows: &[SweepRow], which: &str| -> Result<std::collections::HashMap<String, f64>> {
        let mut map = std::collections::HashMap::new();
        for r in rows {
            let v = r.reward(reward).ok_or_else(|| {
                Error::InvalidArgument(format!("a row of the {which} set ({}) has no reward {reward:?}", key(r)))
            })?;
            if map.insert(key(r), v.mean).is_some() {
                return Err(Error::InvalidArgument(format!(
                    "the {which} set has two rows for {}; pair by λ and prompt, or keep one λ per set",
                    key(r)
                )));
            }
        }
        Ok(map)
    };
    let b = index(approx, "approximation")?;
    index(original, "original")?;
    let mut pairs = Pairs { labels: Vec::new(), original: Vec::new(), approx: Vec::new() };
    for r in original {
        let k = key(r);
        let y = *b.get(&k).ok_or_else(|| {
            Error::InvalidArgument(format!("the approximation set has no row for {k} of the original set"))
        })?;
        pairs.original.push(r.reward(reward).map(|s| s.mean).unwrap_or(f64::NAN));
        pairs.approx.push(y);
        pairs.labels.push(k);
    }
    if pairs.labels.len() != b.len() {
        return Err(Error::InvalidArgument(format!(
            "the approximation set has {} rows without a partner in the original set",
            b.len() - pairs.labels.len()
        )));
    }
    Ok(pairs)
}

fn check_rewards(rewards: &[&dyn Reward]) -> Result<Vec<String>> {
    if rewards.is_empty() {
        return Err(Error::InvalidArgument("no rewards: give at least one reward to score the samples".into()));
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
/// `max_batch` is not 0. Rows come out prompt-major, λ in grid order.
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
    observer: &mut dyn SweepObserver,
    on_row: &mut dyn FnMut(SweepRow, &mut dyn SweepObserver) -> Result<()>,
) -> Result<()> {
    let scheduler = model.scheduler();
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
                 samples per prompt or set max_lambdas_per_batch (--max-batch) to fewer λ per batch"
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
        let latents = sampler.run_streams(&groups, shape.as_slice(), dtype, &device, &mut noises, &mut progress)?;
        for (&(pi, lambda), latent) in batch.iter().zip(&latents) {
            let prompt = &prompts[pi];
            let text: Vec<&str> = vec![prompt.text.as_deref().unwrap_or(""); samples];
            let prompt_texts = prompt.text.as_ref().map(|_| text.as_slice());
            let decoded = model.decode(latent)?;
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
            };
            on_row(row, observer)?;
        }
    }
    Ok(())
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
    let names = check_rewards(rewards)?;
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
        observer,
        &mut on_row,
    )?;
    Ok(SweepResult { header, rows, computed, resumed })
}

/// The contents of a results file.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultsFile {
    /// Its header.
    pub header: SweepHeader,
    /// Its rows, in file order.
    pub rows: Vec<SweepRow>,
    /// Whether its last line was cut short (and was ignored).
    pub truncated_tail: bool,
}

/// Reads a results file: the header, then every row. A last line cut short by a crash is
/// ignored (and reported in [`ResultsFile::truncated_tail`]); anything else that is not a row
/// is an [`Error::MalformedResults`] naming the line.
pub fn read_results(path: impl AsRef<Path>) -> Result<ResultsFile> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(Error::io(path))?;
    let parsed = parse_results(&bytes, path)?;
    let header = parsed.header.ok_or_else(|| Error::MalformedResults {
        path: path.to_path_buf(),
        line: 1,
        detail: "the file is empty: it has no deradiff-sweep header line".into(),
    })?;
    Ok(ResultsFile { header, rows: parsed.rows, truncated_tail: parsed.good_len < bytes.len() && !parsed.tail_ok })
}

struct Parsed {
    header: Option<SweepHeader>,
    rows: Vec<SweepRow>,
    /// Bytes up to the end of the last complete, valid line.
    good_len: usize,
    /// Whether the unterminated last line (if any) was a valid row, kept in `rows`.
    tail_ok: bool,
}

fn parse_results(bytes: &[u8], path: &Path) -> Result<Parsed> {
    let malformed = |line: usize, detail: String| Error::MalformedResults { path: path.to_path_buf(), line, detail };
    let mut header: Option<SweepHeader> = None;
    let mut rows = Vec::new();
    let mut keys = HashSet::new();
    let mut good_len = 0usize;
    let mut tail_ok = false;
    let mut start = 0usize;
    let mut line_no = 0usize;
    while start < bytes.len() {
        line_no += 1;
        let (end, terminated) = match bytes[start..].iter().position(|&b| b == b'\n') {
            Some(i) => (start + i, true),
            None => (bytes.len(), false),
        };
        let raw = &bytes[start..end];
        let next = if terminated { end + 1 } else { end };
        let parsed: std::result::Result<Option<Line>, String> = std::str::from_utf8(raw)
            .map_err(|e| format!("not UTF-8 text ({e})"))
            .and_then(|text| parse_line(text.trim(), header.is_none()));
        match parsed {
            Ok(None) => {}
            Ok(Some(Line::Header(h))) => header = Some(h),
            Ok(Some(Line::Row(row))) => {
                if !keys.insert(row.key()) {
                    return Err(malformed(
                        line_no,
                        format!("a second row for λ = {}, prompt {:?}, seed {}", row.lambda, row.prompt, row.seed),
                    ));
                }
                rows.push(row);
            }
            Err(detail) if !terminated => {
                // A last line without its newline that does not parse: a write cut short.
                let _ = detail;
                break;
            }
            Err(detail) => return Err(malformed(line_no, detail)),
        }
        if terminated {
            good_len = next;
        } else {
            tail_ok = true;
        }
        start = next;
    }
    Ok(Parsed { header, rows, good_len, tail_ok })
}

enum Line {
    Header(SweepHeader),
    Row(SweepRow),
}

fn parse_line(text: &str, expect_header: bool) -> std::result::Result<Option<Line>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    if expect_header {
        let h: SweepHeader = serde_json::from_str(text)
            .map_err(|e| format!("expected the deradiff-sweep header line, found something else ({e})"))?;
        if h.format != RESULTS_FORMAT {
            return Err(format!("the header's format is {:?}, not {RESULTS_FORMAT:?}", h.format));
        }
        if h.version != RESULTS_VERSION {
            return Err(format!("results format version {} is not supported (this is {RESULTS_VERSION})", h.version));
        }
        return Ok(Some(Line::Header(h)));
    }
    let row: SweepRow = serde_json::from_str(text).map_err(|e| format!("not a sweep row ({e})"))?;
    if !row.lambda.is_finite() {
        return Err(format!("λ is {}", row.lambda));
    }
    Ok(Some(Line::Row(row)))
}

/// Appends rows to the JSONL (and CSV) of a sweep.
struct ResultsWriter {
    jsonl_path: PathBuf,
    jsonl: File,
    csv: Option<(PathBuf, File)>,
    existing: Vec<SweepRow>,
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The CSV header line of a sweep with these rewards.
pub(crate) fn csv_header(rewards: &[String]) -> String {
    let mut s = String::from("lambda,prompt_index,prompt,seed,samples");
    for r in rewards {
        s.push_str(&format!(",{r}_mean,{r}_std"));
    }
    s.push('\n');
    s
}

/// One CSV line of a row (the reward columns in `rewards` order; empty where a row lacks one).
pub(crate) fn csv_line(row: &SweepRow, rewards: &[String]) -> String {
    let mut s = format!("{},{},{},{},{}", row.lambda, row.prompt_index, csv_field(&row.prompt), row.seed, row.samples);
    for r in rewards {
        match row.reward(r) {
            Some(x) => s.push_str(&format!(",{},{}", x.mean, x.std)),
            None => s.push_str(",,"),
        }
    }
    s.push('\n');
    s
}

fn append_line(file: &mut File, path: &Path, line: &str) -> Result<()> {
    file.write_all(line.as_bytes()).map_err(Error::io(path))?;
    file.flush().map_err(Error::io(path))?;
    file.sync_data().map_err(Error::io(path))
}

impl ResultsWriter {
    fn open(out: &SweepOutput, header: &SweepHeader, prompts: &[Prompt]) -> Result<Self> {
        let path = &out.jsonl;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        }
        if let Ok(meta) = std::fs::metadata(path) {
            if !meta.is_file() {
                return Err(Error::InvalidArgument(format!(
                    "the results file {} exists and is not a regular file (a directory, device or FIFO): \
                     choose a file path",
                    path.display()
                )));
            }
        }
        // Opened (created if missing) and locked before anything is read: a second sweep on the
        // same file fails here at once instead of interleaving rows with this one.
        let mut jsonl = OpenOptions::new().read(true).append(true).create(true).open(path).map_err(Error::io(path))?;
        match jsonl.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(Error::ResultsLocked(path.clone())),
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(path)(e)),
        }
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut jsonl, &mut bytes).map_err(Error::io(path))?;
        let has_content = bytes.iter().any(|b| !b.is_ascii_whitespace());
        if has_content && out.if_exists == IfExists::Fail {
            return Err(Error::OutputExists(path.clone()));
        }
        let resume = has_content && out.if_exists == IfExists::Resume;
        let mut existing = Vec::new();
        let mut keep_len = 0usize;
        let mut needs_newline = false;
        let mut have_header = false;
        if resume {
            let parsed = parse_results(&bytes, path)?;
            if let Some(h) = &parsed.header {
                check_header(path, h, header)?;
                check_rows_fit(path, &parsed.rows, prompts)?;
                existing = parsed.rows;
                have_header = true;
                keep_len = parsed.good_len;
                if parsed.tail_ok {
                    keep_len = bytes.len();
                    needs_newline = true;
                }
            }
        }
        jsonl.set_len(keep_len as u64).map_err(Error::io(path))?;
        if needs_newline {
            append_line(&mut jsonl, path, "\n")?;
        }
        if !have_header {
            let mut line = serde_json::to_string(header)?;
            line.push('\n');
            append_line(&mut jsonl, path, &line)?;
        }
        let csv = match &out.csv {
            None => None,
            Some(csv_path) => {
                let mut text = csv_header(&header.rewards);
                for r in &existing {
                    text.push_str(&csv_line(r, &header.rewards));
                }
                crate::error::write_atomic(csv_path, text.as_bytes())?;
                let f = OpenOptions::new().append(true).open(csv_path).map_err(Error::io(csv_path))?;
                Some((csv_path.clone(), f))
            }
        };
        Ok(Self { jsonl_path: path.clone(), jsonl, csv, existing })
    }

    fn append(&mut self, row: &SweepRow) -> Result<()> {
        let mut line = serde_json::to_string(row)?;
        line.push('\n');
        append_line(&mut self.jsonl, &self.jsonl_path, &line)?;
        if let Some((path, f)) = self.csv.as_mut() {
            let names: Vec<String> = row.rewards.iter().map(|r| r.name.clone()).collect();
            append_line(f, path, &csv_line(row, &names))?;
        }
        Ok(())
    }
}

fn check_header(path: &Path, file: &SweepHeader, config: &SweepHeader) -> Result<()> {
    let mismatch = |field: &str, a: String, b: String| Error::ResumeMismatch {
        path: path.to_path_buf(),
        field: field.into(),
        in_file: a,
        in_config: b,
    };
    if file.model != config.model {
        return Err(mismatch("model", format!("{:?}", file.model), format!("{:?}", config.model)));
    }
    if file.samples_per_prompt != config.samples_per_prompt {
        return Err(mismatch(
            "samples_per_prompt",
            file.samples_per_prompt.to_string(),
            config.samples_per_prompt.to_string(),
        ));
    }
    if file.rewards != config.rewards {
        return Err(mismatch("rewards", format!("{:?}", file.rewards), format!("{:?}", config.rewards)));
    }
    if file.shard.is_some() || config.shard.is_some() {
        // A shard resumes only as the same shard of the same sweep: its items depend on both.
        if file.shard != config.shard {
            let show = |s: Option<Shard>| s.map_or("none (unsharded)".to_string(), |s| s.to_string());
            return Err(mismatch("shard", show(file.shard), show(config.shard)));
        }
        if file.spec_hash != config.spec_hash {
            return Err(mismatch(
                "spec (hash of the λ grid, prompts, seeds, model, samples and rewards)",
                format!("{:?}", file.spec_hash),
                format!("{:?}", config.spec_hash),
            ));
        }
    }
    if let (Some(a), Some(b)) = (&file.prompts, &config.prompts) {
        if a != b {
            return Err(mismatch(
                "prompts (hash of the prompt set: ids, texts, seeds)",
                a.clone(),
                format!("{b} (another prompt set)"),
            ));
        }
    }
    Ok(())
}

/// Every row of a file being resumed belongs to this sweep's prompt set, with the prompt's seed
/// (files written before headers recorded the prompt set are checked row by row).
fn check_rows_fit(path: &Path, rows: &[SweepRow], prompts: &[Prompt]) -> Result<()> {
    let entries: HashSet<(&str, u64)> = prompts.iter().map(|p| (p.id.as_str(), p.seed)).collect();
    for row in rows {
        if !entries.contains(&(row.prompt.as_str(), row.seed)) {
            let seeds: Vec<u64> = prompts.iter().filter(|p| p.id == row.prompt).map(|p| p.seed).collect();
            return Err(Error::ResumeMismatch {
                path: path.to_path_buf(),
                field: "prompts".into(),
                in_file: format!("a row for prompt {:?} with seed {}", row.prompt, row.seed),
                in_config: if seeds.is_empty() {
                    "no prompt with that id".into()
                } else {
                    format!("that prompt with seeds {seeds:?}")
                },
            });
        }
    }
    Ok(())
}
