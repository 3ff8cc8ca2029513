//! The UNet in f16 on the CPU, end to end (every fused kernel upcasts to f32 and casts back): the
//! tiny SD UNet's f16 output against its f32 output on the same inputs, within f16's precision.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use deradiff_sd::Unet;

fn tiny_sd() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures").join("tiny-sd")
}

/// A deterministic pseudo-random tensor with entries in `[-1, 1]` (SplitMix64).
fn values(seed: u64, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
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
        let x = values(size as u64, &[2, 4, size, size]);
        let ctx = values(7 + size as u64, &[2, 77, c]);
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
