//! BLIP's text encoder (models/BLIP/med.py `BertModel`, `add_pooling_layer=False`, mode
//! `multimodal`): word and absolute position embeddings (no token types) with a LayerNorm, then
//! post-norm BERT layers of self-attention over the prompt (padding masked with −10000 as med.py
//! does), cross-attention to the image's tokens and the feed-forward block.

use candle_core::{DType, Module, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};
use deradiff_sd::clip::encoder::linear;
use deradiff_sd::clip::ClipActivation;
use deradiff_sd::{Error, Result};

use super::config::MedConfig;

/// med.py's `BertSelfAttention` + `BertSelfOutput`: attention, then `LayerNorm(dense(·) + x)`.
struct Attention {
    query: Linear,
    key: Linear,
    value: Linear,
    dense: Linear,
    norm: LayerNorm,
    heads: usize,
}

impl Attention {
    fn new(vb: VarBuilder, c: &MedConfig, kv_width: usize) -> candle_core::Result<Self> {
        let h = c.hidden_size;
        let s = vb.pp("self");
        Ok(Self {
            query: candle_nn::linear(h, h, s.pp("query"))?,
            key: candle_nn::linear(kv_width, h, s.pp("key"))?,
            value: candle_nn::linear(kv_width, h, s.pp("value"))?,
            dense: candle_nn::linear(h, h, vb.pp("output").pp("dense"))?,
            norm: candle_nn::layer_norm(h, c.layer_norm_eps, vb.pp("output").pp("LayerNorm"))?,
            heads: c.num_attention_heads,
        })
    }

    /// `x` `[B, L, H]` attending to `kv` `[B, M, W]` with an additive `mask` `[B, 1, 1, M]` (f32).
    fn forward(&self, x: &Tensor, kv: &Tensor, mask: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let (b, l, h) = x.dims3()?;
        let m = kv.dim(1)?;
        let d = h / self.heads;
        let dtype = x.dtype();
        let split = |t: Tensor, n: usize| -> candle_core::Result<Tensor> {
            t.reshape((b, n, self.heads, d))?.transpose(1, 2)?.contiguous()?.to_dtype(DType::F32)
        };
        let q = split(linear(&self.query, x)?, l)?;
        let k = split(linear(&self.key, kv)?, m)?;
        let v = split(linear(&self.value, kv)?, m)?;
        // med.py: (q · kᵀ) / sqrt(d), plus the mask, softmax.
        let scores = (q.matmul(&k.t()?)? / (d as f64).sqrt())?;
        let scores = match mask {
            Some(mask) => scores.broadcast_add(mask)?,
            None => scores,
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let o = probs.matmul(&v)?.to_dtype(dtype)?.transpose(1, 2)?.reshape((b, l, h))?;
        self.norm.forward(&(linear(&self.dense, &o)? + x)?)
    }
}

/// One `encoder.layer.N`: `attention`, `crossattention`, `intermediate`, `output`.
struct Layer {
    attention: Attention,
    cross: Attention,
    intermediate: Linear,
    output: Linear,
    norm: LayerNorm,
    act: ClipActivation,
}

impl Layer {
    fn new(vb: VarBuilder, c: &MedConfig, encoder_width: usize, act: ClipActivation) -> candle_core::Result<Self> {
        let h = c.hidden_size;
        Ok(Self {
            attention: Attention::new(vb.pp("attention"), c, h)?,
            cross: Attention::new(vb.pp("crossattention"), c, encoder_width)?,
            intermediate: candle_nn::linear(h, c.intermediate_size, vb.pp("intermediate").pp("dense"))?,
            output: candle_nn::linear(c.intermediate_size, h, vb.pp("output").pp("dense"))?,
            norm: candle_nn::layer_norm(h, c.layer_norm_eps, vb.pp("output").pp("LayerNorm"))?,
            act,
        })
    }

    fn forward(&self, x: &Tensor, mask: &Tensor, image: &Tensor) -> candle_core::Result<Tensor> {
        let x = self.attention.forward(x, x, Some(mask))?;
        let x = self.cross.forward(&x, image, None)?;
        let y = linear(&self.output, &self.act.forward(&linear(&self.intermediate, &x)?)?)?;
        self.norm.forward(&(y + x)?)
    }
}

/// BLIP's BERT text encoder with cross-attention (`text_encoder.*` in BLIP's names:
/// `embeddings.{word_embeddings, position_embeddings, LayerNorm}`, `encoder.layer.N.*`).
pub struct BlipTextModel {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    norm: LayerNorm,
    layers: Vec<Layer>,
    config: MedConfig,
    encoder_width: usize,
}

impl std::fmt::Debug for BlipTextModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlipTextModel")
            .field("config", &self.config)
            .field("encoder_width", &self.encoder_width)
            .finish_non_exhaustive()
    }
}

impl BlipTextModel {
    /// Builds the encoder from `vb` at its prefix (`blip.text_encoder` in ImageReward's state
    /// dict); `encoder_width` is the image tokens' width (the ViT's `embed_dim`), which replaces
    /// the config's `encoder_width` as BLIP_Pretrain does. `config` must be validated; `act` is
    /// its `hidden_act` ([`MedConfig::activation`]), as the CLIP towers take theirs.
    pub fn new(
        vb: VarBuilder,
        config: &MedConfig,
        encoder_width: usize,
        act: ClipActivation,
    ) -> candle_core::Result<Self> {
        let c = config;
        let emb = vb.pp("embeddings");
        let word_embeddings = candle_nn::embedding(c.vocab_size, c.hidden_size, emb.pp("word_embeddings"))?;
        let position_embeddings =
            candle_nn::embedding(c.max_position_embeddings, c.hidden_size, emb.pp("position_embeddings"))?;
        let norm = candle_nn::layer_norm(c.hidden_size, c.layer_norm_eps, emb.pp("LayerNorm"))?;
        let layers = (0..c.num_hidden_layers)
            .map(|i| Layer::new(vb.pp("encoder").pp("layer").pp(i), c, encoder_width, act))
            .collect::<candle_core::Result<_>>()?;
        Ok(Self { word_embeddings, position_embeddings, norm, layers, config: config.clone(), encoder_width })
    }

    /// The configuration.
    pub fn config(&self) -> &MedConfig {
        &self.config
    }

    /// The last hidden states `[B, L, hidden]` of token ids `[B, L]` (u32) with an attention
    /// mask `[B, L]` (1 for tokens, 0 for padding; u32) over image tokens `[B, M, encoder_width]`
    /// (all attended to, as ImageReward's all-ones image mask gives).
    pub fn forward(&self, ids: &Tensor, attention_mask: &Tensor, image_embeds: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        let (b, l) = ids.dims2().map_err(|_| shape("ids", "[B, L]", ids.dims()))?;
        if l == 0 || l > c.max_position_embeddings {
            return Err(shape("ids", format!("[B, 1..={}]", c.max_position_embeddings), ids.dims()));
        }
        if attention_mask.dims() != [b, l] {
            return Err(shape("attention_mask", format!("[{b}, {l}]"), attention_mask.dims()));
        }
        let image_dims = image_embeds.dims();
        if image_dims.len() != 3 || image_dims[0] != b || image_dims[2] != self.encoder_width || image_dims[1] == 0 {
            return Err(shape("image_embeds", format!("[{b}, M ≥ 1, {}]", self.encoder_width), image_dims));
        }
        let ids_cpu: Vec<u32> = ids.to_dtype(DType::U32)?.flatten_all()?.to_vec1()?;
        if let Some(bad) = ids_cpu.iter().find(|&&i| i as usize >= c.vocab_size) {
            return Err(Error::InvalidArgument(format!(
                "BlipTextModel::forward: token id {bad} is outside the vocabulary of {}",
                c.vocab_size
            )));
        }
        let dtype = self.norm.weight().dtype();
        let device = ids.device();
        let words = self.word_embeddings.forward(&ids.to_dtype(DType::U32)?)?;
        let positions = self.position_embeddings.embeddings().narrow(0, 0, l)?;
        let mut x = self.norm.forward(&words.broadcast_add(&positions)?)?;
        // med.py's extended mask: (1 − mask) · −10000, broadcast over heads and queries.
        let mask = ((attention_mask.to_dtype(DType::F32)?.affine(-1.0, 1.0)? * -10000.0)?)
            .reshape((b, 1, 1, l))?
            .to_device(device)?;
        let image = image_embeds.to_dtype(dtype)?;
        for layer in &self.layers {
            x = layer.forward(&x, &mask, &image)?;
        }
        Ok(x)
    }
}

fn shape(arg: &str, expected: impl Into<String>, got: &[usize]) -> Error {
    Error::shape(format!("BlipTextModel::forward `{arg}`"), expected, got)
}
