//! # deradiff-sd
//!
//! Stable Diffusion 1.x / 2.x and SDXL for [deradiff](https://github.com/deradiff/deradiff): sample from
//! the realigned mixture of a reference checkpoint and UNets aligned from it (for example
//! `runwayml/stable-diffusion-v1-5` and `mhdang/dpo-sd1.5-text2image-v1`), emulating any KL
//! strength β/λ without training.
//!
//! * [`StableDiffusion`] loads a diffusers-layout directory (`unet/`, `text_encoder/`,
//!   `tokenizer/`, `vae/`, `scheduler/scheduler_config.json`) plus aligned UNets (a pipeline
//!   directory, a bare `unet/` directory or one `.safetensors` file), checks that they fit, and
//!   [`generates`](StableDiffusion::generate) images: the prompts are encoded once and shared by
//!   every UNet, the realigned loop of [`deradiff_core::Sampler`] runs, the VAE decodes once.
//! * [`Unet`] — diffusers' `UNet2DConditionModel` on our own blocks (model, blocks, layers,
//!   embeddings; the fused CPU kernels of `deradiff-kernels`), configured from the
//!   checkpoint's own `unet/config.json` ([`UnetConfig`] → [`UnetArch`]); ε- and v-prediction (the scheduler config says which). SDXL UNets
//!   (`addition_embed_type = "text_time"`) also embed the pooled text embedding and the six
//!   size/crop `time_ids` ([`AddedConditioning`]) and add them to the timestep embedding, which
//!   candle's UNet silently skips.
//! * SDXL ([`StableDiffusion::load`] detects it from the checkpoint): both text encoders (CLIP
//!   ViT-L and OpenCLIP ViT-bigG with its projection), their *penultimate* hidden states
//!   concatenated, the pooled embedding from encoder 2, zero negative embeddings under
//!   `force_zeros_for_empty_prompt`, the micro-conditioning of [`Request`] (original size, crop,
//!   target size; diffusers' defaults), the VAE's own `scaling_factor` (0.13025).
//! * [`SingleFile`] — single-file checkpoints in the original (CompVis LDM / Stability SGM)
//!   layout, as the web UIs ship them, loaded natively by [`StableDiffusion::load`] and
//!   [`Unet::load`]: family ([`SingleFileFamily`]) and architecture inferred from the tensors,
//!   the rest from templates equal to diffusers' configs for SD 1.5 / 2.1 / SDXL, tensors served
//!   from the memory map under their original names; tokenizers and overrides from
//!   [`LoadOptions::single_file`] ([`SingleFileOptions`]).
//! * [`Guided`] — classifier-free guidance as a [`deradiff_core::Denoiser`] wrapper: conditional
//!   and unconditional in one batched pass; wraps any [`ConditionalModel`].
//! * [`TextEncoder`] — the checkpoint's CLIP tokenizer ([`ClipTokenizer`]) and text model
//!   ([`clip::ClipTextModel`], configured from `text_encoder/config.json`).
//! * [`clip`] — CLIP's text tower, the configs of the whole `CLIPModel` and the encoder layer
//!   every CLIP tower shares ([`clip::encoder`]; the vision towers and the rewards built on them
//!   are in `deradiff-rewards`).
//! * [`lora`] — LoRA adapters of the UNet: the layouts people ship, merging into a UNet
//!   ([`Unet::merged_with`]) or attaching for one joint pass ([`Unet::with_adapters`]), and
//!   extraction from two full UNets ([`lora::extract_lora`]).
//! * [`Vae`] — the decoder, with the config's `scaling_factor` and scale factor: `decode` (8-bit
//!   images) and `decode_f32` (`[B, 3, H, W]` in `[0, 1]`) take latents as the sampler gives
//!   them; `decode_unscaled` takes latents already divided by the scaling factor.
//! * Guidance defaults to the checkpoint's: 5.0 for SDXL (diffusers' SDXL default), 7.5 for
//!   SD 1.x / 2.x ([`Request::guidance_scale`] `None`).
//! * [`RgbImage`] — 8-bit output, written as PNG atomically.
//!
//! ## Layers
//!
//! The modules read top-down; none imports from a layer above its own (`tests/layers.rs`
//! checks it):
//!
//! 1. utilities: `error`, `device`, `image` ([`RgbImage`]), [`fs`] (paths, probing, reading
//!    text and JSON files), `hub` (Hugging Face repo ids in the local cache: [`HubCache`],
//!    [`resolve_model_path`]), `limits` (the size limits and the latent-size check), `conditioning`
//!    ([`ConditionalModel`], [`AddedConditioning`]);
//! 2. weights and configs: `weights` ([`load_checked`]), `config` ([`UnetConfig`], [`VaeConfig`]);
//! 3. models: `unet` (`load`, `adapters`, `model`, `blocks`, `layers`, `embeddings`), `vae`,
//!    [`clip`], `single_file` (the original layout's names and templates);
//! 4. [`lora`], above the UNet it reads, merges into and extracts from (the UNet knows nothing of
//!    LoRA);
//! 5. guidance and text: `guidance` ([`Guided`], [`JointGuided`], [`PromptEmbeddings`]), `text`
//!    ([`TextEncoder`]), `tokenizer` ([`ClipTokenizer`]), and `blip` (ImageReward's BLIP);
//! 6. the pipeline: `pipeline` (`request`, `load`, `encode`, `sample`; [`StableDiffusion`]).
//!
//! Only [`fs`], [`clip`] and [`lora`] are public modules; everything else is re-exported here.
//!
//! Weights are safetensors only; a missing or misshapen tensor is an [`Error`] naming the file
//! and the tensor. dtype f32, f16 or bf16 (bf16 needs a GPU in candle 0.11); CPU, or CUDA /
//! Metal with the `cuda` / `metal` features.
//!
//! ```no_run
//! use deradiff_core::{NoObserver, Realigner};
//! use deradiff_sd::{LoadOptions, Request, StableDiffusion};
//!
//! let sd = StableDiffusion::load("sd15", &["dpo-unet"], &LoadOptions::default())?;
//! let request = Request { prompts: vec!["a red cube on a table".into()], seed: 7, ..Default::default() };
//! let out = sd.generate(&request, &Realigner::two_model(0.5)?, &mut NoObserver)?;
//! out.images[0].save_png("cube.png")?;
//! # Ok::<(), deradiff_sd::Error>(())
//! ```
//!
//! ## Fidelity
//!
//! Checked against diffusers 0.42 / transformers 5 on tiny random models (see
//! `scripts/gen_sd_fixtures.py`, `scripts/gen_sdxl_fixtures.py` and the crate's tests). All UNets
//! run our own blocks with diffusers' exact GELU in the feed-forward (candle's blocks use the tanh
//! approximation, about 6e-5 off): SD 1.x / 2.x UNet output about 2e-6 off, final latents of the
//! six-step guided realigned runs within 1e-4 (relative 1.5e-6); SDXL about 1.5e-6 off, final
//! latents of a four-step guided realigned run 2e-5 off. The CLIP text models use the
//! activation their config names (exact GELU for `"gelu"`).

#![warn(missing_docs)]

pub mod clip;
pub mod fs;
pub mod lora;

mod conditioning;
mod config;
mod device;
mod error;
mod guidance;
mod hub;
mod image;
mod limits;
mod pipeline;
mod single_file;
mod text;
mod tokenizer;
mod unet;
mod vae;
mod weights;

pub use conditioning::{AddedConditioning, ConditionalModel};
pub use config::{TextTimeArch, UnetArch, UnetBlock, UnetConfig, VaeConfig};
pub use device::{check_dtype_supported, describe_device, parse_device, parse_dtype};
pub use error::{Error, Result};
pub use guidance::{GuidanceScale, Guided, JointDenoiser, JointGuided, PromptEmbeddings};
pub use hub::{resolve_model_path, resolve_model_path_with, HubCache, RepoRef};
pub use image::RgbImage;
pub use pipeline::{
    EncodedRequest, Generation, LoadOptions, Request, SingleFileOptions, StableDiffusion, DEFAULT_STEPS,
};
pub use single_file::{is_original_layout, SingleFile, SingleFileFamily};
pub use text::{load_clip, load_clip_with_projection, TextEncoder};
pub use tokenizer::{parse_tokenizer_json, plain_ids, ClipTokenizer};
pub use unet::{AdapterView, GroupedView, RowGroup, Unet, UnetLocation};
pub use vae::Vae;
pub use weights::{load_checked, load_checked_file, load_tensors_checked, sniff_safetensors};
