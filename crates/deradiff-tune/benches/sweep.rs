//! A batched sweep of 8 λ (each model once per step on the stacked batch) against 8 separate
//! realigned sampling runs, on the analytic testbed (exact Gaussian-mixture denoisers, DDPM).
//!
//!     cargo bench -p deradiff-tune --bench sweep
//!
//! Both produce the same samples (bit for bit). The goal of ≥ 1.5× is stated for the
//! tiny Stable Diffusion UNet, where batching amortises per-call work (kernel launches, weight
//! reads, attention set-up); the exact analytic denoiser's cost is proportional to the number of
//! rows, so what batching saves here is the per-call and per-step overhead only.

use std::hint::black_box;

use candle_core::{DType, Device};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use deradiff_analytic::{demo_linear_reward, demo_mixture};
use deradiff_core::{Denoiser, NoObserver, Realigner, Sampler, SchedulerKind, SeededNoise};
use deradiff_tune::{AnalyticModel, AnalyticSetup, BatchedSampler, SweepModel};

const LAMBDAS: [f64; 8] = [0.0, 0.15, 0.3, 0.45, 0.6, 0.75, 0.9, 1.05];

fn bench(c: &mut Criterion) {
    for samples in [16usize, 256] {
        let mut setup = AnalyticSetup::new(demo_mixture(3).unwrap(), demo_linear_reward(), 1.0);
        setup.scheduler = SchedulerKind::Ddpm;
        setup.steps = 20;
        let model = AnalyticModel::new(setup).unwrap();
        let denoisers: Vec<&dyn Denoiser> = vec![model.reference(), model.anchor()];
        let realigners: Vec<Realigner> = LAMBDAS.iter().map(|&l| Realigner::two_model(l).unwrap()).collect();
        let shape = [samples, 2];

        let mut group = c.benchmark_group(format!("sweep_8_lambdas_{samples}_samples_20_steps"));
        group.throughput(Throughput::Elements((LAMBDAS.len() * samples) as u64));
        group.sample_size(20);
        group.bench_function("batched (one model call per step)", |b| {
            let sampler = BatchedSampler::new(model.scheduler(), denoisers.clone()).unwrap();
            b.iter(|| {
                let out = sampler
                    .run(&realigners, &shape, DType::F64, &Device::Cpu, &mut SeededNoise::new(0), &mut |_| Ok(()))
                    .unwrap();
                black_box(out)
            })
        });
        group.bench_function("8 separate runs", |b| {
            b.iter(|| {
                let out: Vec<_> = realigners
                    .iter()
                    .map(|r| {
                        Sampler::new(model.scheduler(), denoisers.clone(), r.clone())
                            .unwrap()
                            .run(&shape, DType::F64, &Device::Cpu, &mut SeededNoise::new(0), &mut NoObserver)
                            .unwrap()
                            .latent
                    })
                    .collect();
                black_box(out)
            })
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
