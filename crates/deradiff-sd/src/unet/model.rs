//! diffusers' `UNet2DConditionModel.forward` on our blocks. Without added conditioning (SD 1.x /
//! 2.x) `emb = time_embedding(time_proj(t))`, and for `addition_embed_type = "text_time"` (SDXL):
//!
//! ```text
//! emb      = time_embedding(time_proj(t))                      (time_proj: sinusoidal, f32)
//! time_emb = add_time_proj(time_ids.flatten()).reshape(B, 6·d) (sinusoidal, d = addition_time_embed_dim)
//! emb      = emb + add_embedding(cat[text_embeds, time_emb])   (linear_1, SiLU, linear_2)
//! ```
//!
//! then the down / mid / up levels of [`super::blocks`], each with its own number of transformer
//! layers (SDXL's `[1, 2, 10]`), and the output GroupNorm + SiLU and convolution.

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;

use super::blocks::{Down, Mid, ResnetBlock2D, ResnetConfig, SpatialTransformer, Up};
use super::embeddings::{sinusoidal, TimestepEmbedding};
use super::layers::{conv2d, Conv2d, ConvConfig, GroupNorm, LayerMut, Rows, Visitor};
use crate::config::UnetArch;
use crate::error::{Error, Result};

/// diffusers' `UNet2DConditionModel` on our blocks: SD 1.x / 2.x, or with `text_time` added
/// conditioning (SDXL).
#[derive(Clone)]
pub(super) struct UnetModel {
    pub(super) conv_in: Conv2d,
    pub(super) time_embedding: TimestepEmbedding,
    pub(super) add_embedding: Option<TimestepEmbedding>,
    pub(super) down: Vec<Down>,
    pub(super) mid: Mid,
    pub(super) up: Vec<Up>,
    pub(super) conv_norm_out: GroupNorm,
    pub(super) conv_out: Conv2d,
    pub(super) config: UnetArch,
    pub(super) base_channels: usize,
}

impl UnetModel {
    /// Builds the model from diffusers' weight names (candle's block layout, plus
    /// `add_embedding.linear_{1,2}` with `text_time`).
    pub(super) fn new(vs: VarBuilder, config: UnetArch) -> candle_core::Result<Self> {
        let (in_channels, out_channels, text_time) = (config.in_channels, config.out_channels, config.text_time);
        let n = config.blocks.len();
        let b_channels = config.blocks[0].out_channels;
        let last = config.blocks[n - 1];
        let time_embed_dim = b_channels * 4;
        let conv_cfg = ConvConfig { padding: 1, ..Default::default() };
        let conv_in = conv2d(in_channels, b_channels, 3, conv_cfg, vs.pp("conv_in"))?;
        let time_embedding = TimestepEmbedding::new(vs.pp("time_embedding"), b_channels, time_embed_dim)?;
        let add_embedding = text_time
            .map(|tt| TimestepEmbedding::new(vs.pp("add_embedding"), tt.input_dim(), time_embed_dim))
            .transpose()?;

        let resnet_cfg = |out: usize, scale: f64| ResnetConfig {
            out_channels: out,
            temb_channels: time_embed_dim,
            groups: config.norm_num_groups,
            eps: config.norm_eps,
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
                let cfg = ConvConfig { stride: 2, padding: config.downsample_padding };
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
                last.heads,
                last.transformer_layers.unwrap_or(1),
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
                let cfg = ConvConfig { padding: 1, ..Default::default() };
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
            base_channels: b_channels,
        })
    }

    /// The model output for `xs` `[B, C, h, w]` at `timestep`, attending to `context`, with (for
    /// a `text_time` UNet, which requires them) the pooled text embeddings `[B, P]` and
    /// `time_ids` `[B, 6]` in `added` (shapes checked by the caller).
    pub(super) fn forward(
        &self,
        xs: &Tensor,
        timestep: f64,
        context: &Tensor,
        added: Option<(&Tensor, &Tensor)>,
        rows: Rows,
    ) -> Result<Tensor> {
        let (b, _c, height, width) = xs.dims4()?;
        let device = xs.device();
        let dtype = xs.dtype();
        let n = self.config.blocks.len();
        let up_factor = 1usize << (n - 1);
        let forward_upsample_size = height % up_factor != 0 || width % up_factor != 0;
        let xs = if self.config.center_input_sample { ((xs * 2.0)? - 1.0)? } else { xs.clone() };

        // 1. time, with the added text_time embedding.
        let (flip, shift) = (self.config.flip_sin_to_cos, self.config.freq_shift);
        let t_emb = sinusoidal(&vec![timestep; b], self.base_channels, flip, shift, dtype, device)?;
        let mut emb = self.time_embedding.forward(&t_emb, rows)?;
        match (&self.add_embedding, self.config.text_time, added) {
            (Some(add_embedding), Some(tt), Some((text_embeds, time_ids))) => {
                // The ids to the host (on a GPU, one copy: their embedding is computed there).
                let ids = time_ids.to_device(&Device::Cpu)?.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
                let time_emb = sinusoidal(&ids, tt.time_embed_dim, flip, shift, dtype, device)?.reshape((b, ()))?;
                let add = Tensor::cat(&[&text_embeds.to_dtype(dtype)?, &time_emb], D::Minus1)?;
                emb = (emb + add_embedding.forward(&add, rows)?)?;
            }
            (None, None, None) => {}
            // `Unet::forward_added` checks this first, with a message naming the model.
            _ => return Err(Error::Internal("added conditioning given to a UNet without text_time, or missing")),
        }

        // 2. – 6. as diffusers' UNet2DConditionModel; every resnet takes SiLU(emb), made once.
        let emb = candle_nn::ops::silu(&emb)?;
        let xs = self.conv_in.forward(&xs, rows)?;
        let mut res = vec![xs.clone()];
        let mut xs = xs;
        for block in &self.down {
            let (out, r) = block.forward(&xs, &emb, context, rows)?;
            res.extend(r);
            xs = out;
        }
        let xs = self.mid.resnet.forward(&xs, Some(&emb), rows)?;
        let xs = self.mid.attn.forward(&xs, context, rows)?;
        let mut xs = self.mid.resnet2.forward(&xs, Some(&emb), rows)?;
        let mut upsample_size = None;
        for (i, block) in self.up.iter().enumerate() {
            let split = res
                .len()
                .checked_sub(block.resnets.len())
                .ok_or(Error::Internal("the UNet's skip connections do not match its up blocks"))?;
            let r = res.split_off(split);
            if i < n - 1 && forward_upsample_size {
                if let Some(last) = res.last() {
                    let (_, _, h, w) = last.dims4()?;
                    upsample_size = Some((h, w));
                }
            }
            xs = block.forward(&xs, &r, &emb, context, upsample_size, rows)?;
        }
        let xs = self.conv_norm_out.forward(&xs, true)?;
        Ok(self.conv_out.forward(&xs, rows)?)
    }

    /// Visits every linear and convolution layer with its diffusers module path.
    pub(super) fn visit(&mut self, f: &mut Visitor) -> Result<()> {
        f("conv_in".into(), LayerMut::Conv(&mut self.conv_in))?;
        self.time_embedding.visit("time_embedding", f)?;
        if let Some(add) = &mut self.add_embedding {
            add.visit("add_embedding", f)?;
        }
        for (i, d) in self.down.iter_mut().enumerate() {
            d.visit(&format!("down_blocks.{i}"), f)?;
        }
        self.mid.resnet.visit("mid_block.resnets.0", f)?;
        self.mid.attn.visit("mid_block.attentions.0", f)?;
        self.mid.resnet2.visit("mid_block.resnets.1", f)?;
        for (i, u) in self.up.iter_mut().enumerate() {
            u.visit(&format!("up_blocks.{i}"), f)?;
        }
        f("conv_norm_out".into(), self.conv_norm_out.as_layer())?;
        f("conv_out".into(), LayerMut::Conv(&mut self.conv_out))
    }
}
