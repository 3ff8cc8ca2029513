//! The UNet's embeddings: diffusers' sinusoidal timestep projection (in f32) and
//! `TimestepEmbedding` (also SDXL's `add_embedding`).

use candle_core::{DType, Device, Tensor};
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

/// diffusers' `get_timestep_embedding` in f32: `[B] → [B, dim]` (`flip_sin_to_cos`: cos first),
/// as a `dtype` tensor on `device`. Computed on the host (a handful of values) and copied to the
/// device once, rather than as seven small device ops; the same f32 arithmetic as candle's CPU
/// ops.
pub(super) fn sinusoidal(
    values: &[f64],
    dim: usize,
    flip_sin_to_cos: bool,
    shift: f64,
    dtype: DType,
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
    let mut emb = Vec::with_capacity(values.len() * dim);
    for &v in values {
        let args = freqs.iter().map(|&f| v as f32 * f);
        let (sin, cos): (Vec<f32>, Vec<f32>) = args.map(|a| (a.sin(), a.cos())).unzip();
        if flip_sin_to_cos {
            emb.extend(cos.iter().chain(&sin));
        } else {
            emb.extend(sin.iter().chain(&cos));
        }
        if dim % 2 == 1 {
            emb.push(0.0);
        }
    }
    Tensor::from_vec(emb, (values.len(), dim), &Device::Cpu)?.to_dtype(dtype)?.to_device(device)
}
