//! Fused CPU kernels for the operations that dominate a UNet forward, and nothing else.
//!
//! * [`attention`]: softmax(q·kᵀ·scale)·v with a streaming (online) softmax over blocks of keys,
//!   so the `Lq × Lk` score matrix never exists in memory; register-tiled (6 queries × 16 keys or
//!   channels with AVX2, × 32 with AVX-512); multi-threaded over batch and query tiles;
//!   [`attention_heads`] reads and writes the projections' `[B, L, heads·D]` layout directly.
//! * [`group_norm`]: group normalisation with its affine transform and an optional SiLU, in one
//!   kernel per (batch, group), multi-threaded.
//! * [`conv2d`]: 2-d convolution (the UNet's 3×3 and 1×1 ones) as tiles of im2col and a GEMM
//!   (the `gemm` crate, candle's own) writing straight into the NCHW output, bias included;
//!   multi-threaded over batch × row tiles; a bias per batch item (a resnet's timestep embedding)
//!   and, with [`conv2d_add`], a residual are added in the same pass; [`conv2d_reference`] is
//!   candle's.
//! * [`linear`]: `x · Wᵀ + b` as one GEMM over all leading dimensions, writing into the
//!   bias-filled output, without candle's per-matmul thread-count query; [`linear_add`] adds a
//!   residual in the same pass, [`linear_from_channels`] / [`linear_to_channels`] read / write the
//!   image layout `[B, C, H, W]` directly (a spatial transformer's `proj_in` / `proj_out`);
//!   [`linear_reference`] is `candle_nn::Linear`.
//! * [`geglu`]: the GEGLU feed-forward's gating, `h · gelu(g)` with the exact (erf) GELU, in one
//!   pass over the projection's contiguous rows, multi-threaded over rows.
//!
//! Each takes candle tensors and, on the CPU, runs our kernel in f32 (f16 / bf16 inputs are
//! upcast to f32 and the result cast back, as candle's attention does); on any other device it
//! runs candle's own ops ([`attention_reference`], [`group_norm_reference`],
//! [`conv2d_reference`], [`linear_reference`], [`geglu_reference`]), which are also the plain
//! reference computations the kernels are tested and benchmarked against.
//!
//! f16 / bf16 models therefore halve the weights' memory on the CPU but convert each weight on
//! every call: f32 is the faster CPU dtype (a full-size SD 1.5 UNet forward took 1.7× as long in
//! f16).
//!
//! Batch invariance: on the CPU every kernel gives each batch item (each row of a linear) the
//! same bits whatever else is in its batch and whatever the number of threads. The GEMMs hand the
//! `gemm` crate depth blocks of at most 512 chosen from the depth alone, and problems too small or
//! thin for its blocked kernels as zero-padded copies, so that each output is summed in one fixed
//! order (the crate alone picks its depth blocking and its small-problem kernels from the whole
//! GEMM's size); its threads split rows and columns, never the depth. Attention, group norm and
//! GEGLU never mix batch items. `tests/invariance` checks all of them on random shapes at 1 and 2
//! threads. On other devices candle's ops (cuBLAS, cuDNN) make no such promise.
//!
//! The residual and bias additions are fused into the GEMMs for a second reason: candle runs an
//! elementwise op over 64K elements or more on its barrier-pool thread, which then spins 25,000
//! iterations before parking, taking a core from rayon's threads (20% of the samples of a tiny-UNet
//! forward at 32×32 latents on two cores). Our UNet runs no such op on the CPU.
//!
//! The kernels are plain Rust over slices, written so that their inner loops vectorise, with AVX2 +
//! FMA and AVX-512 builds chosen at run time (`Isa`; intrinsics for attention's two inner loops
//! and group norm's sums), each build tested against f64; the GEMMs are the `gemm` crate's;
//! threads come from rayon's global pool (the one candle's CPU backend uses).
//!
//! # Errors
//!
//! Every public function returns this crate's [`Result`], never panicking on its inputs. Its
//! [`Error`] names the kernel (`op`) and says what went wrong: arguments that do not fit
//! ([`Error::InvalidInput`]: ranks, shapes, dtypes, channels that do not split into heads or
//! groups, a zero stride), a size whose element count overflows ([`Error::TooLarge`]), a failed
//! check of the kernel's own buffers ([`Error::Internal`], a bug of this crate), or an error of
//! candle itself ([`Error::Candle`]: its tensor operations, and the kernels run through candle's
//! custom-op interface, which return candle's errors). Code that works in `candle_core::Result`
//! converts with `?` (`From<Error> for candle_core::Error`).

#![warn(missing_docs)]

mod attention;
mod conv;
mod device;
mod error;
mod geglu;
mod group_norm;
mod linear;
mod math;

#[doc(hidden)]
pub use attention::attention_heads_budget;
pub use attention::{attention, attention_heads, attention_reference};
pub use conv::{conv2d, conv2d_add, conv2d_reference};
pub use device::ATTENTION_SCORE_BUDGET;
#[doc(hidden)]
pub use device::{takes_device_path, with_device_path};
pub use error::{Error, Result};
pub use geglu::{geglu, geglu_reference};
pub use group_norm::{group_norm, group_norm_reference};
pub use linear::{linear, linear_add, linear_from_channels, linear_reference, linear_to_channels};

/// The instruction sets the element-wise kernels (attention, group norm, GEGLU) have a build for,
/// chosen once per call at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isa {
    /// Plain Rust for the target's baseline (SSE2 on x86-64).
    Portable,
    /// AVX2 + FMA: 8-lane vectors (intrinsics for attention's two inner products).
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX-512F + VL (+ AVX2 + FMA): 16-lane vectors (intrinsics for attention's two inner
    /// products, the compiler's vectorisation elsewhere).
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Isa {
    /// The widest build this CPU runs.
    pub(crate) fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
            let avx512 =
                std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512vl");
            if avx2 && avx512 {
                return Isa::Avx512;
            }
            if avx2 {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }

    /// Every build this CPU runs (for tests that compare them).
    #[cfg(test)]
    pub(crate) fn available() -> Vec<Isa> {
        let mut all = vec![Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            let best = Isa::detect();
            if best != Isa::Portable {
                all.push(Isa::Avx2);
            }
            if best == Isa::Avx512 {
                all.push(Isa::Avx512);
            }
        }
        all
    }
}

/// The number of elements of `dims`, multiplied with overflow checks (candle's own count wraps:
/// a tensor "of" 2³² × 2³² elements can hold none), or an [`Error::TooLarge`] naming the kernel
/// `op`.
fn checked_count(op: &'static str, dims: &[usize]) -> Result<usize> {
    dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).ok_or_else(|| Error::TooLarge { op, dims: dims.to_vec() })
}

/// The contiguous f32 data of a CPU storage, or an [`Error::Internal`] naming the kernel `op`
/// (the public functions hand the kernels contiguous f32 tensors). The slice holds exactly the
/// elements of `l`'s shape (counted with overflow checks): what every kernel's indexing, and the
/// SAFETY comments of its unsafe code, assume.
fn f32_slice<'a>(op: &'static str, s: &'a candle_core::CpuStorage, l: &candle_core::Layout) -> Result<&'a [f32]> {
    let candle_core::CpuStorage::F32(data) = s else {
        return Err(Error::internal(op, "takes f32"));
    };
    let (start, end) = l.contiguous_offsets().ok_or_else(|| Error::internal(op, "takes contiguous tensors"))?;
    let count = checked_count(op, l.shape().dims())?;
    match data.get(start..end) {
        Some(slice) if slice.len() == count => Ok(slice),
        _ => Err(Error::internal(
            op,
            format!(
                "the storage holds {} elements at offset {start}, not the {count} of shape {:?}",
                data.len(),
                l.shape().dims()
            ),
        )),
    }
}

/// Runs `kernel` on the f32 data of the CPU operands of a GEMM kernel, `x`, `weight` and the
/// optional `bias` and `residual` (more than candle's `CustomOp3` takes), each converted to a
/// contiguous f32 tensor first and read-locked while `kernel` runs; returns its output as a `dims`
/// tensor in `x`'s dtype. `op` names the kernel in errors.
fn run_f32(
    op: &'static str,
    [x, weight]: [&candle_core::Tensor; 2],
    bias: Option<&candle_core::Tensor>,
    residual: Option<&candle_core::Tensor>,
    dims: Vec<usize>,
    kernel: impl FnOnce(&[f32], &[f32], Option<&[f32]>, Option<&[f32]>) -> Result<Vec<f32>>,
) -> Result<candle_core::Tensor> {
    let out_len = checked_count(op, &dims)?;
    for t in [Some(x), Some(weight), bias, residual].into_iter().flatten() {
        checked_count(op, t.dims())?;
    }
    let f32c = |t: &candle_core::Tensor| t.to_dtype(candle_core::DType::F32)?.contiguous();
    let (xc, wc) = (f32c(x)?, f32c(weight)?);
    let (bc, rc) = (bias.map(f32c).transpose()?, residual.map(f32c).transpose()?);
    let out = {
        let (xs, ws) = (xc.storage_and_layout(), wc.storage_and_layout());
        let (bs, rs) = (bc.as_ref().map(|t| t.storage_and_layout()), rc.as_ref().map(|t| t.storage_and_layout()));
        let slice = |locked| locked_f32(op, locked);
        kernel(slice(&xs)?, slice(&ws)?, bs.as_ref().map(slice).transpose()?, rs.as_ref().map(slice).transpose()?)?
    };
    if out.len() != out_len {
        return Err(Error::internal(op, format!("the kernel wrote {} values for {dims:?}", out.len())));
    }
    Ok(candle_core::Tensor::from_vec(out, dims, &candle_core::Device::Cpu)?.to_dtype(x.dtype())?)
}

/// The contiguous f32 data behind a read-locked CPU storage, or an [`Error::Internal`] naming the
/// kernel `op`.
fn locked_f32<'a>(
    op: &'static str,
    (storage, layout): &'a (candle_core::StorageRef<'_>, &candle_core::Layout),
) -> Result<&'a [f32]> {
    match &**storage {
        candle_core::Storage::Cpu(cpu) => f32_slice(op, cpu, layout),
        _ => Err(Error::internal(op, "runs on CPU tensors")),
    }
}

/// Threads inside one GEMM that runs beside `tasks − 1` others: rayon's whole pool when there are
/// fewer tasks than threads, none otherwise (the tasks themselves fill the threads).
fn gemm_parallelism(tasks: usize) -> gemm::Parallelism {
    let threads = rayon::current_num_threads();
    if tasks < threads && threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    }
}

/// One f32 matrix operand of [`gemm_f32`]: its first element, its row and column strides (in
/// floats), and how many floats from `ptr` on belong to the buffer it points into.
#[derive(Clone, Copy)]
struct Operand<P> {
    ptr: P,
    row: usize,
    col: usize,
    len: usize,
}

impl<P> Operand<P> {
    /// Whether a `rows × cols` matrix with these strides lies inside the `len` floats (overflow
    /// checked).
    fn holds(&self, rows: usize, cols: usize) -> bool {
        if rows == 0 || cols == 0 {
            return true;
        }
        if self.row > isize::MAX as usize || self.col > isize::MAX as usize {
            return false;
        }
        let last = (rows - 1)
            .checked_mul(self.row)
            .and_then(|r| (cols - 1).checked_mul(self.col).and_then(|c| r.checked_add(c)));
        last.is_some_and(|last| last < self.len)
    }
}

/// Most depth (`k`) per call of the `gemm` crate: within one call of depth ≤ 512 every path of
/// its blocked algorithm reduces each output element over the whole depth in one sequential
/// chain of FMAs (its cache blocking of `k` only starts above 512).
const GEMM_DEPTH: usize = 512;

/// The largest `m · n` for which the `gemm` crate takes its "horizontal" dot-product kernels
/// (whose reductions run in a different order from its blocked kernels); with fewer than 2 rows
/// or columns it takes its matrix-vector paths (another order again).
pub(crate) const GEMM_SMALL: usize = 256;

/// The rows and columns a problem of `m × n` is padded to so that the `gemm` crate runs its
/// blocked kernels: at least 2 of each, and, where that is still at most [`GEMM_SMALL`]
/// elements, at least 17 of each (`17 · 17 > 256`). `(m, n)` itself when no padding is needed.
fn gemm_padded_sides(m: usize, n: usize) -> (usize, usize) {
    let (pm, pn) = (m.max(2), n.max(2));
    if pm.saturating_mul(pn) <= GEMM_SMALL {
        (pm.max(17), pn.max(17))
    } else {
        (pm, pn)
    }
}

/// `dst [m, n] (+)= lhs [m, k] · rhs [k, n]` through the `gemm` crate, any strides; accumulates
/// into `dst` when `accumulate`. Checks first that each operand's extent lies inside its `len`
/// (an [`Error::Internal`] of `"gemm"` otherwise, never an out-of-bounds access).
///
/// Batch-invariant: each output element is computed by the same sequence of floating-point
/// operations whatever `m`, `n`, the strides and `parallelism` are — its initial value (or 0),
/// then, for each block of [`GEMM_DEPTH`] or fewer depths (the blocks chosen from `k` alone), a
/// sequential FMA chain over the block added to it. So a row of `lhs` gives bit-identical output
/// in a batch of any size, and any thread count. The `gemm` crate alone does not promise this: it
/// picks its depth blocking from `m` and `n` too, and other kernels for small or thin problems;
/// here every call has a depth of at most [`GEMM_DEPTH`], at least 2 rows and columns and more
/// than [`GEMM_SMALL`] elements (smaller problems run on zero-padded copies,
/// [`gemm_padded_sides`]), where its blocked kernels do exactly the above (its threads split rows
/// and columns, never the depth).
///
/// # Safety
/// Each operand's `ptr` must be valid (`dst` for writes, the others for reads) for its `len`
/// floats, and no other thread may access the elements of `dst` in its extent during the call.
unsafe fn gemm_f32(p: &Gemm) -> Result<()> {
    let &Gemm { m, n, k, dst, lhs, rhs, .. } = p;
    if !(dst.holds(m, n) && lhs.holds(m, k) && rhs.holds(k, n)) {
        return Err(Error::internal(
            "gemm",
            format!(
                "[{m}, {k}] · [{k}, {n}]: an operand's extent exceeds its buffer (dst {} floats, lhs {}, rhs {})",
                dst.len, lhs.len, rhs.len
            ),
        ));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if gemm_padded_sides(m, n) != (m, n) {
        // SAFETY: the caller's contract, and the extents checked above.
        return unsafe { gemm_padded(p) };
    }
    // SAFETY: as above; `gemm_blocks` reads and writes only inside the checked extents.
    unsafe { gemm_blocks(p) };
    Ok(())
}

/// One GEMM for [`gemm_f32`]: `dst [m, n] (+)= lhs [m, k] · rhs [k, n]`, accumulating into `dst`
/// when `accumulate`, threaded as `parallelism` says.
struct Gemm {
    m: usize,
    n: usize,
    k: usize,
    dst: Operand<*mut f32>,
    lhs: Operand<*const f32>,
    rhs: Operand<*const f32>,
    accumulate: bool,
    parallelism: gemm::Parallelism,
}

/// [`gemm_f32`] for a problem too small or thin for the `gemm` crate's blocked kernels: on a copy
/// of `lhs` padded with zero rows and of `rhs` padded with zero columns to
/// [`gemm_padded_sides`] (each only where short), into a scratch `dst`, whose `[m, n]` part is
/// then copied out. The padding never meets a real element: each one sees the operations it
/// would see in any larger problem.
///
/// # Safety
/// As [`gemm_f32`]'s, with the extents already checked.
unsafe fn gemm_padded(p: &Gemm) -> Result<()> {
    let &Gemm { m, n, k, dst, lhs, rhs, accumulate, parallelism } = p;
    let (pm, pn) = gemm_padded_sides(m, n);
    let too_large = || Error::TooLarge { op: "gemm", dims: vec![pm, pn, k] };
    let (lhs_len, rhs_len) = (pm.checked_mul(k).ok_or_else(too_large)?, k.checked_mul(pn).ok_or_else(too_large)?);
    // SAFETY (reads and writes of element (i, j) of an operand below): i and j lie inside the
    // `[m, k]`, `[k, n]` or `[m, n]` extent the caller checked against the operand's `len`.
    let at = |o: &Operand<*const f32>, i: usize, j: usize| unsafe { *o.ptr.add(i * o.row + j * o.col) };
    let padded_lhs: Option<Vec<f32>> = (pm > m).then(|| {
        let mut a = vec![0f32; lhs_len];
        for i in 0..m {
            for (p, v) in a[i * k..][..k].iter_mut().enumerate() {
                *v = at(&lhs, i, p);
            }
        }
        a
    });
    let padded_rhs: Option<Vec<f32>> = (pn > n).then(|| {
        let mut b = vec![0f32; rhs_len];
        for p in 0..k {
            for (j, v) in b[p * pn..][..n].iter_mut().enumerate() {
                *v = at(&rhs, p, j);
            }
        }
        b
    });
    let mut out = vec![0f32; pm * pn];
    let dst_at = |i: usize, j: usize| dst.ptr.wrapping_add(i * dst.row + j * dst.col);
    if accumulate {
        for i in 0..m {
            for j in 0..n {
                // SAFETY: see above.
                out[i * pn + j] = unsafe { *dst_at(i, j) };
            }
        }
    }
    let lhs = match &padded_lhs {
        Some(a) => Operand { ptr: a.as_ptr(), row: k, col: 1, len: a.len() },
        None => lhs,
    };
    let rhs = match &padded_rhs {
        Some(b) => Operand { ptr: b.as_ptr(), row: pn, col: 1, len: b.len() },
        None => rhs,
    };
    let scratch = Operand { ptr: out.as_mut_ptr(), row: pn, col: 1, len: out.len() };
    // SAFETY: the padded operands are owned here and hold `[pm, k]`, `[k, pn]` and `[pm, pn]`;
    // an operand not padded keeps the caller's pointer and its checked extent (`pm == m` or
    // `pn == n` then).
    unsafe { gemm_blocks(&Gemm { m: pm, n: pn, k, dst: scratch, lhs, rhs, accumulate, parallelism }) };
    for i in 0..m {
        for j in 0..n {
            // SAFETY: see above; `dst`'s extent is the caller's alone.
            unsafe { *dst_at(i, j) = out[i * pn + j] };
        }
    }
    Ok(())
}

/// The `gemm` crate's call, in depth blocks of at most [`GEMM_DEPTH`] (`k` split into equal
/// blocks, from `k` alone), each accumulating into `dst` after the first (which accumulates only
/// when `accumulate`).
///
/// # Safety
/// The operands' `[m, n]`, `[m, k]` and `[k, n]` extents lie inside valid memory (`dst`
/// writable, its extent accessed by no other thread).
unsafe fn gemm_blocks(p: &Gemm) {
    let &Gemm { m, n, k, dst, lhs, rhs, accumulate, parallelism } = p;
    let blocks = k.div_ceil(GEMM_DEPTH).max(1);
    let depth = k.div_ceil(blocks);
    let mut start = 0;
    loop {
        let kb = depth.min(k - start);
        // SAFETY: the caller's contract; block `start .. start + kb` of the depth lies inside the
        // `[m, k]` and `[k, n]` extents.
        unsafe {
            gemm::gemm(
                m,
                n,
                kb,
                dst.ptr,
                dst.col as isize,
                dst.row as isize,
                accumulate || start > 0,
                lhs.ptr.wrapping_add(start * lhs.col),
                lhs.col as isize,
                lhs.row as isize,
                rhs.ptr.wrapping_add(start * rhs.row),
                rhs.col as isize,
                rhs.row as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            )
        }
        start += kb;
        if start >= k {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_overflow_into_errors() {
        assert_eq!(checked_count("op", &[2, 3, 4]).unwrap(), 24);
        assert_eq!(checked_count("op", &[]).unwrap(), 1);
        let err = checked_count("linear", &[1 << 32, 1 << 32, 4]).unwrap_err();
        assert!(matches!(&err, Error::TooLarge { op: "linear", dims } if dims == &[1 << 32, 1 << 32, 4]), "{err:?}");
        let err = err.to_string();
        assert!(err.contains("linear") && err.contains("more elements"), "{err}");
    }

    #[test]
    fn a_gemm_operand_past_its_buffer_is_an_error_not_a_read() {
        let (a, b) = (vec![1f32; 6], vec![1f32; 6]);
        let mut c = vec![0f32; 4];
        let op = |p: *const f32, row, len| Operand { ptr: p, row, col: 1, len };
        // `[m, 3] · [3, 2]` into `c`.
        let problem = |m, c: &mut Vec<f32>| Gemm {
            m,
            n: 2,
            k: 3,
            dst: Operand { ptr: c.as_mut_ptr(), row: 2, col: 1, len: 4 },
            lhs: op(a.as_ptr(), 3, 6),
            rhs: op(b.as_ptr(), 2, 6),
            accumulate: false,
            parallelism: gemm::Parallelism::None,
        };
        // [2, 3] · [3, 2] fits.
        // SAFETY: each pointer is valid for the `len` given (its whole vector).
        unsafe { gemm_f32(&problem(2, &mut c)).unwrap() };
        assert_eq!(c, vec![3.0; 4]);
        // The same call claiming 4 rows of lhs (12 floats) over a 6-float buffer is refused.
        // SAFETY: as above; the check refuses before any access.
        let err = unsafe { gemm_f32(&problem(4, &mut c)) };
        assert!(matches!(err, Err(Error::Internal { op: "gemm", .. })), "{err:?}");
        // Extents whose last index overflows are refused too.
        assert!(!Operand { ptr: (), row: usize::MAX / 2, col: 1, len: 8 }.holds(3, 1));
        assert!(Operand { ptr: (), row: 0, col: 0, len: 0 }.holds(0, 5));
    }
}
