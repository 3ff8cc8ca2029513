//! The linear kernel (`deradiff_kernels::linear`) against `candle_nn::Linear`
//! (`linear_reference`) and a naive f64 loop, within 1e-5: the UNet's shapes (SD1.5's attention
//! projections, feed-forwards and time embedding at batch 2), odd ones (sizes not multiples of 8,
//! batch 1 and 3, one row, no bias, 2-d to 4-d inputs), f16, empty tensors and the errors; and
//! its fused forms (`linear_add` with a residual, `linear_from_channels` reading and
//! `linear_to_channels` writing the image layout) against candle's transposes and additions
//! around `linear_reference`, and the f64 loop.

mod common;

use candle_core::{DType, Device, Tensor};
use common::values;
use deradiff_kernels::{linear, linear_add, linear_from_channels, linear_reference, linear_to_channels, Error};
use proptest::prelude::*;

fn flat(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
}

/// `x · wᵀ + bias` in f64, one output at a time.
fn naive_linear(x: &[f32], w: &[f32], bias: Option<&[f32]>, n: usize, k: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len() / k.max(1) * n);
    for row in x.chunks_exact(k) {
        for j in 0..n {
            let dot: f64 = row.iter().zip(&w[j * k..(j + 1) * k]).map(|(&a, &b)| a as f64 * b as f64).sum();
            out.push((dot + bias.map_or(0.0, |b| b[j] as f64)) as f32);
        }
    }
    out
}

/// `linear` on `x` `lead + [k]` with a `[n, k]` weight scaled like a trained layer's (entries
/// within ±1/√k, so outputs stay of order 1), checked against both references; returns the
/// error off the f64 loop.
fn check(seed: u64, lead: &[usize], n: usize, k: usize, bias: bool) -> f32 {
    let m: usize = lead.iter().product();
    let mut x_shape = lead.to_vec();
    x_shape.push(k);
    let xs = values(seed, m * k, 1.0);
    let ws = values(seed ^ 0xA5A5, n * k, 1.0 / (k.max(1) as f32).sqrt());
    let bs = values(seed ^ 0x5A5A, n, 0.5);
    let dev = Device::Cpu;
    let x = Tensor::from_slice(&xs, x_shape.as_slice(), &dev).unwrap();
    let w = Tensor::from_slice(&ws, (n, k), &dev).unwrap();
    let b = Tensor::from_slice(&bs, n, &dev).unwrap();
    let b = bias.then_some(&b);
    let ours = linear(&x, &w, b).unwrap();
    let mut want_shape = lead.to_vec();
    want_shape.push(n);
    assert_eq!(ours.dims(), want_shape.as_slice());
    let ours = flat(&ours);
    let reference = flat(&linear_reference(&x, &w, b).unwrap());
    let naive = naive_linear(&xs, &ws, bias.then_some(bs.as_slice()), n, k);
    let (e_ref, e_naive) = (max_abs_diff(&ours, &reference), max_abs_diff(&ours, &naive));
    assert!(
        e_ref <= 1e-5 && e_naive <= 1e-5,
        "{lead:?}·[{n}, {k}] bias {bias}: {e_ref:e} off candle, {e_naive:e} off the f64 loop"
    );
    e_naive
}

#[test]
fn linear_matches_references_at_unet_shapes() {
    // (lead, N, K): SD1.5's widths at small token counts (the tests run unoptimised in CI, with
    // an f64 loop as one reference): to_q at 16×16 latents (batch 2 × 256 tokens × 320), to_k
    // from the text context (77 × 768 → 320), the 1280-channel feed-forward's proj and out
    // (1280 → 2·5120 halved; 2 × 4 tokens), the time embedding (batch 2, 320 → 1280).
    let cases: [(&[usize], usize, usize, bool); 6] = [
        (&[2, 256], 320, 320, false),
        (&[2, 77], 320, 768, false),
        (&[2, 4], 5120, 1280, true),
        (&[2, 4], 1280, 2560, true),
        (&[2], 1280, 320, true),
        (&[2, 8, 8], 32, 64, true),
    ];
    for (seed, (lead, n, k, bias)) in cases.into_iter().enumerate() {
        check(seed as u64, lead, n, k, bias);
    }
}

#[test]
fn linear_matches_references_on_odd_shapes() {
    let cases: [(&[usize], usize, usize, bool); 8] = [
        (&[1], 1, 1, true),
        (&[3, 7], 13, 5, true),
        (&[1, 1, 9], 33, 17, false),
        (&[3, 2, 3, 5], 7, 11, true),
        (&[], 19, 23, true),
        (&[5], 1, 301, false),
        (&[1, 303], 9, 3, true),
        (&[3, 77], 37, 61, true),
    ];
    for (seed, (lead, n, k, bias)) in cases.into_iter().enumerate() {
        check(100 + seed as u64, lead, n, k, bias);
    }
}

/// The fused forms for `b` images of `c_in` channels over `spatial` positions, `n` outputs:
/// `linear_add` (tokens + residual), `linear_from_channels` (image → tokens) and
/// `linear_to_channels` (tokens → image + residual), each within 1e-5 of candle's ops and of the
/// f64 loop; returns the largest error off the loop.
fn check_fused(seed: u64, b: usize, spatial: &[usize], c_in: usize, n: usize, bias: bool) -> f32 {
    let dev = Device::Cpu;
    let l: usize = spatial.iter().product();
    let img_shape = |c: usize| [&[b, c][..], spatial].concat();
    let ws = values(seed ^ 0xA5A5, n * c_in, 1.0 / (c_in.max(1) as f32).sqrt());
    let bs = values(seed ^ 0x5A5A, n, 0.5);
    let w = Tensor::from_slice(&ws, (n, c_in), &dev).unwrap();
    let bt = Tensor::from_slice(&bs, n, &dev).unwrap();
    let bias_t = bias.then_some(&bt);
    let naive_bias = bias.then_some(bs.as_slice());
    let mut worst = 0f32;
    let mut compare = |what: &str, ours: &Tensor, candle: &Tensor, naive: &[f32]| {
        assert_eq!(ours.dims(), candle.dims(), "{what}");
        let (ours, candle) = (flat(ours), flat(candle));
        let (e_ref, e_naive) = (max_abs_diff(&ours, &candle), max_abs_diff(&ours, naive));
        assert!(
            e_ref <= 1e-5 && e_naive <= 1e-5,
            "{what} b {b} {spatial:?} {c_in}→{n}: {e_ref:e} off candle, {e_naive:e} off the f64 loop"
        );
        worst = worst.max(e_naive);
    };

    // Tokens + residual.
    let xs = values(seed, b * l * c_in, 1.0);
    let rs = values(seed ^ 0x77, b * l * n, 2.0);
    let x = Tensor::from_slice(&xs, (b, l, c_in), &dev).unwrap();
    let r = Tensor::from_slice(&rs, (b, l, n), &dev).unwrap();
    let naive: Vec<f32> = naive_linear(&xs, &ws, naive_bias, n, c_in).iter().zip(&rs).map(|(y, r)| y + r).collect();
    let candle = (linear_reference(&x, &w, bias_t).unwrap() + &r).unwrap();
    compare("linear_add", &linear_add(&x, &w, bias_t, &r).unwrap(), &candle, &naive);

    // Image → tokens: the naive loop on the transposed image.
    let img = Tensor::from_slice(&values(seed ^ 0x99, b * c_in * l, 1.0), img_shape(c_in).as_slice(), &dev).unwrap();
    let tokens = img.flatten_from(2).unwrap().transpose(1, 2).unwrap().contiguous().unwrap();
    let naive = naive_linear(&flat(&tokens), &ws, naive_bias, n, c_in);
    let candle = linear_reference(&tokens, &w, bias_t).unwrap();
    compare("linear_from_channels", &linear_from_channels(&img, &w, bias_t).unwrap(), &candle, &naive);

    // Tokens → image + residual.
    let res = Tensor::from_slice(&values(seed ^ 0x55, b * n * l, 2.0), img_shape(n).as_slice(), &dev).unwrap();
    let y = naive_linear(&xs, &ws, naive_bias, n, c_in);
    let y_img = Tensor::from_slice(&y, (b, l, n), &dev).unwrap().transpose(1, 2).unwrap();
    let naive = flat(&(y_img.reshape(res.dims()).unwrap() + &res).unwrap());
    let candle_img = linear_reference(&x, &w, bias_t).unwrap().transpose(1, 2).unwrap().reshape(res.dims()).unwrap();
    let candle = (candle_img + &res).unwrap();
    compare("linear_to_channels", &linear_to_channels(&x, &w, bias_t, &res).unwrap(), &candle, &naive);
    worst
}

#[test]
fn fused_forms_match_references() {
    // A spatial transformer's proj_in / proj_out and a transformer block's residual outputs at
    // the tiny UNet's and SD1.5's widths, and odd shapes.
    for (seed, (b, spatial, c_in, n, bias)) in [
        (2, vec![16, 16], 32, 32, true),
        (2, vec![8, 8], 320, 320, true),
        (1, vec![5, 7], 13, 9, false),
        (3, vec![3, 1], 6, 11, true),
        (3, vec![17], 7, 5, true),
        (1, vec![1, 1], 1, 1, true),
        (2, vec![2, 3, 4], 9, 3, false),
    ]
    .into_iter()
    .enumerate()
    {
        check_fused(200 + seed as u64, b, &spatial, c_in, n, bias);
    }
}

#[test]
fn fused_forms_refuse_mismatched_operands() {
    let dev = Device::Cpu;
    let z = |shape: &[usize]| Tensor::zeros(shape, DType::F32, &dev).unwrap();
    let w = z(&[3, 4]);
    let err = |r: deradiff_kernels::Result<Tensor>| match r.expect_err("should fail") {
        e @ Error::InvalidInput { op: "linear", .. } => e.to_string(),
        e => panic!("expected InvalidInput of linear, got {e:?}"),
    };
    assert!(err(linear_add(&z(&[2, 5, 4]), &w, None, &z(&[2, 5, 4]))).contains("residual must be [2, 5, 3]"));
    assert!(err(linear_add(&z(&[2, 5, 4]), &w, None, &z(&[2, 5, 3]).to_dtype(DType::F16).unwrap()))
        .contains("residual is F16"));
    assert!(err(linear_from_channels(&z(&[2, 4]), &w, None)).contains("[B, K, …spatial]"));
    assert!(err(linear_from_channels(&z(&[2, 5, 3, 3]), &w, None)).contains("5 features"));
    assert!(err(linear_to_channels(&z(&[2, 6, 4]), &w, None, &z(&[2, 3, 2, 2]))).contains("6 positions"));
    assert!(err(linear_to_channels(&z(&[2, 4, 4]), &w, None, &z(&[2, 4, 2, 2]))).contains("N = 3"));
    assert!(err(linear_to_channels(&z(&[2, 4]), &w, None, &z(&[2, 3, 2, 2]))).contains("[B, L, K]"));
    assert_eq!(linear_to_channels(&z(&[2, 4, 4]), &w, None, &z(&[2, 3, 2, 2])).unwrap().dims(), [2, 3, 2, 2]);
    assert_eq!(linear_from_channels(&z(&[2, 4, 2, 3]), &w, None).unwrap().dims(), [2, 6, 3]);
}

#[test]
fn linear_of_empty_tensors() {
    let dev = Device::Cpu;
    // No rows.
    let x = Tensor::zeros((0, 4), DType::F32, &dev).unwrap();
    let w = Tensor::ones((3, 4), DType::F32, &dev).unwrap();
    assert_eq!(linear(&x, &w, None).unwrap().dims(), [0, 3]);
    // No input features: the output is the bias.
    let x = Tensor::zeros((2, 0), DType::F32, &dev).unwrap();
    let w = Tensor::zeros((3, 0), DType::F32, &dev).unwrap();
    let b = Tensor::new(&[1f32, -2.0, 3.0], &dev).unwrap();
    assert_eq!(flat(&linear(&x, &w, Some(&b)).unwrap()), [1.0, -2.0, 3.0, 1.0, -2.0, 3.0]);
    assert_eq!(flat(&linear(&x, &w, None).unwrap()), [0.0; 6]);
}

#[test]
fn linear_takes_strided_input() {
    let (m, n, k) = (9, 6, 11);
    let xs = values(3, m * k, 1.0);
    let xt = Tensor::from_slice(&xs, (k, m), &Device::Cpu).unwrap().t().unwrap();
    assert!(!xt.is_contiguous());
    let w = Tensor::from_slice(&values(4, n * k, 0.3), (n, k), &Device::Cpu).unwrap();
    let wt = w.t().unwrap().contiguous().unwrap().t().unwrap();
    assert!(!wt.is_contiguous());
    let ours = flat(&linear(&xt, &wt, None).unwrap());
    let reference = flat(&linear_reference(&xt, &w, None).unwrap());
    assert!(max_abs_diff(&ours, &reference) <= 1e-5);
}

#[test]
fn linear_in_f16_computes_in_f32_and_keeps_the_dtype() {
    let (m, n, k) = (21, 35, 130);
    let dev = Device::Cpu;
    let x = Tensor::from_slice(&values(5, m * k, 1.0), (m, k), &dev).unwrap();
    let w = Tensor::from_slice(&values(6, n * k, 0.1), (n, k), &dev).unwrap();
    let b = Tensor::from_slice(&values(7, n, 0.5), n, &dev).unwrap();
    for dtype in [DType::F16, DType::BF16, DType::F64] {
        let (xd, wd, bd) = (x.to_dtype(dtype).unwrap(), w.to_dtype(dtype).unwrap(), b.to_dtype(dtype).unwrap());
        let ours = linear(&xd, &wd, Some(&bd)).unwrap();
        assert_eq!(ours.dtype(), dtype);
        // Against the exact product of the same (rounded) inputs: what is left is the output's
        // rounding to `dtype` (outputs are within ±4 here: f16 steps 2⁻⁹, bf16 2⁻⁶ there).
        let naive = naive_linear(&flat(&xd), &flat(&wd), Some(&flat(&bd)), n, k);
        let tol = match dtype {
            DType::F16 => 4e-3,
            DType::BF16 => 3e-2,
            _ => 1e-5,
        };
        let err = max_abs_diff(&flat(&ours), &naive);
        assert!(err <= tol, "{dtype:?}: {err:e}");
    }
}

#[test]
fn linear_refuses_mismatched_operands() {
    let dev = Device::Cpu;
    let x = Tensor::zeros((2, 5), DType::F32, &dev).unwrap();
    let bad = |w: &Tensor, b: Option<&Tensor>, needle: &str| {
        let err = linear(&x, w, b).unwrap_err();
        assert!(matches!(err, Error::InvalidInput { op: "linear", .. }), "{err:?}");
        assert!(err.to_string().contains(needle), "{err}");
        assert!(matches!(linear_reference(&x, w, b), Err(Error::InvalidInput { op: "linear", .. })));
    };
    bad(&Tensor::zeros((3, 4), DType::F32, &dev).unwrap(), None, "takes 4");
    bad(&Tensor::zeros(5, DType::F32, &dev).unwrap(), None, "weight [N, K = 5]");
    bad(&Tensor::zeros((3, 5), DType::F16, &dev).unwrap(), None, "weight is F16");
    let w = Tensor::zeros((3, 5), DType::F32, &dev).unwrap();
    bad(&w, Some(&Tensor::zeros(4, DType::F32, &dev).unwrap()), "bias must be [3]");
    bad(&w, Some(&Tensor::zeros(3, DType::F16, &dev).unwrap()), "bias is F16");
    let scalar = Tensor::new(1f32, &dev).unwrap();
    assert!(linear(&scalar, &w, None).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn linear_matches_references_on_random_shapes(
        seed in any::<u64>(),
        batch in 1usize..=3,
        rows in 1usize..90,
        n in 1usize..80,
        k in 1usize..200,
        bias in any::<bool>(),
    ) {
        prop_assert!(check(seed, &[batch, rows], n, k, bias) <= 1e-5);
    }

    #[test]
    fn fused_forms_match_references_on_random_shapes(
        seed in any::<u64>(),
        batch in 1usize..=3,
        h in 1usize..12,
        w in 1usize..12,
        c_in in 1usize..48,
        n in 1usize..48,
        bias in any::<bool>(),
    ) {
        prop_assert!(check_fused(seed, batch, &[h, w], c_in, n, bias) <= 1e-5);
    }
}
