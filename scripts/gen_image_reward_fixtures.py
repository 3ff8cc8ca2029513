#!/usr/bin/env python3
"""ImageReward fixtures: a tiny random ImageReward model in the published layout, its BERT
tokenizer, and the scores as the `image-reward` package (ImageReward v1.5) computes them.

The reference is the package's own code: `ImageReward.ImageReward.score` / `inference_rank`,
`_transform`, `MLP`, BLIP's `VisionTransformer` (models/BLIP/vit.py), `BertModel` with
cross-attention (models/BLIP/med.py) and `init_tokenizer` (BertTokenizer + `[DEC]`, `[ENC]`).
Only the sizes are tiny. The package pins old libraries, so install it beside the main venv:

    /work/venv/bin/pip install --target /work/ir-site --no-deps image-reward==1.5 \\
        transformers==4.46.3 tokenizers==0.20.3 timm==0.6.13 fairscale==0.4.13 huggingface_hub==0.26.5
    PYTHONPATH=/work/ir-site /work/venv/bin/python scripts/gen_image_reward_fixtures.py

(torch, torchvision, PIL, safetensors come from the venv. The package's `__init__` imports CLIP
and diffusers for its other scores; this script imports only the ImageReward modules.)

Writes `crates/deradiff-tune/tests/fixtures/image_reward/`:

* `model.safetensors`: the tiny `ImageReward` module's `state_dict()` pickled with `torch.save`
  (as `ImageReward.pt` is published) and converted by `scripts/convert_to_safetensors.py
  image-reward` — the conversion's round trip is part of making the fixture (the script reads
  its output back and compares every tensor).
* `med_config.json`: the tiny BERT's config in the published `med_config.json` layout;
  `vision_config.json`: the tiny ViT's sizes (ImageReward hard-codes ViT-L: 224 px, patch 16,
  width 1024, depth 24, 16 heads).
* `vocab.txt`: a small WordPiece vocabulary; `tokenizer.json`: the same tokenizer as
  transformers' `BertTokenizerFast` saves it, with `[DEC]` and `[ENC]` added as `init_tokenizer`
  adds them.
* `reference.safetensors`: `input_ids` / `attention_mask` (int64 [P, 35]) of the prompts by the
  slow `BertTokenizer` (what ImageReward uses), `image{i}` (uint8 [H, W, 3]), `pixel_values`
  ([N, 3, 32, 32], `_transform(32)`), `image_embeds` ([N, 17, 48], `blip.visual_encoder`),
  `txt_features` ([N, 32], the text encoder's `[CLS]` state with cross-attention to the image),
  `rewards` ([N], `ImageReward.score(prompt, image)` one image at a time) and `rank_rewards`
  ([N], `inference_rank(prompt0, images)`), float32.
* `reference.json`: versions, sizes, prompts, image shapes and provenance.

Seeded; re-running gives identical files (CPU, float32).
"""

import json
import os
import subprocess
import sys
import tempfile
import types
from functools import partial

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from safetensors.torch import load_file, save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "crates", "deradiff-tune", "tests", "fixtures", "image_reward")


def import_image_reward():
    """The ImageReward modules without the package's `__init__` (it imports CLIP, diffusers)."""
    import importlib.util

    spec = importlib.util.find_spec("ImageReward")
    if spec is None:
        sys.exit("install image-reward==1.5 into a --target folder on PYTHONPATH (see the docstring)")
    base = list(spec.submodule_search_locations)[0]
    for name, path in [("ImageReward", base), ("ImageReward.models", os.path.join(base, "models"))]:
        m = types.ModuleType(name)
        m.__path__ = [path]
        sys.modules[name] = m
    import ImageReward.ImageReward as ir_mod
    import ImageReward.models.BLIP.med as med
    import ImageReward.models.BLIP.vit as vit

    return ir_mod, med, vit


IMAGE_SIZE = 32
VISION = {"image_size": IMAGE_SIZE, "patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 3, "mlp_ratio": 4.0}
MED = {
    "architectures": ["BertModel"],
    "attention_probs_dropout_prob": 0.1,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 32,
    "initializer_range": 0.02,
    "intermediate_size": 64,
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 40,
    "model_type": "bert",
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "pad_token_id": 0,
    "type_vocab_size": 2,
    "vocab_size": None,  # the vocabulary's size + 2 ([DEC], [ENC]), as 30522 + 2 = 30524
    "encoder_width": 768,  # overridden by the ViT's width, as BLIP_Pretrain does
    "add_cross_attention": True,
}
MLP_WIDTHS = [32, 24, 12, 8, 4, 1]  # ImageReward's MLP(768): 768, 1024, 128, 64, 16, 1

WORDS = (
    "a an the of on in with and photo picture painting cat dog red blue green cube sphere sitting "
    "on top mountain river city night light dark portrait woman man old young castle forest "
    "beautiful detailed high quality art style oil watercolor digital by trending station"
).split()
PIECES = ["##s", "##ing", "##ed", "##ly", "##er", "##est"]

PROMPTS = [
    "a red cube",
    "A Photo of the CAT, sitting on top of a mountain!",
    "Café déjà vu — naïve façade",
    "中文 prompt 山",
    "a beautiful detailed oil painting of an old castle in a dark forest at night, by a young "
    "woman, trending on art station, high quality, digital art style, watercolor light",
    "[DEC] and [ENC] are BLIP's tokens, [CLS] and [SEP] are BERT's",
    "",
    "unknownwordxyz qqq",
    "  spaces\tand\nnew lines  ",
]
# (H, W): a crop of 3 on the long side (torchvision rounds 1.5 to 2 where transformers floors to
# 1), portrait and landscape downscales, an upscale, a square downscale (no crop), one odd crop.
IMAGE_SHAPES = [(70, 64), (45, 37), (25, 56), (23, 19), (96, 96), (40, 33)]


def make_vocab():
    specials = ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789") + list(".,!?'\"-—:;()[]") + ["中", "文", "山"]
    vocab = specials + chars + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"] + WORDS + PIECES
    seen, out = set(), []
    for t in vocab:
        if t not in seen:
            seen.add(t)
            out.append(t)
    return out


def make_image(i, h, w, rng):
    y, x, c = np.meshgrid(np.arange(h), np.arange(w), np.arange(3), indexing="ij")
    base = (x * 9 + y * 5 + c * 60 + i * 37) % 256
    noise = rng.integers(-30, 31, size=(h, w, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def perturb(module, gen):
    """LayerNorm weights 1 + 0.2 N(0,1), biases 0.2 N(0,1); every Linear weight N(0, 1 / fan_in)
    (BLIP's 0.02 would make the image's part of the text features too small to test) and bias
    0.05 N(0,1) — so a mistake in any of them shows."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=gen))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=gen))
            elif isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) / m.in_features**0.5)
                if m.bias is not None:
                    m.bias.copy_(0.05 * torch.randn(m.bias.shape, generator=gen))


def tiny_model(ir_mod, med, vit, tokenizer, med_cfg):
    """The tiny ImageReward module (random weights), built as `ImageReward.__init__` builds it."""
    visual = vit.VisionTransformer(
        img_size=VISION["image_size"],
        patch_size=VISION["patch_size"],
        embed_dim=VISION["embed_dim"],
        depth=VISION["depth"],
        num_heads=VISION["num_heads"],
        mlp_ratio=VISION["mlp_ratio"],
    )
    config = med.BertConfig.from_dict(med_cfg)
    config.encoder_width = VISION["embed_dim"]
    text = med.BertModel(config=config, add_pooling_layer=False)

    model = ir_mod.ImageReward.__new__(ir_mod.ImageReward)
    nn.Module.__init__(model)
    model.device = "cpu"
    model.blip = nn.Module()
    model.blip.visual_encoder = visual
    model.blip.tokenizer = tokenizer
    model.blip.text_encoder = text
    model.blip.vision_proj = nn.Linear(VISION["embed_dim"], 16)
    model.blip.text_proj = nn.Linear(MED["hidden_size"], 16)
    model.preprocess = ir_mod._transform(IMAGE_SIZE)
    mlp = ir_mod.MLP(MLP_WIDTHS[0])
    w = MLP_WIDTHS
    mlp.layers = nn.Sequential(
        nn.Linear(w[0], w[1]), nn.Dropout(0.2), nn.Linear(w[1], w[2]), nn.Dropout(0.2),
        nn.Linear(w[2], w[3]), nn.Dropout(0.1), nn.Linear(w[3], w[4]), nn.Linear(w[4], w[5]),
    )
    model.mlp = mlp
    model.mean = 0.16717362830052426
    model.std = 1.0333394966054072
    return model


def main():
    ir_mod, med, vit = import_image_reward()
    import torchvision
    import transformers
    from transformers import BertTokenizer, BertTokenizerFast

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    os.makedirs(OUT, exist_ok=True)

    vocab = make_vocab()
    vocab_path = os.path.join(OUT, "vocab.txt")
    with open(vocab_path, "w", encoding="utf-8") as f:
        f.write("\n".join(vocab) + "\n")

    def blip_tokenizer(cls):
        # models/BLIP/blip.py's init_tokenizer, on this vocabulary instead of bert-base-uncased's.
        tok = cls(vocab_path)
        tok.add_special_tokens({"bos_token": "[DEC]"})
        tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
        tok.enc_token_id = tok.additional_special_tokens_ids[0]
        return tok

    slow = blip_tokenizer(BertTokenizer)
    fast = blip_tokenizer(BertTokenizerFast)
    with tempfile.TemporaryDirectory() as tmp:
        fast.save_pretrained(tmp)
        with open(os.path.join(tmp, "tokenizer.json"), encoding="utf-8") as f:
            tokenizer_json = f.read()
    with open(os.path.join(OUT, "tokenizer.json"), "w", encoding="utf-8") as f:
        f.write(tokenizer_json)

    med_cfg = dict(MED, vocab_size=len(slow))
    with open(os.path.join(OUT, "med_config.json"), "w") as f:
        json.dump(med_cfg, f, indent=2)
    with open(os.path.join(OUT, "vision_config.json"), "w") as f:
        json.dump(VISION, f, indent=2)

    # The model, built as ImageReward.__init__ builds it but with tiny sizes (BLIP_Pretrain's
    # create_vit only knows 'base' and 'large', and its tokenizer downloads bert-base-uncased).
    model = tiny_model(ir_mod, med, vit, slow, med_cfg)
    with torch.no_grad():
        # The class token and positions N(0, 0.5) (BLIP initialises them at 0.02).
        model.blip.visual_encoder.cls_token.copy_(0.5 * torch.randn(model.blip.visual_encoder.cls_token.shape, generator=gen))
        model.blip.visual_encoder.pos_embed.copy_(0.5 * torch.randn(model.blip.visual_encoder.pos_embed.shape, generator=gen))
    perturb(model, gen)
    model.eval()

    # Published as a pickled state dict; converted by the repository's script.
    with tempfile.TemporaryDirectory() as tmp:
        pt = os.path.join(tmp, "ImageReward.pt")
        torch.save(model.state_dict(), pt)
        out = os.path.join(OUT, "model.safetensors")
        subprocess.run(
            [sys.executable, os.path.join(ROOT, "scripts", "convert_to_safetensors.py"), "image-reward", pt, out],
            check=True,
        )
    back = load_file(out)
    state = model.state_dict()
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k].contiguous()) for k in back)

    rng = np.random.default_rng(7)
    ref = {}
    images = []
    for i, (h, w_) in enumerate(IMAGE_SHAPES):
        arr = make_image(i, h, w_, rng)
        ref[f"image{i}"] = torch.from_numpy(arr)
        images.append(Image.fromarray(arr, "RGB"))
    n = len(images)
    # One prompt per image (cycled), and every prompt's ids.
    prompt_of = [PROMPTS[i % len(PROMPTS)] for i in range(n)]
    ids = slow(PROMPTS, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    fast_ids = fast(PROMPTS, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    assert torch.equal(ids.input_ids, fast_ids.input_ids), "slow and fast BERT tokenizers differ"
    ref["input_ids"] = ids.input_ids
    ref["attention_mask"] = ids.attention_mask

    with torch.no_grad():
        pixels = torch.stack([model.preprocess(im) for im in images])
        embeds = model.blip.visual_encoder(pixels)
        feats, rewards = [], []
        for i in range(n):
            t = slow(prompt_of[i], padding="max_length", truncation=True, max_length=35, return_tensors="pt")
            out_ = model.blip.text_encoder(
                t.input_ids,
                attention_mask=t.attention_mask,
                encoder_hidden_states=embeds[i : i + 1],
                encoder_attention_mask=torch.ones(embeds[i : i + 1].shape[:-1], dtype=torch.long),
                return_dict=True,
            )
            feats.append(out_.last_hidden_state[0, 0, :])
            rewards.append(model.score(prompt_of[i], images[i]))
        _, rank_rewards = model.inference_rank(PROMPTS[0], images)
    ref["pixel_values"] = pixels
    ref["image_embeds"] = embeds
    ref["txt_features"] = torch.stack(feats)
    ref["rewards"] = torch.tensor(rewards, dtype=torch.float32)
    ref["rank_rewards"] = torch.tensor(rank_rewards, dtype=torch.float32)
    save_file({k: v.contiguous() for k, v in ref.items()}, os.path.join(OUT, "reference.safetensors"))

    import ImageReward  # noqa: F401 (its version for the record)

    meta = {
        "generator": "scripts/gen_image_reward_fixtures.py",
        "versions": {
            "image-reward": "1.5",
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "transformers": transformers.__version__,
            "PIL": Image.__version__,
        },
        "vision": VISION,
        "med_config": med_cfg,
        "mlp_widths": MLP_WIDTHS,
        "mean": model.mean,
        "std": model.std,
        "prompts": PROMPTS,
        "prompt_of_image": [i % len(PROMPTS) for i in range(n)],
        "image_shapes": IMAGE_SHAPES,
        "preprocess": "ImageReward._transform(32): Resize(32, BICUBIC) on the PIL image (shorter side 32, longer "
        "int(32 * long / short)), CenterCrop(32) (top = int(round((h - 32) / 2)), Python's round), "
        "convert('RGB'), ToTensor (x.float() / 255), Normalize(OpenAI CLIP mean, std)",
        "score": "ImageReward.score(prompt, image): BertTokenizer(padding='max_length', truncation=True, "
        "max_length=35); text_encoder(ids, mask, encoder_hidden_states=visual_encoder(pixels)) [:, 0]; "
        "mlp; (r - mean) / std",
        "tokens": [slow.convert_ids_to_tokens(row) for row in ids.input_ids.tolist()],
    }
    with open(os.path.join(OUT, "reference.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1, ensure_ascii=False)
    print(f"wrote {OUT}: vocab {len(slow)}, rewards {[round(r, 5) for r in rewards]}")


if __name__ == "__main__":
    main()
