//! CLIP score and PickScore: text–image [`Reward`]s from any Hugging Face `CLIPModel` checkpoint
//! in safetensors.
//!
//! The model is our [`ClipModel`] (transformers' `CLIPModel`: both towers, their
//! projections, `logit_scale`, every size and activation from the checkpoint's `config.json`),
//! images go through its [`ClipPreprocessor`] (transformers' `CLIPImageProcessor` with PIL's
//! resampling, from `preprocessor_config.json` when the checkpoint has one) and prompts through
//! the checkpoint's [`ClipTokenizer`].
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
//! Which reference, exactly:
//!
//! * prompts: transformers' `CLIPTokenizer` of the folder (`tokenizer.json`, or `vocab.json` +
//!   `merges.txt`), `padding="max_length", truncation=True`: a prompt longer than the context
//!   keeps its first `max_length − 2` tokens, then the end token; padding with the folder's pad
//!   token (`<|endoftext|>` for openai's folders, `!` for OpenCLIP's). HPS v2 uses open_clip's
//!   own tokenizer instead ([`OpenClipTokenizer`]: ftfy and HTML cleaning, its cut). Equal ids on
//!   640 hostile prompts (`tests/tokenizer_fidelity.rs`);
//! * images: transformers' **PIL** image processor (`CLIPImageProcessorPil`, i.e.
//!   `CLIPProcessor.from_pretrained(dir, backend="pil")`), with its `convert_to_rgb` compositing
//!   alpha and `tRNS` transparency on white. transformers 5's default backend is torchvision's
//!   (`CLIPImageProcessor`): it resizes on tensors and gives CLIP scores up to 2.5e-3 relative
//!   away on the fixture images; [`ClipScorer::with_image_backend`] (`--clip-image-backend
//!   torchvision`) matches that one instead. Files are decoded in
//!   PIL's modes ([`PilImage`]); equal scores on 34 PNGs of every mode (`tests/image_fidelity.rs`).
//!
//! ```
//! use std::sync::Arc;
//! use candle_core::{DType, Device, Tensor};
//! use deradiff_rewards::{ClipScore, ClipScorer, PickScore, Reward};
//!
//! let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../deradiff-tune/tests/fixtures/clip/clip-gelu");
//! let scorer = Arc::new(ClipScorer::load(dir, DType::F32, &Device::Cpu)?);
//! let (clip, pick) = (ClipScore::new(scorer.clone()), PickScore::new(scorer));
//! // Two decoded images in [-1, 1] (as a VAE gives them), one prompt each.
//! let images = Tensor::zeros((2, 3, 32, 32), DType::F32, &Device::Cpu)?;
//! let prompts = ["a red cube", "a blue sphere"];
//! let s = clip.score(&images, Some(&prompts))?;
//! assert!(s.iter().all(|v| (0.0..=100.0).contains(v)));
//! assert_eq!(pick.score(&images, Some(&prompts))?.len(), 2);
//! # Ok::<(), deradiff_rewards::Error>(())
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use deradiff_sd::{ClipTokenizer, RgbImage};

use crate::clip::{ClipModel, ClipPreprocessor, ImageBackend, OpenClipConfig};
use crate::error::{Error, Result};
use crate::image::PilImage;
use crate::reward::{require_prompts, ImageScorer, Reward};
use crate::text::OpenClipTokenizer;

/// The tokenizer of a [`ClipScorer`]: transformers' `CLIPTokenizer` of a Hub folder (CLIP score,
/// PickScore, the aesthetic predictor's CLIP) or open_clip's own (HPS v2).
#[derive(Debug)]
pub enum PromptTokenizer {
    /// transformers' `CLIPTokenizer` (NFC, white space, lower case; the folder's padding token).
    Clip(Box<ClipTokenizer>),
    /// open_clip's tokenizer (ftfy, HTML unescaping; zero padding; the end token kept on a cut).
    OpenClip(Box<OpenClipTokenizer>),
}

impl PromptTokenizer {
    /// Ids per prompt.
    pub fn max_length(&self) -> usize {
        match self {
            Self::Clip(t) => t.max_length(),
            Self::OpenClip(t) => t.context_length(),
        }
    }

    /// Exactly [`Self::max_length`] ids of `prompt`, as the reference tokenizes and pads it.
    pub fn encode(&self, prompt: &str) -> Result<Vec<u32>> {
        Ok(match self {
            Self::Clip(t) => t.encode(prompt)?,
            Self::OpenClip(t) => t.encode(prompt)?,
        })
    }

    /// Whether `prompt` is longer than the context (the reference cuts its tail).
    pub fn is_truncated(&self, prompt: &str) -> Result<bool> {
        Ok(match self {
            Self::Clip(t) => t.is_truncated(prompt)?,
            Self::OpenClip(t) => t.is_truncated(prompt)?,
        })
    }
}

impl From<ClipTokenizer> for PromptTokenizer {
    fn from(t: ClipTokenizer) -> Self {
        Self::Clip(Box::new(t))
    }
}

impl From<OpenClipTokenizer> for PromptTokenizer {
    fn from(t: OpenClipTokenizer) -> Self {
        Self::OpenClip(Box::new(t))
    }
}

/// A `CLIPModel` with its tokenizer and image preprocessor: embeds images and prompts and gives
/// their cosine similarities.
#[derive(Debug)]
pub struct ClipScorer {
    model: ClipModel,
    tokenizer: PromptTokenizer,
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
        let model = load_clip_model(dir, dtype, device)?;
        let tokenizer = ClipTokenizer::from_dir(dir)?;
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
        let model = load_clip_model(model_dir, dtype, device)?;
        let tokenizer = ClipTokenizer::from_dir(processor_dir)?;
        let preprocessor = ClipPreprocessor::from_dir(processor_dir)?;
        Self::new(model, tokenizer, preprocessor, device, model_dir)
    }

    /// From parts (for a tokenizer or preprocessor kept elsewhere, as PickScore_v1's processor
    /// in `laion/CLIP-ViT-H-14-laion2B-s32B-b79K`). Checks that the token ids and the crop fit
    /// the model; `source` names the model in messages.
    pub fn new(
        model: ClipModel,
        tokenizer: impl Into<PromptTokenizer>,
        preprocessor: ClipPreprocessor,
        device: &Device,
        source: impl Into<PathBuf>,
    ) -> Result<Self> {
        let tokenizer = tokenizer.into();
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
    pub fn tokenizer(&self) -> &PromptTokenizer {
        &self.tokenizer
    }

    /// The same model with transformers' other image-processor backend for its
    /// `preprocessor_config.json` ([`ImageBackend`]; PIL's by default).
    pub fn with_image_backend(mut self, backend: ImageBackend) -> Result<Self> {
        self.preprocessor = self.preprocessor.clone().with_backend(backend)?;
        Ok(self)
    }

    /// The device the model runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The image preprocessor.
    pub fn preprocessor(&self) -> &ClipPreprocessor {
        &self.preprocessor
    }

    /// Token ids `[N, max_length]` (u32) of `prompts`, as the reference tokenizer gives them:
    /// `CLIPProcessor(text, padding="max_length", truncation=True)` — `[bos] tokens… [eos] [pad]…`,
    /// the tokens cut to `max_length − 2` — for a Hub folder's tokenizer; open_clip's `tokenize`
    /// — the end token kept as the last id of a cut — for HPS v2 (padding does not change the
    /// pooled output: the text tower is causal).
    pub fn token_ids(&self, prompts: &[&str]) -> Result<Tensor> {
        if prompts.is_empty() {
            return Err(Error::InvalidArgument("no prompts to encode".into()));
        }
        let vocab = self.model.config().text.vocab_size;
        let len = self.tokenizer.max_length();
        let mut ids = Vec::with_capacity(prompts.len() * len);
        for p in prompts {
            let row = self.tokenizer.encode(p)?;
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

    /// Projected, unnormalised image embeddings `[N, projection_dim]` (f32) of decoded files,
    /// each made RGB as the reference does ([`ClipPreprocessor::reference_rgb`]).
    pub fn pil_embeds(&self, images: &[PilImage]) -> Result<Tensor> {
        let pixels = self.preprocessor.preprocess_batch_pil(images, &self.device)?;
        self.pixel_embeds(&pixels)
    }

    /// Image embeddings of preprocessed pixel values `[N, 3, S, S]`.
    pub fn pixel_embeds(&self, pixel_values: &Tensor) -> Result<Tensor> {
        Ok(self.model.image_features(pixel_values)?.to_dtype(DType::F32)?)
    }

    /// Cosine similarity of image i with prompt i (each distinct prompt is encoded once).
    pub fn cosine(&self, images: &[RgbImage], prompts: &[&str]) -> Result<Vec<f64>> {
        if one_prompt_per_image(images.len(), prompts.len())? {
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
        let prompts = require_prompts(prompts, reward)?;
        let images = RgbImage::from_tensor(samples)?;
        self.cosine(&images, prompts)
    }
}

/// Checks that `images` and `prompts` pair up; `true` when both are empty (nothing to score).
fn one_prompt_per_image(images: usize, prompts: usize) -> Result<bool> {
    if images != prompts {
        return Err(Error::InvalidArgument(format!(
            "{images} images and {prompts} prompts: give one prompt per image"
        )));
    }
    Ok(images == 0)
}

/// [`ClipModel::load`]; a pickled checkpoint is told transformers' conversion.
fn load_clip_model(dir: &Path, dtype: DType, device: &Device) -> Result<ClipModel> {
    ClipModel::load(dir, dtype, device).map_err(|e| {
        Error::from(e.with_conversion(
            "a transformers CLIPModel checkpoint",
            &format!(
                "python -c \"from transformers import CLIPModel; CLIPModel.from_pretrained('{0}').save_pretrained('{0}')\"",
                dir.display()
            ),
        ))
    })
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

/// How a [`CosineReward`] turns the cosine similarity of an image and its prompt into a score.
pub trait CosineScore: std::fmt::Debug + Send + Sync {
    /// The reward's default name (its results-file column).
    const NAME: &'static str;
    /// The score of cosine `cos` under `scorer`'s model.
    fn score(cos: f64, scorer: &ClipScorer) -> f64;
}

/// A text–image reward computed from the cosine similarity of CLIP embeddings: [`ClipScore`]
/// and [`PickScore`] differ only in the transform `K`. Samples are decoded images
/// `[N, 3, H, W]` in `[-1, 1]`; prompts are required.
#[derive(Debug)]
pub struct CosineReward<K: CosineScore> {
    scorer: Arc<ClipScorer>,
    name: String,
    _kind: std::marker::PhantomData<K>,
}

/// CLIP score as torchmetrics' `CLIPScore` computes it per sample: `100 · max(cos, 0)` between
/// the image and its prompt (the metric's batch value is the mean). Name `clip_score`.
pub type ClipScore = CosineReward<ClipScoreKind>;

/// PickScore as the `yuvalkirstain/PickScore_v1` model card computes it:
/// `exp(logit_scale) · cos` between the image and its prompt (any `CLIPModel` gives a
/// "PickScore-shaped" score). Name `pickscore`.
pub type PickScore = CosineReward<PickScoreKind>;

/// The transform of [`ClipScore`]: `100 · max(cos, 0)`.
#[derive(Debug)]
pub struct ClipScoreKind;

impl CosineScore for ClipScoreKind {
    const NAME: &'static str = "clip_score";
    fn score(cos: f64, _: &ClipScorer) -> f64 {
        100.0 * cos.max(0.0)
    }
}

/// The transform of [`PickScore`]: `exp(logit_scale) · cos`.
#[derive(Debug)]
pub struct PickScoreKind;

impl CosineScore for PickScoreKind {
    const NAME: &'static str = "pickscore";
    fn score(cos: f64, scorer: &ClipScorer) -> f64 {
        scorer.model().logit_scale().exp() * cos
    }
}

/// HPS v2 / v2.1 (the Human Preference Score) as the `hpsv2` package computes it: the dot
/// product of the normalised image and text features of its open_clip ViT-H-14, i.e. their
/// cosine (`image_features @ text_features.T`, the diagonal; no logit scale), on images
/// resized by their longer side and zero-padded to a square. Name `hps`; load it with
/// [`HpsScore::load_open_clip`].
pub type HpsScore = CosineReward<HpsKind>;

/// The transform of [`HpsScore`]: the cosine itself.
#[derive(Debug)]
pub struct HpsKind;

impl CosineScore for HpsKind {
    const NAME: &'static str = "hps";
    fn score(cos: f64, _: &ClipScorer) -> f64 {
        cos
    }
}

impl HpsScore {
    /// An HPS v2 checkpoint in open_clip's layout, as safetensors (the published
    /// `HPS_v2_compressed.pt` / `HPS_v2.1_compressed.pt` converted by
    /// `scripts/convert_to_safetensors.py hps`), its `open_clip_config.json` (ViT-H-14's), and
    /// CLIP's BPE merges: a tokenizer folder holding `merges.txt` (e.g.
    /// `laion/CLIP-ViT-H-14-laion2B-s32B-b79K`'s) or open_clip's `bpe_simple_vocab_16e6.txt`.
    /// Prompts go through open_clip's own tokenizer ([`OpenClipTokenizer`]: ftfy, HTML
    /// unescaping, its truncation), as `hpsv2.score` tokenizes them. The preprocessing is HPS
    /// v2's ([`ClipPreprocessor::longest_edge_pad`] at the model's image size).
    pub fn load_open_clip(
        weights: impl AsRef<Path>,
        config: impl AsRef<Path>,
        tokenizer_dir: impl AsRef<Path>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let weights = weights.as_ref();
        let config = OpenClipConfig::from_file(config)?;
        let model = ClipModel::load_open_clip(weights, &config, dtype, device).map_err(|e| {
            e.with_conversion(
                "the published HPS checkpoint",
                "python scripts/convert_to_safetensors.py hps HPS_v2.1_compressed.pt hps.safetensors",
            )
        })?;
        let tokenizer = OpenClipTokenizer::from_file(tokenizer_dir, config.context_length)?;
        let preprocessor = ClipPreprocessor::longest_edge_pad(config.image_size);
        Ok(Self::new(ClipScorer::new(model, tokenizer, preprocessor, device, weights)?))
    }
}

impl<K: CosineScore> CosineReward<K> {
    /// Wraps a scorer (named `K::NAME`); an `Arc<ClipScorer>` lets [`ClipScore`] and
    /// [`PickScore`] share one loaded model.
    pub fn new(scorer: impl Into<Arc<ClipScorer>>) -> Self {
        Self { scorer: scorer.into(), name: K::NAME.into(), _kind: std::marker::PhantomData }
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

    fn scores_of_cosines(&self, cos: Vec<f64>) -> Vec<f64> {
        cos.into_iter().map(|c| K::score(c, &self.scorer)).collect()
    }
}

impl<K: CosineScore> Reward for CosineReward<K> {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn score(&self, samples: &Tensor, prompts: Option<&[&str]>) -> Result<Vec<f64>> {
        Ok(self.scores_of_cosines(self.scorer.cosine_of_samples(samples, prompts, &self.name)?))
    }
}

impl<K: CosineScore> ImageScorer for CosineReward<K> {
    fn needs_prompts(&self) -> bool {
        true
    }

    fn score_rgb(&self, images: &[RgbImage], prompts: Option<&[&str]>) -> Result<Vec<f64>> {
        self.score_images(images, require_prompts(prompts, &self.name)?)
    }

    fn score_pil(&self, images: &[PilImage], prompts: Option<&[&str]>) -> Result<Vec<f64>> {
        let prompts = require_prompts(prompts, &self.name)?;
        if one_prompt_per_image(images.len(), prompts.len())? {
            return Ok(Vec::new());
        }
        let embeds = self.scorer.pil_embeds(images)?;
        Ok(self.scores_of_cosines(self.scorer.cosine_with(&embeds, prompts)?))
    }
}
