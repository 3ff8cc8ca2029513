//! The CPU convolution kernel (`deradiff_kernels::conv2d`) against candle's `conv2d` + bias
//! and a naive loop, within 1e-5: the UNet's shapes (3×3 padding 1, 1×1 shortcuts, stride-2
//! downsamplers with padding 1 and 0), odd ones (channels and sizes not multiples of 8,
//! non-square, batch 1 and 3, no bias, other kernel sizes), a bias per batch item and a residual
//! added in the same pass (`conv2d_add`), and the errors.

mod common;

use candle_core::{DType, Device, Tensor};
use common::values;
use deradiff_kernels::{conv2d, conv2d_add, conv2d_reference, Error};
use proptest::prelude::*;

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn tensor(data: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_slice(data, shape, &Device::Cpu).unwrap()
}

/// One convolution's sizes: input `[b, ci, h, w]`, weight `[co, ci, k, k]`.
#[derive(Clone, Copy, Debug)]
struct Case {
    b: usize,
    ci: usize,
    co: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    pad: usize,
    bias: bool,
}

/// Naive convolution in f64, one output at a time.
fn naive_conv(x: &[f32], wt: &[f32], bias: Option<&[f32]>, c: &Case) -> (Vec<f32>, [usize; 4]) {
    let (oh, ow) = ((c.h + 2 * c.pad - c.k) / c.stride + 1, (c.w + 2 * c.pad - c.k) / c.stride + 1);
    let mut out = vec![0f32; c.b * c.co * oh * ow];
    for bi in 0..c.b {
        for o in 0..c.co {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = bias.map_or(0.0, |b| b[o] as f64);
                    for i in 0..c.ci {
                        for ky in 0..c.k {
                            for kx in 0..c.k {
                                let (iy, ix) = (
                                    (oy * c.stride + ky) as isize - c.pad as isize,
                                    (ox * c.stride + kx) as isize - c.pad as isize,
                                );
                                if iy < 0 || ix < 0 || iy >= c.h as isize || ix >= c.w as isize {
                                    continue;
                                }
                                let xv = x[((bi * c.ci + i) * c.h + iy as usize) * c.w + ix as usize] as f64;
                                acc += xv * wt[((o * c.ci + i) * c.k + ky) * c.k + kx] as f64;
                            }
                        }
                    }
                    out[((bi * c.co + o) * oh + oy) * ow + ox] = acc as f32;
                }
            }
        }
    }
    (out, [c.b, c.co, oh, ow])
}

/// Our kernel against candle's and the naive loop (weights scaled by `1/√(ci·k²)` so that the
/// outputs are O(1)); returns the larger error.
fn check_conv(seed: u64, c: Case) -> f32 {
    let xv = values(seed, c.b * c.ci * c.h * c.w, 1.0);
    let wv = values(seed ^ 1, c.co * c.ci * c.k * c.k, 1.0 / ((c.ci * c.k * c.k) as f32).sqrt());
    let bv = values(seed ^ 2, c.co, 1.0);
    let x = tensor(&xv, &[c.b, c.ci, c.h, c.w]);
    let w = tensor(&wv, &[c.co, c.ci, c.k, c.k]);
    let bias = c.bias.then(|| tensor(&bv, &[c.co]));
    let ours = conv2d(&x, &w, bias.as_ref(), c.stride, c.pad).unwrap();
    let candle = conv2d_reference(&x, &w, bias.as_ref(), c.stride, c.pad).unwrap();
    let (nv, shape) = naive_conv(&xv, &wv, c.bias.then_some(&bv[..]), &c);
    assert_eq!(ours.dims(), &shape, "{c:?}");
    let naive = tensor(&nv, &shape);
    let (e1, e2) = (max_abs_diff(&ours, &candle), max_abs_diff(&ours, &naive));
    assert!(e1 <= 1e-5 && e2 <= 1e-5, "{c:?}: vs candle {e1:e}, vs naive {e2:e}");
    e1.max(e2)
}

/// `conv2d_add` with a bias per batch item `[B, Co]` and a residual against candle's convolution
/// plus both, and the naive loop plus both; returns the larger error.
fn check_conv_add(seed: u64, c: Case) -> f32 {
    let xv = values(seed, c.b * c.ci * c.h * c.w, 1.0);
    let wv = values(seed ^ 1, c.co * c.ci * c.k * c.k, 1.0 / ((c.ci * c.k * c.k) as f32).sqrt());
    let bv = values(seed ^ 2, c.b * c.co, 1.0);
    let (nv, shape) = naive_conv(&xv, &wv, None, &c);
    let plane = shape[2] * shape[3];
    let rv = values(seed ^ 3, nv.len(), 2.0);
    let (x, w) = (tensor(&xv, &[c.b, c.ci, c.h, c.w]), tensor(&wv, &[c.co, c.ci, c.k, c.k]));
    let (bias, residual) = (tensor(&bv, &[c.b, c.co]), tensor(&rv, &shape));
    let ours = conv2d_add(&x, &w, Some(&bias), c.stride, c.pad, &residual).unwrap();
    let candle = (conv2d_reference(&x, &w, Some(&bias), c.stride, c.pad).unwrap() + &residual).unwrap();
    // The naive sum: residual + bias[b, o] + the convolution, in f64 where it matters.
    let want: Vec<f32> = nv
        .iter()
        .zip(&rv)
        .enumerate()
        .map(|(i, (&y, &r))| (y as f64 + r as f64 + bv[i / plane] as f64) as f32)
        .collect();
    let (e1, e2) = (max_abs_diff(&ours, &candle), max_abs_diff(&ours, &tensor(&want, &shape)));
    assert!(e1 <= 1e-5 && e2 <= 1e-5, "{c:?} with residual: vs candle {e1:e}, vs naive {e2:e}");
    // Without the residual, the per-batch bias alone.
    let ours = conv2d(&x, &w, Some(&bias), c.stride, c.pad).unwrap();
    let candle = conv2d_reference(&x, &w, Some(&bias), c.stride, c.pad).unwrap();
    assert!(max_abs_diff(&ours, &candle) <= 1e-5, "{c:?}: per-batch bias");
    e1.max(e2)
}

#[test]
fn residual_and_bias_per_batch_item() {
    let mut worst = 0f32;
    for c in [
        case(2, 32, 32, 16, 16, 3, 1, 1), // resnet conv2 + shortcut / conv1 + timestep embedding
        case(2, 64, 64, 32, 32, 3, 1, 1),
        case(3, 5, 7, 9, 11, 3, 1, 1),
        case(1, 13, 17, 5, 3, 1, 1, 0),
        case(3, 6, 5, 10, 9, 3, 2, 1),
        case(2, 0, 3, 4, 4, 1, 1, 0), // no input channels: residual + bias
    ] {
        worst = worst.max(check_conv_add(21, c));
    }
    eprintln!("with residual and per-batch bias: max error {worst:e}");
}

/// A case with bias, sizes in `Case`'s field order.
#[allow(clippy::too_many_arguments)]
const fn case(b: usize, ci: usize, co: usize, h: usize, w: usize, k: usize, stride: usize, pad: usize) -> Case {
    Case { b, ci, co, h, w, k, stride, pad, bias: true }
}

#[test]
fn unet_shapes() {
    let mut worst = 0f32;
    for c in [
        case(2, 4, 32, 8, 8, 3, 1, 1),    // conv_in
        case(2, 4, 32, 64, 64, 3, 1, 1),  // conv_in at 64×64
        case(2, 32, 32, 16, 16, 3, 1, 1), // resnet conv
        case(2, 32, 32, 64, 64, 3, 1, 1),
        case(2, 32, 64, 32, 32, 3, 1, 1),
        case(2, 64, 64, 32, 32, 3, 1, 1),
        case(2, 32, 4, 64, 64, 3, 1, 1),  // conv_out
        case(2, 96, 64, 16, 16, 1, 1, 0), // conv_shortcut
        case(2, 64, 32, 64, 64, 1, 1, 0),
        case(2, 32, 32, 64, 64, 1, 1, 0), // proj_in / proj_out
        case(2, 32, 32, 64, 64, 3, 2, 1), // downsampler
        case(2, 32, 32, 65, 65, 3, 2, 0), // downsampler after the explicit asymmetric pad
        case(2, 64, 64, 17, 17, 3, 2, 0),
        case(2, 160, 24, 8, 8, 3, 1, 1), // SD-like depth on a small image: both images in one GEMM
        case(3, 100, 9, 12, 12, 3, 1, 1), // three small images in one GEMM
        case(3, 100, 9, 20, 20, 3, 1, 1), // one image per GEMM
        case(1, 100, 9, 20, 20, 3, 1, 1), // one task: threads inside the GEMM
    ] {
        worst = worst.max(check_conv(7, c));
    }
    eprintln!("UNet shapes: max error {worst:e}");
}

#[test]
fn odd_shapes() {
    let mut worst = 0f32;
    for c in [
        case(1, 3, 5, 13, 17, 3, 1, 1),
        case(3, 13, 17, 9, 5, 3, 1, 1),
        case(1, 5, 3, 1, 1, 3, 1, 1), // one pixel
        case(1, 17, 13, 7, 11, 1, 1, 0),
        case(3, 5, 13, 11, 7, 3, 2, 1),
        case(1, 3, 5, 12, 9, 3, 2, 0),
        case(1, 3, 5, 6, 7, 5, 1, 2),   // 5×5
        case(1, 3, 5, 6, 7, 3, 1, 0),   // no padding
        case(1, 3, 5, 6, 7, 1, 2, 0),   // strided 1×1
        case(1, 3, 5, 6, 7, 3, 1, 3),   // padding wider than the kernel
        case(2, 3, 5, 4, 4, 3, 3, 1),   // stride 3
        case(1, 300, 7, 6, 5, 3, 1, 1), // patches larger than one tile's budget per row
    ] {
        worst = worst.max(check_conv(11, c)).max(check_conv(12, Case { bias: false, ..c }));
    }
    eprintln!("odd shapes: max error {worst:e}");
}

#[test]
fn f16_and_bf16() {
    let c = case(2, 5, 7, 9, 11, 3, 1, 1);
    let x = tensor(&values(3, 2 * 5 * 9 * 11, 1.0), &[2, 5, 9, 11]);
    let w = tensor(&values(4, 7 * 5 * 9, 0.15), &[7, 5, 3, 3]);
    let b = tensor(&values(5, 7, 1.0), &[7]);
    let full = conv2d(&x, &w, Some(&b), 1, 1).unwrap();
    for (dtype, tol) in [(DType::F16, 1e-2), (DType::BF16, 8e-2)] {
        let cast = |t: &Tensor| t.to_dtype(dtype).unwrap();
        let y = conv2d(&cast(&x), &cast(&w), Some(&cast(&b)), c.stride, c.pad).unwrap();
        assert_eq!(y.dtype(), dtype);
        let e = max_abs_diff(&y.to_dtype(DType::F32).unwrap(), &full);
        assert!(e <= tol, "{dtype:?}: {e:e}");
    }
}

#[test]
fn non_contiguous_input() {
    let x = tensor(&values(9, 2 * 6 * 10 * 8, 1.0), &[2, 6, 10, 8]).transpose(2, 3).unwrap();
    let w = tensor(&values(10, 4 * 6 * 9, 0.2), &[4, 6, 3, 3]);
    let (ours, candle) = (conv2d(&x, &w, None, 1, 1).unwrap(), conv2d_reference(&x, &w, None, 1, 1).unwrap());
    assert!(max_abs_diff(&ours, &candle) <= 1e-5);
}

#[test]
fn errors() {
    let x = Tensor::zeros((1, 4, 8, 8), DType::F32, &Device::Cpu).unwrap();
    let w = Tensor::zeros((3, 4, 3, 3), DType::F32, &Device::Cpu).unwrap();
    let bad = |r: deradiff_kernels::Result<Tensor>| {
        let e = r.expect_err("should fail");
        assert!(matches!(e, Error::InvalidInput { op: "conv2d", .. }), "{e:?}");
        assert!(e.to_string().starts_with("conv2d: "), "{e}");
    };
    bad(conv2d(&x, &Tensor::zeros((3, 5, 3, 3), DType::F32, &Device::Cpu).unwrap(), None, 1, 1)); // channels
    bad(conv2d(&x, &Tensor::zeros((3, 4, 3), DType::F32, &Device::Cpu).unwrap(), None, 1, 1)); // weight rank
    bad(conv2d(&x.flatten_from(2).unwrap(), &w, None, 1, 1)); // input rank
    bad(conv2d(&x, &w, Some(&Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap()), 1, 1)); // bias size
    bad(conv2d(&x, &w, Some(&Tensor::zeros(3, DType::F16, &Device::Cpu).unwrap()), 1, 1)); // bias dtype
    bad(conv2d(&x, &w.to_dtype(DType::F16).unwrap(), None, 1, 1)); // weight dtype
    bad(conv2d(&x, &w, None, 0, 1)); // stride 0
    let out = Tensor::zeros((1, 3, 8, 8), DType::F32, &Device::Cpu).unwrap();
    bad(conv2d(&x, &w, Some(&Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap()), 1, 1)); // bias batch
    bad(conv2d_add(&x, &w, None, 1, 1, &out.narrow(3, 0, 7).unwrap())); // residual shape
    bad(conv2d_add(&x, &w, None, 1, 1, &out.to_dtype(DType::F16).unwrap())); // residual dtype
    assert_eq!(conv2d_add(&x, &w, None, 1, 1, &out).unwrap().dims(), &[1, 3, 8, 8]);
    let big = Tensor::zeros((3, 4, 11, 11), DType::F32, &Device::Cpu).unwrap();
    bad(conv2d(&x, &big, None, 1, 1)); // kernel larger than the padded input
    assert_eq!(conv2d(&x, &big, None, 1, 2).unwrap().dims(), &[1, 3, 2, 2]);
    // The reference computation checks its arguments the same way.
    bad(conv2d_reference(&x, &Tensor::zeros((3, 5, 3, 3), DType::F32, &Device::Cpu).unwrap(), None, 1, 1));
}

#[test]
fn mismatched_channels_are_a_typed_error_naming_the_kernel() {
    let x = Tensor::zeros((1, 4, 8, 8), DType::F32, &Device::Cpu).unwrap();
    let w = Tensor::zeros((3, 5, 3, 3), DType::F32, &Device::Cpu).unwrap();
    match conv2d(&x, &w, None, 1, 1) {
        Err(Error::InvalidInput { op, reason }) => {
            assert_eq!(op, "conv2d");
            assert!(reason.contains("4 channels") && reason.contains("takes 5"), "{reason}");
        }
        other => panic!("expected InvalidInput, got {other:?}"),
    }
    // Through `?` in code that works in candle's errors, the message survives.
    let as_candle = || -> candle_core::Result<Tensor> { Ok(conv2d(&x, &w, None, 1, 1)?) };
    assert!(as_candle().unwrap_err().to_string().contains("conv2d: x has 4 channels"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn random_shapes(
        seed in any::<u64>(),
        b in 1usize..4,
        ci in 1usize..20,
        co in 1usize..20,
        h in 1usize..20,
        w in 1usize..20,
        k in prop::sample::select(vec![1usize, 3]),
        stride in 1usize..3,
        pad in 0usize..2,
        bias in any::<bool>(),
    ) {
        prop_assume!(h + 2 * pad >= k && w + 2 * pad >= k);
        check_conv(seed, Case { b, ci, co, h, w, k, stride, pad, bias });
        check_conv_add(seed, Case { b, ci, co, h, w, k, stride, pad, bias });
    }
}
