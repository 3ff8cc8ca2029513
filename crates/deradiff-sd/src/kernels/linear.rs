//! A linear layer as one GEMM that writes into its bias-filled output.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Module, Shape, Tensor};

use super::f32_slice;

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
/// [`linear_reference`]. Errors (never panics) on mismatched sizes or dtypes.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> candle_core::Result<Tensor> {
    let (m, n, k) = check(x, weight, bias)?;
    if !x.device().is_cpu() {
        return linear_reference(x, weight, bias);
    }
    let in_dtype = x.dtype();
    let f32c = |t: &Tensor| -> candle_core::Result<Tensor> { t.to_dtype(DType::F32)?.contiguous() };
    let mut dims = x.dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = n;
    }
    let op = Gemm { m, n, k, dims };
    let (x, weight) = (f32c(x)?, f32c(weight)?);
    let out = match bias {
        Some(bias) => x.apply_op3_no_bwd(&weight, &f32c(bias)?, &op)?,
        None => x.apply_op2_no_bwd(&weight, &op)?,
    };
    out.to_dtype(in_dtype)
}

/// `candle_nn::Linear`'s forward (candle's matmul, then the bias broadcast) on `x` flattened to
/// `[M, K]` (candle's takes 2 to 4 dimensions only), reshaped back. Same arguments as [`linear`].
pub fn linear_reference(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> candle_core::Result<Tensor> {
    let (m, n, k) = check(x, weight, bias)?;
    let mut dims = x.dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = n;
    }
    candle_nn::Linear::new(weight.clone(), bias.cloned()).forward(&x.reshape((m, k))?)?.reshape(dims)
}

/// `(M, N, K)`: the rows of `x` (all its leading dimensions), the output and input features.
fn check(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> candle_core::Result<(usize, usize, usize)> {
    let err = |m: String| Err(candle_core::Error::Msg(format!("linear: {m}")));
    let (Some((&k, lead)), &[n, wk]) = (x.dims().split_last(), weight.dims()) else {
        return err(format!("needs x […, K] and weight [N, K], got {:?} and {:?}", x.dims(), weight.dims()));
    };
    if wk != k {
        return err(format!("x has {k} features but weight {:?} takes {wk}", weight.dims()));
    }
    if weight.dtype() != x.dtype() {
        return err(format!("weight is {:?} but x is {:?}", weight.dtype(), x.dtype()));
    }
    if let Some(bias) = bias {
        if bias.dims() != [n] {
            return err(format!("bias must be [{n}], got {:?}", bias.dims()));
        }
        if bias.dtype() != x.dtype() {
            return err(format!("bias is {:?} but x is {:?}", bias.dtype(), x.dtype()));
        }
    }
    Ok((lead.iter().product(), n, k))
}

struct Gemm {
    m: usize,
    n: usize,
    k: usize,
    dims: Vec<usize>,
}

impl Gemm {
    fn run(&self, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> (CpuStorage, Shape) {
        let (m, n, k) = (self.m, self.n, self.k);
        let mut out = match bias {
            Some(bias) => bias.repeat(m),
            None => vec![0f32; m * n],
        };
        if m > 0 && n > 0 && k > 0 {
            let threads = rayon::current_num_threads();
            let parallelism = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
            // SAFETY: dst `out` is `[m, n]` row-major (row stride n), lhs `x` is `[m, k]` (row
            // stride k) and rhs is `weightᵀ` `[k, n]`: element (i, j) at `w[j·k + i]` (row stride
            // 1, column stride k) inside `w`'s `n·k` floats; `out` is owned here.
            unsafe {
                gemm::gemm(
                    m,
                    n,
                    k,
                    out.as_mut_ptr(),
                    1,
                    n as isize,
                    bias.is_some(),
                    x.as_ptr(),
                    1,
                    k as isize,
                    w.as_ptr(),
                    k as isize,
                    1,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    parallelism,
                )
            }
        }
        (CpuStorage::F32(out), Shape::from(self.dims.clone()))
    }
}

impl CustomOp2 for Gemm {
    fn name(&self) -> &'static str {
        "deradiff-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        Ok(self.run(f32_slice("linear", s1, l1)?, f32_slice("linear", s2, l2)?, None))
    }
}

impl CustomOp3 for Gemm {
    fn name(&self) -> &'static str {
        "deradiff-linear"
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
        let bias = f32_slice("linear", s3, l3)?;
        Ok(self.run(f32_slice("linear", s1, l1)?, f32_slice("linear", s2, l2)?, Some(bias)))
    }
}
