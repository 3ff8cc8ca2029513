//! The device path: what the public functions run on devices other than the CPU (CUDA, Metal),
//! and a switch that runs it on the CPU too, so that the same code is tested where no GPU is.
//!
//! Everything here is a composition of candle's own ops (cuBLAS GEMMs, cuDNN convolutions with
//! candle's `cudnn` feature, candle's fused softmax and layer-norm kernels), in the tensors' own
//! dtype — no f32 upcasts — and in as few launches as candle allows:
//!
//! * attention ([`attention_heads`], [`attention`]): the heads split by one copy each for `q`
//!   (which also applies the scale), `k` and `v` (candle's CUDA matmul needs each matrix's rows
//!   packed, so the projections' `[B, L, H·D]` layout cannot be read per head in place), the
//!   scores `q·kᵀ` and `p·v` as batched GEMMs in the compute dtype (f16 / bf16 GEMMs accumulate
//!   in f32: cuBLAS's compute type for them unless candle's reduced-precision switches are on),
//!   candle's fused `softmax_last_dim` (f32 sums), one copy merging the heads back; the queries
//!   in chunks when the `[B·H, Lq, Lk]` scores would exceed [`ATTENTION_SCORE_BUDGET`];
//! * group norm ([`group_norm`]): candle's fused layer-norm kernel (f32 statistics) over the
//!   `[B·G, C/G·spatial]` view, then the per-channel affine and the SiLU: 4 launches (3 without
//!   SiLU) instead of ~14 element-wise ones with f32 casts.

use std::cell::Cell;
use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor, WithDType};

use super::{Error, Result};

/// Bytes the attention scores of one chunk of queries may take on the device path (1 GiB): the
/// `[B·heads, Lq, Lk]` score matrix, and the probabilities after it, are computed for as many
/// queries at a time as fit (at least one). SD 1.5 at 512 px (16 × 4096 × 4096 f16 scores, 512
/// MiB) and SDXL at 1024 px with classifier-free guidance (20 × 4096², 640 MiB) run in one chunk;
/// SDXL at 2048 px (20 × 16384², 10 GiB) in 10.
pub const ATTENTION_SCORE_BUDGET: usize = 1 << 30;

thread_local! {
    /// Whether this thread runs the device path on the CPU ([`with_device_path`]).
    static FORCED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with every function of this crate taking the path it takes on a GPU also for CPU
/// tensors (on this thread, for the duration of `f`, restored afterwards even if `f` panics):
/// candle's ops in the tensors' own dtype instead of the fused f32 CPU kernels. For tests that
/// check the device path against the CPU kernels, and for counting its ops, on a machine without
/// a GPU; it is slower than the CPU kernels and not meant for anything else.
#[doc(hidden)]
pub fn with_device_path<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            FORCED.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(FORCED.with(|c| c.replace(true)));
    f()
}

/// Whether a tensor on `device` takes the device path: any device but the CPU, and the CPU
/// inside [`with_device_path`] (for model code that chooses between a CPU and a GPU way too).
#[doc(hidden)]
pub fn takes_device_path(device: &Device) -> bool {
    !device.is_cpu() || FORCED.with(Cell::get)
}

/// `softmax(q·kᵀ·scale)·v` on the projections' layout `q` `[B, Lq, H·D]`, `k`, `v` `[B, Lk, H·D]`
/// (shapes and dtypes checked by the caller), the scores chunked to `budget` bytes.
pub(crate) fn attention_heads(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f64,
    budget: usize,
) -> Result<Tensor> {
    let (b, lq, c) = q.dims3()?;
    let lk = k.dim(1)?;
    let d = c / heads;
    let n = b * heads;
    // [B, L, H·D] → [B·H, L, D]: one copy each (the scale applied in q's).
    let qh = q.reshape((b, lq, heads, d))?.transpose(1, 2)?.affine(scale, 0.0)?.reshape((n, lq, d))?;
    let split = |t: &Tensor| -> candle_core::Result<Tensor> {
        t.reshape((b, lk, heads, d))?.transpose(1, 2)?.contiguous()?.reshape((n, lk, d))
    };
    let out = scaled_scores_softmax_values(&qh, &split(k)?, &split(v)?, budget)?;
    // [B·H, Lq, D] → [B, Lq, H·D]: one copy.
    Ok(out.reshape((b, heads, lq, d))?.transpose(1, 2)?.reshape((b, lq, c))?)
}

/// `softmax(q·kᵀ·scale)·v` for `q` `[N, Lq, D]`, `k`, `v` `[N, Lk, D]` (checked by the caller),
/// the scores chunked to `budget` bytes.
pub(crate) fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, budget: usize) -> Result<Tensor> {
    scaled_scores_softmax_values(&q.affine(scale, 0.0)?, &k.contiguous()?, &v.contiguous()?, budget)
}

/// `softmax(q·kᵀ)·v` for contiguous `q` `[N, Lq, D]` (already scaled), `k`, `v` `[N, Lk, D]`, in
/// chunks of queries whose `[N, chunk, Lk]` scores take at most `budget` bytes (one query at
/// least).
fn scaled_scores_softmax_values(q: &Tensor, k: &Tensor, v: &Tensor, budget: usize) -> Result<Tensor> {
    let (n, lq, _) = q.dims3()?;
    let (lk, d) = (k.dim(1)?, v.dim(2)?);
    if n == 0 || lq == 0 {
        // No rows for the GPU's softmax kernel to launch over (a zero-sized launch is an error).
        return Ok(Tensor::zeros((n, lq, d), q.dtype(), q.device())?);
    }
    let per_query = n.saturating_mul(lk).saturating_mul(q.dtype().size_in_bytes()).max(1);
    let chunk = (budget / per_query).clamp(1, lq.max(1));
    let kt = k.t()?;
    let one = |q: &Tensor| -> Result<Tensor> { matmul(&softmax_last_dim(&matmul(q, &kt)?)?, v) };
    if chunk >= lq {
        return one(q);
    }
    let parts = (0..lq).step_by(chunk).map(|s| one(&q.narrow(1, s, chunk.min(lq - s))?)).collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&parts, 1)?)
}

/// `a · b`, refusing (an [`Error::Internal`]) operand layouts that candle's CUDA matmul refuses:
/// the CPU's matmul takes any strides, so without this check a layout that only a GPU rejects
/// would pass the CPU tests of the device path.
pub(crate) fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if !cublas_takes(a, b) {
        return Err(Error::internal(
            "matmul",
            format!(
                "candle's CUDA matmul cannot read {:?} (strides {:?}) · {:?} (strides {:?})",
                a.dims(),
                a.stride(),
                b.dims(),
                b.stride()
            ),
        ));
    }
    Ok(a.matmul(b)?)
}

/// Whether candle 0.11's CUDA matmul (`gemm_config` in its CUDA backend) takes `a · b` with these
/// layouts: each matrix with unit stride along its rows or its columns and the other stride
/// equal to its packed size, and batch strides it can express as one.
pub(crate) fn cublas_takes(a: &Tensor, b: &Tensor) -> bool {
    let (ad, bd, sa, sb) = (a.dims(), b.dims(), a.stride(), b.stride());
    let r = ad.len();
    if r < 2 || bd.len() != r {
        return false;
    }
    let (m, k, n) = (ad[r - 2], ad[r - 1], bd[r - 1]);
    let (b1, b2, a1, a2) = (sb[r - 1], sb[r - 2], sa[r - 1], sa[r - 2]);
    let rhs = ((b1 == 1 || n == 1) && (b2 == n || k == 1)) || ((b1 == k || n == 1) && (b2 == 1 || k == 1));
    let lhs = ((a1 == 1 || k == 1) && (a2 == k || m == 1)) || ((a1 == m || k == 1) && (a2 == 1 || m == 1));
    let batch = |dims: &[usize], stride: &[usize]| match stride[..r - 2] {
        [s1, s] => s1 == s * dims[1] || dims[0] == 1 || dims[1] == 1,
        [_] | [] => true,
        _ => false,
    };
    lhs && rhs && batch(ad, sa) && batch(bd, sb)
}

/// candle-nn's fused `softmax_last_dim` (max and exponentials in the dtype, the sum in f32 on
/// CUDA and Metal). On the CPU (the device path run there for tests) f16 / bf16 go through
/// [`CpuSoftmax`], which sums in f32 as the GPU kernels do: candle's CPU softmax sums f16 in f16,
/// which loses the sum of thousands of keys.
fn softmax_last_dim(s: &Tensor) -> Result<Tensor> {
    if s.device().is_cpu() && matches!(s.dtype(), DType::F16 | DType::BF16) {
        return Ok(s.apply_op1_no_bwd(&CpuSoftmax)?);
    }
    Ok(candle_nn::ops::softmax_last_dim(s)?)
}

/// Softmax over the last dimension of a contiguous CPU tensor, as candle's CUDA kernel computes
/// it: `e = exp(x − max)` rounded to the dtype, their sum in f32, `e · (1 / sum)` rounded.
struct CpuSoftmax;

impl CustomOp1 for CpuSoftmax {
    fn name(&self) -> &'static str {
        "deradiff-softmax-f32-sum"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        fn rows<T: WithDType>(src: &[T], layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
            let Some((start, end)) = layout.contiguous_offsets() else {
                candle_core::bail!("softmax: the scores must be contiguous")
            };
            let src = &src[start..end];
            let cols = layout.dims().last().copied().unwrap_or(1).max(1);
            let mut dst = Vec::with_capacity(src.len());
            for row in src.chunks(cols) {
                let max = row.iter().map(|x| x.to_f64() as f32).fold(f32::NEG_INFINITY, f32::max);
                let start = dst.len();
                let mut sum = 0f32;
                for x in row {
                    let shifted = T::from_f64((x.to_f64() as f32 - max) as f64).to_f64() as f32;
                    let e = T::from_f64(shifted.exp() as f64);
                    sum += e.to_f64() as f32;
                    dst.push(e);
                }
                let inv = 1.0 / sum;
                for e in &mut dst[start..] {
                    *e = T::from_f64((e.to_f64() as f32 * inv) as f64);
                }
            }
            Ok((T::to_cpu_storage_owned(dst), layout.shape().clone()))
        }
        match storage {
            CpuStorage::F16(s) => rows(s, layout),
            CpuStorage::BF16(s) => rows(s, layout),
            CpuStorage::F32(s) => rows(s, layout),
            other => candle_core::bail!(
                "softmax: unsupported dtype {:?}",
                candle_core::backend::BackendStorage::dtype(other)
            ),
        }
    }
}

/// Group norm of `x` `[B, C, …]` (checked by the caller) over `groups` groups, its per-channel
/// affine and optionally SiLU: candle-nn's fused layer-norm kernel (statistics in f32) over the
/// `[B·G, C/G·spatial]` view with a unit affine, then `· weight + bias` per channel, then SiLU.
pub(crate) fn group_norm(
    x: &Tensor,
    groups: usize,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    silu: bool,
) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    if x.elem_count() == 0 {
        return Ok(x.clone());
    }
    let (b, c) = (dims[0], dims[1]);
    let row = x.elem_count() / (b * groups);
    let (ones, zeros) = unit_affine(row, x.dtype(), x.device())?;
    let y = candle_nn::ops::layer_norm(&x.reshape((b * groups, row))?, &ones, &zeros, eps as f32)?;
    let mut channel = vec![1; dims.len()];
    channel[1] = c;
    let per_channel = |t: &Tensor| t.to_dtype(x.dtype())?.reshape(channel.as_slice());
    let y = y.reshape(dims)?.broadcast_mul(&per_channel(weight)?)?.broadcast_add(&per_channel(bias)?)?;
    Ok(if silu { candle_nn::ops::silu(&y)? } else { y })
}

/// Per (device, dtype): ones and zeros of the largest length asked for so far.
type UnitAffines = Vec<(Device, DType, Tensor, Tensor)>;

/// The unit affine (`len` ones, `len` zeros) the layer-norm kernel takes in [`group_norm`]: views
/// into tensors kept per device and dtype (grown to the largest length asked for), so that a
/// forward does not fill two new tensors per group norm.
fn unit_affine(len: usize, dtype: DType, device: &Device) -> Result<(Tensor, Tensor)> {
    static CACHE: Mutex<UnitAffines> = Mutex::new(Vec::new());
    let mut cache = CACHE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let at = cache.iter().position(|(d, t, _, _)| d.same_device(device) && *t == dtype);
    let fits = at.filter(|&i| cache[i].2.dim(0).is_ok_and(|n| n >= len));
    let i = match (fits, at) {
        (Some(i), _) => i,
        (None, at) => {
            let n = len.checked_next_power_of_two().unwrap_or(len);
            let entry = (device.clone(), dtype, Tensor::ones(n, dtype, device)?, Tensor::zeros(n, dtype, device)?);
            match at {
                Some(i) => {
                    cache[i] = entry;
                    i
                }
                None => {
                    cache.push(entry);
                    cache.len() - 1
                }
            }
        }
    };
    Ok((cache[i].2.narrow(0, 0, len)?, cache[i].3.narrow(0, 0, len)?))
}

/// `x · weightᵀ + bias` for `x` `[…, K]` (checked by the caller): one GEMM over all leading
/// dimensions of a contiguous `x`; on a GPU a transposed `[B, L, K]` view (a spatial
/// transformer's `proj_in` reading the image layout) goes to a batched GEMM that reads it in
/// place; the bias broadcast after.
///
/// On the CPU (the device path run there for tests) such a view is copied first: candle 0.11's
/// CPU matmul folds the batches of an operand whose rows are not packed into one matrix when the
/// other operand is broadcast over the batch, and computes a wrong product.
pub(crate) fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (n, k) = weight.dims2()?;
    let mut out_dims = x.dims().to_vec();
    let m = x.elem_count() / k.max(1);
    if let Some(last) = out_dims.last_mut() {
        *last = n;
    }
    let wt = weight.t()?;
    let batched = match x.dims() {
        &[b, _, _] if !x.is_contiguous() && !x.device().is_cpu() => {
            Some(wt.broadcast_left(b)?).filter(|w| cublas_takes(x, w))
        }
        _ => None,
    };
    let y = match batched {
        Some(w) => matmul(x, &w)?,
        None => matmul(&x.reshape((m, k))?, &wt)?,
    };
    let y = match bias {
        Some(bias) => y.broadcast_add(bias)?,
        None => y,
    };
    Ok(y.reshape(out_dims)?)
}

/// candle's convolution of `x` with `weight` (cuDNN with candle's `cudnn` feature), then the bias
/// (`[Co]`, or `[B, Co]` per batch item) and the residual added (all checked by the caller). On
/// the CPU (the device path run there for tests) bf16 convolves in f32 and rounds back, as cuDNN
/// computes bf16 convolutions (candle's CPU convolution has no bf16).
pub(crate) fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    let y = if x.device().is_cpu() && x.dtype() == DType::BF16 {
        let f32 = |t: &Tensor| t.to_dtype(DType::F32);
        f32(x)?.conv2d(&f32(weight)?, padding, stride, 1, 1)?.to_dtype(DType::BF16)?
    } else {
        x.conv2d(weight, padding, stride, 1, 1)?
    };
    let (b, co) = (y.dim(0)?, y.dim(1)?);
    let y = match bias {
        Some(bias) if bias.rank() == 2 => y.broadcast_add(&bias.reshape((b, co, 1, 1))?)?,
        Some(bias) => y.broadcast_add(&bias.reshape((1, co, 1, 1))?)?,
        None => y,
    };
    Ok(match residual {
        Some(r) => (y + r)?,
        None => y,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_switch_is_scoped_and_restored_after_a_panic() {
        assert!(!takes_device_path(&Device::Cpu));
        with_device_path(|| {
            assert!(takes_device_path(&Device::Cpu));
            with_device_path(|| assert!(takes_device_path(&Device::Cpu)));
            assert!(takes_device_path(&Device::Cpu));
        });
        assert!(!takes_device_path(&Device::Cpu));
        let panicked = std::panic::catch_unwind(|| with_device_path(|| panic!("inside")));
        assert!(panicked.is_err());
        assert!(!takes_device_path(&Device::Cpu));
        // Other threads are not affected.
        with_device_path(|| std::thread::spawn(|| assert!(!takes_device_path(&Device::Cpu))).join().unwrap());
    }

    #[test]
    fn the_matmul_refuses_what_cudas_refuses() {
        let t = |dims: &[usize]| Tensor::zeros(dims, DType::F32, &Device::Cpu).unwrap();
        let (q, k) = (t(&[6, 10, 8]), t(&[6, 12, 8]));
        // Packed rows, a transposed operand, a batch broadcast, a narrowed batch of queries.
        assert!(cublas_takes(&q, &k.t().unwrap()));
        assert!(cublas_takes(&t(&[6, 8, 10]).transpose(1, 2).unwrap(), &t(&[6, 8, 3])));
        assert!(cublas_takes(&q, &t(&[3, 8]).broadcast_left(6).unwrap()));
        assert!(cublas_takes(&q.narrow(1, 2, 5).unwrap(), &k.t().unwrap()));
        assert!(matmul(&q, &k.t().unwrap()).is_ok());
        // One head of the projections' [B, L, H·D] layout: rows 24 apart, not 8.
        let heads = t(&[2, 10, 24]).reshape((2, 10, 3, 8)).unwrap().transpose(1, 2).unwrap();
        let keys = t(&[2, 12, 24]).reshape((2, 12, 3, 8)).unwrap().transpose(1, 2).unwrap();
        assert!(!cublas_takes(&heads, &keys.t().unwrap()));
        let err = matmul(&heads, &keys.t().unwrap()).unwrap_err();
        assert!(matches!(err, Error::Internal { op: "matmul", .. }), "{err}");
        assert!(!cublas_takes(&t(&[4]), &t(&[4])));
    }
}
