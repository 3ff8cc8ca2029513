//! Fused attention with a streaming softmax.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::device::{self, takes_device_path, ATTENTION_SCORE_BUDGET};
use super::math::{exp, exp_shifted_sum, madd, max};
use super::{f32_slice, Error, Isa, Result};

/// The kernel's name in errors.
const OP: &str = "attention";

/// Keys per register tile of the portable and AVX2 score kernels (two AVX2 vectors); the AVX-512
/// one takes twice as many.
const KEY_LANES: usize = 16;
/// Key blocks are padded to a multiple of this (the AVX-512 score kernel's 32 keys).
const KEY_ALIGN: usize = 2 * KEY_LANES;
/// Query rows per register tile (6 rows × 16 keys, or 6 rows × 16 output channels: twelve
/// independent accumulators, more than the FMA pipes' latency × throughput, and with the two
/// vectors of keys or values and a broadcast within AVX2's sixteen registers).
const ROWS: usize = 6;
/// Query rows per task (a multiple of [`ROWS`]).
const QUERY_TILE: usize = 60;
/// Most keys per block of the streaming softmax (a multiple of [`KEY_ALIGN`]); fewer when the
/// head dim is large, so that a block's keys stay in the first-level cache.
const KEY_BLOCK: usize = 256;

/// `softmax(q · kᵀ · scale) · v` for `q` `[N, Lq, D]` and `k`, `v` `[N, Lk, D]` (N = batch ×
/// heads), returned as `[N, Lq, D]` in `q`'s dtype.
///
/// On the CPU this is our fused kernel (see [`attention_heads`]); on other devices the device
/// path of [`attention_heads`] (without its head split). An [`Error::InvalidInput`] (never a
/// panic) on mismatched ranks, shapes or dtypes.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    check(q, k, v)?;
    if takes_device_path(q.device()) {
        return device::attention(q, k, v, scale, ATTENTION_SCORE_BUDGET);
    }
    fused(q, k, v, 1, scale)
}

/// Multi-head attention on the projections' own layout: `q` `[B, Lq, H·D]`, `k`, `v`
/// `[B, Lk, H·D]`, head `h` in channels `h·D .. (h+1)·D`; returns `[B, Lq, H·D]` (heads
/// concatenated again, ready for the output projection) in `q`'s dtype. Equal to splitting the
/// heads out, [`attention`], and merging them back — without the two transposed copies.
///
/// On the CPU this is our fused kernel: per (batch, tile of 60 queries), for each
/// head, the keys are streamed in blocks of up to 256 with an online softmax (the
/// `Lq × Lk` scores are never stored), scores and the probability-weighted values are computed in
/// 6-row register tiles (6 queries × 16 keys or channels with AVX2, × 32 with AVX-512);
/// f16 / bf16 are computed in f32.
///
/// On other devices it runs candle's ops in the tensors' own dtype: one copy per operand
/// splitting the heads out (the scale applied in `q`'s), `q·kᵀ` and `p·v` as batched GEMMs
/// (f16 / bf16 on tensor cores, accumulating in f32), candle's fused softmax, one copy merging the
/// heads; the queries in chunks whose scores fit [`ATTENTION_SCORE_BUDGET`].
///
/// An [`Error::InvalidInput`] (never a panic) on mismatched ranks, shapes or dtypes, or channels
/// not divisible by `heads`.
pub fn attention_heads(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, scale: f64) -> Result<Tensor> {
    attention_heads_budget(q, k, v, heads, scale, ATTENTION_SCORE_BUDGET)
}

/// [`attention_heads`] with the device path's scores chunked to `budget` bytes instead of
/// [`ATTENTION_SCORE_BUDGET`] (for tests of the chunking on small inputs; the CPU kernel, which
/// never stores the scores, ignores it).
#[doc(hidden)]
pub fn attention_heads_budget(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f64,
    budget: usize,
) -> Result<Tensor> {
    let bad_shapes = || {
        Error::invalid(
            OP,
            format!(
                "needs q [B, Lq, H·D], k and v [B, Lk > 0, H·D]: got {:?}, {:?}, {:?}",
                q.dims(),
                k.dims(),
                v.dims()
            ),
        )
    };
    let dims3 = |t: &Tensor| t.dims3().map_err(|_| bad_shapes());
    let heads_err = |c: usize| Error::invalid(OP, format!("{c} channels do not split into {heads} heads"));
    let (b, _lq, c) = dims3(q)?;
    if heads == 0 || c % heads != 0 {
        return Err(heads_err(c));
    }
    // The same checks as the split form (`attention` on each head), on the shapes it would have.
    let (bk, lk, ck) = dims3(k)?;
    if bk != b || ck != c || dims3(v)? != (b, lk, c) || lk == 0 {
        return Err(bad_shapes());
    }
    if k.dtype() != q.dtype() || v.dtype() != q.dtype() {
        return Err(Error::invalid(OP, "q, k and v must have one dtype"));
    }
    if takes_device_path(q.device()) {
        return device::attention_heads(q, k, v, heads, scale, budget);
    }
    fused(q, k, v, heads, scale)
}

fn fused(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, scale: f64) -> Result<Tensor> {
    let in_dtype = q.dtype();
    let f32c = |t: &Tensor| -> candle_core::Result<Tensor> { t.to_dtype(DType::F32)?.contiguous() };
    let op = FusedAttention { heads, scale: scale as f32 };
    Ok(f32c(q)?.apply_op3_no_bwd(&f32c(k)?, &f32c(v)?, &op)?.to_dtype(in_dtype)?)
}

/// candle's attention, as its Stable Diffusion `CrossAttention` computes it: f32 `q · (kᵀ ·
/// scale)`, `softmax_last_dim`, `· v`, cast back to `q`'s dtype. Same shapes and errors as
/// [`attention`].
pub fn attention_reference(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    check(q, k, v)?;
    let in_dtype = q.dtype();
    let (q, k, v) = (q.to_dtype(DType::F32)?, k.to_dtype(DType::F32)?, v.to_dtype(DType::F32)?);
    let s = q.matmul(&(k.t()? * scale)?)?;
    Ok(candle_nn::ops::softmax_last_dim(&s)?.matmul(&v)?.to_dtype(in_dtype)?)
}

fn check(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<()> {
    let bad_shapes = || {
        Error::invalid(
            OP,
            format!("needs q [N, Lq, D], k and v [N, Lk > 0, D]: got {:?}, {:?}, {:?}", q.dims(), k.dims(), v.dims()),
        )
    };
    let dims3 = |t: &Tensor| t.dims3().map_err(|_| bad_shapes());
    let (n, _lq, d) = dims3(q)?;
    let (nk, lk, dk) = dims3(k)?;
    let vd = dims3(v)?;
    if nk != n || dk != d || vd != (n, lk, d) || lk == 0 {
        return Err(bad_shapes());
    }
    if k.dtype() != q.dtype() || v.dtype() != q.dtype() {
        return Err(Error::invalid(OP, "q, k and v must have one dtype"));
    }
    Ok(())
}

struct FusedAttention {
    heads: usize,
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
        let (q, k, v) = (f32_slice(OP, s1, l1)?, f32_slice(OP, s2, l2)?, f32_slice(OP, s3, l3)?);
        let (b, lq, c) = l1.shape().dims3()?;
        let lk = l2.shape().dims()[1];
        let dims = Dims { b, heads: self.heads, lq, lk, d: c / self.heads };
        let mut out = vec![0f32; b * lq * c];
        attention_f32(q, k, v, &mut out, dims, self.scale);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Sizes of one call: batch, heads, query and key lengths, head dim; tensors are `[b, l, heads, d]`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dims {
    pub b: usize,
    pub heads: usize,
    pub lq: usize,
    pub lk: usize,
    pub d: usize,
}

/// The kernel over contiguous slices: `q` `[b, lq, heads·d]`, `k`, `v` `[b, lk, heads·d]`, `out`
/// `[b, lq, heads·d]`.
pub(crate) fn attention_f32(q: &[f32], k: &[f32], v: &[f32], out: &mut [f32], dims: Dims, scale: f32) {
    attention_f32_isa(q, k, v, out, dims, scale, Isa::detect())
}

/// [`attention_f32`] with the build `isa` (which the CPU must run).
pub(crate) fn attention_f32_isa(q: &[f32], k: &[f32], v: &[f32], out: &mut [f32], dims: Dims, scale: f32, isa: Isa) {
    let Dims { b, heads, lq, lk, d } = dims;
    if b == 0 || heads == 0 || lq == 0 || d == 0 || lk == 0 {
        return;
    }
    let c = heads * d;
    // Key block: a multiple of KEY_ALIGN, at most KEY_BLOCK, its keys (d × kb) within 32 KiB,
    // and no longer than the keys rounded up (cross-attention has 77).
    let kb = (8192 / d / KEY_ALIGN * KEY_ALIGN).clamp(KEY_ALIGN, KEY_BLOCK).min(lk.div_ceil(KEY_ALIGN) * KEY_ALIGN);
    let blocks = lk.div_ceil(kb);
    // Keys transposed once per (batch, head) into blocks of [d][kb] (zero-padded past lk), so the
    // score kernel loads 16 consecutive keys of one channel as a vector.
    let per_head = blocks * d * kb;
    let mut kt = vec![0f32; b * heads * per_head];
    kt.par_chunks_mut(per_head).enumerate().for_each(|(bh, kt)| {
        let (bi, h) = (bh / heads, bh % heads);
        for (blk, kt) in kt.chunks_mut(d * kb).enumerate() {
            let start = blk * kb;
            for j in 0..kb.min(lk - start) {
                let row = &k[(bi * lk + start + j) * c + h * d..][..d];
                for (ch, &x) in row.iter().enumerate() {
                    kt[ch * kb + j] = x;
                }
            }
        }
    });
    let geo = Geometry { heads, lk, d, kb, blocks, scale };
    out.par_chunks_mut(lq * c).enumerate().for_each(|(bi, out_b)| {
        let q_b = &q[bi * lq * c..][..lq * c];
        let v_b = &v[bi * lk * c..][..lk * c];
        let kt_b = &kt[bi * heads * per_head..][..heads * per_head];
        out_b.par_chunks_mut(QUERY_TILE * c).enumerate().for_each(|(t, out_t)| {
            let rows = out_t.len() / c;
            let q_t = &q_b[t * QUERY_TILE * c..][..rows * c];
            tile_dispatch(q_t, kt_b, v_b, out_t, rows, &geo, isa);
        });
    });
}

/// What every tile of one call shares.
struct Geometry {
    heads: usize,
    lk: usize,
    d: usize,
    /// Keys per block (a multiple of [`KEY_ALIGN`]).
    kb: usize,
    blocks: usize,
    scale: f32,
}

/// [`tile`] compiled for `isa` (the crate is built for baseline x86-64, whose SSE2 vectors are a
/// half or a quarter as wide).
fn tile_dispatch(q: &[f32], kt: &[f32], v: &[f32], out: &mut [f32], rows: usize, geo: &Geometry, isa: Isa) {
    match isa {
        Isa::Portable => tile::<false, false>(q, kt, v, out, rows, geo),
        // SAFETY: `isa` is one the CPU runs (`Isa::detect`, or `Isa::available` in tests).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { tile_avx2(q, kt, v, out, rows, geo) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { tile_avx512(q, kt, v, out, rows, geo) },
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2(q: &[f32], kt: &[f32], v: &[f32], out: &mut [f32], rows: usize, geo: &Geometry) {
    tile::<true, false>(q, kt, v, out, rows, geo)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn tile_avx512(q: &[f32], kt: &[f32], v: &[f32], out: &mut [f32], rows: usize, geo: &Geometry) {
    tile::<true, true>(q, kt, v, out, rows, geo)
}

/// One tile of `rows` queries (`q`, `out`: `[rows, heads·d]`) against all keys, head by head.
///
/// `FMA`: compiled with AVX2 + FMA, `WIDE`: with AVX-512F too (the inner products in intrinsics
/// for either).
#[inline(always)]
fn tile<const FMA: bool, const WIDE: bool>(
    q: &[f32],
    kt: &[f32],
    v: &[f32],
    out: &mut [f32],
    rows: usize,
    geo: &Geometry,
) {
    let &Geometry { heads, lk, d, kb, blocks, scale } = geo;
    let c = heads * d;
    // Rows padded to a multiple of ROWS with zero queries (their results are dropped).
    let padded = rows.div_ceil(ROWS) * ROWS;
    let mut qs = vec![0f32; padded * d];
    let mut acc = vec![0f32; padded * d];
    // Scores / probabilities of one row group, rows KEY_BLOCK apart (a constant stride, so the
    // kernels address the six rows from one register).
    let mut s = vec![0f32; ROWS * KEY_BLOCK];
    let mut m = vec![f32::NEG_INFINITY; padded];
    let mut l = vec![0f32; padded];
    for h in 0..heads {
        // Scaled queries of this head (the scores are q·scale·k, as in candle up to rounding),
        // interleaved by row group: `[padded / ROWS][d][ROWS]`, so the score kernel reads the six
        // rows' values of one channel together.
        for r in 0..rows {
            let (g, i) = (r / ROWS, r % ROWS);
            for (ch, &x) in q[r * c + h * d..][..d].iter().enumerate() {
                qs[(g * d + ch) * ROWS + i] = x * scale;
            }
        }
        acc.fill(0.0);
        m.fill(f32::NEG_INFINITY);
        l.fill(0.0);
        let kt_h = &kt[h * blocks * d * kb..][..blocks * d * kb];
        for blk in 0..blocks {
            let start = blk * kb;
            let kn = kb.min(lk - start);
            let kt_blk = &kt_h[blk * d * kb..][..d * kb];
            for g in (0..padded).step_by(ROWS) {
                scores::<FMA, WIDE>(&qs[g * d..][..ROWS * d], kt_blk, &mut s, d, kb, kn);
                for r in 0..ROWS {
                    let s_r = &mut s[r * KEY_BLOCK..][..kn];
                    let mb = max(s_r);
                    let (mr, acc_r) = (&mut m[g + r], &mut acc[(g + r) * d..][..d]);
                    if mb > *mr {
                        // Rescale what was accumulated under the old maximum (nothing, the first time).
                        let f = if *mr == f32::NEG_INFINITY { 0.0 } else { exp::<FMA>(*mr - mb) };
                        l[g + r] *= f;
                        acc_r.iter_mut().for_each(|a| *a *= f);
                        *mr = mb;
                    }
                    l[g + r] += exp_shifted_sum::<FMA>(s_r, *mr);
                }
                weighted_values::<FMA, WIDE>(&s, &v[start * c + h * d..], &mut acc[g * d..][..ROWS * d], d, c, kn);
            }
        }
        for r in 0..rows {
            let inv = 1.0 / l[r];
            for (o, &a) in out[r * c + h * d..][..d].iter_mut().zip(&acc[r * d..][..d]) {
                *o = a * inv;
            }
        }
    }
}

/// Scores of [`ROWS`] query rows (`q`: `[d, ROWS]`) against one block of keys (`kt`: `[d, kb]`),
/// into `s` `[ROWS, KEY_BLOCK]`, [`KEY_LANES`] keys at a time in registers (the padded keys past
/// `kn` are zero and give zero scores, never read).
#[inline(always)]
fn scores<const FMA: bool, const WIDE: bool>(q: &[f32], kt: &[f32], s: &mut [f32], d: usize, kb: usize, kn: usize) {
    #[cfg(target_arch = "x86_64")]
    if WIDE {
        // SAFETY: `WIDE` is true only in the build for CPUs with AVX-512F (`tile_avx512`).
        unsafe { x86::scores512(q, kt, s, d, kb, kn) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if FMA {
        // SAFETY: `FMA` is true only in the build for CPUs with AVX2 and FMA (`tile_avx2`).
        unsafe { x86::scores(q, kt, s, d, kb, kn) };
        return;
    }
    let q = &q[..d * ROWS];
    for j0 in (0..kn).step_by(KEY_LANES) {
        let mut acc = [[0f32; KEY_LANES]; ROWS];
        for ch in 0..d {
            let kv: &[f32; KEY_LANES] = kt[ch * kb + j0..][..KEY_LANES].try_into().unwrap();
            let qv: &[f32; ROWS] = q[ch * ROWS..][..ROWS].try_into().unwrap();
            for r in 0..ROWS {
                for i in 0..KEY_LANES {
                    acc[r][i] = madd::<FMA>(qv[r], kv[i], acc[r][i]);
                }
            }
        }
        for r in 0..ROWS {
            s[r * KEY_BLOCK + j0..][..KEY_LANES].copy_from_slice(&acc[r]);
        }
    }
}

/// `acc[r] += Σⱼ p[r, j] · v[j]` for [`ROWS`] rows (`p` = `s` `[ROWS, KEY_BLOCK]`, its first `kn`
/// columns; `v` row `j` at `v[j·stride..][..d]`; `acc` `[ROWS, d]`), 16 or 8 channels at a time in
/// registers, single channels for a remainder of fewer than 8.
#[inline(always)]
fn weighted_values<const FMA: bool, const WIDE: bool>(
    p: &[f32],
    v: &[f32],
    acc: &mut [f32],
    d: usize,
    stride: usize,
    kn: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if WIDE {
        // SAFETY: `WIDE` is true only in the build for CPUs with AVX-512F (`tile_avx512`).
        unsafe { x86::weighted_values512(p, v, acc, d, stride, kn) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if FMA {
        // SAFETY: `FMA` is true only in the build for CPUs with AVX2 and FMA (`tile_avx2`).
        unsafe { x86::weighted_values(p, v, acc, d, stride, kn) };
        return;
    }
    let mut c0 = 0;
    while c0 + 16 <= d {
        channels::<FMA, 16>(p, v, acc, c0, d, stride, kn);
        c0 += 16;
    }
    if c0 + 8 <= d {
        channels::<FMA, 8>(p, v, acc, c0, d, stride, kn);
        c0 += 8;
    }
    for ch in c0..d {
        for r in 0..ROWS {
            let mut a = acc[r * d + ch];
            for j in 0..kn {
                a = madd::<FMA>(p[r * KEY_BLOCK + j], v[j * stride + ch], a);
            }
            acc[r * d + ch] = a;
        }
    }
}

#[inline(always)]
fn channels<const FMA: bool, const W: usize>(
    p: &[f32],
    v: &[f32],
    acc: &mut [f32],
    c0: usize,
    d: usize,
    stride: usize,
    kn: usize,
) {
    let mut a = [[0f32; W]; ROWS];
    for r in 0..ROWS {
        a[r].copy_from_slice(&acc[r * d + c0..][..W]);
    }
    let p = &p[..(ROWS - 1) * KEY_BLOCK + kn];
    for j in 0..kn {
        let vr: &[f32; W] = v[j * stride + c0..][..W].try_into().unwrap();
        let pr: [f32; ROWS] = std::array::from_fn(|r| p[r * KEY_BLOCK + j]);
        for r in 0..ROWS {
            for i in 0..W {
                a[r][i] = madd::<FMA>(pr[r], vr[i], a[r][i]);
            }
        }
    }
    for r in 0..ROWS {
        acc[r * d + c0..][..W].copy_from_slice(&a[r]);
    }
}

/// The two inner kernels in AVX2 + FMA and in AVX-512F intrinsics: the generic versions vectorise
/// too, but keep bounds checks and scalar loads + broadcasts in their innermost loops.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{KEY_ALIGN, KEY_BLOCK, KEY_LANES, ROWS};

    /// [`super::scores`]: 6 rows × 16 keys in twelve accumulators.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn scores(q: &[f32], kt: &[f32], s: &mut [f32], d: usize, kb: usize, kn: usize) {
        let steps = kn.div_ceil(KEY_LANES);
        assert!(
            q.len() >= d * ROWS
                && kb.is_multiple_of(KEY_LANES)
                && steps * KEY_LANES <= kb
                && kb <= KEY_BLOCK
                && kt.len() >= d * kb
                && s.len() >= (ROWS - 1) * KEY_BLOCK + kb
        );
        let (q, kt, s) = (q.as_ptr(), kt.as_ptr(), s.as_mut_ptr());
        for step in 0..steps {
            let j0 = step * KEY_LANES;
            // SAFETY: the reads stay below q[d·ROWS] and kt[(d−1)·kb + j0 + 16] ≤ kt[d·kb], the
            // writes below s[(ROWS−1)·KEY_BLOCK + j0 + 16] ≤ s[(ROWS−1)·KEY_BLOCK + kb] (asserted).
            unsafe {
                let mut a = [[_mm256_setzero_ps(); 2]; ROWS];
                let (mut kp, mut qp) = (kt.add(j0), q);
                for _ in 0..d {
                    let (k0, k1) = (_mm256_loadu_ps(kp), _mm256_loadu_ps(kp.add(8)));
                    for (r, a) in a.iter_mut().enumerate() {
                        let qr = _mm256_broadcast_ss(&*qp.add(r));
                        a[0] = _mm256_fmadd_ps(qr, k0, a[0]);
                        a[1] = _mm256_fmadd_ps(qr, k1, a[1]);
                    }
                    kp = kp.add(kb);
                    qp = qp.add(ROWS);
                }
                for (r, a) in a.iter().enumerate() {
                    _mm256_storeu_ps(s.add(r * KEY_BLOCK + j0), a[0]);
                    _mm256_storeu_ps(s.add(r * KEY_BLOCK + j0 + 8), a[1]);
                }
            }
        }
    }

    /// [`super::weighted_values`]: 6 rows × 16 channels in twelve accumulators, then 6 rows × 8
    /// channels over even and odd keys (twelve accumulators again), then single channels.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn weighted_values(p: &[f32], v: &[f32], acc: &mut [f32], d: usize, stride: usize, kn: usize) {
        if kn == 0 {
            return;
        }
        assert!(p.len() >= (ROWS - 1) * KEY_BLOCK + kn && acc.len() >= ROWS * d && v.len() >= (kn - 1) * stride + d);
        let (pp, vp, ap) = (p.as_ptr(), v.as_ptr(), acc.as_mut_ptr());
        let mut c0 = 0;
        // SAFETY (all blocks below): reads of p below p[(ROWS−1)·KEY_BLOCK + kn], of v below
        // v[(kn−1)·stride + d], reads and writes of acc below acc[ROWS·d] (asserted above).
        while c0 + 16 <= d {
            unsafe {
                let mut a = [[_mm256_setzero_ps(); 2]; ROWS];
                for (r, a) in a.iter_mut().enumerate() {
                    a[0] = _mm256_loadu_ps(ap.add(r * d + c0));
                    a[1] = _mm256_loadu_ps(ap.add(r * d + c0 + 8));
                }
                let mut vr = vp.add(c0);
                for j in 0..kn {
                    let (v0, v1) = (_mm256_loadu_ps(vr), _mm256_loadu_ps(vr.add(8)));
                    for (r, a) in a.iter_mut().enumerate() {
                        let pr = _mm256_broadcast_ss(&*pp.add(r * KEY_BLOCK + j));
                        a[0] = _mm256_fmadd_ps(pr, v0, a[0]);
                        a[1] = _mm256_fmadd_ps(pr, v1, a[1]);
                    }
                    vr = vr.add(stride);
                }
                for (r, a) in a.iter().enumerate() {
                    _mm256_storeu_ps(ap.add(r * d + c0), a[0]);
                    _mm256_storeu_ps(ap.add(r * d + c0 + 8), a[1]);
                }
            }
            c0 += 16;
        }
        if c0 + 8 <= d {
            unsafe {
                let mut a = [[_mm256_setzero_ps(); 2]; ROWS];
                for (r, a) in a.iter_mut().enumerate() {
                    a[0] = _mm256_loadu_ps(ap.add(r * d + c0));
                }
                let mut vr = vp.add(c0);
                let mut j = 0;
                while j + 2 <= kn {
                    let (v0, v1) = (_mm256_loadu_ps(vr), _mm256_loadu_ps(vr.add(stride)));
                    for (r, a) in a.iter_mut().enumerate() {
                        let pr = pp.add(r * KEY_BLOCK + j);
                        a[0] = _mm256_fmadd_ps(_mm256_broadcast_ss(&*pr), v0, a[0]);
                        a[1] = _mm256_fmadd_ps(_mm256_broadcast_ss(&*pr.add(1)), v1, a[1]);
                    }
                    vr = vr.add(2 * stride);
                    j += 2;
                }
                if j < kn {
                    let v0 = _mm256_loadu_ps(vr);
                    for (r, a) in a.iter_mut().enumerate() {
                        a[0] = _mm256_fmadd_ps(_mm256_broadcast_ss(&*pp.add(r * KEY_BLOCK + j)), v0, a[0]);
                    }
                }
                for (r, a) in a.iter().enumerate() {
                    _mm256_storeu_ps(ap.add(r * d + c0), _mm256_add_ps(a[0], a[1]));
                }
            }
            c0 += 8;
        }
        for ch in c0..d {
            for r in 0..ROWS {
                let mut a = acc[r * d + ch];
                for j in 0..kn {
                    a = p[r * KEY_BLOCK + j].mul_add(v[j * stride + ch], a);
                }
                acc[r * d + ch] = a;
            }
        }
    }

    /// [`super::scores`] in AVX-512F: 6 rows × 32 keys in twelve accumulators.
    #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
    pub(super) fn scores512(q: &[f32], kt: &[f32], s: &mut [f32], d: usize, kb: usize, kn: usize) {
        let steps = kn.div_ceil(KEY_ALIGN);
        assert!(
            q.len() >= d * ROWS
                && kb.is_multiple_of(KEY_ALIGN)
                && steps * KEY_ALIGN <= kb
                && kb <= KEY_BLOCK
                && kt.len() >= d * kb
                && s.len() >= (ROWS - 1) * KEY_BLOCK + kb
        );
        let (q, kt, s) = (q.as_ptr(), kt.as_ptr(), s.as_mut_ptr());
        for step in 0..steps {
            let j0 = step * KEY_ALIGN;
            // SAFETY: the reads stay below q[d·ROWS] and kt[(d−1)·kb + j0 + 32] ≤ kt[d·kb], the
            // writes below s[(ROWS−1)·KEY_BLOCK + j0 + 32] ≤ s[(ROWS−1)·KEY_BLOCK + kb] (asserted).
            unsafe {
                let mut a = [[_mm512_setzero_ps(); 2]; ROWS];
                let (mut kp, mut qp) = (kt.add(j0), q);
                for _ in 0..d {
                    let (k0, k1) = (_mm512_loadu_ps(kp), _mm512_loadu_ps(kp.add(16)));
                    for (r, a) in a.iter_mut().enumerate() {
                        let qr = _mm512_set1_ps(*qp.add(r));
                        a[0] = _mm512_fmadd_ps(qr, k0, a[0]);
                        a[1] = _mm512_fmadd_ps(qr, k1, a[1]);
                    }
                    kp = kp.add(kb);
                    qp = qp.add(ROWS);
                }
                for (r, a) in a.iter().enumerate() {
                    _mm512_storeu_ps(s.add(r * KEY_BLOCK + j0), a[0]);
                    _mm512_storeu_ps(s.add(r * KEY_BLOCK + j0 + 16), a[1]);
                }
            }
        }
    }

    /// [`super::weighted_values`] in AVX-512F: 6 rows × 32 channels in twelve accumulators, then
    /// the last 1 to 16 channels as 6 rows over even and odd keys (masked loads and stores, 8-lane
    /// vectors for 8 channels or fewer).
    #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
    pub(super) fn weighted_values512(p: &[f32], v: &[f32], acc: &mut [f32], d: usize, stride: usize, kn: usize) {
        if kn == 0 {
            return;
        }
        assert!(p.len() >= (ROWS - 1) * KEY_BLOCK + kn && acc.len() >= ROWS * d && v.len() >= (kn - 1) * stride + d);
        let (pp, vp, ap) = (p.as_ptr(), v.as_ptr(), acc.as_mut_ptr());
        let mut c0 = 0;
        // SAFETY (all blocks below): reads of p below p[(ROWS−1)·KEY_BLOCK + kn], of v below
        // v[(kn−1)·stride + d], reads and writes of acc below acc[ROWS·d] (asserted above); the
        // masked loads and stores touch only the lanes below d − c0.
        while c0 + 32 <= d {
            unsafe {
                let mut a = [[_mm512_setzero_ps(); 2]; ROWS];
                for (r, a) in a.iter_mut().enumerate() {
                    a[0] = _mm512_loadu_ps(ap.add(r * d + c0));
                    a[1] = _mm512_loadu_ps(ap.add(r * d + c0 + 16));
                }
                let mut vr = vp.add(c0);
                for j in 0..kn {
                    let (v0, v1) = (_mm512_loadu_ps(vr), _mm512_loadu_ps(vr.add(16)));
                    for (r, a) in a.iter_mut().enumerate() {
                        let pr = _mm512_set1_ps(*pp.add(r * KEY_BLOCK + j));
                        a[0] = _mm512_fmadd_ps(pr, v0, a[0]);
                        a[1] = _mm512_fmadd_ps(pr, v1, a[1]);
                    }
                    vr = vr.add(stride);
                }
                for (r, a) in a.iter().enumerate() {
                    _mm512_storeu_ps(ap.add(r * d + c0), a[0]);
                    _mm512_storeu_ps(ap.add(r * d + c0 + 16), a[1]);
                }
            }
            c0 += 32;
        }
        while d - c0 > 8 {
            let w = (d - c0).min(16);
            let m: __mmask16 = (((1u32 << w) - 1) & 0xFFFF) as u16;
            unsafe {
                let mut a = [[_mm512_setzero_ps(); 2]; ROWS];
                for (r, a) in a.iter_mut().enumerate() {
                    a[0] = _mm512_maskz_loadu_ps(m, ap.add(r * d + c0));
                }
                let mut vr = vp.add(c0);
                let mut j = 0;
                while j + 2 <= kn {
                    let (v0, v1) = (_mm512_maskz_loadu_ps(m, vr), _mm512_maskz_loadu_ps(m, vr.add(stride)));
                    for (r, a) in a.iter_mut().enumerate() {
                        let pr = pp.add(r * KEY_BLOCK + j);
                        a[0] = _mm512_fmadd_ps(_mm512_set1_ps(*pr), v0, a[0]);
                        a[1] = _mm512_fmadd_ps(_mm512_set1_ps(*pr.add(1)), v1, a[1]);
                    }
                    vr = vr.add(2 * stride);
                    j += 2;
                }
                if j < kn {
                    let v0 = _mm512_maskz_loadu_ps(m, vr);
                    for (r, a) in a.iter_mut().enumerate() {
                        a[0] = _mm512_fmadd_ps(_mm512_set1_ps(*pp.add(r * KEY_BLOCK + j)), v0, a[0]);
                    }
                }
                for (r, a) in a.iter().enumerate() {
                    _mm512_mask_storeu_ps(ap.add(r * d + c0), m, _mm512_add_ps(a[0], a[1]));
                }
            }
            c0 += w;
        }
        if c0 < d {
            // The last 1 to 8 channels in 8-lane vectors (a masked 16-lane one would take both
            // halves of the FMA pipes where they are 256 bits wide, as on AMD's Zen 4).
            let m: __mmask8 = ((1u32 << (d - c0)) - 1) as u8;
            unsafe {
                let mut a = [[_mm256_setzero_ps(); 2]; ROWS];
                for (r, a) in a.iter_mut().enumerate() {
                    a[0] = _mm256_maskz_loadu_ps(m, ap.add(r * d + c0));
                }
                let mut vr = vp.add(c0);
                let mut j = 0;
                while j + 2 <= kn {
                    let (v0, v1) = (_mm256_maskz_loadu_ps(m, vr), _mm256_maskz_loadu_ps(m, vr.add(stride)));
                    for (r, a) in a.iter_mut().enumerate() {
                        let pr = pp.add(r * KEY_BLOCK + j);
                        a[0] = _mm256_fmadd_ps(_mm256_broadcast_ss(&*pr), v0, a[0]);
                        a[1] = _mm256_fmadd_ps(_mm256_broadcast_ss(&*pr.add(1)), v1, a[1]);
                    }
                    vr = vr.add(2 * stride);
                    j += 2;
                }
                if j < kn {
                    let v0 = _mm256_maskz_loadu_ps(m, vr);
                    for (r, a) in a.iter_mut().enumerate() {
                        a[0] = _mm256_fmadd_ps(_mm256_broadcast_ss(&*pp.add(r * KEY_BLOCK + j)), v0, a[0]);
                    }
                }
                for (r, a) in a.iter().enumerate() {
                    _mm256_mask_storeu_ps(ap.add(r * d + c0), m, _mm256_add_ps(a[0], a[1]));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{attention_f32_isa, Dims, Isa};

    /// softmax(q·kᵀ·scale)·v in f64, `[b, l, heads·d]` layout.
    fn naive(q: &[f32], k: &[f32], v: &[f32], dims: Dims, scale: f64) -> Vec<f64> {
        let Dims { b, heads, lq, lk, d } = dims;
        let c = heads * d;
        let mut out = vec![0f64; b * lq * c];
        for bi in 0..b {
            for h in 0..heads {
                for i in 0..lq {
                    let qi = &q[(bi * lq + i) * c + h * d..][..d];
                    let s: Vec<f64> = (0..lk)
                        .map(|j| {
                            let kj = &k[(bi * lk + j) * c + h * d..][..d];
                            qi.iter().zip(kj).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() * scale
                        })
                        .collect();
                    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for (j, e) in e.iter().enumerate() {
                        for ch in 0..d {
                            out[(bi * lq + i) * c + h * d + ch] += e / z * v[(bi * lk + j) * c + h * d + ch] as f64;
                        }
                    }
                }
            }
        }
        out
    }

    /// Every build this CPU runs (portable, AVX2, AVX-512) against f64, at head dims that take
    /// each channel path (32-wide, 16-wide, masked 9–16 and 1–8, scalar remainders) and key
    /// counts that end blocks and register tiles part-way.
    #[test]
    fn every_instruction_set_matches_f64() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut rand = move || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 23) as f32 * 2.0 - 1.0
        };
        let cases = [(1, 1, 7, 1, 1), (2, 2, 13, 31, 3), (1, 3, 61, 77, 8), (2, 1, 9, 300, 9), (1, 2, 25, 33, 16)];
        let more = [(1, 1, 7, 65, 17), (1, 2, 6, 97, 24), (1, 1, 12, 40, 40), (2, 1, 5, 70, 47), (1, 1, 7, 129, 80)];
        for (b, heads, lq, lk, d) in cases.into_iter().chain(more) {
            let dims = Dims { b, heads, lq, lk, d };
            let c = heads * d;
            // Entries in [−1, 1], so scores of about ±1/3: f32 rounding errors, well below 1e-5.
            let mut gen = |n: usize, amp: f32| (0..n).map(|_| amp * rand()).collect::<Vec<f32>>();
            let (q, k, v) = (gen(b * lq * c, 1.0), gen(b * lk * c, 1.0), gen(b * lk * c, 1.0));
            let scale = 1.0 / (d as f64).sqrt();
            let want = naive(&q, &k, &v, dims, scale);
            for isa in Isa::available() {
                let mut out = vec![f32::NAN; b * lq * c];
                attention_f32_isa(&q, &k, &v, &mut out, dims, scale as f32, isa);
                let err = out.iter().zip(&want).map(|(&a, &b)| (a as f64 - b).abs()).fold(0.0, f64::max);
                assert!(err < 1e-5, "{isa:?} {dims:?}: {err:e}");
            }
        }
    }
}
