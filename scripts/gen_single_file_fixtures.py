#!/usr/bin/env python3
"""Tiny single-file checkpoints in the original (CompVis LDM / Stability SGM) key layout, written
by diffusers' own conversion scripts, for deradiff-sd's single-file loader.

Run (from the repository root, after `scripts/gen_sd_fixtures.py` and `gen_sdxl_fixtures.py`,
whose tokenizers, scheduler configs and SDXL text encoders it reuses):

    DIFFUSERS_SCRIPTS=/path/to/diffusers/scripts /work/venv/bin/python scripts/gen_single_file_fixtures.py

`DIFFUSERS_SCRIPTS` is the `scripts/` folder of a checkout of https://github.com/huggingface/diffusers
(used here: commit 58eb52c0803ea9af3abec60841c2a093bdf1f951). Its
`convert_diffusers_to_original_stable_diffusion.py` and `convert_diffusers_to_original_sdxl.py`
are run as they are (`--use_safetensors`), on diffusers-layout folders this script builds; their
output is the fixture, unchanged except that the aligned files keep only their UNet
(`model.diffusion_model.*`), as a UNet-only single file.

Both conversion scripts hard-code the block structure of the real models (SD 1.x: four UNet
levels, the last without attention, two resnets each; SDXL: three levels, the first without
attention; the VAE: four levels, two resnets down and three up), so the tiny models here keep
that structure with few channels (the older tiny fixtures, two levels and one resnet, would be
mis-numbered by the scripts).

It writes, under `crates/deradiff-sd/tests/fixtures/single-file/`:

* `sd15/`: a diffusers-layout SD 1.5-shaped pipeline whose configs are exactly what deradiff's
  SD 1.x template infers from the tensors (norm groups 32, 8 attention heads, CLIP heads of 64
  channels, VAE `scaling_factor` 0.18215, SD 1.5's scheduler): the single file loads with no
  configuration at all. `sd15-aligned-unet/`: a second UNet of the same shape.
* `sd15.safetensors` (UNet, VAE, CLIP text model under `cond_stage_model.transformer.`) and
  `sd15-aligned.safetensors` (its UNet only).
* `sdxl/`: a diffusers-layout SDXL-shaped pipeline (three levels with `text_time` conditioning;
  the tiny SDXL text encoders), whose head counts and norm groups are not SDXL's: it is loaded
  with its folder's configs (the loader's `config` option, as diffusers' `from_single_file(...,
  config=...)`). `sdxl-aligned-unet/`: a second UNet.
* `sdxl.safetensors` (UNet, VAE, `conditioner.embedders.0.transformer.*` CLIP ViT-L names,
  `conditioner.embedders.1.model.*` open_clip names with the fused `in_proj` q/k/v) and
  `sdxl-aligned.safetensors` (its UNet only).

As a check independent of deradiff, diffusers' own `from_single_file` (with the folder's configs)
loads each UNet and VAE from the single file and must give the diffusers folder's tensors.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_sd_fixtures as sd  # noqa: E402

from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: E402
from transformers import CLIPTextConfig, CLIPTokenizer  # noqa: E402

OUT = os.path.join(sd.OUT, "single-file")
TINY_SD = os.path.join(sd.OUT, "tiny-sd")
TINY_XL = os.path.join(sd.OUT, "tiny-sdxl")

SD15_UNET = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(32, 32, 32, 32),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=64,
    attention_head_dim=8,
    norm_num_groups=32,
)

SDXL_UNET = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(16, 16, 32),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=32 + 48,
    attention_head_dim=[2, 2, 4],
    transformer_layers_per_block=[1, 1, 2],
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=24 + 6 * 8,
    norm_num_groups=8,
)


def vae_config(channels: int, groups: int, scaling: float) -> dict:
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(channels,) * 4,
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=groups,
        sample_size=32,
        scaling_factor=scaling,
    )


def make(cls, config: dict, seed: int):
    torch.manual_seed(seed)
    model = cls(**config).eval()
    sd.perturb_norms(model, torch.Generator().manual_seed(seed + 1000))
    sd.round_to_f16(model)
    return model


def sd15_text_encoder(seed: int) -> CLIPTextModel:
    """CLIP ViT-L in small: quick_gelu, one head of 64 channels (ViT-L's head width)."""
    tok = CLIPTokenizer.from_pretrained(os.path.join(TINY_SD, "tokenizer"))
    config = CLIPTextConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=96,
        projection_dim=64,
        num_hidden_layers=2,
        num_attention_heads=1,
        max_position_embeddings=sd.MAX_LEN,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )
    return sd.random_text_encoder(config, seed)


def convert(script: str, folder: str, out: str, unet_only: bool) -> None:
    scripts = os.environ.get("DIFFUSERS_SCRIPTS")
    if not scripts:
        sys.exit("set DIFFUSERS_SCRIPTS to the scripts/ folder of a diffusers checkout")
    path = os.path.join(scripts, script)
    subprocess.run(
        [sys.executable, path, "--model_path", folder, "--checkpoint_path", out, "--use_safetensors"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    if unet_only:
        state = load_file(out)
        save_file({k: v for k, v in state.items() if k.startswith("model.diffusion_model.")}, out)


def check_with_diffusers(single: str, folder: str, parts=("unet", "vae")) -> None:
    """diffusers' own single-file loader, given the folder's configs, reads the folder's tensors."""
    for cls, sub in ((UNet2DConditionModel, "unet"), (AutoencoderKL, "vae")):
        if sub not in parts:
            continue
        ours = cls.from_pretrained(folder, subfolder=sub).state_dict()
        theirs = cls.from_single_file(single, config=folder, subfolder=sub, local_files_only=True).state_dict()
        assert ours.keys() == theirs.keys(), (sub, ours.keys() ^ theirs.keys())
        for k in ours:
            assert torch.equal(ours[k].float(), theirs[k].float()), (single, sub, k)
        print(f"  diffusers' from_single_file reads {os.path.basename(single)} {sub}: {len(ours)} tensors equal")


def pipeline(name: str, unet_cfg: dict, te, vae, source: str, extra: list[str], seed: int) -> None:
    folder = os.path.join(OUT, name)
    aligned = os.path.join(OUT, f"{name}-aligned-unet")
    for d in (folder, aligned):
        shutil.rmtree(d, ignore_errors=True)
    os.makedirs(folder)
    for part in ["tokenizer", "scheduler", "model_index.json"] + extra:
        src = os.path.join(source, part)
        (shutil.copytree if os.path.isdir(src) else shutil.copy)(src, os.path.join(folder, part))
    sd.save_diffusers_model(make(UNet2DConditionModel, unet_cfg, seed), os.path.join(folder, "unet"))
    sd.save_diffusers_model(vae, os.path.join(folder, "vae"))
    if te is not None:
        sd.save_text_encoder(te, os.path.join(folder, "text_encoder"))
    sd.save_diffusers_model(make(UNet2DConditionModel, unet_cfg, seed + 1), aligned)

    script = "convert_diffusers_to_original_sdxl.py" if name == "sdxl" else \
        "convert_diffusers_to_original_stable_diffusion.py"
    single = os.path.join(OUT, f"{name}.safetensors")
    convert(script, folder, single, unet_only=False)
    check_with_diffusers(single, folder)
    # The aligned model: the same pipeline with the aligned UNet, converted, UNet kept.
    with tempfile.TemporaryDirectory() as tmp:
        for part in os.listdir(folder):
            src = os.path.join(folder, part)
            if part != "unet":
                os.symlink(src, os.path.join(tmp, part))
        os.symlink(aligned, os.path.join(tmp, "unet"))
        out = os.path.join(OUT, f"{name}-aligned.safetensors")
        convert(script, tmp, out, unet_only=True)
        check_with_diffusers(out, tmp, parts=("unet",))


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    sd15_vae = make(AutoencoderKL, vae_config(32, 32, 0.18215), 301)
    pipeline("sd15", SD15_UNET, sd15_text_encoder(302), sd15_vae, TINY_SD, [], 303)
    # SD 1.5's own scheduler config (what the SD 1.x template holds).
    with open(os.path.join(OUT, "sd15", "scheduler", "scheduler_config.json")) as f:
        assert json.load(f)["beta_schedule"] == "scaled_linear"
    sdxl_vae = make(AutoencoderKL, vae_config(16, 8, 0.13025), 311)
    pipeline("sdxl", SDXL_UNET, None, sdxl_vae, TINY_XL, ["text_encoder", "text_encoder_2", "tokenizer_2"], 313)
    for f in sorted(os.listdir(OUT)):
        p = os.path.join(OUT, f)
        if f.endswith(".safetensors"):
            print(f"{f}: {os.path.getsize(p)} bytes, {len(load_file(p))} tensors")


if __name__ == "__main__":
    main()
