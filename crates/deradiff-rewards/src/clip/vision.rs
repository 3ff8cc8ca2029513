//! transformers' `CLIPVisionTransformer`: bias-free patch convolution, `class_embedding` (a
//! missing one is an error naming it, where candle-transformers fills it with random values),
//! position embeddings, `pre_layrnorm`, the encoder layers with the configured activation and
//! `post_layernorm` of the class token.

use candle_core::{Module, Tensor};
use candle_nn::{Conv2d, Embedding, LayerNorm, VarBuilder};
use deradiff_sd::clip::encoder::{EncoderLayer, EncoderSizes};
use deradiff_sd::clip::{ClipActivation, ClipVisionConfig};
use deradiff_sd::{Error, Result};

/// transformers' `CLIPVisionTransformer`: what `CLIPModel` projects with `visual_projection`.
pub struct ClipVisionModel {
    patch_embedding: Conv2d,
    class_embedding: Tensor,
    position_embedding: Embedding,
    pre_layrnorm: LayerNorm,
    layers: Vec<EncoderLayer>,
    post_layernorm: LayerNorm,
    config: ClipVisionConfig,
}

impl std::fmt::Debug for ClipVisionModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipVisionModel").field("config", &self.config).finish_non_exhaustive()
    }
}

impl ClipVisionModel {
    /// Builds the tower from `vb` at the `vision_model` prefix (children `embeddings`,
    /// `pre_layrnorm`, `encoder`, `post_layernorm`, transformers' names). Every tensor must be
    /// there: a missing `embeddings.class_embedding` is an error, not a random vector.
    pub fn new(vb: VarBuilder, config: &ClipVisionConfig, act: ClipActivation) -> candle_core::Result<Self> {
        let c = config;
        let h = c.hidden_size;
        let emb = vb.pp("embeddings");
        let conv = candle_nn::Conv2dConfig { stride: c.patch_size, ..Default::default() };
        let patch_embedding =
            candle_nn::conv2d_no_bias(c.num_channels, h, c.patch_size, conv, emb.pp("patch_embedding"))?;
        let class_embedding = emb.get(h, "class_embedding")?;
        let position_embedding = candle_nn::embedding(c.num_positions(), h, emb.pp("position_embedding"))?;
        let pre_layrnorm = candle_nn::layer_norm(h, c.layer_norm_eps, vb.pp("pre_layrnorm"))?;
        let enc = vb.pp("encoder").pp("layers");
        let sizes = EncoderSizes {
            hidden: h,
            intermediate: c.intermediate_size,
            heads: c.num_attention_heads,
            layer_norm_eps: c.layer_norm_eps,
        };
        let layers = (0..c.num_hidden_layers)
            .map(|i| EncoderLayer::new(enc.pp(i), sizes, act))
            .collect::<candle_core::Result<_>>()?;
        let post_layernorm = candle_nn::layer_norm(h, c.layer_norm_eps, vb.pp("post_layernorm"))?;
        Ok(Self {
            patch_embedding,
            class_embedding,
            position_embedding,
            pre_layrnorm,
            layers,
            post_layernorm,
            config: config.clone(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ClipVisionConfig {
        &self.config
    }

    /// The pooled output `[B, hidden]` (post-normed class token) for pixel values
    /// `[B, channels, image_size, image_size]`.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let cfg = &self.config;
        let dims = pixel_values.dims();
        let &[b, c, hgt, wid] = dims else {
            return Err(Self::pixel_shape_error(cfg, dims));
        };
        if c != cfg.num_channels || hgt != cfg.image_size || wid != cfg.image_size {
            return Err(Self::pixel_shape_error(cfg, dims));
        }
        let h = cfg.hidden_size;
        let dtype = self.class_embedding.dtype();
        let patches = self.patch_embedding.forward(&pixel_values.to_dtype(dtype)?)?.flatten_from(2)?.transpose(1, 2)?;
        let cls = self.class_embedding.reshape((1, 1, h))?.broadcast_as((b, 1, h))?;
        let x = Tensor::cat(&[&cls, &patches], 1)?;
        let x = x.broadcast_add(self.position_embedding.embeddings())?;
        let mut x = self.pre_layrnorm.forward(&x)?;
        for layer in &self.layers {
            x = layer.forward(&x, None)?;
        }
        Ok(self.post_layernorm.forward(&x.narrow(1, 0, 1)?.squeeze(1)?)?)
    }

    fn pixel_shape_error(cfg: &ClipVisionConfig, got: &[usize]) -> Error {
        Error::InvalidArgument(format!(
            "the CLIP vision model takes pixel values [B, {}, {}, {}], got {got:?}",
            cfg.num_channels, cfg.image_size, cfg.image_size
        ))
    }
}
