#!/usr/bin/env python3
"""Image fidelity fixtures: PNG files of odd sizes in every PNG colour mode, scored by each
reward's reference package on the tiny random models of the other fixtures, for
`crates/deradiff-rewards/tests/image_fidelity.rs` and the CLI's `score` test.

Images (`fidelity/images/NN-MODE-WxH.png`, written by a small PNG encoder below so that every
colour type, bit depth, palette, tRNS chunk and Adam7 interlacing can be made): sizes chosen so that
`size − crop` after the resize takes every residue mod 4, in both orientations, smaller and larger
than the model, for the 24 px (CLIP) and 32 px (ImageReward) towers; modes RGB, RGBA, LA, L (1-,
2-, 4-, 8-, 16-bit), P (1-, 4-, 8-bit, with and without tRNS), L/RGB with tRNS, 16-bit RGB / RGBA /
LA, interlaced RGB / RGBA / P. Every reference opens the file with PIL's `Image.open`, as it does.

References (each the package's own code):

* CLIP score / PickScore: transformers 5, `CLIPModel` + the folder's `CLIPImageProcessorPil` (the
  PIL backend, whose `convert_to_rgb` composites alpha on white) + `AutoTokenizer`; the
  torchvision backend (`CLIPImageProcessor`, transformers 5's default) is recorded beside it;
* HPS v2: hpsv2's `image_transform(28, is_train=False, resize_longest_max=True)`
  (hpsv2/src/open_clip/transform.py) and its `tokenize` (tokenizer.py, on the CLIP fixture's
  merges), the tiny open_clip model of `hps/`; an RGBA file makes hpsv2 fail (its transform keeps
  4 channels): recorded, and scored as `convert("RGB")`;
* aesthetic: openai/CLIP's `_transform(24)` (the `openai-clip` package's clip/clip.py, the
  functions executed from its source) + transformers' `CLIPModel.get_image_features` + the
  predictor's MLP (`aesthetic/mlp-16.safetensors`), as `simple_inference.py`;
* ImageReward: `ImageReward.score(prompt, path)` of the image-reward package on the tiny model
  of `image_reward/` (run in the pinned environment).

    /work/venv/bin/pip install --target /work/fidelity-site --no-deps hpsv2 image-reward==1.5 openai-clip \\
        transformers==4.46.3 tokenizers==0.20.3 timm==0.6.13 fairscale==0.4.13 huggingface_hub==0.26.5
    /work/venv/bin/python scripts/gen_fidelity_image_fixtures.py

Writes `fidelity/images/*.png` and `fidelity/scores.json` (per file: PIL's mode, the prompt,
each reward's score, and the sum of each preprocessed pixel tensor for diagnosis).
"""

import ast
import gzip
import importlib.util
import json
import math
import os
import struct
import subprocess
import sys
import types
import zlib

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
FIX = os.path.join(ROOT, "crates", "deradiff-tune", "tests", "fixtures")
OUT = os.path.join(FIX, "fidelity")
IMAGES = os.path.join(OUT, "images")
SITE = os.environ.get("FIDELITY_SITE", "/work/fidelity-site")
CLIP_DIR = os.path.join(FIX, "clip", "clip-gelu")

# (colour type, bit depth, tRNS kind, interlaced)
MODES = [
    (2, 8, None, False), (6, 8, None, False), (4, 8, None, False), (0, 8, None, False), (0, 1, None, False),
    (0, 2, None, False), (0, 4, None, False), (3, 8, None, False), (3, 8, "alpha", False), (3, 4, None, False),
    (3, 1, "simple", False), (0, 8, "key", False), (2, 8, "key", False), (2, 16, None, False),
    (6, 16, None, False), (4, 16, None, False), (0, 16, None, False), (2, 8, None, True), (6, 8, None, True),
    (3, 4, None, True), (0, 16, "key", False), (3, 2, "alpha", True),
]
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]


def pack_row(row, depth):
    """One row of samples (flat) as PNG bytes: MSB-first bits, or big-endian 16-bit."""
    if depth == 16:
        return b"".join(struct.pack(">H", int(v)) for v in row)
    if depth == 8:
        return bytes(int(v) for v in row)
    per = 8 // depth
    out = bytearray()
    for i in range(0, len(row), per):
        b = 0
        for j, v in enumerate(row[i:i + per]):
            b |= int(v) << (8 - depth * (j + 1))
        out.append(b)
    return bytes(out)


def write_png(path, samples, color, depth, palette=None, trns=None, interlace=False):
    h, w, ch = samples.shape

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = bytearray()
    if interlace:
        for x0, y0, dx, dy in ADAM7:
            sub = samples[y0::dy, x0::dx]
            if sub.size == 0:
                continue
            for row in sub:
                raw += b"\0" + pack_row(row.reshape(-1), depth)
    else:
        for row in samples:
            raw += b"\0" + pack_row(row.reshape(-1), depth)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color, 0, 0, int(interlace)))
    if palette is not None:
        png += chunk(b"PLTE", bytes(np.asarray(palette, dtype=np.uint8).reshape(-1)))
    if trns is not None:
        png += chunk(b"tRNS", trns)
    png += chunk(b"IDAT", zlib.compress(bytes(raw), 9)) + chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(png)


def sizes():
    """Sizes covering, for crops 24 and 32, every residue of (resized long side − crop) mod 4,
    portrait and landscape, smaller and larger than the crop; then more, up to 34 images."""
    rng = np.random.default_rng(23)
    want = {(c, r, o, s) for c in (24, 32) for r in range(4) for o in ("portrait", "landscape")
            for s in ("smaller", "larger")}
    chosen = []
    while want or len(chosen) < 34:
        larger = rng.random() < 0.5
        short = int(rng.integers(33, 48)) if larger else int(rng.integers(9, 23))
        long_ = short + int(rng.integers(1, 24))
        w, h = (short, long_) if rng.random() < 0.5 else (long_, short)
        keys = set()
        for c in (24, 32):
            resized_long = int(c * max(w, h) / min(w, h))
            keys.add((c, (resized_long - c) % 4, "portrait" if h > w else "landscape",
                      "larger" if min(w, h) > c else "smaller"))
        if keys & want or (not want and len(chosen) < 34):
            want -= keys
            chosen.append((w, h))
    return chosen


def make(i, w, h, mode, rng):
    color, depth, trns_kind, interlace = mode
    yy, xx = np.mgrid[0:h, 0:w]
    base = (xx * 7 + yy * 5 + i * 13) % 64 * 4 + rng.integers(0, 4, size=(h, w))
    top = (1 << depth) - 1
    palette = trns = None
    if color == 3:
        n = 1 << depth
        idx = (base.astype(np.int64) * n // 256) % n
        samples = idx[..., None]
        palette = rng.integers(0, 256, size=(n, 3))
        if trns_kind == "alpha":
            trns = bytes(int(v) for v in rng.integers(0, 256, size=max(1, n // 2)))
        elif trns_kind == "simple":
            trns = b"\xff" * (n - 1) + b"\x00" if n > 1 else b"\x00"
    else:
        chans = []
        for c in range(CHANNELS[color]):
            v = (base + c * 50 + (yy * c) % 9) % 256
            if depth == 16:
                v = np.minimum(v * 257 + rng.integers(0, 257, size=(h, w)), 65535)
                if color == 0:
                    v = (xx * 37 + yy * 11) % 700  # many values under 256: PIL clips the rest
            elif depth < 8:
                v = v * (top + 1) // 256
            chans.append(v)
        if color in (4, 6):
            chans[-1] = np.where((xx + yy) % 5 == 0, 0, np.where((xx + yy) % 7 == 0, top, (xx * yy * 7 + 3) % (top + 1)))
        samples = np.stack(chans, axis=-1)
        if trns_kind == "key":
            key = samples[h // 2, w // 2]
            samples[: h // 3, : w // 3] = key
            trns = b"".join(struct.pack(">H", int(k)) for k in key)
    return samples.astype(np.int64), color, depth, palette, trns, interlace


def write_images(prompts):
    os.makedirs(IMAGES, exist_ok=True)
    for f in os.listdir(IMAGES):
        os.remove(os.path.join(IMAGES, f))
    rng = np.random.default_rng(5)
    entries = []
    names = {0: "L", 2: "RGB", 3: "P", 4: "LA", 6: "RGBA"}
    for i, (w, h) in enumerate(sizes()):
        mode = MODES[i % len(MODES)] if i < 2 * len(MODES) else MODES[0]
        samples, color, depth, palette, trns, interlace = make(i, w, h, mode, rng)
        tag = f"{names[color]}{depth}" + ("t" if trns else "") + ("i" if interlace else "")
        name = f"{i:02d}-{tag}-{w}x{h}.png"
        write_png(os.path.join(IMAGES, name), samples, color, depth, palette, trns, interlace)
        entries.append({"file": name, "prompt": prompts[(i * 19) % len(prompts)]})
    return entries


def openai_transform():
    """`_transform` and `_convert_image_to_rgb` of openai/CLIP's clip/clip.py, executed from the
    package's source (importing the package needs pkg_resources, tqdm and a download cache)."""
    path = os.path.join(SITE, "clip", "clip.py")
    tree = ast.parse(open(path).read())
    keep = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in ("_transform", "_convert_image_to_rgb")]
    keep += [n for n in tree.body if isinstance(n, ast.Try)]  # BICUBIC = InterpolationMode.BICUBIC
    from torchvision.transforms import CenterCrop, Compose, Normalize, Resize, ToTensor
    ns = {"Compose": Compose, "Resize": Resize, "CenterCrop": CenterCrop, "ToTensor": ToTensor,
          "Normalize": Normalize, "Image": __import__("PIL.Image").Image}
    exec(compile(ast.Module(body=keep, type_ignores=[]), path, "exec"), ns)
    return ns["_transform"]


def hpsv2_modules():
    """hpsv2's open_clip transform.py and tokenizer.py without the package's __init__ files."""
    base = os.path.join(SITE, "hpsv2")
    for name, sub in [("hpsv2", ""), ("hpsv2.src", "src"), ("hpsv2.src.open_clip", "src/open_clip")]:
        m = types.ModuleType(name)
        m.__path__ = [os.path.join(base, sub)]
        sys.modules[name] = m
    gz = os.path.join(base, "src", "open_clip", "bpe_simple_vocab_16e6.txt.gz")
    if not os.path.exists(gz):
        import open_clip
        import shutil
        shutil.copy(os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz"), gz)
    import hpsv2.src.open_clip.tokenizer as tokenizer
    import hpsv2.src.open_clip.transform as transform
    return transform, tokenizer


def phase_a(entries):
    import torch
    from PIL import Image
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPImageProcessorPil, CLIPModel

    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import gen_aesthetic_fixtures as aes
    import gen_hps_fixtures as hps_gen
    import open_clip

    torch.set_grad_enabled(False)
    model = CLIPModel.from_pretrained(CLIP_DIR).eval()
    tok = AutoTokenizer.from_pretrained(CLIP_DIR)
    pil_proc = CLIPImageProcessorPil.from_pretrained(CLIP_DIR)
    tv_proc = CLIPImageProcessor.from_pretrained(CLIP_DIR)
    mlp = aes.MLP(16)
    mlp.load_state_dict(load_file(os.path.join(FIX, "aesthetic", "mlp-16.safetensors")))
    mlp.eval()
    openai = openai_transform()(model.config.vision_config.image_size)
    transform, hps_tok = hpsv2_modules()
    with open(os.path.join(CLIP_DIR, "merges.txt")) as f:
        merges = f.read().rstrip("\n")
    tmp_gz = os.path.join(OUT, "_clip_merges.txt.gz")
    with gzip.open(tmp_gz, "wb") as f:
        f.write(merges.encode("utf-8"))
    hps_tok._tokenizer = hps_tok.SimpleTokenizer(bpe_path=tmp_gz)
    os.remove(tmp_gz)
    open_clip.factory._MODEL_CONFIGS[hps_gen.MODEL_NAME] = json.loads(json.dumps(hps_gen.MODEL_CFG))
    hps_model = open_clip.create_model(hps_gen.MODEL_NAME, pretrained=None, precision="fp32", device="cpu")
    state = load_file(os.path.join(FIX, "hps", "open_clip_model.safetensors"))
    missing, unexpected = hps_model.load_state_dict(state, strict=False)
    assert not unexpected and all("attn_mask" in k for k in missing), (missing, unexpected)
    hps_model.eval()
    with open(os.path.join(FIX, "hps", "open_clip_config.json")) as f:
        pre = json.load(f)["preprocess_cfg"]
    hps_pre = transform.image_transform(hps_gen.MODEL_CFG["vision_cfg"]["image_size"], is_train=False,
                                        mean=pre["mean"], std=pre["std"], resize_longest_max=True)

    def feats(x):
        return x if torch.is_tensor(x) else x.pooler_output

    def cos(a, b):
        a, b = a.double()[0], b.double()[0]
        return float(a @ b / (a.norm() * b.norm()))

    for e in entries:
        path = os.path.join(IMAGES, e["file"])
        im = Image.open(path)
        e["pil_mode"] = im.mode
        ids = tok([e["prompt"]], padding="max_length", truncation=True, max_length=77, return_tensors="pt")
        txt = feats(model.get_text_features(input_ids=ids.input_ids))
        scale = math.exp(float(model.logit_scale))
        for key, proc in [("", pil_proc), ("_torchvision", tv_proc)]:
            pix = proc(images=Image.open(path), return_tensors="pt").pixel_values
            c = cos(feats(model.get_image_features(pixel_values=pix)), txt)
            e["clip_score" + key] = 100 * max(c, 0.0)
            e["pickscore" + key] = scale * c
            e["pix_clip" + key] = float(pix.double().sum())
        # The aesthetic predictor: openai/CLIP's transform, the normalised embedding, the MLP.
        pix = openai(Image.open(path)).unsqueeze(0)
        emb = feats(model.get_image_features(pixel_values=pix)).double().numpy()
        e["aesthetic"] = float(mlp(torch.from_numpy(aes.normalized(emb)).float()).item())
        e["pix_openai"] = float(pix.double().sum())
        # HPS v2: hpsv2's transform and tokenize; RGBA fails in hpsv2's own pipeline.
        text = hps_tok.tokenize([e["prompt"]])
        try:
            image = hps_pre(Image.open(path)).unsqueeze(0)
            hps_model.encode_image(image)
        except RuntimeError as err:
            e["hps_reference_error"] = str(err).split("\n")[0][:160]
            image = hps_pre(Image.open(path).convert("RGB")).unsqueeze(0)
        fi = hps_model.encode_image(image, normalize=True)
        ft = hps_model.encode_text(text, normalize=True)
        e["hps"] = float((fi.double() @ ft.double().T)[0, 0])
        e["pix_hps"] = float(image.double().sum())


def phase_b(entries_path):
    """ImageReward.score(prompt, path) in the pinned environment."""
    import torch
    from safetensors.torch import load_file
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import gen_image_reward_fixtures as irg
    from transformers import BertTokenizer

    ir_mod, med, vit = irg.import_image_reward()
    d = os.path.join(FIX, "image_reward")
    tok = BertTokenizer(os.path.join(d, "vocab.txt"))
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    tok.enc_token_id = tok.additional_special_tokens_ids[0]
    with open(os.path.join(d, "med_config.json")) as f:
        med_cfg = json.load(f)
    model = irg.tiny_model(ir_mod, med, vit, tok, med_cfg)
    model.load_state_dict(load_file(os.path.join(d, "model.safetensors")))
    model.eval()
    with open(entries_path) as f:
        entries = json.load(f)
    with torch.no_grad():
        for e in entries:
            e["image_reward"] = float(model.score(e["prompt"], os.path.join(IMAGES, e["file"])))
    with open(entries_path, "w") as f:
        json.dump(entries, f)


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--image-reward":
        phase_b(sys.argv[2])
        return
    with open(os.path.join(OUT, "prompts.json")) as f:
        prompts = json.load(f)
    entries = write_images(prompts)
    phase_a(entries)
    tmp = os.path.join(OUT, "_scores.json")
    with open(tmp, "w") as f:
        json.dump(entries, f)
    env = dict(os.environ, PYTHONPATH=SITE)
    subprocess.run([sys.executable, __file__, "--image-reward", tmp], check=True, env=env)
    with open(tmp) as f:
        entries = json.load(f)
    os.remove(tmp)
    import torch
    import transformers
    from PIL import __version__ as pil_version
    out = {
        "versions": {"transformers": transformers.__version__, "torch": torch.__version__, "pillow": pil_version},
        "images": entries,
    }
    with open(os.path.join(OUT, "scores.json"), "w") as f:
        json.dump(out, f, ensure_ascii=False, indent=0)
    modes = sorted({e["pil_mode"] for e in entries})
    gap = max(abs(e["clip_score"] - e["clip_score_torchvision"]) / max(abs(e["clip_score"]), 1e-9) for e in entries)
    print(f"{len(entries)} images, PIL modes {modes}; PIL vs torchvision CLIP score: up to {gap:.2e} relative")


if __name__ == "__main__":
    main()
