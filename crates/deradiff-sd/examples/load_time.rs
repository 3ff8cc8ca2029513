//! What checking every weight for NaN, infinity and dtype overflow costs at load.
//!
//! `cargo run --release -p deradiff-sd --example load_time -- [RUNS]`:
//!
//! 1. the tiny test checkpoints: the median time of `StableDiffusion::load` (tiny-sd with the
//!    tiny aligned UNet) and of `LoraAdapter::load` (the kohya fixture), over RUNS loads (every
//!    load reads and checks every tensor);
//! 2. a 256 MiB f32 file (64 tensors of 1 Mi values): the median time of candle's
//!    `safetensors::load` and of `load_tensors_checked` (the same load with the check), and the
//!    check's throughput, from which the cost on a full-size model follows (SD 1.5's UNet is
//!    3.4 GB in f32).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use deradiff_sd::lora::LoraAdapter;
use deradiff_sd::{LoadOptions, StableDiffusion, Unet};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> f64 {
    let _ = f(); // warm the page cache
    median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(f());
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runs: usize = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(20);
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let (sd, aligned) = (fixtures.join("tiny-sd"), fixtures.join("tiny-aligned-unet"));
    let pipeline = time(runs, || StableDiffusion::load(&sd, &[&aligned], &LoadOptions::default()).unwrap());
    let unet = Unet::load(sd.join("unet"), None, DType::F32, &Device::Cpu)?;
    let kohya = fixtures.join("lora/sd-kohya.safetensors");
    let lora = time(runs, || LoraAdapter::load(&kohya, &unet).unwrap());
    println!("tiny-sd + aligned UNet, StableDiffusion::load: {:.2} ms (median of {runs})", pipeline * 1e3);
    println!("sd-kohya LoRA (249 tensors), LoraAdapter::load: {:.2} ms (median of {runs})", lora * 1e3);

    let big = std::env::temp_dir().join(format!("deradiff-load-time-{}.safetensors", std::process::id()));
    let mut tensors = HashMap::new();
    for i in 0..64 {
        let t = Tensor::randn(0f32, 1f32, 1 << 20, &Device::Cpu)?;
        tensors.insert(format!("t{i}"), t);
    }
    candle_core::safetensors::save(&tensors, &big)?;
    drop(tensors);
    let plain = time(5, || candle_core::safetensors::load(&big, &Device::Cpu).unwrap());
    let checked = time(5, || deradiff_sd::load_tensors_checked(&big, "weights", DType::F32).unwrap());
    let to_f16 = time(5, || deradiff_sd::load_tensors_checked(&big, "weights", DType::F16).unwrap());
    let _ = std::fs::remove_file(&big);
    let gib = 0.25;
    println!(
        "256 MiB f32: candle load {:.1} ms, checked load {:.1} ms ({:+.1} ms, {:.1} GiB/s of checking), checked for f16 \
         {:.1} ms",
        plain * 1e3,
        checked * 1e3,
        (checked - plain) * 1e3,
        gib / (checked - plain).max(1e-9),
        to_f16 * 1e3
    );
    Ok(())
}
