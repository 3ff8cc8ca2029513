//! ImageReward (Xu et al. 2023; THUDM/ImageReward, the `image-reward` package) as a [`Reward`]:
//! BLIP's ViT-L encodes the image, BLIP's BERT encodes the prompt while cross-attending to the
//! image's tokens, and an MLP on the `[CLS]` features gives the reward, normalised as the package
//! does: `(mlp(features) − 0.16717362830052426) / 1.0333394966054072`.
//!
//! As `ImageReward.score(prompt, image)` computes it: the prompt tokenised by BLIP's BERT
//! tokenizer, `[CLS] … [SEP]` padded and truncated to 35 tokens ([`BertTokenizer`]);
//! the image through openai/CLIP's transform at 224 px ([`ClipPreprocessor::openai_clip`]:
//! torchvision's bicubic resize of the shorter side on the PIL image, centre crop, OpenAI's mean
//! and std); the encoders of [`BlipModel`]; the MLP `mlp.layers.{0,2,4,6,7}` (linear
//! layers, no activations).
//!
//! The model folder holds `model.safetensors` (the published `ImageReward.pt`, converted with
//! `python scripts/convert_to_safetensors.py image-reward ImageReward.pt DIR/model.safetensors`),
//! the Hub's `med_config.json`, and bert-base-uncased's `vocab.txt` or `tokenizer.json`;
//! `vision_config.json` is optional (ImageReward's ViT-L otherwise).
//!
//! Checked against the package's own code on a tiny random model
//! (`scripts/gen_image_reward_fixtures.py`, `tests/image_reward.rs`): token ids equal,
//! preprocessed pixels identical, image tokens, text features and rewards within 1e-4.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use deradiff_rewards::{ImageRewardScore, Reward};
//!
//! let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../deradiff-tune/tests/fixtures/image_reward");
//! let reward = ImageRewardScore::load(dir, DType::F32, &Device::Cpu)?;
//! // Two decoded images in [-1, 1] (as a VAE gives them), one prompt each.
//! let images = Tensor::zeros((2, 3, 40, 32), DType::F32, &Device::Cpu)?;
//! let scores = reward.score(&images, Some(&["a red cube", "a blue sphere"]))?;
//! assert_eq!(scores.len(), 2);
//! # Ok::<(), deradiff_rewards::Error>(())
//! ```

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use deradiff_sd::RgbImage;

use crate::blip::{BertTokenizer, BlipModel};
use crate::clip::ClipPreprocessor;
use crate::error::{Error, Result};
use crate::head::LinearHead;
use crate::image::PilImage;
use crate::reward::{require_prompts, ImageScorer, Reward};

/// ImageReward's score of images against their prompts. Name `image_reward`.
#[derive(Debug)]
pub struct ImageRewardScore {
    model: BlipModel,
    tokenizer: BertTokenizer,
    preprocessor: ClipPreprocessor,
    head: LinearHead,
    device: Device,
    source: PathBuf,
    name: String,
}

impl ImageRewardScore {
    /// The mean the raw MLP output is centred by (`ImageReward.mean`).
    pub const MEAN: f64 = 0.16717362830052426;
    /// The standard deviation it is divided by (`ImageReward.std`).
    pub const STD: f64 = 1.0333394966054072;
    /// Tokens per prompt (`max_length=35` in `ImageReward.score`).
    pub const MAX_LENGTH: usize = 35;

    /// Loads an ImageReward folder (see the module docs).
    pub fn load(dir: impl AsRef<Path>, dtype: DType, device: &Device) -> Result<Self> {
        let dir = dir.as_ref();
        let model = BlipModel::load(dir, dtype, device)?;
        let tokenizer = BertTokenizer::from_dir(dir)?;
        let hidden = model.text().config().hidden_size;
        let head = LinearHead::load(
            &dir.join("model.safetensors"),
            "mlp.",
            hidden,
            "ImageReward model",
            "python scripts/convert_to_safetensors.py image-reward ImageReward.pt <dir>/model.safetensors",
        )?;
        if Self::MAX_LENGTH > model.text().config().max_position_embeddings {
            return Err(Error::InvalidArgument(format!(
                "{}: the text encoder has {} positions, fewer than ImageReward's {} tokens",
                dir.display(),
                model.text().config().max_position_embeddings,
                Self::MAX_LENGTH
            )));
        }
        let preprocessor = ClipPreprocessor::openai_clip(model.vision().config().image_size);
        Ok(Self {
            model,
            tokenizer,
            preprocessor,
            head,
            device: device.clone(),
            source: dir.to_path_buf(),
            name: "image_reward".into(),
        })
    }

    /// Another name (results-file column).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The BLIP encoders.
    pub fn model(&self) -> &BlipModel {
        &self.model
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &BertTokenizer {
        &self.tokenizer
    }

    /// The image preprocessor.
    pub fn preprocessor(&self) -> &ClipPreprocessor {
        &self.preprocessor
    }

    /// Token ids and attention masks `[N, 35]` (u32) of `prompts`, as the package's
    /// `tokenizer(prompt, padding="max_length", truncation=True, max_length=35)`.
    pub fn token_ids(&self, prompts: &[&str]) -> Result<(Tensor, Tensor)> {
        let n = prompts.len();
        let (mut ids, mut mask) = (Vec::with_capacity(n * Self::MAX_LENGTH), Vec::with_capacity(n * Self::MAX_LENGTH));
        let vocab = self.model.text().config().vocab_size;
        for p in prompts {
            let (i, m) = self.tokenizer.encode(p, Self::MAX_LENGTH)?;
            if let Some(&bad) = i.iter().find(|&&id| id as usize >= vocab) {
                return Err(Error::InvalidArgument(format!(
                    "the tokenizer of {} produced id {bad}, outside the text encoder's vocabulary of {vocab} (is the \
                     tokenizer bert-base-uncased's?)",
                    self.source.display()
                )));
            }
            ids.extend(i);
            mask.extend(m);
        }
        Ok((
            Tensor::from_vec(ids, (n, Self::MAX_LENGTH), &self.device)?,
            Tensor::from_vec(mask, (n, Self::MAX_LENGTH), &self.device)?,
        ))
    }

    /// The `[CLS]` features `[N, hidden]` (f32) of image i with prompt i.
    pub fn features(&self, images: &[RgbImage], prompts: &[&str]) -> Result<Tensor> {
        Self::check_counts(images.len(), prompts.len())?;
        let pixels = self.preprocessor.preprocess_batch(images, &self.device)?;
        self.pixel_features(&pixels, prompts)
    }

    fn check_counts(images: usize, prompts: usize) -> Result<()> {
        if images != prompts || images == 0 {
            return Err(Error::InvalidArgument(format!(
                "{images} images and {prompts} prompts: give one prompt per image (at least one)"
            )));
        }
        Ok(())
    }

    /// The `[CLS]` features of preprocessed pixels `[N, 3, S, S]` with prompt i.
    fn pixel_features(&self, pixels: &Tensor, prompts: &[&str]) -> Result<Tensor> {
        let image_embeds = self.model.image_embeds(pixels)?;
        let (ids, mask) = self.token_ids(prompts)?;
        Ok(self.model.text_features(&ids, &mask, &image_embeds)?)
    }

    /// The rewards of `[CLS]` features `[N, hidden]`: the MLP, then `(r − MEAN) / STD`.
    pub fn score_features(&self, features: &Tensor) -> Result<Vec<f64>> {
        let rows: Vec<Vec<f64>> = features.to_device(&Device::Cpu)?.to_dtype(DType::F64)?.to_vec2()?;
        rows.iter().map(|x| Ok((self.head.apply(x, "ImageReward (text features)")? - Self::MEAN) / Self::STD)).collect()
    }

    /// Scores 8-bit images against one prompt each.
    pub fn score_images(&self, images: &[RgbImage], prompts: &[&str]) -> Result<Vec<f64>> {
        if images.is_empty() && prompts.is_empty() {
            return Ok(Vec::new());
        }
        self.score_features(&self.features(images, prompts)?)
    }
}

impl Reward for ImageRewardScore {
    fn name(&self) -> String {
        self.name.clone()
    }

    /// Scores decoded samples `[N, 3, H, W]` in `[-1, 1]`, made the 8-bit images a user saves
    /// first ([`RgbImage::from_tensor`]); prompts are required.
    fn score(&self, samples: &Tensor, prompts: Option<&[&str]>) -> Result<Vec<f64>> {
        let images = RgbImage::from_tensor(samples)?;
        self.score_rgb(&images, prompts)
    }
}

impl ImageScorer for ImageRewardScore {
    fn needs_prompts(&self) -> bool {
        true
    }

    fn score_rgb(&self, images: &[RgbImage], prompts: Option<&[&str]>) -> Result<Vec<f64>> {
        self.score_images(images, require_prompts(prompts, &self.name)?)
    }

    /// Decoded files as `ImageReward.score(prompt, path)` opens them: resized in their own PIL
    /// mode before `convert("RGB")` (openai/CLIP's transform order,
    /// [`ClipPreprocessor::reference_rgb`]).
    fn score_pil(&self, images: &[PilImage], prompts: Option<&[&str]>) -> Result<Vec<f64>> {
        let prompts = require_prompts(prompts, &self.name)?;
        if images.is_empty() && prompts.is_empty() {
            return Ok(Vec::new());
        }
        Self::check_counts(images.len(), prompts.len())?;
        let pixels = self.preprocessor.preprocess_batch_pil(images, &self.device)?;
        self.score_features(&self.pixel_features(&pixels, prompts)?)
    }
}
