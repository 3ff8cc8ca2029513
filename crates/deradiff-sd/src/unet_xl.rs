//! The top level of a UNet with SDXL's `text_time` added conditioning, built from
//! candle-transformers' public blocks.
//!
//! candle 0.11's `UNet2DConditionModel` never reads `add_embedding.*`: it computes SD 1.x's
//! timestep embedding only. This is diffusers' `UNet2DConditionModel.forward` for
//! `addition_embed_type = "text_time"`:
//!
//! ```text
//! emb      = time_embedding(time_proj(t))                      (time_proj: sinusoidal, f32)
//! time_emb = add_time_proj(time_ids.flatten()).reshape(B, 6·d) (sinusoidal, d = addition_time_embed_dim)
//! emb      = emb + add_embedding(cat[text_embeds, time_emb])   (linear_1, SiLU, linear_2)
//! ```
//!
//! then the same down / mid / up blocks as candle's (reused as they are: `DownBlock2D`,
//! `CrossAttnDownBlock2D`, `UNetMidBlock2DCrossAttn`, `CrossAttnUpBlock2D`, `UpBlock2D`, each with
//! its own number of transformer layers — SDXL's `[1, 2, 10]`). The sinusoidal projections are
//! computed in f32 and cast to the model dtype, as diffusers does (candle computes the timestep
//! embedding in the model dtype, which rounds fractional Euler timesteps in f16).

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Conv2d, Conv2dConfig, GroupNorm, VarBuilder};
use candle_transformers::models::stable_diffusion::embeddings::TimestepEmbedding;
use candle_transformers::models::stable_diffusion::unet_2d::UNet2DConditionModelConfig;
use candle_transformers::models::stable_diffusion::unet_2d_blocks::{
    CrossAttnDownBlock2D, CrossAttnDownBlock2DConfig, CrossAttnUpBlock2D, CrossAttnUpBlock2DConfig, DownBlock2D,
    DownBlock2DConfig, UNetMidBlock2DCrossAttn, UNetMidBlock2DCrossAttnConfig, UpBlock2D, UpBlock2DConfig,
};

use crate::config::TextTimeArch;

enum Down {
    Basic(DownBlock2D),
    CrossAttn(CrossAttnDownBlock2D),
}

enum Up {
    Basic(UpBlock2D),
    CrossAttn(CrossAttnUpBlock2D),
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

/// A UNet with `text_time` added conditioning (SDXL).
pub(crate) struct TextTimeUnet {
    conv_in: Conv2d,
    time_embedding: TimestepEmbedding,
    add_embedding: TimestepEmbedding,
    down: Vec<Down>,
    mid: UNetMidBlock2DCrossAttn,
    up: Vec<Up>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    config: UNet2DConditionModelConfig,
    text_time: TextTimeArch,
    base_channels: usize,
}

impl TextTimeUnet {
    /// Builds the model from diffusers' weight names (candle's block layout plus
    /// `add_embedding.linear_{1,2}`).
    pub(crate) fn new(
        vs: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        config: UNet2DConditionModelConfig,
        text_time: TextTimeArch,
    ) -> candle_core::Result<Self> {
        let n = config.blocks.len();
        let b_channels = config.blocks[0].out_channels;
        let last = config.blocks[n - 1];
        let time_embed_dim = b_channels * 4;
        let conv_cfg = Conv2dConfig { padding: 1, ..Default::default() };
        let conv_in = candle_nn::conv2d(in_channels, b_channels, 3, conv_cfg, vs.pp("conv_in"))?;
        let time_embedding = TimestepEmbedding::new(vs.pp("time_embedding"), b_channels, time_embed_dim)?;
        let add_embedding = TimestepEmbedding::new(vs.pp("add_embedding"), text_time.input_dim(), time_embed_dim)?;

        let vs_db = vs.pp("down_blocks");
        let mut down = Vec::with_capacity(n);
        for i in 0..n {
            let block = config.blocks[i];
            let in_c = if i > 0 { config.blocks[i - 1].out_channels } else { b_channels };
            let db_cfg = DownBlock2DConfig {
                num_layers: config.layers_per_block,
                resnet_eps: config.norm_eps,
                resnet_groups: config.norm_num_groups,
                add_downsample: i < n - 1,
                downsample_padding: config.downsample_padding,
                ..Default::default()
            };
            down.push(match block.use_cross_attn {
                Some(layers) => Down::CrossAttn(CrossAttnDownBlock2D::new(
                    vs_db.pp(i.to_string()),
                    in_c,
                    block.out_channels,
                    Some(time_embed_dim),
                    false,
                    CrossAttnDownBlock2DConfig {
                        downblock: db_cfg,
                        attn_num_head_channels: block.attention_head_dim,
                        cross_attention_dim: config.cross_attention_dim,
                        sliced_attention_size: None,
                        use_linear_projection: config.use_linear_projection,
                        transformer_layers_per_block: layers,
                    },
                )?),
                None => Down::Basic(DownBlock2D::new(
                    vs_db.pp(i.to_string()),
                    in_c,
                    block.out_channels,
                    Some(time_embed_dim),
                    db_cfg,
                )?),
            });
        }
        let mid = UNetMidBlock2DCrossAttn::new(
            vs.pp("mid_block"),
            last.out_channels,
            Some(time_embed_dim),
            false,
            UNetMidBlock2DCrossAttnConfig {
                resnet_eps: config.norm_eps,
                output_scale_factor: config.mid_block_scale_factor,
                cross_attn_dim: config.cross_attention_dim,
                attn_num_head_channels: last.attention_head_dim,
                resnet_groups: Some(config.norm_num_groups),
                use_linear_projection: config.use_linear_projection,
                transformer_layers_per_block: last.use_cross_attn.unwrap_or(1),
                ..Default::default()
            },
        )?;
        let vs_ub = vs.pp("up_blocks");
        let mut up = Vec::with_capacity(n);
        for i in 0..n {
            let block = config.blocks[n - 1 - i];
            let prev_out = if i > 0 { config.blocks[n - i].out_channels } else { last.out_channels };
            let in_c = config.blocks[if i == n - 1 { 0 } else { n - i - 2 }].out_channels;
            let ub_cfg = UpBlock2DConfig {
                num_layers: config.layers_per_block + 1,
                resnet_eps: config.norm_eps,
                resnet_groups: config.norm_num_groups,
                add_upsample: i < n - 1,
                ..Default::default()
            };
            up.push(match block.use_cross_attn {
                Some(layers) => Up::CrossAttn(CrossAttnUpBlock2D::new(
                    vs_ub.pp(i.to_string()),
                    in_c,
                    prev_out,
                    block.out_channels,
                    Some(time_embed_dim),
                    false,
                    CrossAttnUpBlock2DConfig {
                        upblock: ub_cfg,
                        attn_num_head_channels: block.attention_head_dim,
                        cross_attention_dim: config.cross_attention_dim,
                        sliced_attention_size: None,
                        use_linear_projection: config.use_linear_projection,
                        transformer_layers_per_block: layers,
                    },
                )?),
                None => Up::Basic(UpBlock2D::new(
                    vs_ub.pp(i.to_string()),
                    in_c,
                    prev_out,
                    block.out_channels,
                    Some(time_embed_dim),
                    ub_cfg,
                )?),
            });
        }
        let conv_norm_out =
            candle_nn::group_norm(config.norm_num_groups, b_channels, config.norm_eps, vs.pp("conv_norm_out"))?;
        let conv_out = candle_nn::conv2d(b_channels, out_channels, 3, conv_cfg, vs.pp("conv_out"))?;
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

    /// The model output for `xs` `[B, C, h, w]` at `timestep`, attending to `context`, with the
    /// pooled text embeddings `text_embeds` `[B, P]` and `time_ids` `[B, 6]` (shapes checked by
    /// the caller).
    pub(crate) fn forward(
        &self,
        xs: &Tensor,
        timestep: f64,
        context: &Tensor,
        text_embeds: &Tensor,
        time_ids: &Tensor,
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
        let emb = self.time_embedding.forward(&t_emb)?;
        let ids: Vec<f64> = time_ids.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        let time_emb =
            sinusoidal(&ids, self.text_time.time_embed_dim, flip, shift, device)?.reshape((b, ()))?.to_dtype(dtype)?;
        let add = Tensor::cat(&[&text_embeds.to_dtype(dtype)?, &time_emb], D::Minus1)?;
        let emb = (emb + self.add_embedding.forward(&add)?)?;

        // 2. – 6. as candle's UNet2DConditionModel.
        let xs = self.conv_in.forward(&xs)?;
        let mut res = vec![xs.clone()];
        let mut xs = xs;
        for block in &self.down {
            let (out, r) = match block {
                Down::Basic(b) => b.forward(&xs, Some(&emb))?,
                Down::CrossAttn(b) => b.forward(&xs, Some(&emb), Some(context))?,
            };
            res.extend(r);
            xs = out;
        }
        let mut xs = self.mid.forward(&xs, Some(&emb), Some(context))?;
        let mut upsample_size = None;
        for (i, block) in self.up.iter().enumerate() {
            let n_resnets = match block {
                Up::Basic(b) => b.resnets.len(),
                Up::CrossAttn(b) => b.upblock.resnets.len(),
            };
            let split = res
                .len()
                .checked_sub(n_resnets)
                .ok_or_else(|| candle_core::Error::Msg("UNet skip connections do not match the up blocks".into()))?;
            let r = res.split_off(split);
            if i < n - 1 && forward_upsample_size {
                if let Some(last) = res.last() {
                    let (_, _, h, w) = last.dims4()?;
                    upsample_size = Some((h, w));
                }
            }
            xs = match block {
                Up::Basic(b) => b.forward(&xs, &r, Some(&emb), upsample_size)?,
                Up::CrossAttn(b) => b.forward(&xs, &r, Some(&emb), upsample_size, Some(context))?,
            };
        }
        let xs = candle_nn::ops::silu(&self.conv_norm_out.forward(&xs)?)?;
        self.conv_out.forward(&xs)
    }
}
