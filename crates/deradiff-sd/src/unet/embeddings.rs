//! The UNet's embeddings: diffusers' sinusoidal timestep projection (in f32) and
//! `TimestepEmbedding` (also SDXL's `add_embedding`).

use candle_core::{Device, Tensor, D};
use candle_nn::VarBuilder;

use super::layers::{join, linear, LayerMut, Linear, Rows, Visitor};

/// diffusers' `TimestepEmbedding` (`linear_1`, SiLU, `linear_2`) on our [`Linear`].
#[derive(Clone)]
pub(super) struct TimestepEmbedding {
    pub(super) linear_1: Linear,
    pub(super) linear_2: Linear,
}

impl TimestepEmbedding {
    pub(super) fn new(vs: VarBuilder, channels: usize, time_embed_dim: usize) -> candle_core::Result<Self> {
        Ok(Self {
            linear_1: linear(channels, time_embed_dim, vs.pp("linear_1"))?,
            linear_2: linear(time_embed_dim, time_embed_dim, vs.pp("linear_2"))?,
        })
    }

    pub(super) fn forward(&self, xs: &Tensor, rows: Rows) -> candle_core::Result<Tensor> {
        self.linear_2.forward(&candle_nn::ops::silu(&self.linear_1.forward(xs, rows)?)?, rows)
    }

    pub(super) fn visit(&mut self, prefix: &str, f: &mut Visitor) -> crate::Result<()> {
        f(join(prefix, "linear_1"), LayerMut::Linear(&mut self.linear_1))?;
        f(join(prefix, "linear_2"), LayerMut::Linear(&mut self.linear_2))
    }
}

/// diffusers' `get_timestep_embedding` in f32: `[B] → [B, dim]` (`flip_sin_to_cos`: cos first).
pub(super) fn sinusoidal(
    values: &[f64],
    dim: usize,
    flip_sin_to_cos: bool,
    shift: f64,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let half = dim / 2;
    let freqs: Vec<f32> = (0..half)
        .map(|i| {
            // torch: exponent = -ln(10000) * arange(half, float32) / (half - shift); exp(exponent)
            let exponent = (-(10000f32.ln()) * i as f32) / (half as f32 - shift as f32);
            exponent.exp()
        })
        .collect();
    let freqs = Tensor::from_vec(freqs, (1, half), device)?;
    let t: Vec<f32> = values.iter().map(|&v| v as f32).collect();
    let t = Tensor::from_vec(t, (values.len(), 1), device)?;
    let args = t.broadcast_mul(&freqs)?;
    let (sin, cos) = (args.sin()?, args.cos()?);
    let emb =
        if flip_sin_to_cos { Tensor::cat(&[&cos, &sin], D::Minus1)? } else { Tensor::cat(&[&sin, &cos], D::Minus1)? };
    if dim % 2 == 1 {
        emb.pad_with_zeros(D::Minus1, 0, 1)
    } else {
        Ok(emb)
    }
}
