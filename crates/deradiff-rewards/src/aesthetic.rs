//! The LAION aesthetic predictor (christophschuhmann/improved-aesthetic-predictor): an MLP on the
//! L2-normalised CLIP ViT-L/14 image embedding, as its `simple_inference.py` computes it.
//!
//! The MLP is five linear layers with dropout between them (inactive at inference) and **no**
//! activations: `Linear(768, 1024) → Linear(1024, 128) → Linear(128, 64) → Linear(64, 16) →
//! Linear(16, 1)`, the published state dict's `layers.{0,2,4,6,7}.{weight,bias}`. The published
//! checkpoint (`sac+logos+ava1-l14-linearMSE.pth`) is a pickle; convert it with
//! `python scripts/convert_to_safetensors.py aesthetic <file>.pth <file>.safetensors` (same tensor
//! names). The CLIP model is `openai/clip-vit-large-patch14` in transformers' layout
//! ([`ClipScorer::load`]); its projected image embedding is the reference's `encode_image`.
//!
//! Images go through what `simple_inference.py` uses, `clip.load("ViT-L/14")`'s `preprocess`:
//! openai/CLIP's torchvision transform ([`ClipPreprocessor::openai_clip`]: `Resize(224,
//! BICUBIC)` on the PIL image in its own mode, `CenterCrop` with torchvision's rounding,
//! `convert("RGB")`, `ToTensor`, OpenAI's normalisation), not the CLIP folder's
//! `preprocessor_config.json` (transformers' processor crops at another offset for odd
//! margins and converts modes differently).

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::clip::ClipPreprocessor;
use crate::clip_reward::ClipScorer;
use crate::error::Result;
use crate::head::LinearHead;
use crate::image::PilImage;
use crate::reward::{ImageScorer, Reward};
use deradiff_sd::RgbImage;

/// The aesthetic score of images (no prompt needed): the predictor's MLP on the normalised CLIP
/// image embedding. Name `aesthetic`.
#[derive(Debug)]
pub struct AestheticScore {
    scorer: Arc<ClipScorer>,
    preprocessor: ClipPreprocessor,
    head: LinearHead,
    name: String,
}

impl AestheticScore {
    /// The CLIP model of `clip_dir` (see [`ClipScorer::load`]) and the MLP of `mlp_file`
    /// (safetensors, `layers.N.weight` / `layers.N.bias`).
    pub fn load(clip_dir: impl AsRef<Path>, mlp_file: impl AsRef<Path>, dtype: DType, device: &Device) -> Result<Self> {
        Self::new(Arc::new(ClipScorer::load(clip_dir, dtype, device)?), mlp_file)
    }

    /// A loaded CLIP scorer (shareable with [`crate::ClipScore`]) and the MLP of `mlp_file`.
    /// The MLP's layers must chain: the first takes the CLIP projection's width, each the
    /// previous one's output, the last gives one value; an error names the tensor otherwise.
    pub fn new(scorer: Arc<ClipScorer>, mlp_file: impl AsRef<Path>) -> Result<Self> {
        let head = LinearHead::load(
            mlp_file.as_ref(),
            "",
            scorer.model().config().projection_dim,
            "aesthetic predictor",
            "python scripts/convert_to_safetensors.py aesthetic <file>.pth <file>.safetensors",
        )?;
        let preprocessor = ClipPreprocessor::openai_clip(scorer.model().config().vision.image_size);
        Ok(Self { scorer, preprocessor, head, name: "aesthetic".into() })
    }

    /// Another name (results-file column).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The CLIP scorer.
    pub fn scorer(&self) -> &Arc<ClipScorer> {
        &self.scorer
    }

    /// The scores of projected CLIP image embeddings `[N, projection_dim]` (each L2-normalised
    /// first, a zero embedding left as it is, as `simple_inference.py`'s `normalized` does).
    pub fn score_embeddings(&self, image_embeds: &Tensor) -> Result<Vec<f64>> {
        let rows: Vec<Vec<f64>> = image_embeds.to_device(&Device::Cpu)?.to_dtype(DType::F64)?.to_vec2()?;
        rows.into_iter()
            .map(|row| {
                let norm = row.iter().map(|x| x * x).sum::<f64>().sqrt();
                let norm = if norm == 0.0 { 1.0 } else { norm };
                let x: Vec<f64> = row.iter().map(|v| v / norm).collect();
                self.head.apply(&x, "aesthetic predictor (image embeddings)")
            })
            .collect()
    }

    /// The image preprocessor (openai/CLIP's transform at the vision tower's size).
    pub fn preprocessor(&self) -> &ClipPreprocessor {
        &self.preprocessor
    }

    /// Scores 8-bit images.
    pub fn score_images(&self, images: &[RgbImage]) -> Result<Vec<f64>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let pixels = self.preprocessor.preprocess_batch(images, self.scorer.device())?;
        self.score_embeddings(&self.scorer.pixel_embeds(&pixels)?)
    }

    /// Scores decoded files, resized in their own PIL mode before `convert("RGB")` as
    /// openai/CLIP's transform does ([`ClipPreprocessor::reference_rgb`]).
    pub fn score_pil_images(&self, images: &[PilImage]) -> Result<Vec<f64>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let pixels = self.preprocessor.preprocess_batch_pil(images, self.scorer.device())?;
        self.score_embeddings(&self.scorer.pixel_embeds(&pixels)?)
    }
}

impl Reward for AestheticScore {
    fn name(&self) -> String {
        self.name.clone()
    }

    /// Scores decoded samples `[N, 3, H, W]` in `[-1, 1]`, made the 8-bit images a user saves
    /// first ([`RgbImage::from_tensor`]); prompts are not used.
    fn score(&self, samples: &Tensor, _prompts: Option<&[&str]>) -> Result<Vec<f64>> {
        self.score_images(&RgbImage::from_tensor(samples)?)
    }
}

impl ImageScorer for AestheticScore {
    fn needs_prompts(&self) -> bool {
        false
    }

    fn score_rgb(&self, images: &[RgbImage], _prompts: Option<&[&str]>) -> Result<Vec<f64>> {
        self.score_images(images)
    }

    fn score_pil(&self, images: &[PilImage], _prompts: Option<&[&str]>) -> Result<Vec<f64>> {
        self.score_pil_images(images)
    }
}
