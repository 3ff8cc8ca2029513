//! The CLIP text transformer (Stable Diffusion's text encoders, and the text tower of CLIP
//! rewards), configured from the checkpoint's own
//! `text_encoder/config.json`.
//!
//! candle-transformers' `stable_diffusion::clip::ClipTextTransformer` only takes its private
//! preset configs (and uses the tanh GELU where transformers' `"gelu"` is exact), so this is a
//! small reimplementation of transformers' `CLIPTextModel` with every size, the activation and
//! the LayerNorm epsilon read from the config. Weight names are transformers' own
//! (`text_model.embeddings.token_embedding.weight`, …).

use candle_core::{Device, Module, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};

use super::config::{ClipActivation, ClipTextConfig};
use super::encoder::{linear, EncoderLayer, EncoderSizes};

/// What one pass of the text model gives: the hidden states SD and SDXL condition on and the
/// pooled output.
#[derive(Debug, Clone)]
pub struct ClipOutput {
    /// Last hidden states after the final LayerNorm `[B, L, hidden]` (SD 1.x / 2.x).
    pub last_hidden: Tensor,
    /// transformers' `hidden_states[-2]`: the output of the second-to-last layer, before the
    /// final LayerNorm `[B, L, hidden]` (what SDXL conditions on).
    pub penultimate: Tensor,
    /// The final-normed hidden state at each sequence's end-of-text position `[B, hidden]`.
    pub pooled: Tensor,
    /// `text_projection(pooled)` `[B, projection_dim]` for a `CLIPTextModelWithProjection`
    /// (SDXL's pooled text embedding), else `None`.
    pub text_embeds: Option<Tensor>,
}

/// transformers' `CLIPTextModel` (or `CLIPTextModelWithProjection`, with `text_projection`).
pub struct ClipTextModel {
    token_embedding: Embedding,
    position_embedding: Embedding,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
    text_projection: Option<Linear>,
    config: ClipTextConfig,
}

impl std::fmt::Debug for ClipTextModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTextModel").field("config", &self.config).finish_non_exhaustive()
    }
}

impl ClipTextModel {
    /// Builds the model from `vb` positioned at the `text_model` prefix (its children are
    /// `embeddings`, `encoder`, `final_layer_norm`). The config must have been validated.
    pub fn new(vb: VarBuilder, config: &ClipTextConfig, act: ClipActivation) -> candle_core::Result<Self> {
        let h = config.hidden_size;
        let emb = vb.pp("embeddings");
        let token_embedding = candle_nn::embedding(config.vocab_size, h, emb.pp("token_embedding"))?;
        let position_embedding = candle_nn::embedding(config.max_position_embeddings, h, emb.pp("position_embedding"))?;
        let enc = vb.pp("encoder").pp("layers");
        let sizes = EncoderSizes {
            hidden: h,
            intermediate: config.intermediate_size,
            heads: config.num_attention_heads,
            layer_norm_eps: config.layer_norm_eps,
        };
        let layers = (0..config.num_hidden_layers)
            .map(|i| EncoderLayer::new(enc.pp(i), sizes, act))
            .collect::<candle_core::Result<_>>()?;
        let final_layer_norm = candle_nn::layer_norm(h, config.layer_norm_eps, vb.pp("final_layer_norm"))?;
        Ok(Self {
            token_embedding,
            position_embedding,
            layers,
            final_layer_norm,
            text_projection: None,
            config: config.clone(),
        })
    }

    /// A `CLIPTextModelWithProjection`: `vb` at the root of its weights (children `text_model`
    /// and `text_projection`, bias-free, `[projection_dim, hidden]`).
    pub fn new_with_projection(
        vb: VarBuilder,
        config: &ClipTextConfig,
        act: ClipActivation,
    ) -> candle_core::Result<Self> {
        let mut model = Self::new(vb.pp("text_model"), config, act)?;
        model.text_projection =
            Some(candle_nn::linear_no_bias(config.hidden_size, config.projection_dim, vb.pp("text_projection"))?);
        Ok(model)
    }

    /// Whether it has `text_projection`.
    pub fn has_projection(&self) -> bool {
        self.text_projection.is_some()
    }

    /// The configuration.
    pub fn config(&self) -> &ClipTextConfig {
        &self.config
    }

    /// Last hidden states `[B, L, hidden]` for token ids `[B, L]` (u32), with CLIP's causal mask
    /// and no padding mask (as SD pipelines call it).
    pub fn forward(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let (x, _) = self.hidden(ids)?;
        self.final_layer_norm.forward(&x)
    }

    /// Output of the last layer and of the one before it (the embeddings for a one-layer model).
    fn hidden(&self, ids: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let (_b, l) = ids.dims2()?;
        let device = ids.device();
        let positions = Tensor::arange(0u32, l as u32, device)?;
        let x = self.token_embedding.forward(ids)?.broadcast_add(&self.position_embedding.forward(&positions)?)?;
        let mask = causal_mask(l, device)?;
        let mut x = x;
        let mut before = x.clone();
        for layer in &self.layers {
            before = x.clone();
            x = layer.forward(&x, Some(&mask))?;
        }
        Ok((x, before))
    }

    /// Last and penultimate hidden states, the pooled output and (with a projection) the
    /// projected pooled output, as transformers computes them, for token ids `[B, L]` (u32).
    /// The pooled position is the first end-of-text id (`config.eos_token_id`), or, with
    /// transformers' legacy `eos_token_id = 2`, the argmax of the ids.
    pub fn forward_all(&self, ids: &Tensor) -> candle_core::Result<ClipOutput> {
        let (b, l) = ids.dims2()?;
        let (x, penultimate) = self.hidden(ids)?;
        let last_hidden = self.final_layer_norm.forward(&x)?;
        let rows: Vec<Vec<u32>> = ids.to_vec2()?;
        let eos = self.config.eos_token_id;
        let positions: Vec<u32> = rows
            .iter()
            .map(|row| {
                let pos = if eos == 2 {
                    // torch.argmax: the first maximal element.
                    let max = row.iter().copied().max().unwrap_or(0);
                    row.iter().position(|&v| v == max).unwrap_or(0)
                } else {
                    row.iter().position(|&v| i64::from(v) == eos).unwrap_or(0)
                };
                (pos.min(l.saturating_sub(1))) as u32
            })
            .collect();
        let h = last_hidden.dim(2)?;
        let flat = last_hidden.reshape((b * l, h))?;
        let index: Vec<u32> = positions.iter().enumerate().map(|(i, &p)| i as u32 * l as u32 + p).collect();
        let pooled = flat.index_select(&Tensor::new(index, ids.device())?, 0)?;
        let text_embeds = self.text_projection.as_ref().map(|p| linear(p, &pooled)).transpose()?;
        Ok(ClipOutput { last_hidden, penultimate, pooled, text_embeds })
    }
}

/// `mask[i][j] = −∞` for `j > i`, else 0 (f32).
fn causal_mask(l: usize, device: &Device) -> candle_core::Result<Tensor> {
    let data: Vec<f32> =
        (0..l).flat_map(|i| (0..l).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 })).collect();
    Tensor::from_vec(data, (l, l), device)
}
