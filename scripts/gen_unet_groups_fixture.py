#!/usr/bin/env python3
"""A tiny SD-style UNet whose GroupNorms have 8 groups (not SD's 32), with diffusers' output.

Run from the repository root (any Python with diffusers 0.42.x, torch, safetensors):

    /work/venv/bin/python scripts/gen_unet_groups_fixture.py

Writes `crates/deradiff-sd/tests/fixtures/tiny-unet-groups8/` (`config.json`,
`diffusion_pytorch_model.safetensors`, float16 weights) and
`crates/deradiff-sd/tests/fixtures/tiny-unet-groups8-reference.safetensors` (float32 input
`x`, `context`, the timestep `t` and diffusers' `output`), which `tests/unet_groups.rs` compares
our UNet with. candle-transformers' DownBlock2D / UpBlock2D always use 32 groups; ours take
`norm_num_groups`. Seeded: re-running with the same versions gives the same files.
"""

import os

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crates", "deradiff-sd", "tests", "fixtures")
NORM_STD = 0.2

CONFIG = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(16, 32),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=16,
    attention_head_dim=[2, 4],
    norm_num_groups=8,
)


def main() -> None:
    torch.manual_seed(7)
    unet = UNet2DConditionModel(**CONFIG).eval()
    gen = torch.Generator().manual_seed(1007)
    with torch.no_grad():
        # Norm weights 1 + s N(0,1), biases s N(0,1), so that a wrong group count shows.
        for module in unet.modules():
            if isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
                module.weight.copy_(1.0 + NORM_STD * torch.randn(module.weight.shape, generator=gen))
                module.bias.copy_(NORM_STD * torch.randn(module.bias.shape, generator=gen))
        # The float32 model equals the float16 file.
        for p in unet.parameters():
            p.copy_(p.half().float())
    directory = os.path.join(ROOT, "tiny-unet-groups8")
    os.makedirs(directory, exist_ok=True)
    unet.save_config(directory)
    state = {k: v.detach().half().contiguous() for k, v in unet.state_dict().items()}
    save_file(state, os.path.join(directory, "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})

    gen = torch.Generator().manual_seed(11)
    x = torch.randn((2, 4, 8, 8), generator=gen)
    context = torch.randn((2, 7, 16), generator=gen)
    t = torch.tensor(421.5)
    with torch.no_grad():
        out = unet(x, t, encoder_hidden_states=context).sample
    save_file(
        {"x": x, "context": context, "t": t.reshape(1), "output": out.contiguous()},
        os.path.join(ROOT, "tiny-unet-groups8-reference.safetensors"),
    )
    print("output max |x|", out.abs().max().item())


if __name__ == "__main__":
    main()
