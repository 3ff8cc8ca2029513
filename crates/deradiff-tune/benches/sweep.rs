//! A batched sweep of 8 λ (each model once per step on the stacked batch) against 8 separate
//! realigned sampling runs, on the analytic testbed (exact Gaussian-mixture denoisers, DDPM).
//!
//!     cargo bench -p deradiff-tune --bench sweep
//!
//! Both produce the same samples (bit for bit). After criterion's report the two are timed again
//! interleaved (load on a shared machine then hits both alike) and the throughput ratio of the
//! medians is printed. The goal of ≥ 1.5× is stated for the
//! tiny Stable Diffusion UNet, where batching amortises per-call work (kernel launches, weight
//! reads, attention set-up); the exact analytic denoiser's cost is proportional to the number of
//! rows, so what batching saves here is the per-call and per-step overhead only.

use std::hint::black_box;
use std::time::Instant;

use candle_core::{DType, Device};
use criterion::{criterion_group, Criterion, Throughput};
use deradiff_analytic::{demo_linear_reward, demo_mixture};
use deradiff_core::{Denoiser, NoObserver, Realigner, Sampler, SchedulerKind, SeededNoise};
use deradiff_tune::{AnalyticModel, AnalyticSetup, BatchedSampler, SweepModel};

const LAMBDAS: [f64; 8] = [0.0, 0.15, 0.3, 0.45, 0.6, 0.75, 0.9, 1.05];

fn model() -> AnalyticModel {
    let mut setup = AnalyticSetup::new(demo_mixture(3).unwrap(), demo_linear_reward(), 1.0);
    setup.scheduler = SchedulerKind::Ddpm;
    setup.steps = 20;
    AnalyticModel::new(setup).unwrap()
}

fn batched(model: &AnalyticModel, realigners: &[Realigner], samples: usize) -> Vec<candle_core::Tensor> {
    let sampler = BatchedSampler::new(model.scheduler(), vec![model.reference(), model.anchor()]).unwrap();
    sampler.run(realigners, &[samples, 2], DType::F64, &Device::Cpu, &mut SeededNoise::new(0), &mut |_| Ok(())).unwrap()
}

fn separate(model: &AnalyticModel, realigners: &[Realigner], samples: usize) -> Vec<candle_core::Tensor> {
    realigners
        .iter()
        .map(|r| {
            Sampler::new(model.scheduler(), vec![model.reference() as &dyn Denoiser, model.anchor()], r.clone())
                .unwrap()
                .run(&[samples, 2], DType::F64, &Device::Cpu, &mut SeededNoise::new(0), &mut NoObserver)
                .unwrap()
                .latent
        })
        .collect()
}

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
    let model = model();
    let realigners: Vec<Realigner> = LAMBDAS.iter().map(|&l| Realigner::two_model(l).unwrap()).collect();
    for samples in [16usize, 256] {
        let (a, b) = (batched(&model, &realigners, samples), separate(&model, &realigners, samples));
        let same = a.iter().zip(&b).all(|(x, y)| x.to_vec2::<f64>().unwrap() == y.to_vec2::<f64>().unwrap());
        let (mut tb, mut ts) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let t = Instant::now();
            black_box(batched(&model, &realigners, samples));
            tb.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            black_box(separate(&model, &realigners, samples));
            ts.push(t.elapsed().as_secs_f64());
        }
        let (mb, ms) = (median(&mut tb), median(&mut ts));
        println!(
            "interleaved ({rounds} rounds, 8 λ × {samples} samples, 20 steps): median batched {:.3} ms, 8 separate \
             runs {:.3} ms, throughput ratio {:.2}x; identical samples: {same}",
            mb * 1e3,
            ms * 1e3,
            ms / mb
        );
    }
}

fn bench(c: &mut Criterion) {
    let model = model();
    let realigners: Vec<Realigner> = LAMBDAS.iter().map(|&l| Realigner::two_model(l).unwrap()).collect();
    for samples in [16usize, 256] {
        let mut group = c.benchmark_group(format!("sweep_8_lambdas_{samples}_samples_20_steps"));
        group.throughput(Throughput::Elements((LAMBDAS.len() * samples) as u64));
        group.sample_size(20);
        group.bench_function("batched (one model call per step)", |b| {
            b.iter(|| black_box(batched(&model, &realigners, samples)))
        });
        group.bench_function("8 separate runs", |b| b.iter(|| black_box(separate(&model, &realigners, samples))));
        group.finish();
    }
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    // `cargo test --benches` runs this binary with `--test`: skip the interleaved timing there.
    if !std::env::args().any(|a| a == "--test" || a == "--list") {
        interleaved_ratio(200);
    }
}
