//! CLIP, in one place: the text tower Stable Diffusion conditions on, the vision tower and the
//! whole `CLIPModel` that CLIP-based rewards (CLIP score, PickScore) embed images and prompts
//! with, and the image processor in front of it.
//!
//! candle-transformers 0.11's `models::clip` hard-wires quick-GELU into its text tower, takes
//! only its private preset configs and fills a missing `class_embedding` with random values, so
//! this is our own implementation following transformers' tensor names:
//!
//! * [`ClipTextModel`] — `CLIPTextModel` / `CLIPTextModelWithProjection` (`text_model.*`,
//!   `text_projection`): last and penultimate hidden states, the pooled output at the
//!   end-of-text token ([`ClipOutput`]);
//! * [`ClipVisionModel`] — `CLIPVisionTransformer` (`vision_model.*`);
//! * [`ClipModel`] — `CLIPModel`: both towers, `visual_projection` and `logit_scale`;
//! * both towers share one encoder layer ([`encoder`]: pre-norm attention with an optional causal
//!   mask, MLP), public for the vision towers built outside this crate;
//! * [`ClipPreprocessor`] — `CLIPImageProcessor` with PIL's resampling ([`resize_like_pil`]), and
//!   HPS v2's longest-side-and-pad preprocessing ([`ClipPreprocessor::longest_edge_pad`]) and
//!   openai/CLIP's torchvision transform ([`ClipPreprocessor::openai_clip`], ImageReward's);
//! * open_clip checkpoints (HPS v2's ViT-H-14) mapped onto [`ClipModel`]
//!   ([`ClipModel::load_open_clip`], [`OpenClipConfig`]).
//!
//! Every size (widths, depths, heads, patch and image size, projection) and each tower's
//! `hidden_act` ([`ClipActivation`]: `quick_gelu`, `gelu` — exact —, `gelu_new` /
//! `gelu_pytorch_tanh`) comes from the checkpoint's `config.json` ([`ClipTextConfig`],
//! [`ClipVisionConfig`], [`ClipModelConfig`]), so OpenAI's ViT-B/L (quick-GELU) and OpenCLIP's
//! ViT-H/14 behind `yuvalkirstain/PickScore_v1` (exact GELU) load alike.
//!
//! Checked against transformers 5 on tiny random models (`scripts/gen_sd_fixtures.py`,
//! `scripts/gen_clip_fixtures.py`): hidden states and embeddings within 1e-6, preprocessed
//! pixels identical.

mod config;
pub mod encoder;
mod model;
mod open_clip;
mod processor;
mod text;
mod vision;

pub use config::{ClipActivation, ClipModelConfig, ClipTextConfig, ClipVisionConfig};
pub use model::ClipModel;
pub use open_clip::OpenClipConfig;
pub use processor::{
    resize_like_pil, ClipPreprocessor, PixelConvention, Resample, ResizeTo, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD,
};
pub use text::{ClipOutput, ClipTextModel};
pub use vision::ClipVisionModel;
