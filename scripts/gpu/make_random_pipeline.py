#!/usr/bin/env python3
"""A full-size SD 1.5- or SDXL-shaped diffusers pipeline with random weights (f16 safetensors) and a
second, differently seeded UNet as the aligned model, for timing on a GPU without downloading a
checkpoint (`scripts/gpu/bench.py`).

UNet and VAE: SD 1.5's / SDXL base's configs. Text encoders: their widths and depths (SD 1.5: 768 × 12;
SDXL: 768 × 12 and 1280 × 32 with projection 1280) over the tokenizers of a tiny diffusers pipeline
of the same kind (e.g. this repository's `crates/deradiff-sd/tests/fixtures/tiny-sd` /
`tiny-sdxl`): the real vocabularies need a download; the time does not depend on them.

    python scripts/gpu/make_random_pipeline.py sd15 crates/deradiff-sd/tests/fixtures/tiny-sd /tmp/sd15
    python scripts/gpu/make_random_pipeline.py sdxl crates/deradiff-sd/tests/fixtures/tiny-sdxl /tmp/sdxl

writes OUT (the pipeline) and OUT-aligned/unet.
"""
import json
import os
import shutil
import sys

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True,
                 freq_shift=0, down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                 mid_block_type="UNetMidBlock2DCrossAttn", up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
                 only_cross_attention=False, block_out_channels=[320, 640, 1280, 1280], layers_per_block=2,
                 downsample_padding=1, mid_block_scale_factor=1, act_fn="silu", norm_num_groups=32, norm_eps=1e-5,
                 cross_attention_dim=768, attention_head_dim=8, use_linear_projection=False)
SDXL_UNET = dict(sample_size=128, in_channels=4, out_channels=4, flip_sin_to_cos=True, freq_shift=0,
                 down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                 up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                 block_out_channels=[320, 640, 1280], layers_per_block=2, transformer_layers_per_block=[1, 2, 10],
                 attention_head_dim=[5, 10, 20], cross_attention_dim=2048, use_linear_projection=True,
                 norm_num_groups=32, addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816)
VAE = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
           up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[128, 256, 512, 512], layers_per_block=2,
           act_fn="silu", latent_channels=4, norm_num_groups=32)


def text_config(tiny, name, **sizes):
    with open(f"{tiny}/{name}/config.json") as f:
        tc = json.load(f)
    for k in ["architectures", "dtype", "torch_dtype", "transformers_version", "model_type"]:
        tc.pop(k, None)
    tc.update(sizes)
    return CLIPTextConfig(**tc)


def main():
    if len(sys.argv) != 4 or sys.argv[1] not in ("sd15", "sdxl"):
        sys.exit(__doc__)
    kind, tiny, out = sys.argv[1:]
    sdxl = kind == "sdxl"
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    os.makedirs(out, exist_ok=True)
    for name in ["tokenizer", "scheduler"] + (["tokenizer_2"] if sdxl else []):
        shutil.copytree(f"{tiny}/{name}", f"{out}/{name}", dirs_exist_ok=True)
    shutil.copy(f"{tiny}/model_index.json", out)
    unet = SDXL_UNET if sdxl else SD15_UNET
    vae = dict(VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=True) if sdxl else \
        dict(VAE, sample_size=512, scaling_factor=0.18215)
    with torch.device(dev):
        torch.manual_seed(0)
        UNet2DConditionModel(**unet).half().save_pretrained(f"{out}/unet", safe_serialization=True)
        torch.manual_seed(1)
        UNet2DConditionModel(**unet).half().save_pretrained(f"{out}-aligned/unet", safe_serialization=True)
        torch.manual_seed(2)
        AutoencoderKL(**vae).half().save_pretrained(f"{out}/vae", safe_serialization=True)
        torch.manual_seed(3)
        clip_l = text_config(tiny, "text_encoder", hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                             num_hidden_layers=12, projection_dim=768)
        CLIPTextModel(clip_l).half().save_pretrained(f"{out}/text_encoder", safe_serialization=True)
        if sdxl:
            torch.manual_seed(4)
            big_g = text_config(tiny, "text_encoder_2", hidden_size=1280, intermediate_size=5120,
                                num_attention_heads=20, num_hidden_layers=32, projection_dim=1280)
            CLIPTextModelWithProjection(big_g).half().save_pretrained(f"{out}/text_encoder_2",
                                                                      safe_serialization=True)
    print("made", out, "and", out + "-aligned", "on", dev)


if __name__ == "__main__":
    main()
