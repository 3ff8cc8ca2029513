//! The configurations of transformers' CLIP models: the text tower (`CLIPTextConfig`, a
//! `text_encoder/config.json`), the vision tower (`CLIPVisionConfig`) and the whole `CLIPModel`
//! (both towers and the projection), each field with transformers' default.

use std::path::Path;

use candle_core::Tensor;
use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};

/// The activation of the CLIP MLPs (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipActivation {
    /// `quick_gelu`: `x · σ(1.702 x)` (OpenAI CLIP, SD 1.x).
    QuickGelu,
    /// `gelu`: exact (erf) GELU (OpenCLIP ViT-H, SD 2.x).
    Gelu,
    /// `gelu_new` / `gelu_pytorch_tanh`: the tanh approximation.
    GeluTanh,
}

impl ClipActivation {
    /// The activation a transformers `hidden_act` names, or an error naming the file and the
    /// `field` (`hidden_act`, `vision_config.hidden_act`, …) for one this crate does not implement.
    pub fn parse(hidden_act: &str, path: &Path, field: &str) -> Result<Self> {
        match hidden_act {
            "quick_gelu" => Ok(Self::QuickGelu),
            "gelu" => Ok(Self::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" => Ok(Self::GeluTanh),
            other => Err(Error::unsupported(
                path,
                format!("{field} = {other}: supported are quick_gelu, gelu, gelu_new, gelu_pytorch_tanh"),
            )),
        }
    }

    /// Applies the activation.
    pub fn forward(self, y: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::QuickGelu => y * candle_nn::ops::sigmoid(&(y * 1.702)?)?,
            Self::Gelu => y.gelu_erf(),
            Self::GeluTanh => y.gelu(),
        }
    }
}

/// A transformers `text_encoder/config.json` (`CLIPTextModel`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct ClipTextConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width of the hidden states (the UNet's cross-attention dim).
    pub hidden_size: usize,
    /// Width of the MLPs.
    pub intermediate_size: usize,
    /// Number of transformer layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Number of positions (77 for SD).
    pub max_position_embeddings: usize,
    /// `quick_gelu`, `gelu`, `gelu_new` or `gelu_pytorch_tanh`.
    pub hidden_act: String,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// The end-of-text id, where the pooled output is read. transformers' legacy rule: with
    /// `eos_token_id = 2` (SD / SDXL configs) the pooled position is the argmax of the ids.
    pub eos_token_id: i64,
    /// Width of `text_projection` (`CLIPTextModelWithProjection`, SDXL's `text_encoder_2`).
    pub projection_dim: usize,
}

impl Default for ClipTextConfig {
    /// transformers' `CLIPTextConfig()` defaults.
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
            eos_token_id: 49407,
            projection_dim: 512,
        }
    }
}

impl ClipTextConfig {
    /// Reads a `text_encoder/config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        crate::config::read_json(path.as_ref(), "text encoder config")
    }

    /// The activation, or an error naming the file for one this crate does not implement.
    pub fn activation(&self, path: impl AsRef<Path>) -> Result<ClipActivation> {
        ClipActivation::parse(&self.hidden_act, path.as_ref(), "hidden_act")
    }

    /// Checks the sizes.
    pub fn validate(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        self.activation(path)?;
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_attention_heads", self.num_attention_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Err(Error::config(path, format!("`{name}` must be positive")));
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(Error::config(
                path,
                format!("hidden_size {} is not divisible by {} heads", self.hidden_size, self.num_attention_heads),
            ));
        }
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps.is_finite()) {
            return Err(Error::config(path, "`layer_norm_eps` must be positive"));
        }
        Ok(())
    }
}

/// Reads a text file: [`crate::config::read_text`] (kind and size checked first).
pub(crate) fn read_text(path: &Path, what: &str) -> Result<String> {
    crate::config::read_text(path, what)
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

    /// Positions: one per patch plus the class token (saturating: [`ClipModelConfig::from_json`]
    /// refuses an `image_size` above [`ClipVisionConfig::MAX_IMAGE_SIZE`]).
    pub fn num_positions(&self) -> usize {
        self.grid().saturating_mul(self.grid()).saturating_add(1)
    }

    /// The largest `image_size` accepted: 4096 pixels (CLIP models use 224 or 336).
    pub const MAX_IMAGE_SIZE: usize = 4096;
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
            Some(other) => return Err(Error::config(path, format!("`{k}` must be an object, got {other}"))),
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
            Ok(_) => return Err(Error::config(path, "expected a JSON object")),
            Err(e) => return Err(Error::config(path, e.to_string())),
        };
        if let Some(t) = root.get("model_type").and_then(Value::as_str) {
            if t != "clip" {
                return Err(Error::config(
                    path,
                    format!("model_type is {t:?}; a CLIPModel checkpoint (model_type \"clip\") is needed"),
                ));
            }
        }
        let text_value = sub_config(&root, "text_config", path)?;
        let vision_value = sub_config(&root, "vision_config", path)?;
        let mut text: ClipTextConfig =
            serde_json::from_value(text_value).map_err(|e| Error::config(path, format!("text_config: {e}")))?;
        let vision: ClipVisionConfig =
            serde_json::from_value(vision_value).map_err(|e| Error::config(path, format!("vision_config: {e}")))?;
        let projection_dim = match root.get("projection_dim") {
            None | Some(Value::Null) => 512,
            Some(v) => v
                .as_u64()
                .map(|p| p as usize)
                .ok_or_else(|| Error::config(path, format!("`projection_dim` must be a positive integer, got {v}")))?,
        };
        if projection_dim == 0 {
            return Err(Error::config(path, "`projection_dim` must be positive"));
        }
        text.projection_dim = projection_dim;
        let text_act = ClipActivation::parse(&text.hidden_act, path, "text_config.hidden_act")?;
        let vision_act = ClipActivation::parse(&vision.hidden_act, path, "vision_config.hidden_act")?;
        text.validate(path)?;
        if text.num_hidden_layers == 0 {
            return Err(Error::config(path, "text_config.num_hidden_layers must be positive"));
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
                return Err(Error::config(path, format!("vision_config.{name} must be positive")));
            }
        }
        if !v.hidden_size.is_multiple_of(v.num_attention_heads) {
            return Err(Error::config(
                path,
                format!(
                    "vision_config.hidden_size {} is not divisible by {} heads",
                    v.hidden_size, v.num_attention_heads
                ),
            ));
        }
        if v.image_size > ClipVisionConfig::MAX_IMAGE_SIZE {
            return Err(Error::config(
                path,
                format!(
                    "vision_config.image_size {} is more than {} pixels (ClipVisionConfig::MAX_IMAGE_SIZE; CLIP \
                     models use 224 or 336)",
                    v.image_size,
                    ClipVisionConfig::MAX_IMAGE_SIZE
                ),
            ));
        }
        if v.patch_size > v.image_size {
            return Err(Error::config(
                path,
                format!("vision_config.patch_size {} is larger than image_size {}", v.patch_size, v.image_size),
            ));
        }
        if !(v.layer_norm_eps > 0.0 && v.layer_norm_eps.is_finite()) {
            return Err(Error::config(path, "vision_config.layer_norm_eps must be positive"));
        }
        Ok(Self { text, vision, projection_dim, text_act, vision_act })
    }
}
