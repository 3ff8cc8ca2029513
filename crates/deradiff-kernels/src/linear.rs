//! Linear layers as GEMMs that write into their bias- (and residual-) filled outputs, on the
//! token layout `[B, L, C]` or straight from / into the image layout `[B, C, H, W]`.

use candle_core::{DType, Module, Tensor};
use rayon::prelude::*;

use super::device::{self, takes_device_path};
use super::{gemm_f32, gemm_parallelism, run_f32, Error, Gemm, Operand, Result};

/// The kernels' name in errors.
const OP: &str = "linear";

/// Output floats per task of the bias / residual fill.
const FILL_CHUNK: usize = 1 << 14;

/// `x · weightᵀ + bias` for `x` `[…, K]`, `weight` `[N, K]` (PyTorch's and candle's layout) and
/// `bias` `[N]`, as `[…, N]` in `x`'s dtype: `torch.nn.Linear` / `candle_nn::Linear`.
///
/// On the CPU this is one `gemm` call (the crate candle's matmul uses) over all the leading
/// dimensions at once, reading the weight transposed in place and accumulating into an output
/// filled with the bias, threaded over rayon's pool; f16 / bf16 are computed in f32. It differs
/// from `candle_nn::Linear` on the CPU in what it leaves out: no separate pass for the bias, no
/// broadcast of the weight over the batch, and no `candle_core::utils::get_num_threads()` (which
/// on Linux re-reads the CPU topology from `/proc` at every matmul unless `RAYON_NUM_THREADS` is
/// set: 29 µs a call here, about 60 calls per UNet forward). On other devices it is
/// [`linear_reference`]. An [`Error::InvalidInput`] (never a panic) on mismatched sizes or dtypes,
/// an [`Error::TooLarge`] when the rows of `x` overflow `usize`.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (m, n, k) = check(x, weight, bias)?;
    if takes_device_path(x.device()) {
        return device::linear(x, weight, bias);
    }
    run(&Plan::tokens(m, n, k), x, weight, bias, None, out_dims(x.dims(), n))
}

/// `residual + x · weightᵀ + bias`, `residual` shaped like the output `[…, N]`: a linear layer
/// and the skip connection around it (a transformer block's attention and feed-forward outputs)
/// in one pass, the GEMM accumulating into the output filled with the residual plus the bias.
/// Otherwise as [`linear`]; on other devices the linear's GEMM and bias, then `residual` added.
pub fn linear_add(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, residual: &Tensor) -> Result<Tensor> {
    let (m, n, k) = check(x, weight, bias)?;
    let dims = out_dims(x.dims(), n);
    check_residual(residual, &dims, x.dtype())?;
    if takes_device_path(x.device()) {
        return Ok((device::linear(x, weight, bias)? + residual)?);
    }
    run(&Plan::tokens(m, n, k), x, weight, bias, Some(residual), dims)
}

/// A linear layer over the channels of an image-layout `x` `[B, K, *spatial]` (at least one
/// spatial dimension), returning tokens
/// `[B, L, N]` (`L` = the product of the spatial sizes): the same as moving the channels last,
/// flattening the spatial dimensions and applying [`linear`] (a 1×1 convolution followed by that
/// transpose, as a spatial transformer's `proj_in` does), without the transposed copy: each
/// batch item's GEMM reads `x` with the channel stride. Otherwise as [`linear`].
pub fn linear_from_channels(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (b, k, l) = match x.dims() {
        [b, k, spatial @ ..] if !spatial.is_empty() => (*b, *k, spatial.iter().product::<usize>()),
        _ => {
            return Err(Error::invalid(
                OP,
                format!("linear_from_channels needs x [B, K, …spatial], got {:?}", x.dims()),
            ))
        }
    };
    let n = check_weight(k, x.dtype(), weight, bias)?;
    if takes_device_path(x.device()) {
        // The transposed view goes to the GEMM as it is (cuBLAS reads it transposed: no copy).
        return device::linear(&x.flatten_from(2)?.transpose(1, 2)?, weight, bias);
    }
    run(&Plan::from_channels(b, l, n, k), x, weight, bias, None, vec![b, l, n])
}

/// `residual + (x · weightᵀ + bias)` moved into the image layout: `x` tokens `[B, L, K]`,
/// `residual` `[B, N, *spatial]` with `L` = the product of the spatial sizes, the output shaped
/// like `residual` (a spatial transformer's `proj_out` and its skip connection). Each batch item's
/// GEMM writes its tokens' outputs with the channel stride straight into the residual-filled
/// image, without the transposed copy and the separate addition. Otherwise as [`linear`].
pub fn linear_to_channels(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, residual: &Tensor) -> Result<Tensor> {
    let (&[b, l, _], [rb, rn, spatial @ ..]) = (x.dims(), residual.dims()) else {
        return Err(Error::invalid(
            OP,
            format!(
                "linear_to_channels needs x [B, L, K] and residual [B, N, …], got {:?} and {:?}",
                x.dims(),
                residual.dims()
            ),
        ));
    };
    let (_, n, k) = check(x, weight, bias)?;
    if (*rb, *rn, spatial.iter().product::<usize>()) != (b, n, l) {
        return Err(Error::invalid(
            OP,
            format!(
                "linear_to_channels's residual {:?} is not [B = {b}, N = {n}, …] with {l} positions (x {:?})",
                residual.dims(),
                x.dims()
            ),
        ));
    }
    check_residual(residual, residual.dims(), x.dtype())?;
    if takes_device_path(x.device()) {
        // The residual addition reads the tokens transposed and writes the image layout: no copy.
        let y = device::linear(x, weight, bias)?.transpose(1, 2)?;
        return Ok((residual.reshape((b, n, l))? + y)?.reshape(residual.dims())?);
    }
    run(&Plan::to_channels(b, l, n, k), x, weight, bias, Some(residual), residual.dims().to_vec())
}

/// `candle_nn::Linear`'s forward (candle's matmul, then the bias broadcast) on `x` flattened to
/// `[M, K]` (candle's takes 2 to 4 dimensions only), reshaped back. Same arguments and errors as
/// [`linear`].
pub fn linear_reference(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (m, n, k) = check(x, weight, bias)?;
    let linear = candle_nn::Linear::new(weight.clone(), bias.cloned());
    Ok(linear.forward(&x.reshape((m, k))?)?.reshape(out_dims(x.dims(), n))?)
}

/// `dims` with the last one replaced by `n`.
fn out_dims(dims: &[usize], n: usize) -> Vec<usize> {
    let mut dims = dims.to_vec();
    if let Some(last) = dims.last_mut() {
        *last = n;
    }
    dims
}

/// `(M, N, K)`: the rows of `x` (all its leading dimensions), the output and input features.
fn check(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<(usize, usize, usize)> {
    let Some((&k, lead)) = x.dims().split_last() else {
        return Err(Error::invalid(OP, format!("needs x […, K], got a scalar (weight {:?})", weight.dims())));
    };
    let m = lead
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| Error::TooLarge { op: OP, dims: lead.to_vec() })?;
    Ok((m, check_weight(k, x.dtype(), weight, bias)?, k))
}

/// `N` for a `weight` `[N, k]` and `bias` `[N]` of `dtype`.
fn check_weight(k: usize, dtype: DType, weight: &Tensor, bias: Option<&Tensor>) -> Result<usize> {
    let err = |m: String| Err(Error::invalid(OP, m));
    let &[n, wk] = weight.dims() else {
        return err(format!("needs a weight [N, K = {k}], got {:?}", weight.dims()));
    };
    if wk != k {
        return err(format!("x has {k} features but weight {:?} takes {wk}", weight.dims()));
    }
    if weight.dtype() != dtype {
        return err(format!("weight is {:?} but x is {dtype:?}", weight.dtype()));
    }
    if let Some(bias) = bias {
        if bias.dims() != [n] {
            return err(format!("bias must be [{n}], got {:?}", bias.dims()));
        }
        if bias.dtype() != dtype {
            return err(format!("bias is {:?} but x is {dtype:?}", bias.dtype()));
        }
    }
    Ok(n)
}

fn check_residual(residual: &Tensor, dims: &[usize], dtype: DType) -> Result<()> {
    if residual.dims() != dims {
        return Err(Error::invalid(
            OP,
            format!("residual must be {dims:?} like the output, got {:?}", residual.dims()),
        ));
    }
    if residual.dtype() != dtype {
        return Err(Error::invalid(OP, format!("residual is {:?} but x is {dtype:?}", residual.dtype())));
    }
    Ok(())
}

/// Where a matrix of one batch item lies in its buffer (strides in floats).
#[derive(Clone, Copy)]
struct Strides {
    batch: usize,
    row: usize,
    col: usize,
}

/// `batches` GEMMs `dst [m, n] (+)= lhs [m, k] · weightᵀ`, on the given layouts.
struct Plan {
    batches: usize,
    m: usize,
    n: usize,
    k: usize,
    lhs: Strides,
    dst: Strides,
}

impl Plan {
    /// Tokens in, tokens out: one GEMM over all `m` rows (every leading dimension).
    fn tokens(m: usize, n: usize, k: usize) -> Self {
        Self {
            batches: 1,
            m,
            n,
            k,
            lhs: Strides { batch: 0, row: k, col: 1 },
            dst: Strides { batch: 0, row: n, col: 1 },
        }
    }

    /// `[B, K, L]` in, tokens `[B, L, N]` out.
    fn from_channels(b: usize, l: usize, n: usize, k: usize) -> Self {
        Self {
            batches: b,
            m: l,
            n,
            k,
            lhs: Strides { batch: k * l, row: 1, col: l },
            dst: Strides { batch: l * n, row: n, col: 1 },
        }
    }

    /// Tokens `[B, L, K]` in, `[B, N, L]` out.
    fn to_channels(b: usize, l: usize, n: usize, k: usize) -> Self {
        Self {
            batches: b,
            m: l,
            n,
            k,
            lhs: Strides { batch: l * k, row: k, col: 1 },
            dst: Strides { batch: n * l, row: 1, col: l },
        }
    }
}

/// Runs `plan` on the CPU: f32 operands, the output filled with `residual + bias`, then the GEMMs
/// accumulating into it; the result `dims` in `x`'s dtype.
fn run(
    plan: &Plan,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    residual: Option<&Tensor>,
    dims: Vec<usize>,
) -> Result<Tensor> {
    run_f32(OP, [x, weight], bias, residual, dims, |xs, ws, bs, rs| gemms(plan, xs, ws, bs, rs))
}

/// The kernel over contiguous slices (see [`Plan`]).
fn gemms(p: &Plan, x: &[f32], w: &[f32], bias: Option<&[f32]>, residual: Option<&[f32]>) -> Result<Vec<f32>> {
    let count = |dims: &[usize]| dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    let len = count(&[p.batches, p.m, p.n]);
    // What the indexing below assumes of the slices (`run_f32` gives each exactly its tensor).
    let fits = len.is_some()
        && count(&[p.batches, p.m, p.k]) == Some(x.len())
        && count(&[p.n, p.k]) == Some(w.len())
        && bias.is_none_or(|b| b.len() == p.n)
        && residual.is_none_or(|r| Some(r.len()) == len);
    let Some(len) = len.filter(|_| fits) else {
        return Err(Error::internal(
            OP,
            format!(
                "operands of {} and {} floats do not fit {} GEMMs of [{}, {}] · [{}, {}]",
                x.len(),
                w.len(),
                p.batches,
                p.m,
                p.k,
                p.k,
                p.n
            ),
        ));
    };
    let mut out = vec![0f32; len];
    let filled = bias.is_some() || residual.is_some();
    if filled && len > 0 {
        // Rows of the output as stored: `n` channels of one position (`dst.col == 1`), or `m`
        // positions of one channel (the image layout).
        let (row_len, channel_of) = if p.dst.col == 1 { (p.n, None) } else { (p.m, Some(p.n)) };
        let fill = |start_row: usize, rows: &mut [f32]| {
            for (r, row) in rows.chunks_mut(row_len).enumerate() {
                let g = start_row + r;
                let res = residual.map(|res| &res[g * row_len..][..row_len]);
                match (channel_of, bias, res) {
                    (None, Some(b), Some(res)) => row.iter_mut().zip(b).zip(res).for_each(|((o, b), r)| *o = r + b),
                    (None, Some(b), None) => row.copy_from_slice(b),
                    (Some(n), Some(b), Some(res)) => row.iter_mut().zip(res).for_each(|(o, r)| *o = r + b[g % n]),
                    (Some(n), Some(b), None) => row.fill(b[g % n]),
                    (_, None, Some(res)) => row.copy_from_slice(res),
                    (_, None, None) => {}
                }
            }
        };
        let rows_per_task = (FILL_CHUNK / row_len.max(1)).max(1);
        if len <= FILL_CHUNK {
            fill(0, &mut out);
        } else {
            out.par_chunks_mut(rows_per_task * row_len).enumerate().for_each(|(t, rows)| fill(t * rows_per_task, rows));
        }
    }
    if p.m == 0 || p.n == 0 || p.k == 0 {
        return Ok(out);
    }
    let parallelism = gemm_parallelism(1);
    for b in 0..p.batches {
        let (dst_at, lhs_at) = (b * p.dst.batch, b * p.lhs.batch);
        if dst_at > out.len() || lhs_at > x.len() {
            return Err(Error::internal(OP, format!("batch item {b} lies outside the operands")));
        }
        // SAFETY: for batch item `b`, dst is `[m, n]` at `out[b·dst.batch ..]` with the plan's
        // strides, lhs `[m, k]` at `x[b·lhs.batch ..]` likewise, and rhs is `weightᵀ` `[k, n]`
        // (element (i, j) at `w[j·k + i]`: row stride 1, column stride k); each pointer is valid
        // for the `len` floats given (the rest of its slice, offsets checked above), which
        // `gemm_f32` checks the extents against, and `out` is owned here.
        unsafe {
            gemm_f32(&Gemm {
                m: p.m,
                n: p.n,
                k: p.k,
                dst: Operand {
                    ptr: out.as_mut_ptr().add(dst_at),
                    row: p.dst.row,
                    col: p.dst.col,
                    len: out.len() - dst_at,
                },
                lhs: Operand { ptr: x.as_ptr().add(lhs_at), row: p.lhs.row, col: p.lhs.col, len: x.len() - lhs_at },
                rhs: Operand { ptr: w.as_ptr(), row: 1, col: p.k, len: w.len() },
                accumulate: filled,
                parallelism,
            })?
        }
    }
    Ok(out)
}
