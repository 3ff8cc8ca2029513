//! A full-size SD 1.5-shaped UNet with random weights (no checkpoint needed), the process's
//! memory readings, the device a run asks for and a clock that waits for it, for
//! `examples/unet_full_size.rs`, `examples/lora_realign.rs` and `benches/realign.rs`.

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::Init;

/// runwayml/stable-diffusion-v1-5 `unet/config.json`.
pub const SD15_UNET: &str = r#"{
  "_class_name": "UNet2DConditionModel",
  "_diffusers_version": "0.6.0",
  "act_fn": "silu",
  "attention_head_dim": 8,
  "block_out_channels": [320, 640, 1280, 1280],
  "center_input_sample": false,
  "cross_attention_dim": 768,
  "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
  "downsample_padding": 1,
  "flip_sin_to_cos": true,
  "freq_shift": 0,
  "in_channels": 4,
  "layers_per_block": 2,
  "mid_block_scale_factor": 1,
  "norm_eps": 1e-05,
  "norm_num_groups": 32,
  "out_channels": 4,
  "sample_size": 64,
  "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
}"#;

/// Random weights for any name: matrices and kernels ~ N(0, 1/fan_in) (activations keep their
/// scale through the layers, so f16 does not overflow), norm weights 1, other vectors ~ N(0, 0.02²).
pub struct RandomWeights;

impl candle_nn::var_builder::SimpleBackend for RandomWeights {
    fn get(&self, s: Shape, name: &str, _h: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let dims = s.dims();
        let t = if dims.len() >= 2 {
            let fan_in: usize = dims[1..].iter().product();
            Tensor::randn(0f32, (1.0 / fan_in as f64).sqrt() as f32, s, dev)?
        } else if name.ends_with("weight") {
            Tensor::ones(s, DType::F32, dev)?
        } else {
            Tensor::randn(0f32, 0.02, s, dev)?
        };
        t.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> candle_core::Result<Tensor> {
        Err(candle_core::Error::Msg(format!("random weights need a shape for {name}")))
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

/// A `/proc/self/status` field in MiB (Linux; 0 elsewhere).
pub fn status_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.trim().strip_suffix("kB")?.trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The device named by `DERADIFF_DEVICE` (`cpu`, `cuda[:N]`, `metal[:N]`; `cpu` when unset), as
/// the CLI's `--device` parses it (a GPU needs the crate's `cuda` / `metal` feature).
#[allow(dead_code)]
pub fn device_from_env() -> deradiff_sd::Result<Device> {
    deradiff_sd::parse_device(&std::env::var("DERADIFF_DEVICE").unwrap_or_else(|_| "cpu".into()))
}

/// Runs `f` and returns its value and wall time in seconds, the device synchronised before the
/// clock starts and before it is read (GPU work is queued, not done, when a call returns).
#[allow(dead_code)]
pub fn timed<T, E: From<candle_core::Error>>(device: &Device, f: impl FnOnce() -> Result<T, E>) -> Result<(T, f64), E> {
    device.synchronize()?;
    let t = std::time::Instant::now();
    let out = f()?;
    device.synchronize()?;
    Ok((out, t.elapsed().as_secs_f64()))
}

/// The median (NaN for no values).
#[allow(dead_code)]
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 0 => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        n => v[n / 2],
    }
}
