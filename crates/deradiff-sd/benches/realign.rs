//! Single-model sampling vs two-model realigned sampling on the tiny UNet (blocks 32/64, 8×8
//! latents, classifier-free guidance: UNet batch 2), same scheduler, steps and batch.
//!
//! Goal: realigned time ÷ (2 × single-model time) ≤ 1.01 — the realignment itself (a second
//! posterior and the closed-form fusion) costs next to nothing beside the second UNet.
//!
//! The same comparison runs on the tiny SDXL UNet (`tiny-sdxl`: blocks 16/32 with two
//! transformer layers, `text_time` added conditioning, 8×8 latents).
//!
//! Run: `cargo bench -p deradiff-sd --bench realign`. After criterion's report, the bench times
//! the two runs again interleaved (so load on a shared machine hits both alike) and prints the
//! ratio of the medians and of the fastest runs. `sample_loop_only` runs the same loop with
//! denoisers that cost nothing: the cost of realignment itself beside the second UNet.
//!
//! Last, the steps-for-time trade of a sampler: realigned tiny-SDXL runs with 20 DPM++ 2M Karras
//! steps and with 50 Euler-ancestral steps (`sampler_steps_vs_time`).
//!
//! The device is `DERADIFF_DEVICE` (`cpu` by default; `cuda:0` with `--features cuda`); each
//! run ends with the device synchronised, so a GPU's queued work is inside the time.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, Criterion};
use deradiff_core::{Denoiser, FnDenoiser, NoObserver, Realigner, Sampler, SchedulerKind, SeededNoise};
use deradiff_sd::{EncodedRequest, LoadOptions, Request, StableDiffusion};

const STEPS: usize = 4;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures")
}

struct Setup {
    single: StableDiffusion,
    two: StableDiffusion,
    request: Request,
    emb_single: EncodedRequest,
    emb_two: EncodedRequest,
    one: Realigner,
    half: Realigner,
    device: Device,
}

/// `DERADIFF_DEVICE`, parsed as the CLI's `--device`.
fn bench_device() -> Device {
    let name = std::env::var("DERADIFF_DEVICE").unwrap_or_else(|_| "cpu".into());
    deradiff_sd::parse_device(&name).unwrap_or_else(|e| panic!("DERADIFF_DEVICE={name}: {e}"))
}

fn setup() -> Setup {
    setup_for("tiny-sd", "tiny-aligned-unet")
}

fn setup_for(reference: &str, aligned: &str) -> Setup {
    let device = bench_device();
    let options = LoadOptions { device: device.clone(), ..Default::default() };
    let single = StableDiffusion::load(fixtures().join(reference), &[] as &[&Path], &options).unwrap();
    let two = StableDiffusion::load(fixtures().join(reference), &[fixtures().join(aligned)], &options).unwrap();
    let request = Request {
        prompts: vec!["a red cube on a wooden table".into()],
        scheduler: SchedulerKind::EulerAncestral,
        steps: STEPS,
        guidance_scale: Some(7.5),
        ..Default::default()
    };
    let emb_single = single.encode(&request).unwrap();
    let emb_two = two.encode(&request).unwrap();
    Setup {
        single,
        two,
        request,
        emb_single,
        emb_two,
        one: Realigner::new(vec![1.0]).unwrap(),
        half: Realigner::two_model(0.5).unwrap(),
        device,
    }
}

impl Setup {
    fn run_single(&self) {
        let out = self
            .single
            .sample(&self.request, &self.emb_single, &self.one, &mut SeededNoise::new(0), &mut NoObserver)
            .unwrap();
        self.device.synchronize().unwrap();
        black_box(out);
    }

    fn run_two(&self) {
        let out = self
            .two
            .sample(&self.request, &self.emb_two, &self.half, &mut SeededNoise::new(0), &mut NoObserver)
            .unwrap();
        self.device.synchronize().unwrap();
        black_box(out);
    }
}

fn bench_realign(c: &mut Criterion) {
    let s = setup();
    let mut group = c.benchmark_group(format!("sample_tiny_unet_{STEPS}_steps_cfg"));
    group.sample_size(20).measurement_time(Duration::from_secs(8));
    group.bench_function("single_model", |b| b.iter(|| s.run_single()));
    group.bench_function("realigned_two_models", |b| b.iter(|| s.run_two()));
    group.finish();
}

/// The same loop with denoisers that cost nothing: what realignment adds besides the second
/// UNet (a second posterior and the fusion, per step).
fn bench_loop_only(c: &mut Criterion) {
    let s = setup();
    let scheduler = s.request.scheduler.build(s.two.scheduler_config(), STEPS).unwrap();
    let eps = Tensor::zeros((1, 4, 8, 8), DType::F32, &Device::Cpu).unwrap();
    let free = FnDenoiser(|_: &Tensor, _: f64| Ok(eps.clone()));
    let run = |models: Vec<&dyn Denoiser>, realigner: &Realigner| {
        let sampler = Sampler::new(scheduler.as_ref(), models, realigner.clone()).unwrap();
        black_box(
            sampler.run(&[1, 4, 8, 8], DType::F32, &Device::Cpu, &mut SeededNoise::new(0), &mut NoObserver).unwrap(),
        );
    };
    let mut group = c.benchmark_group(format!("sample_loop_only_{STEPS}_steps"));
    group.bench_function("single_model", |b| b.iter(|| run(vec![&free], &s.one)));
    group.bench_function("realigned_two_models", |b| b.iter(|| run(vec![&free, &free], &s.half)));
    group.finish();
}

fn bench_realign_sdxl(c: &mut Criterion) {
    let s = setup_for("tiny-sdxl", "tiny-sdxl-aligned-unet");
    let mut group = c.benchmark_group(format!("sample_tiny_sdxl_unet_{STEPS}_steps_cfg"));
    group.sample_size(20).measurement_time(Duration::from_secs(8));
    group.bench_function("single_model", |b| b.iter(|| s.run_single()));
    group.bench_function("realigned_two_models", |b| b.iter(|| s.run_two()));
    group.finish();
}

criterion_group!(benches, bench_realign, bench_realign_sdxl, bench_loop_only);

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Alternates the two runs and prints realigned ÷ (2 × single) from the medians.
fn interleaved_ratio(label: &str, s: &Setup, rounds: usize) {
    for _ in 0..3 {
        s.run_single();
        s.run_two();
    }
    let (mut single, mut two) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
    for _ in 0..rounds {
        let t = Instant::now();
        s.run_single();
        single.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        s.run_two();
        two.push(t.elapsed().as_secs_f64());
    }
    let (min_s, min_t) =
        (single.iter().copied().fold(f64::INFINITY, f64::min), two.iter().copied().fold(f64::INFINITY, f64::min));
    let (ms, mt) = (median(&mut single), median(&mut two));
    println!(
        "{label} interleaved ({rounds} rounds, {STEPS} steps): median single {:.2} ms, realigned {:.2} ms, \
         realigned / (2 x single) = {:.4}; fastest runs: {:.2} ms, {:.2} ms, ratio {:.4}",
        ms * 1e3,
        mt * 1e3,
        mt / (2.0 * ms),
        min_s * 1e3,
        min_t * 1e3,
        min_t / (2.0 * min_s)
    );
}

/// Realigned tiny-SDXL runs (two models, guidance 5) with the sampler people use at few steps
/// against the paper's: 20 DPM++ 2M Karras steps vs 50 Euler-ancestral steps, interleaved;
/// prints the steps, UNet evaluations and median time of each.
fn sampler_steps_vs_time(rounds: usize) {
    let s = setup_for("tiny-sdxl", "tiny-sdxl-aligned-unet");
    let mut karras = s.two.scheduler_config().clone();
    karras.use_karras_sigmas = Some(true);
    let runs = [
        ("DPM++ 2M Karras", SchedulerKind::DpmSolverMultistep, Some(karras), 20),
        ("Euler ancestral", SchedulerKind::EulerAncestral, None, 50),
    ];
    let requests: Vec<(&str, Request)> = runs
        .iter()
        .map(|(label, kind, config, steps)| {
            let request =
                Request { scheduler: *kind, scheduler_config: config.clone(), steps: *steps, ..s.request.clone() };
            (*label, request)
        })
        .collect();
    let mut times = vec![Vec::with_capacity(rounds); requests.len()];
    for round in 0..rounds + 2 {
        for ((_, request), t) in requests.iter().zip(times.iter_mut()) {
            let start = Instant::now();
            let out = s.two.sample(request, &s.emb_two, &s.half, &mut SeededNoise::new(0), &mut NoObserver).unwrap();
            s.device.synchronize().unwrap();
            black_box(out);
            if round >= 2 {
                t.push(start.elapsed().as_secs_f64());
            }
        }
    }
    for ((label, request), t) in requests.iter().zip(times.iter_mut()) {
        let m = median(t);
        println!(
            "realigned tiny-SDXL, {label}: {} steps ({} UNet passes of batch 2 per model), median {:.2} ms ({:.3} ms / step)",
            request.steps,
            request.steps,
            m * 1e3,
            m * 1e3 / request.steps as f64
        );
    }
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    // `cargo test --benches` runs this binary with `--test`: criterion then runs each benchmark
    // once; skip the long interleaved measurement there.
    if !std::env::args().any(|a| a == "--test" || a == "--list") {
        interleaved_ratio("SD (tiny-sd)", &setup(), 100);
        interleaved_ratio("SDXL (tiny-sdxl)", &setup_for("tiny-sdxl", "tiny-sdxl-aligned-unet"), 100);
        sampler_steps_vs_time(30);
    }
}
