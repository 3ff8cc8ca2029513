//! The UNet's blocks: diffusers' `ResnetBlock2D`, `BasicTransformerBlock`, `Transformer2DModel`
//! and the down / mid / up levels built from them.

use candle_core::{Tensor, D};
use candle_nn::{LayerNorm, Module, VarBuilder};

use super::layers::{
    conv2d, join, layer_norm_layer, linear, Conv2d, ConvConfig, CrossAttention, FeedForward, GroupNorm, LayerMut,
    Linear, Rows, Visitor,
};
use crate::config::{UnetArch, UnetBlock};

/// What a [`ResnetBlock2D`] is built with (the fields of candle's `ResnetBlock2DConfig` that SD
/// checkpoints set).
#[derive(Clone, Copy, Debug)]
pub(super) struct ResnetConfig {
    pub(super) out_channels: usize,
    pub(super) temb_channels: usize,
    pub(super) groups: usize,
    pub(super) eps: f64,
    pub(super) output_scale_factor: f64,
}

/// diffusers' `ResnetBlock2D` (weight names and layout as candle's), its GroupNorm + SiLU pairs
/// fused on the CPU.
#[derive(Clone)]
pub(super) struct ResnetBlock2D {
    pub(super) norm1: GroupNorm,
    pub(super) conv1: Conv2d,
    pub(super) norm2: GroupNorm,
    pub(super) conv2: Conv2d,
    pub(super) time_emb_proj: Option<Linear>,
    /// `time_emb_proj`'s bias plus `conv1`'s: the projected timestep embedding, with this bias,
    /// is conv1's whole bias per batch item (one addition fewer per forward). Both are biases,
    /// which no adapter changes (the weights are what merges and LoRAs replace).
    pub(super) temb_bias: Option<Tensor>,
    pub(super) conv_shortcut: Option<Conv2d>,
    pub(super) output_scale_factor: f64,
}

impl ResnetBlock2D {
    pub(super) fn new(vs: VarBuilder, in_channels: usize, config: ResnetConfig) -> candle_core::Result<Self> {
        let out = config.out_channels;
        let conv_cfg = ConvConfig { padding: 1, ..Default::default() };
        // In candle's order, so that a mis-shaped file fails on the same tensor as before.
        let norm1 = GroupNorm::new(config.groups, in_channels, config.eps, vs.pp("norm1"))?;
        let conv1 = conv2d(in_channels, out, 3, conv_cfg, vs.pp("conv1"))?;
        let norm2 = GroupNorm::new(config.groups, out, config.eps, vs.pp("norm2"))?;
        let conv2 = conv2d(out, out, 3, conv_cfg, vs.pp("conv2"))?;
        let conv_shortcut = if in_channels != out {
            Some(conv2d(in_channels, out, 1, Default::default(), vs.pp("conv_shortcut"))?)
        } else {
            None
        };
        let time_emb_proj = linear(config.temb_channels, out, vs.pp("time_emb_proj"))?;
        let temb_bias = match &time_emb_proj.bias {
            Some(b) => Some((b + &conv1.bias)?),
            None => Some(conv1.bias.clone()),
        };
        Ok(Self {
            norm1,
            conv1,
            norm2,
            conv2,
            time_emb_proj: Some(time_emb_proj),
            temb_bias,
            conv_shortcut,
            output_scale_factor: config.output_scale_factor,
        })
    }

    /// The block on `xs` with `silu_temb`, the timestep embedding after its SiLU (computed once
    /// per forward for every block).
    pub(super) fn forward(&self, xs: &Tensor, silu_temb: Option<&Tensor>, rows: Rows) -> candle_core::Result<Tensor> {
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(xs, rows)?,
            None => xs.clone(),
        };
        let h = self.norm1.forward(xs, true)?;
        // The projected timestep embedding `[B, Co]`, with both biases, is conv1's bias (added in
        // its pass).
        let h = match (silu_temb, &self.time_emb_proj, &self.temb_bias) {
            (Some(temb), Some(proj), Some(bias)) => {
                self.conv1.forward_with_bias(&h, &proj.forward_with_bias(temb, bias, rows)?, rows)?
            }
            _ => self.conv1.forward(&h, rows)?,
        };
        let out = self.conv2.forward_add(&self.norm2.forward(&h, true)?, &shortcut, rows)?;
        // Every SD / SDXL config has a factor of 1: skip the pass over the tensor then.
        if self.output_scale_factor == 1.0 {
            Ok(out)
        } else {
            out / self.output_scale_factor
        }
    }

    pub(super) fn visit(&mut self, prefix: &str, f: &mut Visitor) -> crate::Result<()> {
        f(join(prefix, "norm1"), self.norm1.as_layer())?;
        f(join(prefix, "norm2"), self.norm2.as_layer())?;
        f(join(prefix, "conv1"), LayerMut::Conv(&mut self.conv1))?;
        f(join(prefix, "conv2"), LayerMut::Conv(&mut self.conv2))?;
        if let Some(proj) = &mut self.time_emb_proj {
            f(join(prefix, "time_emb_proj"), LayerMut::Linear(proj))?;
        }
        if let Some(conv) = &mut self.conv_shortcut {
            f(join(prefix, "conv_shortcut"), LayerMut::Conv(conv))?;
        }
        Ok(())
    }
}

/// diffusers' `BasicTransformerBlock` (self-attention, cross-attention, GEGLU feed-forward).
#[derive(Clone)]
pub(super) struct TransformerBlock {
    pub(super) attn1: CrossAttention,
    pub(super) attn2: CrossAttention,
    pub(super) ff: FeedForward,
    pub(super) norm1: LayerNorm,
    pub(super) norm2: LayerNorm,
    pub(super) norm3: LayerNorm,
}

impl TransformerBlock {
    pub(super) fn new(vs: VarBuilder, dim: usize, heads: usize, context_dim: usize) -> candle_core::Result<Self> {
        let d_head = dim / heads;
        Ok(Self {
            attn1: CrossAttention::new(vs.pp("attn1"), dim, None, heads, d_head)?,
            attn2: CrossAttention::new(vs.pp("attn2"), dim, Some(context_dim), heads, d_head)?,
            ff: FeedForward::new(vs.pp("ff"), dim)?,
            norm1: candle_nn::layer_norm(dim, 1e-5, vs.pp("norm1"))?,
            norm2: candle_nn::layer_norm(dim, 1e-5, vs.pp("norm2"))?,
            norm3: candle_nn::layer_norm(dim, 1e-5, vs.pp("norm3"))?,
        })
    }

    pub(super) fn forward(&self, xs: &Tensor, context: &Tensor, rows: Rows) -> candle_core::Result<Tensor> {
        let xs = self.attn1.forward_add(&self.norm1.forward(xs)?, None, xs, rows)?;
        let xs = self.attn2.forward_add(&self.norm2.forward(&xs)?, Some(context), &xs, rows)?;
        self.ff.forward_add(&self.norm3.forward(&xs)?, &xs, rows)
    }

    pub(super) fn visit(&mut self, prefix: &str, f: &mut Visitor) -> crate::Result<()> {
        f(join(prefix, "norm1"), layer_norm_layer(&self.norm1))?;
        f(join(prefix, "norm2"), layer_norm_layer(&self.norm2))?;
        f(join(prefix, "norm3"), layer_norm_layer(&self.norm3))?;
        self.attn1.visit(&join(prefix, "attn1"), f)?;
        self.attn2.visit(&join(prefix, "attn2"), f)?;
        self.ff.visit(&join(prefix, "ff"), f)
    }
}

/// diffusers' `Transformer2DModel` (what candle calls `SpatialTransformer`) with exact-GELU blocks. Its
/// `proj_in` / `proj_out` (1×1 convolutions, or linears with `use_linear_projection`: the same
/// map over channels, loaded as `[C, C]` either way) read the image layout and write back into it
/// through [`kernels::linear_from_channels`] and [`kernels::linear_to_channels`], so the tokens
/// are never transposed in a separate copy and the residual is added by the last GEMM.
#[derive(Clone)]
pub(super) struct SpatialTransformer {
    pub(super) norm: GroupNorm,
    pub(super) proj_in: Linear,
    pub(super) blocks: Vec<TransformerBlock>,
    pub(super) proj_out: Linear,
}

impl SpatialTransformer {
    /// The `count` transformers `attentions.{0..count}` of a block, none for a block without
    /// cross-attention.
    pub(super) fn stack(
        vs: &VarBuilder,
        count: usize,
        channels: usize,
        block: &UnetBlock,
        cfg: &UnetArch,
    ) -> candle_core::Result<Vec<Self>> {
        match block.transformer_layers {
            Some(depth) => {
                (0..count).map(|j| Self::new(vs.pp("attentions").pp(j), channels, block.heads, depth, cfg)).collect()
            }
            None => Ok(Vec::new()),
        }
    }

    pub(super) fn new(
        vs: VarBuilder,
        channels: usize,
        heads: usize,
        depth: usize,
        cfg: &UnetArch,
    ) -> candle_core::Result<Self> {
        let norm = GroupNorm::new(cfg.norm_num_groups, channels, 1e-6, vs.pp("norm"))?;
        let proj = |name: &str| -> candle_core::Result<Linear> {
            if cfg.use_linear_projection {
                linear(channels, channels, vs.pp(name))
            } else {
                let conv = conv2d(channels, channels, 1, Default::default(), vs.pp(name))?;
                Ok(Linear {
                    weight: conv.weight.reshape((channels, channels))?,
                    bias: Some(conv.bias),
                    from_conv: true,
                    adapters: Vec::new(),
                })
            }
        };
        let vs_tb = vs.pp("transformer_blocks");
        let blocks = (0..depth)
            .map(|i| TransformerBlock::new(vs_tb.pp(i), channels, heads, cfg.cross_attention_dim))
            .collect::<candle_core::Result<_>>()?;
        Ok(Self { norm, proj_in: proj("proj_in")?, blocks, proj_out: proj("proj_out")? })
    }

    pub(super) fn forward(&self, xs: &Tensor, context: &Tensor, rows: Rows) -> candle_core::Result<Tensor> {
        let norm = self.norm.forward(xs, false)?;
        let mut tokens = self.proj_in.forward_from_channels(&norm, rows)?;
        for block in &self.blocks {
            tokens = block.forward(&tokens, context, rows)?;
        }
        self.proj_out.forward_to_channels(&tokens, xs, rows)
    }

    pub(super) fn visit(&mut self, prefix: &str, f: &mut Visitor) -> crate::Result<()> {
        f(join(prefix, "norm"), self.norm.as_layer())?;
        f(join(prefix, "proj_in"), LayerMut::Linear(&mut self.proj_in))?;
        for (i, block) in self.blocks.iter_mut().enumerate() {
            block.visit(&join(prefix, format!("transformer_blocks.{i}")), f)?;
        }
        f(join(prefix, "proj_out"), LayerMut::Linear(&mut self.proj_out))
    }
}

/// One level of the encoder: resnets (each followed by a transformer in a cross-attention
/// block) and a strided-convolution downsampler except at the last level.
#[derive(Clone)]
pub(super) struct Down {
    pub(super) resnets: Vec<ResnetBlock2D>,
    pub(super) attentions: Vec<SpatialTransformer>,
    pub(super) downsampler: Option<(Conv2d, usize)>,
}

impl Down {
    pub(super) fn forward(
        &self,
        xs: &Tensor,
        silu_temb: &Tensor,
        context: &Tensor,
        rows: Rows,
    ) -> candle_core::Result<(Tensor, Vec<Tensor>)> {
        let mut xs = xs.clone();
        let mut states = Vec::with_capacity(self.resnets.len() + 1);
        for (i, resnet) in self.resnets.iter().enumerate() {
            xs = resnet.forward(&xs, Some(silu_temb), rows)?;
            if let Some(attn) = self.attentions.get(i) {
                xs = attn.forward(&xs, context, rows)?;
            }
            states.push(xs.clone());
        }
        if let Some((conv, padding)) = &self.downsampler {
            xs = if *padding == 0 {
                conv.forward(&xs.pad_with_zeros(D::Minus1, 0, 1)?.pad_with_zeros(D::Minus2, 0, 1)?, rows)?
            } else {
                conv.forward(&xs, rows)?
            };
            states.push(xs.clone());
        }
        Ok((xs, states))
    }

    pub(super) fn visit(&mut self, prefix: &str, f: &mut Visitor) -> crate::Result<()> {
        for (i, r) in self.resnets.iter_mut().enumerate() {
            r.visit(&join(prefix, format!("resnets.{i}")), f)?;
        }
        for (i, a) in self.attentions.iter_mut().enumerate() {
            a.visit(&join(prefix, format!("attentions.{i}")), f)?;
        }
        if let Some((conv, _)) = &mut self.downsampler {
            f(join(prefix, "downsamplers.0.conv"), LayerMut::Conv(conv))?;
        }
        Ok(())
    }
}

/// One level of the decoder: resnets over the skip connections (each followed by a transformer
/// in a cross-attention block) and a nearest-neighbour upsampler except at the last level.
#[derive(Clone)]
pub(super) struct Up {
    pub(super) resnets: Vec<ResnetBlock2D>,
    pub(super) attentions: Vec<SpatialTransformer>,
    pub(super) upsampler: Option<Conv2d>,
}

impl Up {
    pub(super) fn forward(
        &self,
        xs: &Tensor,
        skips: &[Tensor],
        silu_temb: &Tensor,
        context: &Tensor,
        size: Option<(usize, usize)>,
        rows: Rows,
    ) -> candle_core::Result<Tensor> {
        let mut xs = xs.clone();
        for (i, resnet) in self.resnets.iter().enumerate() {
            xs = Tensor::cat(&[&xs, &skips[skips.len() - i - 1]], 1)?.contiguous()?;
            xs = resnet.forward(&xs, Some(silu_temb), rows)?;
            if let Some(attn) = self.attentions.get(i) {
                xs = attn.forward(&xs, context, rows)?;
            }
        }
        match &self.upsampler {
            Some(conv) => {
                let (_, _, h, w) = xs.dims4()?;
                let (h, w) = size.unwrap_or((2 * h, 2 * w));
                conv.forward(&xs.upsample_nearest2d(h, w)?, rows)
            }
            None => Ok(xs),
        }
    }

    pub(super) fn visit(&mut self, prefix: &str, f: &mut Visitor) -> crate::Result<()> {
        for (i, r) in self.resnets.iter_mut().enumerate() {
            r.visit(&join(prefix, format!("resnets.{i}")), f)?;
        }
        for (i, a) in self.attentions.iter_mut().enumerate() {
            a.visit(&join(prefix, format!("attentions.{i}")), f)?;
        }
        if let Some(conv) = &mut self.upsampler {
            f(join(prefix, "upsamplers.0.conv"), LayerMut::Conv(conv))?;
        }
        Ok(())
    }
}

/// The mid block: resnet, then (transformer, resnet).
#[derive(Clone)]
pub(super) struct Mid {
    pub(super) resnet: ResnetBlock2D,
    pub(super) attn: SpatialTransformer,
    pub(super) resnet2: ResnetBlock2D,
}
