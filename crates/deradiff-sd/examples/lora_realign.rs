//! Peak memory and per-step UNet time of SD 1.5-shaped two-model realignment on the CPU: a
//! reference and a **full** aligned UNet ("two-unets": two UNets in memory, two guided passes
//! per step) against a reference with a **LoRA**-aligned model ("lora": one UNet with the
//! adapter attached, one joint pass per step whose adapted layers add the low-rank delta on the
//! aligned rows only).
//!
//! The UNet is runwayml/stable-diffusion-v1-5's architecture with random weights; the LoRA is
//! what diffusers' DPO training script trains (rank 8 on every attention `to_q`, `to_k`, `to_v`,
//! `to_out.0`). A step is what the pipeline runs per denoising step with classifier-free
//! guidance: each model sees a batch of 2 (unconditional and conditional rows) at t = 500, with
//! 77 context tokens. Run each variant in its own process (the peak `VmHWM` is the process's):
//!
//! ```text
//! cargo run --release -p deradiff-sd --example lora_realign -- <two-unets|lora|lora-seq|batch4> [size=32] [runs=3]
//! ```
//!
//! It prints each step's time (the device synchronised before and after), the median, the
//! resident memory after loading and the peak. The device is `DERADIFF_DEVICE` (`cpu` by
//! default; `cuda:0` with `--features cuda`).
//! `batch4` (one UNet without adapter, batch 4) shows what the joint pass costs without the
//! low-rank deltas; `lora-seq` runs the joint UNet once per model (weights still shared).

use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use deradiff_sd::lora::{LoraAdapter, LoraFormat, LoraLayer};
use deradiff_sd::{RowGroup, Unet, UnetConfig};

#[path = "../benches/support/sd15.rs"]
mod sd15;
use sd15::{device_from_env, median, status_mib, timed, RandomWeights, SD15_UNET};

/// The DPO script's adapter: rank 8 on the attention projections, random A and B.
fn dpo_lora(unet: &Unet, rank: usize, device: &Device) -> candle_core::Result<LoraAdapter> {
    let mut layers = BTreeMap::new();
    for (path, shape) in unet.layer_shapes() {
        let attention = ["to_q", "to_k", "to_v", "to_out.0"].iter().any(|p| path.ends_with(&format!(".{p}")));
        if !attention {
            continue;
        }
        let (out, inp) = (shape[0], shape[1]);
        let down = Tensor::randn(0f32, (1.0 / inp as f64).sqrt() as f32, (rank, inp), device)?;
        let up = Tensor::randn(0f32, 0.01, (out, rank), device)?;
        layers.insert(path.clone(), LoraLayer { down, up, alpha: Some(rank as f64), origin: path.clone() });
    }
    Ok(LoraAdapter::from_layers(layers, LoraFormat::Diffusers, "random-dpo-lora"))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let variant = args.first().map(String::as_str).unwrap_or("lora").to_string();
    let size: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(32);
    let runs: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(3);
    let (dtype, device) = (DType::F32, device_from_env()?);
    let config = UnetConfig::from_json(SD15_UNET, "sd15/unet/config.json")?;
    let arch = config.arch("sd15/unet/config.json")?;
    let build = || -> deradiff_sd::Result<Unet> {
        let vb = VarBuilder::from_backend(Box::new(RandomWeights), dtype, device.clone());
        Unet::from_var_builder(vb, config.clone(), "sd15-random", dtype, &device)
    };

    let t0 = Instant::now();
    type Step = dyn Fn(&Tensor, &Tensor) -> deradiff_sd::Result<Vec<Tensor>>;
    let (step, adapter_params): (Box<Step>, usize) = match variant.as_str() {
        "two-unets" => {
            let (reference, aligned) = (build()?, build()?);
            let step =
                move |x: &Tensor, c: &Tensor| Ok(vec![reference.forward(x, 500.0, c)?, aligned.forward(x, 500.0, c)?]);
            (Box::new(step), 0)
        }
        "lora" | "lora-base-rows" => {
            let base_rows = variant == "lora-base-rows";
            let base = build()?;
            let adapter = dpo_lora(&base, 8, &device)?;
            let params = adapter.layers().values().map(|l| l.down.elem_count() + l.up.elem_count()).sum();
            let joint = base.with_adapters(&[(&adapter, 1.0)])?;
            drop((base, adapter));
            let step = move |x: &Tensor, c: &Tensor| {
                let aligned = if base_rows { None } else { Some(0) };
                let groups = [RowGroup { adapter: None, rows: 2 }, RowGroup { adapter: aligned, rows: 2 }];
                let out =
                    joint.forward_rows(&Tensor::cat(&[x, x], 0)?, 500.0, &Tensor::cat(&[c, c], 0)?, None, &groups)?;
                Ok(vec![out.narrow(0, 0, 2)?, out.narrow(0, 2, 2)?])
            };
            (Box::new(step), params)
        }
        "lora-seq" => {
            // The same joint UNet, each model's rows in a call of its own (weights shared).
            let base = build()?;
            let adapter = dpo_lora(&base, 8, &device)?;
            let params = adapter.layers().values().map(|l| l.down.elem_count() + l.up.elem_count()).sum();
            let joint = base.with_adapters(&[(&adapter, 1.0)])?;
            drop((base, adapter));
            let step = move |x: &Tensor, c: &Tensor| {
                let run = |a| joint.forward_rows(x, 500.0, c, None, &[RowGroup { adapter: a, rows: 2 }]);
                Ok(vec![run(None)?, run(Some(0))?])
            };
            (Box::new(step), params)
        }
        "batch4" => {
            // For reading the others: one UNet, no adapter, the joint pass's batch of 4.
            let unet = build()?;
            let step = move |x: &Tensor, c: &Tensor| {
                let out = unet.forward(&Tensor::cat(&[x, x], 0)?, 500.0, &Tensor::cat(&[c, c], 0)?)?;
                Ok(vec![out.narrow(0, 0, 2)?, out.narrow(0, 2, 2)?])
            };
            (Box::new(step), 0)
        }
        other => return Err(format!("variant {other}: two-unets, lora, lora-seq or batch4").into()),
    };
    let load_s = t0.elapsed().as_secs_f64();
    let rss_loaded = status_mib("VmRSS:");

    let x = Tensor::randn(0f32, 1.0, (2, arch.in_channels, size, size), &device)?;
    let context = Tensor::randn(0f32, 1.0, (2, 77, arch.cross_attention_dim), &device)?;
    let mut times = Vec::with_capacity(runs);
    for i in 0..=runs {
        let (outs, s) = timed(&device, || step(&x, &context))?;
        let spread = (&outs[1] - &outs[0])?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        println!(
            "{} step: {s:.2} s (aligned − reference max |Δ| {spread:.3e})",
            if i == 0 { "warm-up" } else { "timed" }
        );
        if i > 0 {
            times.push(s);
        }
    }
    let median = median(&times);
    println!(
        "{variant} f32 {size}x{size}: median {median:.2} s per step over {runs}; built in {load_s:.1} s; adapter \
         {adapter_params} parameters; RSS after build {rss_loaded:.0} MiB, peak (VmHWM) {:.0} MiB",
        status_mib("VmHWM:"),
    );
    Ok(())
}
