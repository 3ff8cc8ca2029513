//! Fusion bandwidth next to a plain copy of the same bytes, and one scheduler posterior.
//!
//! Throughput is bytes moved: a copy reads and writes N floats (2N·4 bytes); fusing K scalar-
//! variance posteriors reads K means and writes one (K+1)N·4 bytes; with diagonal variances it
//! also reads K variances and writes one ((2K+2)N·4 bytes). The ratio of fusion to copy
//! GiB/s is the figure of merit (goal: ≥ 0.5 for K = 2, scalar).
//!
//! Run: `cargo bench --bench fusion`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use deradiff::{DType, Device, Tensor};
use deradiff::{NoiseSource, Posterior, Realigner, SchedulerConfig, SchedulerKind, SeededNoise, Variance};

const SHAPE: [usize; 4] = [1, 4, 128, 128];

fn randn(noise: &mut SeededNoise) -> Tensor {
    noise.standard_normal(&deradiff::candle::Shape::from_dims(&SHAPE), DType::F32, &Device::Cpu).unwrap()
}

fn posteriors(k: usize, diagonal: bool) -> Vec<Posterior> {
    let mut noise = SeededNoise::new(0);
    (0..k)
        .map(|i| Posterior {
            mean: randn(&mut noise),
            variance: if diagonal {
                Variance::Diagonal((randn(&mut noise).abs().unwrap() + 0.1).unwrap())
            } else {
                Variance::Scalar(0.5 + 0.1 * i as f64)
            },
        })
        .collect()
}

fn bench_fusion(c: &mut Criterion) {
    let n: u64 = SHAPE.iter().product::<usize>() as u64;
    let mut group = c.benchmark_group("fusion_1x4x128x128_f32");

    let src = randn(&mut SeededNoise::new(1));
    group.throughput(Throughput::Bytes(2 * n * 4));
    group.bench_function("copy", |b| b.iter(|| black_box(src.copy().unwrap())));

    for k in [2usize, 4] {
        let weights: Vec<f64> = {
            let mut w = vec![0.7 / (k - 1) as f64; k];
            w[0] = 0.3;
            w
        };
        let realigner = Realigner::new(weights).unwrap();
        for diagonal in [false, true] {
            let ps = posteriors(k, diagonal);
            let bytes = if diagonal { (2 * k as u64 + 2) * n * 4 } else { (k as u64 + 1) * n * 4 };
            group.throughput(Throughput::Bytes(bytes));
            let name = format!("fuse_k{k}_{}", if diagonal { "diagonal" } else { "scalar" });
            group.bench_function(name, |b| b.iter(|| black_box(realigner.fuse(black_box(&ps), 0).unwrap())));
        }
    }
    group.finish();
}

fn bench_posterior(c: &mut Criterion) {
    let n: u64 = SHAPE.iter().product::<usize>() as u64;
    let mut group = c.benchmark_group("posterior_1x4x128x128_f32");
    let mut noise = SeededNoise::new(2);
    let (x, eps) = (randn(&mut noise), randn(&mut noise));
    let cfg = SchedulerConfig::stable_diffusion_xl();
    group.throughput(Throughput::Bytes(3 * n * 4));
    for (name, kind) in [
        ("euler_ancestral", SchedulerKind::EulerAncestral),
        ("ddim", SchedulerKind::Ddim { eta: 0.0 }),
        ("ddpm", SchedulerKind::Ddpm),
    ] {
        let s = kind.build(&cfg, 50).unwrap();
        group.bench_function(name, |b| b.iter(|| black_box(s.posterior(black_box(&x), black_box(&eps), 25).unwrap())));
    }
    group.finish();
}

criterion_group!(benches, bench_fusion, bench_posterior);
criterion_main!(benches);
