#!/usr/bin/env python3
"""HPS v2 (Human Preference Score v2) fixtures: a tiny random open_clip CLIP model, HPS v2's
image preprocessing, and the scores, computed the way the `hpsv2` package computes them.

Run from the repository root (needs `open_clip_torch` and `torchvision` in the venv):

    /work/venv/bin/python scripts/gen_hps_fixtures.py

Writes `crates/deradiff-tune/tests/fixtures/hps/`:

* `open_clip_model.safetensors`: the tiny model's `state_dict()` (float32, open_clip's own names).
* `open_clip_config.json`: `{"model_cfg": ..., "preprocess_cfg": {"mean", "std"}}`, the layout of
  open_clip's Hugging Face Hub checkpoints (`open_clip_config.json`).
* `reference.safetensors`: `input_ids` (int64 [4, 77]), `image0..3` (uint8 [H, W, 3]),
  `pixel_values` ([4, 3, 28, 28], hpsv2's `preprocess_val`), `image_features` / `text_features` (L2-normalised, `model(image, text)` with
  output_dict=True), `image_embeds_raw` / `text_embeds_raw` (`encode_image` / `encode_text`
  without normalisation) and `hps` ([4], diag(image_features @ text_features.T)). float32 unless
  stated.
* `reference.json`: versions, config, provenance and the exact preprocessing rule.

The model: `open_clip.create_model("tiny-hps")` from a registered config (embed_dim 16; ViT
28px/7px patches, width 24, 2 layers, head_width 8; text width 32, 4 heads, 2 layers, vocab 1000,
context 77; exact GELU like ViT-H-14), seeded, then every LayerNorm weight/bias perturbed
(1 + 0.2 N(0,1), 0.2 N(0,1)) and logit_scale changed, so mistakes show. Everything is seeded;
re-running gives identical files (CPU, float32).

HPS v2 preprocessing (hpsv2/src/open_clip/transform.py, `image_transform(..., is_train=False,
resize_longest_max=True)`, as called by hpsv2's factory with `light_augmentation=True`):
convert('RGB') -> ToTensor() (float [0, 1], CHW) -> ResizeMaxSize(image_size, fill=0) on the
*tensor* (torchvision tensor bicubic resize, antialias default = True in torchvision >= 0.17),
padding [left=pad_w//2, top=pad_h//2, right=pad_w-pad_w//2, bottom=pad_h-pad_h//2] with 0 ->
Normalize(OpenAI mean/std). hpsv2's ResizeMaxSize is reimplemented here verbatim because the
`hpsv2` package itself is not installed (it pins its own copy of open_clip).
"""

import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torchvision
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode, Normalize, ToTensor
from PIL import Image
from safetensors.torch import save_file

import open_clip
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "crates", "deradiff-tune", "tests", "fixtures", "hps")

IMAGE_SIZE = 28
MODEL_NAME = "tiny-hps"
MODEL_CFG = {
    "embed_dim": 16,
    "quick_gelu": False,
    "vision_cfg": {
        "image_size": IMAGE_SIZE,
        "layers": 2,
        "width": 24,
        "head_width": 8,
        "mlp_ratio": 4.0,
        "patch_size": 7,
    },
    "text_cfg": {
        "context_length": 77,
        "vocab_size": 1000,
        "width": 32,
        "heads": 4,
        "layers": 2,
    },
}
# (H, W) of the test images: portrait downscale with odd width padding, landscape downscale with an
# exact .5 (Python's round() rounds half to even: 25 * 0.5 = 12.5 -> 12), upscale with odd width
# padding, near-square downscale with odd height padding.
IMAGE_SHAPES = [(45, 37), (25, 56), (23, 19), (30, 33)]
START_ID, END_ID = 998, 999
INNER_LENGTHS = [3, 7, 1, 12]


class ResizeMaxSize(nn.Module):
    """Verbatim copy of hpsv2/src/open_clip/transform.py's ResizeMaxSize (HPSv2 commit 866735e)."""

    def __init__(self, max_size, interpolation=InterpolationMode.BICUBIC, fn='max', fill=0):
        super().__init__()
        if not isinstance(max_size, int):
            raise TypeError(f"Size should be int. Got {type(max_size)}")
        self.max_size = max_size
        self.interpolation = interpolation
        self.fn = min if fn == 'min' else min
        self.fill = fill

    def forward(self, img):
        if isinstance(img, torch.Tensor):
            height, width = img.shape[1:]
        else:
            width, height = img.size
        scale = self.max_size / float(max(height, width))
        if scale != 1.0:
            new_size = tuple(round(dim * scale) for dim in (height, width))
            img = TF.resize(img, new_size, self.interpolation)
            pad_h = self.max_size - new_size[0]
            pad_w = self.max_size - new_size[1]
            img = TF.pad(img, padding=[pad_w//2, pad_h//2, pad_w - pad_w//2, pad_h - pad_h//2], fill=self.fill)
        return img


def _convert_to_rgb_or_rgba(image):
    if image.mode == 'RGBA':
        return image
    return image.convert('RGB')


def hps_preprocess_val(image_size, mean, std):
    """hpsv2's image_transform(image_size, is_train=False, mean, std, resize_longest_max=True).
    (Its MaskAwareNormalize is plain Normalize for 3-channel input.)"""
    return torchvision.transforms.Compose([
        _convert_to_rgb_or_rgba,
        ToTensor(),
        ResizeMaxSize(image_size, fill=0),
        Normalize(mean=mean, std=std),
    ])


def make_image(i, h, w, rng):
    y, x, c = np.meshgrid(np.arange(h), np.arange(w), np.arange(3), indexing="ij")
    base = (x * 7 + y * 13 + c * 50 + i * 31) % 256
    noise = rng.integers(-24, 25, size=(h, w, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def preprocess_steps(h, w):
    scale = IMAGE_SIZE / float(max(h, w))
    if scale == 1.0:
        return {"H": h, "W": w, "scale": scale, "skipped": True}
    nh, nw = round(h * scale), round(w * scale)
    pad_h, pad_w = IMAGE_SIZE - nh, IMAGE_SIZE - nw
    return {
        "H": h, "W": w, "scale": scale, "h_times_scale": h * scale, "w_times_scale": w * scale,
        "new_h": nh, "new_w": nw,
        "pad_left": pad_w // 2, "pad_top": pad_h // 2,
        "pad_right": pad_w - pad_w // 2, "pad_bottom": pad_h - pad_h // 2,
    }


def main():
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    os.makedirs(OUT, exist_ok=True)

    open_clip.factory._MODEL_CONFIGS[MODEL_NAME] = json.loads(json.dumps(MODEL_CFG))
    model = open_clip.create_model(MODEL_NAME, pretrained=None, precision="fp32", device="cpu",
                                   output_dict=True)
    assert isinstance(model, open_clip.model.CLIP), type(model)
    # Exact GELU everywhere (not QuickGELU).
    acts = {type(m).__name__ for m in model.modules() if "GELU" in type(m).__name__}
    assert acts == {"GELU"}, acts

    # Perturb the LayerNorms and logit_scale with a separate seeded generator.
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, m in sorted(model.named_modules()):
            if isinstance(m, nn.LayerNorm):
                m.weight.copy_(1.0 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
        model.logit_scale.fill_(math.log(1 / 0.07) + 0.37)
    model.eval()

    sd = {k: v.detach().to(torch.float32).contiguous().clone() for k, v in model.state_dict().items()}
    save_file(sd, os.path.join(OUT, "open_clip_model.safetensors"))
    mean, std = list(OPENAI_DATASET_MEAN), list(OPENAI_DATASET_STD)
    with open(os.path.join(OUT, "open_clip_config.json"), "w") as f:
        json.dump({"model_cfg": MODEL_CFG, "preprocess_cfg": {"mean": mean, "std": std}}, f, indent=2)
        f.write("\n")

    # Images.
    rng = np.random.default_rng(2024)
    images = [make_image(i, h, w, rng) for i, (h, w) in enumerate(IMAGE_SHAPES)]
    preprocess = hps_preprocess_val(IMAGE_SIZE, mean, std)
    pixel_values = torch.stack([preprocess(Image.fromarray(im, "RGB")) for im in images]).float()
    assert pixel_values.shape == (4, 3, IMAGE_SIZE, IMAGE_SIZE)
    oc_pre = open_clip.image_transform(IMAGE_SIZE, is_train=False, mean=mean, std=std,
                                       resize_mode="longest", interpolation="bicubic", fill_color=0)
    pixel_values_oc = torch.stack([oc_pre(Image.fromarray(im, "RGB")) for im in images]).float()

    # Token ids: [998, ids in 1..990, 999, 0, ...].
    tg = torch.Generator().manual_seed(77)
    input_ids = torch.zeros(4, 77, dtype=torch.int64)
    for r, n in enumerate(INNER_LENGTHS):
        inner = torch.randint(1, 991, (n,), generator=tg)
        row = torch.cat([torch.tensor([START_ID]), inner, torch.tensor([END_ID])])
        input_ids[r, : row.numel()] = row

    with torch.no_grad():
        out = model(pixel_values, input_ids)
        image_features, text_features = out["image_features"], out["text_features"]
        image_raw = model.encode_image(pixel_values)
        text_raw = model.encode_text(input_ids)
        # hpsv2/img_score.py: logits_per_image = image_features @ text_features.T
        #                     hps_score = torch.diagonal(logits_per_image)
        logits_per_image = image_features @ text_features.T
        hps = torch.diagonal(logits_per_image).contiguous()
    assert torch.allclose(image_features, torch.nn.functional.normalize(image_raw, dim=-1), atol=1e-6)
    assert torch.allclose(text_features, torch.nn.functional.normalize(text_raw, dim=-1), atol=1e-6)

    ref = {
        "input_ids": input_ids,
        "pixel_values": pixel_values.contiguous(),
        "image_features": image_features.contiguous(),
        "text_features": text_features.contiguous(),
        "image_embeds_raw": image_raw.contiguous(),
        "text_embeds_raw": text_raw.contiguous(),
        "hps": hps,
    }
    for i, im in enumerate(images):
        ref[f"image{i}"] = torch.from_numpy(im.copy())
    save_file(ref, os.path.join(OUT, "reference.safetensors"))

    info = {
        "generator": "scripts/gen_hps_fixtures.py",
        "versions": {
            "python": sys.version.split()[0], "torch": torch.__version__,
            "torchvision": torchvision.__version__, "open_clip_torch": open_clip.__version__,
            "numpy": np.__version__, "Pillow": Image.__version__,
            "hpsv2_reference_source": "github.com/tgxs002/HPSv2 @ 866735ecaae999fa714bd9edfa05aa2672669ee3 "
                                      "(hpsv2/img_score.py, hpsv2/src/open_clip/{transform,factory,model}.py); "
                                      "hpsv2 package not installed, ResizeMaxSize copied verbatim",
        },
        "model_name": MODEL_NAME,
        "model_cfg": MODEL_CFG,
        "preprocess_cfg": {"mean": mean, "std": std},
        "model_build": "open_clip.factory._MODEL_CONFIGS['tiny-hps'] = model_cfg; open_clip.create_model("
                       "'tiny-hps', pretrained=None, precision='fp32', device='cpu', output_dict=True) "
                       "after torch.manual_seed(0); class open_clip.model.CLIP, exact nn.GELU, "
                       "LayerNorm eps 1e-5, vision pool 'tok' (class token) with ln_post before pooling, "
                       "text pooled at text.argmax(dim=-1) after ln_final, causal text attention mask",
        "perturbation": "torch.Generator().manual_seed(1234); for every nn.LayerNorm in sorted(named_modules()): "
                        "weight = 1 + 0.2*randn, bias = 0.2*randn; logit_scale = log(1/0.07) + 0.37 "
                        "(logit_scale is NOT used by the HPS score)",
        "state_dict": {k: list(v.shape) for k, v in sd.items()},
        "images": {
            "shapes_hw": [list(s) for s in IMAGE_SHAPES],
            "content": "uint8 [H, W, 3]: clip(((x*7 + y*13 + c*50 + i*31) % 256) + noise, 0, 255), "
                       "noise = numpy default_rng(2024).integers(-24, 25, (H, W, 3)) drawn per image in order",
            "given_as": "PIL.Image.fromarray(image, 'RGB')",
        },
        "preprocessing": {
            "source": "hpsv2/src/open_clip/transform.py image_transform(image_size=28, is_train=False, "
                      "mean=OpenAI, std=OpenAI, resize_longest_max=True) (hpsv2 factory, light_augmentation=True)",
            "steps": [
                "image.convert('RGB')",
                "ToTensor(): float32 CHW = uint8 / 255",
                "ResizeMaxSize(28, BICUBIC, fill=0) on the float tensor: height, width = img.shape[1:]; "
                "scale = 28 / float(max(height, width)); if scale != 1.0: "
                "new_size = (round(height*scale), round(width*scale)) [Python round: half to even]; "
                "img = torchvision F.resize(img, new_size, BICUBIC) [tensor path = torch.nn.functional.interpolate("
                "mode='bicubic', align_corners=False, antialias=True) -> _upsample_bicubic2d_aa, cubic a = -0.5, "
                "support scaled by the downscale factor (PIL-style), no clamping, no uint8 rounding]; "
                "pad_h = 28 - new_h; pad_w = 28 - new_w; F.pad(img, [left=pad_w//2, top=pad_h//2, "
                "right=pad_w - pad_w//2, bottom=pad_h - pad_h//2], fill=0) (resized image at row pad_h//2, col pad_w//2; "
                "the extra odd pixel goes right/bottom). If scale == 1.0 (max side already 28) nothing is done, "
                "not even padding.",
                "Normalize(mean, std) per channel: (x - mean[c]) / std[c]; padded pixels become -mean[c]/std[c]",
            ],
            "per_image": [preprocess_steps(h, w) for (h, w) in IMAGE_SHAPES],
            "note_antialias": "torchvision >= 0.17 defaults antialias=True for tensors; older torchvision "
                              "(hpsv2's era) used antialias=False for tensors (cubic a = -0.75, no support "
                              "scaling), which changes the downscaled images",
            "open_clip_current_transform": "not stored (size budget); for comparison only: current open_clip image_transform(28, is_train=False, "
                                      "resize_mode='longest') = ResizeKeepRatio(longest=1) on the PIL uint8 image "
                                      "(size = round(dim / (max(h/28, w/28)))) + CenterCropOrPad(fill=0, left=pad//2) "
                                      "+ ToTensor + Normalize; PIL bicubic with uint8 rounding, so it differs slightly: "
                                      f"max |diff| vs pixel_values here = {(pixel_values_oc - pixel_values).abs().max().item():.4f}",
        },
        "input_ids": "int64 [4, 77]: [998, n ids from torch.Generator().manual_seed(77) randint(1, 991), 999, 0...], "
                     f"n = {INNER_LENGTHS}; 999 is the highest id so text.argmax(dim=-1) pools at it",
        "outputs": {
            "image_features": "model(pixel_values, input_ids)['image_features'] = F.normalize(encode_image, dim=-1)",
            "text_features": "model(pixel_values, input_ids)['text_features'] = F.normalize(encode_text, dim=-1)",
            "image_embeds_raw": "model.encode_image(pixel_values) (normalize=False): visual(...) = ln_post(cls) @ visual.proj",
            "text_embeds_raw": "model.encode_text(input_ids) (normalize=False): ln_final(x)[argmax] @ text_projection",
            "hps": "hpsv2/img_score.py: logits_per_image = image_features @ text_features.T; "
                   "hps_score = torch.diagonal(logits_per_image) (no logit_scale; hpsv2 runs it under "
                   "torch.cuda.amp.autocast, here float32)",
        },
        "reference_tensors": {k: {"dtype": str(v.dtype).replace("torch.", ""), "shape": list(v.shape)}
                              for k, v in sorted(ref.items())},
        "hps_values": hps.tolist(),
    }
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump(info, f, indent=2)
        f.write("\n")
    print("hps", hps.tolist())


if __name__ == "__main__":
    main()
