#!/usr/bin/env python3
"""Tiny random CLIPModel fixtures for deradiff-rewards' CLIP score and PickScore, with reference
outputs from transformers.

Run (from the repository root; no network needed once the packages are installed):

    /work/venv/bin/python scripts/gen_clip_fixtures.py

(any Python with transformers 5.x, tokenizers, safetensors, torch, numpy and Pillow; diffusers is
needed only because the tokenizer is made by `scripts/gen_sd_fixtures.py`, which imports it).
It writes `crates/deradiff-tune/tests/fixtures/clip/` (well under 1 MB), which
`crates/deradiff-rewards/tests/clip_reward.rs` compares deradiff against. Everything is seeded:
re-running with the same library versions gives the same files.

What is written
---------------
* `clip-quick-gelu/` and `clip-gelu/`: complete `CLIPModel` directories laid out as the Hub's
  `openai/clip-vit-*` and `yuvalkirstain/PickScore_v1`: `config.json` and `model.safetensors`
  (float32, transformers' tensor names) from `save_pretrained`, the CLIP tokenizer files in the
  same directory (`vocab.json`, `merges.txt`, `tokenizer_config.json`,
  `special_tokens_map.json`; the tiny BPE of `gen_sd_fixtures.py`) and `preprocessor_config.json`.
  The two differ in `hidden_act` (`quick_gelu`, as OpenAI CLIP; exact `gelu`, as OpenCLIP ViT-H
  and so PickScore_v1), in their seeds, and in the preprocessing (OpenAI's mean/std and 30 px;
  mean/std 0.5 and a 24 px crop of a 26 px resize for the other, so that values not read from
  the file would show).
* `reference.safetensors` / `reference.json`: the token ids of the prompts, four uint8 images of
  different sizes (down- and upscaled, one already square) and a float batch in [-1, 1] (turned
  into uint8 as deradiff-sd's `RgbImage::from_tensor` does, then given to PIL); for each model and
  image group transformers' preprocessed pixel values (`CLIPImageProcessorPil`: torchvision is not
  installed, and transformers 5 falls back to it), the projected text and image embeddings,
  `logits_per_image`, and per (image i, prompt i) the CLIP score and PickScore; plus PIL's own
  `Image.resize` of two images with each filter (codes 1..5) to four sizes (down to 1/9), to check the
  resampling bit for bit.
* Each model's seed is the first from its base seed whose CLIP scores, in both image groups,
  include zeros (negative cosines, clamped) and positive values.

Models
------
Text tower: hidden 32, MLP 37, 2 layers, 4 heads, 77 positions. Vision tower: hidden 24, MLP 40,
2 layers, 3 heads, patches of 6 px over 30 px (or 24 px) images. Projection 16. All linear and
convolution weights are re-drawn at std 1/sqrt(fan_in) (transformers' 0.02 init would make
attention nearly uniform and hide errors), embeddings (token, position, class) at std 1, norms at
weight 1 + 0.2 N(0,1) and bias 0.2 N(0,1), and `logit_scale` is 3.9 (not the init value
2.6592), so that a dropped norm, a misplaced class token or a hard-coded scale shows.

Scores
------
* CLIP score, as torchmetrics' `CLIPScore`: 100 * max(cos(image, text), 0).
* PickScore, as the PickScore_v1 model card computes it: `logit_scale.exp() * cos(image, text)`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

import transformers
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_sd_fixtures import train_tokenizer  # noqa: E402 (the same deterministic tiny tokenizer)

assert transformers.__version__.startswith("5."), transformers.__version__
torch.set_num_threads(2)
torch.use_deterministic_algorithms(True)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "crates", "deradiff-tune", "tests", "fixtures", "clip")
NORM_STD = 0.2
OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]

MODELS = {
    "clip-quick-gelu": dict(
        act="quick_gelu",
        seed=11,
        preprocessor=dict(size=30, crop=30, mean=OPENAI_MEAN, std=OPENAI_STD),
    ),
    "clip-gelu": dict(
        act="gelu",
        seed=12,
        preprocessor=dict(size=26, crop=24, mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5]),
    ),
}

PROMPTS = [
    "a photograph of an astronaut riding a horse",
    "a red cube on a wooden table",
    "",
    " ".join(["a large red cube on a wooden table next to a small blue sphere"] * 8),
]
# (height, width) of the images: downscaled (landscape, portrait), upscaled, and one already square.
IMAGE_SIZES = [(37, 45), (64, 41), (19, 23), (30, 30)]
# The float batch (values in [-1, 1], as a VAE decodes) scored through the tensor path.
BATCH_SHAPE = (4, 3, 34, 40)


def write_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False, sort_keys=True)
        f.write("\n")


def make_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth colour field plus noise, uint8 HWC."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    phase = rng.uniform(0, 2 * math.pi, size=3)
    freq = rng.uniform(0.05, 0.3, size=(3, 2))
    img = np.stack([127.5 + 90 * np.sin(freq[c, 0] * x + freq[c, 1] * y + phase[c]) for c in range(3)], axis=-1)
    img += rng.normal(0, 25, size=img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def to_uint8(x: np.ndarray) -> np.ndarray:
    """[-1, 1] float32 NCHW -> uint8 NHWC exactly as deradiff-sd's `RgbImage::from_tensor`."""
    x = x.astype(np.float32)
    v = np.clip(x * np.float32(0.5) + np.float32(0.5), np.float32(0), np.float32(1))
    return np.round(v * np.float32(255)).astype(np.uint8).transpose(0, 2, 3, 1)


def make_model(vocab_size: int, tokenizer: CLIPTokenizer, act: str, seed: int, image_size: int) -> CLIPModel:
    config = CLIPConfig(
        text_config=dict(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            hidden_act=act,
            layer_norm_eps=1e-5,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=24,
            intermediate_size=40,
            num_hidden_layers=2,
            num_attention_heads=3,
            num_channels=3,
            image_size=image_size,
            patch_size=6,
            hidden_act=act,
            layer_norm_eps=1e-5,
        ),
        projection_dim=16,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) / module.in_features**0.5)
                if module.bias is not None:
                    module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))
            elif isinstance(module, torch.nn.Conv2d):
                fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) / fan_in**0.5)
            elif isinstance(module, torch.nn.Embedding):
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen))
            elif isinstance(module, torch.nn.LayerNorm):
                module.weight.copy_(1.0 + NORM_STD * torch.randn(module.weight.shape, generator=gen))
                module.bias.copy_(NORM_STD * torch.randn(module.bias.shape, generator=gen))
        emb = model.vision_model.embeddings
        emb.class_embedding.copy_(torch.randn(emb.class_embedding.shape, generator=gen))
        model.logit_scale.fill_(3.9)
    return model


def save_model(model: CLIPModel, tokenizer_dir: str, directory: str, pre: dict) -> CLIPImageProcessorPil:
    os.makedirs(directory, exist_ok=True)
    state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config["architectures"] = ["CLIPModel"]
    for k in ("dtype", "transformers_version"):
        config.pop(k, None)
        config["text_config"].pop(k, None)
        config["vision_config"].pop(k, None)
    write_json(os.path.join(directory, "config.json"), config)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(os.path.join(tokenizer_dir, name), os.path.join(directory, name))
    processor = CLIPImageProcessorPil(
        size={"shortest_edge": pre["size"]},
        crop_size={"height": pre["crop"], "width": pre["crop"]},
        image_mean=pre["mean"],
        image_std=pre["std"],
    )
    processor.save_pretrained(directory)
    # Reload, as a user's file would be read.
    return CLIPImageProcessorPil.from_pretrained(directory)


def evaluate(model: CLIPModel, processor, ids: torch.Tensor, pil_images: list) -> dict[str, torch.Tensor]:
    """transformers' outputs and both scores for image i paired with prompt i."""
    pixels = processor(images=pil_images, return_tensors="pt").pixel_values.float()
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=pixels)
        cos = (out.image_embeds * out.text_embeds).sum(-1)  # both normalised by CLIPModel
        raw_img = model.get_image_features(pixel_values=pixels)
        raw_txt = model.get_text_features(input_ids=ids)
        if not isinstance(raw_img, torch.Tensor):
            raw_img, raw_txt = raw_img.pooler_output, raw_txt.pooler_output
        return {
            "pixel_values": pixels,
            "image_embeds": raw_img,
            "text_embeds": raw_txt,
            "logits_per_image": out.logits_per_image,
            "clip_score": 100.0 * torch.clamp(cos, min=0.0),
            "pickscore": model.logit_scale.exp() * cos,
        }


def main() -> None:
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    tok_dir = os.path.join(OUT, "_tokenizer")
    tokenizer = train_tokenizer(tok_dir)
    vocab_size = len(tokenizer.get_vocab())

    rng = np.random.default_rng(2024)
    images = [make_image(rng, h, w) for h, w in IMAGE_SIZES]
    batch = rng.uniform(-1.1, 1.1, size=BATCH_SHAPE).astype(np.float32)
    batch_u8 = to_uint8(batch)

    tensors: dict[str, torch.Tensor] = {}
    for i, img in enumerate(images):
        tensors[f"image{i}"] = torch.from_numpy(img.copy())
    tensors["batch"] = torch.from_numpy(batch)
    ids = tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    tensors["input_ids"] = ids.to(torch.int64)

    # PIL's resampling alone, bit for bit: image 0 (37x45) and image 2 (19x23) to a few sizes with
    # each filter transformers can be configured with (PIL codes 1..5).
    resize_cases = []
    for src in (0, 2):
        for code in (1, 2, 3, 4, 5):
            for w, h in ((17, 29), (50, 61), (45, 20), (5, 4)):
                out = np.asarray(Image.fromarray(images[src]).resize((w, h), resample=code))
                key = f"resize.{src}.{code}.{w}x{h}"
                tensors[key] = torch.from_numpy(out.copy())
                resize_cases.append({"image": src, "resample": code, "width": w, "height": h, "key": key})

    meta = {
        "resize_cases": resize_cases,
        "prompts": PROMPTS,
        "image_sizes": IMAGE_SIZES,
        "batch_shape": list(BATCH_SHAPE),
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "models": {},
    }
    for name, spec in MODELS.items():
        directory = os.path.join(OUT, name)
        # The first seed (spec seed, +1, …) whose model gives, in both image groups, CLIP scores
        # both clamped at 0 and positive, so that both branches of the score are compared.
        for seed in range(spec["seed"], spec["seed"] + 1000):
            model = make_model(vocab_size, tokenizer, spec["act"], seed, spec["preprocessor"]["crop"])
            processor = save_model(model, tok_dir, directory, spec["preprocessor"])
            model = CLIPModel.from_pretrained(directory).eval()
            tok = CLIPTokenizer.from_pretrained(directory)
            assert tok(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids.equal(
                ids
            )
            found = {}
            for group, pil_images in (
                ("images", [Image.fromarray(a) for a in images]),
                ("batch", [Image.fromarray(a) for a in batch_u8]),
            ):
                found[group] = evaluate(model, processor, ids, pil_images)
            if all((g["clip_score"] > 0).sum() >= 2 and (g["clip_score"] == 0).sum() >= 1 for g in found.values()):
                break
        else:
            raise RuntimeError(f"no seed gives mixed CLIP scores for {name}")
        info = {"seed": seed, "hidden_act": spec["act"], "logit_scale": float(model.logit_scale.detach())}
        for group, g in found.items():
            p = f"{name}.{group}"
            for key in ("pixel_values", "image_embeds", "logits_per_image", "clip_score", "pickscore"):
                tensors[f"{p}.{key}"] = g[key]
            info[group] = {"clip_score": g["clip_score"].tolist(), "pickscore": g["pickscore"].tolist()}
        tensors[f"{name}.text_embeds"] = found["images"]["text_embeds"]
        meta["models"][name] = info
    shutil.rmtree(tok_dir)
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(OUT, "reference.safetensors"))
    write_json(os.path.join(OUT, "reference.json"), meta)


if __name__ == "__main__":
    main()
