//! Prompt batching and sharding on Stable Diffusion (the tiny committed checkpoints of
//! `deradiff-sd`): several prompts stacked in one batch, each group conditioned on its own prompt
//! (per-row text embeddings, and for SDXL per-row pooled embeddings and time_ids), give the rows
//! of one prompt per batch; shards of an SD sweep, killed and resumed, merge into the rows of an
//! unsharded run. Bit for bit: on the CPU every row is the same whatever it is batched with, and
//! however the sweep is cut (shards, prompts per batch, joint or separate passes, threads), the
//! row lines are the same bytes and the images the same bits — SD and SDXL, full and LoRA-aligned
//! models.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use deradiff_core::SchedulerKind;
use deradiff_rewards::{ClipScore, ClipScorer, Reward};
use deradiff_sd::{AddedConditioning, PromptEmbeddings};
use deradiff_tune::*;

mod common;
use common::{ImageBits, Pixels};

fn sd_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deradiff-sd/tests/fixtures").join(name)
}

fn dir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("deradiff-sd-shards").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Tiny settings: Euler ancestral (every step draws noise, so each prompt's noise stream
/// matters), 2 steps, guidance on, 8×8 pixels (4×4 latents).
fn model(reference: &str, aligned: &str, negative: Option<&str>) -> SdModel {
    let mut setup = SdSetup::new(sd_fixture(reference), sd_fixture(aligned));
    setup.scheduler = SchedulerKind::EulerAncestral;
    setup.steps = 2;
    setup.guidance_scale = Some(5.0);
    setup.negative_prompt = negative.map(str::to_string);
    setup.size = Some((8, 8));
    SdModel::load(setup).unwrap()
}

/// 3 prompts × 2 seeds × 3 λ = 18 rows.
fn config(samples: usize) -> SweepConfig {
    let prompts = Prompt::with_seeds(
        &[
            Prompt::text("cube", "a red cube on a table", 0),
            Prompt::text("sphere", "a blue sphere", 0),
            Prompt::text("cone", "a green cone in the snow", 0),
        ],
        &[3, 11],
    );
    SweepConfig::new(vec![0.0, 0.7, 1.5], prompts, samples)
}

/// Counts the batches a sweep runs (the events of their first step).
#[derive(Default)]
struct CountBatches(usize);

impl SweepObserver for CountBatches {
    fn on_event(&mut self, event: &SweepEvent) -> Result<()> {
        if matches!(event, SweepEvent::Step { step: 0, .. }) {
            self.0 += 1;
        }
        Ok(())
    }
}

/// The largest relative difference of the reward means of two row sets that must hold the same
/// rows (λ, prompt, seed, samples, reward names) in the same order.
fn max_relative_difference(a: &[SweepRow], b: &[SweepRow]) -> f64 {
    assert_eq!(a.len(), b.len());
    let mut worst = 0.0f64;
    for (x, y) in a.iter().zip(b) {
        assert_eq!(
            (x.lambda, &x.prompt, x.seed, x.prompt_index, x.samples),
            (y.lambda, &y.prompt, y.seed, y.prompt_index, y.samples)
        );
        assert_eq!(x.rewards.len(), y.rewards.len());
        for (r, s) in x.rewards.iter().zip(&y.rewards) {
            assert_eq!(r.name, s.name);
            let rel = (r.mean - s.mean).abs() / r.mean.abs().max(s.mean.abs()).max(1e-12);
            worst = worst.max(rel);
        }
    }
    worst
}

/// Prompt-batched sweeps of `m` (several batch layouts) against one prompt per batch.
fn prompt_batching_matches(m: &SdModel, rewards: &[&dyn Reward], label: &str) {
    let mut counter = CountBatches::default();
    let one = run_sweep(m, rewards, &config(1), &mut counter).unwrap();
    assert_eq!((one.rows.len(), counter.0), (18, 6));
    // The prompts and seeds give different images: the rows are not all one row.
    let means: std::collections::HashSet<u64> =
        one.rows.iter().filter(|r| r.lambda == 0.7).map(|r| r.rewards[0].mean.to_bits()).collect();
    assert_eq!(means.len(), 6, "{label}: six (prompt, seed) pairs, six different rows");
    // All 18 groups in one batch; and 4 prompts per batch cut at 5 groups, so that batches
    // split a prompt's λ values and mix prompts within one batch.
    for (per, max, batches) in [(6usize, 0usize, 1usize), (4, 5, 4)] {
        let mut c = config(1);
        c.prompts_per_batch = per;
        c.max_lambdas_per_batch = max;
        let mut counter = CountBatches::default();
        let batched = run_sweep(m, rewards, &c, &mut counter).unwrap();
        assert_eq!(counter.0, batches, "{label}: {per} prompts per batch, at most {max} groups");
        let worst = max_relative_difference(&one.rows, &batched.rows);
        println!(
            "{label}: {per} prompts per batch (at most {max} groups, {batches} batches): largest relative \
             difference of the reward means {worst:.3e}{}",
            if batched.rows == one.rows { " (rows bit-identical)" } else { "" }
        );
        assert!(
            batched.rows == one.rows,
            "{label}: {per} prompts per batch: relative difference {worst:e}, not bit-identical"
        );
    }
}

#[test]
fn prompt_batched_sd_rows_equal_one_prompt_per_batch() {
    // A negative prompt: each row's unconditional half is the encoded negative prompt.
    let m = model("tiny-sd", "tiny-aligned-unet", Some("blurry"));
    let clip_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/clip/clip-gelu");
    let clip = ClipScore::new(Arc::new(ClipScorer::load(clip_dir, DType::F32, &Device::Cpu).unwrap()));
    prompt_batching_matches(&m, &[&Pixels, &clip], "SD");
}

#[test]
fn prompt_batched_sdxl_rows_equal_one_prompt_per_batch() {
    // SDXL: per-row pooled text embeddings and time_ids; no negative prompt, so its negative
    // embeddings are zeros (force_zeros_for_empty_prompt).
    let m = model("tiny-sdxl", "tiny-sdxl-aligned-unet", None);
    assert!(m.pipeline().is_sdxl());
    prompt_batching_matches(&m, &[&Pixels], "SDXL");
}

#[test]
fn sd_batch_denoisers_refuse_what_they_cannot_condition() {
    let m = model("tiny-sd", "tiny-aligned-unet", None);
    let (a, b) = (Prompt::text("a", "a cat", 1), Prompt::text("b", "a dog", 1));
    let seeded = Prompt::seeded(4);
    assert!(m.batch_denoisers(&[&a, &seeded], &[0, 1], 1).is_err(), "a prompt without text");
    assert!(m.batch_denoisers(&[&a, &b], &[0, 2], 1).is_err(), "a group naming no prompt");
    assert!(m.batch_denoisers(&[&a, &b], &[0, 1], 0).is_err(), "groups of no rows");
    assert!(m.batch_denoisers(&[], &[], 1).is_err());
    let d = m.batch_denoisers(&[&a, &b], &[0, 1, 1], 2).unwrap();
    assert_eq!(d.len(), 2, "reference and aligned");
    let x = Tensor::zeros(m.latent_shape(6).unwrap(), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(d[0].predict(&x, 500.0).unwrap().dims(), x.dims());
    // A batch that is not a whole number of rows per group is an error, not a silent mix-up.
    let x5 = Tensor::zeros(m.latent_shape(5).unwrap(), DType::F32, &Device::Cpu).unwrap();
    assert!(d[1].predict(&x5, 500.0).is_err());
}

#[test]
fn prompt_embeddings_concat_keeps_the_cond_uncond_layout() {
    let dev = Device::Cpu;
    let t = |v: f32, b: usize| Tensor::full(v, (b, 3, 2), &dev).unwrap();
    let added = |v: f32, b: usize| {
        AddedConditioning::new(Tensor::full(v, (b, 4), &dev).unwrap(), Tensor::full(v + 0.5, (b, 6), &dev).unwrap())
            .unwrap()
    };
    let part = |c: f32, u: f32, b: usize| {
        PromptEmbeddings::new(t(c, b), Some(t(u, b))).unwrap().with_added(added(c, b), Some(added(u, b))).unwrap()
    };
    let (p, q) = (part(1.0, -1.0, 1), part(2.0, -2.0, 2));
    let cat = PromptEmbeddings::concat(&[p.clone(), q.clone(), p.clone()]).unwrap();
    assert_eq!(cat.batch(), 4);
    let rows = |x: &Tensor| -> Vec<f32> {
        x.flatten_from(1).unwrap().narrow(1, 0, 1).unwrap().flatten_all().unwrap().to_vec1().unwrap()
    };
    assert_eq!(rows(cat.cond()), [1.0, 2.0, 2.0, 1.0]);
    assert_eq!(rows(cat.uncond().unwrap()), [-1.0, -2.0, -2.0, -1.0]);
    assert_eq!(rows(cat.added().unwrap().text_embeds()), [1.0, 2.0, 2.0, 1.0]);
    assert_eq!(rows(cat.added().unwrap().time_ids()), [1.5, 2.5, 2.5, 1.5]);
    assert_eq!(rows(cat.added_uncond().unwrap().text_embeds()), [-1.0, -2.0, -2.0, -1.0]);
    // Then repeated per group, as a prompt-batched sweep does.
    assert_eq!(rows(cat.repeat_each(2).unwrap().cond()), [1.0, 1.0, 2.0, 2.0, 2.0, 2.0, 1.0, 1.0]);
    // One part is itself.
    assert_eq!(rows(PromptEmbeddings::concat(std::slice::from_ref(&q)).unwrap().cond()), [2.0, 2.0]);
    // Mixed encodings are refused.
    let no_uncond = PromptEmbeddings::new(t(3.0, 1), None).unwrap();
    let no_added = PromptEmbeddings::new(t(3.0, 1), Some(t(-3.0, 1))).unwrap();
    let wider = PromptEmbeddings::new(Tensor::zeros((1, 3, 5), DType::F32, &dev).unwrap(), None).unwrap();
    let f64s = PromptEmbeddings::new(t(3.0, 1).to_dtype(DType::F64).unwrap(), None).unwrap();
    assert!(PromptEmbeddings::concat(&[]).is_err());
    assert!(PromptEmbeddings::concat(&[p.clone(), no_uncond.clone()]).is_err());
    assert!(PromptEmbeddings::concat(&[p.clone(), no_added]).is_err());
    assert!(PromptEmbeddings::concat(&[no_uncond.clone(), wider]).is_err());
    assert!(PromptEmbeddings::concat(&[no_uncond, f64s]).is_err());
    assert!(AddedConditioning::concat(&[]).is_err());
}

/// An observer that fails after `n` rows: a kill at a row boundary.
struct KillAfter(usize);

impl SweepObserver for KillAfter {
    fn on_event(&mut self, event: &SweepEvent) -> Result<()> {
        if matches!(event, SweepEvent::Row { .. }) {
            if self.0 == 0 {
                return Err(Error::user("killed"));
            }
            self.0 -= 1;
        }
        Ok(())
    }
}

#[test]
fn sharded_sd_sweep_merges_into_the_unsharded_rows() {
    let m = model("tiny-sd", "tiny-aligned-unet", None);
    let rewards: [&dyn Reward; 1] = [&Pixels];
    let root = dir("equal");
    let sweep = || {
        let mut c = config(1);
        // Two prompts per batch, at most 4 groups: shards batch their own items differently.
        c.prompts_per_batch = 2;
        c.max_lambdas_per_batch = 4;
        c
    };
    let mut whole = sweep();
    whole.output = Some(SweepOutput::jsonl(root.join("whole.jsonl")));
    let unsharded = run_sweep(&m, &rewards, &whole, &mut NoSweepObserver).unwrap();
    assert_eq!(unsharded.rows.len(), 18);
    for n in [1usize, 3] {
        let mut files = Vec::new();
        for k in 0..n {
            let mut c = sweep();
            c.shard = Some(Shard::new(k, n).unwrap());
            let path = root.join(format!("n{n}-shard{k}.jsonl"));
            c.output = Some(SweepOutput::jsonl(&path));
            // Killed after a few rows, then resumed.
            let kill = (k * 7 + n * 3) % 5;
            let first = run_sweep(&m, &rewards, &c, &mut KillAfter(kill));
            assert!(matches!(first, Err(Error::User(_))), "n = {n}, k = {k}: {first:?}");
            assert_eq!(read_results(&path).unwrap().rows.len(), kill + 1, "the killing row is written");
            // A write cut short by the kill: half a row at the end of the file.
            let mut bytes = std::fs::read(&path).unwrap();
            bytes.extend_from_slice(b"{\"lambda\":0.7,\"prom");
            std::fs::write(&path, bytes).unwrap();
            let resumed = run_sweep(&m, &rewards, &c, &mut NoSweepObserver).unwrap();
            assert_eq!((resumed.rows.len(), resumed.resumed), (c.total(), kill + 1), "n = {n}, k = {k}");
            files.push(path);
        }
        let merged = merge_results(&files, false).unwrap();
        assert!(merged.missing.is_empty());
        let worst = max_relative_difference(&unsharded.rows, &merged.rows);
        println!(
            "SD, {n} shard(s): largest relative difference to the unsharded rows {worst:.3e}{}",
            if merged.rows == unsharded.rows { " (rows bit-identical)" } else { "" }
        );
        assert!(merged.rows == unsharded.rows, "n = {n}: relative difference {worst:e}, not bit-identical");
        assert_eq!(merged.header.spec_hash, unsharded.header.spec_hash);
    }
}

/// One way of cutting up a sweep: shards, prompts per batch, joint or separate UNet passes
/// (LoRA-aligned models), threads.
#[derive(Clone, Copy, Debug)]
struct Cut {
    shards: usize,
    prompts_per_batch: usize,
    max_lambdas_per_batch: usize,
    joint: bool,
    threads: usize,
}

/// The data lines of the JSON-lines results files `paths` (the header line left out), keyed by
/// their work item (λ, prompt id, seed): the bytes each row was written as.
fn row_lines(paths: &[PathBuf]) -> std::collections::BTreeMap<String, String> {
    let mut lines = std::collections::BTreeMap::new();
    for path in paths {
        let text = std::fs::read_to_string(path).unwrap();
        for line in text.lines().skip(1) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let key = format!("{} {} {}", v["lambda"], v["prompt"], v["seed"]);
            assert!(lines.insert(key.clone(), line.to_string()).is_none(), "{key} written twice");
        }
    }
    lines
}

/// Runs the sweep on `m` (loaded with joint or separate passes as `cut` says) with `rewards`
/// cut as `cut`, merges its shards, and returns the merged rows and the bytes of every row line.
fn run_cut(
    m: &SdModel,
    rewards: &[&(dyn Reward + Sync)],
    cut: Cut,
    root: &Path,
) -> (Vec<SweepRow>, std::collections::BTreeMap<String, String>) {
    assert_eq!(m.pipeline().joint_pass(), cut.joint);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(cut.threads).build().unwrap();
    let files = pool.install(|| {
        let rewards: Vec<&dyn Reward> = rewards.iter().map(|&r| r as &dyn Reward).collect();
        let mut files = Vec::new();
        for k in 0..cut.shards {
            // 2 prompts × 2 seeds × 2 λ, one sample each (its score kept).
            let prompts = Prompt::with_seeds(
                &[
                    Prompt::text("cube", "a red cube on a table", 0),
                    Prompt::text("cone", "a green cone in the snow", 0),
                ],
                &[3, 11],
            );
            let mut c = SweepConfig::new(vec![0.5, 1.5], prompts, 1);
            c.keep_scores = true;
            c.prompts_per_batch = cut.prompts_per_batch;
            c.max_lambdas_per_batch = cut.max_lambdas_per_batch;
            c.shard = (cut.shards > 1).then(|| Shard::new(k, cut.shards).unwrap());
            let path = root.join(format!("{k}.jsonl"));
            c.output = Some(SweepOutput::jsonl(&path));
            run_sweep(m, &rewards, &c, &mut NoSweepObserver).unwrap();
            files.push(path);
        }
        files
    });
    let merged = merge_results(&files, false).unwrap();
    assert!(merged.missing.is_empty());
    (merged.rows, row_lines(&files))
}

/// Cuts of one sweep give the unsharded, one-prompt-per-batch, joint-pass, two-thread rows bit
/// for bit: the same row lines byte for byte, the same scores, the same image bits (`ImageBits`).
fn cuts_give_the_same_rows(label: &str, reference: &str, aligned: &str, clip: &(dyn Reward + Sync), cuts: &[Cut]) {
    let mut setup = SdSetup::new(sd_fixture(reference), sd_fixture(aligned));
    setup.scheduler = SchedulerKind::EulerAncestral;
    setup.steps = 2;
    setup.guidance_scale = Some(5.0);
    setup.size = Some((8, 8));
    let joint = SdModel::load(setup.clone()).unwrap();
    setup.load.joint_pass = false;
    let separate = cuts.iter().any(|c| !c.joint).then(|| SdModel::load(setup).unwrap());
    let model = |cut: &Cut| if cut.joint { &joint } else { separate.as_ref().unwrap() };
    let rewards: [&(dyn Reward + Sync); 3] = [&Pixels, &ImageBits, clip];
    let root = dir(label);
    let (rows, lines) = run_cut(&joint, &rewards, BASE, &root.join("base"));
    assert_eq!(lines.len(), 8);
    let bits: std::collections::HashSet<u64> = rows.iter().map(|r| r.rewards[1].mean.to_bits()).collect();
    assert_eq!(bits.len(), 8, "{label}: eight different images (prompts, seeds and λ matter)");
    for (i, &cut) in cuts.iter().enumerate() {
        let (r, l) = run_cut(model(&cut), &rewards, cut, &root.join(format!("cut{i}")));
        assert!(r == rows, "{label}: {cut:?} changes the rows");
        for (key, line) in &lines {
            assert_eq!(l.get(key), Some(line), "{label}: {cut:?} writes item {key} differently");
        }
        assert_eq!(l.len(), lines.len(), "{label}: {cut:?}");
    }
}

/// The baseline: unsharded, one prompt per batch (all its λ in one batch), joint passes, 2
/// threads.
const BASE: Cut = Cut { shards: 1, prompts_per_batch: 1, max_lambdas_per_batch: 0, joint: true, threads: 2 };

/// The CLIP score reward (the tiny CLIP checkpoint): its towers run per image in any batch.
fn clip_score() -> ClipScore {
    let clip_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/clip/clip-gelu");
    ClipScore::new(Arc::new(ClipScorer::load(clip_dir, DType::F32, &Device::Cpu).unwrap()))
}

// Each axis — 2, 3 and 5 shards; 1, 2 and 3 prompts per batch, with a prompt's λ groups split
// across batches (`max_lambdas_per_batch` 1 and 3); joint and separate passes (LoRA); 1 and 2
// threads — is covered against the baseline, one combination per model, SD and SDXL each
// covering joint and separate passes and 1 and 2 threads; not as the full product (which takes
// minutes in debug).

#[test]
fn sd_rows_are_bit_identical_however_the_sweep_is_cut() {
    let clip = clip_score();
    let full = [Cut { shards: 2, prompts_per_batch: 2, threads: 1, ..BASE }];
    cuts_give_the_same_rows("cuts-sd-full", "tiny-sd", "tiny-aligned-unet", &clip, &full);
    let lora = [Cut { shards: 3, prompts_per_batch: 3, max_lambdas_per_batch: 1, joint: false, ..BASE }];
    cuts_give_the_same_rows("cuts-sd-lora", "tiny-sd", "lora/sd-kohya.safetensors", &clip, &lora);
}

#[test]
fn sdxl_rows_are_bit_identical_however_the_sweep_is_cut() {
    let clip = clip_score();
    let full = [Cut { shards: 5, prompts_per_batch: 3, max_lambdas_per_batch: 3, threads: 1, ..BASE }];
    cuts_give_the_same_rows("cuts-sdxl-full", "tiny-sdxl", "tiny-sdxl-aligned-unet", &clip, &full);
    let lora = [Cut { shards: 2, prompts_per_batch: 2, joint: false, threads: 1, ..BASE }];
    cuts_give_the_same_rows("cuts-sdxl-lora", "tiny-sdxl", "lora/sdxl-diffusers.safetensors", &clip, &lora);
}
