//! The configs of a single-file checkpoint: its family (SD 1.x, SD 2.x, SDXL) and architecture
//! inferred from its tensors, everything else from built-in templates equal to the configs of
//! the pipelines diffusers' `from_single_file` takes them from for that family
//! (`stable-diffusion-v1-5/stable-diffusion-v1-5`, `stabilityai/stable-diffusion-2-1`,
//! `stabilityai/stable-diffusion-xl-base-1.0`).
//!
//! Inferred from the shapes: the UNet's levels, channels, resnets per level, attention levels
//! and their transformer depths, linear or convolutional projections, cross-attention width,
//! in/out channels and SDXL's added-embedding width; the VAE's levels, channels, resnets and
//! latent channels; the text encoders' vocabulary, width, depth, MLP width, positions and
//! projection. Not in the tensors, so from the template: norm groups (32), attention heads
//! (SD 1.x: 8 per level; SD 2.x / SDXL: one per 64 channels; CLIP: one per 64 channels), SDXL's
//! `addition_time_embed_dim` (256), the VAE's `scaling_factor` (0.18215; SDXL 0.13025), the CLIP
//! activation (CLIP ViT-L `quick_gelu`, open_clip `gelu`) and the scheduler.

use std::collections::HashMap;
use std::path::Path;

use deradiff_core::SchedulerConfig;
use serde_json::Value;

use super::keys::UnetLayout;
use crate::clip::ClipTextConfig;
use crate::config::{UnetConfig, VaeConfig};
use crate::error::{Error, Result};

/// Tensor name → shape, of the whole checkpoint.
pub(crate) type Shapes = HashMap<String, Vec<usize>>;

/// The UNet's prefix in the original layout.
pub(crate) const UNET: &str = "model.diffusion_model.";
/// The VAE's prefix.
pub(crate) const VAE: &str = "first_stage_model.";
/// SD 1.x's CLIP ViT-L (transformers' names).
pub(crate) const SD1_CLIP: &str = "cond_stage_model.transformer.";
/// SD 2.x's open_clip ViT-H.
pub(crate) const SD2_OPEN_CLIP: &str = "cond_stage_model.model.";
/// SDXL's CLIP ViT-L (transformers' names).
pub(crate) const SDXL_CLIP: &str = "conditioner.embedders.0.transformer.";
/// SDXL's open_clip ViT-bigG.
pub(crate) const SDXL_OPEN_CLIP: &str = "conditioner.embedders.1.model.";

/// Which Stable Diffusion a single-file checkpoint is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SingleFileFamily {
    /// SD 1.x: CLIP ViT-L text encoder (`cond_stage_model.transformer.*`), 768-wide context.
    Sd1,
    /// SD 2.x: open_clip ViT-H text encoder (`cond_stage_model.model.*`), 1024-wide context.
    Sd2,
    /// SDXL base: CLIP ViT-L and open_clip ViT-bigG (`conditioner.embedders.{0,1}.*`),
    /// `text_time` added conditioning (`label_emb`).
    Sdxl,
}

impl SingleFileFamily {
    /// "SD 1.x", "SD 2.x" or "SDXL".
    pub fn describe(self) -> &'static str {
        match self {
            Self::Sd1 => "SD 1.x",
            Self::Sd2 => "SD 2.x",
            Self::Sdxl => "SDXL",
        }
    }

    /// The diffusers pipeline whose configs and tokenizers diffusers' `from_single_file` uses for
    /// this family (`DIFFUSERS_DEFAULT_PIPELINE_PATHS`): where the tokenizers of a single file
    /// are found, for example in the Hugging Face cache.
    pub fn diffusers_repo(self) -> &'static str {
        match self {
            Self::Sd1 => "stable-diffusion-v1-5/stable-diffusion-v1-5",
            Self::Sd2 => "stabilityai/stable-diffusion-2-1",
            Self::Sdxl => "stabilityai/stable-diffusion-xl-base-1.0",
        }
    }

    /// Whether the family has a second text encoder and tokenizer (SDXL).
    pub fn has_second_encoder(self) -> bool {
        self == Self::Sdxl
    }
}

fn dim(shapes: &Shapes, name: &str, i: usize) -> Option<usize> {
    shapes.get(name).and_then(|s| s.get(i)).copied()
}

/// A [`Error::MissingTensor`] for a tensor the inference needs.
fn need(path: &Path, tensor: &str, why: &str) -> Error {
    Error::MissingTensor { file: path.to_path_buf(), tensor: tensor.into(), hint: format!(" ({why})") }
}

/// The width of the UNet's cross-attention context (the `attn2.to_k` input width).
fn context_dim(shapes: &Shapes) -> Option<usize> {
    let mut keys: Vec<&String> =
        shapes.keys().filter(|k| k.starts_with(UNET) && k.ends_with(".attn2.to_k.weight")).collect();
    keys.sort();
    keys.first().and_then(|k| dim(shapes, k, 1))
}

/// The family, from the keys and the context width, in the order of diffusers'
/// `infer_diffusers_model_type` (inpainting, SD 2, SDXL base, SDXL refiner, else SD 1);
/// inpainting, refiner and other models are refused. `unet_only` files (an aligned UNet) are
/// judged by their UNet: `label_emb` is SDXL, a 1024-wide context SD 2.x.
pub(crate) fn family(shapes: &Shapes, path: &Path) -> Result<SingleFileFamily> {
    let conv_in = format!("{UNET}input_blocks.0.0.weight");
    let Some(in_channels) = dim(shapes, &conv_in, 1) else {
        return Err(need(
            path,
            &conv_in,
            "the UNet's first convolution: an original-layout checkpoint has its UNet under `model.diffusion_model.`",
        ));
    };
    if in_channels != 4 {
        return Err(Error::unsupported(
            path,
            format!("its UNet takes {in_channels} input channels (an inpainting or other image-conditioned model); deradiff samples text-to-image UNets of 4 latent channels"),
        ));
    }
    let has = |prefix: &str| shapes.keys().any(|k| k.starts_with(prefix));
    if has("conditioner.embedders.0.model.") {
        return Err(Error::unsupported(
            path,
            "an SDXL refiner (open_clip only, aesthetic-score conditioning) is not a text-to-image base model",
        ));
    }
    if shapes.contains_key("edm_mean") {
        return Err(Error::unsupported(path, "a Playground v2.5 checkpoint (EDM formulation) is not supported"));
    }
    let context = context_dim(shapes);
    if shapes.contains_key(&format!("{UNET}label_emb.0.0.weight")) {
        if context == Some(1280) && !has(SDXL_CLIP) {
            return Err(Error::unsupported(
                path,
                "an SDXL refiner UNet (1280-wide context) is not a text-to-image base model",
            ));
        }
        return Ok(SingleFileFamily::Sdxl);
    }
    if has(&format!("{UNET}label_emb.")) {
        return Err(Error::unsupported(path, "a class-conditioned UNet (`label_emb`, an upscaler?) is not supported"));
    }
    if has(SD2_OPEN_CLIP) || (context == Some(1024) && !has(SD1_CLIP)) {
        return Ok(SingleFileFamily::Sd2);
    }
    Ok(SingleFileFamily::Sd1)
}

/// The UNet's block structure, from its keys.
pub(crate) fn unet_layout(shapes: &Shapes, path: &Path) -> Result<UnetLayout> {
    let blocks = |side: &str| {
        shapes
            .keys()
            .filter_map(|k| k.strip_prefix(UNET)?.strip_prefix(side)?.split('.').next()?.parse::<usize>().ok())
            .max()
    };
    let last = blocks("input_blocks.").unwrap_or(0);
    let first_op = (1..=last).find(|i| shapes.contains_key(&format!("{UNET}input_blocks.{i}.0.op.weight")));
    let layers = first_op.map_or(last, |i| i - 1);
    let bad = |why: String| Error::unsupported(path, format!("its UNet's blocks do not form SD's levels: {why}"));
    if layers == 0 || !(last + 1).is_multiple_of(layers + 1) {
        return Err(bad(format!("input_blocks.0..={last} with a first downsampler at {first_op:?}")));
    }
    let levels = (last + 1) / (layers + 1);
    let outputs = blocks("output_blocks.").map_or(0, |l| l + 1);
    if outputs != levels * (layers + 1) {
        return Err(bad(format!(
            "{outputs} output blocks for {levels} levels of {layers} resnets (expected {})",
            levels * (layers + 1)
        )));
    }
    let down_attention = (0..levels)
        .map(|b| shapes.contains_key(&format!("{UNET}input_blocks.{}.1.proj_in.weight", 1 + b * (layers + 1))))
        .collect();
    Ok(UnetLayout { layers, down_attention })
}

/// Attention heads per level: SD 1.x 8 everywhere (`attention_head_dim: 8`); SD 2.x and SDXL one
/// per 64 channels (`[5, 10, 20, 20]`, `[5, 10, 20]`).
fn heads(family: SingleFileFamily, channels: &[usize], attention: &[bool], path: &Path) -> Result<Value> {
    if family == SingleFileFamily::Sd1 {
        return Ok(Value::from(8));
    }
    let mut out = Vec::with_capacity(channels.len());
    for (&c, &att) in channels.iter().zip(attention) {
        if att && !c.is_multiple_of(64) {
            return Err(Error::unsupported(
                path,
                format!(
                    "a level of {c} channels: {}'s template has one attention head per 64 channels; give the \
                     model's diffusers configs (LoadOptions::single_file.config, --model-config DIR)",
                    family.describe()
                ),
            ));
        }
        out.push(Value::from((c / 64).max(1)));
    }
    Ok(Value::from(out))
}

/// The UNet config: the template of `family` with the architecture read from the tensors.
pub(crate) fn unet_config(shapes: &Shapes, family: SingleFileFamily, path: &Path) -> Result<UnetConfig> {
    let layout = unet_layout(shapes, path)?;
    let per = layout.layers + 1;
    let get = |name: String, i: usize, why: &str| {
        dim(shapes, &format!("{UNET}{name}"), i).ok_or_else(|| need(path, &format!("{UNET}{name}"), why))
    };
    let mut channels = Vec::new();
    let mut depth = Vec::new();
    for (b, &att) in layout.down_attention.iter().enumerate() {
        let i = 1 + b * per;
        channels.push(get(format!("input_blocks.{i}.0.out_layers.3.weight"), 0, "a down level's channels")?);
        let n = (0..)
            .take_while(|t| {
                shapes.contains_key(&format!("{UNET}input_blocks.{i}.1.transformer_blocks.{t}.attn1.to_q.weight"))
            })
            .count();
        depth.push(if att { n.max(1) } else { 1 });
    }
    let attention = &layout.down_attention;
    let down: Vec<String> =
        attention.iter().map(|&a| if a { "CrossAttnDownBlock2D" } else { "DownBlock2D" }.to_string()).collect();
    let up: Vec<String> =
        attention.iter().rev().map(|&a| if a { "CrossAttnUpBlock2D" } else { "UpBlock2D" }.to_string()).collect();
    let first_attention = attention.iter().position(|&a| a).unwrap_or(0);
    let proj_in = format!("input_blocks.{}.1.proj_in.weight", 1 + first_attention * per);
    let linear = shapes.get(&format!("{UNET}{proj_in}")).is_some_and(|s| s.len() == 2);
    let context = context_dim(shapes)
        .ok_or_else(|| need(path, &format!("{UNET}…attn2.to_k.weight"), "the cross-attention width"))?;
    let mut c = UnetConfig {
        sample_size: Value::from(match family {
            SingleFileFamily::Sd1 => 64,
            SingleFileFamily::Sd2 => 96,
            SingleFileFamily::Sdxl => 128,
        }),
        in_channels: get("input_blocks.0.0.weight".into(), 1, "the UNet's input channels")?,
        out_channels: get("out.2.weight".into(), 0, "the UNet's output channels")?,
        attention_head_dim: heads(family, &channels, attention, path)?,
        block_out_channels: channels,
        down_block_types: down,
        up_block_types: up,
        layers_per_block: Value::from(layout.layers),
        cross_attention_dim: Value::from(context),
        transformer_layers_per_block: if depth.iter().all(|&d| d == depth[0]) {
            Value::from(depth[0])
        } else {
            Value::from(depth)
        },
        use_linear_projection: linear,
        norm_num_groups: Some(32),
        ..UnetConfig::default()
    };
    match family {
        SingleFileFamily::Sd1 => {}
        SingleFileFamily::Sd2 => c.upcast_attention = Some(true),
        SingleFileFamily::Sdxl => {
            c.addition_embed_type = Value::from("text_time");
            c.addition_time_embed_dim = Some(256);
            c.projection_class_embeddings_input_dim =
                Value::from(get("label_emb.0.0.weight".into(), 1, "SDXL's added-embedding width")?);
        }
    }
    Ok(c)
}

/// The VAE config and its number of levels.
pub(crate) fn vae_config(shapes: &Shapes, family: SingleFileFamily, path: &Path) -> Result<(VaeConfig, usize)> {
    let count = |prefix: &str| {
        shapes
            .keys()
            .filter_map(|k| k.strip_prefix(prefix)?.split('.').next()?.parse::<usize>().ok())
            .max()
            .map_or(0, |m| m + 1)
    };
    let levels = count(&format!("{VAE}encoder.down."));
    let get = |name: String, i: usize, why: &str| {
        dim(shapes, &format!("{VAE}{name}"), i).ok_or_else(|| need(path, &format!("{VAE}{name}"), why))
    };
    if levels == 0 {
        return Err(need(
            path,
            &format!("{VAE}encoder.down.0.block.0.conv1.weight"),
            "the VAE, under `first_stage_model.`",
        ));
    }
    let channels = (0..levels)
        .map(|i| get(format!("encoder.down.{i}.block.0.conv2.weight"), 0, "a VAE level's channels"))
        .collect::<Result<Vec<_>>>()?;
    let c = VaeConfig {
        in_channels: get("encoder.conv_in.weight".into(), 1, "the VAE's input channels")?,
        out_channels: get("decoder.conv_out.weight".into(), 0, "the VAE's output channels")?,
        down_block_types: vec!["DownEncoderBlock2D".into(); levels],
        up_block_types: vec!["UpDecoderBlock2D".into(); levels],
        block_out_channels: channels,
        layers_per_block: count(&format!("{VAE}encoder.down.0.block.")),
        latent_channels: get("decoder.conv_in.weight".into(), 1, "the VAE's latent channels")?,
        norm_num_groups: 32,
        scaling_factor: if family == SingleFileFamily::Sdxl { 0.13025 } else { 0.18215 },
        use_quant_conv: shapes.contains_key(&format!("{VAE}quant_conv.weight")),
        use_post_quant_conv: shapes.contains_key(&format!("{VAE}post_quant_conv.weight")),
        ..VaeConfig::default()
    };
    Ok((c, levels))
}

/// The config of a CLIP ViT-L text model stored with transformers' names under `prefix`
/// (`cond_stage_model.transformer.`): SD 1.5's `text_encoder/config.json` (quick GELU, 64-channel
/// heads, transformers' `eos_token_id` 2: pooled at the argmax of the ids).
pub(crate) fn clip_config(shapes: &Shapes, prefix: &str, path: &Path) -> Result<ClipTextConfig> {
    let p = format!("{prefix}text_model.");
    let get = |name: &str, i: usize| {
        dim(shapes, &format!("{p}{name}"), i).ok_or_else(|| need(path, &format!("{p}{name}"), "the CLIP text model"))
    };
    let layers = (0..).take_while(|n| shapes.contains_key(&format!("{p}encoder.layers.{n}.mlp.fc1.weight"))).count();
    let dims = TextDims {
        vocab: get("embeddings.token_embedding.weight", 0)?,
        hidden: get("embeddings.token_embedding.weight", 1)?,
        mlp: get("encoder.layers.0.mlp.fc1.weight", 0)?,
        layers,
        positions: get("embeddings.position_embedding.weight", 0)?,
        projection: 768,
    };
    text_config(dims, "quick_gelu", path)
}

/// What the tensors say of a text encoder.
struct TextDims {
    vocab: usize,
    hidden: usize,
    mlp: usize,
    layers: usize,
    positions: usize,
    projection: usize,
}

/// A text encoder's config: `dims` from the tensors; one head per 64 channels (ViT-L 12, ViT-H
/// 16, ViT-bigG 20), layer-norm ε 1e-5 and transformers' `eos_token_id` 2 (pooled at the argmax
/// of the ids) from the templates.
fn text_config(dims: TextDims, act: &str, path: &Path) -> Result<ClipTextConfig> {
    Ok(ClipTextConfig {
        vocab_size: dims.vocab,
        hidden_size: dims.hidden,
        intermediate_size: dims.mlp,
        num_hidden_layers: dims.layers,
        num_attention_heads: clip_heads(dims.hidden, path)?,
        max_position_embeddings: dims.positions,
        hidden_act: act.into(),
        layer_norm_eps: 1e-5,
        eos_token_id: 2,
        projection_dim: dims.projection,
    })
}

/// CLIP's heads: one per 64 channels.
fn clip_heads(hidden: usize, path: &Path) -> Result<usize> {
    if !hidden.is_multiple_of(64) {
        return Err(Error::unsupported(
            path,
            format!(
                "a text encoder {hidden} wide: the templates have one attention head per 64 channels; give the \
                 model's diffusers configs (LoadOptions::single_file.config, --model-config DIR)"
            ),
        ));
    }
    Ok(hidden / 64)
}

/// The config of an open_clip text model under `prefix` and its projection's width (0 without
/// one): `gelu`, 64-channel heads; SD 2.x drops the last block (diffusers' SD 2 text encoder has
/// 23 of open_clip's 24 layers: the pipeline uses the penultimate hidden state) and the
/// projection.
pub(crate) fn open_clip_config(
    shapes: &Shapes,
    prefix: &str,
    family: SingleFileFamily,
    path: &Path,
) -> Result<ClipTextConfig> {
    let get = |name: &str, i: usize| {
        dim(shapes, &format!("{prefix}{name}"), i)
            .ok_or_else(|| need(path, &format!("{prefix}{name}"), "the open_clip text model"))
    };
    let hidden = get("token_embedding.weight", 1)?;
    let blocks = (0..)
        .take_while(|n| shapes.contains_key(&format!("{prefix}transformer.resblocks.{n}.mlp.c_fc.weight")))
        .count();
    let (layers, projection) = match family {
        SingleFileFamily::Sd2 => (blocks.saturating_sub(1), 512),
        _ => {
            let proj = dim(shapes, &format!("{prefix}text_projection"), 1)
                .or_else(|| dim(shapes, &format!("{prefix}text_projection.weight"), 0))
                .ok_or_else(|| need(path, &format!("{prefix}text_projection"), "SDXL's pooled text projection"))?;
            (blocks, proj)
        }
    };
    let dims = TextDims {
        vocab: get("token_embedding.weight", 0)?,
        hidden,
        mlp: get("transformer.resblocks.0.mlp.c_fc.weight", 0)?,
        layers,
        positions: get("positional_embedding", 0)?,
        projection,
    };
    text_config(dims, "gelu", path)
}

/// The scheduler of `family`'s diffusers pipeline. SD 2.x is v-prediction, as diffusers'
/// `from_single_file` takes it (the config of `stabilityai/stable-diffusion-2-1`, a 768-px
/// v-prediction model; an SD 2.x *base* 512-px checkpoint is ε-prediction and needs the
/// override); SD 1.x and SDXL are ε-prediction. Whether a model predicts ε or v is not in its
/// weights.
pub(crate) fn scheduler_config(family: SingleFileFamily) -> SchedulerConfig {
    match family {
        SingleFileFamily::Sd1 => SchedulerConfig::stable_diffusion_v1_5(),
        SingleFileFamily::Sd2 => SchedulerConfig::stable_diffusion_v2_1(),
        SingleFileFamily::Sdxl => SchedulerConfig::stable_diffusion_xl(),
    }
}

#[cfg(test)]
mod tests {
    //! The templates against the configs of the real pipelines: the names and shapes of
    //! full-size SD 1.5, SD 2.1 and SDXL base single files (diffusers' models on PyTorch's meta
    //! device, renamed by diffusers' conversion scripts: `scripts/gen_single_file_shapes.py`)
    //! must be read as those pipelines' diffusers configs.

    use super::*;

    fn fixture() -> serde_json::Value {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/single-file/full-size-shapes.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn full_size_checkpoints_read_as_diffusers_configs() {
        let all = fixture();
        let path = Path::new("full-size.safetensors");
        for (name, family) in
            [("sd1", SingleFileFamily::Sd1), ("sd2", SingleFileFamily::Sd2), ("sdxl", SingleFileFamily::Sdxl)]
        {
            let f = &all[name];
            let shapes: Shapes = serde_json::from_value(f["shapes"].clone()).unwrap();
            assert_eq!(super::family(&shapes, path).unwrap(), family, "{name}");
            let theirs: UnetConfig = serde_json::from_value(f["unet"].clone()).unwrap();
            let ours = unet_config(&shapes, family, path).unwrap();
            assert_eq!(ours.arch(path).unwrap(), theirs.arch(path).unwrap(), "{name} UNet");
            assert_eq!(ours.sample_size, theirs.sample_size, "{name}");
            let vae: VaeConfig = serde_json::from_value(f["vae"].clone()).unwrap();
            assert_eq!(vae_config(&shapes, family, path).unwrap().0, vae, "{name} VAE");
            let te: ClipTextConfig = serde_json::from_value(f["text_encoder"].clone()).unwrap();
            let ours = match family {
                SingleFileFamily::Sd1 => clip_config(&shapes, SD1_CLIP, path).unwrap(),
                SingleFileFamily::Sd2 => open_clip_config(&shapes, SD2_OPEN_CLIP, family, path).unwrap(),
                SingleFileFamily::Sdxl => clip_config(&shapes, SDXL_CLIP, path).unwrap(),
            };
            assert_eq!(ours, te, "{name} text encoder");
            if family == SingleFileFamily::Sdxl {
                let te2: ClipTextConfig = serde_json::from_value(f["text_encoder_2"].clone()).unwrap();
                assert_eq!(
                    open_clip_config(&shapes, SDXL_OPEN_CLIP, family, path).unwrap(),
                    te2,
                    "SDXL text encoder 2"
                );
            }
        }
    }

    #[test]
    fn full_size_names_map_as_diffusers_scripts_rename_them() {
        use crate::single_file::keys::{self, Projection};
        use crate::weights::Part;
        let all = fixture();
        let path = Path::new("full-size.safetensors");
        for name in ["sd1", "sd2", "sdxl"] {
            let f = &all[name];
            let shapes: Shapes = serde_json::from_value(f["shapes"].clone()).unwrap();
            let family = super::family(&shapes, path).unwrap();
            let layout = unet_layout(&shapes, path).unwrap();
            let (_, levels) = vae_config(&shapes, family, path).unwrap();
            let names: HashMap<String, (String, Option<usize>)> = serde_json::from_value(f["names"].clone()).unwrap();
            let mut checked = 0;
            for (diffusers, (original, row)) in &names {
                let (component, tensor) = diffusers.split_once('/').unwrap();
                if tensor.ends_with("position_ids") {
                    continue;
                }
                let open_clip = |prefix: &str| {
                    let hidden = shapes[&format!("{prefix}token_embedding.weight")][1];
                    let (k, part) = keys::open_clip_original(tensor, hidden, Projection::OpenClip).unwrap();
                    if let Some(r) = row {
                        assert_eq!(part, Part::Rows { start: r * hidden, len: hidden }, "{diffusers}");
                    }
                    format!("{prefix}{k}")
                };
                let ours = match (component, family) {
                    ("unet", _) => keys::unet_original(tensor, &layout).map(|(k, _)| format!("{UNET}{k}")),
                    ("vae", _) => keys::vae_original(tensor, levels).map(|(k, _)| format!("{VAE}{k}")),
                    ("text_encoder", SingleFileFamily::Sd1) => Some(format!("{SD1_CLIP}{tensor}")),
                    ("text_encoder", SingleFileFamily::Sd2) => Some(open_clip(SD2_OPEN_CLIP)),
                    ("text_encoder", SingleFileFamily::Sdxl) => Some(format!("{SDXL_CLIP}{tensor}")),
                    ("text_encoder_2", SingleFileFamily::Sdxl) => Some(open_clip(SDXL_OPEN_CLIP)),
                    other => panic!("{other:?}"),
                };
                assert_eq!(ours.as_deref(), Some(original.as_str()), "{name}: {diffusers}");
                checked += 1;
            }
            assert!(checked > 1000, "{name}: {checked}");
        }
    }

    #[test]
    fn other_models_are_refused_by_name() {
        let path = Path::new("x.safetensors");
        let mut shapes: Shapes = serde_json::from_value(fixture()["sd1"]["shapes"].clone()).unwrap();
        shapes.insert(format!("{UNET}input_blocks.0.0.weight"), vec![320, 9, 3, 3]);
        assert!(super::family(&shapes, path).unwrap_err().to_string().contains("inpainting"));
        let mut shapes: Shapes = serde_json::from_value(fixture()["sdxl"]["shapes"].clone()).unwrap();
        shapes.insert("conditioner.embedders.0.model.text_projection".into(), vec![1280, 1280]);
        assert!(super::family(&shapes, path).unwrap_err().to_string().contains("refiner"));
        let err = super::family(&Shapes::new(), path).unwrap_err();
        assert!(
            matches!(err, Error::MissingTensor { ref tensor, .. } if tensor == "model.diffusion_model.input_blocks.0.0.weight")
        );
    }
}
