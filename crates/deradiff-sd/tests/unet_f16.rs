//! The UNet in f16 on the CPU, end to end (every fused kernel upcasts to f32 and casts back): the
//! tiny SD UNet's f16 output against its f32 output on the same inputs, within f16's precision.

mod common;

use candle_core::{DType, Device, Tensor};
use common::tiny_sd;
use deradiff_core::{NoiseSource, SeededNoise};
use deradiff_sd::Unet;

/// Standard-normal values from `seed`, shaped `shape`.
fn tensor(seed: u64, shape: &[usize]) -> Tensor {
    SeededNoise::new(seed).standard_normal(&shape.into(), DType::F32, &Device::Cpu).unwrap()
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn unet_in_f16_matches_f32_within_f16_precision() {
    let u32_ = Unet::load(tiny_sd(), None, DType::F32, &Device::Cpu).unwrap();
    let u16_ = Unet::load(tiny_sd(), None, DType::F16, &Device::Cpu).unwrap();
    assert_eq!(u16_.dtype(), DType::F16);
    let c = u32_.cross_attention_dim();
    for (size, t) in [(8usize, 999.0), (16, 500.0), (12, 1.0)] {
        let x = tensor(size as u64, &[2, 4, size, size]);
        let ctx = tensor(7 + size as u64, &[2, 77, c]);
        let want = u32_.forward(&x, t, &ctx).unwrap();
        let got = u16_.forward(&x.to_dtype(DType::F16).unwrap(), t, &ctx.to_dtype(DType::F16).unwrap()).unwrap();
        assert_eq!(got.dtype(), DType::F16);
        assert_eq!(got.dims(), want.dims());
        let got = got.to_dtype(DType::F32).unwrap();
        let err = max_abs(&(&got - &want).unwrap());
        let scale = max_abs(&want);
        eprintln!("{size}x{size} t={t}: f16 output {err:e} off f32 (max |f32 output| {scale})");
        assert!(got.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().all(|v| v.is_finite()));
        assert!(err <= 1e-2 * scale.max(1.0), "{size}x{size}: f16 {err} off f32 (scale {scale})");
    }
}
