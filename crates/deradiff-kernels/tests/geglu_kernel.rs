//! The GEGLU kernel (`deradiff_kernels::geglu`) against candle's chunk + `gelu_erf` + mul
//! (`geglu_reference`) and a naive f64 loop with its own f64 `erf`: within 1e-5 (relative to the
//! value or to its hidden state where either exceeds 1, since f32 products round at that scale) on the
//! UNet's widths and odd ones (F not a multiple of 8, batch 1 and 3), inputs within ±6 and far
//! beyond, zeros, empty tensors, f16, and the errors for a shape that is not `[…, 2F]`.

mod common;

use candle_core::{DType, Device, Tensor};
use common::values;
use deradiff_kernels::{geglu, geglu_reference, Error};
use proptest::prelude::*;

/// `erf` in f64 (the Maclaurin series below 2.5, the continued fraction of erfc above), about
/// 1e-15 absolute.
fn erf64(x: f64) -> f64 {
    let a = x.abs();
    let r = if a < 2.5 {
        let (mut term, mut sum, mut n) = (a, a, 0.0);
        while term.abs() > 1e-18 * sum.abs() {
            n += 1.0;
            term *= -a * a / n;
            sum += term / (2.0 * n + 1.0);
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        let mut frac = 0.0;
        for k in (1..80).rev() {
            frac = (k as f64 / 2.0) / (a + frac);
        }
        1.0 - (-a * a).exp() / std::f64::consts::PI.sqrt() / (a + frac)
    };
    r.copysign(x)
}

/// diffusers' GEGLU, one element at a time in f64: `h · g/2 · (1 + erf(g/√2))`.
fn naive_geglu(x: &[f32], f: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len() / 2);
    for row in x.chunks_exact(2 * f) {
        for j in 0..f {
            let (h, g) = (row[j] as f64, row[f + j] as f64);
            out.push((h * 0.5 * g * (1.0 + erf64(g / std::f64::consts::SQRT_2))) as f32);
        }
    }
    out
}

/// The largest `|a − b| / max(1, |b|, |h|)`, where `h` is the hidden state that multiplied each
/// output's GELU: the GELU factor (the only thing approximated) within the tolerance absolute, and
/// the product within it relative to the scale of its inputs.
fn max_err(a: &[f32], b: &[f32], data: &[f32], f: usize) -> f32 {
    assert_eq!(a.len(), b.len());
    let hidden = data.chunks_exact(2 * f.max(1)).flat_map(|row| row[..f].iter().map(|h| h.abs()));
    a.iter().zip(b).zip(hidden).map(|((a, b), h)| (a - b).abs() / b.abs().max(1.0).max(h)).fold(0.0, f32::max)
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

/// `geglu` of `data` shaped `shape` (last dimension 2F) against candle's reference and the naive
/// f64 loop, both within 1e-5 (see [`max_err`]); returns the error off the f64 loop.
fn check(data: &[f32], shape: &[usize]) -> f32 {
    let f = shape[shape.len() - 1] / 2;
    let x = Tensor::from_slice(data, shape, &Device::Cpu).unwrap();
    let ours = geglu(&x).unwrap();
    let mut want_shape = shape.to_vec();
    *want_shape.last_mut().unwrap() = f;
    assert_eq!(ours.dims(), want_shape.as_slice());
    assert_eq!(ours.dtype(), DType::F32);
    let ours = flat(&ours);
    let reference = flat(&geglu_reference(&x).unwrap());
    let naive = naive_geglu(data, f);
    let (e_ref, e_naive) = (max_err(&ours, &reference, data, f), max_err(&ours, &naive, data, f));
    assert!(e_ref <= 1e-5 && e_naive <= 1e-5, "{shape:?}: {e_ref:e} off candle, {e_naive:e} off the f64 loop");
    e_naive
}

#[test]
fn geglu_matches_reference_at_unet_widths() {
    // (batch, tokens, F): SD1.5's feed-forwards (inner 4·320 … 4·1280) and the tiny UNet's.
    for (seed, (b, l, f)) in
        [(1, 7, 1280), (2, 5, 2560), (1, 3, 5120), (2, 64, 128), (2, 16, 256)].into_iter().enumerate()
    {
        let n = b * l * 2 * f;
        check(&values(seed as u64, n, 6.0), &[b, l, 2 * f]);
    }
}

#[test]
fn geglu_matches_reference_on_odd_shapes() {
    for (seed, shape) in [
        vec![1, 1, 2],
        vec![3, 9, 6],
        vec![3, 11, 26],
        vec![1, 13, 74],
        vec![2, 3, 5, 18],
        vec![7, 34],
        vec![10],
        vec![3, 1001, 14],
    ]
    .into_iter()
    .enumerate()
    {
        let n: usize = shape.iter().product();
        check(&values(100 + seed as u64, n, 6.0), &shape);
    }
}

#[test]
fn geglu_handles_zeros_and_large_inputs() {
    let f = 21;
    // Gates across the whole range: zero, ±tiny, the erf polynomials' seams (±1, ±4 after /√2),
    // ±6, ±60, ±1e4; hidden states of both signs and magnitudes.
    let gates = [
        0.0,
        -0.0,
        1e-30,
        -1e-30,
        1e-4,
        -1e-4,
        std::f32::consts::SQRT_2,
        -std::f32::consts::SQRT_2,
        5.656_854,
        -5.656_854,
        6.0,
        -6.0,
        8.0,
        -8.0,
        60.0,
        -60.0,
        1e4,
        -1e4,
        0.5,
        -3.0,
        3.0,
    ];
    let hidden = [
        1.0, -2.0, 0.0, 5.0, -6.0, 100.0, -1e3, 3.0, 0.25, 7.0, -7.0, 1.0, 1.0, 2.0, -2.0, 10.0, 1.0, 1.0, 0.0, 4.0,
        4.0,
    ];
    let mut data = Vec::new();
    for r in 0..3 {
        data.extend(hidden.iter().map(|h| h * (r as f32 + 1.0)));
        data.extend(gates.iter().map(|g| g * if r == 2 { -1.0 } else { 1.0 }));
    }
    check(&data, &[3, 2 * f]);
    check(&vec![0.0; 3 * 2 * 9], &[1, 3, 18]);
    let x = Tensor::from_slice(&data, &[3, 2 * f], &Device::Cpu).unwrap();
    assert!(flat(&geglu(&x).unwrap()).iter().all(|v| v.is_finite()));
}

#[test]
fn geglu_keeps_nan() {
    let x = Tensor::from_slice(&[1.0f32, 2.0, f32::NAN, 1.0], &[1, 4], &Device::Cpu).unwrap();
    let y = flat(&geglu(&x).unwrap());
    assert!(y[0].is_nan());
    assert!((y[1] - 2.0 * 0.841_344_7).abs() < 1e-6, "{}", y[1]);
}

#[test]
fn geglu_of_empty_tensors_is_empty() {
    for (shape, want) in [(vec![0, 8], vec![0, 4]), (vec![3, 0], vec![3, 0]), (vec![2, 0, 6], vec![2, 0, 3])] {
        let x = Tensor::zeros(shape.as_slice(), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(geglu(&x).unwrap().dims(), want.as_slice());
    }
}

#[test]
fn geglu_takes_strided_input() {
    // A transposed [2F, rows] view: the kernel runs on a contiguous copy.
    let (rows, f) = (9, 11);
    let data = values(7, rows * 2 * f, 5.0);
    let xt = Tensor::from_slice(&data, &[2 * f, rows], &Device::Cpu).unwrap().t().unwrap();
    assert!(!xt.is_contiguous());
    let ours = flat(&geglu(&xt).unwrap());
    let reference = flat(&geglu_reference(&xt).unwrap());
    assert!(max_err(&ours, &reference, &data, f) <= 1e-5);
}

#[test]
fn geglu_in_f16_and_f64_computes_in_f32_and_keeps_the_dtype() {
    let (b, l, f) = (3, 17, 45);
    let data = values(11, b * l * 2 * f, 4.0);
    let x = Tensor::from_slice(&data, &[b, l, 2 * f], &Device::Cpu).unwrap();
    for dtype in [DType::F16, DType::BF16, DType::F64] {
        let xd = x.to_dtype(dtype).unwrap();
        let ours = geglu(&xd).unwrap();
        assert_eq!(ours.dtype(), dtype);
        // Against the exact GEGLU of the same (rounded) inputs: the only error left is the output's
        // rounding to `dtype` (f16 has a 2⁻¹¹ relative step, bf16 2⁻⁸).
        let rounded = flat(&xd);
        let naive = naive_geglu(&rounded, f);
        let tol = match dtype {
            DType::F16 => 1e-3,
            DType::BF16 => 8e-3,
            _ => 1e-5,
        };
        let err = max_err(&flat(&ours), &naive, &rounded, f);
        assert!(err <= tol, "{dtype:?}: {err:e}");
    }
}

#[test]
fn geglu_refuses_shapes_that_are_not_hidden_then_gate() {
    let odd = Tensor::zeros((2, 3, 7), DType::F32, &Device::Cpu).unwrap();
    let err = geglu(&odd).unwrap_err();
    assert!(matches!(err, Error::InvalidInput { op: "geglu", .. }), "{err:?}");
    assert!(err.to_string().contains("even last dimension"), "{err}");
    assert!(matches!(geglu_reference(&odd), Err(Error::InvalidInput { op: "geglu", .. })));
    let scalar = Tensor::new(1f32, &Device::Cpu).unwrap();
    assert!(geglu(&scalar).is_err());
    assert!(geglu_reference(&scalar).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn geglu_matches_reference_and_naive(
        seed in any::<u64>(),
        batch in 1usize..=3,
        rows in 1usize..40,
        f in 1usize..70,
        amp in prop_oneof![Just(0.5f32), Just(3.0f32), Just(6.0f32), Just(12.0f32), Just(200.0f32)],
    ) {
        let n = batch * rows * 2 * f;
        let err = check(&values(seed, n, amp), &[batch, rows, 2 * f]);
        prop_assert!(err <= 1e-5);
    }
}
