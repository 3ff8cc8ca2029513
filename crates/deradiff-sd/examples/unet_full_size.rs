//! Time and peak memory of one full-size SD1.5-shaped UNet forward on the CPU, for candle's stock
//! `UNet2DConditionModel` ("before") or [`deradiff_sd::Unet`] ("after").
//!
//! The architecture is runwayml/stable-diffusion-v1-5's `unet/config.json` (blocks
//! 320/640/1280/1280, 2 layers per block, 8 heads, cross-attention 768, 860M parameters) with
//! random weights (no checkpoint needed); the input is a batch of 2 (classifier-free guidance)
//! latents `4 × size × size` and 77 context tokens. It prints the time of each forward (one
//! warm-up, then `runs` timed), their median, the resident memory after loading and the peak
//! (`VmHWM`): run each variant in its own process, since the peak is the process's.
//!
//! ```text
//! cargo run --release -p deradiff-sd --example unet_full_size -- <candle|ours> [size=64] [f32|f16|bf16] [runs=2]
//! ```
//!
//! The device is `DERADIFF_DEVICE` (`cpu` by default; `cuda:0` with `--features cuda`): each
//! forward is timed with the device synchronised before and after. On the CPU the memory figures
//! are the process's; on a GPU read its own (`nvidia-smi`). Threads: rayon's default (all
//! cores), or `RAYON_NUM_THREADS`. The PyTorch counterpart is
//! `benches/unet_full_size_torch.py`.

use std::time::Instant;

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::stable_diffusion::unet_2d::UNet2DConditionModel;
use deradiff_sd::{Unet, UnetConfig};

#[path = "../benches/support/candle_unet.rs"]
mod candle_unet;
#[path = "../benches/support/sd15.rs"]
mod sd15;
use candle_unet::candle_config;
use sd15::{device_from_env, median, status_mib, timed, RandomWeights, SD15_UNET};

/// One UNet forward on (latents, context) at t = 500.
type Forward = dyn Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let variant = args.first().map(String::as_str).unwrap_or("ours").to_string();
    let size: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(64);
    let dtype = match args.get(2).map(String::as_str).unwrap_or("f32") {
        "f32" => DType::F32,
        "f16" => DType::F16,
        "bf16" => DType::BF16,
        other => return Err(format!("dtype {other}: f32, f16 or bf16").into()),
    };
    let runs: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(2);
    let device = device_from_env()?;
    let config = UnetConfig::from_json(SD15_UNET, "sd15/unet/config.json")?;
    let arch = config.arch("sd15/unet/config.json")?;
    let vb = VarBuilder::from_backend(Box::new(RandomWeights), dtype, device.clone());

    let t0 = Instant::now();
    let forward: Box<Forward> = match variant.as_str() {
        "candle" => {
            let m = UNet2DConditionModel::new(vb, arch.in_channels, arch.out_channels, false, candle_config(&arch))?;
            Box::new(move |x, c| m.forward(x, 500.0, c))
        }
        "ours" => {
            let m = Unet::from_var_builder(vb, config, "sd15-random", dtype, &device)?;
            Box::new(move |x, c| m.forward(x, 500.0, c).map_err(|e| candle_core::Error::Msg(e.to_string())))
        }
        other => return Err(format!("variant {other}: candle or ours").into()),
    };
    let load_s = t0.elapsed().as_secs_f64();
    let rss_loaded = status_mib("VmRSS:");

    let x = Tensor::randn(0f32, 1.0, (2, arch.in_channels, size, size), &device)?.to_dtype(dtype)?;
    let context = Tensor::randn(0f32, 1.0, (2, 77, arch.cross_attention_dim), &device)?.to_dtype(dtype)?;
    let mut times = Vec::with_capacity(runs);
    for i in 0..=runs {
        let (out, s) = timed(&device, || forward(&x, &context))?;
        let max = out.to_dtype(DType::F32)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        println!("{} forward: {s:.2} s (output max |x| {max:.3})", if i == 0 { "warm-up" } else { "timed" });
        if i > 0 {
            times.push(s);
        }
    }
    let median = median(&times);
    println!(
        "{variant} {dtype:?} on {device:?} batch 2 {size}x{size}: median {median:.2} s per forward over {runs}; built in {load_s:.1} s; \
         RSS after build {rss_loaded:.0} MiB, peak (VmHWM) {:.0} MiB; threads {}",
        status_mib("VmHWM:"),
        rayon::current_num_threads()
    );
    Ok(())
}
