//! The one tensor kernel the core needs: a linear combination `Σ c_i t_i` of same-shaped
//! tensors, in one pass over memory on CPU (f32, f64) and with candle's ops elsewhere.
//!
//! Scheduler posteriors (affine in the latent and the model output) and scalar-variance fusion
//! (a linear combination of the models' means) both reduce to it.

use candle_core::{DType, Device, Tensor};
use num_traits::{Float, NumAssign};

use crate::error::{Error, Result};

/// `Σ c_i t_i` for tensors of one shape, dtype and device; terms with `c_i = 0` are skipped
/// (their tensors are not read). Half precision is computed in f32 and returned as it came.
///
/// With `find_non_finite`, the second value is the flat index of the first NaN/±Inf of the
/// result (checked on CPU only; `None` elsewhere).
pub(crate) fn linear_combination(terms: &[(f64, &Tensor)], find_non_finite: bool) -> Result<(Tensor, Option<usize>)> {
    let first = terms.first().ok_or(Error::NoModels)?.1;
    let active: Vec<(f64, &Tensor)> = terms.iter().copied().filter(|(c, _)| *c != 0.0).collect();
    if active.is_empty() {
        return Ok((first.zeros_like()?, None));
    }
    if first.device().is_cpu() {
        match first.dtype() {
            DType::F32 => return combine_cpu::<f32>(&active, first, find_non_finite),
            DType::F64 => return combine_cpu::<f64>(&active, first, find_non_finite),
            _ => {}
        }
    }
    let dtype = first.dtype();
    let cdt = crate::scheduler::compute_dtype(dtype);
    let mut acc: Option<Tensor> = None;
    for (c, t) in &active {
        let term = t.to_dtype(cdt)?.affine(*c, 0.0)?;
        acc = Some(match acc {
            None => term,
            Some(a) => (a + term)?,
        });
    }
    let acc = acc.ok_or(Error::NoModels)?;
    Ok((acc.to_dtype(dtype)?, None))
}

/// One pass over memory for the first two terms, then one per further term.
fn combine_cpu<T>(terms: &[(f64, &Tensor)], like: &Tensor, find_non_finite: bool) -> Result<(Tensor, Option<usize>)>
where
    T: Float + NumAssign + candle_core::WithDType,
{
    if terms.iter().any(|(_, t)| !t.is_contiguous()) {
        let contiguous: Vec<(f64, Tensor)> =
            terms.iter().map(|(c, t)| Ok((*c, t.contiguous()?))).collect::<Result<_>>()?;
        let refs: Vec<(f64, &Tensor)> = contiguous.iter().map(|(c, t)| (*c, t)).collect();
        return combine_cpu::<T>(&refs, like, find_non_finite);
    }
    let guards: Vec<_> = terms.iter().map(|(_, t)| t.storage_and_layout()).collect();
    let mut slices: Vec<&[T]> = Vec::with_capacity(terms.len());
    for (storage, layout) in &guards {
        let candle_core::Storage::Cpu(cpu) = &**storage else {
            return Err(Error::InvalidArgument("expected a CPU tensor".into()));
        };
        let data = cpu.as_slice::<T>()?;
        let (start, end) =
            layout.contiguous_offsets().ok_or_else(|| Error::InvalidArgument("expected a contiguous tensor".into()))?;
        slices.push(&data[start..end]);
    }
    let coeffs: Vec<T> = terms.iter().map(|(c, _)| T::from(*c).unwrap_or_else(T::nan)).collect();
    let mut out: Vec<T> = match (slices.as_slice(), coeffs.as_slice()) {
        ([a, b, ..], [ca, cb, ..]) => a.iter().zip(b.iter()).map(|(&x, &y)| *ca * x + *cb * y).collect(),
        ([a], [ca]) => a.iter().map(|&x| *ca * x).collect(),
        _ => return Err(Error::NoModels),
    };
    for (s, &c) in slices.iter().zip(&coeffs).skip(2) {
        for (o, &x) in out.iter_mut().zip(s.iter()) {
            *o += c * x;
        }
    }
    let bad = if find_non_finite && !all_finite(&out) { out.iter().position(|x| !x.is_finite()) } else { None };
    drop(slices);
    drop(guards);
    Ok((Tensor::from_vec(out, like.shape().clone(), &Device::Cpu)?, bad))
}

/// Whether every value is finite. `0 · x` is 0 for finite `x` and NaN for NaN/±Inf; summing it
/// into 16 independent lanes (rather than one serial chain) lets the loop vectorise.
fn all_finite<T: Float>(xs: &[T]) -> bool {
    let mut lanes = [T::zero(); 16];
    let chunks = xs.chunks_exact(16);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane = *lane + x * T::zero();
        }
    }
    lanes.iter().chain(rest).all(|x| x.is_finite())
}
