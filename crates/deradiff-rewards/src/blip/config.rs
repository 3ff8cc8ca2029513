//! The configurations of BLIP's two encoders as ImageReward builds them: the ViT's sizes (which
//! ImageReward hard-codes: `create_vit('large', 224)`) and the BERT of `med_config.json`.

use std::path::Path;

use deradiff_sd::clip::ClipActivation;
use deradiff_sd::fs::read_json;
use deradiff_sd::{Error, Result};
use serde::Deserialize;

/// The largest width, depth, head count or intermediate size accepted in these configs (real
/// ones are at most 4096); larger values are refused before anything is allocated.
const MAX_SIZE: usize = 1 << 16;
/// The largest vocabulary accepted (BERT's is 30 524).
const MAX_VOCAB: usize = 1 << 22;

fn check_sizes(path: &Path, sizes: &[(&str, usize, usize)]) -> Result<()> {
    for &(field, value, max) in sizes {
        if value == 0 || value > max {
            return Err(Error::config_field(path, field, format!("must be from 1 to {max}, got {value}")));
        }
    }
    Ok(())
}

/// BLIP's `VisionTransformer` (models/BLIP/vit.py) sizes. The defaults are ImageReward's ViT-L:
/// 224 px, 16 px patches, width 1024, 24 layers, 16 heads, MLP ratio 4 (LayerNorm ε 1e-6, exact
/// GELU, biased `qkv`, as vit.py builds it). An optional `vision_config.json` with these field
/// names overrides them (the tiny test models use one).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BlipVisionConfig {
    /// Height and width of the input images.
    pub image_size: usize,
    /// Height and width of a patch (the patch convolution's kernel and stride).
    pub patch_size: usize,
    /// Width of the hidden states.
    pub embed_dim: usize,
    /// Number of blocks.
    pub depth: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// MLP width over `embed_dim` (`int(embed_dim · mlp_ratio)`, as vit.py).
    pub mlp_ratio: f64,
}

impl Default for BlipVisionConfig {
    /// ImageReward's `create_vit('large', image_size=224)`.
    fn default() -> Self {
        Self { image_size: 224, patch_size: 16, embed_dim: 1024, depth: 24, num_heads: 16, mlp_ratio: 4.0 }
    }
}

impl BlipVisionConfig {
    /// LayerNorm ε of vit.py (`partial(nn.LayerNorm, eps=1e-6)`).
    pub const LAYER_NORM_EPS: f64 = 1e-6;

    /// Reads and checks a `vision_config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let c: Self = read_json(path, "BLIP vision config")?;
        c.validate(path)?;
        Ok(c)
    }

    /// Checks the sizes (`path` names the file in errors).
    pub fn validate(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        check_sizes(
            path,
            &[
                ("image_size", self.image_size, 4096),
                ("patch_size", self.patch_size, self.image_size.max(1)),
                ("embed_dim", self.embed_dim, MAX_SIZE),
                ("depth", self.depth, 1024),
                ("num_heads", self.num_heads, self.embed_dim.max(1)),
            ],
        )?;
        if !self.embed_dim.is_multiple_of(self.num_heads) {
            return Err(Error::config_field(
                path,
                "num_heads",
                format!("embed_dim {} is not divisible by {} heads", self.embed_dim, self.num_heads),
            ));
        }
        if !(self.mlp_ratio > 0.0 && self.mlp_ratio <= 64.0) {
            return Err(Error::config_field(path, "mlp_ratio", format!("must be in (0, 64], got {}", self.mlp_ratio)));
        }
        Ok(())
    }

    /// Patches per side (`image_size // patch_size`, as timm's `PatchEmbed`).
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size.max(1)
    }

    /// Tokens: the class token and one per patch.
    pub fn num_tokens(&self) -> usize {
        self.grid() * self.grid() + 1
    }

    /// Width of the MLPs: `int(embed_dim · mlp_ratio)`.
    pub fn mlp_width(&self) -> usize {
        (self.embed_dim as f64 * self.mlp_ratio) as usize
    }
}

/// BLIP's `med_config.json`: the `BertConfig` of its text encoder (models/BLIP/med.py, a BERT
/// whose layers add cross-attention to the image). Missing fields take transformers'
/// `BertConfig` defaults; `encoder_width` is replaced by the ViT's width, as BLIP_Pretrain does.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct MedConfig {
    /// Vocabulary size (30 524: bert-base-uncased's 30 522 and BLIP's `[DEC]`, `[ENC]`).
    pub vocab_size: usize,
    /// Width of the hidden states.
    pub hidden_size: usize,
    /// Number of layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Width of the feed-forward layers.
    pub intermediate_size: usize,
    /// `gelu` (exact), `gelu_new` / `gelu_pytorch_tanh` or `quick_gelu`.
    pub hidden_act: String,
    /// Number of positions.
    pub max_position_embeddings: usize,
    /// LayerNorm ε.
    pub layer_norm_eps: f64,
    /// Whether the layers have cross-attention (ImageReward needs it).
    pub add_cross_attention: bool,
    /// Only `absolute` is implemented (med.py's relative variants are not used by BLIP).
    pub position_embedding_type: String,
    /// The padding id.
    pub pad_token_id: u32,
}

impl Default for MedConfig {
    /// transformers' `BertConfig()` defaults.
    fn default() -> Self {
        Self {
            vocab_size: 30522,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: "gelu".into(),
            max_position_embeddings: 512,
            layer_norm_eps: 1e-12,
            add_cross_attention: false,
            position_embedding_type: "absolute".into(),
            pad_token_id: 0,
        }
    }
}

impl MedConfig {
    /// Reads and checks a `med_config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let c: Self = read_json(path, "BLIP text config (med_config.json)")?;
        c.validate(path)?;
        Ok(c)
    }

    /// The activation.
    pub fn activation(&self, path: impl AsRef<Path>) -> Result<ClipActivation> {
        ClipActivation::parse(&self.hidden_act, path.as_ref(), "hidden_act")
    }

    /// Checks the sizes and the options this crate implements.
    pub fn validate(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        self.activation(path)?;
        check_sizes(
            path,
            &[
                ("vocab_size", self.vocab_size, MAX_VOCAB),
                ("hidden_size", self.hidden_size, MAX_SIZE),
                ("num_hidden_layers", self.num_hidden_layers, 1024),
                ("num_attention_heads", self.num_attention_heads, self.hidden_size.max(1)),
                ("intermediate_size", self.intermediate_size, MAX_SIZE),
                ("max_position_embeddings", self.max_position_embeddings, MAX_SIZE),
            ],
        )?;
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(Error::config_field(
                path,
                "num_attention_heads",
                format!("hidden_size {} is not divisible by {} heads", self.hidden_size, self.num_attention_heads),
            ));
        }
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps.is_finite()) {
            return Err(Error::config_field(path, "layer_norm_eps", "must be positive"));
        }
        if !self.add_cross_attention {
            return Err(Error::config_field(
                path,
                "add_cross_attention",
                "is false; BLIP's text encoder attends to the image (ImageReward's med_config.json has true)",
            ));
        }
        if self.position_embedding_type != "absolute" {
            return Err(Error::unsupported(
                path,
                format!("position_embedding_type = {}: only absolute is implemented", self.position_embedding_type),
            ));
        }
        Ok(())
    }
}
