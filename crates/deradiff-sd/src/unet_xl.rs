//! Our UNet (SD 1.x, 2.x and SDXL): our own top level and transformer blocks over
//! candle-transformers' public pieces.
//!
//! candle 0.11's `UNet2DConditionModel` never reads `add_embedding.*`: it computes SD 1.x's
//! timestep embedding only. This is diffusers' `UNet2DConditionModel.forward`; without added
//! conditioning (SD 1.x / 2.x) `emb = time_embedding(time_proj(t))`, and for
//! `addition_embed_type = "text_time"` (SDXL):
//!
//! ```text
//! emb      = time_embedding(time_proj(t))                      (time_proj: sinusoidal, f32)
//! time_emb = add_time_proj(time_ids.flatten()).reshape(B, 6·d) (sinusoidal, d = addition_time_embed_dim)
//! emb      = emb + add_embedding(cat[text_embeds, time_emb])   (linear_1, SiLU, linear_2)
//! ```
//!
//! then diffusers' down / mid / up blocks, each level with its own number of transformer layers
//! (SDXL's `[1, 2, 10]`). Built from candle's public layers (layer norms) with our own
//! linears, convolutions, timestep embedding, resnet, attention and transformer blocks (loading
//! the same tensor names), whose linears, convolutions, group norms (+ SiLU), GEGLU and attention
//! run the CPU kernels of [`crate::kernels`] on the CPU and candle's ops elsewhere, and with two
//! corrections to candle's blocks:
//!
//! * the transformer feed-forward uses diffusers' exact (erf) GELU in its GEGLU, where candle's
//!   private `BasicTransformerBlock` uses the tanh approximation (4e-5 on the tiny SDXL UNet's
//!   output, 6e-4 on the latents after four guided realigned Euler steps; with the exact GELU
//!   1.3e-6 and 2e-5; likewise 6e-5 on the tiny SD 1.x UNet);
//! * the resnets' GroupNorms take `norm_num_groups` (candle's down and up blocks always use 32).
//!
//! The sinusoidal projections are computed in f32 and cast to the model dtype, as diffusers does
//! (candle computes the timestep embedding in the model dtype, which rounds fractional Euler
//! timesteps in f16).

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Conv2dConfig, LayerNorm, VarBuilder};
use candle_transformers::models::stable_diffusion::resnet::ResnetBlock2DConfig;
use candle_transformers::models::stable_diffusion::unet_2d::{BlockConfig, UNet2DConditionModelConfig};

use crate::config::TextTimeArch;
use crate::kernels;

/// Group normalisation (diffusers' `GroupNorm` weights), optionally followed by SiLU, through
/// the fused kernel on the CPU ([`kernels::group_norm`]).
struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

impl GroupNorm {
    fn new(groups: usize, channels: usize, eps: f64, vs: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self { weight: vs.get(channels, "weight")?, bias: vs.get(channels, "bias")?, groups, eps })
    }

    fn forward(&self, xs: &Tensor, silu: bool) -> candle_core::Result<Tensor> {
        kernels::group_norm(xs, self.groups, &self.weight, &self.bias, self.eps, silu)
    }
}

/// A 2-d convolution (diffusers' `Conv2d` weights: `weight` `[Co, Ci, k, k]`, `bias` `[Co]`)
/// through our kernel on the CPU ([`kernels::conv2d`]).
struct Conv2d {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    padding: usize,
}

impl Conv2d {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        kernels::conv2d(xs, &self.weight, Some(&self.bias), self.stride, self.padding)
    }

    /// The convolution with a bias per batch item (`[B, Co]`: the layer's bias plus `extra`)
    /// in place of the layer's own.
    fn forward_with_bias(&self, xs: &Tensor, extra: &Tensor) -> candle_core::Result<Tensor> {
        let bias = extra.broadcast_add(&self.bias)?;
        kernels::conv2d(xs, &self.weight, Some(&bias), self.stride, self.padding)
    }

    /// `residual + self.forward(xs)`, in one pass.
    fn forward_add(&self, xs: &Tensor, residual: &Tensor) -> candle_core::Result<Tensor> {
        kernels::conv2d_add(xs, &self.weight, Some(&self.bias), self.stride, self.padding, residual)
    }
}

/// `candle_nn::conv2d`'s loading (the same tensors, shapes and order; `cfg`'s stride and
/// padding, one group, dilation 1) into a [`Conv2d`].
fn conv2d(in_c: usize, out_c: usize, k: usize, cfg: Conv2dConfig, vs: VarBuilder) -> candle_core::Result<Conv2d> {
    let weight = vs.get((out_c, in_c, k, k), "weight")?;
    Ok(Conv2d { weight, bias: vs.get(out_c, "bias")?, stride: cfg.stride, padding: cfg.padding })
}

/// A linear layer (diffusers' `Linear` weights: `weight` `[N, K]`, optional `bias` `[N]`), through
/// the one-GEMM kernel on the CPU ([`kernels::linear`]).
struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        kernels::linear(xs, &self.weight, self.bias.as_ref())
    }

    /// `residual + self.forward(xs)`, in one pass.
    fn forward_add(&self, xs: &Tensor, residual: &Tensor) -> candle_core::Result<Tensor> {
        kernels::linear_add(xs, &self.weight, self.bias.as_ref(), residual)
    }
}

/// `candle_nn::linear`'s loading (the same tensors and shapes) into a [`Linear`].
fn linear(in_dim: usize, out_dim: usize, vs: VarBuilder) -> candle_core::Result<Linear> {
    Ok(Linear { weight: vs.get((out_dim, in_dim), "weight")?, bias: Some(vs.get(out_dim, "bias")?) })
}

/// `candle_nn::linear_no_bias`'s loading into a [`Linear`].
fn linear_no_bias(in_dim: usize, out_dim: usize, vs: VarBuilder) -> candle_core::Result<Linear> {
    Ok(Linear { weight: vs.get((out_dim, in_dim), "weight")?, bias: None })
}

/// diffusers' `TimestepEmbedding` (`linear_1`, SiLU, `linear_2`) on our [`Linear`].
struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimestepEmbedding {
    fn new(vs: VarBuilder, channels: usize, time_embed_dim: usize) -> candle_core::Result<Self> {
        Ok(Self {
            linear_1: linear(channels, time_embed_dim, vs.pp("linear_1"))?,
            linear_2: linear(time_embed_dim, time_embed_dim, vs.pp("linear_2"))?,
        })
    }

    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.linear_2.forward(&candle_nn::ops::silu(&self.linear_1.forward(xs)?)?)
    }
}

/// diffusers' `Attention` (candle's `CrossAttention`: `to_q`, `to_k`, `to_v` without bias,
/// `to_out.0`), through the fused attention kernel on the CPU ([`kernels::attention_heads`]).
struct CrossAttention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    scale: f64,
}

impl CrossAttention {
    fn new(
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
    fn forward_add(&self, xs: &Tensor, context: Option<&Tensor>, residual: &Tensor) -> candle_core::Result<Tensor> {
        let context = context.unwrap_or(xs);
        let (q, k, v) = (self.to_q.forward(xs)?, self.to_k.forward(context)?, self.to_v.forward(context)?);
        let out = kernels::attention_heads(&q, &k, &v, self.heads, self.scale)?;
        self.to_out.forward_add(&out, residual)
    }
}

/// diffusers' `ResnetBlock2D` (candle's, with its GroupNorm + SiLU pairs fused on the CPU).
struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    norm2: GroupNorm,
    conv2: Conv2d,
    time_emb_proj: Option<Linear>,
    conv_shortcut: Option<Conv2d>,
    output_scale_factor: f64,
}

impl ResnetBlock2D {
    fn new(vs: VarBuilder, in_channels: usize, config: ResnetBlock2DConfig) -> candle_core::Result<Self> {
        let out = config.out_channels.unwrap_or(in_channels);
        let conv_cfg = Conv2dConfig { padding: 1, ..Default::default() };
        let groups_out = config.groups_out.unwrap_or(config.groups);
        // In candle's order, so that a mis-shaped file fails on the same tensor as before.
        let norm1 = GroupNorm::new(config.groups, in_channels, config.eps, vs.pp("norm1"))?;
        let conv1 = conv2d(in_channels, out, 3, conv_cfg, vs.pp("conv1"))?;
        let norm2 = GroupNorm::new(groups_out, out, config.eps, vs.pp("norm2"))?;
        let conv2 = conv2d(out, out, 3, conv_cfg, vs.pp("conv2"))?;
        let conv_shortcut = if config.use_in_shortcut.unwrap_or(in_channels != out) {
            Some(conv2d(in_channels, out, 1, Default::default(), vs.pp("conv_shortcut"))?)
        } else {
            None
        };
        let time_emb_proj = config.temb_channels.map(|t| linear(t, out, vs.pp("time_emb_proj"))).transpose()?;
        Ok(Self {
            norm1,
            conv1,
            norm2,
            conv2,
            time_emb_proj,
            conv_shortcut,
            output_scale_factor: config.output_scale_factor,
        })
    }

    fn forward(&self, xs: &Tensor, temb: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(xs)?,
            None => xs.clone(),
        };
        let h = self.norm1.forward(xs, true)?;
        // The projected timestep embedding `[B, Co]` joins conv1's bias (added in its pass).
        let h = match (temb, &self.time_emb_proj) {
            (Some(temb), Some(proj)) => {
                self.conv1.forward_with_bias(&h, &proj.forward(&candle_nn::ops::silu(temb)?)?)?
            }
            _ => self.conv1.forward(&h)?,
        };
        let out = self.conv2.forward_add(&self.norm2.forward(&h, true)?, &shortcut)?;
        // Every SD / SDXL config has a factor of 1: skip the pass over the tensor then.
        if self.output_scale_factor == 1.0 {
            Ok(out)
        } else {
            out / self.output_scale_factor
        }
    }
}

/// diffusers' `GEGLU` + output linear, with the exact GELU (the gating through
/// [`kernels::geglu`], one pass over the projection's rows on the CPU).
struct FeedForward {
    proj: Linear,
    out: Linear,
}

impl FeedForward {
    fn new(vs: VarBuilder, dim: usize) -> candle_core::Result<Self> {
        let inner = dim * 4;
        let vs = vs.pp("net");
        Ok(Self { proj: linear(dim, inner * 2, vs.pp("0").pp("proj"))?, out: linear(inner, dim, vs.pp("2"))? })
    }

    /// `residual + feed_forward(xs)`, the residual added by the output linear's GEMM.
    fn forward_add(&self, xs: &Tensor, residual: &Tensor) -> candle_core::Result<Tensor> {
        self.out.forward_add(&kernels::geglu(&self.proj.forward(xs)?)?, residual)
    }
}

/// diffusers' `BasicTransformerBlock` (self-attention, cross-attention, GEGLU feed-forward).
struct TransformerBlock {
    attn1: CrossAttention,
    attn2: CrossAttention,
    ff: FeedForward,
    norm1: LayerNorm,
    norm2: LayerNorm,
    norm3: LayerNorm,
}

impl TransformerBlock {
    fn new(vs: VarBuilder, dim: usize, heads: usize, context_dim: usize) -> candle_core::Result<Self> {
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

    fn forward(&self, xs: &Tensor, context: &Tensor) -> candle_core::Result<Tensor> {
        let xs = self.attn1.forward_add(&self.norm1.forward(xs)?, None, xs)?;
        let xs = self.attn2.forward_add(&self.norm2.forward(&xs)?, Some(context), &xs)?;
        self.ff.forward_add(&self.norm3.forward(&xs)?, &xs)
    }
}

/// diffusers' `Transformer2DModel` (candle's `SpatialTransformer`) with exact-GELU blocks. Its
/// `proj_in` / `proj_out` (1×1 convolutions, or linears with `use_linear_projection`: the same
/// map over channels, loaded as `[C, C]` either way) read the image layout and write back into it
/// through [`kernels::linear_from_channels`] and [`kernels::linear_to_channels`], so the tokens
/// are never transposed in a separate copy and the residual is added by the last GEMM.
struct SpatialTransformer {
    norm: GroupNorm,
    proj_in: Linear,
    blocks: Vec<TransformerBlock>,
    proj_out: Linear,
}

impl SpatialTransformer {
    /// The `count` transformers `attentions.{0..count}` of a block, none for a block without
    /// cross-attention.
    fn stack(
        vs: &VarBuilder,
        count: usize,
        channels: usize,
        block: &BlockConfig,
        cfg: &UNet2DConditionModelConfig,
    ) -> candle_core::Result<Vec<Self>> {
        match block.use_cross_attn {
            Some(depth) => (0..count)
                .map(|j| Self::new(vs.pp("attentions").pp(j), channels, block.attention_head_dim, depth, cfg))
                .collect(),
            None => Ok(Vec::new()),
        }
    }

    fn new(
        vs: VarBuilder,
        channels: usize,
        heads: usize,
        depth: usize,
        cfg: &UNet2DConditionModelConfig,
    ) -> candle_core::Result<Self> {
        let norm = GroupNorm::new(cfg.norm_num_groups, channels, 1e-6, vs.pp("norm"))?;
        let proj = |name: &str| -> candle_core::Result<Linear> {
            if cfg.use_linear_projection {
                linear(channels, channels, vs.pp(name))
            } else {
                let conv = conv2d(channels, channels, 1, Default::default(), vs.pp(name))?;
                Ok(Linear { weight: conv.weight.reshape((channels, channels))?, bias: Some(conv.bias) })
            }
        };
        let vs_tb = vs.pp("transformer_blocks");
        let blocks = (0..depth)
            .map(|i| TransformerBlock::new(vs_tb.pp(i), channels, heads, cfg.cross_attention_dim))
            .collect::<candle_core::Result<_>>()?;
        Ok(Self { norm, proj_in: proj("proj_in")?, blocks, proj_out: proj("proj_out")? })
    }

    fn forward(&self, xs: &Tensor, context: &Tensor) -> candle_core::Result<Tensor> {
        let norm = self.norm.forward(xs, false)?;
        let mut tokens = kernels::linear_from_channels(&norm, &self.proj_in.weight, self.proj_in.bias.as_ref())?;
        for block in &self.blocks {
            tokens = block.forward(&tokens, context)?;
        }
        kernels::linear_to_channels(&tokens, &self.proj_out.weight, self.proj_out.bias.as_ref(), xs)
    }
}

/// One level of the encoder: resnets (each followed by a transformer in a cross-attention
/// block) and a strided-convolution downsampler except at the last level.
struct Down {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<SpatialTransformer>,
    downsampler: Option<(Conv2d, usize)>,
}

impl Down {
    fn forward(&self, xs: &Tensor, temb: &Tensor, context: &Tensor) -> candle_core::Result<(Tensor, Vec<Tensor>)> {
        let mut xs = xs.clone();
        let mut states = Vec::with_capacity(self.resnets.len() + 1);
        for (i, resnet) in self.resnets.iter().enumerate() {
            xs = resnet.forward(&xs, Some(temb))?;
            if let Some(attn) = self.attentions.get(i) {
                xs = attn.forward(&xs, context)?;
            }
            states.push(xs.clone());
        }
        if let Some((conv, padding)) = &self.downsampler {
            xs = if *padding == 0 {
                conv.forward(&xs.pad_with_zeros(D::Minus1, 0, 1)?.pad_with_zeros(D::Minus2, 0, 1)?)?
            } else {
                conv.forward(&xs)?
            };
            states.push(xs.clone());
        }
        Ok((xs, states))
    }
}

/// One level of the decoder: resnets over the skip connections (each followed by a transformer
/// in a cross-attention block) and a nearest-neighbour upsampler except at the last level.
struct Up {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<SpatialTransformer>,
    upsampler: Option<Conv2d>,
}

impl Up {
    fn forward(
        &self,
        xs: &Tensor,
        skips: &[Tensor],
        temb: &Tensor,
        context: &Tensor,
        size: Option<(usize, usize)>,
    ) -> candle_core::Result<Tensor> {
        let mut xs = xs.clone();
        for (i, resnet) in self.resnets.iter().enumerate() {
            xs = Tensor::cat(&[&xs, &skips[skips.len() - i - 1]], 1)?.contiguous()?;
            xs = resnet.forward(&xs, Some(temb))?;
            if let Some(attn) = self.attentions.get(i) {
                xs = attn.forward(&xs, context)?;
            }
        }
        match &self.upsampler {
            Some(conv) => {
                let (_, _, h, w) = xs.dims4()?;
                let (h, w) = size.unwrap_or((2 * h, 2 * w));
                conv.forward(&xs.upsample_nearest2d(h, w)?)
            }
            None => Ok(xs),
        }
    }
}

/// The mid block: resnet, then (transformer, resnet).
struct Mid {
    resnet: ResnetBlock2D,
    attn: SpatialTransformer,
    resnet2: ResnetBlock2D,
}

/// diffusers' `get_timestep_embedding` in f32: `[B] → [B, dim]` (`flip_sin_to_cos`: cos first).
pub(crate) fn sinusoidal(
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

/// diffusers' `UNet2DConditionModel` on our blocks: SD 1.x / 2.x, or with `text_time` added
/// conditioning (SDXL).
pub(crate) struct UnetModel {
    conv_in: Conv2d,
    time_embedding: TimestepEmbedding,
    add_embedding: Option<TimestepEmbedding>,
    down: Vec<Down>,
    mid: Mid,
    up: Vec<Up>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    config: UNet2DConditionModelConfig,
    text_time: Option<TextTimeArch>,
    base_channels: usize,
}

impl UnetModel {
    /// Builds the model from diffusers' weight names (candle's block layout, plus
    /// `add_embedding.linear_{1,2}` with `text_time`).
    pub(crate) fn new(
        vs: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        config: UNet2DConditionModelConfig,
        text_time: Option<TextTimeArch>,
    ) -> candle_core::Result<Self> {
        let n = config.blocks.len();
        let b_channels = config.blocks[0].out_channels;
        let last = config.blocks[n - 1];
        let time_embed_dim = b_channels * 4;
        let conv_cfg = Conv2dConfig { padding: 1, ..Default::default() };
        let conv_in = conv2d(in_channels, b_channels, 3, conv_cfg, vs.pp("conv_in"))?;
        let time_embedding = TimestepEmbedding::new(vs.pp("time_embedding"), b_channels, time_embed_dim)?;
        let add_embedding = text_time
            .map(|tt| TimestepEmbedding::new(vs.pp("add_embedding"), tt.input_dim(), time_embed_dim))
            .transpose()?;

        let resnet_cfg = |out: usize, scale: f64| ResnetBlock2DConfig {
            out_channels: Some(out),
            temb_channels: Some(time_embed_dim),
            groups: config.norm_num_groups,
            groups_out: None,
            eps: config.norm_eps,
            use_in_shortcut: None,
            output_scale_factor: scale,
        };
        let vs_db = vs.pp("down_blocks");
        let mut down = Vec::with_capacity(n);
        for i in 0..n {
            let block = config.blocks[i];
            let out = block.out_channels;
            let in_c = if i > 0 { config.blocks[i - 1].out_channels } else { b_channels };
            let vb = vs_db.pp(i);
            let resnets = (0..config.layers_per_block)
                .map(|j| {
                    let c = if j == 0 { in_c } else { out };
                    ResnetBlock2D::new(vb.pp("resnets").pp(j), c, resnet_cfg(out, 1.0))
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            let attentions = SpatialTransformer::stack(&vb, config.layers_per_block, out, &block, &config)?;
            let downsampler = if i < n - 1 {
                let cfg = Conv2dConfig { stride: 2, padding: config.downsample_padding, ..Default::default() };
                let conv = conv2d(out, out, 3, cfg, vb.pp("downsamplers").pp("0").pp("conv"))?;
                Some((conv, config.downsample_padding))
            } else {
                None
            };
            down.push(Down { resnets, attentions, downsampler });
        }
        let vb_mid = vs.pp("mid_block");
        let mid_channels = last.out_channels;
        let mid_cfg = resnet_cfg(mid_channels, config.mid_block_scale_factor);
        let mid = Mid {
            resnet: ResnetBlock2D::new(vb_mid.pp("resnets").pp("0"), mid_channels, mid_cfg)?,
            attn: SpatialTransformer::new(
                vb_mid.pp("attentions").pp("0"),
                mid_channels,
                last.attention_head_dim,
                last.use_cross_attn.unwrap_or(1),
                &config,
            )?,
            resnet2: ResnetBlock2D::new(vb_mid.pp("resnets").pp("1"), mid_channels, mid_cfg)?,
        };
        let vs_ub = vs.pp("up_blocks");
        let mut up = Vec::with_capacity(n);
        for i in 0..n {
            let block = config.blocks[n - 1 - i];
            let out = block.out_channels;
            let prev_out = if i > 0 { config.blocks[n - i].out_channels } else { last.out_channels };
            let in_c = config.blocks[if i == n - 1 { 0 } else { n - i - 2 }].out_channels;
            let layers = config.layers_per_block + 1;
            let vb = vs_ub.pp(i);
            let resnets = (0..layers)
                .map(|j| {
                    let skip = if j == layers - 1 { in_c } else { out };
                    let res_in = if j == 0 { prev_out } else { out };
                    ResnetBlock2D::new(vb.pp("resnets").pp(j), res_in + skip, resnet_cfg(out, 1.0))
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            let attentions = SpatialTransformer::stack(&vb, layers, out, &block, &config)?;
            let upsampler = if i < n - 1 {
                let cfg = Conv2dConfig { padding: 1, ..Default::default() };
                Some(conv2d(out, out, 3, cfg, vb.pp("upsamplers").pp("0").pp("conv"))?)
            } else {
                None
            };
            up.push(Up { resnets, attentions, upsampler });
        }
        let conv_norm_out =
            GroupNorm::new(config.norm_num_groups, b_channels, config.norm_eps, vs.pp("conv_norm_out"))?;
        let conv_out = conv2d(b_channels, out_channels, 3, conv_cfg, vs.pp("conv_out"))?;
        Ok(Self {
            conv_in,
            time_embedding,
            add_embedding,
            down,
            mid,
            up,
            conv_norm_out,
            conv_out,
            config,
            text_time,
            base_channels: b_channels,
        })
    }

    /// The model output for `xs` `[B, C, h, w]` at `timestep`, attending to `context`, with (for
    /// a `text_time` UNet, which requires them) the pooled text embeddings `[B, P]` and
    /// `time_ids` `[B, 6]` in `added` (shapes checked by the caller).
    pub(crate) fn forward(
        &self,
        xs: &Tensor,
        timestep: f64,
        context: &Tensor,
        added: Option<(&Tensor, &Tensor)>,
    ) -> candle_core::Result<Tensor> {
        let (b, _c, height, width) = xs.dims4()?;
        let device = xs.device();
        let dtype = xs.dtype();
        let n = self.config.blocks.len();
        let up_factor = 1usize << (n - 1);
        let forward_upsample_size = height % up_factor != 0 || width % up_factor != 0;
        let xs = if self.config.center_input_sample { ((xs * 2.0)? - 1.0)? } else { xs.clone() };

        // 1. time, with the added text_time embedding.
        let (flip, shift) = (self.config.flip_sin_to_cos, self.config.freq_shift);
        let t_emb = sinusoidal(&vec![timestep; b], self.base_channels, flip, shift, device)?.to_dtype(dtype)?;
        let mut emb = self.time_embedding.forward(&t_emb)?;
        match (&self.add_embedding, self.text_time, added) {
            (Some(add_embedding), Some(tt), Some((text_embeds, time_ids))) => {
                let ids: Vec<f64> = time_ids.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
                let time_emb =
                    sinusoidal(&ids, tt.time_embed_dim, flip, shift, device)?.reshape((b, ()))?.to_dtype(dtype)?;
                let add = Tensor::cat(&[&text_embeds.to_dtype(dtype)?, &time_emb], D::Minus1)?;
                emb = (emb + add_embedding.forward(&add)?)?;
            }
            (None, None, None) => {}
            _ => {
                return Err(candle_core::Error::Msg(
                    "a text_time UNet needs pooled text embeddings and time_ids, and only it takes them".into(),
                ))
            }
        }

        // 2. – 6. as diffusers' UNet2DConditionModel.
        let xs = self.conv_in.forward(&xs)?;
        let mut res = vec![xs.clone()];
        let mut xs = xs;
        for block in &self.down {
            let (out, r) = block.forward(&xs, &emb, context)?;
            res.extend(r);
            xs = out;
        }
        let xs = self.mid.resnet.forward(&xs, Some(&emb))?;
        let xs = self.mid.attn.forward(&xs, context)?;
        let mut xs = self.mid.resnet2.forward(&xs, Some(&emb))?;
        let mut upsample_size = None;
        for (i, block) in self.up.iter().enumerate() {
            let split = res
                .len()
                .checked_sub(block.resnets.len())
                .ok_or_else(|| candle_core::Error::Msg("UNet skip connections do not match the up blocks".into()))?;
            let r = res.split_off(split);
            if i < n - 1 && forward_upsample_size {
                if let Some(last) = res.last() {
                    let (_, _, h, w) = last.dims4()?;
                    upsample_size = Some((h, w));
                }
            }
            xs = block.forward(&xs, &r, &emb, context, upsample_size)?;
        }
        let xs = self.conv_norm_out.forward(&xs, true)?;
        self.conv_out.forward(&xs)
    }
}
