//! Choosing a dtype and a device by name, and checking that candle can run the pair.

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

/// `f32` / `float32` / `fp32`, `f16` / `float16` / `fp16` / `half`, `bf16` / `bfloat16`.
pub fn parse_dtype(name: &str) -> Result<DType> {
    match name.trim().to_ascii_lowercase().as_str() {
        "f32" | "float32" | "fp32" => Ok(DType::F32),
        "f16" | "float16" | "fp16" | "half" => Ok(DType::F16),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        other => Err(Error::InvalidArgument(format!("unknown dtype `{other}`: use f32, f16 or bf16"))),
    }
}

/// `cpu`, `cuda` / `cuda:N` (needs the `cuda` feature), `metal` / `metal:N` (needs `metal`).
pub fn parse_device(name: &str) -> Result<Device> {
    let lower = name.trim().to_ascii_lowercase();
    let (kind, index) = match lower.split_once(':') {
        Some((k, i)) => {
            let i: usize = i.parse().map_err(|_| Error::Device {
                device: name.to_string(),
                message: format!("`{i}` is not a device index"),
            })?;
            (k.to_string(), i)
        }
        None => (lower.clone(), 0),
    };
    let open = |r: candle_core::Result<Device>, feature: &str| {
        r.map_err(|e| Error::Device {
            device: name.to_string(),
            message: format!("{e} (deradiff must be built with `--features {feature}` and the device must exist)"),
        })
    };
    match kind.as_str() {
        "cpu" => Ok(Device::Cpu),
        "cuda" | "gpu" => open(Device::new_cuda(index), "cuda"),
        "metal" | "mps" => open(Device::new_metal(index), "metal"),
        _ => Err(Error::Device {
            device: name.to_string(),
            message: "unknown device: use cpu, cuda[:N] or metal[:N]".into(),
        }),
    }
}

/// A device in words, for messages.
pub fn describe_device(device: &Device) -> String {
    match device {
        Device::Cpu => "CPU".into(),
        Device::Cuda(_) => "CUDA".into(),
        Device::Metal(_) => "Metal".into(),
    }
}

/// Errors (rather than crashing later) when candle cannot run matrix products and convolutions
/// in `dtype` on `device` — in candle 0.11 bf16 on CPU.
pub fn check_dtype_supported(dtype: DType, device: &Device) -> Result<()> {
    if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16 | DType::F64) {
        return Err(Error::UnsupportedDType {
            dtype,
            device: describe_device(device),
            message: "models run in f32, f16 or bf16".into(),
        });
    }
    let probe = || -> candle_core::Result<()> {
        let a = Tensor::ones((2, 3), DType::F32, device)?.to_dtype(dtype)?;
        let b = Tensor::ones((3, 2), DType::F32, device)?.to_dtype(dtype)?;
        a.matmul(&b)?.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?;
        let x = Tensor::ones((1, 2, 4, 4), DType::F32, device)?.to_dtype(dtype)?;
        let k = Tensor::ones((2, 2, 3, 3), DType::F32, device)?.to_dtype(dtype)?;
        x.conv2d(&k, 1, 1, 1, 1)?.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?;
        Ok(())
    };
    probe().map_err(|e| {
        let advice = if device.is_cpu() && dtype == DType::BF16 {
            "candle 0.11 has no bf16 matrix multiplication on CPU; use f32 (or f16) on CPU, or bf16 on a CUDA GPU"
                .to_string()
        } else {
            format!("candle cannot run it here ({e}); use f32")
        };
        Error::UnsupportedDType { dtype, device: describe_device(device), message: advice }
    })
}
