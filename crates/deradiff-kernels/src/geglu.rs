//! GEGLU with the exact (erf) GELU, in one pass over contiguous rows.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use super::device::takes_device_path;
use super::math::madd;
use super::{f32_slice, Error, Isa, Result};

/// The kernel's name in errors.
const OP: &str = "geglu";

/// Output elements per rayon task (enough work to amortise a task, small enough to balance).
const TASK_ELEMENTS: usize = 1 << 15;

/// diffusers' `GEGLU` after its projection: for `x` `[…, 2F]` (the output of the `proj` linear),
/// `x[…, :F] · gelu(x[…, F:])` `[…, F]`, with the exact GELU `g/2 · (1 + erf(g/√2))` (PyTorch's
/// `F.gelu` default), in `x`'s dtype.
///
/// On the CPU this is our kernel: one pass over the contiguous rows of `x` (no strided copy of
/// either half), a branch-free f32 `erf` that vectorises, threads over rows; f16 / bf16 inputs are
/// computed in f32 and cast back. On other devices it is [`geglu_reference`]. An
/// [`Error::InvalidInput`] (never a panic) when `x` is a scalar or its last dimension is odd.
pub fn geglu(x: &Tensor) -> Result<Tensor> {
    check(x)?;
    if takes_device_path(x.device()) {
        return geglu_reference(x);
    }
    let in_dtype = x.dtype();
    Ok(x.to_dtype(DType::F32)?.contiguous()?.apply_op1_no_bwd(&Geglu)?.to_dtype(in_dtype)?)
}

/// candle's ops: `chunk(2, -1)`, `gelu_erf` of the second half, times the first. Same argument
/// and errors as [`geglu`].
pub fn geglu_reference(x: &Tensor) -> Result<Tensor> {
    check(x)?;
    let hg = x.chunk(2, D::Minus1)?;
    Ok((&hg[0] * hg[1].gelu_erf()?)?)
}

fn check(x: &Tensor) -> Result<()> {
    match x.dims().last() {
        Some(&n) if n % 2 == 0 => Ok(()),
        _ => Err(Error::invalid(
            OP,
            format!("needs […, 2F] (an even last dimension, hidden states then gate), got {:?}", x.dims()),
        )),
    }
}

struct Geglu;

impl CustomOp1 for Geglu {
    fn name(&self) -> &'static str {
        "deradiff-geglu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(OP, s, l)?;
        let mut dims = l.shape().dims().to_vec();
        let f = dims.last().copied().unwrap_or(0) / 2;
        if let Some(last) = dims.last_mut() {
            *last = f;
        }
        let mut out = vec![0f32; x.len() / 2];
        geglu_f32(x, &mut out, f);
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

/// The kernel over contiguous slices: `x` `[rows, 2f]`, `out` `[rows, f]`.
pub(crate) fn geglu_f32(x: &[f32], out: &mut [f32], f: usize) {
    geglu_f32_isa(x, out, f, Isa::detect())
}

/// [`geglu_f32`] with the build `isa` (which the CPU must run).
pub(crate) fn geglu_f32_isa(x: &[f32], out: &mut [f32], f: usize, isa: Isa) {
    if f == 0 || out.is_empty() {
        return;
    }
    let rows_per_task = (TASK_ELEMENTS / f).max(1);
    out.par_chunks_mut(rows_per_task * f).zip(x.par_chunks(rows_per_task * 2 * f)).for_each(|(o, x)| match isa {
        Isa::Portable => rows::<false>(x, o, f),
        // SAFETY: `isa` is one the CPU runs (`Isa::detect`, or `Isa::available` in tests).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { rows_avx2(x, o, f) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { rows_avx512(x, o, f) },
    });
}

/// [`rows`] compiled for AVX2 + FMA (the crate is built for baseline x86-64).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_avx2(x: &[f32], out: &mut [f32], f: usize) {
    rows::<true>(x, out, f)
}

/// [`rows`] compiled for AVX-512 (16 lanes).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn rows_avx512(x: &[f32], out: &mut [f32], f: usize) {
    rows::<true>(x, out, f)
}

/// Rows of `x` `[r, 2f]` into `out` `[r, f]`.
#[inline(always)]
fn rows<const FMA: bool>(x: &[f32], out: &mut [f32], f: usize) {
    for (o, xr) in out.chunks_exact_mut(f).zip(x.chunks_exact(2 * f)) {
        let (h, g) = xr.split_at(f);
        for ((y, &h), &g) in o.iter_mut().zip(h).zip(g) {
            *y = h * gelu::<FMA>(g);
        }
    }
}

/// The exact GELU `x/2 · (1 + erf(x/√2))`.
#[inline(always)]
pub(crate) fn gelu<const FMA: bool>(x: f32) -> f32 {
    0.5 * x * one_plus_erf::<FMA>(x * std::f32::consts::FRAC_1_SQRT_2)
}

/// `1 + erf(x)` in f32, branch-free so loops over it vectorise, NaN for NaN; within about 1e-7
/// of the true value (one f32 step of values in [1, 2)), and without the cancellation of
/// `1 + erf(x)` for negative `x`: there it is `erfc(|x|)`, computed as such, within 5e-8 absolute
/// (1e-5 relative down to `erfc = 1e-3`), where `1 + erf` in f32 (PyTorch's) rounds to steps of
/// 6e-8 and so loses most digits of the GELU of a gate below about −4.
///
/// Two polynomials (Chebyshev fits in f64, rounded to f32; both evaluated, one selected):
/// `erf(a) = a·P(a² − ½)` for `a = |x| ≤ 1` and `erfc(a) = Q(a − 2.5)` for `1 < a ≤ 4`; above 4,
/// `erfc(a) < 1.6e-8` is taken as 0. (One rational function over the whole range, Eigen's
/// `generic_fast_erf_float`, loses up to 3.5e-7 to cancellation in f32.)
#[inline(always)]
pub(crate) fn one_plus_erf<const FMA: bool>(x: f32) -> f32 {
    const P: [f32; 7] =
        [9.6546876e-1, -2.810722e-1, 7.940999e-2, -1.8283442e-2, 3.4802032e-3, -5.650854e-4, 7.87897e-5];
    const Q: [f32; 15] = [
        4.069523e-4,
        -2.17821e-3,
        5.4456918e-3,
        -8.351417e-3,
        8.622582e-3,
        -6.110487e-3,
        2.79762e-3,
        -5.580804e-4,
        -2.5881908e-4,
        2.6879957e-4,
        -8.103861e-5,
        -1.7068733e-5,
        1.5698062e-5,
        -5.9910565e-7,
        -8.872944e-7,
    ];
    let a = x.clamp(-4.0, 4.0).abs();
    let t = a * a - 0.5;
    let mut p = P[P.len() - 1];
    for &c in P[..P.len() - 1].iter().rev() {
        p = madd::<FMA>(p, t, c);
    }
    let t = a - 2.5;
    let mut q = Q[Q.len() - 1];
    for &c in Q[..Q.len() - 1].iter().rev() {
        q = madd::<FMA>(q, t, c);
    }
    let erf_a = a * p;
    let erfc_a = if x.abs() >= 4.0 { 0.0 } else { q };
    match (x >= 0.0, a <= 1.0) {
        (true, true) => 1.0 + erf_a,
        (true, false) => 2.0 - erfc_a,
        (false, true) => 1.0 - erf_a,
        (false, false) => erfc_a,
    }
}

#[cfg(test)]
mod tests {
    /// `erfc` in f64 (1 − the Maclaurin series of erf below 2.5, the continued fraction of erfc
    /// above), about 1e-15 absolute, and relative above 2.5.
    fn erfc64(x: f64) -> f64 {
        let a = x.abs();
        let erfc_a = if a < 2.5 {
            let (mut term, mut sum, mut n) = (a, a, 0.0);
            while term.abs() > 1e-18 * sum.abs() {
                n += 1.0;
                term *= -a * a / n;
                sum += term / (2.0 * n + 1.0);
            }
            1.0 - sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            let mut frac = 0.0;
            for k in (1..80).rev() {
                frac = (k as f64 / 2.0) / (a + frac);
            }
            (-a * a).exp() / std::f64::consts::PI.sqrt() / (a + frac)
        };
        if x >= 0.0 {
            erfc_a
        } else {
            2.0 - erfc_a
        }
    }

    #[test]
    fn one_plus_erf_is_within_an_f32_step_of_f64() {
        let grid = (0..12 * 4096).map(|i| -6.0 + i as f32 / 4096.0);
        let tiny = (0..200).map(|i| 10f32.powf(-30.0 + i as f32 * 0.15));
        let (mut worst_abs, mut worst_rel) = (0f64, 0f64);
        for x in grid.chain(tiny.clone()).chain(tiny.map(|t| -t)) {
            let want = erfc64(-x as f64);
            for got in [super::one_plus_erf::<false>(x), super::one_plus_erf::<true>(x)] {
                let err = (got as f64 - want).abs();
                worst_abs = worst_abs.max(err);
                // Relative where erfc is at least 1e-3; further out the fit's absolute error (a few
                // 1e-8) dominates: still far below f32's `1 + erf` (6e-8 steps near 0).
                if want >= 1e-3 {
                    worst_rel = worst_rel.max(err / want);
                }
            }
        }
        // About one f32 step of the values in [1, 2) (2⁻²³ ≈ 1.2e-7): the rounding of `1 + erf`.
        assert!(worst_abs < 1.5e-7, "worst 1 + erf error {worst_abs:e}");
        assert!(worst_rel < 1e-5, "worst relative 1 + erf error {worst_rel:e}");
        assert!(super::one_plus_erf::<false>(f32::NAN).is_nan());
        assert_eq!(super::one_plus_erf::<false>(f32::INFINITY), 2.0);
        assert_eq!(super::one_plus_erf::<false>(f32::NEG_INFINITY), 0.0);
        assert_eq!(super::one_plus_erf::<false>(0.0), 1.0);
        assert_eq!(super::gelu::<false>(-1e4), 0.0);
        assert_eq!(super::gelu::<false>(1e4), 1e4);
    }

    /// Every build this CPU runs (portable, AVX2, AVX-512) against f64, over row widths that end
    /// vectors part-way and gates from −6 to 6.
    #[test]
    fn every_instruction_set_matches_f64() {
        for f in [1usize, 7, 16, 33, 128] {
            let rows = 5;
            let x: Vec<f32> = (0..rows * 2 * f).map(|i| ((i * 7919) % 1201) as f32 / 100.0 - 6.0).collect();
            let want: Vec<f64> = (0..rows * f)
                .map(|i| {
                    let (r, j) = (i / f, i % f);
                    let (h, g) = (x[r * 2 * f + j] as f64, x[r * 2 * f + f + j] as f64);
                    h * 0.5 * g * erfc64(-g / std::f64::consts::SQRT_2)
                })
                .collect();
            for isa in super::super::Isa::available() {
                let mut out = vec![f32::NAN; rows * f];
                super::geglu_f32_isa(&x, &mut out, f, isa);
                for (i, (&got, &want)) in out.iter().zip(&want).enumerate() {
                    let h = x[i / f * 2 * f + i % f] as f64;
                    let err = (got as f64 - want).abs() / want.abs().max(h.abs()).max(1.0);
                    assert!(err < 1e-6, "{isa:?} f={f} element {i}: {got} vs {want}");
                }
            }
        }
    }
}
