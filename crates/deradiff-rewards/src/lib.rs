//! # deradiff-rewards
//!
//! What [deradiff](https://github.com/deradiff/deradiff)'s λ search scores samples with.
//!
//! * [`Reward`] — scores a batch of samples (`[n, d]` points, `[n, 3, H, W]` decoded images),
//!   optionally with one prompt per sample: one finite number per sample, higher is better;
//!   [`score_checked`] checks the answer. The analytic testbed's rewards (`AnalyticReward`,
//!   `TrueReward`) are in deradiff-tune.
//! * With the default `sd` feature, the image rewards, each also an [`ImageScorer`] of 8-bit
//!   images (what `deradiff score` runs on files made by any tool):
//!   * [`ClipScore`] and [`PickScore`] from any Hugging Face `CLIPModel` checkpoint
//!     ([`ClipScorer`]: model, tokenizer and image processor), HPS v2 from its open_clip
//!     checkpoint ([`HpsScore`]);
//!   * the LAION aesthetic predictor ([`AestheticScore`]): an MLP on the CLIP image embedding;
//!   * ImageReward ([`ImageRewardScore`]): BLIP's ViT and BERT with cross-attention, and an MLP.
//! * Prompt files ([`read_prompt_file`]): the prompt sets rewards score against, in the formats
//!   they ship in (plain text, JSON lines, CSV / TSV, YAML, JSON), shared by `deradiff score` and
//!   the sweeps; bounded in size, and strict (one YAML document, no id naming two prompts, no
//!   column that the format would ignore).
//! * The towers they run, on deradiff-sd's CLIP text tower, encoder layer and checked weight
//!   loading (their errors are [`deradiff_sd::Error`]s naming the file and the tensor):
//!   [`ClipVisionModel`], [`ClipModel`], the image processor [`ClipPreprocessor`], open_clip
//!   loading ([`OpenClipConfig`]); BLIP ([`BlipVisionModel`], [`BlipTextModel`], [`BlipModel`],
//!   [`BertTokenizer`]).
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use deradiff_rewards::{ClipScore, Reward};
//!
//! let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../deradiff-tune/tests/fixtures/clip/clip-gelu");
//! let clip = ClipScore::load(dir, DType::F32, &Device::Cpu)?;
//! // Decoded images in [-1, 1] (as a VAE gives them), one prompt each.
//! let images = Tensor::zeros((1, 3, 32, 32), DType::F32, &Device::Cpu)?;
//! assert_eq!(clip.score(&images, Some(&["a red cube"]))?.len(), 1);
//! # Ok::<(), deradiff_rewards::Error>(())
//! ```

#![warn(missing_docs)]

#[cfg(feature = "sd")]
mod aesthetic;
#[cfg(feature = "sd")]
mod blip;
#[cfg(feature = "sd")]
mod clip;
#[cfg(feature = "sd")]
mod clip_reward;
mod error;
#[cfg(feature = "sd")]
mod head;
#[cfg(feature = "sd")]
mod image;
#[cfg(feature = "sd")]
mod image_reward;
mod prompts;
mod reward;
#[cfg(feature = "sd")]
mod text;

#[cfg(feature = "sd")]
pub use aesthetic::AestheticScore;
#[cfg(feature = "sd")]
pub use blip::{BertTokenizer, BlipModel, BlipTextModel, BlipVisionConfig, BlipVisionModel, MedConfig};
#[cfg(feature = "sd")]
pub use clip::{
    resize_like_pil, ClipModel, ClipPreprocessor, ClipVisionModel, ImageBackend, OpenClipConfig, PixelConvention,
    Resample, ResizeTo, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD,
};
#[cfg(feature = "sd")]
pub use clip_reward::{
    ClipScore, ClipScoreKind, ClipScorer, CosineReward, CosineScore, HpsKind, HpsScore, PickScore, PickScoreKind,
    PromptTokenizer,
};
pub use error::{Error, Result};
#[cfg(feature = "sd")]
pub use image::{PilImage, PilMode, Transparency};
#[cfg(feature = "sd")]
pub use image_reward::ImageRewardScore;
pub use prompts::{
    parse_prompt_file, read_prompt_file, PromptEntry, MAX_PROMPTS, MAX_PROMPT_BYTES, MAX_PROMPT_FILE_BYTES,
    MAX_YAML_DEPTH, MAX_YAML_NODES,
};
#[cfg(feature = "sd")]
pub use reward::ImageScorer;
pub use reward::{score_checked, Reward};
#[cfg(feature = "sd")]
pub use text::{fix_text, html_unescape, open_clip_clean, OpenClipTokenizer};
