//! Fused group normalisation (+ SiLU).

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::f32_slice;
use super::math::{exp, madd, sum_and_squares};

/// Group normalisation of `x` `[B, C, …]` over `groups` groups of channels, with the per-channel
/// affine `weight`, `bias` `[C]` and `eps`, then SiLU if `silu` (the `GroupNorm → SiLU` pair of
/// every UNet resnet), in `x`'s dtype.
///
/// On the CPU this is our fused kernel (statistics and the normalised, activated output in one
/// kernel per (batch, group), in f32 with f64 sums); on other devices it is
/// [`group_norm_reference`]. Errors (never panics) when `C` is not a multiple of `groups` or the
/// affine parameters do not have `C` elements.
pub fn group_norm(
    x: &Tensor,
    groups: usize,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    silu: bool,
) -> candle_core::Result<Tensor> {
    check(x, groups, weight, bias)?;
    if !x.device().is_cpu() {
        return group_norm_reference(x, groups, weight, bias, eps, silu);
    }
    let in_dtype = x.dtype();
    let f32c = |t: &Tensor| -> candle_core::Result<Tensor> { t.to_dtype(DType::F32)?.contiguous() };
    let op = FusedGroupNorm { groups, eps: eps as f32, silu };
    f32c(x)?.apply_op3_no_bwd(&f32c(weight)?, &f32c(bias)?, &op)?.to_dtype(in_dtype)
}

/// candle's ops: `candle_nn::GroupNorm`'s computation (then `candle_nn::ops::silu` if `silu`).
/// Same arguments as [`group_norm`].
pub fn group_norm_reference(
    x: &Tensor,
    groups: usize,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    silu: bool,
) -> candle_core::Result<Tensor> {
    check(x, groups, weight, bias)?;
    let c = x.dim(1)?;
    let gn = candle_nn::GroupNorm::new(weight.clone(), bias.clone(), c, groups, eps)?;
    let y = candle_core::Module::forward(&gn, x)?;
    if silu {
        candle_nn::ops::silu(&y)
    } else {
        Ok(y)
    }
}

fn check(x: &Tensor, groups: usize, weight: &Tensor, bias: &Tensor) -> candle_core::Result<()> {
    let dims = x.dims();
    if dims.len() < 2 {
        return Err(candle_core::Error::Msg(format!("group norm needs [B, C, …], got {dims:?}")));
    }
    let c = dims[1];
    if groups == 0 || !c.is_multiple_of(groups) {
        return Err(candle_core::Error::Msg(format!("group norm: {c} channels do not split into {groups} groups")));
    }
    if weight.dims() != [c] || bias.dims() != [c] {
        return Err(candle_core::Error::Msg(format!(
            "group norm: weight and bias must be [{c}], got {:?} and {:?}",
            weight.dims(),
            bias.dims()
        )));
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
        let (x, w, b) = (
            f32_slice("fused group norm", s1, l1)?,
            f32_slice("fused group norm", s2, l2)?,
            f32_slice("fused group norm", s3, l3)?,
        );
        let dims = l1.shape().dims();
        let c = dims[1];
        let spatial: usize = dims[2..].iter().product();
        let mut out = vec![0f32; x.len()];
        group_norm_f32(x, w, b, &mut out, c, spatial, self.groups, self.eps, self.silu);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// The kernel over contiguous slices: `x`, `out` `[B, c, spatial]`, `w`, `b` `[c]`.
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
) {
    let cpg = c / groups;
    let len = cpg * spatial;
    if len == 0 {
        return;
    }
    out.par_chunks_mut(len).zip(x.par_chunks(len)).enumerate().for_each(|(i, (o, xg))| {
        let g = i % groups;
        let (w, b) = (&w[g * cpg..][..cpg], &b[g * cpg..][..cpg]);
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                // SAFETY: the CPU supports AVX2 and FMA (checked just above).
                unsafe { one_group_avx2(xg, w, b, o, spatial, eps, silu) };
                return;
            }
        }
        one_group::<false>(xg, w, b, o, spatial, eps, silu)
    });
}

/// [`one_group`] compiled for AVX2 + FMA (the crate is built for baseline x86-64).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn one_group_avx2(xg: &[f32], w: &[f32], b: &[f32], o: &mut [f32], spatial: usize, eps: f32, silu: bool) {
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
    let (sum, sum_sq) = sum_and_squares(xg, shift);
    let mean_d = sum / n;
    let var = (sum_sq / n - mean_d * mean_d).max(0.0);
    let rstd = (1.0 / (var + eps as f64).sqrt()) as f32;
    let mean = (shift as f64 + mean_d) as f32;
    for (ch, (oc, xc)) in o.chunks_mut(spatial).zip(xg.chunks(spatial)).enumerate() {
        let a = rstd * w[ch];
        let shift = b[ch] - mean * a;
        if silu {
            for (y, &v) in oc.iter_mut().zip(xc) {
                let t = madd::<FMA>(v, a, shift);
                *y = t / (1.0 + exp::<FMA>(-t));
            }
        } else {
            for (y, &v) in oc.iter_mut().zip(xc) {
                *y = madd::<FMA>(v, a, shift);
            }
        }
    }
}
