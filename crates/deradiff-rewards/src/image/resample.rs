//! PIL's resampling (`libImaging/Resample.c`, `Geometry.c`) for any band count: the 8-bit
//! fixed-point filters, the 16-bit (`I;16`) float path, and the nearest-neighbour scaling PIL
//! forces on palette and bilevel images.

use crate::clip::Resample;

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// PIL's `precompute_coeffs`: for each output index, the first input index and the normalised
/// weights.
fn float_coefficients(in_size: usize, out_size: usize, filter: Resample) -> Vec<(usize, Vec<f64>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            // C's (int) truncates toward zero.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64).max(xmin as i64) as usize - xmin;
            let mut w: Vec<f64> =
                (0..xmax).map(|x| filter.filter((x as f64 + xmin as f64 - center + 0.5) * ss)).collect();
            let total: f64 = w.iter().sum();
            if total != 0.0 {
                for v in &mut w {
                    *v /= total;
                }
            }
            (xmin, w)
        })
        .collect()
}

/// `precompute_coeffs` + `normalize_coeffs_8bpc`: fixed-point weights.
fn coefficients(in_size: usize, out_size: usize, filter: Resample) -> Vec<(usize, Vec<i64>)> {
    let one = f64::from(1u32 << PRECISION_BITS);
    float_coefficients(in_size, out_size, filter)
        .into_iter()
        .map(|(xmin, w)| {
            (xmin, w.iter().map(|&v| if v < 0.0 { (-0.5 + v * one) as i64 } else { (0.5 + v * one) as i64 }).collect())
        })
        .collect()
}

fn clip8(v: i64) -> u8 {
    if v >= (1i64 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// Fixed-point weights per output index (first input index, weights) and their precision in bits.
type FixedWeights = (Vec<(usize, Vec<i64>)>, u32);

/// One separable pass over interleaved samples: `len` outputs along the axis whose stride is
/// `step` samples, for every one of `lines` lines `line_step` apart.
struct Pass {
    lines: usize,
    line_step: usize,
    step: usize,
    out_line_step: usize,
    out_step: usize,
}

/// Resizes interleaved 8-bit samples of `ch` bands exactly as PIL's `Image.resize` does for an
/// 8-bit image: a horizontal pass, then a vertical one, each rounded to 8 bits.
pub(crate) fn resize_8bpc(
    src: &[u8],
    (w, h): (usize, usize),
    ch: usize,
    (out_w, out_h): (usize, usize),
    filter: Resample,
) -> Vec<u8> {
    let weights = |i, o| (coefficients(i, o, filter), PRECISION_BITS);
    separable_u8(src, (w, h), ch, (out_w, out_h), &weights, &|ss, _| clip8(ss))
}

/// A separable 8-bit resize: width, then height, each pass `Σ sample · weight + half` with
/// fixed-point `weights(in, out)` (and their precision), stored by `store(sum, precision)`.
fn separable_u8(
    src: &[u8],
    (w, h): (usize, usize),
    ch: usize,
    (out_w, out_h): (usize, usize),
    weights: &dyn Fn(usize, usize) -> FixedWeights,
    store: &dyn Fn(i64, u32) -> u8,
) -> Vec<u8> {
    let run = |data: &[u8], in_len: usize, out_len: usize, p: Pass, size: usize| -> Vec<u8> {
        let (coeffs, precision) = weights(in_len, out_len);
        let half = if precision == 0 { 0 } else { 1i64 << (precision - 1) };
        let mut out = vec![0u8; size];
        for line in 0..p.lines {
            for (o, (min, k)) in coeffs.iter().enumerate() {
                for c in 0..ch {
                    let mut ss = half;
                    for (j, &kj) in k.iter().enumerate() {
                        ss += i64::from(data[line * p.line_step + (min + j) * p.step + c]) * kj;
                    }
                    out[line * p.out_line_step + o * p.out_step + c] = store(ss, precision);
                }
            }
        }
        out
    };
    let mut data = src.to_vec();
    let mut cur_w = w;
    if out_w != w {
        let p = Pass { lines: h, line_step: w * ch, step: ch, out_line_step: out_w * ch, out_step: ch };
        data = run(&data, w, out_w, p, out_w * h * ch);
        cur_w = out_w;
    }
    if out_h != h {
        let p = Pass { lines: cur_w, line_step: ch, step: cur_w * ch, out_line_step: ch, out_step: cur_w * ch };
        data = run(&data, h, out_h, p, cur_w * out_h * ch);
    }
    data
}

/// PIL's `ROUND_UP` and its 16-bit store (`ImagingResample*_16bpc`: the low byte `CLIP8(v %
/// 256)`, the high byte `CLIP8(v >> 8)`).
fn store16(ss: f64) -> u16 {
    let v = if ss >= 0.0 { (ss + 0.5).floor() as i64 } else { -((ss.abs() + 0.5).floor() as i64) };
    let c8 = |x: i64| x.clamp(0, 255) as u16;
    (c8(v >> 8) << 8) | c8(v % 256)
}

/// Resizes a single-band 16-bit image (`I;16`) as PIL does: double weights, each pass rounded
/// and stored as 16 bits.
pub(crate) fn resize_16bpc(
    src: &[u16],
    (w, h): (usize, usize),
    (out_w, out_h): (usize, usize),
    filter: Resample,
) -> Vec<u16> {
    let mut data = src.to_vec();
    let mut cur_w = w;
    if out_w != w {
        let k = float_coefficients(w, out_w, filter);
        let mut out = vec![0u16; out_w * h];
        for y in 0..h {
            for (x, (min, kk)) in k.iter().enumerate() {
                let ss: f64 = kk.iter().enumerate().map(|(j, &kj)| f64::from(data[y * w + min + j]) * kj).sum();
                out[y * out_w + x] = store16(ss);
            }
        }
        data = out;
        cur_w = out_w;
    }
    if out_h != h {
        let k = float_coefficients(h, out_h, filter);
        let mut out = vec![0u16; cur_w * out_h];
        for (y, (min, kk)) in k.iter().enumerate() {
            for x in 0..cur_w {
                let ss: f64 = kk.iter().enumerate().map(|(j, &kj)| f64::from(data[(min + j) * cur_w + x]) * kj).sum();
                out[y * cur_w + x] = store16(ss);
            }
        }
        data = out;
    }
    data
}

/// PIL's nearest-neighbour scaling (`ImagingScaleAffine`): source index `⌊o⌋` with `o` starting
/// at `scale / 2` and growing by `scale` per output pixel, in f64 as PIL accumulates it.
pub(crate) fn nearest_indices(in_len: usize, out_len: usize) -> Vec<usize> {
    let a = in_len as f64 / out_len as f64;
    let mut o = a * 0.5;
    (0..out_len)
        .map(|_| {
            let i = if o < 0.0 { 0 } else { (o as usize).min(in_len - 1) };
            o += a;
            i
        })
        .collect()
}

/// Nearest-neighbour resize of interleaved samples of `ch` bands.
pub(crate) fn resize_nearest<T: Copy>(
    src: &[T],
    (w, h): (usize, usize),
    ch: usize,
    (out_w, out_h): (usize, usize),
) -> Vec<T> {
    let (xs, ys) = (nearest_indices(w, out_w), nearest_indices(h, out_h));
    let mut out = Vec::with_capacity(out_w * out_h * ch);
    for &y in &ys {
        for &x in &xs {
            out.extend_from_slice(&src[(y * w + x) * ch..(y * w + x + 1) * ch]);
        }
    }
    out
}

/// torch's antialiased bicubic weights (`_compute_index_ranges_weights` with `aa_filter`, a =
/// −0.5), computed in the given float type as torch does for the tensor's dtype (f32 for float32
/// tensors, f64 for uint8): for each output index, the first input index and the normalised weights.
macro_rules! torch_aa_bicubic {
    ($name:ident, $t:ty) => {
        pub(crate) fn $name(in_size: usize, out_size: usize) -> Vec<(usize, Vec<$t>)> {
            const A: $t = -0.5;
            let filter = |x: $t| -> $t {
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
                } else {
                    0.0
                }
            };
            let scale = in_size as $t / out_size as $t;
            let (support, invscale) = if scale >= 1.0 { (2.0 * scale, 1.0 / scale) } else { (2.0, 1.0) };
            (0..out_size)
                .map(|i| {
                    let center = scale * (i as $t + 0.5);
                    let xmin = ((center - support + 0.5) as i64).max(0);
                    let xsize = ((center + support + 0.5) as i64).min(in_size as i64) - xmin;
                    let mut w: Vec<$t> =
                        (0..xsize.max(0)).map(|j| filter(((j + xmin) as $t - center + 0.5) * invscale)).collect();
                    let total: $t = w.iter().sum();
                    if total != 0.0 {
                        for v in &mut w {
                            *v /= total;
                        }
                    }
                    (xmin as usize, w)
                })
                .collect()
        }
    };
}

torch_aa_bicubic!(torch_aa_bicubic_f32, f32);
torch_aa_bicubic!(torch_aa_bicubic_f64, f64);

/// torch's `compute_index_ranges_int16_weights` for antialiased bicubic on uint8: the f64
/// weights quantised to int16 at the largest precision that keeps the biggest weight under 2^15.
fn torch_int16_coefficients(in_size: usize, out_size: usize) -> FixedWeights {
    let float = torch_aa_bicubic_f64(in_size, out_size);
    let wt_max = float.iter().flat_map(|(_, w)| w.iter().copied()).fold(0f64, f64::max);
    let mut precision = 0u32;
    while precision < 22 && ((0.5 + wt_max * f64::from(1u32 << (precision + 1))) as i64) < (1 << 15) {
        precision += 1;
    }
    let one = f64::from(1u32 << precision);
    let quantise = |v: f64| i64::from(if v * one < 0.0 { (v * one - 0.5) as i16 } else { (v * one + 0.5) as i16 });
    (float.into_iter().map(|(xmin, w)| (xmin, w.into_iter().map(quantise).collect())).collect(), precision)
}

/// Resizes interleaved 8-bit samples of `ch` bands as torch's `interpolate(mode="bicubic",
/// antialias=True)` does on a uint8 tensor (torchvision's `resize` of a uint8 image, transformers'
/// torchvision backend): width, then height, int16 weights, each pass rounded and clipped to 8
/// bits.
pub(crate) fn resize_torch_u8(
    src: &[u8],
    (w, h): (usize, usize),
    ch: usize,
    (out_w, out_h): (usize, usize),
) -> Vec<u8> {
    separable_u8(src, (w, h), ch, (out_w, out_h), &torch_int16_coefficients, &|acc, precision| {
        (acc >> precision).clamp(0, 255) as u8
    })
}
