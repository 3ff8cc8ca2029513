#!/usr/bin/env python3
"""LAION aesthetic predictor fixtures: a random MLP in the published layout, scored the way the
reference code scores, on the tiny CLIP models' image embeddings.

Run from the repository root after `scripts/gen_clip_fixtures.py` (whose reference image
embeddings, computed by transformers, are the inputs here):

    /work/venv/bin/python scripts/gen_aesthetic_fixtures.py

The predictor (christophschuhmann/improved-aesthetic-predictor, `simple_inference.py`) is an MLP
of five linear layers with dropout between them and no activations, applied to the L2-normalised
CLIP ViT-L/14 image embedding (`model.encode_image`, the projected embedding = transformers'
`get_image_features`). Its published checkpoint (`sac+logos+ava1-l14-linearMSE.pth`) is a pickled
state dict `layers.{0,2,4,6,7}.{weight,bias}`; `scripts/convert_to_safetensors.py aesthetic`
converts it to safetensors with the same names, which is what this script writes.

Writes `crates/deradiff-tune/tests/fixtures/aesthetic/`: `mlp-16.safetensors` (input 16, the tiny
CLIP models' projection; hidden 1024, 128, 64, 16 as published), `/tmp/mlp-16.pth` (the same state
dict pickled, for the conversion script's round trip; not committed) and `reference.safetensors` with, for each
tiny CLIP model and image group of `../clip/reference.safetensors`, the predictor's scores
(`<model>.<group>.aesthetic`). Seeded.
"""

import os

import torch
from safetensors.torch import load_file, save_file
from torch import nn

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crates", "deradiff-tune", "tests", "fixtures")
OUT = os.path.join(ROOT, "aesthetic")


class MLP(nn.Module):
    """improved-aesthetic-predictor's MLP (its LightningModule without the training code)."""

    def __init__(self, input_size):
        super().__init__()
        self.input_size = input_size
        self.layers = nn.Sequential(
            nn.Linear(self.input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, x):
        return self.layers(x)


def normalized(a, axis=-1, order=2):
    """simple_inference.py's normalisation (numpy there; the same arithmetic in float64 here)."""
    import numpy as np

    l2 = np.atleast_1d(np.linalg.norm(a, order, axis))
    l2[l2 == 0] = 1
    return a / np.expand_dims(l2, axis)


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(5)
    model = MLP(16).eval()
    # Scores of a few units, as the real predictor gives (mean 5-6 on photos): a bias on top.
    with torch.no_grad():
        model.layers[7].bias.fill_(5.5)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(OUT, "mlp-16.safetensors"), metadata={"format": "pt"})
    torch.save(state, os.path.join("/tmp", "mlp-16.pth"))
    clip = load_file(os.path.join(ROOT, "clip", "reference.safetensors"))
    out = {}
    for name in ("clip-quick-gelu", "clip-gelu"):
        for group in ("images", "batch"):
            emb = clip[f"{name}.{group}.image_embeds"].double().numpy()
            x = torch.from_numpy(normalized(emb)).float()
            with torch.no_grad():
                out[f"{name}.{group}.aesthetic"] = model(x).squeeze(-1).contiguous()
            print(name, group, out[f"{name}.{group}.aesthetic"].tolist())
    save_file(out, os.path.join(OUT, "reference.safetensors"), metadata={"generator": "scripts/gen_aesthetic_fixtures.py"})


if __name__ == "__main__":
    main()
