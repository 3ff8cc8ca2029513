//! transformers' `CLIPEncoderLayer`, shared by the text and the vision tower (and BLIP's ViT,
//! the same pre-norm layer with a fused `qkv`): pre-norm self-attention (softmax in f32, an
//! optional additive mask) and MLP, with residuals.
//!
//! Public so that the vision towers of the reward models, built outside this crate, run the same
//! layer: [`EncoderLayer::new`] over transformers' CLIP weight names, or
//! [`EncoderLayer::from_parts`] over weights loaded under other names.

use candle_core::{DType, Module, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder};

use super::config::ClipActivation;

/// `l`'s forward (`x · Wᵀ + b`, `x` `[…, in]`) through [`deradiff_kernels::linear`]: on the CPU
/// each row of `x` gets the same bits in a batch of any size and on any number of threads
/// (candle's own matmul changes its reduction order with the number of rows: one pooled row alone
/// takes its matrix-vector path). Every linear layer of the CLIP towers runs through it, and the
/// reward towers built on them outside this crate call it for theirs.
pub fn linear(l: &Linear, x: &Tensor) -> candle_core::Result<Tensor> {
    Ok(deradiff_kernels::linear(x, l.weight(), l.bias())?)
}

/// The sizes of a tower's layers.
#[derive(Clone, Copy, Debug)]
pub struct EncoderSizes {
    /// Width of the hidden states.
    pub hidden: usize,
    /// Width of the MLP's hidden layer.
    pub intermediate: usize,
    /// Attention heads.
    pub heads: usize,
    /// Epsilon of the layer norms.
    pub layer_norm_eps: f64,
}

/// `self_attn.{q,k,v,out}_proj`.
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
    head_dim: usize,
    scale: f64,
}

impl Attention {
    fn new(vb: VarBuilder, s: EncoderSizes) -> candle_core::Result<Self> {
        let h = s.hidden;
        let head_dim = h / s.heads;
        Ok(Self {
            q: candle_nn::linear(h, h, vb.pp("q_proj"))?,
            k: candle_nn::linear(h, h, vb.pp("k_proj"))?,
            v: candle_nn::linear(h, h, vb.pp("v_proj"))?,
            out: candle_nn::linear(h, h, vb.pp("out_proj"))?,
            heads: s.heads,
            head_dim,
            scale: (head_dim as f64).powf(-0.5),
        })
    }

    /// `x`: `[B, L, H]`; `mask`: additive `[L, L]` in f32, if any.
    fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let (b, l, h) = x.dims3()?;
        let dtype = x.dtype();
        let split = |t: Tensor| -> candle_core::Result<Tensor> {
            t.reshape((b, l, self.heads, self.head_dim))?.transpose(1, 2)?.contiguous()?.to_dtype(DType::F32)
        };
        let q = split((linear(&self.q, x)? * self.scale)?)?;
        let k = split(linear(&self.k, x)?)?;
        let v = split(linear(&self.v, x)?)?;
        let scores = q.matmul(&k.t()?)?;
        let scores = match mask {
            Some(mask) => scores.broadcast_add(mask)?,
            None => scores,
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let o = probs.matmul(&v)?.to_dtype(dtype)?.transpose(1, 2)?.reshape((b, l, h))?;
        linear(&self.out, &o)
    }
}

/// The weights of one layer, for checkpoints whose names are not transformers' CLIP names.
pub struct EncoderParts {
    /// The query projection.
    pub q: Linear,
    /// The key projection.
    pub k: Linear,
    /// The value projection.
    pub v: Linear,
    /// The attention's output projection.
    pub out: Linear,
    /// The layer norm before the attention.
    pub ln1: LayerNorm,
    /// The MLP's first linear.
    pub fc1: Linear,
    /// The MLP's second linear.
    pub fc2: Linear,
    /// The layer norm before the MLP.
    pub ln2: LayerNorm,
}

/// One encoder layer (`encoder.layers.N`).
pub struct EncoderLayer {
    attn: Attention,
    ln1: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    ln2: LayerNorm,
    act: ClipActivation,
}

impl EncoderLayer {
    /// A layer over transformers' CLIP weight names under `vb` (`self_attn.{q,k,v,out}_proj`,
    /// `layer_norm1`, `mlp.fc1`, `mlp.fc2`, `layer_norm2`), of sizes `s`, with activation `act`.
    pub fn new(vb: VarBuilder, s: EncoderSizes, act: ClipActivation) -> candle_core::Result<Self> {
        let h = s.hidden;
        Ok(Self {
            attn: Attention::new(vb.pp("self_attn"), s)?,
            ln1: candle_nn::layer_norm(h, s.layer_norm_eps, vb.pp("layer_norm1"))?,
            fc1: candle_nn::linear(h, s.intermediate, vb.pp("mlp").pp("fc1"))?,
            fc2: candle_nn::linear(s.intermediate, h, vb.pp("mlp").pp("fc2"))?,
            ln2: candle_nn::layer_norm(h, s.layer_norm_eps, vb.pp("layer_norm2"))?,
            act,
        })
    }

    /// A layer from its weights: `heads` attention heads of the width of `q`'s output.
    pub fn from_parts(p: EncoderParts, heads: usize, act: ClipActivation) -> candle_core::Result<Self> {
        let hidden = p.q.weight().dim(0)?;
        let head_dim = hidden / heads.max(1);
        let attn =
            Attention { q: p.q, k: p.k, v: p.v, out: p.out, heads, head_dim, scale: (head_dim as f64).powf(-0.5) };
        Ok(Self { attn, ln1: p.ln1, fc1: p.fc1, fc2: p.fc2, ln2: p.ln2, act })
    }

    /// The layer's output for hidden states `x` `[B, L, hidden]`, with an additive attention
    /// `mask` `[L, L]` in f32 if any (the text tower's causal mask).
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let x = (self.attn.forward(&self.ln1.forward(x)?, mask)? + x)?;
        let y = self.act.forward(&linear(&self.fc1, &self.ln2.forward(&x)?)?)?;
        linear(&self.fc2, &y)? + x
    }
}
