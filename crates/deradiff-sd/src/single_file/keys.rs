//! Where each of diffusers' tensor names is stored in an original-layout (CompVis LDM / Stability
//! SGM) checkpoint: the inverse of the renaming of diffusers' `convert_ldm_unet_checkpoint`,
//! `convert_ldm_vae_checkpoint`, `convert_ldm_clip_checkpoint` and
//! `convert_open_clip_checkpoint` (`diffusers/loaders/single_file_utils.py`), so that a model
//! asking for a diffusers name is served the stored tensor it comes from.
//!
//! Names are relative to the component's prefix (`model.diffusion_model.`, `first_stage_model.`,
//! `cond_stage_model.model.`, …); the callers add it.

use crate::weights::Part;

/// The block structure of an LDM UNet, which numbers its blocks `input_blocks.{i}`,
/// `middle_block.{0,1,2}` and `output_blocks.{i}` instead of diffusers' levels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UnetLayout {
    /// Resnets per down level (`layers_per_block`; an up level has one more).
    pub layers: usize,
    /// Per down level: whether it has (cross-)attentions. Up level `b` mirrors down level
    /// `levels − 1 − b`.
    pub down_attention: Vec<bool>,
}

impl UnetLayout {
    fn levels(&self) -> usize {
        self.down_attention.len()
    }

    fn up_attention(&self, b: usize) -> bool {
        self.down_attention.get(self.levels() - 1 - b).copied().unwrap_or(false)
    }
}

/// Splits `"{n}.{rest}"` into `n` and `rest`.
fn index(s: &str) -> Option<(usize, &str)> {
    let (n, rest) = s.split_once('.')?;
    Some((n.parse().ok()?, rest))
}

/// A diffusers resnet leaf (`norm1.weight`, …) as the LDM UNet names it.
fn unet_resnet_leaf(leaf: &str) -> Option<String> {
    let (layer, param) = leaf.split_once('.')?;
    let ldm = match layer {
        "norm1" => "in_layers.0",
        "conv1" => "in_layers.2",
        "norm2" => "out_layers.0",
        "conv2" => "out_layers.3",
        "time_emb_proj" => "emb_layers.1",
        "conv_shortcut" => "skip_connection",
        _ => return None,
    };
    Some(format!("{ldm}.{param}"))
}

/// The LDM name of the UNet tensor diffusers calls `name` (both without `model.diffusion_model.`).
pub(crate) fn unet_original(name: &str, layout: &UnetLayout) -> Option<(String, Part)> {
    const TOP: [(&str, &str); 7] = [
        ("time_embedding.linear_1.", "time_embed.0."),
        ("time_embedding.linear_2.", "time_embed.2."),
        ("conv_in.", "input_blocks.0.0."),
        ("conv_norm_out.", "out.0."),
        ("conv_out.", "out.2."),
        ("add_embedding.linear_1.", "label_emb.0.0."),
        ("add_embedding.linear_2.", "label_emb.0.2."),
    ];
    for (diffusers, ldm) in TOP {
        if let Some(param) = name.strip_prefix(diffusers) {
            return Some((format!("{ldm}{param}"), Part::Whole));
        }
    }
    let per = layout.layers + 1;
    let key = if let Some(rest) = name.strip_prefix("down_blocks.") {
        let (b, rest) = index(rest)?;
        if b >= layout.levels() {
            return None;
        }
        if let Some(rest) = rest.strip_prefix("resnets.") {
            let (l, leaf) = index(rest)?;
            (l < layout.layers).then_some(())?;
            format!("input_blocks.{}.0.{}", 1 + b * per + l, unet_resnet_leaf(leaf)?)
        } else if let Some(rest) = rest.strip_prefix("attentions.") {
            let (l, leaf) = index(rest)?;
            (l < layout.layers && layout.down_attention[b]).then_some(())?;
            format!("input_blocks.{}.1.{leaf}", 1 + b * per + l)
        } else {
            let param = rest.strip_prefix("downsamplers.0.conv.")?;
            (b + 1 < layout.levels()).then_some(())?;
            format!("input_blocks.{}.0.op.{param}", (b + 1) * per)
        }
    } else if let Some(rest) = name.strip_prefix("mid_block.") {
        if let Some(rest) = rest.strip_prefix("resnets.") {
            let (k, leaf) = index(rest)?;
            (k < 2).then_some(())?;
            format!("middle_block.{}.{}", 2 * k, unet_resnet_leaf(leaf)?)
        } else {
            format!("middle_block.1.{}", rest.strip_prefix("attentions.0.")?)
        }
    } else {
        let rest = name.strip_prefix("up_blocks.")?;
        let (b, rest) = index(rest)?;
        if b >= layout.levels() {
            return None;
        }
        if let Some(rest) = rest.strip_prefix("resnets.") {
            let (l, leaf) = index(rest)?;
            (l < per).then_some(())?;
            format!("output_blocks.{}.0.{}", b * per + l, unet_resnet_leaf(leaf)?)
        } else if let Some(rest) = rest.strip_prefix("attentions.") {
            let (l, leaf) = index(rest)?;
            (l < per && layout.up_attention(b)).then_some(())?;
            format!("output_blocks.{}.1.{leaf}", b * per + l)
        } else {
            let param = rest.strip_prefix("upsamplers.0.conv.")?;
            (b + 1 < layout.levels()).then_some(())?;
            let slot = if layout.up_attention(b) { 2 } else { 1 };
            format!("output_blocks.{}.{slot}.conv.{param}", b * per + layout.layers)
        }
    };
    Some((key, Part::Whole))
}

/// The LDM name of the VAE tensor diffusers calls `name` (both without `first_stage_model.`), for
/// a VAE of `levels` levels. The mid-block attention's 1×1 convolutions are read as linear
/// layers (diffusers' `conv_attn_to_linear`).
pub(crate) fn vae_original(name: &str, levels: usize) -> Option<(String, Part)> {
    if name.starts_with("quant_conv.") || name.starts_with("post_quant_conv.") {
        return Some((name.to_string(), Part::Whole));
    }
    let (side, rest) = name.split_once('.')?;
    let encoder = match side {
        "encoder" => true,
        "decoder" => false,
        _ => return None,
    };
    let resnet_leaf = |leaf: &str| match leaf.strip_prefix("conv_shortcut.") {
        Some(param) => format!("nin_shortcut.{param}"),
        None => leaf.to_string(),
    };
    let mut part = Part::Whole;
    let inner = if rest.starts_with("conv_in.") || rest.starts_with("conv_out.") {
        rest.to_string()
    } else if let Some(param) = rest.strip_prefix("conv_norm_out.") {
        format!("norm_out.{param}")
    } else if let Some(rest) = rest.strip_prefix("mid_block.") {
        if let Some(rest) = rest.strip_prefix("resnets.") {
            let (k, leaf) = index(rest)?;
            (k < 2).then_some(())?;
            format!("mid.block_{}.{}", k + 1, resnet_leaf(leaf))
        } else {
            let leaf = rest.strip_prefix("attentions.0.")?;
            let (layer, param) = leaf.rsplit_once('.')?;
            let ldm = match layer {
                "group_norm" => "norm",
                "to_q" | "query" => "q",
                "to_k" | "key" => "k",
                "to_v" | "value" => "v",
                "to_out.0" | "proj_attn" => "proj_out",
                _ => return None,
            };
            if param == "weight" && ldm != "norm" {
                part = Part::Squeeze;
            }
            format!("mid.attn_1.{ldm}.{param}")
        }
    } else if encoder {
        let rest = rest.strip_prefix("down_blocks.")?;
        let (i, rest) = index(rest)?;
        (i < levels).then_some(())?;
        if let Some(rest) = rest.strip_prefix("resnets.") {
            let (j, leaf) = index(rest)?;
            format!("down.{i}.block.{j}.{}", resnet_leaf(leaf))
        } else {
            format!("down.{i}.downsample.conv.{}", rest.strip_prefix("downsamplers.0.conv.")?)
        }
    } else {
        let rest = rest.strip_prefix("up_blocks.")?;
        let (i, rest) = index(rest)?;
        (i < levels).then_some(())?;
        let level = levels - 1 - i;
        if let Some(rest) = rest.strip_prefix("resnets.") {
            let (j, leaf) = index(rest)?;
            format!("up.{level}.block.{j}.{}", resnet_leaf(leaf))
        } else {
            format!("up.{level}.upsample.conv.{}", rest.strip_prefix("upsamplers.0.conv.")?)
        }
    };
    Some((format!("{side}.{inner}"), part))
}

/// How open_clip stores the text projection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Projection {
    /// `text_projection`, `[width, projection]`, applied as `x @ P` (open_clip's own; diffusers
    /// transposes it).
    OpenClip,
    /// `text_projection.weight`, already `[projection, width]` (as some converters write it).
    Linear,
}

/// The open_clip name of the text-model tensor transformers calls `name` (`text_model.…`,
/// `text_projection.weight`; both without the open_clip prefix such as
/// `conditioner.embedders.1.model.`), for a model of width `hidden`: the q, k and v projections
/// are rows of the fused `in_proj_weight` / `in_proj_bias`.
pub(crate) fn open_clip_original(name: &str, hidden: usize, projection: Projection) -> Option<(String, Part)> {
    if name == "text_projection.weight" {
        return Some(match projection {
            Projection::OpenClip => ("text_projection".into(), Part::Transpose),
            Projection::Linear => ("text_projection.weight".into(), Part::Whole),
        });
    }
    let rest = name.strip_prefix("text_model.")?;
    let whole = |s: String| Some((s, Part::Whole));
    match rest {
        "embeddings.token_embedding.weight" => return whole("token_embedding.weight".into()),
        "embeddings.position_embedding.weight" => return whole("positional_embedding".into()),
        _ => {}
    }
    if let Some(param) = rest.strip_prefix("final_layer_norm.") {
        return whole(format!("ln_final.{param}"));
    }
    let (n, leaf) = index(rest.strip_prefix("encoder.layers.")?)?;
    let block = format!("transformer.resblocks.{n}");
    let (layer, param) = leaf.rsplit_once('.')?;
    let fused =
        |k: usize| Some((format!("{block}.attn.in_proj_{param}"), Part::Rows { start: k * hidden, len: hidden }));
    match layer {
        "self_attn.q_proj" => fused(0),
        "self_attn.k_proj" => fused(1),
        "self_attn.v_proj" => fused(2),
        "self_attn.out_proj" => whole(format!("{block}.attn.out_proj.{param}")),
        "layer_norm1" => whole(format!("{block}.ln_1.{param}")),
        "layer_norm2" => whole(format!("{block}.ln_2.{param}")),
        "mlp.fc1" => whole(format!("{block}.mlp.c_fc.{param}")),
        "mlp.fc2" => whole(format!("{block}.mlp.c_proj.{param}")),
        _ => None,
    }
}
