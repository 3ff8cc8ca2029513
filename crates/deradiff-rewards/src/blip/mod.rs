//! BLIP's image and text encoders as ImageReward (THUDM/ImageReward, the `image-reward` package)
//! uses them to score an image against its prompt:
//!
//! * [`BlipVisionModel`] — BLIP's ViT (models/BLIP/vit.py; ViT-L/16 at 224 px in ImageReward),
//!   built on the CLIP towers' encoder layer;
//! * [`BlipTextModel`] — med.py's BERT whose layers cross-attend to the image's tokens;
//! * [`BlipModel`] — both, loaded from ImageReward's checkpoint layout, giving the `[CLS]`
//!   features that ImageReward's MLP head scores;
//! * [`BertTokenizer`] — bert-base-uncased's WordPiece with BLIP's `[DEC]` / `[ENC]`.
//!
//! The images go through openai/CLIP's transform ([`crate::ClipPreprocessor::openai_clip`]).
//! Checked against the `image-reward` package's own code on a tiny random model
//! (`scripts/gen_image_reward_fixtures.py`).

mod config;
mod text;
mod tokenizer;
mod vision;

use std::path::Path;

use candle_core::{DType, Device, Tensor};

pub use config::{BlipVisionConfig, MedConfig};
pub use text::BlipTextModel;
pub use tokenizer::BertTokenizer;
pub use vision::BlipVisionModel;

use deradiff_sd::fs::{check_path, probe_path, Kind};
use deradiff_sd::{Error, Result};

/// BLIP's two encoders from ImageReward's state dict (`blip.visual_encoder.*`,
/// `blip.text_encoder.*`; `blip.vision_proj`, `blip.text_proj` and the head are not read).
#[derive(Debug)]
pub struct BlipModel {
    vision: BlipVisionModel,
    text: BlipTextModel,
}

impl BlipModel {
    /// Loads an ImageReward folder: `model.safetensors` (`ImageReward.pt` converted by
    /// `scripts/convert_to_safetensors.py image-reward`), `med_config.json` (the Hub's) and,
    /// optionally, `vision_config.json` (ImageReward's ViT-L when absent, see
    /// [`BlipVisionConfig`]). A missing or misshapen tensor is an error naming it.
    pub fn load(dir: impl AsRef<Path>, dtype: DType, device: &Device) -> Result<Self> {
        let dir = dir.as_ref();
        check_path(dir, Kind::Dir, "ImageReward folder", None)?;
        let vision_path = dir.join("vision_config.json");
        let vision = if probe_path(&vision_path, Kind::File, "BLIP vision config", None)? {
            BlipVisionConfig::from_file(&vision_path)?
        } else {
            BlipVisionConfig::default()
        };
        let med_path = dir.join("med_config.json");
        let med = MedConfig::from_file(&med_path)?;
        let act = med.activation(&med_path)?;
        let (pickle, weights) = (dir.join("ImageReward.pt"), dir.join("model.safetensors"));
        let convert =
            format!("python scripts/convert_to_safetensors.py image-reward {} {}", pickle.display(), weights.display());
        if !probe_path(&weights, Kind::File, "ImageReward weights", None)? && std::fs::symlink_metadata(&pickle).is_ok()
        {
            return Err(Error::unsupported(
                &pickle,
                format!("the published checkpoint is a pickle (which can run code); convert it with `{convert}`"),
            ));
        }
        deradiff_sd::load_checked(dir, "model", "ImageReward model", dtype, device, |vb| {
            let vb = vb.pp("blip");
            Ok(Self {
                vision: BlipVisionModel::new(vb.pp("visual_encoder"), &vision)?,
                text: BlipTextModel::new(vb.pp("text_encoder"), &med, vision.embed_dim, act)?,
            })
        })
        .map_err(|e| e.with_conversion("the published ImageReward.pt", &convert))
    }

    /// The ViT.
    pub fn vision(&self) -> &BlipVisionModel {
        &self.vision
    }

    /// The text encoder.
    pub fn text(&self) -> &BlipTextModel {
        &self.text
    }

    /// The image tokens `[B, 1 + patches, embed_dim]` of pixel values `[B, 3, S, S]`.
    pub fn image_embeds(&self, pixel_values: &Tensor) -> Result<Tensor> {
        self.vision.forward(pixel_values)
    }

    /// The `[CLS]` state `[B, hidden]` (f32) of each prompt (ids and mask `[B, L]`) after its
    /// text attended to image `i`'s tokens: ImageReward's `txt_features`.
    pub fn text_features(&self, ids: &Tensor, attention_mask: &Tensor, image_embeds: &Tensor) -> Result<Tensor> {
        let hidden = self.text.forward(ids, attention_mask, image_embeds)?;
        Ok(hidden.narrow(1, 0, 1)?.squeeze(1)?.to_dtype(DType::F32)?)
    }
}
