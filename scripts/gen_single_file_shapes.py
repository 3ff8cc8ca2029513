#!/usr/bin/env python3
"""The tensor names and shapes of full-size SD 1.5, SD 2.1 and SDXL base single-file checkpoints,
with the diffusers configs they must be read as, for deradiff-sd's template test.

Run (from the repository root):

    DIFFUSERS_SCRIPTS=/path/to/diffusers/scripts /work/venv/bin/python scripts/gen_single_file_shapes.py

No weights are downloaded or allocated: each model is built from its published diffusers config
on PyTorch's `meta` device, and its state dict renamed to the original layout by diffusers' own
conversion scripts (`convert_diffusers_to_original_stable_diffusion.py`,
`convert_diffusers_to_original_sdxl.py`, as `gen_single_file_fixtures.py` uses them). SD 2.x
files carry all 24 open_clip blocks and the text projection (diffusers' text encoder keeps 23),
so the last block and the projection are added as open_clip stores them.

Writes `crates/deradiff-sd/tests/fixtures/single-file/full-size-shapes.json`:
`{family: {"shapes": {name: shape}, "names": {"component/diffusers name": [original name, q/k/v
row block or null]}, "unet": config, "vae": config, "text_encoder": config, "text_encoder_2":
config}}` (the names traced through the scripts by tagging each tensor with its index), the configs being those of the diffusers pipelines
`stable-diffusion-v1-5/stable-diffusion-v1-5`, `stabilityai/stable-diffusion-2-1` and
`stabilityai/stable-diffusion-xl-base-1.0` (the fields that shape or run the models).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crates", "deradiff-sd", "tests", "fixtures",
                   "single-file", "full-size-shapes.json")

SD_UNET = dict(
    act_fn="silu", attention_head_dim=8, block_out_channels=[320, 640, 1280, 1280], center_input_sample=False,
    cross_attention_dim=768, down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"], downsample_padding=1,
    flip_sin_to_cos=True, freq_shift=0, in_channels=4, layers_per_block=2, mid_block_scale_factor=1, norm_eps=1e-5,
    norm_num_groups=32, out_channels=4, sample_size=64, up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
)
SD2_UNET = dict(SD_UNET, attention_head_dim=[5, 10, 20, 20], cross_attention_dim=1024, use_linear_projection=True,
                upcast_attention=True, sample_size=96)
XL_UNET = dict(
    act_fn="silu", addition_embed_type="text_time", addition_embed_type_num_heads=64, addition_time_embed_dim=256,
    attention_head_dim=[5, 10, 20], block_out_channels=[320, 640, 1280], center_input_sample=False,
    cross_attention_dim=2048, down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, in_channels=4, layers_per_block=2,
    mid_block_scale_factor=1, norm_eps=1e-5, norm_num_groups=32, out_channels=4,
    projection_class_embeddings_input_dim=2816, sample_size=128, transformer_layers_per_block=[1, 2, 10],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], use_linear_projection=True,
)
VAE = dict(
    act_fn="silu", block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
    in_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32, out_channels=3, sample_size=512,
    scaling_factor=0.18215, up_block_types=["UpDecoderBlock2D"] * 4,
)
XL_VAE = dict(VAE, sample_size=1024, scaling_factor=0.13025)
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5, bos_token_id=0,
              eos_token_id=2, pad_token_id=1, projection_dim=768)
CLIP_H = dict(CLIP_L, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
              hidden_act="gelu", projection_dim=512)
CLIP_G = dict(CLIP_L, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
              hidden_act="gelu", projection_dim=1280)


def script(name: str):
    path = os.path.join(os.environ["DIFFUSERS_SCRIPTS"], name)
    spec = importlib.util.spec_from_file_location(name[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def meta_state(cls, config):
    with torch.device("meta"):
        model = cls(config) if not isinstance(config, dict) else cls(**config)
    return model.state_dict()


def shapes(state: dict) -> dict:
    return {k: list(v.shape) for k, v in state.items()}


class Source:
    """Makes the diffusers state dicts: on the meta device (for shapes), or tagged (for names):
    each tensor `[i, i]`, i its index in `names`, which the conversion scripts carry through
    their renaming (and concatenate, for open_clip's fused q/k/v)."""

    def __init__(self, tagged: bool):
        self.tagged = tagged
        self.names: list[str] = []

    def state(self, cls, config, component: str) -> dict:
        state = meta_state(cls, config)
        if cls in (CLIPTextModel, CLIPTextModelWithProjection):
            state = {k if k.startswith("text_") else "text_model." + k: v for k, v in state.items()}
        if not self.tagged:
            return state
        out = {}
        for k in state:
            out[k] = torch.tensor([float(len(self.names))] * 2)
            self.names.append(f"{component}/{k}")
        return out


def convert(source: Source, sd, xl) -> dict:
    """The three families' original-layout state dicts, renamed by diffusers' scripts."""
    out = {}
    for family, unet, te, module in (("sd1", SD_UNET, CLIP_L, sd), ("sd2", SD2_UNET, CLIP_H, sd)):
        state = {"model.diffusion_model." + k: v for k, v in
                 module.convert_unet_state_dict(source.state(UNet2DConditionModel, unet, "unet")).items()}
        state.update({"first_stage_model." + k: v for k, v in
                      module.convert_vae_state_dict(source.state(AutoencoderKL, VAE, "vae")).items()})
        text = source.state(CLIPTextModel, CLIPTextConfig(**te), "text_encoder")
        if family == "sd1":
            state.update({"cond_stage_model.transformer." + k: v for k, v in text.items()})
        else:
            text = module.convert_text_enc_state_dict_v20({"transformer." + k: v for k, v in text.items()})
            state.update({"cond_stage_model.model." + k: v for k, v in text.items()})
            # open_clip's 24th block and projection, which diffusers' 23-layer encoder drops.
            for k in [k for k in state if ".resblocks.22." in k]:
                state[k.replace(".resblocks.22.", ".resblocks.23.")] = state[k].clone()
            state["cond_stage_model.model.text_projection"] = torch.empty(1024, 1024, device="meta")
        out[family] = state
    state = {"model.diffusion_model." + k: v for k, v in
             xl.convert_unet_state_dict(source.state(UNet2DConditionModel, XL_UNET, "unet")).items()}
    state.update({"first_stage_model." + k: v for k, v in
                  xl.convert_vae_state_dict(source.state(AutoencoderKL, XL_VAE, "vae")).items()})
    text = source.state(CLIPTextModel, CLIPTextConfig(**CLIP_L), "text_encoder")
    state.update({"conditioner.embedders.0.transformer." + k: v for k, v in text.items()})
    text2 = source.state(CLIPTextModelWithProjection, CLIPTextConfig(**CLIP_G), "text_encoder_2")
    text2 = {"conditioner.embedders.1.model." + k: v for k, v in xl.convert_openclip_text_enc_state_dict(text2).items()}
    # As the script's main does: open_clip's own `text_projection`, transposed.
    proj = text2.pop("conditioner.embedders.1.model.text_projection.weight")
    text2["conditioner.embedders.1.model.text_projection"] = proj if source.tagged else proj.T
    state.update(text2)
    out["sdxl"] = state
    return out


def names(tagged: dict, source: Source) -> dict:
    """diffusers name (`component/name`) -> [original name, row block of a fused q/k/v or null]."""
    out = {}
    for original, v in tagged.items():
        if v.device.type == "meta":
            continue
        tags = [int(x) for x in v.tolist()[::2]]
        for row, tag in enumerate(tags):
            if ".resblocks.23." in original:
                continue
            out[source.names[tag]] = [original, row if len(tags) == 3 else None]
    return out


def main() -> None:
    sd = script("convert_diffusers_to_original_stable_diffusion.py")
    xl = script("convert_diffusers_to_original_sdxl.py")
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        meta = convert(Source(tagged=False), sd, xl)
        tagged_source = Source(tagged=True)
        tagged = convert(tagged_source, sd, xl)
    configs = {
        "sd1": dict(unet=SD_UNET, vae=VAE, text_encoder=CLIP_L),
        "sd2": dict(unet=SD2_UNET, vae=VAE, text_encoder=CLIP_H),
        "sdxl": dict(unet=XL_UNET, vae=XL_VAE, text_encoder=CLIP_L, text_encoder_2=CLIP_G),
    }
    out = {}
    for family, state in meta.items():
        out[family] = dict(configs[family], shapes=shapes(state), names=names(tagged[family], tagged_source))
    with open(OUT, "w") as f:
        json.dump(out, f, separators=(",", ":"), sort_keys=True)
    for k, v in out.items():
        print(k, len(v["shapes"]), "tensors,", len(v["names"]), "diffusers names")
    print(OUT, os.path.getsize(OUT), "bytes")


if __name__ == "__main__":
    main()
