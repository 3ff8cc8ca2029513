//! The device path (what the kernels run on a GPU: candle's ops in the tensors' own dtype), run
//! on the CPU with `with_device_path`, against the fused CPU kernels on the same values in f32:
//! attention (both layouts, chunked or not) and group norm (+ SiLU) within 1e-5 in f32, 2e-3 in
//! f16 and 1e-2 in bf16 of the largest output (relative), and so linear layers, convolutions and
//! GEGLU. The inputs are rounded to the dtype first, so the errors are the computation's own.

mod common;

use candle_core::{DType, Device, Tensor};
use common::values;
use deradiff_kernels::{
    attention, attention_heads, attention_heads_budget, conv2d, conv2d_add, geglu, group_norm, linear, linear_add,
    linear_from_channels, linear_to_channels, with_device_path, Error, Result,
};

/// Relative tolerance of each dtype (of the largest absolute output).
fn tolerance(dtype: DType) -> f32 {
    match dtype {
        DType::F32 => 1e-5,
        DType::F16 => 2e-3,
        _ => 1e-2,
    }
}

/// `values` as a `shape` tensor in `dtype`.
fn tensor(seed: u64, shape: &[usize], amp: f32, dtype: DType) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(values(seed, n, amp), shape, &Device::Cpu).unwrap().to_dtype(dtype).unwrap()
}

fn f32(t: &Tensor) -> Tensor {
    t.to_dtype(DType::F32).unwrap()
}

/// max |got − want| / max |want| (both read as f32), checking shape and dtype on the way.
fn relative_error(got: &Tensor, want: &Tensor, dtype: DType) -> f32 {
    assert_eq!(got.dims(), want.dims());
    assert_eq!(got.dtype(), dtype);
    let max = |t: &Tensor| t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    let got = f32(got);
    assert!(got.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().all(|v| v.is_finite()));
    max(&(&got - want).unwrap()) / max(want).max(1e-6)
}

/// `f` on the device path in `dtype` against `f` on the CPU kernels in f32 with the same
/// (rounded) inputs; `inputs` makes them in a dtype.
fn check(name: &str, dtype: DType, inputs: impl Fn(DType) -> Vec<Tensor>, f: impl Fn(&[Tensor]) -> Result<Tensor>) {
    let args = inputs(dtype);
    let got = with_device_path(|| f(&args)).unwrap();
    let want = f(&args.iter().map(f32).collect::<Vec<_>>()).unwrap();
    let err = relative_error(&got, &want, dtype);
    eprintln!("{name} {dtype:?}: {err:.2e}");
    assert!(err <= tolerance(dtype), "{name} {dtype:?}: device path {err:e} off the CPU kernel");
}

const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

#[test]
fn attention_heads_matches_the_cpu_kernel() {
    // (batch, heads, Lq, Lk, head dim, amplitude of q and k): self-attention over 8×8 latents,
    // SD's cross-attention to 77 tokens, one head, odd sizes. Scores stay within ±10: bf16 scores
    // (8 bits) of 30 or more are off by 0.1 or more, which no kernel that stores them avoids.
    for (i, &(b, heads, lq, lk, d, amp)) in
        [(2, 8, 64, 64, 8, 2.0), (2, 4, 64, 77, 16, 2.0), (1, 1, 37, 19, 40, 1.0), (3, 2, 5, 131, 24, 2.0)]
            .iter()
            .enumerate()
    {
        let c = heads * d;
        let scale = 1.0 / (d as f64).sqrt();
        for dtype in DTYPES {
            let seed = 10 * i as u64;
            let inputs = |dt| {
                vec![
                    tensor(seed, &[b, lq, c], amp, dt),
                    tensor(seed + 1, &[b, lk, c], amp, dt),
                    tensor(seed + 2, &[b, lk, c], 1.0, dt),
                ]
            };
            check(&format!("attention_heads {b}x{heads}x{lq}x{lk}x{d}"), dtype, inputs, |t| {
                attention_heads(&t[0], &t[1], &t[2], heads, scale)
            });
        }
    }
}

#[test]
fn attention_matches_the_cpu_kernel_on_any_layout() {
    for dtype in DTYPES {
        let inputs = |dt| {
            vec![tensor(1, &[6, 33, 16], 2.0, dt), tensor(2, &[6, 50, 16], 2.0, dt), tensor(3, &[6, 50, 16], 1.0, dt)]
        };
        check("attention 6x33x50x16", dtype, inputs, |t| attention(&t[0], &t[1], &t[2], 0.25));
        // Transposed (non-contiguous) operands are made contiguous, never read with strides the
        // GPU's matmul refuses.
        let inputs = |dt| {
            vec![tensor(4, &[6, 16, 33], 2.0, dt), tensor(5, &[6, 16, 50], 2.0, dt), tensor(6, &[6, 16, 50], 1.0, dt)]
        };
        check("attention transposed", dtype, inputs, |t| {
            let tr = |x: &Tensor| x.transpose(1, 2).unwrap();
            attention(&tr(&t[0]), &tr(&t[1]), &tr(&t[2]), 0.25)
        });
    }
}

#[test]
fn chunked_queries_give_the_unchunked_result() {
    let (b, heads, lq, lk, d) = (2, 3, 50, 40, 8);
    let c = heads * d;
    for dtype in [DType::F32, DType::F16] {
        let (q, k, v) = (
            tensor(1, &[b, lq, c], 2.0, dtype),
            tensor(2, &[b, lk, c], 2.0, dtype),
            tensor(3, &[b, lk, c], 1.0, dtype),
        );
        let whole = with_device_path(|| attention_heads(&q, &k, &v, heads, 0.3)).unwrap();
        let cpu = attention_heads(&f32(&q), &f32(&k), &f32(&v), heads, 0.3).unwrap();
        // One query's scores take b·heads·lk elements: budgets of 0 (one query a chunk), 7 and
        // 16 queries (a short last chunk), all but one, and exactly all. In f32 the chunks give
        // the unchunked result; in f16 the CPU's GEMM (not cuBLAS) rounds differently with the
        // number of rows, so each is held to the CPU kernel instead, and one-row chunks, which it
        // sums in f16, are left to f32.
        let per_query = b * heads * lk * dtype.size_in_bytes();
        let budgets: &[usize] = if dtype == DType::F32 { &[0, 7, 16, lq - 1, lq] } else { &[7, 16, lq - 1, lq] };
        for &queries in budgets {
            let chunked =
                with_device_path(|| attention_heads_budget(&q, &k, &v, heads, 0.3, queries * per_query)).unwrap();
            let (err, limit) = match dtype {
                DType::F32 => (relative_error(&chunked, &whole, dtype), 1e-6),
                _ => (relative_error(&chunked, &cpu, dtype), tolerance(dtype)),
            };
            assert!(err <= limit, "{dtype:?}, {queries} queries a chunk: {err:e} off");
        }
    }
}

#[test]
fn group_norm_matches_the_cpu_kernel() {
    // (batch, channels, spatial dims, groups, offset common to all values): SD's 32 groups, one
    // channel per group, a rank-3 input, an offset as large as the spread.
    for (i, (b, c, spatial, groups, offset)) in [
        (2, 64, vec![8, 8], 32, 0.0f32),
        (1, 32, vec![5, 7], 32, 0.5),
        (3, 12, vec![10], 4, 3.0),
        (2, 96, vec![4, 4], 32, -1.0),
    ]
    .into_iter()
    .enumerate()
    {
        let mut shape = vec![b, c];
        shape.extend(&spatial);
        for dtype in DTYPES {
            for silu in [false, true] {
                let seed = 10 * i as u64;
                let inputs = |dt| {
                    let x = (tensor(seed, &shape, 3.0, DType::F32) + offset as f64).unwrap().to_dtype(dt).unwrap();
                    vec![x, tensor(seed + 1, &[c], 1.5, dt), tensor(seed + 2, &[c], 0.5, dt)]
                };
                check(&format!("group_norm {shape:?} / {groups} silu {silu}"), dtype, inputs, |t| {
                    group_norm(&t[0], groups, &t[1], &t[2], 1e-5, silu)
                });
            }
        }
    }
    // A non-contiguous input (a transposed view) is normalised as its values say.
    for dtype in DTYPES {
        let inputs =
            |dt| vec![tensor(7, &[2, 8, 8, 64], 3.0, dt), tensor(8, &[64], 1.5, dt), tensor(9, &[64], 0.5, dt)];
        check("group_norm transposed", dtype, inputs, |t| {
            group_norm(&t[0].transpose(1, 3).unwrap(), 32, &t[1], &t[2], 1e-6, true)
        });
    }
}

#[test]
fn linear_layers_and_convolutions_match_the_cpu_kernels() {
    let (b, l, k, n) = (2, 24, 32, 48);
    for dtype in DTYPES {
        // Inputs by index: 0 tokens [b, l, k], 1 weight [n, k], 2 bias [n], 3 residual [b, l, n],
        // 4 image [b, k, 4, 6], 5 image residual [b, n, 4, 6], 6 tokens [b, l, n], 7 square
        // weight [n, n], 8 kernel [n, k, 3, 3], 9 bias per batch item [b, n].
        let inputs = |dt| {
            let shapes: [(&[usize], f32); 10] = [
                (&[b, l, k], 1.0),
                (&[n, k], 0.2),
                (&[n], 0.5),
                (&[b, l, n], 1.0),
                (&[b, k, 4, 6], 1.0),
                (&[b, n, 4, 6], 1.0),
                (&[b, l, n], 1.0),
                (&[n, n], 0.2),
                (&[n, k, 3, 3], 0.1),
                (&[b, n], 0.5),
            ];
            shapes.iter().enumerate().map(|(i, (shape, amp))| tensor(i as u64 + 1, shape, *amp, dt)).collect()
        };
        check("linear", dtype, inputs, |t| linear(&t[0], &t[1], Some(&t[2])));
        check("linear_add", dtype, inputs, |t| linear_add(&t[0], &t[1], Some(&t[2]), &t[3]));
        check("linear_from_channels", dtype, inputs, |t| linear_from_channels(&t[4], &t[1], Some(&t[2])));
        check("linear_to_channels", dtype, inputs, |t| linear_to_channels(&t[6], &t[7], Some(&t[2]), &t[5]));
        check("conv2d", dtype, inputs, |t| conv2d(&t[4], &t[8], Some(&t[2]), 1, 1));
        check("conv2d stride 2, a bias per batch item", dtype, inputs, |t| conv2d(&t[4], &t[8], Some(&t[9]), 2, 1));
        check("conv2d_add", dtype, inputs, |t| conv2d_add(&t[4], &t[8], Some(&t[2]), 1, 1, &t[5]));
        check("geglu", dtype, inputs, |t| geglu(&t[0]));
    }
}

#[test]
fn the_device_path_refuses_bad_inputs_with_typed_errors() {
    let t = |shape: &[usize]| tensor(1, shape, 1.0, DType::F16);
    with_device_path(|| {
        let err = attention_heads(&t(&[2, 4, 8]), &t(&[2, 5, 8]), &t(&[2, 5, 8]), 3, 1.0).unwrap_err();
        assert!(matches!(err, Error::InvalidInput { op: "attention", .. }), "{err}");
        let err = attention_heads(&t(&[2, 4, 8]), &t(&[1, 5, 8]), &t(&[1, 5, 8]), 2, 1.0).unwrap_err();
        assert!(matches!(err, Error::InvalidInput { op: "attention", .. }), "{err}");
        let err = attention(&t(&[2, 4, 8]), &t(&[2, 0, 8]), &t(&[2, 0, 8]), 1.0).unwrap_err();
        assert!(matches!(err, Error::InvalidInput { op: "attention", .. }), "{err}");
        let err = group_norm(&t(&[2, 6, 3]), 4, &t(&[6]), &t(&[6]), 1e-5, true).unwrap_err();
        assert!(matches!(err, Error::InvalidInput { op: "group_norm", .. }), "{err}");
        // Empty batches and queries give empty results.
        assert_eq!(attention_heads(&t(&[0, 4, 8]), &t(&[0, 5, 8]), &t(&[0, 5, 8]), 2, 1.0).unwrap().dims(), &[0, 4, 8]);
        assert_eq!(attention_heads(&t(&[2, 0, 8]), &t(&[2, 5, 8]), &t(&[2, 5, 8]), 2, 1.0).unwrap().dims(), &[2, 0, 8]);
        assert_eq!(attention(&t(&[3, 0, 8]), &t(&[3, 5, 8]), &t(&[3, 5, 8]), 1.0).unwrap().dims(), &[3, 0, 8]);
        assert_eq!(group_norm(&t(&[0, 8, 3]), 4, &t(&[8]), &t(&[8]), 1e-5, true).unwrap().dims(), &[0, 8, 3]);
    });
}
