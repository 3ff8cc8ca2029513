//! Text encoding: the checkpoint's tokenizer and CLIP text model, run once per distinct prompt.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{DType, Device, Tensor};

use crate::clip::{ClipOutput, ClipTextConfig, ClipTextModel};
use crate::error::{Error, Result};
use crate::fs::{check_path, config_path, Kind};
use crate::tokenizer::ClipTokenizer;
use crate::weights::{find_weight_files, CheckedWeights};

/// Tokenizer + CLIP text model. Counts its forward passes and encoded prompts, so that sharing
/// one encoding among many UNets can be checked.
pub struct TextEncoder {
    tokenizer: ClipTokenizer,
    model: ClipTextModel,
    dtype: DType,
    device: Device,
    forward_calls: AtomicUsize,
    prompts_encoded: AtomicUsize,
}

impl std::fmt::Debug for TextEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextEncoder")
            .field("tokenizer", &self.tokenizer)
            .field("model", &self.model)
            .field("dtype", &self.dtype)
            .finish_non_exhaustive()
    }
}

impl TextEncoder {
    /// Loads `text_encoder_dir` (`config.json` + `model.safetensors`, transformers' names with
    /// or without the `text_model.` prefix) and the tokenizer in `tokenizer_dir`.
    pub fn load(
        text_encoder_dir: impl AsRef<Path>,
        tokenizer_dir: impl AsRef<Path>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let tokenizer = ClipTokenizer::from_dir(tokenizer_dir)?;
        let model = load_clip(text_encoder_dir.as_ref(), dtype, device)?;
        Self::new(tokenizer, model, dtype, device)
    }

    /// Loads a `CLIPTextModelWithProjection` (SDXL's `text_encoder_2/`: transformers' names
    /// plus `text_projection.weight`) and its tokenizer.
    pub fn load_with_projection(
        text_encoder_dir: impl AsRef<Path>,
        tokenizer_dir: impl AsRef<Path>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let tokenizer = ClipTokenizer::from_dir(tokenizer_dir)?;
        let model = load_clip_with_projection(text_encoder_dir.as_ref(), dtype, device)?;
        Self::new(tokenizer, model, dtype, device)
    }

    /// From a tokenizer and a loaded model; checks that the token ids fit the model.
    pub fn new(tokenizer: ClipTokenizer, model: ClipTextModel, dtype: DType, device: &Device) -> Result<Self> {
        let c = model.config();
        if tokenizer.max_length() > c.max_position_embeddings {
            return Err(Error::ModelMismatch(format!(
                "the tokenizer pads prompts to {} tokens but the text encoder has {} positions",
                tokenizer.max_length(),
                c.max_position_embeddings
            )));
        }
        let largest = tokenizer.bos_id().max(tokenizer.eos_id()).max(tokenizer.pad_id()) as usize;
        if largest >= c.vocab_size {
            return Err(Error::ModelMismatch(format!(
                "the tokenizer's special token id {largest} is outside the text encoder's vocabulary of {}",
                c.vocab_size
            )));
        }
        Ok(Self {
            tokenizer,
            model,
            dtype,
            device: device.clone(),
            forward_calls: AtomicUsize::new(0),
            prompts_encoded: AtomicUsize::new(0),
        })
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &ClipTokenizer {
        &self.tokenizer
    }

    /// The CLIP model.
    pub fn model(&self) -> &ClipTextModel {
        &self.model
    }

    /// Width of the hidden states (must equal the UNets' cross-attention dim).
    pub fn hidden_size(&self) -> usize {
        self.model.config().hidden_size
    }

    /// The dtype of the hidden states.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Last hidden states `[N, max_length, hidden]` of `prompts`, in one forward pass.
    pub fn encode(&self, prompts: &[&str]) -> Result<Tensor> {
        let ids = self.ids(prompts)?;
        Ok(self.model.forward(&ids)?)
    }

    /// Every output of one forward pass over `prompts` (penultimate hidden states and pooled
    /// outputs for SDXL).
    pub fn encode_all(&self, prompts: &[&str]) -> Result<ClipOutput> {
        let ids = self.ids(prompts)?;
        Ok(self.model.forward_all(&ids)?)
    }

    /// Width of the projected pooled output, if the model has a projection.
    pub fn projection_dim(&self) -> Option<usize> {
        self.model.has_projection().then_some(self.model.config().projection_dim)
    }

    /// Token ids `[N, max_length]` of `prompts` (and the counters of one forward pass).
    fn ids(&self, prompts: &[&str]) -> Result<Tensor> {
        if prompts.is_empty() {
            return Err(Error::InvalidArgument(
                "TextEncoder::encode / encode_all: `prompts` is empty; give at least one prompt".into(),
            ));
        }
        let vocab = self.model.config().vocab_size;
        let mut ids = Vec::with_capacity(prompts.len() * self.tokenizer.max_length());
        for p in prompts {
            let row = self.tokenizer.encode(p)?;
            if let Some(&bad) = row.iter().find(|&&i| i as usize >= vocab) {
                return Err(Error::ModelMismatch(format!(
                    "the tokenizer produced id {bad}, outside the text encoder's vocabulary of {vocab}"
                )));
            }
            ids.extend(row);
        }
        let ids = Tensor::from_vec(ids, (prompts.len(), self.tokenizer.max_length()), &self.device)?;
        self.forward_calls.fetch_add(1, Ordering::Relaxed);
        self.prompts_encoded.fetch_add(prompts.len(), Ordering::Relaxed);
        Ok(ids)
    }

    /// Forward passes run so far.
    pub fn forward_calls(&self) -> usize {
        self.forward_calls.load(Ordering::Relaxed)
    }

    /// Prompts (sequences) encoded so far.
    pub fn prompts_encoded(&self) -> usize {
        self.prompts_encoded.load(Ordering::Relaxed)
    }
}

/// Loads a CLIP text model from a transformers directory.
pub fn load_clip(dir: &Path, dtype: DType, device: &Device) -> Result<ClipTextModel> {
    load_clip_impl(dir, dtype, device, false)
}

/// Loads a `CLIPTextModelWithProjection` (weights `text_model.*` and `text_projection.weight`)
/// from a transformers directory.
pub fn load_clip_with_projection(dir: &Path, dtype: DType, device: &Device) -> Result<ClipTextModel> {
    load_clip_impl(dir, dtype, device, true)
}

fn load_clip_impl(dir: &Path, dtype: DType, device: &Device, projection: bool) -> Result<ClipTextModel> {
    check_path(dir, Kind::Dir, "text encoder directory", None)?;
    let cfg_path = config_path(dir);
    let config = ClipTextConfig::from_file(&cfg_path)?;
    config.validate(&cfg_path)?;
    let act = config.activation(&cfg_path)?;
    let files = find_weight_files(dir, "model", "text encoder")?;
    let weights = CheckedWeights::open(&files)?;
    // Real SD checkpoints carry the `text_model.` prefix; transformers 5 saves without it.
    let prefix = if weights.contains("text_model.embeddings.token_embedding.weight")
        || !weights.contains("embeddings.token_embedding.weight")
    {
        Some("text_model")
    } else {
        None
    };
    if projection {
        if config.projection_dim == 0 {
            return Err(Error::config_field(
                &cfg_path,
                "projection_dim",
                "must be positive for a CLIPTextModelWithProjection, got 0",
            ));
        }
        if prefix.is_none() {
            return Err(Error::MissingTensor {
                file: weights.primary().to_path_buf(),
                tensor: "text_model.embeddings.token_embedding.weight".into(),
                hint: "; a CLIPTextModelWithProjection keeps its tensors under `text_model.` beside \
                       `text_projection.weight`"
                    .into(),
            });
        }
        return weights.build(dtype, device, None, |vb| ClipTextModel::new_with_projection(vb, &config, act));
    }
    weights.build(dtype, device, prefix, |vb| ClipTextModel::new(vb, &config, act))
}
