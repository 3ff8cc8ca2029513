//! CLIP's text side, and what every CLIP tower shares: the text tower Stable Diffusion
//! conditions on, the configs of the whole `CLIPModel`, and the encoder layer the vision towers
//! of `deradiff-rewards` (CLIP's, BLIP's ViT) are built on.
//!
//! candle-transformers 0.11's `models::clip` hard-wires quick-GELU into its text tower, takes
//! only its private preset configs and fills a missing `class_embedding` with random values, so
//! this is our own implementation following transformers' tensor names:
//!
//! * [`ClipTextModel`] — `CLIPTextModel` / `CLIPTextModelWithProjection` (`text_model.*`,
//!   `text_projection`): last and penultimate hidden states, the pooled output at the
//!   end-of-text token ([`ClipOutput`]);
//! * [`encoder`] — the encoder layer every tower shares (pre-norm attention with an optional
//!   causal mask, MLP).
//!
//! Every size (widths, depths, heads, patch and image size, projection) and each tower's
//! `hidden_act` ([`ClipActivation`]: `quick_gelu`, `gelu` — exact —, `gelu_new` /
//! `gelu_pytorch_tanh`) comes from the checkpoint's `config.json` ([`ClipTextConfig`],
//! [`ClipVisionConfig`], [`ClipModelConfig`]), so OpenAI's ViT-B/L (quick-GELU) and OpenCLIP's
//! ViT-H/14 behind `yuvalkirstain/PickScore_v1` (exact GELU) load alike.
//!
//! Checked against transformers 5 on tiny random models (`scripts/gen_sd_fixtures.py`,
//! `scripts/gen_clip_fixtures.py`): hidden states and embeddings within 1e-6.

mod config;
pub mod encoder;
mod text;

pub use config::{ClipActivation, ClipModelConfig, ClipTextConfig, ClipVisionConfig};
pub use text::{ClipOutput, ClipTextModel};
