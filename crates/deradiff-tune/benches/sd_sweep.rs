//! A batched sweep of 8 λ against 8 separate realigned runs on the tiny Stable Diffusion UNet
//! (deradiff-sd's test checkpoint: blocks 32/64, 8×8 latents, classifier-free guidance 7.5,
//! Euler ancestral, CPU, f32).
//!
//!     cargo bench -p deradiff-tune --bench sd_sweep
//!
//! Batched: the 8 λ share the batch dimension, so each UNet runs once per step on a batch of
//! 8 latents (16 with guidance). Separate: 8 runs of deradiff-core's `Sampler`, each UNet on a
//! batch of 1 (2 with guidance). Both from the same seed (every λ gets the same noise). After
//! criterion's report the two are timed again interleaved (so that load on a shared machine
//! hits both alike) and the throughput ratio of the medians is printed, with the largest
//! difference between the batched and the separate samples.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::Tensor;
use criterion::{criterion_group, Criterion, Throughput};
use deradiff_core::{Denoiser, NoObserver, Realigner, Sampler, Scheduler, SchedulerKind, SeededNoise};
use deradiff_sd::{LoadOptions, PromptEmbeddings, Request, StableDiffusion};
use deradiff_tune::BatchedSampler;

const STEPS: usize = 10;
const LAMBDAS: [f64; 8] = [0.0, 0.15, 0.3, 0.45, 0.6, 0.75, 0.9, 1.05];

struct Setup {
    sd: StableDiffusion,
    scheduler: Box<dyn Scheduler>,
    one: PromptEmbeddings,
    eight: PromptEmbeddings,
    realigners: Vec<Realigner>,
    shape: [usize; 4],
    guidance: f64,
}

fn setup() -> Setup {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deradiff-sd/tests/fixtures");
    let sd =
        StableDiffusion::load(fixtures.join("tiny-sd"), &[fixtures.join("tiny-aligned-unet")], &LoadOptions::default())
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

fn bench(c: &mut Criterion) {
    let s = setup();
    let mut group = c.benchmark_group(format!("tiny_sd_8_lambdas_{STEPS}_steps_cfg"));
    group.throughput(Throughput::Elements(LAMBDAS.len() as u64));
    group.sample_size(10);
    group.bench_function("batched (one UNet call per step)", |b| b.iter(|| black_box(s.batched())));
    group.bench_function("8 separate runs", |b| b.iter(|| black_box(s.separate())));
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

fn interleaved_ratio(rounds: usize) {
    let s = setup();
    let (a, b) = (s.batched(), s.separate());
    let max_diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| {
            (x - y).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
        })
        .fold(0.0f32, f32::max);
    let (mut batched, mut separate) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        black_box(s.batched());
        batched.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        black_box(s.separate());
        separate.push(t.elapsed().as_secs_f64());
    }
    let (mb, ms) = (median(&mut batched), median(&mut separate));
    println!(
        "interleaved ({rounds} rounds, 8 λ, {STEPS} steps): median batched {:.2} ms, 8 separate runs {:.2} ms, \
         throughput ratio {:.2}x; largest |batched − separate| latent difference {max_diff:.2e}",
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
    }
}
