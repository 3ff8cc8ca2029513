//! The fused CPU kernels (`deradiff_kernels`) against plain reference computations on random
//! inputs: attention (both layouts) against candle's matmul + softmax + matmul (and a naive loop),
//! group norm (+ SiLU) against candle's `GroupNorm` (and a naive loop), within 1e-5; the UNet's
//! shapes and odd ones (lengths not multiples of 8 or 16, head dims 1 to 64, batch 1 and 3).

mod common;
mod invariance;

use candle_core::{DType, Device, Tensor};
use common::values;
use deradiff_kernels::{attention, attention_heads, attention_reference, group_norm, group_norm_reference, Error};
use proptest::prelude::*;

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn tensor(data: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_slice(data, shape, &Device::Cpu).unwrap()
}

/// Naive attention: one query row at a time, full softmax in f64.
#[allow(clippy::too_many_arguments)]
fn naive_attention(q: &[f32], k: &[f32], v: &[f32], n: usize, lq: usize, lk: usize, d: usize, scale: f64) -> Vec<f32> {
    let mut out = vec![0f32; n * lq * d];
    for h in 0..n {
        for i in 0..lq {
            let qi = &q[(h * lq + i) * d..][..d];
            let s: Vec<f64> = (0..lk)
                .map(|j| {
                    let kj = &k[(h * lk + j) * d..][..d];
                    qi.iter().zip(kj).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() * scale
                })
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let p: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
            let z: f64 = p.iter().sum();
            for c in 0..d {
                let o: f64 = (0..lk).map(|j| p[j] * v[(h * lk + j) * d + c] as f64).sum();
                out[(h * lq + i) * d + c] = (o / z) as f32;
            }
        }
    }
    out
}

fn check_attention(seed: u64, n: usize, lq: usize, lk: usize, d: usize, amp: f32) {
    let (qv, kv, vv) =
        (values(seed, n * lq * d, amp), values(seed ^ 1, n * lk * d, amp), values(seed ^ 2, n * lk * d, 1.0));
    let (q, k, v) = (tensor(&qv, &[n, lq, d]), tensor(&kv, &[n, lk, d]), tensor(&vv, &[n, lk, d]));
    let scale = 1.0 / (d as f64).sqrt();
    let ours = attention(&q, &k, &v, scale).unwrap();
    let candle = attention_reference(&q, &k, &v, scale).unwrap();
    let naive = tensor(&naive_attention(&qv, &kv, &vv, n, lq, lk, d, scale), &[n, lq, d]);
    assert_eq!(ours.dims(), &[n, lq, d]);
    let (e1, e2) = (max_abs_diff(&ours, &candle), max_abs_diff(&ours, &naive));
    assert!(e1 <= 1e-5 && e2 <= 1e-5, "n={n} lq={lq} lk={lk} d={d} amp={amp}: vs candle {e1:e}, vs naive {e2:e}");
}

/// `attention_heads` on `[B, L, H·D]` against splitting the heads out, candle's attention and
/// merging them back, and against the naive loop per head.
fn check_attention_heads(seed: u64, b: usize, heads: usize, lq: usize, lk: usize, d: usize, amp: f32) {
    let c = heads * d;
    let (qv, kv, vv) =
        (values(seed, b * lq * c, amp), values(seed ^ 1, b * lk * c, amp), values(seed ^ 2, b * lk * c, 1.0));
    let (q, k, v) = (tensor(&qv, &[b, lq, c]), tensor(&kv, &[b, lk, c]), tensor(&vv, &[b, lk, c]));
    let split = |t: &Tensor| {
        let (b, l, _) = t.dims3().unwrap();
        t.reshape((b, l, heads, d)).unwrap().transpose(1, 2).unwrap().reshape((b * heads, l, d)).unwrap()
    };
    let scale = 1.0 / (d as f64).sqrt();
    let ours = attention_heads(&q, &k, &v, heads, scale).unwrap();
    assert_eq!(ours.dims(), &[b, lq, c]);
    let merge = |t: Tensor| t.reshape((b, heads, lq, d)).unwrap().transpose(1, 2).unwrap().reshape((b, lq, c)).unwrap();
    let (qs, ks, vs) = (split(&q), split(&k), split(&v));
    let candle = merge(attention_reference(&qs, &ks, &vs, scale).unwrap());
    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let naive = merge(tensor(
        &naive_attention(&flat(&qs), &flat(&ks), &flat(&vs), b * heads, lq, lk, d, scale),
        &[b * heads, lq, d],
    ));
    let (e1, e2) = (max_abs_diff(&ours, &candle), max_abs_diff(&ours, &naive));
    assert!(
        e1 <= 1e-5 && e2 <= 1e-5,
        "b={b} heads={heads} lq={lq} lk={lk} d={d} amp={amp}: vs candle {e1:e}, vs naive {e2:e}"
    );
}

#[allow(clippy::too_many_arguments)]
fn naive_group_norm(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    bsz: usize,
    c: usize,
    hw: usize,
    g: usize,
    eps: f64,
    silu: bool,
) -> Vec<f32> {
    let cpg = c / g;
    let mut out = vec![0f32; x.len()];
    for bi in 0..bsz {
        for gi in 0..g {
            let s = &x[(bi * c + gi * cpg) * hw..][..cpg * hw];
            let mean = s.iter().map(|&v| v as f64).sum::<f64>() / s.len() as f64;
            let var = s.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / s.len() as f64;
            for ch in 0..cpg {
                let cc = gi * cpg + ch;
                for p in 0..hw {
                    let idx = (bi * c + cc) * hw + p;
                    let y = (x[idx] as f64 - mean) / (var + eps).sqrt() * w[cc] as f64 + b[cc] as f64;
                    out[idx] = if silu { (y / (1.0 + (-y).exp())) as f32 } else { y as f32 };
                }
            }
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn check_group_norm(seed: u64, bsz: usize, c: usize, h: usize, w: usize, g: usize, offset: f32, silu: bool) {
    let hw = h * w;
    let xv: Vec<f32> = values(seed, bsz * c * hw, 3.0).into_iter().map(|v| v + offset).collect();
    let (wv, bv) = (values(seed ^ 7, c, 1.5), values(seed ^ 9, c, 0.5));
    let x = tensor(&xv, &[bsz, c, h, w]);
    let (wt, bt) = (tensor(&wv, &[c]), tensor(&bv, &[c]));
    let eps = 1e-5;
    let ours = group_norm(&x, g, &wt, &bt, eps, silu).unwrap();
    let candle = group_norm_reference(&x, g, &wt, &bt, eps, silu).unwrap();
    let naive = tensor(&naive_group_norm(&xv, &wv, &bv, bsz, c, hw, g, eps, silu), &[bsz, c, h, w]);
    let (e1, e2) = (max_abs_diff(&ours, &candle), max_abs_diff(&ours, &naive));
    assert!(e1 <= 1e-5 && e2 <= 1e-5, "b={bsz} c={c} {h}x{w} g={g} silu={silu}: vs candle {e1:e}, vs naive {e2:e}");
}

#[test]
fn attention_at_the_tiny_unets_shapes() {
    // Self-attention over 8×8 and 16×16 latents (heads 2 of dim 16), cross-attention to 77 tokens.
    check_attention(1, 4, 64, 64, 16, 2.0);
    check_attention(2, 4, 256, 256, 16, 2.0);
    check_attention(3, 8, 64, 77, 16, 2.0);
    check_attention(4, 2, 16, 77, 40, 2.0);
}

#[test]
fn attention_on_the_projections_layout() {
    // The tiny UNet (2 heads of 16, 4 of 16), SD 1.5 (8 heads of 40), SD 2.1 / SDXL (heads of 64),
    // a head dim of 8 (8-channel and odd-key path) and of 3 (single channels); cross-attention to 77.
    check_attention_heads(1, 2, 2, 256, 256, 16, 2.0);
    check_attention_heads(2, 2, 4, 64, 77, 16, 2.0);
    check_attention_heads(3, 1, 8, 70, 77, 40, 2.0);
    check_attention_heads(4, 3, 2, 33, 301, 64, 2.0);
    check_attention_heads(5, 2, 3, 65, 129, 8, 3.0);
    check_attention_heads(6, 1, 5, 9, 17, 3, 3.0);
    check_attention_heads(7, 2, 1, 300, 520, 16, 8.0);
}

#[test]
fn attention_heads_errors_on_bad_shapes() {
    let q = Tensor::zeros((2, 5, 12), DType::F32, &Device::Cpu).unwrap();
    let k = Tensor::zeros((2, 6, 12), DType::F32, &Device::Cpu).unwrap();
    let k8 = Tensor::zeros((2, 6, 8), DType::F32, &Device::Cpu).unwrap();
    let empty = Tensor::zeros((2, 0, 12), DType::F32, &Device::Cpu).unwrap();
    assert!(attention_heads(&q, &k, &k, 3, 1.0).is_ok());
    assert!(attention_heads(&q, &k, &k, 5, 1.0).is_err());
    assert!(attention_heads(&q, &k, &k, 0, 1.0).is_err());
    assert!(attention_heads(&q, &k8, &k8, 3, 1.0).is_err());
    assert!(attention_heads(&q, &empty, &empty, 3, 1.0).is_err());
    assert!(attention_heads(&q, &k, &k.to_dtype(DType::F16).unwrap(), 3, 1.0).is_err());
    assert!(attention_heads(&q.flatten_all().unwrap(), &k, &k, 3, 1.0).is_err());
}

#[test]
fn channels_that_do_not_split_into_heads_are_a_typed_error_naming_the_kernel() {
    let q = Tensor::zeros((2, 5, 12), DType::F32, &Device::Cpu).unwrap();
    let k = Tensor::zeros((2, 6, 12), DType::F32, &Device::Cpu).unwrap();
    match attention_heads(&q, &k, &k, 5, 1.0) {
        Err(Error::InvalidInput { op, reason }) => {
            assert_eq!(op, "attention");
            assert_eq!(reason, "12 channels do not split into 5 heads");
        }
        other => panic!("expected InvalidInput, got {other:?}"),
    }
    // Every refusal of the argument checks is an `InvalidInput` of the kernel, a rank included.
    let k8 = Tensor::zeros((2, 6, 8), DType::F32, &Device::Cpu).unwrap();
    for r in [
        attention_heads(&q, &k, &k, 0, 1.0),
        attention_heads(&q, &k8, &k8, 3, 1.0),
        attention_heads(&q.flatten_all().unwrap(), &k, &k, 3, 1.0),
        attention(&q, &k8, &k8, 1.0),
        attention(&q.flatten_all().unwrap(), &k, &k, 1.0),
        attention_reference(&q, &k, &k.to_dtype(DType::F16).unwrap(), 1.0),
    ] {
        assert!(matches!(r, Err(Error::InvalidInput { op: "attention", .. })), "{r:?}");
    }
    // Through `?` in code that works in candle's errors, the message survives.
    let as_candle = || -> candle_core::Result<Tensor> { Ok(attention_heads(&q, &k, &k, 5, 1.0)?) };
    // (candle appends a backtrace when RUST_BACKTRACE is set.)
    let err = as_candle().unwrap_err().to_string();
    assert!(err.starts_with("attention: 12 channels do not split into 5 heads"), "{err}");
}

#[test]
fn attention_with_large_scores_is_stable() {
    // Scores of several hundred: the streaming softmax must rescale, not overflow.
    check_attention(5, 3, 37, 300, 8, 12.0);
}

#[test]
fn attention_errors_on_bad_shapes() {
    let q = Tensor::zeros((2, 5, 8), DType::F32, &Device::Cpu).unwrap();
    let k = Tensor::zeros((2, 6, 8), DType::F32, &Device::Cpu).unwrap();
    let bad = Tensor::zeros((2, 6, 4), DType::F32, &Device::Cpu).unwrap();
    let empty = Tensor::zeros((2, 0, 8), DType::F32, &Device::Cpu).unwrap();
    assert!(attention(&q, &k, &bad, 1.0).is_err());
    assert!(attention(&q, &bad, &bad, 1.0).is_err());
    assert!(attention(&q, &empty, &empty, 1.0).is_err());
    assert!(attention(&q.flatten_all().unwrap(), &k, &k, 1.0).is_err());
    assert!(attention(&q, &k.to_dtype(DType::F16).unwrap(), &k, 1.0).is_err());
}

#[test]
fn attention_in_f16_upcasts() {
    let d = 8;
    let (qv, kv) = (values(11, 2 * 9 * d, 1.0), values(12, 2 * 13 * d, 1.0));
    let q = tensor(&qv, &[2, 9, d]).to_dtype(DType::F16).unwrap();
    let k = tensor(&kv, &[2, 13, d]).to_dtype(DType::F16).unwrap();
    let ours = attention(&q, &k, &k, 0.3).unwrap();
    assert_eq!(ours.dtype(), DType::F16);
    let want = attention_reference(&q, &k, &k, 0.3).unwrap();
    let err = max_abs_diff(&ours.to_dtype(DType::F32).unwrap(), &want.to_dtype(DType::F32).unwrap());
    assert!(err <= 1e-3, "{err}");
}

#[test]
fn group_norm_at_the_tiny_unets_shapes() {
    check_group_norm(1, 2, 32, 8, 8, 32, 0.0, true);
    check_group_norm(2, 2, 64, 16, 16, 32, 0.5, false);
    check_group_norm(3, 2, 96, 8, 8, 32, -1.0, true);
}

#[test]
fn group_norm_errors_on_bad_shapes() {
    let x = Tensor::zeros((2, 6, 3, 3), DType::F32, &Device::Cpu).unwrap();
    let w = Tensor::ones(6, DType::F32, &Device::Cpu).unwrap();
    let w5 = Tensor::ones(5, DType::F32, &Device::Cpu).unwrap();
    assert!(group_norm(&x, 4, &w, &w, 1e-5, false).is_err());
    assert!(group_norm(&x, 0, &w, &w, 1e-5, false).is_err());
    assert!(group_norm(&x, 3, &w5, &w, 1e-5, false).is_err());
    assert!(group_norm(&w, 3, &w, &w, 1e-5, false).is_err());
    assert!(group_norm(&x, 3, &w, &w, 1e-5, true).is_ok());
    for r in [group_norm(&x, 4, &w, &w, 1e-5, false), group_norm_reference(&x, 3, &w5, &w, 1e-5, false)] {
        assert!(matches!(r, Err(Error::InvalidInput { op: "group_norm", .. })), "{r:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn attention_equals_the_references(
        seed in any::<u64>(),
        n in prop::sample::select(vec![1usize, 2, 3, 6]),
        lq in 1usize..150,
        lk in 1usize..300,
        d in prop::sample::select(vec![1usize, 3, 8, 16, 24, 40, 64]),
        amp in 0.1f32..4.0,
    ) {
        check_attention(seed, n, lq, lk, d, amp);
    }

    #[test]
    fn attention_heads_equals_the_references(
        seed in any::<u64>(),
        b in prop::sample::select(vec![1usize, 2, 3]),
        heads in prop::sample::select(vec![1usize, 2, 3, 8]),
        lq in 1usize..150,
        lk in 1usize..300,
        d in prop::sample::select(vec![1usize, 5, 8, 16, 40]),
        amp in 0.1f32..4.0,
    ) {
        check_attention_heads(seed, b, heads, lq, lk, d, amp);
    }

    #[test]
    fn group_norm_equals_the_references(
        seed in any::<u64>(),
        bsz in prop::sample::select(vec![1usize, 2, 3]),
        (g, cpg) in (prop::sample::select(vec![1usize, 3, 8, 32]), 1usize..5),
        h in 1usize..13,
        w in 1usize..13,
        offset in -20f32..20.0,
        silu in any::<bool>(),
    ) {
        check_group_norm(seed, bsz, g * cpg, h, w, g, offset, silu);
    }
}

/// One-element groups (variance 0) far from zero: the scale is ~1/√eps, where a folded affine
/// cancelled two large f32 products (found by the property test above).
#[test]
fn group_norm_of_one_element_groups_far_from_zero() {
    for seed in 0..32 {
        check_group_norm(seed, 1, 8, 1, 1, 8, -5.8, true);
        check_group_norm(seed, 1, 8, 1, 1, 8, 19.0, false);
    }
}
