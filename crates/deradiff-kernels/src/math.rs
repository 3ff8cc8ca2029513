//! Vectorisable scalar helpers shared by the kernels.

/// Lanes of the partial sums (enough for AVX2's 8 × f32; the compiler maps them to registers).
pub(crate) const LANES: usize = 8;

/// `a·b + c`, fused (one rounding) when `FMA` — only for code compiled with the `fma` target
/// feature, where it is one instruction (elsewhere `mul_add` is a slow library call).
#[inline(always)]
pub(crate) fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `eˣ` for `x` in f32, branch-free so loops over it vectorise (Cephes' `expf` polynomial, about
/// 1 ulp); inputs are clamped to `[-87.3, 88.3]`, so the result is a normal f32 (no overflow to
/// infinity, underflow stops at about 1.2e-38 instead of 0).
#[inline(always)]
pub(crate) fn exp<const FMA: bool>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 · 2²³: adding it rounds to the nearest integer, which lands in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.3);
    let t = madd::<FMA>(x, LOG2E, MAGIC);
    let n = t - MAGIC;
    let ni = (t.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let r = madd::<FMA>(-n, LN2_LO, madd::<FMA>(-n, LN2_HI, x));
    let mut p = 1.987_569_1e-4_f32;
    p = madd::<FMA>(p, r, 1.398_199_9e-3);
    p = madd::<FMA>(p, r, 8.333_452e-3);
    p = madd::<FMA>(p, r, 4.166_579_6e-2);
    p = madd::<FMA>(p, r, 1.666_666_5e-1);
    p = madd::<FMA>(p, r, 0.5);
    let y = madd::<FMA>(p, r * r, r) + 1.0;
    y * f32::from_bits(((ni + 127) << 23) as u32)
}

/// The largest element (−∞ for none), with `LANES` partial maxima so the loop vectorises.
#[inline(always)]
pub(crate) fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let c = x.chunks_exact(LANES);
    let rem = c.remainder();
    for v in c {
        for l in 0..LANES {
            acc[l] = if v[l] > acc[l] { v[l] } else { acc[l] };
        }
    }
    let mut m = acc.iter().fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    for &v in rem {
        m = if v > m { v } else { m };
    }
    m
}

/// `xᵢ ← e^(xᵢ − shift)` in place, returning Σ xᵢ (partial sums in `LANES`, so both vectorise).
#[inline(always)]
pub(crate) fn exp_shifted_sum<const FMA: bool>(x: &mut [f32], shift: f32) -> f32 {
    for v in x.iter_mut() {
        *v = exp::<FMA>(*v - shift);
    }
    let mut acc = [0f32; LANES];
    let c = x.chunks_exact(LANES);
    let rem = c.remainder();
    for v in c {
        for l in 0..LANES {
            acc[l] += v[l];
        }
    }
    acc.iter().sum::<f32>() + rem.iter().sum::<f32>()
}

/// `(Σ dᵢ, Σ dᵢ²)` for `dᵢ = xᵢ − shift`, in one pass, f32 partial sums accumulated in f64 per
/// chunk of 256 (group norms sum up to millions of values); AVX2 + FMA intrinsics in the builds
/// for CPUs that have them (`FMA`: the compiler left the portable loop's eight lanes scalar).
#[inline(always)]
pub(crate) fn sum_and_squares<const FMA: bool>(x: &[f32], shift: f32) -> (f64, f64) {
    #[cfg(target_arch = "x86_64")]
    if FMA {
        // SAFETY: `FMA` is true only in the builds for CPUs with AVX2 and FMA (see `Isa`).
        return unsafe { sum_and_squares_avx2(x, shift) };
    }
    let (mut total, mut total_sq) = (0f64, 0f64);
    for chunk in x.chunks(256) {
        let (s, sq) = scalar_sums(chunk, shift);
        total += s as f64;
        total_sq += sq as f64;
    }
    (total, total_sq)
}

/// `(Σ dᵢ, Σ dᵢ²)` for `dᵢ = xᵢ − shift` in f32, one value at a time.
#[inline(always)]
fn scalar_sums(x: &[f32], shift: f32) -> (f32, f32) {
    x.iter().fold((0f32, 0f32), |(s, sq), &v| {
        let d = v - shift;
        (s + d, sq + d * d)
    })
}

/// [`sum_and_squares`] with AVX2 + FMA: two pairs of 8-lane accumulators per chunk of 256.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn sum_and_squares_avx2(x: &[f32], shift: f32) -> (f64, f64) {
    use std::arch::x86_64::*;
    /// The sum of a vector's eight lanes.
    #[target_feature(enable = "avx2")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
    }
    let sh = _mm256_set1_ps(shift);
    let (mut total, mut total_sq) = (0f64, 0f64);
    for chunk in x.chunks(256) {
        let (mut s0, mut s1, mut q0, mut q1) =
            (_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps());
        let pairs = chunk.chunks_exact(16);
        let rem = pairs.remainder();
        for p in pairs {
            // SAFETY: `p` holds 16 floats: two unaligned 8-float loads.
            let (a, b) = (_mm256_loadu_ps(p.as_ptr()), _mm256_loadu_ps(p.as_ptr().add(8)));
            let (da, db) = (_mm256_sub_ps(a, sh), _mm256_sub_ps(b, sh));
            s0 = _mm256_add_ps(s0, da);
            s1 = _mm256_add_ps(s1, db);
            q0 = _mm256_fmadd_ps(da, da, q0);
            q1 = _mm256_fmadd_ps(db, db, q1);
        }
        let (s, sq) = scalar_sums(rem, shift);
        total += (hsum(_mm256_add_ps(s0, s1)) + s) as f64;
        total_sq += (hsum(_mm256_add_ps(q0, q1)) + sq) as f64;
    }
    (total, total_sq)
}

#[cfg(test)]
mod tests {
    #[test]
    fn exp_is_within_two_ulp_of_std() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let (a, b) = (super::exp::<false>(x), x.exp());
            assert!((a - b).abs() <= 2.5e-7 * b, "{x}: {a} vs {b}");
            let a = super::exp::<true>(x);
            assert!((a - b).abs() <= 2.5e-7 * b, "{x}: {a} vs {b}");
            x += 0.0137;
        }
        assert!(super::exp::<false>(-1e30) >= 0.0 && super::exp::<false>(-1e30) < 1e-37);
        assert!(super::exp::<false>(1e30).is_finite());
    }
}
