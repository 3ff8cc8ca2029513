#!/usr/bin/env python3
"""Converts the published (pickled) checkpoints of deradiff's rewards to safetensors.

deradiff loads safetensors only (a pickle can run code when loaded). Run offline, with torch and
safetensors installed:

    python scripts/convert_to_safetensors.py aesthetic sac+logos+ava1-l14-linearMSE.pth aesthetic.safetensors
    python scripts/convert_to_safetensors.py hps HPS_v2.1_compressed.pt hps-v2.1.safetensors
    python scripts/convert_to_safetensors.py image-reward ImageReward.pt image-reward/model.safetensors

Layouts
-------
* `hps`: HPS v2 / v2.1 (`HPS_v2_compressed.pt`, `HPS_v2.1_compressed.pt` from xswu/HPSv2): an
  open_clip ViT-H-14 state dict (under `state_dict`; a DDP `module.` prefix is stripped), written
  with open_clip's names in the dtype stored. deradiff also needs ViT-H-14's
  `open_clip_config.json` and a CLIP tokenizer directory (laion/CLIP-ViT-H-14-laion2B-s32B-b79K).
* `aesthetic`: the LAION aesthetic predictor (christophschuhmann/improved-aesthetic-predictor,
  e.g. `sac+logos+ava1-l14-linearMSE.pth`): a state dict `layers.{0,2,4,6,7}.{weight,bias}` of the
  MLP on CLIP ViT-L/14 image embeddings; written with the same tensor names, float32.
* `image-reward`: ImageReward v1.0 (`ImageReward.pt` from THUDM/ImageReward): the state dict of
  `ImageReward.ImageReward` (`blip.visual_encoder.*` — BLIP's ViT-L —, `blip.text_encoder.*` —
  BLIP's BERT with cross-attention —, `blip.vision_proj` / `blip.text_proj`, `mlp.layers.*`),
  written with the same names in the dtype stored. deradiff reads it from a folder that also holds
  the Hub's `med_config.json` and bert-base-uncased's `vocab.txt` (or `tokenizer.json`).

The checkpoint is read with `torch.load(..., weights_only=True)` (no code runs); a PyTorch
Lightning checkpoint's `state_dict` entry is used when present. The written file is read back
and compared tensor by tensor with the checkpoint.
"""

import argparse
import re
import sys

import torch
from safetensors.torch import load_file, save_file


def aesthetic(state: dict) -> dict:
    pattern = re.compile(r"^layers\.(\d+)\.(weight|bias)$")
    bad = [k for k in state if not pattern.match(k)]
    if bad:
        sys.exit(f"not the aesthetic predictor's layout (layers.N.weight / layers.N.bias): unexpected keys {bad[:5]}")
    if not state:
        sys.exit("the checkpoint holds no tensors")
    return {k: v.detach().to(torch.float32).contiguous() for k, v in state.items()}


def hps(state: dict) -> dict:
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    for needed in ("visual.conv1.weight", "visual.proj", "text_projection", "token_embedding.weight", "logit_scale"):
        if needed not in state:
            sys.exit(f"not an open_clip CLIP state dict: `{needed}` is missing")
    return {k: v.detach().contiguous() for k, v in state.items() if torch.is_tensor(v)}


def image_reward(state: dict) -> dict:
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    for needed in (
        "blip.visual_encoder.patch_embed.proj.weight",
        "blip.text_encoder.embeddings.word_embeddings.weight",
        "mlp.layers.0.weight",
    ):
        if needed not in state:
            sys.exit(f"not an ImageReward state dict: `{needed}` is missing")
    return {k: v.detach().contiguous() for k, v in state.items() if torch.is_tensor(v)}


LAYOUTS = {"aesthetic": aesthetic, "hps": hps, "image-reward": image_reward}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("layout", choices=sorted(LAYOUTS))
    parser.add_argument("checkpoint")
    parser.add_argument("out")
    args = parser.parse_args()
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        sys.exit(f"{args.checkpoint}: not a state dict ({type(state).__name__})")
    tensors = LAYOUTS[args.layout](state)
    save_file(tensors, args.out, metadata={"format": "pt", "converted_from": args.checkpoint})
    back = load_file(args.out)
    assert back.keys() == tensors.keys() and all(torch.equal(back[k], tensors[k]) for k in back)
    print(f"wrote {args.out}: {len(back)} tensors")


if __name__ == "__main__":
    main()
