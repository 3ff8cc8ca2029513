//! The UNet's layers: group norm (+ SiLU), convolution, linear, attention and the GEGLU
//! feed-forward, loading diffusers' tensor names and running the fused kernels of
//! [`deradiff_kernels`] on the CPU (candle's ops elsewhere).

use candle_core::Tensor;
use candle_nn::VarBuilder;
use deradiff_kernels as kernels;

use super::RowGroup;

/// Which rows of a batch belong to which model in a joint pass: consecutive [`RowGroup`]s. No
/// groups: every row runs the base weights.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Rows<'a>(pub(crate) &'a [RowGroup]);

/// A low-rank adapter on one layer for one model of a joint pass: `delta(x) = up(down(x))`, the
/// adapter's scale and the user's multiplier folded into `up`. Linear layers: `down` `[r, in]`,
/// `up` `[out, r]`; convolutions: `down` `[r, in, k, k]` (the layer's stride and padding), `up`
/// `[out, r, 1, 1]`.
#[derive(Clone, Debug)]
pub(crate) struct LowRank {
    pub(crate) down: Tensor,
    pub(crate) up: Tensor,
}

/// `base` with, on the rows of each group whose adapter this layer has, `delta(lr, x_g, base_g)`
/// in place of `base_g` (`delta` returns `base_g + the adapter's output`).
fn with_deltas(
    xs: &Tensor,
    base: Tensor,
    rows: Rows,
    adapters: &[Option<LowRank>],
    delta: impl Fn(&LowRank, &Tensor, &Tensor) -> candle_core::Result<Tensor>,
) -> candle_core::Result<Tensor> {
    let adapter = |g: &RowGroup| g.adapter.and_then(|k| adapters.get(k)).and_then(Option::as_ref);
    if !rows.0.iter().any(|g| adapter(g).is_some()) {
        return Ok(base);
    }
    let total: usize = rows.0.iter().map(|g| g.rows).sum();
    let batch = base.dims().first().copied().unwrap_or(0);
    if total != batch || xs.dims().first() != Some(&batch) {
        candle_core::bail!("the row groups cover {total} rows, but the batch has {batch}")
    }
    let mut pieces = Vec::with_capacity(rows.0.len());
    let mut start = 0;
    for g in rows.0 {
        let base_g = base.narrow(0, start, g.rows)?;
        pieces.push(match adapter(g) {
            Some(lr) if g.rows > 0 => delta(lr, &xs.narrow(0, start, g.rows)?.contiguous()?, &base_g.contiguous()?)?,
            _ => base_g,
        });
        start += g.rows;
    }
    Tensor::cat(&pieces, 0)
}

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
#[derive(Clone)]
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
        Ok(kernels::group_norm(xs, self.groups, &self.weight, &self.bias, self.eps, silu)?)
    }
}

/// A 2-d convolution (diffusers' `Conv2d` weights: `weight` `[Co, Ci, k, k]`, `bias` `[Co]`)
/// through our kernel on the CPU ([`kernels::conv2d`]).
#[derive(Clone)]
pub(super) struct Conv2d {
    pub(super) weight: Tensor,
    pub(super) bias: Tensor,
    pub(super) stride: usize,
    pub(super) padding: usize,
    /// Adapters by index (joint passes; empty otherwise).
    pub(super) adapters: Vec<Option<LowRank>>,
}

impl Conv2d {
    pub(super) fn forward(&self, xs: &Tensor, rows: Rows) -> candle_core::Result<Tensor> {
        let base = kernels::conv2d(xs, &self.weight, Some(&self.bias), self.stride, self.padding)?;
        self.deltas(xs, base, rows)
    }

    /// The convolution with `bias` (`[B, Co]`: one per batch item, the layer's own included by
    /// the caller) in place of the layer's bias.
    pub(super) fn forward_with_bias(&self, xs: &Tensor, bias: &Tensor, rows: Rows) -> candle_core::Result<Tensor> {
        let base = kernels::conv2d(xs, &self.weight, Some(bias), self.stride, self.padding)?;
        self.deltas(xs, base, rows)
    }

    /// `residual + self.forward(xs)`, in one pass.
    pub(super) fn forward_add(&self, xs: &Tensor, residual: &Tensor, rows: Rows) -> candle_core::Result<Tensor> {
        let base = kernels::conv2d_add(xs, &self.weight, Some(&self.bias), self.stride, self.padding, residual)?;
        self.deltas(xs, base, rows)
    }

    fn deltas(&self, xs: &Tensor, base: Tensor, rows: Rows) -> candle_core::Result<Tensor> {
        with_deltas(xs, base, rows, &self.adapters, |lr, x, base| {
            let h = kernels::conv2d(x, &lr.down, None, self.stride, self.padding)?;
            Ok(kernels::conv2d_add(&h, &lr.up, None, 1, 0, base)?)
        })
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
    Ok(Conv2d { weight, bias: vs.get(out_c, "bias")?, stride: cfg.stride, padding: cfg.padding, adapters: Vec::new() })
}

/// A linear layer (diffusers' `Linear` weights: `weight` `[N, K]`, optional `bias` `[N]`), through
/// the one-GEMM kernel on the CPU ([`kernels::linear`]).
#[derive(Clone)]
pub(super) struct Linear {
    pub(super) weight: Tensor,
    pub(super) bias: Option<Tensor>,
    /// Loaded from a 1×1 convolution (`proj_in` / `proj_out` without `use_linear_projection`):
    /// its file shape is `[out, in, 1, 1]`.
    pub(super) from_conv: bool,
    /// Adapters by index (joint passes; empty otherwise).
    pub(super) adapters: Vec<Option<LowRank>>,
}

impl Linear {
    pub(super) fn forward(&self, xs: &Tensor, rows: Rows) -> candle_core::Result<Tensor> {
        let base = kernels::linear(xs, &self.weight, self.bias.as_ref())?;
        self.deltas(xs, base, rows)
    }

    /// `self.forward(xs)` with `bias` in place of the layer's own.
    pub(super) fn forward_with_bias(&self, xs: &Tensor, bias: &Tensor, rows: Rows) -> candle_core::Result<Tensor> {
        let base = kernels::linear(xs, &self.weight, Some(bias))?;
        self.deltas(xs, base, rows)
    }

    /// `residual + self.forward(xs)`, in one pass.
    pub(super) fn forward_add(&self, xs: &Tensor, residual: &Tensor, rows: Rows) -> candle_core::Result<Tensor> {
        let base = kernels::linear_add(xs, &self.weight, self.bias.as_ref(), residual)?;
        self.deltas(xs, base, rows)
    }

    pub(super) fn deltas(&self, xs: &Tensor, base: Tensor, rows: Rows) -> candle_core::Result<Tensor> {
        with_deltas(xs, base, rows, &self.adapters, |lr, x, base| {
            Ok(kernels::linear_add(&kernels::linear(x, &lr.down, None)?, &lr.up, None, base)?)
        })
    }

    /// `self.forward` reading `xs` `[B, C, h, w]` as tokens `[B, h·w, C]` (see
    /// [`kernels::linear_from_channels`]).
    pub(super) fn forward_from_channels(&self, xs: &Tensor, rows: Rows) -> candle_core::Result<Tensor> {
        let base = kernels::linear_from_channels(xs, &self.weight, self.bias.as_ref())?;
        with_deltas(xs, base, rows, &self.adapters, |lr, x, base| {
            Ok(kernels::linear_add(&kernels::linear_from_channels(x, &lr.down, None)?, &lr.up, None, base)?)
        })
    }

    /// `residual + self.forward(tokens)` written back to the image layout of `residual`
    /// (see [`kernels::linear_to_channels`]).
    pub(super) fn forward_to_channels(
        &self,
        tokens: &Tensor,
        residual: &Tensor,
        rows: Rows,
    ) -> candle_core::Result<Tensor> {
        let base = kernels::linear_to_channels(tokens, &self.weight, self.bias.as_ref(), residual)?;
        with_deltas(tokens, base, rows, &self.adapters, |lr, x, base| {
            Ok(kernels::linear_to_channels(&kernels::linear(x, &lr.down, None)?, &lr.up, None, base)?)
        })
    }

    /// The weight's shape as the file stores it.
    pub(super) fn file_shape(&self) -> Vec<usize> {
        let mut shape = self.weight.dims().to_vec();
        if self.from_conv {
            shape.extend([1, 1]);
        }
        shape
    }
}

/// `candle_nn::linear`'s loading (the same tensors and shapes) into a [`Linear`].
pub(super) fn linear(in_dim: usize, out_dim: usize, vs: VarBuilder) -> candle_core::Result<Linear> {
    Ok(Linear {
        weight: vs.get((out_dim, in_dim), "weight")?,
        bias: Some(vs.get(out_dim, "bias")?),
        from_conv: false,
        adapters: Vec::new(),
    })
}

/// `candle_nn::linear_no_bias`'s loading into a [`Linear`].
pub(super) fn linear_no_bias(in_dim: usize, out_dim: usize, vs: VarBuilder) -> candle_core::Result<Linear> {
    Ok(Linear { weight: vs.get((out_dim, in_dim), "weight")?, bias: None, from_conv: false, adapters: Vec::new() })
}

/// A linear or convolution layer of the UNet, for walking its layers by module path; or a
/// normalisation's parameters (read only: what a LoRA cannot adapt).
pub(super) enum LayerMut<'a> {
    Linear(&'a mut Linear),
    Conv(&'a mut Conv2d),
    Norm { weight: &'a Tensor, bias: Option<&'a Tensor> },
}

impl GroupNorm {
    /// This norm as a [`LayerMut::Norm`].
    pub(super) fn as_layer(&self) -> LayerMut<'_> {
        LayerMut::Norm { weight: &self.weight, bias: Some(&self.bias) }
    }
}

/// A layer norm as a [`LayerMut::Norm`].
pub(super) fn layer_norm_layer(n: &candle_nn::LayerNorm) -> LayerMut<'_> {
    LayerMut::Norm { weight: n.weight(), bias: n.bias() }
}

/// Visits layers with their diffusers module paths.
pub(super) type Visitor<'v> = dyn FnMut(String, LayerMut<'_>) -> crate::Result<()> + 'v;

/// `prefix.name` (or `name` at the root).
pub(super) fn join(prefix: &str, name: impl std::fmt::Display) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// diffusers' `Attention` (what candle calls `CrossAttention`: `to_q`, `to_k`, `to_v` without bias,
/// `to_out.0`), through the fused attention kernel on the CPU ([`kernels::attention_heads`]).
#[derive(Clone)]
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
        rows: Rows,
    ) -> candle_core::Result<Tensor> {
        let context = context.unwrap_or(xs);
        let (q, k, v) =
            (self.to_q.forward(xs, rows)?, self.to_k.forward(context, rows)?, self.to_v.forward(context, rows)?);
        let out = kernels::attention_heads(&q, &k, &v, self.heads, self.scale)?;
        self.to_out.forward_add(&out, residual, rows)
    }

    pub(super) fn visit(&mut self, prefix: &str, f: &mut Visitor) -> crate::Result<()> {
        f(join(prefix, "to_q"), LayerMut::Linear(&mut self.to_q))?;
        f(join(prefix, "to_k"), LayerMut::Linear(&mut self.to_k))?;
        f(join(prefix, "to_v"), LayerMut::Linear(&mut self.to_v))?;
        f(join(prefix, "to_out.0"), LayerMut::Linear(&mut self.to_out))
    }
}

/// diffusers' `GEGLU` + output linear, with the exact GELU (the gating through
/// [`kernels::geglu`], one pass over the projection's rows on the CPU).
#[derive(Clone)]
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
    pub(super) fn forward_add(&self, xs: &Tensor, residual: &Tensor, rows: Rows) -> candle_core::Result<Tensor> {
        self.out.forward_add(&kernels::geglu(&self.proj.forward(xs, rows)?)?, residual, rows)
    }

    pub(super) fn visit(&mut self, prefix: &str, f: &mut Visitor) -> crate::Result<()> {
        f(join(prefix, "net.0.proj"), LayerMut::Linear(&mut self.proj))?;
        f(join(prefix, "net.2"), LayerMut::Linear(&mut self.out))
    }
}
