//! BLIP's `VisionTransformer` (models/BLIP/vit.py, timm's ViT): a biased patch convolution, the
//! class token, position embeddings, pre-norm blocks (the CLIP encoder layer, `qkv` split into
//! its three projections) and a final LayerNorm over every token. Its output — all tokens — is
//! what BLIP's text encoder attends to.

use candle_core::{Module, Tensor};
use candle_nn::{Conv2d, LayerNorm, Linear, VarBuilder};
use deradiff_sd::clip::encoder::{EncoderLayer, EncoderParts};
use deradiff_sd::clip::ClipActivation;
use deradiff_sd::{Error, Result};

use super::config::BlipVisionConfig;

/// BLIP's ViT (`visual_encoder.*`: `patch_embed.proj`, `cls_token`, `pos_embed`,
/// `blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}`, `norm`).
pub struct BlipVisionModel {
    patch_embed: Conv2d,
    cls_token: Tensor,
    pos_embed: Tensor,
    blocks: Vec<EncoderLayer>,
    norm: LayerNorm,
    config: BlipVisionConfig,
}

impl std::fmt::Debug for BlipVisionModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlipVisionModel").field("config", &self.config).finish_non_exhaustive()
    }
}

impl BlipVisionModel {
    /// Builds the ViT from `vb` at its prefix (`blip.visual_encoder` in ImageReward's state dict).
    pub fn new(vb: VarBuilder, config: &BlipVisionConfig) -> candle_core::Result<Self> {
        let c = config;
        let d = c.embed_dim;
        let eps = BlipVisionConfig::LAYER_NORM_EPS;
        let conv = candle_nn::Conv2dConfig { stride: c.patch_size, ..Default::default() };
        let patch_embed = candle_nn::conv2d(3, d, c.patch_size, conv, vb.pp("patch_embed").pp("proj"))?;
        let cls_token = vb.get((1, 1, d), "cls_token")?;
        let pos_embed = vb.get((1, c.num_tokens(), d), "pos_embed")?;
        let blocks = (0..c.depth)
            .map(|i| {
                let b = vb.pp("blocks").pp(i);
                let (qkv_w, qkv_b) = (b.get((3 * d, d), "attn.qkv.weight")?, b.get(3 * d, "attn.qkv.bias")?);
                let part = |k: usize| -> candle_core::Result<Linear> {
                    Ok(Linear::new(
                        qkv_w.narrow(0, k * d, d)?.contiguous()?,
                        Some(qkv_b.narrow(0, k * d, d)?.contiguous()?),
                    ))
                };
                let parts = EncoderParts {
                    q: part(0)?,
                    k: part(1)?,
                    v: part(2)?,
                    out: candle_nn::linear(d, d, b.pp("attn").pp("proj"))?,
                    ln1: candle_nn::layer_norm(d, eps, b.pp("norm1"))?,
                    fc1: candle_nn::linear(d, c.mlp_width(), b.pp("mlp").pp("fc1"))?,
                    fc2: candle_nn::linear(c.mlp_width(), d, b.pp("mlp").pp("fc2"))?,
                    ln2: candle_nn::layer_norm(d, eps, b.pp("norm2"))?,
                };
                EncoderLayer::from_parts(parts, c.num_heads, ClipActivation::Gelu)
            })
            .collect::<candle_core::Result<_>>()?;
        let norm = candle_nn::layer_norm(d, eps, vb.pp("norm"))?;
        Ok(Self { patch_embed, cls_token, pos_embed, blocks, norm, config: config.clone() })
    }

    /// The configuration.
    pub fn config(&self) -> &BlipVisionConfig {
        &self.config
    }

    /// The normalised hidden states of every token, `[B, 1 + patches, embed_dim]`, for pixel
    /// values `[B, 3, image_size, image_size]`.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        let dims = pixel_values.dims();
        let &[b, 3, h, w] = dims else {
            return Err(self.pixel_shape_error(dims));
        };
        if h != c.image_size || w != c.image_size || b == 0 {
            return Err(self.pixel_shape_error(dims));
        }
        let dtype = self.cls_token.dtype();
        let patches = self.patch_embed.forward(&pixel_values.to_dtype(dtype)?)?.flatten_from(2)?.transpose(1, 2)?;
        let cls = self.cls_token.broadcast_as((b, 1, c.embed_dim))?;
        let mut x = Tensor::cat(&[&cls, &patches], 1)?.broadcast_add(&self.pos_embed)?;
        for block in &self.blocks {
            x = block.forward(&x, None)?;
        }
        Ok(self.norm.forward(&x)?)
    }

    fn pixel_shape_error(&self, got: &[usize]) -> Error {
        let s = self.config.image_size;
        Error::InvalidArgument(format!("the BLIP vision model takes pixel values [B ≥ 1, 3, {s}, {s}], got {got:?}"))
    }
}
