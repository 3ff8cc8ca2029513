//! Fused group normalisation (+ SiLU).

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::device::{self, takes_device_path};
use super::math::{exp, madd, sum_and_squares};
use super::{f32_slice, Error, Isa, Result};

/// The kernel's name in errors.
const OP: &str = "group_norm";

/// Group normalisation of `x` `[B, C, …]` over `groups` groups of channels, with the per-channel
/// affine `weight`, `bias` `[C]` and `eps`, then SiLU if `silu` (the `GroupNorm → SiLU` pair of
/// every UNet resnet), in `x`'s dtype.
///
/// On the CPU this is our fused kernel (statistics and the normalised, activated output in one
/// kernel per (batch, group), in f32 with f64 sums). On other devices it runs in `x`'s dtype:
/// candle's fused layer-norm kernel over the `[B·G, C/G·spatial]` view (its statistics in f32,
/// one pass of sums and sums of squares), then the per-channel affine and the SiLU — 4 launches
/// (3 without SiLU). An [`Error::InvalidInput`] (never a panic) when `x` has fewer than two
/// dimensions, `C` is not a multiple of `groups` or the affine parameters do not have `C`
/// elements.
pub fn group_norm(x: &Tensor, groups: usize, weight: &Tensor, bias: &Tensor, eps: f64, silu: bool) -> Result<Tensor> {
    check(x, groups, weight, bias)?;
    if takes_device_path(x.device()) {
        return device::group_norm(x, groups, weight, bias, eps, silu);
    }
    let in_dtype = x.dtype();
    let f32c = |t: &Tensor| -> candle_core::Result<Tensor> { t.to_dtype(DType::F32)?.contiguous() };
    let op = FusedGroupNorm { groups, eps: eps as f32, silu };
    Ok(f32c(x)?.apply_op3_no_bwd(&f32c(weight)?, &f32c(bias)?, &op)?.to_dtype(in_dtype)?)
}

/// candle's ops: `candle_nn::GroupNorm`'s computation (then `candle_nn::ops::silu` if `silu`).
/// Same arguments and errors as [`group_norm`].
pub fn group_norm_reference(
    x: &Tensor,
    groups: usize,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    silu: bool,
) -> Result<Tensor> {
    check(x, groups, weight, bias)?;
    let c = x.dim(1)?;
    let gn = candle_nn::GroupNorm::new(weight.clone(), bias.clone(), c, groups, eps)?;
    let y = candle_core::Module::forward(&gn, x)?;
    if silu {
        Ok(candle_nn::ops::silu(&y)?)
    } else {
        Ok(y)
    }
}

fn check(x: &Tensor, groups: usize, weight: &Tensor, bias: &Tensor) -> Result<()> {
    let dims = x.dims();
    if dims.len() < 2 {
        return Err(Error::invalid(OP, format!("needs [B, C, …], got {dims:?}")));
    }
    let c = dims[1];
    if groups == 0 || !c.is_multiple_of(groups) {
        return Err(Error::invalid(OP, format!("{c} channels do not split into {groups} groups")));
    }
    if weight.dims() != [c] || bias.dims() != [c] {
        return Err(Error::invalid(
            OP,
            format!("weight and bias must be [{c}], got {:?} and {:?}", weight.dims(), bias.dims()),
        ));
    }
    Ok(())
}

struct FusedGroupNorm {
    groups: usize,
    eps: f32,
    silu: bool,
}

impl CustomOp3 for FusedGroupNorm {
    fn name(&self) -> &'static str {
        "deradiff-fused-group-norm"
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
        let (x, w, b) = (f32_slice(OP, s1, l1)?, f32_slice(OP, s2, l2)?, f32_slice(OP, s3, l3)?);
        let dims = l1.shape().dims();
        let c = dims[1];
        let spatial: usize = dims[2..].iter().product();
        let mut out = vec![0f32; x.len()];
        group_norm_f32(x, w, b, &mut out, c, spatial, self.groups, self.eps, self.silu, Isa::detect());
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// The kernel over contiguous slices: `x`, `out` `[B, c, spatial]`, `w`, `b` `[c]`, built for
/// `isa` (which the CPU must run).
#[allow(clippy::too_many_arguments)]
pub(crate) fn group_norm_f32(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    out: &mut [f32],
    c: usize,
    spatial: usize,
    groups: usize,
    eps: f32,
    silu: bool,
    isa: Isa,
) {
    let cpg = c / groups;
    let len = cpg * spatial;
    if len == 0 {
        return;
    }
    out.par_chunks_mut(len).zip(x.par_chunks(len)).enumerate().for_each(|(i, (o, xg))| {
        let g = i % groups;
        let (w, b) = (&w[g * cpg..][..cpg], &b[g * cpg..][..cpg]);
        match isa {
            Isa::Portable => one_group::<false>(xg, w, b, o, spatial, eps, silu),
            // SAFETY: `isa` is one the CPU runs (`Isa::detect`, or `Isa::available` in tests).
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { one_group_avx2(xg, w, b, o, spatial, eps, silu) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { one_group_avx512(xg, w, b, o, spatial, eps, silu) },
        }
    });
}

/// [`one_group`] compiled for AVX2 + FMA (the crate is built for baseline x86-64).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn one_group_avx2(xg: &[f32], w: &[f32], b: &[f32], o: &mut [f32], spatial: usize, eps: f32, silu: bool) {
    one_group::<true>(xg, w, b, o, spatial, eps, silu)
}

/// [`one_group`] compiled for AVX-512 (16 lanes).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn one_group_avx512(xg: &[f32], w: &[f32], b: &[f32], o: &mut [f32], spatial: usize, eps: f32, silu: bool) {
    one_group::<true>(xg, w, b, o, spatial, eps, silu)
}

/// One (batch, group): `xg`, `o` `[cpg, spatial]`, `w`, `b` the group's `[cpg]` affine.
///
/// The statistics take one pass: sums of `x − x₀` and of its squares, shifted by the group's
/// first value so that an offset common to the group does not cancel the variance away.
#[inline(always)]
fn one_group<const FMA: bool>(xg: &[f32], w: &[f32], b: &[f32], o: &mut [f32], spatial: usize, eps: f32, silu: bool) {
    let n = xg.len() as f64;
    let shift = xg[0];
    let (sum, sum_sq) = sum_and_squares::<FMA>(xg, shift);
    let mean_d = sum / n;
    let var = (sum_sq / n - mean_d * mean_d).max(0.0);
    let rstd = (1.0 / (var + eps as f64).sqrt()) as f32;
    let mean = (shift as f64 + mean_d) as f32;
    // `(x − mean)·a + b`, not `x·a + (b − mean·a)`: where the variance is ~0 the scale `a` is
    // ~1/√eps, and the folded form cancels two large products in f32 (1e-4 off for a one-element
    // group at an offset of 6; the subtraction first is exact there).
    for (ch, (oc, xc)) in o.chunks_mut(spatial).zip(xg.chunks(spatial)).enumerate() {
        let a = rstd * w[ch];
        let bias = b[ch];
        if silu {
            for (y, &v) in oc.iter_mut().zip(xc) {
                let t = madd::<FMA>(v - mean, a, bias);
                *y = t / (1.0 + exp::<FMA>(-t));
            }
        } else {
            for (y, &v) in oc.iter_mut().zip(xc) {
                *y = madd::<FMA>(v - mean, a, bias);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Isa;

    /// Every build this CPU runs (portable, AVX2, AVX-512) against f64, with and without SiLU, at
    /// group sizes that end vectors part-way and an offset common to all values.
    #[test]
    fn every_instruction_set_matches_f64() {
        for (bsz, c, spatial, groups) in [(1, 4, 1, 2), (2, 6, 13, 3), (1, 32, 37, 8), (2, 16, 64, 4)] {
            let x: Vec<f32> = (0..bsz * c * spatial).map(|i| 3.0 + ((i * 7919) % 1009) as f32 / 250.0 - 2.0).collect();
            let w: Vec<f32> = (0..c).map(|i| 0.5 + i as f32 / c as f32).collect();
            let b: Vec<f32> = (0..c).map(|i| i as f32 / 10.0 - 0.3).collect();
            let (cpg, eps) = (c / groups, 1e-5);
            for silu in [false, true] {
                let mut want = vec![0f64; x.len()];
                for (xg, wg) in x.chunks(cpg * spatial).zip(want.chunks_mut(cpg * spatial)) {
                    let n = xg.len() as f64;
                    let mean = xg.iter().map(|&v| v as f64).sum::<f64>() / n;
                    let var = xg.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
                    for (&v, y) in xg.iter().zip(wg.iter_mut()) {
                        *y = (v as f64 - mean) / (var + eps as f64).sqrt();
                    }
                }
                for (i, y) in want.iter_mut().enumerate() {
                    let ch = i / spatial % c;
                    let t = *y * w[ch] as f64 + b[ch] as f64;
                    *y = if silu { t / (1.0 + (-t).exp()) } else { t };
                }
                for isa in Isa::available() {
                    let mut out = vec![f32::NAN; x.len()];
                    super::group_norm_f32(&x, &w, &b, &mut out, c, spatial, groups, eps, silu, isa);
                    let err = out.iter().zip(&want).map(|(&a, &b)| (a as f64 - b).abs()).fold(0.0, f64::max);
                    assert!(err < 1e-5, "{isa:?} {bsz}x{c}x{spatial} groups {groups} silu {silu}: {err:e}");
                }
            }
        }
    }
}
