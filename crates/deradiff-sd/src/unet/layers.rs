//! The UNet's layers: group norm (+ SiLU), convolution, linear, attention and the GEGLU
//! feed-forward, loading diffusers' tensor names and running the fused kernels of
//! [`deradiff_kernels`] on the CPU (candle's ops elsewhere).

use candle_core::Tensor;
use candle_nn::VarBuilder;
use deradiff_kernels as kernels;

/// Stride and padding of a [`Conv2d`] (one group, dilation 1).
#[derive(Clone, Copy, Debug)]
pub(super) struct ConvConfig {
    pub(super) stride: usize,
    pub(super) padding: usize,
}

impl Default for ConvConfig {
    /// Stride 1, no padding (candle's `Conv2dConfig::default()`).
    fn default() -> Self {
        Self { stride: 1, padding: 0 }
    }
}

/// Group normalisation (diffusers' `GroupNorm` weights), optionally followed by SiLU, through
/// the fused kernel on the CPU ([`kernels::group_norm`]).
pub(super) struct GroupNorm {
    pub(super) weight: Tensor,
    pub(super) bias: Tensor,
    pub(super) groups: usize,
    pub(super) eps: f64,
}

impl GroupNorm {
    pub(super) fn new(groups: usize, channels: usize, eps: f64, vs: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self { weight: vs.get(channels, "weight")?, bias: vs.get(channels, "bias")?, groups, eps })
    }

    pub(super) fn forward(&self, xs: &Tensor, silu: bool) -> candle_core::Result<Tensor> {
        kernels::group_norm(xs, self.groups, &self.weight, &self.bias, self.eps, silu)
    }
}

/// A 2-d convolution (diffusers' `Conv2d` weights: `weight` `[Co, Ci, k, k]`, `bias` `[Co]`)
/// through our kernel on the CPU ([`kernels::conv2d`]).
pub(super) struct Conv2d {
    pub(super) weight: Tensor,
    pub(super) bias: Tensor,
    pub(super) stride: usize,
    pub(super) padding: usize,
}

impl Conv2d {
    pub(super) fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        kernels::conv2d(xs, &self.weight, Some(&self.bias), self.stride, self.padding)
    }

    /// The convolution with a bias per batch item (`[B, Co]`: the layer's bias plus `extra`)
    /// in place of the layer's own.
    pub(super) fn forward_with_bias(&self, xs: &Tensor, extra: &Tensor) -> candle_core::Result<Tensor> {
        let bias = extra.broadcast_add(&self.bias)?;
        kernels::conv2d(xs, &self.weight, Some(&bias), self.stride, self.padding)
    }

    /// `residual + self.forward(xs)`, in one pass.
    pub(super) fn forward_add(&self, xs: &Tensor, residual: &Tensor) -> candle_core::Result<Tensor> {
        kernels::conv2d_add(xs, &self.weight, Some(&self.bias), self.stride, self.padding, residual)
    }
}

/// `candle_nn::conv2d`'s loading (the same tensors, shapes and order; `cfg`'s stride and
/// padding) into a [`Conv2d`].
pub(super) fn conv2d(
    in_c: usize,
    out_c: usize,
    k: usize,
    cfg: ConvConfig,
    vs: VarBuilder,
) -> candle_core::Result<Conv2d> {
    let weight = vs.get((out_c, in_c, k, k), "weight")?;
    Ok(Conv2d { weight, bias: vs.get(out_c, "bias")?, stride: cfg.stride, padding: cfg.padding })
}

/// A linear layer (diffusers' `Linear` weights: `weight` `[N, K]`, optional `bias` `[N]`), through
/// the one-GEMM kernel on the CPU ([`kernels::linear`]).
pub(super) struct Linear {
    pub(super) weight: Tensor,
    pub(super) bias: Option<Tensor>,
}

impl Linear {
    pub(super) fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        kernels::linear(xs, &self.weight, self.bias.as_ref())
    }

    /// `residual + self.forward(xs)`, in one pass.
    pub(super) fn forward_add(&self, xs: &Tensor, residual: &Tensor) -> candle_core::Result<Tensor> {
        kernels::linear_add(xs, &self.weight, self.bias.as_ref(), residual)
    }
}

/// `candle_nn::linear`'s loading (the same tensors and shapes) into a [`Linear`].
pub(super) fn linear(in_dim: usize, out_dim: usize, vs: VarBuilder) -> candle_core::Result<Linear> {
    Ok(Linear { weight: vs.get((out_dim, in_dim), "weight")?, bias: Some(vs.get(out_dim, "bias")?) })
}

/// `candle_nn::linear_no_bias`'s loading into a [`Linear`].
pub(super) fn linear_no_bias(in_dim: usize, out_dim: usize, vs: VarBuilder) -> candle_core::Result<Linear> {
    Ok(Linear { weight: vs.get((out_dim, in_dim), "weight")?, bias: None })
}

/// diffusers' `Attention` (what candle calls `CrossAttention`: `to_q`, `to_k`, `to_v` without bias,
/// `to_out.0`), through the fused attention kernel on the CPU ([`kernels::attention_heads`]).
pub(super) struct CrossAttention {
    pub(super) to_q: Linear,
    pub(super) to_k: Linear,
    pub(super) to_v: Linear,
    pub(super) to_out: Linear,
    pub(super) heads: usize,
    pub(super) scale: f64,
}

impl CrossAttention {
    pub(super) fn new(
        vs: VarBuilder,
        query_dim: usize,
        context_dim: Option<usize>,
        heads: usize,
        dim_head: usize,
    ) -> candle_core::Result<Self> {
        let inner = dim_head * heads;
        let context_dim = context_dim.unwrap_or(query_dim);
        Ok(Self {
            to_q: linear_no_bias(query_dim, inner, vs.pp("to_q"))?,
            to_k: linear_no_bias(context_dim, inner, vs.pp("to_k"))?,
            to_v: linear_no_bias(context_dim, inner, vs.pp("to_v"))?,
            to_out: linear(inner, query_dim, vs.pp("to_out.0"))?,
            heads,
            scale: 1.0 / (dim_head as f64).sqrt(),
        })
    }

    /// `residual + attention(xs, context)` (self-attention without a context), the residual
    /// added by the output projection's GEMM.
    pub(super) fn forward_add(
        &self,
        xs: &Tensor,
        context: Option<&Tensor>,
        residual: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let context = context.unwrap_or(xs);
        let (q, k, v) = (self.to_q.forward(xs)?, self.to_k.forward(context)?, self.to_v.forward(context)?);
        let out = kernels::attention_heads(&q, &k, &v, self.heads, self.scale)?;
        self.to_out.forward_add(&out, residual)
    }
}

/// diffusers' `GEGLU` + output linear, with the exact GELU (the gating through
/// [`kernels::geglu`], one pass over the projection's rows on the CPU).
pub(super) struct FeedForward {
    pub(super) proj: Linear,
    pub(super) out: Linear,
}

impl FeedForward {
    pub(super) fn new(vs: VarBuilder, dim: usize) -> candle_core::Result<Self> {
        let inner = dim * 4;
        let vs = vs.pp("net");
        Ok(Self { proj: linear(dim, inner * 2, vs.pp("0").pp("proj"))?, out: linear(inner, dim, vs.pp("2"))? })
    }

    /// `residual + feed_forward(xs)`, the residual added by the output linear's GEMM.
    pub(super) fn forward_add(&self, xs: &Tensor, residual: &Tensor) -> candle_core::Result<Tensor> {
        self.out.forward_add(&kernels::geglu(&self.proj.forward(xs)?)?, residual)
    }
}
