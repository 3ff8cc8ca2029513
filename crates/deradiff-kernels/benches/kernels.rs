//! CPU speed of each fused kernel, before (candle's ops, the `*_reference` functions) and after
//! (ours), measured side by side in one run.
//!
//! * `attention/{candle,ours}/…`: the tiny SD UNet's attention calls (batch 2 × 2 heads of dim 16)
//!   over 16×16, 32×32, 64×64 latents' tokens and cross-attention to 77 tokens, and SD 1.5's
//!   first level (8 heads of 40); `attention_reference` (matmul + softmax + matmul) vs
//!   `attention`.
//! * `group_norm_silu/{candle,ours}/…`: `candle_nn::GroupNorm` + SiLU vs `group_norm`.
//! * `conv/{candle,ours}/…`: the tiny UNet's convolutions and SD 1.5's 3×3 ones at each level, at
//!   batch 2 (`Ci→Co`, kernel, spatial size, stride): `conv2d_reference` (candle's `conv2d` +
//!   bias) vs `conv2d`.
//! * `linear/{candle,ours}/…`: the attention projection and the feed-forward's two linears of the
//!   tiny UNet and of SD 1.5's first level over 64×64 latents' tokens at batch 2:
//!   `candle_nn::Linear` vs `linear`.
//! * `geglu/{candle,ours}/…`: the GEGLU gating of those feed-forwards: candle's chunk +
//!   `gelu_erf` + mul vs `geglu`.
//!
//! `crates/deradiff-sd/benches/unet_cpu_torch.py` times PyTorch at the same shapes; the whole
//! UNet forward is `cargo bench -p deradiff-sd --bench unet_cpu`.
//!
//! Run: `cargo bench -p deradiff-kernels --bench kernels` (add a filter, e.g. `-- attention`, for
//! part of it). Threads: rayon's default (all cores); set `RAYON_NUM_THREADS` to compare with a
//! PyTorch run at a given `torch.set_num_threads`.

use std::hint::black_box;
use std::time::Duration;

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use deradiff_kernels::{
    attention, attention_reference, conv2d, conv2d_reference, geglu, geglu_reference, group_norm, group_norm_reference,
    linear, linear_reference,
};

fn randn(shape: &[usize]) -> Tensor {
    Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap()
}

/// Attention shapes (name, N = batch × heads, Lq, Lk, D): the tiny UNet's self-attention over
/// 16×16 … 64×64 latents and its cross-attention to 77 tokens (2 heads of 16, batch 2), 8 heads of
/// 8, and SD 1.5's first level at 64×64 latents (8 heads of 40, batch 2). The same list is in
/// `unet_cpu_torch.py`.
const ATTENTION_SHAPES: &[(&str, usize, usize, usize, usize)] = &[
    ("self_16x16", 4, 256, 256, 16),
    ("self_32x32", 4, 1024, 1024, 16),
    ("self_64x64", 4, 4096, 4096, 16),
    ("cross_64x64", 4, 4096, 77, 16),
    ("self_32x32_8heads_d8", 16, 1024, 1024, 8),
    ("sd15_self_64x64", 16, 4096, 4096, 40),
    ("sd15_cross_64x64", 16, 4096, 77, 40),
];

fn kernels(c: &mut Criterion) {
    let mut g = c.benchmark_group("attention");
    for &(name, n, lq, lk, d) in ATTENTION_SHAPES {
        let (q, k, v) = (randn(&[n, lq, d]), randn(&[n, lk, d]), randn(&[n, lk, d]));
        let scale = 1.0 / (d as f64).sqrt();
        // candle's path would hold the 16 × 4096 × 4096 scores of SD 1.5's first level (1 GiB).
        if n * lq * lk <= 1 << 26 {
            g.bench_function(BenchmarkId::new("candle", name), |b| {
                b.iter(|| black_box(attention_reference(&q, &k, &v, scale).unwrap()))
            });
        }
        g.bench_function(BenchmarkId::new("ours", name), |b| {
            b.iter(|| black_box(attention(&q, &k, &v, scale).unwrap()))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("group_norm_silu");
    for (name, shape) in
        [("2x32x64x64", [2, 32, 64, 64]), ("2x64x32x32", [2, 64, 32, 32]), ("2x96x16x16", [2, 96, 16, 16])]
    {
        let x = randn(&shape);
        let (w, bias) = (randn(&[shape[1]]), randn(&[shape[1]]));
        g.bench_function(BenchmarkId::new("candle", name), |b| {
            b.iter(|| black_box(group_norm_reference(&x, 32, &w, &bias, 1e-5, true).unwrap()))
        });
        g.bench_function(BenchmarkId::new("ours", name), |b| {
            b.iter(|| black_box(group_norm(&x, 32, &w, &bias, 1e-5, true).unwrap()))
        });
    }
    g.finish();
}

fn conv(c: &mut Criterion) {
    let mut g = c.benchmark_group("conv");
    // (name, Ci, Co, kernel, spatial size, stride, padding)
    for (name, ci, co, k, size, stride, pad) in [
        ("32to32_3x3_64", 32, 32, 3, 64, 1, 1),
        ("64to64_3x3_32", 64, 64, 3, 32, 1, 1),
        ("4to32_3x3_64", 4, 32, 3, 64, 1, 1),
        ("32to4_3x3_64", 32, 4, 3, 64, 1, 1),
        ("64to32_1x1_64", 64, 32, 1, 64, 1, 0),
        ("32to32_3x3_64_s2", 32, 32, 3, 64, 2, 1),
        ("sd15_320to320_3x3_64", 320, 320, 3, 64, 1, 1),
        ("sd15_640to640_3x3_32", 640, 640, 3, 32, 1, 1),
        ("sd15_1280to1280_3x3_16", 1280, 1280, 3, 16, 1, 1),
        ("sd15_1280to1280_3x3_8", 1280, 1280, 3, 8, 1, 1),
    ] {
        let (x, w, bias) = (randn(&[2, ci, size, size]), (randn(&[co, ci, k, k]) * 0.1).unwrap(), randn(&[co]));
        g.bench_function(BenchmarkId::new("candle", name), |b| {
            b.iter(|| black_box(conv2d_reference(&x, &w, Some(&bias), stride, pad).unwrap()))
        });
        g.bench_function(BenchmarkId::new("ours", name), |b| {
            b.iter(|| black_box(conv2d(&x, &w, Some(&bias), stride, pad).unwrap()))
        });
    }
    g.finish();
}

/// Linear shapes (name, tokens = batch 2 × 64×64 latents, K, N), as in `unet_cpu_torch.py`.
const LINEAR_SHAPES: &[(&str, usize, usize, usize)] = &[
    ("to_q_32", 8192, 32, 32),
    ("ff_proj_32", 8192, 32, 256),
    ("ff_out_32", 8192, 128, 32),
    ("sd15_to_q_320", 8192, 320, 320),
    ("sd15_ff_proj_320", 8192, 320, 2560),
    ("sd15_ff_out_320", 8192, 1280, 320),
];

fn linear_and_geglu(c: &mut Criterion) {
    let mut g = c.benchmark_group("linear");
    for &(name, m, k, n) in LINEAR_SHAPES {
        let (x, w, bias) = (randn(&[2, m / 2, k]), (randn(&[n, k]) * 0.1).unwrap(), randn(&[n]));
        g.bench_function(BenchmarkId::new("candle", name), |b| {
            b.iter(|| black_box(linear_reference(&x, &w, Some(&bias)).unwrap()))
        });
        g.bench_function(BenchmarkId::new("ours", name), |b| {
            b.iter(|| black_box(linear(&x, &w, Some(&bias)).unwrap()))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("geglu");
    // (name, tokens, 2F): the feed-forward projections' outputs above.
    for (name, m, two_f) in [("tiny_2x4096x256", 8192, 256), ("sd15_2x4096x2560", 8192, 2560)] {
        let x = randn(&[2, m / 2, two_f]);
        g.bench_function(BenchmarkId::new("candle", name), |b| b.iter(|| black_box(geglu_reference(&x).unwrap())));
        g.bench_function(BenchmarkId::new("ours", name), |b| b.iter(|| black_box(geglu(&x).unwrap())));
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! { name = benches; config = config(); targets = kernels, conv, linear_and_geglu }
criterion_main!(benches);
