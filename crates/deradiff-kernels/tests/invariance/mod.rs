//! Batch invariance, bit for bit: every kernel gives each batch item (each row of a GEMM) the
//! same bits whether it runs alone, in a batch of any size, or split into other batches, on 1 or
//! 2 threads — for random shapes, including those where the `gemm` crate alone changes its
//! reduction order (1 row or column, at most 256 outputs, depths above 512, the convolution's
//! several-images-per-GEMM path against its tiled one).

use candle_core::{Device, Tensor};
use deradiff_kernels::{
    attention, attention_heads, conv2d, conv2d_add, geglu, group_norm, linear, linear_add, linear_from_channels,
    linear_to_channels,
};
use proptest::prelude::*;

use super::common::values;

fn tensor(data: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_slice(data, shape, &Device::Cpu).unwrap()
}

/// The bits of every element.
fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(f32::to_bits).collect()
}

/// `f` on rayon's pool of `threads` threads (the kernels' and candle's threads).
fn on_threads<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(f)
}

/// Asserts that `run` on the whole batch of `b` items (dim 0 of every input it slices) gives,
/// on 1 and 2 threads, the bits of `run` on each item alone and on the batch cut in two at
/// `cut`, each part run on its own. `run(start, len)` computes items `start .. start + len`.
fn assert_invariant(label: &str, b: usize, cut: usize, run: impl Fn(usize, usize) -> Tensor + Sync) {
    let whole = on_threads(2, || run(0, b));
    assert_eq!(whole.dims()[0], b, "{label}");
    let per_item = whole.elem_count() / b.max(1);
    let want = bits(&whole);
    assert_eq!(bits(&on_threads(1, || run(0, b))), want, "{label}: 1 thread against 2");
    for threads in [1, 2] {
        for i in 0..b {
            let alone = on_threads(threads, || run(i, 1));
            assert!(
                bits(&alone) == want[i * per_item..][..per_item],
                "{label}: item {i} alone on {threads} thread(s) differs from item {i} of a batch of {b}"
            );
        }
    }
    let cut = cut.clamp(1, b.max(1));
    if cut < b {
        let (a, rest) = on_threads(2, || (run(0, cut), run(cut, b - cut)));
        let mut got = bits(&a);
        got.extend(bits(&rest));
        assert!(got == want, "{label}: the batch of {b} run as {cut} + {} items differs", b - cut);
    }
}

/// `t[start .. start + len]` along dim 0, contiguous.
fn rows(t: &Tensor, start: usize, len: usize) -> Tensor {
    t.narrow(0, start, len).unwrap().contiguous().unwrap()
}

fn check_linears(seed: u64, b: usize, l: usize, k: usize, n: usize, cut: usize) {
    let x = tensor(&values(seed, b * l * k, 1.0), &[b, l, k]);
    let w = tensor(&values(seed ^ 1, n * k, 1.0 / (k as f32).sqrt()), &[n, k]);
    let bias = tensor(&values(seed ^ 2, n, 0.5), &[n]);
    let res = tensor(&values(seed ^ 3, b * l * n, 1.0), &[b, l, n]);
    let label = format!("linear b={b} l={l} k={k} n={n}");
    assert_invariant(&label, b, cut, |s, len| linear(&rows(&x, s, len), &w, Some(&bias)).unwrap());
    assert_invariant(&format!("{label} no bias"), b, cut, |s, len| linear(&rows(&x, s, len), &w, None).unwrap());
    assert_invariant(&format!("{label} add"), b, cut, |s, len| {
        linear_add(&rows(&x, s, len), &w, Some(&bias), &rows(&res, s, len)).unwrap()
    });
    // Each row of the 2-d form alone (`M = rows`: the batch is the GEMM's M).
    let x2 = x.reshape((b * l, k)).unwrap();
    assert_invariant(&format!("{label} 2-d"), b * l, cut, |s, len| {
        linear(&rows(&x2, s, len), &w, Some(&bias)).unwrap()
    });
    // The image layouts: x as `[B, K, h·w]` channels, out as `[B, N, h·w]`.
    let xc = tensor(&values(seed ^ 4, b * k * l, 1.0), &[b, k, l, 1]);
    assert_invariant(&format!("{label} from channels"), b, cut, |s, len| {
        linear_from_channels(&rows(&xc, s, len), &w, Some(&bias)).unwrap()
    });
    let resc = tensor(&values(seed ^ 5, b * n * l, 1.0), &[b, n, l, 1]);
    assert_invariant(&format!("{label} to channels"), b, cut, |s, len| {
        linear_to_channels(&rows(&x, s, len), &w, Some(&bias), &rows(&resc, s, len)).unwrap()
    });
}

#[allow(clippy::too_many_arguments)]
fn check_conv(seed: u64, b: usize, ci: usize, co: usize, hw: (usize, usize), kk: usize, stride: usize, pad: usize) {
    let (h, w) = hw;
    let x = tensor(&values(seed, b * ci * h * w, 1.0), &[b, ci, h, w]);
    let wt = tensor(&values(seed ^ 1, co * ci * kk * kk, 1.0 / ((ci * kk * kk) as f32).sqrt()), &[co, ci, kk, kk]);
    let bias = tensor(&values(seed ^ 2, co, 0.5), &[co]);
    let per_item = tensor(&values(seed ^ 3, b * co, 0.5), &[b, co]);
    let label = format!("conv2d b={b} ci={ci} co={co} {h}x{w} k={kk} s={stride} p={pad}");
    let out = conv2d(&x, &wt, Some(&bias), stride, pad).unwrap();
    let res = tensor(&values(seed ^ 4, out.elem_count(), 1.0), out.dims());
    assert_invariant(&label, b, b / 2, |s, len| conv2d(&rows(&x, s, len), &wt, Some(&bias), stride, pad).unwrap());
    assert_invariant(&format!("{label} bias per item"), b, b / 2, |s, len| {
        conv2d(&rows(&x, s, len), &wt, Some(&rows(&per_item, s, len)), stride, pad).unwrap()
    });
    assert_invariant(&format!("{label} add"), b, b / 2, |s, len| {
        conv2d_add(&rows(&x, s, len), &wt, None, stride, pad, &rows(&res, s, len)).unwrap()
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    /// Linear layers, every layout: M from 1 row to a few dozen, K and N from 1 to 40, and
    /// depths past one 512-block.
    #[test]
    fn linear_rows_are_batch_invariant(
        seed in any::<u64>(), b in 1usize..6, l in 1usize..9, k in 1usize..40, n in 1usize..40,
        deep in any::<bool>(), cut in 1usize..6,
    ) {
        check_linears(seed, b, l, if deep { 513 + k * 7 } else { k }, n, cut);
    }

    /// Convolutions: 1×1 (no im2col), 3×3 with padding, strided; small images (several per
    /// GEMM in a batch, one alone).
    #[test]
    fn conv_items_are_batch_invariant(
        seed in any::<u64>(), b in 1usize..5, ci in 1usize..6, co in 1usize..24, h in 1usize..9, w in 1usize..9,
        kind in 0usize..3,
    ) {
        let (kk, stride, pad) = [(1, 1, 0), (3, 1, 1), (3, 2, 1)][kind];
        check_conv(seed, b, ci, co, (h, w), kk, stride, pad);
    }

    /// Attention (both layouts), group norm (+ SiLU) and GEGLU: one item's rows never meet
    /// another's.
    #[test]
    fn attention_norm_and_geglu_items_are_batch_invariant(
        seed in any::<u64>(), b in 1usize..5, heads in 1usize..4, lq in 1usize..70, lk in 1usize..40,
        d in 1usize..20, groups in 1usize..4, silu in any::<bool>(),
    ) {
        let c = heads * d;
        let q = tensor(&values(seed, b * lq * c, 1.0), &[b, lq, c]);
        let k = tensor(&values(seed ^ 1, b * lk * c, 1.0), &[b, lk, c]);
        let v = tensor(&values(seed ^ 2, b * lk * c, 1.0), &[b, lk, c]);
        let scale = 1.0 / (d as f64).sqrt();
        let label = format!("attention b={b} heads={heads} lq={lq} lk={lk} d={d}");
        assert_invariant(&label, b, 1, |s, len| {
            attention_heads(&rows(&q, s, len), &rows(&k, s, len), &rows(&v, s, len), heads, scale).unwrap()
        });
        assert_invariant(&format!("{label} split"), b, 1, |s, len| {
            attention(&rows(&q, s, len), &rows(&k, s, len), &rows(&v, s, len), scale).unwrap()
        });
        let ch = groups * (1 + d % 5);
        let x = tensor(&values(seed ^ 3, b * ch * lq, 2.0), &[b, ch, lq, 1]);
        let (gw, gb) = (tensor(&values(seed ^ 4, ch, 1.0), &[ch]), tensor(&values(seed ^ 5, ch, 1.0), &[ch]));
        assert_invariant(&format!("group_norm b={b} c={ch} groups={groups} silu={silu}"), b, 1, |s, len| {
            group_norm(&rows(&x, s, len), groups, &gw, &gb, 1e-5, silu).unwrap()
        });
        let proj = tensor(&values(seed ^ 6, b * lq * 2 * c, 2.0), &[b, lq, 2 * c]);
        assert_invariant(&format!("geglu b={b} c={c}"), b, 1, |s, len| geglu(&rows(&proj, s, len)).unwrap());
    }
}

/// Larger fixed shapes: the convolution's tiled path on an image of more pixels than a task's
/// tile (one item alone) against its grouped path (items side by side in one GEMM), SD-like
/// channel counts with depths above 512, and linears of 77-token rows.
#[test]
fn larger_shapes_are_batch_invariant() {
    check_conv(7, 3, 4, 40, (48, 40), 3, 1, 1);
    check_conv(8, 2, 80, 24, (9, 7), 3, 1, 1);
    check_conv(9, 3, 600, 20, (3, 5), 1, 1, 0);
    // 4 output channels (SD's `conv_out`): 4 × (pixels of a tile) outputs per GEMM, above and
    // below 256 as the images are grouped or tiled.
    check_conv(12, 3, 32, 4, (40, 36), 3, 1, 1);
    check_conv(13, 4, 8, 4, (8, 8), 3, 1, 1);
    check_linears(10, 3, 77, 768, 40, 2);
    check_linears(11, 4, 1, 1280, 33, 3);
}
