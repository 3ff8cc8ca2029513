//! OpenCLIP checkpoints (HPS v2 / v2.1 ship open_clip's ViT-H-14): its tensor layout mapped onto
//! our [`ClipModel`] (transformers' names), with the model config of an `open_clip_config.json`.
//!
//! | open_clip | transformers (ours) |
//! | --- | --- |
//! | `visual.conv1.weight`, `visual.class_embedding`, `visual.positional_embedding` | `vision_model.embeddings.{patch_embedding.weight, class_embedding, position_embedding.weight}` |
//! | `visual.ln_pre`, `visual.ln_post` | `vision_model.pre_layrnorm`, `vision_model.post_layernorm` |
//! | `….transformer.resblocks.N.ln_1` / `ln_2` | `….encoder.layers.N.layer_norm1` / `layer_norm2` |
//! | `….attn.in_proj_weight` / `in_proj_bias` (q, k, v stacked) | `….self_attn.{q,k,v}_proj.{weight,bias}` |
//! | `….attn.out_proj`, `….mlp.c_fc`, `….mlp.c_proj` | `….self_attn.out_proj`, `….mlp.fc1`, `….mlp.fc2` |
//! | `visual.proj` `[width, embed]` (`x @ proj`) | `visual_projection.weight` `[embed, width]` (its transpose) |
//! | `token_embedding.weight`, `positional_embedding`, `ln_final` | `text_model.embeddings.{token_embedding, position_embedding}.weight`, `text_model.final_layer_norm` |
//! | `text_projection` `[width, embed]` | `text_projection.weight` (its transpose) |
//! | `logit_scale` | `logit_scale` |
//!
//! The text tower pools at the argmax of the token ids (open_clip's rule: the end-of-text id is
//! the largest), with a causal mask, so open_clip's zero padding and transformers' end-of-text
//! padding give the same features.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use deradiff_sd::clip::{ClipActivation, ClipModelConfig, ClipTextConfig, ClipVisionConfig};
use deradiff_sd::fs::read_text;
use deradiff_sd::load_tensors_checked;
use deradiff_sd::{Error, Result};
use serde_json::Value;

use super::ClipModel;

/// The model part of an `open_clip_config.json` (`model_cfg`), as open_clip's `CLIP` takes it.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenClipConfig {
    /// Width of the joint embedding space.
    pub embed_dim: usize,
    /// Vision: input image side.
    pub image_size: usize,
    /// Vision: patch side.
    pub patch_size: usize,
    /// Vision: width.
    pub vision_width: usize,
    /// Vision: layers.
    pub vision_layers: usize,
    /// Vision: width per head (64 by default).
    pub vision_head_width: usize,
    /// Vision: MLP width / width (4 by default).
    pub vision_mlp_ratio: f64,
    /// Text: context length (77).
    pub context_length: usize,
    /// Text: vocabulary size (49408).
    pub vocab_size: usize,
    /// Text: width.
    pub text_width: usize,
    /// Text: heads.
    pub text_heads: usize,
    /// Text: layers.
    pub text_layers: usize,
    /// Text: MLP width / width (4 by default).
    pub text_mlp_ratio: f64,
    /// OpenAI's quick-GELU (`quick_gelu: true`) instead of exact GELU (ViT-H-14's).
    pub quick_gelu: bool,
}

/// The largest width, depth or size read from an open_clip config.
const MAX_DIM: u64 = 1 << 16;

impl OpenClipConfig {
    /// Reads `open_clip_config.json` (`{"model_cfg": {...}}`) or a bare model config
    /// (`{"embed_dim": …, "vision_cfg": …, "text_cfg": …}`, open_clip's `model_configs/*.json`).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        Self::from_json(&read_text(path, "open_clip config")?, path)
    }

    /// [`Self::from_file`] of a JSON text (`path` names it in errors).
    pub fn from_json(text: &str, path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let json: Value = serde_json::from_str(text).map_err(|e| Error::config(path, e.to_string()))?;
        let cfg = json.get("model_cfg").unwrap_or(&json);
        let obj = |v: &Value, field: &str| -> Result<serde_json::Map<String, Value>> {
            v.get(field)
                .and_then(Value::as_object)
                .cloned()
                .ok_or_else(|| Error::config_field(path, field, "missing, or not an object"))
        };
        let (vision, text_cfg) = (obj(cfg, "vision_cfg")?, obj(cfg, "text_cfg")?);
        let int = |o: &serde_json::Map<String, Value>, field: &str, default: Option<u64>| -> Result<usize> {
            match o.get(field).filter(|v| !v.is_null()) {
                None => default.map(|d| d as usize).ok_or_else(|| Error::config_field(path, field, "missing")),
                Some(v) => v.as_u64().filter(|&n| n > 0 && n <= MAX_DIM).map(|n| n as usize).ok_or_else(|| {
                    Error::config_field(path, field, format!("must be an integer from 1 to {MAX_DIM}, got {v}"))
                }),
            }
        };
        let ratio = |o: &serde_json::Map<String, Value>, field: &str| -> Result<f64> {
            match o.get(field).filter(|v| !v.is_null()) {
                None => Ok(4.0),
                Some(v) => v
                    .as_f64()
                    .filter(|r| *r > 0.0 && *r <= 64.0)
                    .ok_or_else(|| Error::config_field(path, field, format!("must be a number in (0, 64], got {v}"))),
            }
        };
        let top = cfg.as_object().cloned().unwrap_or_default();
        for unsupported in ["timm_model_name", "hf_model_name", "attentional_pool", "no_ln_pre", "final_ln_after_pool"]
        {
            let set = vision.get(unsupported).or(text_cfg.get(unsupported)).filter(|v| match v {
                Value::Null | Value::Bool(false) => false,
                Value::String(s) => !s.is_empty(),
                _ => true,
            });
            if let Some(v) = set {
                return Err(Error::unsupported(
                    path,
                    format!("`{unsupported}` = {v}: only open_clip's own ViT towers (as in ViT-H-14) are supported"),
                ));
            }
        }
        let c = Self {
            embed_dim: int(&top, "embed_dim", None)?,
            image_size: int(&vision, "image_size", None)?,
            patch_size: int(&vision, "patch_size", None)?,
            vision_width: int(&vision, "width", None)?,
            vision_layers: int(&vision, "layers", None)?,
            vision_head_width: int(&vision, "head_width", Some(64))?,
            vision_mlp_ratio: ratio(&vision, "mlp_ratio")?,
            context_length: int(&text_cfg, "context_length", Some(77))?,
            vocab_size: int(&text_cfg, "vocab_size", Some(49408))?,
            text_width: int(&text_cfg, "width", None)?,
            text_heads: int(&text_cfg, "heads", None)?,
            text_layers: int(&text_cfg, "layers", None)?,
            text_mlp_ratio: ratio(&text_cfg, "mlp_ratio")?,
            quick_gelu: top.get("quick_gelu").and_then(Value::as_bool).unwrap_or(false),
        };
        if !c.vision_width.is_multiple_of(c.vision_head_width) || !c.text_width.is_multiple_of(c.text_heads) {
            return Err(Error::config(path, "the widths are not multiples of the head width / head count"));
        }
        if !c.image_size.is_multiple_of(c.patch_size) || c.image_size > ClipVisionConfig::MAX_IMAGE_SIZE {
            return Err(Error::config_field(path, "image_size", "must be a multiple of patch_size, at most 4096"));
        }
        Ok(c)
    }

    /// The same model as our [`ClipModelConfig`] (transformers' terms).
    pub fn clip_config(&self) -> ClipModelConfig {
        let act = if self.quick_gelu { "quick_gelu" } else { "gelu" };
        let act_kind = if self.quick_gelu { ClipActivation::QuickGelu } else { ClipActivation::Gelu };
        ClipModelConfig {
            text: ClipTextConfig {
                vocab_size: self.vocab_size,
                hidden_size: self.text_width,
                intermediate_size: (self.text_width as f64 * self.text_mlp_ratio) as usize,
                num_hidden_layers: self.text_layers,
                num_attention_heads: self.text_heads,
                max_position_embeddings: self.context_length,
                hidden_act: act.into(),
                layer_norm_eps: 1e-5,
                // transformers' legacy rule: pool at the argmax of the ids (open_clip's rule).
                eos_token_id: 2,
                projection_dim: self.embed_dim,
            },
            vision: ClipVisionConfig {
                hidden_size: self.vision_width,
                intermediate_size: (self.vision_width as f64 * self.vision_mlp_ratio) as usize,
                num_hidden_layers: self.vision_layers,
                num_attention_heads: self.vision_width / self.vision_head_width,
                num_channels: 3,
                image_size: self.image_size,
                patch_size: self.patch_size,
                hidden_act: act.into(),
                layer_norm_eps: 1e-5,
            },
            projection_dim: self.embed_dim,
            text_act: act_kind,
            vision_act: act_kind,
        }
    }
}

/// Renames an open_clip state dict to transformers' `CLIPModel` names (splitting the stacked
/// attention projections, transposing the projections); an error names a missing tensor.
fn to_transformers(
    mut sd: HashMap<String, Tensor>,
    c: &OpenClipConfig,
    file: &Path,
) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    let mut take = |name: &str| -> Result<Tensor> {
        sd.remove(name).ok_or_else(|| Error::MissingTensor {
            file: file.to_path_buf(),
            tensor: name.to_string(),
            hint: "; an open_clip checkpoint has it: is this an open_clip ViT model?".into(),
        })
    };
    let layers = |from: &str,
                  to: &str,
                  n: usize,
                  width: usize,
                  take: &mut dyn FnMut(&str) -> Result<Tensor>|
     -> Result<Vec<(String, Tensor)>> {
        let mut v = Vec::new();
        for i in 0..n {
            let (f, t) = (format!("{from}.resblocks.{i}"), format!("{to}.layers.{i}"));
            for (a, b) in [
                ("ln_1", "layer_norm1"),
                ("ln_2", "layer_norm2"),
                ("attn.out_proj", "self_attn.out_proj"),
                ("mlp.c_fc", "mlp.fc1"),
                ("mlp.c_proj", "mlp.fc2"),
            ] {
                v.push((format!("{t}.{b}.weight"), take(&format!("{f}.{a}.weight"))?));
                v.push((format!("{t}.{b}.bias"), take(&format!("{f}.{a}.bias"))?));
            }
            let (w, b) = (take(&format!("{f}.attn.in_proj_weight"))?, take(&format!("{f}.attn.in_proj_bias"))?);
            if w.dims() != [3 * width, width] || b.dims() != [3 * width] {
                return Err(Error::shape(
                    format!("{f}.attn.in_proj_weight / in_proj_bias of {}", file.display()),
                    format!("[{}, {width}] / [{}]", 3 * width, 3 * width),
                    w.dims(),
                ));
            }
            for (k, name) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
                v.push((format!("{t}.self_attn.{name}.weight"), w.narrow(0, k * width, width)?.contiguous()?));
                v.push((format!("{t}.self_attn.{name}.bias"), b.narrow(0, k * width, width)?.contiguous()?));
            }
        }
        Ok(v)
    };
    for (k, v) in layers("visual.transformer", "vision_model.encoder", c.vision_layers, c.vision_width, &mut take)? {
        out.insert(k, v);
    }
    for (k, v) in layers("transformer", "text_model.encoder", c.text_layers, c.text_width, &mut take)? {
        out.insert(k, v);
    }
    for (from, to) in [
        ("visual.conv1.weight", "vision_model.embeddings.patch_embedding.weight"),
        ("visual.class_embedding", "vision_model.embeddings.class_embedding"),
        ("visual.positional_embedding", "vision_model.embeddings.position_embedding.weight"),
        ("visual.ln_pre.weight", "vision_model.pre_layrnorm.weight"),
        ("visual.ln_pre.bias", "vision_model.pre_layrnorm.bias"),
        ("visual.ln_post.weight", "vision_model.post_layernorm.weight"),
        ("visual.ln_post.bias", "vision_model.post_layernorm.bias"),
        ("token_embedding.weight", "text_model.embeddings.token_embedding.weight"),
        ("positional_embedding", "text_model.embeddings.position_embedding.weight"),
        ("ln_final.weight", "text_model.final_layer_norm.weight"),
        ("ln_final.bias", "text_model.final_layer_norm.bias"),
        ("logit_scale", "logit_scale"),
    ] {
        out.insert(to.to_string(), take(from)?);
    }
    out.insert("visual_projection.weight".into(), take("visual.proj")?.t()?.contiguous()?);
    out.insert("text_projection.weight".into(), take("text_projection")?.t()?.contiguous()?);
    // Anything left is a part this mapping does not know (an attentional pooler, a head…).
    let mut left: Vec<&String> = sd.keys().filter(|k| !k.ends_with("attn_mask")).collect();
    left.sort();
    if let Some(first) = left.first() {
        return Err(Error::unsupported(
            file,
            format!("`{first}` (and {} more) is not part of an open_clip ViT CLIP that deradiff maps", left.len() - 1),
        ));
    }
    Ok(out)
}

impl ClipModel {
    /// Loads an open_clip checkpoint (safetensors, open_clip's tensor names; HPS v2's
    /// `HPS_v2_compressed.pt` converted by `scripts/convert_to_safetensors.py hps`) with its
    /// model config, mapped onto transformers' names (see the module docs).
    pub fn load_open_clip(
        weights: impl AsRef<Path>,
        config: &OpenClipConfig,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let file = weights.as_ref();
        let sd = load_tensors_checked(file, "open_clip weights", dtype)?;
        let tensors = to_transformers(sd, config, file)?;
        let clip = config.clip_config();
        let vb = VarBuilder::from_tensors(tensors, dtype, device);
        ClipModel::new(vb, &clip).map_err(|e| Error::Weights {
            file: file.to_path_buf(),
            message: format!("the mapped open_clip tensors do not fit the config: {e}"),
        })
    }
}
