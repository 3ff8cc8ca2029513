//! Batching on the tiny Stable Diffusion UNet (deradiff-sd's test checkpoint: blocks 32/64, 8×8
//! latents, classifier-free guidance 7.5, Euler ancestral, CPU, f32), two comparisons:
//!
//!     cargo bench -p deradiff-tune --bench sd_sweep
//!
//! * **λ batching**: a batched sweep of 8 λ against 8 separate realigned runs. Batched: the 8 λ
//!   share the batch dimension, so each UNet runs once per step on a batch of 8 latents (16
//!   with guidance). Separate: 8 runs of deradiff-core's `Sampler`, each UNet on a batch of 1 (2
//!   with guidance). Both from the same seed (every λ gets the same noise).
//! * **prompt batching**: 8 different prompts at one λ (a sweep's `prompts_per_batch = 8`)
//!   against one batch per prompt (`prompts_per_batch = 1`), as a sweep runs them: each prompt
//!   encoded, then sampled with its own seed's noise stream; batched, each group's rows are
//!   conditioned on its own prompt ([`SweepModel::batch_denoisers`]) and each UNet runs once per
//!   step for all 8 prompts.
//!
//! The device is `DERADIFF_DEVICE` (`cpu` by default; `cuda:0` with deradiff-sd's `cuda`
//! feature); the interleaved timings synchronise it before each clock read.
//!
//! After criterion's report each pair is timed again interleaved (so that load on a shared
//! machine hits both alike) and the throughput ratio of the medians is printed, with the largest
//! difference between the batched and the separate samples.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::{Device, Tensor};
use criterion::{criterion_group, Criterion, Throughput};
use deradiff_core::{Denoiser, NoObserver, NoiseSource, Realigner, Sampler, Scheduler, SchedulerKind, SeededNoise};
use deradiff_sd::{LoadOptions, PromptEmbeddings, Request, StableDiffusion};
use deradiff_tune::{BatchedSampler, Prompt, SdModel, SdSetup, SweepModel};

const STEPS: usize = 10;
const LAMBDAS: [f64; 8] = [0.0, 0.15, 0.3, 0.45, 0.6, 0.75, 0.9, 1.05];
/// The prompts of the prompt-batching comparison (one λ each, each with its own seed).
const PROMPTS: [&str; 8] = [
    "a red cube on a wooden table",
    "a blue sphere in the snow",
    "a green cone under a lamp",
    "a yellow torus on the grass",
    "a white teapot on a shelf",
    "a black cat on a sofa",
    "an orange car in the rain",
    "a purple flower in a vase",
];
/// The λ of the prompt-batching comparison (between reference and aligned: both UNets run).
const PROMPT_LAMBDA: f64 = 0.5;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deradiff-sd/tests/fixtures")
}

struct Setup {
    sd: StableDiffusion,
    scheduler: Box<dyn Scheduler>,
    one: PromptEmbeddings,
    eight: PromptEmbeddings,
    realigners: Vec<Realigner>,
    shape: [usize; 4],
    guidance: f64,
}

/// `DERADIFF_DEVICE`, parsed as the CLI's `--device`.
fn bench_device() -> Device {
    let name = std::env::var("DERADIFF_DEVICE").unwrap_or_else(|_| "cpu".into());
    deradiff_sd::parse_device(&name).unwrap_or_else(|e| panic!("DERADIFF_DEVICE={name}: {e}"))
}

fn setup() -> Setup {
    let fixtures = fixtures();
    let options = LoadOptions { device: bench_device(), ..Default::default() };
    let sd = StableDiffusion::load(fixtures.join("tiny-sd"), &[fixtures.join("tiny-aligned-unet")], &options)
        .expect("deradiff-sd's tiny checkpoint");
    let request = Request {
        prompts: vec!["a red cube on a wooden table".into()],
        scheduler: SchedulerKind::EulerAncestral,
        steps: STEPS,
        guidance_scale: Some(7.5),
        ..Default::default()
    };
    let one = sd.encode(&request).unwrap().into_embeddings();
    let eight = one.repeat_each(LAMBDAS.len()).unwrap();
    let scheduler = request.scheduler.build(sd.scheduler_config(), STEPS).unwrap();
    let shape = sd.latent_shape(&request, 1).unwrap();
    let realigners = LAMBDAS.iter().map(|&l| Realigner::two_model(l).unwrap()).collect();
    let guidance = sd.guidance_scale(&request).unwrap();
    Setup { sd, scheduler, one, eight, realigners, shape, guidance }
}

impl Setup {
    fn batched(&self) -> Vec<Tensor> {
        let guided = self.sd.denoisers(&self.eight, self.guidance).unwrap();
        let denoisers: Vec<&dyn Denoiser> = guided.iter().map(|g| g as &dyn Denoiser).collect();
        let sampler = BatchedSampler::new(self.scheduler.as_ref(), denoisers).unwrap();
        sampler
            .run(
                &self.realigners,
                &self.shape,
                self.sd.dtype(),
                self.sd.device(),
                &mut SeededNoise::new(0),
                &mut |_| Ok(()),
            )
            .unwrap()
    }

    fn separate(&self) -> Vec<Tensor> {
        let guided = self.sd.denoisers(&self.one, self.guidance).unwrap();
        self.realigners
            .iter()
            .map(|r| {
                let denoisers: Vec<&dyn Denoiser> = guided.iter().map(|g| g as &dyn Denoiser).collect();
                Sampler::new(self.scheduler.as_ref(), denoisers, r.clone())
                    .unwrap()
                    .run(&self.shape, self.sd.dtype(), self.sd.device(), &mut SeededNoise::new(0), &mut NoObserver)
                    .unwrap()
                    .latent
            })
            .collect()
    }
}

/// The prompt-batching comparison: the tiny checkpoint as a sweep's [`SdModel`], 8 prompts.
struct PromptSetup {
    model: SdModel,
    prompts: Vec<Prompt>,
    realigner: Realigner,
}

fn prompt_setup() -> PromptSetup {
    let fixtures = fixtures();
    let mut setup = SdSetup::new(fixtures.join("tiny-sd"), fixtures.join("tiny-aligned-unet"));
    setup.scheduler = SchedulerKind::EulerAncestral;
    setup.steps = STEPS;
    setup.guidance_scale = Some(7.5);
    setup.load.device = bench_device();
    let model = SdModel::load(setup).expect("deradiff-sd's tiny checkpoint");
    let prompts = PROMPTS.iter().enumerate().map(|(i, t)| Prompt::text(format!("p{i}"), *t, i as u64)).collect();
    PromptSetup { model, prompts, realigner: Realigner::two_model(PROMPT_LAMBDA).unwrap() }
}

impl PromptSetup {
    /// All prompts in one batch (`prompts_per_batch = 8`): one group per prompt, each with its
    /// own noise stream.
    fn batched(&self) -> Vec<Tensor> {
        let m = &self.model;
        let prompts: Vec<&Prompt> = self.prompts.iter().collect();
        let group_prompts: Vec<usize> = (0..prompts.len()).collect();
        let denoisers = m.batch_denoisers(&prompts, &group_prompts, 1).unwrap();
        let refs: Vec<&dyn Denoiser> = denoisers.iter().map(|d| d.as_ref() as &dyn Denoiser).collect();
        let sampler = BatchedSampler::new(m.scheduler(), refs).unwrap();
        let groups: Vec<(&Realigner, usize)> = group_prompts.iter().map(|&g| (&self.realigner, g)).collect();
        let mut sources: Vec<SeededNoise> = self.prompts.iter().map(|p| SeededNoise::new(p.seed)).collect();
        let mut noises: Vec<&mut dyn NoiseSource> = sources.iter_mut().map(|n| n as &mut dyn NoiseSource).collect();
        sampler
            .run_streams(&groups, m.latent_shape(1).unwrap(), m.dtype(), &m.device(), &mut noises, &mut |_| Ok(()))
            .unwrap()
    }

    /// One batch per prompt (`prompts_per_batch = 1`).
    fn separate(&self) -> Vec<Tensor> {
        let m = &self.model;
        self.prompts
            .iter()
            .map(|p| {
                let denoisers = m.denoisers(p).unwrap();
                let refs: Vec<&dyn Denoiser> = denoisers.iter().map(|d| d.as_ref() as &dyn Denoiser).collect();
                let sampler = BatchedSampler::new(m.scheduler(), refs).unwrap();
                sampler
                    .run(
                        std::slice::from_ref(&self.realigner),
                        m.latent_shape(1).unwrap(),
                        m.dtype(),
                        &m.device(),
                        &mut SeededNoise::new(p.seed),
                        &mut |_| Ok(()),
                    )
                    .unwrap()
                    .remove(0)
            })
            .collect()
    }
}

fn bench(c: &mut Criterion) {
    let s = setup();
    let mut group = c.benchmark_group(format!("tiny_sd_8_lambdas_{STEPS}_steps_cfg"));
    group.throughput(Throughput::Elements(LAMBDAS.len() as u64));
    group.sample_size(10);
    group.bench_function("batched (one UNet call per step)", |b| b.iter(|| black_box(s.batched())));
    group.bench_function("8 separate runs", |b| b.iter(|| black_box(s.separate())));
    group.finish();

    let p = prompt_setup();
    let mut group = c.benchmark_group(format!("tiny_sd_8_prompts_1_lambda_{STEPS}_steps_cfg"));
    group.throughput(Throughput::Elements(PROMPTS.len() as u64));
    group.sample_size(10);
    group.bench_function("prompt-batched (8 prompts per batch)", |b| b.iter(|| black_box(p.batched())));
    group.bench_function("one batch per prompt", |b| b.iter(|| black_box(p.separate())));
    group.finish();
}

criterion_group!(benches, bench);

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// The largest absolute difference of two lists of f32 latents.
fn max_difference(a: &[Tensor], b: &[Tensor]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            (x - y).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
        })
        .fold(0.0f32, f32::max)
}

/// Interleaved timing of `batched` and `separate` on `device` (synchronised before each clock
/// read): their medians in seconds.
fn interleaved<A, B>(
    rounds: usize,
    device: &Device,
    mut batched: impl FnMut() -> A,
    mut separate: impl FnMut() -> B,
) -> (f64, f64) {
    let (mut tb, mut ts) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
    let sync = || device.synchronize().expect("the device synchronises");
    for _ in 0..rounds {
        sync();
        let t = Instant::now();
        black_box(batched());
        sync();
        tb.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        black_box(separate());
        sync();
        ts.push(t.elapsed().as_secs_f64());
    }
    (median(&mut tb), median(&mut ts))
}

fn interleaved_ratio(rounds: usize) {
    let s = setup();
    let max_diff = max_difference(&s.batched(), &s.separate());
    let (mb, ms) = interleaved(rounds, s.sd.device(), || s.batched(), || s.separate());
    println!(
        "interleaved ({rounds} rounds, 8 λ, {STEPS} steps): median batched {:.2} ms, 8 separate runs {:.2} ms, \
         throughput ratio {:.2}x; largest |batched − separate| latent difference {max_diff:.2e}",
        mb * 1e3,
        ms * 1e3,
        ms / mb
    );
}

fn interleaved_prompt_ratio(rounds: usize) {
    let p = prompt_setup();
    let max_diff = max_difference(&p.batched(), &p.separate());
    let device = bench_device();
    let (mb, ms) = interleaved(rounds, &device, || p.batched(), || p.separate());
    println!(
        "interleaved ({rounds} rounds, 8 prompts × 1 λ, {STEPS} steps): median prompt-batched {:.2} ms, one batch \
         per prompt {:.2} ms, throughput ratio {:.2}x; largest |batched − separate| latent difference \
         {max_diff:.2e}",
        mb * 1e3,
        ms * 1e3,
        ms / mb
    );
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    if !std::env::args().any(|a| a == "--test" || a == "--list") {
        interleaved_ratio(30);
        interleaved_prompt_ratio(30);
    }
}
