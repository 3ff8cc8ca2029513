//! Fused attention with a streaming softmax.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::f32_slice;
use super::math::{dot, exp, exp_shifted_sum, madd, max, LANES};

/// Keys per block of the streaming softmax (a multiple of [`LANES`]).
const KEY_BLOCK: usize = 128;
/// Query rows per task (one task shares each transposed key / value block across its rows).
const QUERY_TILE: usize = 32;

/// `softmax(q · kᵀ · scale) · v` for `q` `[N, Lq, D]` and `k`, `v` `[N, Lk, D]` (N = batch ×
/// heads), returned as `[N, Lq, D]` in `q`'s dtype.
///
/// On the CPU this is our fused kernel: the softmax is streamed over blocks of keys (the
/// `Lq × Lk` scores are never stored), the work is split over `N` and over tiles of queries. On
/// other devices it is [`attention_reference`]. Errors (never panics) on mismatched shapes or
/// dtypes.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> candle_core::Result<Tensor> {
    check(q, k, v)?;
    if !q.device().is_cpu() {
        return attention_reference(q, k, v, scale);
    }
    let in_dtype = q.dtype();
    let f32c = |t: &Tensor| -> candle_core::Result<Tensor> { t.to_dtype(DType::F32)?.contiguous() };
    let out = f32c(q)?.apply_op3_no_bwd(&f32c(k)?, &f32c(v)?, &FusedAttention { scale: scale as f32 })?;
    out.to_dtype(in_dtype)
}

/// candle's attention, as its Stable Diffusion `CrossAttention` computes it: f32 `q · (kᵀ ·
/// scale)`, `softmax_last_dim`, `· v`, cast back to `q`'s dtype. Same shapes as [`attention`].
pub fn attention_reference(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> candle_core::Result<Tensor> {
    check(q, k, v)?;
    let in_dtype = q.dtype();
    let (q, k, v) = (q.to_dtype(DType::F32)?, k.to_dtype(DType::F32)?, v.to_dtype(DType::F32)?);
    let s = q.matmul(&(k.t()? * scale)?)?;
    candle_nn::ops::softmax_last_dim(&s)?.matmul(&v)?.to_dtype(in_dtype)
}

fn check(q: &Tensor, k: &Tensor, v: &Tensor) -> candle_core::Result<()> {
    let (n, _lq, d) = q.dims3()?;
    let (nk, lk, dk) = k.dims3()?;
    let vd = v.dims3()?;
    if nk != n || dk != d || vd != (n, lk, d) || lk == 0 {
        return Err(candle_core::Error::Msg(format!(
            "attention needs q [N, Lq, D], k and v [N, Lk > 0, D]: got {:?}, {:?}, {:?}",
            q.dims(),
            k.dims(),
            v.dims()
        )));
    }
    if k.dtype() != q.dtype() || v.dtype() != q.dtype() {
        return Err(candle_core::Error::Msg("attention: q, k and v must have one dtype".into()));
    }
    Ok(())
}

struct FusedAttention {
    scale: f32,
}

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "deradiff-fused-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (q, k, v) = (
            f32_slice("fused attention", s1, l1)?,
            f32_slice("fused attention", s2, l2)?,
            f32_slice("fused attention", s3, l3)?,
        );
        let (n, lq, d) = l1.shape().dims3()?;
        let lk = l2.shape().dims()[1];
        let mut out = vec![0f32; n * lq * d];
        attention_f32(q, k, v, &mut out, (n, lq, lk, d), self.scale);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// The kernel over contiguous slices: `q` `[n, lq, d]`, `k`, `v` `[n, lk, d]`, `out` `[n, lq, d]`.
pub(crate) fn attention_f32(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &mut [f32],
    (n, lq, lk, d): (usize, usize, usize, usize),
    scale: f32,
) {
    if n == 0 || lq == 0 || d == 0 {
        return;
    }
    out.par_chunks_mut(lq * d).take(n).enumerate().for_each(|(h, out_h)| {
        let q_h = &q[h * lq * d..(h + 1) * lq * d];
        let k_h = &k[h * lk * d..(h + 1) * lk * d];
        let v_h = &v[h * lk * d..(h + 1) * lk * d];
        out_h.par_chunks_mut(QUERY_TILE * d).enumerate().for_each(|(t, out_t)| {
            let rows = out_t.len() / d;
            let q_t = &q_h[t * QUERY_TILE * d..][..rows * d];
            attend_tile_dispatch(q_t, k_h, v_h, out_t, rows, lk, d, scale);
        });
    });
}

/// [`attend_tile`] compiled for AVX2 + FMA where the CPU has them (the crate is built for baseline
/// x86-64, whose SSE2 vectors are half as wide), the baseline build elsewhere.
#[allow(clippy::too_many_arguments)]
fn attend_tile_dispatch(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &mut [f32],
    rows: usize,
    lk: usize,
    d: usize,
    scale: f32,
) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            unsafe { attend_tile_avx2(q, k, v, out, rows, lk, d, scale) };
            return;
        }
    }
    attend_tile::<false>(q, k, v, out, rows, lk, d, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_tile_avx2(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &mut [f32],
    rows: usize,
    lk: usize,
    d: usize,
    scale: f32,
) {
    attend_tile::<true>(q, k, v, out, rows, lk, d, scale)
}

/// One tile of `rows` queries against all `lk` keys of one head.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn attend_tile<const FMA: bool>(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &mut [f32],
    rows: usize,
    lk: usize,
    d: usize,
    scale: f32,
) {
    // Transposed key / value blocks [d][KEY_BLOCK]: the inner loops then run over keys, so they
    // vectorise whatever the head dim.
    let mut kt = vec![0f32; d * KEY_BLOCK];
    let mut vt = vec![0f32; d * KEY_BLOCK];
    let mut s = vec![0f32; KEY_BLOCK];
    let mut m = vec![f32::NEG_INFINITY; rows];
    let mut l = vec![0f32; rows];
    out.fill(0.0);
    // Scaled queries (the scores are q·scale·k, as in candle up to rounding).
    let qs: Vec<f32> = q.iter().map(|x| x * scale).collect();
    let mut start = 0;
    while start < lk {
        let kn = KEY_BLOCK.min(lk - start);
        for j in 0..kn {
            let (kr, vr) = (&k[(start + j) * d..][..d], &v[(start + j) * d..][..d]);
            for c in 0..d {
                kt[c * KEY_BLOCK + j] = kr[c];
                vt[c * KEY_BLOCK + j] = vr[c];
            }
        }
        for r in 0..rows {
            let qr = &qs[r * d..][..d];
            // Scores for LANES keys at a time, summed over the head dim in registers (lanes past
            // `kn` hold stale keys and are never read).
            for j0 in (0..kn).step_by(LANES) {
                let mut acc = [0f32; LANES];
                for (c, &qc) in qr.iter().enumerate() {
                    let kc = &kt[c * KEY_BLOCK + j0..][..LANES];
                    for l in 0..LANES {
                        acc[l] = madd::<FMA>(qc, kc[l], acc[l]);
                    }
                }
                s[j0..j0 + LANES].copy_from_slice(&acc);
            }
            let s = &mut s[..kn];
            let mb = max(s);
            let acc = &mut out[r * d..][..d];
            if mb > m[r] {
                // Rescale what was accumulated under the old maximum (nothing, the first time).
                let c = if m[r] == f32::NEG_INFINITY { 0.0 } else { exp::<FMA>(m[r] - mb) };
                l[r] *= c;
                acc.iter_mut().for_each(|a| *a *= c);
                m[r] = mb;
            }
            l[r] += exp_shifted_sum::<FMA>(s, m[r]);
            for (c, a) in acc.iter_mut().enumerate() {
                *a += dot::<FMA>(s, &vt[c * KEY_BLOCK..][..kn]);
            }
        }
        start += kn;
    }
    for r in 0..rows {
        let inv = 1.0 / l[r];
        out[r * d..][..d].iter_mut().for_each(|a| *a *= inv);
    }
}
