//! transformers' `CLIPModel`: the text and vision towers, their projections into the joint
//! embedding space and the learned logit scale.

use std::path::Path;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{Linear, VarBuilder};
use deradiff_sd::clip::encoder::linear;
use deradiff_sd::clip::{ClipModelConfig, ClipTextModel};
use deradiff_sd::fs::{check_path, Kind};
use deradiff_sd::{load_checked, Error, Result};

use super::vision::ClipVisionModel;

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
        check_path(dir, Kind::Dir, "CLIP model folder", None)?;
        let config = ClipModelConfig::from_file(dir.join("config.json"))?;
        load_checked(dir, "model", "CLIP model", dtype, device, |vb| Self::new(vb, &config))
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
        Ok(linear(&self.visual_projection, &self.vision.forward(pixel_values)?)?)
    }

    /// `get_text_features`: projected, unnormalised text embeddings `[B, projection_dim]` of
    /// token ids `[B, L]` (u32; `[bos] tokens… [eos] [pad]…`, the pooled position is the
    /// end-of-text token).
    pub fn text_features(&self, ids: &Tensor) -> Result<Tensor> {
        self.text
            .forward_all(ids)?
            .text_embeds
            .ok_or(Error::Internal("the CLIP text tower of a CLIPModel has no projection"))
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
        // `img · txtᵀ` as a linear layer of weight `txt`: each image's row the same bits in any batch.
        Ok((linear(&Linear::new(txt, None), &img)? * self.logit_scale.exp())?)
    }
}
