//! CLIP score and PickScore: text–image [`Reward`]s from any Hugging Face `CLIPModel` checkpoint
//! in safetensors.
//!
//! candle-transformers 0.11's `models::clip` hard-wires quick-GELU into its text tower and fills a
//! missing `class_embedding` with random values, so this module has its own `CLIPModel`,
//! following transformers' tensor names:
//!
//! * the text tower is deradiff-sd's [`ClipTextModel`] (`text_model.*`, activation from the
//!   config, pooled at the end-of-text token) and `text_projection`;
//! * the vision tower ([`ClipVisionModel`]) is transformers' `CLIPVisionTransformer`:
//!   bias-free patch convolution, `class_embedding` (a missing one is an error naming it),
//!   position embeddings, `pre_layrnorm`, encoder layers with the configured activation,
//!   `post_layernorm` of the class token; then `visual_projection`;
//! * `logit_scale`, read from the weights.
//!
//! Every size (widths, depths, heads, patch and image size, projection) and each tower's
//! `hidden_act` (`quick_gelu`, `gelu` — exact —, `gelu_new` / `gelu_pytorch_tanh`) comes from the
//! checkpoint's `config.json` ([`ClipModelConfig`]), so OpenAI's ViT-B/L (quick-GELU) and
//! OpenCLIP's ViT-H/14 behind `yuvalkirstain/PickScore_v1` (exact GELU) load alike.
//!
//! Images are preprocessed as transformers' `CLIPImageProcessor` does with its PIL backend
//! ([`ClipPreprocessor`], from `preprocessor_config.json` when the checkpoint has one): resize of
//! the shortest side with PIL's own resampling (same fixed-point arithmetic, so the resized
//! 8-bit pixels are bit-identical), center crop, rescale by 1/255, normalisation by the
//! processor's mean and std.
//!
//! Scores, for image i and prompt i of a batch ([`ClipScorer::cosine`] is the common part):
//!
//! * [`ClipScore`]: `100 · max(cos(image, text), 0)`, torchmetrics' `CLIPScore` per sample
//!   (its batch value is the mean of these);
//! * [`PickScore`]: `exp(logit_scale) · cos(image, text)`, as the PickScore_v1 model card
//!   computes it (the logits of `CLIPModel`; not a softmax over a set of images).
//!
//! Checked against transformers 5 on tiny random `CLIPModel`s with quick-GELU and exact GELU
//! (`scripts/gen_clip_fixtures.py`, `tests/clip_reward.rs`): embeddings within 1e-6, scores
//! within 2e-5, preprocessed pixels identical.
//!
//! ```
//! use std::sync::Arc;
//! use candle_core::{DType, Device, Tensor};
//! use deradiff_tune::{ClipScore, ClipScorer, PickScore, Reward};
//!
//! let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/clip/clip-gelu");
//! let scorer = Arc::new(ClipScorer::load(dir, DType::F32, &Device::Cpu)?);
//! let (clip, pick) = (ClipScore::new(scorer.clone()), PickScore::new(scorer));
//! // Two decoded images in [-1, 1] (as a VAE gives them), one prompt each.
//! let images = Tensor::zeros((2, 3, 32, 32), DType::F32, &Device::Cpu)?;
//! let prompts = ["a red cube", "a blue sphere"];
//! let s = clip.score(&images, Some(&prompts))?;
//! assert!(s.iter().all(|v| (0.0..=100.0).contains(v)));
//! assert_eq!(pick.score(&images, Some(&prompts))?.len(), 2);
//! # Ok::<(), deradiff_tune::Error>(())
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Conv2d, Embedding, LayerNorm, Linear, VarBuilder};
use deradiff_sd::{load_checked, ClipActivation, ClipTextConfig, ClipTextModel, ClipTokenizer, RgbImage};
use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::reward::Reward;

/// OpenAI CLIP's normalisation mean (transformers' `OPENAI_CLIP_MEAN`).
pub const OPENAI_CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
/// OpenAI CLIP's normalisation standard deviation (transformers' `OPENAI_CLIP_STD`).
pub const OPENAI_CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

/// An error of deradiff-sd (weights, config, tokenizer) as an error of this crate.
fn sd_err(e: deradiff_sd::Error) -> Error {
    Error::user(e)
}

fn config_err(path: &Path, message: impl Into<String>) -> Error {
    sd_err(deradiff_sd::Error::Config { path: path.to_path_buf(), message: message.into() })
}

fn read_text(path: &Path, what: &str) -> Result<String> {
    if !path.is_file() {
        return Err(sd_err(deradiff_sd::Error::NotFound { what: what.into(), path: path.to_path_buf() }));
    }
    std::fs::read_to_string(path).map_err(Error::io(path))
}

/// Drops `null` entries (transformers writes many; they mean "the default").
fn without_nulls(v: &Value) -> Value {
    match v {
        Value::Object(o) => {
            Value::Object(o.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), v.clone())).collect())
        }
        other => other.clone(),
    }
}

fn activation(name: &str, path: &Path, tower: &str) -> Result<ClipActivation> {
    match name {
        "quick_gelu" => Ok(ClipActivation::QuickGelu),
        "gelu" => Ok(ClipActivation::Gelu),
        "gelu_new" | "gelu_pytorch_tanh" => Ok(ClipActivation::GeluTanh),
        other => Err(sd_err(deradiff_sd::Error::Unsupported {
            path: path.to_path_buf(),
            message: format!(
                "{tower}.hidden_act = {other}: supported are quick_gelu, gelu, gelu_new, gelu_pytorch_tanh"
            ),
        })),
    }
}

fn act_forward(act: ClipActivation, y: &Tensor) -> candle_core::Result<Tensor> {
    match act {
        ClipActivation::QuickGelu => y * candle_nn::ops::sigmoid(&(y * 1.702)?)?,
        ClipActivation::Gelu => y.gelu_erf(),
        ClipActivation::GeluTanh => y.gelu(),
    }
}

// ------------------------------------------------------------------------------------------------
// Configuration
// ------------------------------------------------------------------------------------------------

/// The `vision_config` of a transformers `CLIPConfig` (`CLIPVisionConfig`; missing fields take
/// transformers' defaults, unknown ones are ignored).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct ClipVisionConfig {
    /// Width of the hidden states.
    pub hidden_size: usize,
    /// Width of the MLPs.
    pub intermediate_size: usize,
    /// Number of encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Input channels (3).
    pub num_channels: usize,
    /// Height and width of the input images.
    pub image_size: usize,
    /// Height and width of a patch (the stride of the patch convolution).
    pub patch_size: usize,
    /// `quick_gelu`, `gelu`, `gelu_new` or `gelu_pytorch_tanh`.
    pub hidden_act: String,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
}

impl Default for ClipVisionConfig {
    /// transformers' `CLIPVisionConfig()` defaults (ViT-B/32).
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
        }
    }
}

impl ClipVisionConfig {
    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size.max(1)
    }

    /// Positions: one per patch plus the class token.
    pub fn num_positions(&self) -> usize {
        self.grid() * self.grid() + 1
    }
}

/// A transformers `CLIPModel` `config.json`: both towers, the projection width and each tower's
/// activation, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipModelConfig {
    /// The text tower (its `projection_dim` is the model's).
    pub text: ClipTextConfig,
    /// The vision tower.
    pub vision: ClipVisionConfig,
    /// Width of the joint embedding space (`projection_dim` at the top level).
    pub projection_dim: usize,
    /// The text tower's activation.
    pub text_act: ClipActivation,
    /// The vision tower's activation.
    pub vision_act: ClipActivation,
}

/// `config[key]`, with the legacy `{key}_dict` (older transformers) merged over it, as
/// transformers' `CLIPConfig` does; `null` entries dropped.
fn sub_config(root: &serde_json::Map<String, Value>, key: &str, path: &Path) -> Result<Value> {
    let mut merged = serde_json::Map::new();
    for k in [key.to_string(), format!("{key}_dict")] {
        match root.get(&k) {
            None | Some(Value::Null) => {}
            Some(Value::Object(o)) => {
                if let Value::Object(clean) = without_nulls(&Value::Object(o.clone())) {
                    merged.extend(clean);
                }
            }
            Some(other) => return Err(config_err(path, format!("`{k}` must be an object, got {other}"))),
        }
    }
    Ok(Value::Object(merged))
}

impl ClipModelConfig {
    /// Reads and checks a `CLIPModel` `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = read_text(path, "CLIP model config")?;
        Self::from_json(&text, path)
    }

    /// Parses and checks a `config.json` document (`path` is only used in error messages).
    pub fn from_json(json: &str, path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let root = match serde_json::from_str::<Value>(json) {
            Ok(Value::Object(o)) => o,
            Ok(_) => return Err(config_err(path, "expected a JSON object")),
            Err(e) => return Err(config_err(path, e.to_string())),
        };
        if let Some(t) = root.get("model_type").and_then(Value::as_str) {
            if t != "clip" {
                return Err(config_err(
                    path,
                    format!("model_type is {t:?}; a CLIPModel checkpoint (model_type \"clip\") is needed"),
                ));
            }
        }
        let text_value = sub_config(&root, "text_config", path)?;
        let vision_value = sub_config(&root, "vision_config", path)?;
        let mut text: ClipTextConfig =
            serde_json::from_value(text_value).map_err(|e| config_err(path, format!("text_config: {e}")))?;
        let vision: ClipVisionConfig =
            serde_json::from_value(vision_value).map_err(|e| config_err(path, format!("vision_config: {e}")))?;
        let projection_dim = match root.get("projection_dim") {
            None | Some(Value::Null) => 512,
            Some(v) => v
                .as_u64()
                .map(|p| p as usize)
                .ok_or_else(|| config_err(path, format!("`projection_dim` must be a positive integer, got {v}")))?,
        };
        if projection_dim == 0 {
            return Err(config_err(path, "`projection_dim` must be positive"));
        }
        text.projection_dim = projection_dim;
        let text_act = activation(&text.hidden_act, path, "text_config")?;
        let vision_act = activation(&vision.hidden_act, path, "vision_config")?;
        text.validate(path).map_err(sd_err)?;
        if text.num_hidden_layers == 0 {
            return Err(config_err(path, "text_config.num_hidden_layers must be positive"));
        }
        let v = &vision;
        for (name, value) in [
            ("hidden_size", v.hidden_size),
            ("intermediate_size", v.intermediate_size),
            ("num_hidden_layers", v.num_hidden_layers),
            ("num_attention_heads", v.num_attention_heads),
            ("num_channels", v.num_channels),
            ("image_size", v.image_size),
            ("patch_size", v.patch_size),
        ] {
            if value == 0 {
                return Err(config_err(path, format!("vision_config.{name} must be positive")));
            }
        }
        if !v.hidden_size.is_multiple_of(v.num_attention_heads) {
            return Err(config_err(
                path,
                format!(
                    "vision_config.hidden_size {} is not divisible by {} heads",
                    v.hidden_size, v.num_attention_heads
                ),
            ));
        }
        if v.patch_size > v.image_size {
            return Err(config_err(
                path,
                format!("vision_config.patch_size {} is larger than image_size {}", v.patch_size, v.image_size),
            ));
        }
        if !(v.layer_norm_eps > 0.0 && v.layer_norm_eps.is_finite()) {
            return Err(config_err(path, "vision_config.layer_norm_eps must be positive"));
        }
        Ok(Self { text, vision, projection_dim, text_act, vision_act })
    }
}

// ------------------------------------------------------------------------------------------------
// Vision tower
// ------------------------------------------------------------------------------------------------

struct VisionLayer {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    ln1: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    ln2: LayerNorm,
    act: ClipActivation,
    heads: usize,
    head_dim: usize,
    scale: f64,
}

impl VisionLayer {
    fn new(vb: VarBuilder, c: &ClipVisionConfig, act: ClipActivation) -> candle_core::Result<Self> {
        let h = c.hidden_size;
        let head_dim = h / c.num_attention_heads;
        let attn = vb.pp("self_attn");
        Ok(Self {
            q: candle_nn::linear(h, h, attn.pp("q_proj"))?,
            k: candle_nn::linear(h, h, attn.pp("k_proj"))?,
            v: candle_nn::linear(h, h, attn.pp("v_proj"))?,
            out: candle_nn::linear(h, h, attn.pp("out_proj"))?,
            ln1: candle_nn::layer_norm(h, c.layer_norm_eps, vb.pp("layer_norm1"))?,
            fc1: candle_nn::linear(h, c.intermediate_size, vb.pp("mlp").pp("fc1"))?,
            fc2: candle_nn::linear(c.intermediate_size, h, vb.pp("mlp").pp("fc2"))?,
            ln2: candle_nn::layer_norm(h, c.layer_norm_eps, vb.pp("layer_norm2"))?,
            act,
            heads: c.num_attention_heads,
            head_dim,
            scale: (head_dim as f64).powf(-0.5),
        })
    }

    /// Unmasked self-attention (softmax in f32) and MLP, pre-norm, with residuals.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, l, h) = x.dims3()?;
        let dtype = x.dtype();
        let y = self.ln1.forward(x)?;
        let split = |t: Tensor| -> candle_core::Result<Tensor> {
            t.reshape((b, l, self.heads, self.head_dim))?.transpose(1, 2)?.contiguous()?.to_dtype(DType::F32)
        };
        let q = split((self.q.forward(&y)? * self.scale)?)?;
        let k = split(self.k.forward(&y)?)?;
        let v = split(self.v.forward(&y)?)?;
        let probs = candle_nn::ops::softmax_last_dim(&q.matmul(&k.t()?)?)?;
        let o = probs.matmul(&v)?.to_dtype(dtype)?.transpose(1, 2)?.reshape((b, l, h))?;
        let x = (self.out.forward(&o)? + x)?;
        let y = act_forward(self.act, &self.fc1.forward(&self.ln2.forward(&x)?)?)?;
        self.fc2.forward(&y)? + x
    }
}

/// transformers' `CLIPVisionTransformer`: what `CLIPModel` projects with `visual_projection`.
pub struct ClipVisionModel {
    patch_embedding: Conv2d,
    class_embedding: Tensor,
    position_embedding: Embedding,
    pre_layrnorm: LayerNorm,
    layers: Vec<VisionLayer>,
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
        let layers = (0..c.num_hidden_layers)
            .map(|i| VisionLayer::new(enc.pp(i), c, act))
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
    pub fn forward(&self, pixel_values: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, hgt, wid) = pixel_values.dims4()?;
        let cfg = &self.config;
        if c != cfg.num_channels || hgt != cfg.image_size || wid != cfg.image_size {
            return Err(candle_core::Error::Msg(format!(
                "the CLIP vision model takes pixel values [B, {}, {}, {}], got {:?}",
                cfg.num_channels,
                cfg.image_size,
                cfg.image_size,
                pixel_values.dims()
            )));
        }
        let h = cfg.hidden_size;
        let dtype = self.class_embedding.dtype();
        let patches = self.patch_embedding.forward(&pixel_values.to_dtype(dtype)?)?.flatten_from(2)?.transpose(1, 2)?;
        let cls = self.class_embedding.reshape((1, 1, h))?.broadcast_as((b, 1, h))?;
        let x = Tensor::cat(&[&cls, &patches], 1)?;
        let x = x.broadcast_add(self.position_embedding.embeddings())?;
        let mut x = self.pre_layrnorm.forward(&x)?;
        for layer in &self.layers {
            x = layer.forward(&x)?;
        }
        self.post_layernorm.forward(&x.narrow(1, 0, 1)?.squeeze(1)?)
    }
}

// ------------------------------------------------------------------------------------------------
// CLIPModel
// ------------------------------------------------------------------------------------------------

/// transformers' `CLIPModel`: text and vision towers, their projections into the joint space and
/// the learned logit scale.
pub struct ClipModel {
    text: ClipTextModel,
    vision: ClipVisionModel,
    visual_projection: Linear,
    logit_scale: f64,
    config: ClipModelConfig,
}

impl std::fmt::Debug for ClipModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipModel")
            .field("config", &self.config)
            .field("logit_scale", &self.logit_scale)
            .finish_non_exhaustive()
    }
}

impl ClipModel {
    /// Builds the model from `vb` at the root of a `CLIPModel`'s weights (`text_model.*`,
    /// `vision_model.*`, `text_projection.weight`, `visual_projection.weight`, `logit_scale`).
    /// `logit_scale` is read in f32 whatever `vb`'s dtype.
    pub fn new(vb: VarBuilder, config: &ClipModelConfig) -> candle_core::Result<Self> {
        let text = ClipTextModel::new_with_projection(vb.clone(), &config.text, config.text_act)?;
        let vision = ClipVisionModel::new(vb.pp("vision_model"), &config.vision, config.vision_act)?;
        let visual_projection =
            candle_nn::linear_no_bias(config.vision.hidden_size, config.projection_dim, vb.pp("visual_projection"))?;
        let logit_scale = vb.get_with_hints_dtype((), "logit_scale", Default::default(), DType::F32)?;
        let logit_scale = f64::from(logit_scale.to_device(&Device::Cpu)?.to_scalar::<f32>()?);
        Ok(Self { text, vision, visual_projection, logit_scale, config: config.clone() })
    }

    /// Loads a `CLIPModel` directory: `config.json` and `model.safetensors` (or its shards);
    /// a missing or misshapen tensor is an error naming the file and the tensor.
    pub fn load(dir: impl AsRef<Path>, dtype: DType, device: &Device) -> Result<Self> {
        let dir = dir.as_ref();
        let config = ClipModelConfig::from_file(dir.join("config.json"))?;
        load_checked(dir, "model", "CLIP model", dtype, device, |vb| Self::new(vb, &config)).map_err(sd_err)
    }

    /// The configuration.
    pub fn config(&self) -> &ClipModelConfig {
        &self.config
    }

    /// The text tower (with its projection).
    pub fn text_model(&self) -> &ClipTextModel {
        &self.text
    }

    /// The vision tower.
    pub fn vision_model(&self) -> &ClipVisionModel {
        &self.vision
    }

    /// The raw learned `logit_scale` (the logits multiply cosines by its exponential).
    pub fn logit_scale(&self) -> f64 {
        self.logit_scale
    }

    /// `get_image_features`: projected, unnormalised image embeddings `[B, projection_dim]`.
    pub fn image_features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        Ok(self.visual_projection.forward(&self.vision.forward(pixel_values)?)?)
    }

    /// `get_text_features`: projected, unnormalised text embeddings `[B, projection_dim]` of
    /// token ids `[B, L]` (u32; `[bos] tokens… [eos] [pad]…`, the pooled position is the
    /// end-of-text token).
    pub fn text_features(&self, ids: &Tensor) -> Result<Tensor> {
        self.text
            .forward_all(ids)?
            .text_embeds
            .ok_or_else(|| Error::InvalidArgument("the CLIP text tower has no projection".into()))
    }

    /// `logits_per_image` `[B_images, B_texts]`: `exp(logit_scale)` times the cosine similarity
    /// of every image with every text.
    pub fn logits_per_image(&self, pixel_values: &Tensor, ids: &Tensor) -> Result<Tensor> {
        let normalise = |t: Tensor| -> candle_core::Result<Tensor> {
            let t = t.to_dtype(DType::F32)?;
            t.broadcast_div(&t.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?)
        };
        let img = normalise(self.image_features(pixel_values)?)?;
        let txt = normalise(self.text_features(ids)?)?;
        Ok((img.matmul(&txt.t()?)? * self.logit_scale.exp())?)
    }
}

// ------------------------------------------------------------------------------------------------
// Preprocessing
// ------------------------------------------------------------------------------------------------

/// PIL's resampling filters (the `resample` code of `preprocessor_config.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    /// `1`: Lanczos (support 3).
    Lanczos,
    /// `2`: bilinear (triangle, support 1).
    Bilinear,
    /// `3`: bicubic, a = −0.5 (CLIP's).
    Bicubic,
    /// `4`: box.
    Box,
    /// `5`: Hamming.
    Hamming,
}

impl Resample {
    /// From PIL's code (`0`, nearest, is not supported).
    pub fn from_pil(code: u64) -> Option<Self> {
        match code {
            1 => Some(Self::Lanczos),
            2 => Some(Self::Bilinear),
            3 => Some(Self::Bicubic),
            4 => Some(Self::Box),
            5 => Some(Self::Hamming),
            _ => None,
        }
    }

    fn support(self) -> f64 {
        match self {
            Self::Lanczos => 3.0,
            Self::Bilinear | Self::Hamming => 1.0,
            Self::Bicubic => 2.0,
            Self::Box => 0.5,
        }
    }

    /// PIL's `*_filter` functions (`libImaging/Resample.c`).
    fn filter(self, x: f64) -> f64 {
        let sinc = |x: f64| {
            if x == 0.0 {
                1.0
            } else {
                let x = x * std::f64::consts::PI;
                x.sin() / x
            }
        };
        match self {
            Self::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Self::Bilinear => {
                let x = x.abs();
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Self::Hamming => {
                let x = x.abs();
                if x == 0.0 {
                    1.0
                } else if x >= 1.0 {
                    0.0
                } else {
                    let x = x * std::f64::consts::PI;
                    x.sin() / x * (f64::from(0.54f32) + f64::from(0.46f32) * x.cos())
                }
            }
            Self::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Self::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// PIL's `precompute_coeffs` + `normalize_coeffs_8bpc`: for each output index, the first input
/// index and the fixed-point weights.
fn coefficients(in_size: usize, out_size: usize, filter: Resample) -> Vec<(usize, Vec<i64>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            // C's (int) truncates toward zero.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64).max(xmin as i64) as usize - xmin;
            let mut w: Vec<f64> =
                (0..xmax).map(|x| filter.filter((x as f64 + xmin as f64 - center + 0.5) * ss)).collect();
            let total: f64 = w.iter().sum();
            if total != 0.0 {
                for v in &mut w {
                    *v /= total;
                }
            }
            let one = f64::from(1u32 << PRECISION_BITS);
            let k = w.iter().map(|&v| if v < 0.0 { (-0.5 + v * one) as i64 } else { (0.5 + v * one) as i64 }).collect();
            (xmin, k)
        })
        .collect()
}

fn clip8(v: i64) -> u8 {
    if v >= (1i64 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// Resizes interleaved RGB bytes exactly as PIL's `Image.resize(size, filter)` does for an RGB
/// image: a horizontal pass, then a vertical one, each with PIL's fixed-point weights and
/// rounding to 8 bits in between.
fn resize_rgb(src: &[u8], w: usize, h: usize, out_w: usize, out_h: usize, filter: Resample) -> Vec<u8> {
    let mut data = src.to_vec();
    let mut cur_w = w;
    if out_w != w {
        let coeffs = coefficients(w, out_w, filter);
        let mut out = vec![0u8; out_w * h * 3];
        for y in 0..h {
            for (xx, (xmin, k)) in coeffs.iter().enumerate() {
                for c in 0..3 {
                    let mut ss = 1i64 << (PRECISION_BITS - 1);
                    for (x, &kx) in k.iter().enumerate() {
                        ss += i64::from(data[(y * cur_w + xmin + x) * 3 + c]) * kx;
                    }
                    out[(y * out_w + xx) * 3 + c] = clip8(ss);
                }
            }
        }
        data = out;
        cur_w = out_w;
    }
    if out_h != h {
        let coeffs = coefficients(h, out_h, filter);
        let mut out = vec![0u8; cur_w * out_h * 3];
        for (yy, (ymin, k)) in coeffs.iter().enumerate() {
            for x in 0..cur_w {
                for c in 0..3 {
                    let mut ss = 1i64 << (PRECISION_BITS - 1);
                    for (y, &ky) in k.iter().enumerate() {
                        ss += i64::from(data[((ymin + y) * cur_w + x) * 3 + c]) * ky;
                    }
                    out[(yy * cur_w + x) * 3 + c] = clip8(ss);
                }
            }
        }
        data = out;
    }
    data
}

/// Resizes an image as PIL's `Image.resize((width, height), filter)` (bit-identical 8-bit
/// output for RGB images).
pub fn resize_like_pil(image: &RgbImage, width: usize, height: usize, filter: Resample) -> Result<RgbImage> {
    if width == 0 || height == 0 {
        return Err(Error::InvalidArgument(format!("cannot resize an image to {width}x{height}")));
    }
    let data = resize_rgb(image.data(), image.width(), image.height(), width, height, filter);
    RgbImage::new(width, height, data).map_err(sd_err)
}

/// How images are resized before the crop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeTo {
    /// The shorter side becomes this many pixels, the longer one `⌊n · long / short⌋`
    /// (transformers' `{"shortest_edge": n}`; CLIP's).
    ShortestEdge(usize),
    /// Exactly this `height × width` (`{"height": h, "width": w}`).
    Exact {
        /// Height in pixels.
        height: usize,
        /// Width in pixels.
        width: usize,
    },
}

/// transformers' `CLIPImageProcessor` (PIL backend): optional resize, center crop (zero-padded
/// when the image is smaller than the crop), rescale, normalise; channels first.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipPreprocessor {
    /// Whether to resize.
    pub do_resize: bool,
    /// The resize target.
    pub size: ResizeTo,
    /// The resampling filter.
    pub resample: Resample,
    /// Whether to crop the center.
    pub do_center_crop: bool,
    /// Crop `(height, width)`.
    pub crop_size: (usize, usize),
    /// Whether to multiply the 8-bit values by `rescale_factor`.
    pub do_rescale: bool,
    /// Usually 1/255.
    pub rescale_factor: f64,
    /// Whether to normalise by `image_mean` / `image_std`.
    pub do_normalize: bool,
    /// Per-channel mean.
    pub image_mean: [f64; 3],
    /// Per-channel standard deviation.
    pub image_std: [f64; 3],
}

impl Default for ClipPreprocessor {
    /// `CLIPImageProcessor()`: shortest edge 224 (bicubic), 224 × 224 crop, 1/255, OpenAI's
    /// mean and std.
    fn default() -> Self {
        Self {
            do_resize: true,
            size: ResizeTo::ShortestEdge(224),
            resample: Resample::Bicubic,
            do_center_crop: true,
            crop_size: (224, 224),
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: OPENAI_CLIP_MEAN,
            image_std: OPENAI_CLIP_STD,
        }
    }
}

/// The largest side (in pixels) a preprocessor config may ask for.
const MAX_SIDE: u64 = 1 << 16;

fn json_usize(v: &Value, field: &str, path: &Path) -> Result<usize> {
    v.as_u64()
        .filter(|&n| n > 0 && n <= MAX_SIDE)
        .map(|n| n as usize)
        .ok_or_else(|| config_err(path, format!("`{field}` must be an integer from 1 to {MAX_SIDE}, got {v}")))
}

fn json_bool(o: &serde_json::Map<String, Value>, field: &str, default: bool, path: &Path) -> Result<bool> {
    match o.get(field) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(config_err(path, format!("`{field}` must be true or false, got {v}"))),
    }
}

fn json_triple(o: &serde_json::Map<String, Value>, field: &str, default: [f64; 3], path: &Path) -> Result<[f64; 3]> {
    let bad = |v: &Value| config_err(path, format!("`{field}` must be a number or a list of 3 numbers, got {v}"));
    match o.get(field) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Number(n)) => n.as_f64().map(|x| [x; 3]).ok_or_else(|| bad(&Value::Number(n.clone()))),
        Some(Value::Array(a)) if a.len() == 3 => {
            let mut out = [0.0; 3];
            for (slot, v) in out.iter_mut().zip(a) {
                *slot = v.as_f64().ok_or_else(|| bad(v))?;
            }
            Ok(out)
        }
        Some(v) => Err(bad(v)),
    }
}

impl ClipPreprocessor {
    /// Reads a `preprocessor_config.json` (fields missing take `CLIPImageProcessor`'s defaults).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = read_text(path, "image preprocessor config")?;
        Self::from_json(&text, path)
    }

    /// `dir/preprocessor_config.json` when present, CLIP's defaults otherwise.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let path = dir.as_ref().join("preprocessor_config.json");
        if path.is_file() {
            Self::from_file(path)
        } else {
            Ok(Self::default())
        }
    }

    /// Parses a `preprocessor_config.json` document (`path` is only used in error messages).
    pub fn from_json(json: &str, path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let o = match serde_json::from_str::<Value>(json) {
            Ok(Value::Object(o)) => o,
            Ok(_) => return Err(config_err(path, "expected a JSON object")),
            Err(e) => return Err(config_err(path, e.to_string())),
        };
        let d = Self::default();
        let size = match o.get("size") {
            None | Some(Value::Null) => d.size,
            Some(v @ Value::Number(_)) => ResizeTo::ShortestEdge(json_usize(v, "size", path)?),
            Some(Value::Object(s)) => {
                if let Some(n) = s.get("shortest_edge") {
                    if s.get("longest_edge").is_some_and(|v| !v.is_null()) {
                        return Err(sd_err(deradiff_sd::Error::Unsupported {
                            path: path.to_path_buf(),
                            message: "`size.longest_edge` is not supported (CLIP uses `shortest_edge`)".into(),
                        }));
                    }
                    ResizeTo::ShortestEdge(json_usize(n, "size.shortest_edge", path)?)
                } else if let (Some(h), Some(w)) = (s.get("height"), s.get("width")) {
                    ResizeTo::Exact {
                        height: json_usize(h, "size.height", path)?,
                        width: json_usize(w, "size.width", path)?,
                    }
                } else {
                    return Err(config_err(path, "`size` needs `shortest_edge`, or `height` and `width`"));
                }
            }
            Some(v) => return Err(config_err(path, format!("`size` must be an integer or an object, got {v}"))),
        };
        let crop_size = match o.get("crop_size") {
            None | Some(Value::Null) => d.crop_size,
            Some(v @ Value::Number(_)) => {
                let n = json_usize(v, "crop_size", path)?;
                (n, n)
            }
            Some(Value::Object(s)) => match (s.get("height"), s.get("width")) {
                (Some(h), Some(w)) => {
                    (json_usize(h, "crop_size.height", path)?, json_usize(w, "crop_size.width", path)?)
                }
                _ => return Err(config_err(path, "`crop_size` needs `height` and `width`")),
            },
            Some(v) => return Err(config_err(path, format!("`crop_size` must be an integer or an object, got {v}"))),
        };
        let resample = match o.get("resample") {
            None | Some(Value::Null) => d.resample,
            Some(v) => v.as_u64().and_then(Resample::from_pil).ok_or_else(|| {
                sd_err(deradiff_sd::Error::Unsupported {
                    path: path.to_path_buf(),
                    message: format!(
                        "`resample` = {v}: supported are PIL's 1 (Lanczos), 2 (bilinear), 3 (bicubic), 4 (box), 5 (Hamming)"
                    ),
                })
            })?,
        };
        let rescale_factor = match o.get("rescale_factor") {
            None | Some(Value::Null) => d.rescale_factor,
            Some(v) => v
                .as_f64()
                .filter(|x| x.is_finite() && *x > 0.0)
                .ok_or_else(|| config_err(path, format!("`rescale_factor` must be a positive number, got {v}")))?,
        };
        let image_std = json_triple(&o, "image_std", d.image_std, path)?;
        if image_std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(config_err(path, format!("`image_std` must be positive, got {image_std:?}")));
        }
        let image_mean = json_triple(&o, "image_mean", d.image_mean, path)?;
        if image_mean.iter().any(|m| !m.is_finite()) {
            return Err(config_err(path, format!("`image_mean` must be finite, got {image_mean:?}")));
        }
        Ok(Self {
            do_resize: json_bool(&o, "do_resize", d.do_resize, path)?,
            size,
            resample,
            do_center_crop: json_bool(&o, "do_center_crop", d.do_center_crop, path)?,
            crop_size,
            do_rescale: json_bool(&o, "do_rescale", d.do_rescale, path)?,
            rescale_factor,
            do_normalize: json_bool(&o, "do_normalize", d.do_normalize, path)?,
            image_mean,
            image_std,
        })
    }

    /// `(height, width)` after the resize, as transformers computes it.
    pub fn resized_size(&self, height: usize, width: usize) -> (usize, usize) {
        if !self.do_resize {
            return (height, width);
        }
        match self.size {
            ResizeTo::Exact { height, width } => (height, width),
            ResizeTo::ShortestEdge(n) => {
                let (short, long) = if width <= height { (width, height) } else { (height, width) };
                // Python's `int(n * long / short)`; exact in f64 for any real image size.
                let new_long = (n as f64 * long as f64 / short as f64) as usize;
                if width <= height {
                    (new_long, n)
                } else {
                    (n, new_long)
                }
            }
        }
    }

    /// The resized and cropped 8-bit image (before rescaling and normalisation).
    pub fn resize_and_crop(&self, image: &RgbImage) -> Result<RgbImage> {
        let (h, w) = self.resized_size(image.height(), image.width());
        if h.saturating_mul(w) > 1 << 28 {
            return Err(Error::InvalidArgument(format!(
                "resizing a {}x{} image gives {w}x{h} pixels, too many",
                image.width(),
                image.height()
            )));
        }
        let resized = if (h, w) != (image.height(), image.width()) {
            resize_like_pil(image, w, h, self.resample)?
        } else {
            image.clone()
        };
        if !self.do_center_crop {
            return Ok(resized);
        }
        let (ch, cw) = self.crop_size;
        let (h, w) = (resized.height() as i64, resized.width() as i64);
        // transformers' `center_crop`: top-left at ⌊(size − crop) / 2⌋; outside the image (a
        // crop larger than the image) is zero.
        let top = (h - ch as i64).div_euclid(2);
        let left = (w - cw as i64).div_euclid(2);
        let src = resized.data();
        let mut data = vec![0u8; ch * cw * 3];
        for y in 0..ch {
            let sy = top + y as i64;
            if sy < 0 || sy >= h {
                continue;
            }
            for x in 0..cw {
                let sx = left + x as i64;
                if sx < 0 || sx >= w {
                    continue;
                }
                let s = ((sy * w + sx) * 3) as usize;
                data[(y * cw + x) * 3..(y * cw + x) * 3 + 3].copy_from_slice(&src[s..s + 3]);
            }
        }
        RgbImage::new(cw, ch, data).map_err(sd_err)
    }

    /// Pixel values `[3, H, W]` (f32) of one image.
    pub fn preprocess(&self, image: &RgbImage, device: &Device) -> Result<Tensor> {
        let img = self.resize_and_crop(image)?;
        let (h, w) = (img.height(), img.width());
        let mut out = vec![0f32; 3 * h * w];
        let mean = self.image_mean.map(|m| m as f32);
        let std = self.image_std.map(|s| s as f32);
        for (i, px) in img.data().chunks_exact(3).enumerate() {
            for c in 0..3 {
                // transformers: rescale in f64 then to f32; normalise in f32.
                let mut v =
                    if self.do_rescale { (f64::from(px[c]) * self.rescale_factor) as f32 } else { f32::from(px[c]) };
                if self.do_normalize {
                    v = (v - mean[c]) / std[c];
                }
                out[c * h * w + i] = v;
            }
        }
        Ok(Tensor::from_vec(out, (3, h, w), device)?)
    }

    /// Pixel values `[N, 3, H, W]` (f32) of a batch (every image gives the same size after the
    /// crop, or an error).
    pub fn preprocess_batch(&self, images: &[RgbImage], device: &Device) -> Result<Tensor> {
        if images.is_empty() {
            return Err(Error::InvalidArgument("no images to preprocess".into()));
        }
        let each = images.iter().map(|i| self.preprocess(i, device)).collect::<Result<Vec<_>>>()?;
        let first = each[0].dims().to_vec();
        if let Some(other) = each.iter().find(|t| t.dims() != first.as_slice()) {
            return Err(Error::InvalidArgument(format!(
                "preprocessed images have different sizes ({first:?} and {:?}): enable the center crop",
                other.dims()
            )));
        }
        Ok(Tensor::stack(&each, 0)?)
    }
}

// ------------------------------------------------------------------------------------------------
// Scorer and rewards
// ------------------------------------------------------------------------------------------------

/// A `CLIPModel` with its tokenizer and image preprocessor: embeds images and prompts and gives
/// their cosine similarities.
#[derive(Debug)]
pub struct ClipScorer {
    model: ClipModel,
    tokenizer: ClipTokenizer,
    preprocessor: ClipPreprocessor,
    device: Device,
    source: PathBuf,
}

impl ClipScorer {
    /// Loads a checkpoint directory laid out as on the Hugging Face Hub (`openai/clip-vit-*`,
    /// `yuvalkirstain/PickScore_v1`): `config.json`, `model.safetensors`, the tokenizer files
    /// (`tokenizer.json`, or `vocab.json` + `merges.txt`, with `tokenizer_config.json`) and
    /// `preprocessor_config.json` (CLIP's defaults when absent).
    pub fn load(dir: impl AsRef<Path>, dtype: DType, device: &Device) -> Result<Self> {
        let dir = dir.as_ref();
        let model = ClipModel::load(dir, dtype, device)?;
        let tokenizer = ClipTokenizer::from_dir(dir).map_err(sd_err)?;
        let preprocessor = ClipPreprocessor::from_dir(dir)?;
        Self::new(model, tokenizer, preprocessor, device, dir)
    }

    /// Loads the model from `model_dir` and the tokenizer and `preprocessor_config.json` from
    /// `processor_dir`: PickScore_v1's usage, whose model card takes its processor from
    /// `laion/CLIP-ViT-H-14-laion2B-s32B-b79K`.
    pub fn load_with_processor(
        model_dir: impl AsRef<Path>,
        processor_dir: impl AsRef<Path>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let (model_dir, processor_dir) = (model_dir.as_ref(), processor_dir.as_ref());
        let model = ClipModel::load(model_dir, dtype, device)?;
        let tokenizer = ClipTokenizer::from_dir(processor_dir).map_err(sd_err)?;
        let preprocessor = ClipPreprocessor::from_dir(processor_dir)?;
        Self::new(model, tokenizer, preprocessor, device, model_dir)
    }

    /// From parts (for a tokenizer or preprocessor kept elsewhere, as PickScore_v1's processor
    /// in `laion/CLIP-ViT-H-14-laion2B-s32B-b79K`). Checks that the token ids and the crop fit
    /// the model; `source` names the model in messages.
    pub fn new(
        model: ClipModel,
        tokenizer: ClipTokenizer,
        preprocessor: ClipPreprocessor,
        device: &Device,
        source: impl Into<PathBuf>,
    ) -> Result<Self> {
        let c = model.config();
        if tokenizer.max_length() > c.text.max_position_embeddings {
            return Err(Error::InvalidArgument(format!(
                "the tokenizer pads prompts to {} tokens but the CLIP text tower has {} positions",
                tokenizer.max_length(),
                c.text.max_position_embeddings
            )));
        }
        let size = c.vision.image_size;
        if preprocessor.do_center_crop && preprocessor.crop_size != (size, size) {
            return Err(Error::InvalidArgument(format!(
                "the preprocessor crops to {:?} but the CLIP vision tower takes {size}x{size} images",
                preprocessor.crop_size
            )));
        }
        Ok(Self { model, tokenizer, preprocessor, device: device.clone(), source: source.into() })
    }

    /// The model.
    pub fn model(&self) -> &ClipModel {
        &self.model
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &ClipTokenizer {
        &self.tokenizer
    }

    /// The image preprocessor.
    pub fn preprocessor(&self) -> &ClipPreprocessor {
        &self.preprocessor
    }

    /// Token ids `[N, max_length]` (u32) of `prompts`, as `CLIPProcessor` with truncation gives
    /// them (padding does not change the pooled output: the text tower is causal).
    pub fn token_ids(&self, prompts: &[&str]) -> Result<Tensor> {
        if prompts.is_empty() {
            return Err(Error::InvalidArgument("no prompts to encode".into()));
        }
        let vocab = self.model.config().text.vocab_size;
        let len = self.tokenizer.max_length();
        let mut ids = Vec::with_capacity(prompts.len() * len);
        for p in prompts {
            let row = self.tokenizer.encode(p).map_err(sd_err)?;
            if let Some(&bad) = row.iter().find(|&&i| i as usize >= vocab) {
                return Err(Error::InvalidArgument(format!(
                    "the tokenizer of {} produced id {bad}, outside the CLIP text vocabulary of {vocab}",
                    self.source.display()
                )));
            }
            ids.extend(row);
        }
        Ok(Tensor::from_vec(ids, (prompts.len(), len), &self.device)?)
    }

    /// Projected, unnormalised text embeddings `[N, projection_dim]` (f32).
    pub fn text_embeds(&self, prompts: &[&str]) -> Result<Tensor> {
        Ok(self.model.text_features(&self.token_ids(prompts)?)?.to_dtype(DType::F32)?)
    }

    /// Projected, unnormalised image embeddings `[N, projection_dim]` (f32).
    pub fn image_embeds(&self, images: &[RgbImage]) -> Result<Tensor> {
        let pixels = self.preprocessor.preprocess_batch(images, &self.device)?;
        self.pixel_embeds(&pixels)
    }

    /// Image embeddings of preprocessed pixel values `[N, 3, S, S]`.
    pub fn pixel_embeds(&self, pixel_values: &Tensor) -> Result<Tensor> {
        Ok(self.model.image_features(pixel_values)?.to_dtype(DType::F32)?)
    }

    /// Cosine similarity of image i with prompt i (each distinct prompt is encoded once).
    pub fn cosine(&self, images: &[RgbImage], prompts: &[&str]) -> Result<Vec<f64>> {
        if images.len() != prompts.len() {
            return Err(Error::InvalidArgument(format!(
                "{} images and {} prompts: give one prompt per image",
                images.len(),
                prompts.len()
            )));
        }
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let img = self.image_embeds(images)?;
        self.cosine_with(&img, prompts)
    }

    /// Cosine similarity of each row of image embeddings `[N, projection_dim]` with prompt i.
    pub fn cosine_with(&self, image_embeds: &Tensor, prompts: &[&str]) -> Result<Vec<f64>> {
        let mut distinct: Vec<&str> = Vec::new();
        let index: Vec<usize> = prompts
            .iter()
            .map(|p| match distinct.iter().position(|d| d == p) {
                Some(i) => i,
                None => {
                    distinct.push(p);
                    distinct.len() - 1
                }
            })
            .collect();
        let txt = rows_f64(&self.text_embeds(&distinct)?)?;
        let img = rows_f64(image_embeds)?;
        if img.len() != prompts.len() {
            return Err(Error::InvalidArgument(format!(
                "{} image embeddings and {} prompts: give one prompt per image",
                img.len(),
                prompts.len()
            )));
        }
        Ok(img.iter().zip(&index).map(|(a, &t)| cosine(a, &txt[t])).collect())
    }

    /// Cosine similarity of sample i of a decoded batch `[N, 3, H, W]` (values in `[-1, 1]`, as a
    /// VAE decodes) with prompt i. The samples are first made the 8-bit images that would be
    /// saved ([`RgbImage::from_tensor`]), so the score is that of the PNG a user sees.
    pub fn cosine_of_samples(&self, samples: &Tensor, prompts: Option<&[&str]>, reward: &str) -> Result<Vec<f64>> {
        let prompts = prompts.ok_or_else(|| {
            Error::InvalidArgument(format!(
                "the reward {reward:?} scores images against prompts: give one prompt per sample"
            ))
        })?;
        let images = RgbImage::from_tensor(samples).map_err(sd_err)?;
        self.cosine(&images, prompts)
    }
}

fn rows_f64(t: &Tensor) -> Result<Vec<Vec<f64>>> {
    Ok(t.to_device(&Device::Cpu)?.to_dtype(DType::F64)?.to_vec2()?)
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// CLIP score as torchmetrics' `CLIPScore` computes it per sample: `100 · max(cos, 0)` between
/// the image and its prompt (the metric's batch value is the mean). Samples are decoded images
/// `[N, 3, H, W]` in `[-1, 1]`; prompts are required.
#[derive(Debug)]
pub struct ClipScore {
    scorer: Arc<ClipScorer>,
    name: String,
}

impl ClipScore {
    /// Wraps a scorer (name `clip_score`); an `Arc<ClipScorer>` lets [`ClipScore`] and
    /// [`PickScore`] share one loaded model.
    pub fn new(scorer: impl Into<Arc<ClipScorer>>) -> Self {
        Self { scorer: scorer.into(), name: "clip_score".into() }
    }

    /// Loads a `CLIPModel` checkpoint directory (see [`ClipScorer::load`]).
    pub fn load(dir: impl AsRef<Path>, dtype: DType, device: &Device) -> Result<Self> {
        Ok(Self::new(ClipScorer::load(dir, dtype, device)?))
    }

    /// Another name (results-file column).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The scorer.
    pub fn scorer(&self) -> &Arc<ClipScorer> {
        &self.scorer
    }

    /// Scores 8-bit images against one prompt each.
    pub fn score_images(&self, images: &[RgbImage], prompts: &[&str]) -> Result<Vec<f64>> {
        Ok(self.scores_of_cosines(self.scorer.cosine(images, prompts)?))
    }

    /// `100 · max(cos, 0)`.
    fn scores_of_cosines(&self, cos: Vec<f64>) -> Vec<f64> {
        cos.into_iter().map(|c| 100.0 * c.max(0.0)).collect()
    }
}

impl Reward for ClipScore {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn score(&self, samples: &Tensor, prompts: Option<&[&str]>) -> Result<Vec<f64>> {
        Ok(self.scores_of_cosines(self.scorer.cosine_of_samples(samples, prompts, &self.name)?))
    }
}

/// PickScore as the `yuvalkirstain/PickScore_v1` model card computes it:
/// `exp(logit_scale) · cos` between the image and its prompt (any `CLIPModel` gives a
/// "PickScore-shaped" score). Samples are decoded images `[N, 3, H, W]` in `[-1, 1]`; prompts
/// are required.
#[derive(Debug)]
pub struct PickScore {
    scorer: Arc<ClipScorer>,
    name: String,
}

impl PickScore {
    /// Wraps a scorer (name `pickscore`); an `Arc<ClipScorer>` lets [`ClipScore`] and
    /// [`PickScore`] share one loaded model.
    pub fn new(scorer: impl Into<Arc<ClipScorer>>) -> Self {
        Self { scorer: scorer.into(), name: "pickscore".into() }
    }

    /// Loads a `CLIPModel` checkpoint directory (see [`ClipScorer::load`]).
    pub fn load(dir: impl AsRef<Path>, dtype: DType, device: &Device) -> Result<Self> {
        Ok(Self::new(ClipScorer::load(dir, dtype, device)?))
    }

    /// Another name (results-file column).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The scorer.
    pub fn scorer(&self) -> &Arc<ClipScorer> {
        &self.scorer
    }

    /// Scores 8-bit images against one prompt each.
    pub fn score_images(&self, images: &[RgbImage], prompts: &[&str]) -> Result<Vec<f64>> {
        Ok(self.scores_of_cosines(self.scorer.cosine(images, prompts)?))
    }

    /// `exp(logit_scale) · cos`.
    fn scores_of_cosines(&self, cos: Vec<f64>) -> Vec<f64> {
        let scale = self.scorer.model().logit_scale().exp();
        cos.into_iter().map(|c| scale * c).collect()
    }
}

impl Reward for PickScore {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn score(&self, samples: &Tensor, prompts: Option<&[&str]>) -> Result<Vec<f64>> {
        Ok(self.scores_of_cosines(self.scorer.cosine_of_samples(samples, prompts, &self.name)?))
    }
}
