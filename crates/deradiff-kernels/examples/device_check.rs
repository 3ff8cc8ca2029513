//! Every kernel's device path on a GPU against the CPU kernels in f32, at SD shapes: what
//! `tests/device_path.rs` checks on the CPU, run where the device path really runs (cuBLAS,
//! cuDNN and candle's CUDA kernels, including the layouts only a GPU takes, such as `proj_in`'s
//! GEMM reading the image layout in place). Prints one line per kernel and dtype with the error
//! relative to the largest output and exits with 1 if any exceeds its limit (1e-4 in f32, 2e-3 in
//! f16, 1e-2 in bf16; f32 GEMMs on a GPU may use other summation orders).
//!
//! ```text
//! DERADIFF_DEVICE=cuda:0 device_check        # built with --features cuda (and cudnn)
//! DERADIFF_DEVICE=cpu device_check           # the device path on the CPU: checks the check
//! ```
//!
//! Build it once where Rust is (`cargo build --release -p deradiff-kernels --features cudnn
//! --example device_check`) and copy `target/release/examples/device_check` to the GPU machine
//! (`scripts/gpu/check.sh` runs it).

use candle_core::{DType, Device, Tensor};
use deradiff_kernels::{
    attention, attention_heads, attention_heads_budget, conv2d, conv2d_add, geglu, group_norm, linear, linear_add,
    linear_from_channels, linear_to_channels, with_device_path, Result,
};

/// `DERADIFF_DEVICE`: `cpu` (the default), `cuda[:N]` or `metal[:N]`.
fn device() -> candle_core::Result<Device> {
    let name = std::env::var("DERADIFF_DEVICE").unwrap_or_else(|_| "cpu".into());
    let (kind, index) = name.split_once(':').unwrap_or((name.as_str(), "0"));
    let index: usize = index.parse().map_err(|_| candle_core::Error::Msg(format!("device index in {name}")))?;
    match kind {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Device::new_cuda(index),
        "metal" => Device::new_metal(index),
        other => Err(candle_core::Error::Msg(format!("DERADIFF_DEVICE={other}: cpu, cuda[:N] or metal[:N]"))),
    }
}

/// A deterministic `shape` tensor in `[-amp, amp]` (f32, on the CPU).
fn values(seed: u64, shape: &[usize], amp: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * amp
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).expect("a shape that fits its values")
}

type Kernel = Box<dyn Fn(&[Tensor]) -> Result<Tensor>>;
/// A kernel's name, its inputs as (shape, amplitude), the kernel.
type Case = (&'static str, Vec<(Vec<usize>, f32)>, Kernel);

/// The kernels at SD 1.5's first level over 32×32 latents, batch 2.
/// Queries and keys of amplitude 1.5 give scores within about ±3 (f16 stores them to 1e-3).
fn cases() -> Vec<Case> {
    let (b, l, c) = (2, 1024, 320);
    let tokens = || (vec![b, l, c], 1.5);
    let img = || (vec![b, c, 32, 32], 3.0);
    let vector = || (vec![c], 1.5);
    let bias = || (vec![c], 0.5);
    let square = || (vec![c, c], 0.06);
    vec![
        (
            "self-attention, 8 heads",
            vec![tokens(), tokens(), tokens()],
            Box::new(|t| attention_heads(&t[0], &t[1], &t[2], 8, 0.158)),
        ),
        (
            "cross-attention, 77 keys",
            vec![tokens(), (vec![b, 77, c], 1.5), (vec![b, 77, c], 1.5)],
            Box::new(|t| attention_heads(&t[0], &t[1], &t[2], 8, 0.158)),
        ),
        (
            "self-attention, queries in chunks of 100",
            vec![tokens(), tokens(), tokens()],
            Box::new(|t| {
                let per_query = 2 * 8 * 1024 * t[0].dtype().size_in_bytes();
                attention_heads_budget(&t[0], &t[1], &t[2], 8, 0.158, 100 * per_query)
            }),
        ),
        (
            "attention [N, L, D]",
            vec![(vec![16, 256, 40], 1.5), (vec![16, 300, 40], 1.5), (vec![16, 300, 40], 1.0)],
            Box::new(|t| attention(&t[0], &t[1], &t[2], 0.158)),
        ),
        (
            "group norm + SiLU",
            vec![img(), vector(), bias()],
            Box::new(|t| group_norm(&t[0], 32, &t[1], &t[2], 1e-5, true)),
        ),
        ("group norm", vec![img(), vector(), bias()], Box::new(|t| group_norm(&t[0], 32, &t[1], &t[2], 1e-6, false))),
        ("linear", vec![tokens(), square(), bias()], Box::new(|t| linear(&t[0], &t[1], Some(&t[2])))),
        (
            "linear + residual",
            vec![tokens(), square(), bias(), tokens()],
            Box::new(|t| linear_add(&t[0], &t[1], Some(&t[2]), &t[3])),
        ),
        (
            "proj_in (from channels)",
            vec![img(), square(), bias()],
            Box::new(|t| linear_from_channels(&t[0], &t[1], Some(&t[2]))),
        ),
        (
            "proj_out (to channels + residual)",
            vec![tokens(), square(), bias(), img()],
            Box::new(|t| linear_to_channels(&t[0], &t[1], Some(&t[2]), &t[3])),
        ),
        (
            "conv 3×3",
            vec![img(), (vec![c, c, 3, 3], 0.02), bias()],
            Box::new(|t| conv2d(&t[0], &t[1], Some(&t[2]), 1, 1)),
        ),
        (
            "conv 3×3 stride 2",
            vec![img(), (vec![c, c, 3, 3], 0.02), bias()],
            Box::new(|t| conv2d(&t[0], &t[1], Some(&t[2]), 2, 1)),
        ),
        (
            "conv 3×3 + residual",
            vec![img(), (vec![c, c, 3, 3], 0.02), bias(), img()],
            Box::new(|t| conv2d_add(&t[0], &t[1], Some(&t[2]), 1, 1, &t[3])),
        ),
        ("GEGLU", vec![(vec![b, l, 2 * c], 2.0)], Box::new(|t| geglu(&t[0]))),
    ]
}

fn max_abs(t: &Tensor) -> candle_core::Result<f32> {
    t.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
}

fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let device = device()?;
    println!("device path on {device:?} against the CPU kernels in f32 (error relative to the largest output)");
    let mut failed = 0;
    for (name, inputs, kernel) in cases() {
        let cpu: Vec<Tensor> = inputs.iter().enumerate().map(|(i, (s, a))| values(i as u64 + 1, s, *a)).collect();
        for (dtype, limit) in [(DType::F32, 1e-4f32), (DType::F16, 2e-3), (DType::BF16, 1e-2)] {
            let args =
                cpu.iter().map(|t| t.to_dtype(dtype)?.to_device(&device)).collect::<candle_core::Result<Vec<_>>>()?;
            // The same rounded values for the CPU kernel, in f32.
            let want = kernel(
                &args
                    .iter()
                    .map(|t| t.to_device(&Device::Cpu)?.to_dtype(DType::F32))
                    .collect::<candle_core::Result<Vec<_>>>()?,
            )?;
            let got = if device.is_cpu() { with_device_path(|| kernel(&args)) } else { kernel(&args) };
            let (err, ok) = match got {
                Ok(got) => {
                    let got = got.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
                    let err = max_abs(&(&got - &want)?)? / max_abs(&want)?.max(1e-6);
                    (format!("{err:.2e}"), err <= limit && err.is_finite())
                }
                Err(e) => (format!("error: {e}"), false),
            };
            failed += usize::from(!ok);
            println!("{:<4} {name:<40} {dtype:<5?} {err} (limit {limit:.0e})", if ok { "ok" } else { "FAIL" });
        }
    }
    if failed > 0 {
        eprintln!("{failed} checks failed");
        std::process::exit(1);
    }
    println!("all checks passed");
    Ok(())
}
