//! CPU speed of the UNet forward, before (candle-transformers' stock `UNet2DConditionModel`) and
//! after ([`deradiff_sd::Unet`]: our blocks, exact GELU, the fused kernels of `deradiff-kernels`
//! on the CPU), measured side by side in one run.
//!
//! * `unet/{candle,ours}/{8,16,32,64}`: the tiny SD UNet (`tests/fixtures/tiny-sd`, blocks 32/64)
//!   at batch 2 (classifier-free guidance) for 8×8 … 64×64 latents.
//!
//! Each kernel alone: `cargo bench -p deradiff-kernels --bench kernels`. `unet_cpu_torch.py`
//! times PyTorch at the same shapes.
//!
//! Run: `cargo bench -p deradiff-sd --bench unet_cpu`. Threads: rayon's default (all cores); set
//! `RAYON_NUM_THREADS` to compare with a PyTorch run at a given `torch.set_num_threads`.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::stable_diffusion::unet_2d::UNet2DConditionModel;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use deradiff_sd::{Unet, UnetConfig};

#[path = "support/candle_unet.rs"]
mod candle_unet;
use candle_unet::candle_config;

fn tiny_sd() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures").join("tiny-sd")
}

fn randn(shape: &[usize]) -> Tensor {
    Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap()
}

fn unet(c: &mut Criterion) {
    let dir = tiny_sd().join("unet");
    let cfg_path = dir.join("config.json");
    let arch = UnetConfig::from_file(&cfg_path).unwrap().arch(&cfg_path).unwrap();
    let weights = dir.join("diffusion_pytorch_model.safetensors");
    // SAFETY: the fixture file is not modified while mapped.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, &Device::Cpu).unwrap() };
    let stock =
        UNet2DConditionModel::new(vb, arch.in_channels, arch.out_channels, false, candle_config(&arch)).unwrap();
    let ours = Unet::load(tiny_sd(), None, DType::F32, &Device::Cpu).unwrap();
    let context = randn(&[2, 77, arch.cross_attention_dim]);
    let mut g = c.benchmark_group("unet");
    for size in [8usize, 16, 32, 64] {
        let x = randn(&[2, arch.in_channels, size, size]);
        let id = format!("{size}x{size}");
        g.bench_with_input(BenchmarkId::new("candle", &id), &x, |b, x| {
            b.iter(|| black_box(stock.forward(x, 500.0, &context).unwrap()))
        });
        g.bench_with_input(BenchmarkId::new("ours", &id), &x, |b, x| {
            b.iter(|| black_box(ours.forward(x, 500.0, &context).unwrap()))
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! { name = benches; config = config(); targets = unet }
criterion_main!(benches);
