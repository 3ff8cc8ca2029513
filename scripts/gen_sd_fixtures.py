#!/usr/bin/env python3
"""Tiny Stable Diffusion fixtures for deradiff-sd, with reference outputs from diffusers/transformers.

Run (from the repository root; no network needed once the packages are installed):

    /work/venv/bin/python scripts/gen_sd_fixtures.py

(any Python with diffusers 0.42.x, transformers 5.x, tokenizers, safetensors, torch and numpy).
It writes `crates/deradiff-sd/tests/fixtures/` (about 4 MB), which the tests in
`crates/deradiff-sd/tests/` compare deradiff against:

    cargo test -p deradiff-sd -- --nocapture

Everything is seeded: re-running with the same library versions gives the same files.

What is written
---------------
* `tiny-sd/`: a complete diffusers-layout checkpoint, laid out like `runwayml/stable-diffusion-v1-5`:
  `model_index.json`, `scheduler/scheduler_config.json` (SD 1.5's PNDM config),
  `tokenizer/` (`vocab.json`, `merges.txt`, `tokenizer_config.json`, `special_tokens_map.json`; no
  `tokenizer.json`, as in the real repositories), `text_encoder/` (`config.json`,
  `model.safetensors` with the `text_model.` prefix of real SD checkpoints and the int64
  `text_model.embeddings.position_ids` buffer they carry), `unet/` and `vae/`
  (`config.json`, `diffusion_pytorch_model.safetensors`).
* `tiny-aligned-unet/`: a second UNet of the same shape (different seed): a bare `unet/` directory
  as a DPO checkpoint ships it.
* `tokenizer-json/`: the same tokenizer saved by transformers as `tokenizer.json`.
* `text-encoder-gelu/`: a CLIP text model with `hidden_act = "gelu"` (exact GELU, as SD 2.x).
* `reference.safetensors` (float32 tensors) and `reference.json` (token ids, scalars, settings).

Models
------
All weights are stored as float16 (small files); every reference is computed in float32 after an
exact upcast of those float16 weights. Default initialisation leaves norms at weight 1 / bias 0,
so every GroupNorm / LayerNorm weight is set to 1 + 0.2 N(0,1) and bias to 0.2 N(0,1): a layer
that is dropped or misplaced shows in the outputs.

* UNet: `UNet2DConditionModel`, blocks 32/64, one resnet per block, cross-attention in the first
  block (2 heads) and the mid block (4 heads: `attention_head_dim = [2, 4]`, diffusers' legacy
  meaning "number of heads"), cross-attention dim 32, 8x8 latents.
* CLIP text model: hidden 32, 3 layers, 4 heads, 77 positions, `quick_gelu` (SD 1.x), with its
  linear weights re-drawn at std 1/sqrt(fan_in) (transformers' 0.02 init makes attention
  almost uniform, which would hide errors).
* VAE: `AutoencoderKL`, blocks 16/32 (scale factor 2), 8 groups, `scaling_factor = 0.13025`
  (not SD 1.5's 0.18215, so a hard-coded constant shows).
* Tokenizer: a byte-level BPE trained here (no CLIP vocabulary can be downloaded) in CLIP's layout:
  the 256 byte symbols, the same with `</w>`, the merges in order, then `<|startoftext|>` and
  `<|endoftext|>`; transformers' `CLIPTokenizer` loads it from `vocab.json` / `merges.txt`.

References
----------
* token ids (padded to 77, truncated) of a set of prompts, from transformers' `CLIPTokenizer`
  (also checked here against the `tokenizer.json` twin);
* text-encoder last hidden states (`CLIPTextModel(...)[0]`, what SD pipelines use);
* UNet output for given latents, timesteps (integer and fractional) and embeddings, for both UNets;
* VAE decode of given latents (raw decoder output) ;
* complete two-model realigned runs, lambda = 0.5, classifier-free guidance, for DDIM (eta = 0),
  Euler ancestral (injected noise) and DDIM with `prediction_type = "v_prediction"` (SD 2.1-768
  style; the same UNets' outputs read as v), built from diffusers' own pieces: `pipe.encode_prompt`,
  `scheduler.scale_model_input`, both UNets' guided outputs, and each model's posterior
  mean / std read off diffusers' `scheduler.step` with its `randn_tensor` patched to zeros / ones
  (as `scripts/gen_scheduler_fixtures.py` does; for Euler ancestral the hidden `_step_index` is
  set explicitly); then the closed-form fusion (equal variances: the mean is
  0.5 mu_ref + 0.5 mu_al, the variance the common one) and x = mean + std * z with the injected z.
  The same loop with one model (lambda = 0) is asserted equal to diffusers'
  `StableDiffusionPipeline` itself (same latents, same injected noise), which also gives the
  end-to-end reference image (uint8, `numpy_to_pil`'s rounding).
* Diagnostics: the same UNet outputs and realigned runs with diffusers' GEGLU switched to the
  tanh-approximate GELU that candle-transformers 0.11 uses, so the Rust tests can show that the
  remaining difference is that approximation alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import diffusers
import tokenizers
import transformers
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerAncestralDiscreteScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.models.activations import GEGLU
from diffusers.schedulers import scheduling_ddim, scheduling_euler_ancestral_discrete
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

assert diffusers.__version__.startswith("0.42"), diffusers.__version__
torch.set_num_threads(2)
torch.use_deterministic_algorithms(True)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "crates", "deradiff-sd", "tests", "fixtures")
SD = os.path.join(OUT, "tiny-sd")
ALIGNED = os.path.join(OUT, "tiny-aligned-unet")

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
CLIP_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
MAX_LEN = 77
NORM_STD = 0.2

SD15_SCHEDULER = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}

# Settings of the realigned runs (recorded in reference.json).
GUIDANCE = 5.0
LAMBDA = 0.5
STEPS = 6
# name: sampler, scheduler-config overrides, prompts, negative prompt, steps, noise seed.
RUNS = {
    "ddim": dict(
        sampler="ddim", config={}, prompts=["a red cube on a wooden table"], negative="blurry, dark", steps=STEPS, seed=51
    ),
    "euler_a": dict(
        sampler="euler_a",
        config={},
        prompts=["a red cube on a wooden table", "an astronaut riding a horse"],
        negative=None,
        steps=STEPS,
        seed=52,
    ),
    # SD 2.1-768 style: the same UNets read as v-predictions (the scheduler config says so).
    "ddim_v": dict(
        sampler="ddim",
        config={"prediction_type": "v_prediction"},
        prompts=["a lighthouse at dusk"],
        negative=None,
        steps=4,
        seed=53,
    ),
}

TOKEN_PROMPTS = [
    "a photograph of an astronaut riding a horse",
    "A RED cube,   on a\ttable!!  ",
    "",
    "naïve café façade 123 4567",
    "don't stop: it's 3.14 o'clock & we've <|endoftext|> tokens",
    "a 🐱 cat, zyzzyva qwxz",
    " ".join(["a large red cube on a wooden table next to a small blue sphere"] * 8),
]

CORPUS = """
A photograph of an astronaut riding a horse on the moon. A red cube on a wooden table.
An oil painting of a cat sitting on a chair, highly detailed, trending on artstation.
A small blue sphere next to a large green pyramid, studio lighting, sharp focus.
Portrait of a woman with long hair, soft light, 85mm lens, bokeh, cinematic.
A watercolor landscape with mountains, a river and pine trees at sunset.
A futuristic city at night, neon lights, rain, reflections on the street.
Two dogs playing in the snow; a bird flying over the sea; a bowl of fruit on a table.
The quick brown fox jumps over the lazy dog. It's a beautiful day, isn't it? We've seen it.
Blurry, dark, low quality, distorted, ugly, watermark, text, signature, cropped.
A cup of coffee, a book and glasses on a desk by the window, morning light, cozy.
""".strip().splitlines()


def perturb_norms(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Norm weights 1 + s N(0,1), biases s N(0,1), so that a dropped norm shows."""
    for module in model.modules():
        if isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
            with torch.no_grad():
                if module.weight is not None:
                    module.weight.copy_(1.0 + NORM_STD * torch.randn(module.weight.shape, generator=gen))
                if module.bias is not None:
                    module.bias.copy_(NORM_STD * torch.randn(module.bias.shape, generator=gen))


def round_to_f16(model: torch.nn.Module) -> None:
    """Rounds every parameter to float16 and back: the float32 model equals the stored one."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())


def f16_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}


def write_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False, sort_keys=True)
        f.write("\n")


# --------------------------------------------------------------------------------------------
# Tokenizer: byte-level BPE in CLIP's layout
# --------------------------------------------------------------------------------------------


def clip_pipeline(tok: Tokenizer) -> None:
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )


def learn_merges(corpus: list[str], n_merges: int) -> list[tuple[str, str]]:
    """Byte-level BPE merges learned deterministically (the `tokenizers` trainer breaks ties in
    hash-map order, so it gives different merges from run to run): words are pre-tokenized by
    CLIP's own normalizer and pre-tokenizer, the last symbol of a word carries `</w>`, and each
    round merges the most frequent pair, ties broken by the smallest pair."""
    tok = Tokenizer(models.BPE(continuing_subword_prefix="", end_of_word_suffix="</w>", unk_token=EOS))
    clip_pipeline(tok)
    words: dict[str, int] = {}
    for line in corpus:
        for w, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(line)):
            words[w] = words.get(w, 0) + 1
    seqs = {w: list(w[:-1]) + [w[-1] + "</w>"] for w in words}
    merges = []
    for _ in range(n_merges):
        pairs: dict[tuple[str, str], int] = {}
        for w, count in words.items():
            seq = seqs[w]
            for pair in zip(seq, seq[1:]):
                pairs[pair] = pairs.get(pair, 0) + count
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for w, seq in seqs.items():
            out, i = [], 0
            while i < len(seq):
                if i + 1 < len(seq) and (seq[i], seq[i + 1]) == best:
                    out.append(seq[i] + seq[i + 1])
                    i += 2
                else:
                    out.append(seq[i])
                    i += 1
            seqs[w] = out
    return merges


def train_tokenizer(directory: str) -> CLIPTokenizer:
    merges = learn_merges(CORPUS, 380)

    # CLIP's vocabulary order (openai/CLIP simple_tokenizer.py): bytes, bytes + </w>, merges, specials.
    byte_symbols = list(bytes_to_unicode().values())
    vocab_list = byte_symbols + [s + "</w>" for s in byte_symbols]
    known = set(vocab_list)
    kept = []
    for a, b in merges:
        if a in known and b in known and a + b not in known:
            kept.append((a, b))
            vocab_list.append(a + b)
            known.add(a + b)
    vocab_list += [BOS, EOS]
    vocab = {s: i for i, s in enumerate(vocab_list)}

    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(directory, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in kept:
            f.write(f"{a} {b}\n")
    added = lambda s: {  # noqa: E731 (AddedToken as the SD 1.5 files write it)
        "__type": "AddedToken",
        "content": s,
        "lstrip": False,
        "normalized": True,
        "rstrip": False,
        "single_word": False,
    }
    write_json(
        os.path.join(directory, "tokenizer_config.json"),
        {
            "add_prefix_space": False,
            "bos_token": added(BOS),
            "do_lower_case": True,
            "eos_token": added(EOS),
            "errors": "replace",
            "model_max_length": MAX_LEN,
            "name_or_path": "deradiff/tiny-clip-tokenizer",
            "pad_token": EOS,
            "special_tokens_map_file": None,
            "tokenizer_class": "CLIPTokenizer",
            "unk_token": added(EOS),
        },
    )
    special = lambda s: {"content": s, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}  # noqa: E731
    write_json(
        os.path.join(directory, "special_tokens_map.json"),
        {"bos_token": special(BOS), "eos_token": special(EOS), "pad_token": EOS, "unk_token": special(EOS)},
    )
    return CLIPTokenizer.from_pretrained(directory)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte-to-symbol table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def token_ids(tokenizer: CLIPTokenizer, prompts: list[str]) -> list[list[int]]:
    return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True).input_ids


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


def make_text_encoder(vocab_size: int, tokenizer: CLIPTokenizer, seed: int, act: str) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=37,
        projection_dim=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=MAX_LEN,
        hidden_act=act,
        layer_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=1,
    )
    return random_text_encoder(config, seed)


def random_text_encoder(config: CLIPTextConfig, seed: int) -> CLIPTextModel:
    """A `CLIPTextModel` of `config` with seeded weights large enough to matter, rounded to f16."""
    torch.manual_seed(seed)
    model = CLIPTextModel(config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) / module.in_features**0.5)
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))
            elif isinstance(module, torch.nn.Embedding):
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen))
    perturb_norms(model, gen)
    round_to_f16(model)
    return model


def save_text_encoder(model: CLIPTextModel, directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    state = f16_state(model)
    # transformers 5 saves CLIPTextModel without the `text_model.` prefix of real SD checkpoints.
    state = {k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in state.items()}
    state["text_model.embeddings.position_ids"] = torch.arange(MAX_LEN, dtype=torch.int64)[None]
    save_file(state, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config["architectures"] = ["CLIPTextModel"]
    config["torch_dtype"] = "float16"
    for k in ("dtype", "transformers_version"):
        config.pop(k, None)
    write_json(os.path.join(directory, "config.json"), config)


UNET_CONFIG = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=[2, 4],
    norm_num_groups=32,
)


def make_unet(seed: int) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**UNET_CONFIG).eval()
    perturb_norms(unet, torch.Generator().manual_seed(seed + 1000))
    round_to_f16(unet)
    return unet


def make_vae(seed: int) -> AutoencoderKL:
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(16, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
        scaling_factor=0.13025,
    ).eval()
    perturb_norms(vae, torch.Generator().manual_seed(seed + 1000))
    round_to_f16(vae)
    return vae


def save_diffusers_model(model, directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    model.save_config(directory)
    save_file(f16_state(model), os.path.join(directory, "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})


# --------------------------------------------------------------------------------------------
# Patches
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def tanh_geglu():
    """diffusers' GEGLU with the tanh-approximate GELU of candle-transformers 0.11."""
    saved = GEGLU.gelu
    GEGLU.gelu = lambda self, gate: F.gelu(gate, approximate="tanh")
    try:
        yield
    finally:
        GEGLU.gelu = saved


@contextlib.contextmanager
def patched_noise(module, make):
    """Makes `module.randn_tensor` return `make(shape, dtype, device)`."""
    saved = module.randn_tensor

    def fake(shape, generator=None, device=None, dtype=None, layout=None):
        return make(tuple(shape), dtype, device)

    module.randn_tensor = fake
    try:
        yield
    finally:
        module.randn_tensor = saved


def zeros(shape, dtype, device):
    return torch.zeros(shape, dtype=dtype, device=device)


def ones(shape, dtype, device):
    return torch.ones(shape, dtype=dtype, device=device)


# --------------------------------------------------------------------------------------------
# The realigned run, from diffusers' pieces
# --------------------------------------------------------------------------------------------


def guided(unet, x_in, t, embeds, g):
    out = unet(torch.cat([x_in] * 2), t, encoder_hidden_states=embeds).sample
    uncond, cond = out.chunk(2)
    return uncond + g * (cond - uncond)


def posterior(kind, scheduler, module, i, t, x, out):
    """Mean and std of diffusers' step i (noise patched to zeros / ones)."""

    def step(sample, model_output):
        if kind == "euler_a":
            scheduler._step_index = i
            return scheduler.step(model_output, t, sample).prev_sample
        return scheduler.step(model_output, t, sample, eta=0.0).prev_sample

    with patched_noise(module, zeros):
        mean = step(x, out)
    with patched_noise(module, ones):
        std = step(torch.zeros_like(x), torch.zeros_like(out))
    return mean, std


def make_scheduler(kind, n, overrides=None):
    cls = DDIMScheduler if kind == "ddim" else EulerAncestralDiscreteScheduler
    scheduler = cls.from_config({**SD15_SCHEDULER, **(overrides or {})})
    scheduler.set_timesteps(n)
    return scheduler


def realigned_run(kind, unets, weights, embeds, noise, g, n, overrides=None):
    """x_T = noise[0] * init_noise_sigma; step i uses noise[i + 1]."""
    scheduler = make_scheduler(kind, n, overrides)
    module = scheduling_ddim if kind == "ddim" else scheduling_euler_ancestral_discrete
    x = noise[0] * scheduler.init_noise_sigma
    trace = []
    for i, t in enumerate(scheduler.timesteps):
        if kind == "euler_a":
            scheduler._step_index = i
        x_in = scheduler.scale_model_input(x, t)
        means, stds = [], []
        for unet in unets:
            out = guided(unet, x_in, t, embeds, g)
            mean, std = posterior(kind, scheduler, module, i, t, x, out)
            means.append(mean)
            stds.append(std)
        for s in stds[1:]:
            assert torch.equal(s, stds[0]), "equal variances expected"
        fused = sum(w * m for w, m in zip(weights, means))
        x = fused + stds[0] * noise[i + 1]
        trace.append(x.clone())
    return x, trace, [float(t) for t in scheduler.timesteps]


def pipeline_run(kind, pipe, prompts, negative, noise, g, n, overrides=None):
    """diffusers' StableDiffusionPipeline itself, with the same latents and injected noise."""
    pipe.scheduler = make_scheduler(kind, n, overrides)
    queue = list(noise[1:])

    def injected(shape, dtype, device):
        z = queue.pop(0)
        assert tuple(z.shape) == tuple(shape), (z.shape, shape)
        return z.to(dtype=dtype, device=device)

    module = scheduling_ddim if kind == "ddim" else scheduling_euler_ancestral_discrete
    extra = {"eta": 0.0} if kind == "ddim" else {}
    with patched_noise(module, injected):
        latents = pipe(
            prompts, negative_prompt=negative, num_inference_steps=n, guidance_scale=g,
            latents=noise[0].clone(), output_type="latent", **extra
        ).images
    pipe.scheduler = make_scheduler(kind, n, overrides)
    queue = list(noise[1:])
    with patched_noise(module, injected):
        image = pipe(
            prompts, negative_prompt=negative, num_inference_steps=n, guidance_scale=g,
            latents=noise[0].clone(), output_type="np", **extra
        ).images
    image_u8 = (image * 255).round().astype("uint8")  # numpy_to_pil's rounding
    return latents, image_u8


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def main() -> None:
    for d in (SD, ALIGNED, os.path.join(OUT, "tokenizer-json"), os.path.join(OUT, "text-encoder-gelu")):
        shutil.rmtree(d, ignore_errors=True)
    os.makedirs(OUT, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    meta: dict = {
        "generator": "scripts/gen_sd_fixtures.py",
        "versions": {
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "torch": torch.__version__,
        },
    }

    # Tokenizer
    tokenizer = train_tokenizer(os.path.join(SD, "tokenizer"))
    fast_dir = os.path.join(OUT, "tokenizer-json")
    tokenizer.save_pretrained(fast_dir)
    for extra in ("vocab.json", "merges.txt"):
        if os.path.exists(os.path.join(fast_dir, extra)):
            os.remove(os.path.join(fast_dir, extra))
    assert os.path.exists(os.path.join(fast_dir, "tokenizer.json"))
    twin = Tokenizer.from_file(os.path.join(fast_dir, "tokenizer.json"))
    ids = token_ids(tokenizer, TOKEN_PROMPTS)
    for prompt, row in zip(TOKEN_PROMPTS, ids):
        enc = twin.encode(prompt)
        expect = row[: len(enc.ids)]
        assert enc.ids[: len(expect)] == expect or len(enc.ids) > MAX_LEN, (prompt, enc.ids, row)
    assert len(set(map(tuple, ids))) == len(ids)
    vocab_size = len(tokenizer.get_vocab())
    meta["tokenizer"] = {
        "prompts": TOKEN_PROMPTS,
        "ids": ids,
        "vocab_size": vocab_size,
        "bos_id": tokenizer.bos_token_id,
        "eos_id": tokenizer.eos_token_id,
        "pad_id": tokenizer.pad_token_id,
    }

    # Text encoders
    text_encoder = make_text_encoder(vocab_size, tokenizer, seed=11, act="quick_gelu")
    save_text_encoder(text_encoder, os.path.join(SD, "text_encoder"))
    gelu_encoder = make_text_encoder(vocab_size, tokenizer, seed=12, act="gelu")
    save_text_encoder(gelu_encoder, os.path.join(OUT, "text-encoder-gelu"))
    id_tensor = torch.tensor(ids, dtype=torch.int64)
    with torch.no_grad():
        tensors["text.hidden"] = text_encoder(id_tensor)[0]
        tensors["text_gelu.hidden"] = gelu_encoder(id_tensor)[0]
        # Reload from disk as transformers would (prefix and all) and check it is the same model.
        reloaded = CLIPTextModel.from_pretrained(os.path.join(SD, "text_encoder"), torch_dtype=torch.float32)
        assert torch.equal(reloaded(id_tensor)[0], tensors["text.hidden"]), "text encoder reload differs"

    # UNets
    unet = make_unet(seed=21)
    aligned = make_unet(seed=22)
    save_diffusers_model(unet, os.path.join(SD, "unet"))
    save_diffusers_model(aligned, ALIGNED)
    gen = torch.Generator().manual_seed(31)
    x = torch.randn((2, 4, 8, 8), generator=gen)
    emb = torch.randn((2, MAX_LEN, 32), generator=gen)
    tensors["unet.x"], tensors["unet.emb"] = x, emb
    meta["unet_timesteps"] = [999.0, 587.5, 1.0]
    with torch.no_grad():
        for name, model in (("ref", unet), ("aligned", aligned)):
            for k, t in enumerate(meta["unet_timesteps"]):
                ts = torch.tensor(t, dtype=torch.float32)
                tensors[f"unet.{name}.out{k}"] = model(x, ts, encoder_hidden_states=emb).sample
                with tanh_geglu():
                    tensors[f"unet.{name}.out{k}_tanh"] = model(x, ts, encoder_hidden_states=emb).sample
        scale = float(tensors["unet.ref.out0"].abs().max())
        assert scale > 0.1, f"UNet output too small to test anything: {scale}"

    # VAE
    vae = make_vae(seed=41)
    save_diffusers_model(vae, os.path.join(SD, "vae"))
    z = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(42))
    with torch.no_grad():
        tensors["vae.z"] = z
        tensors["vae.decoded"] = vae.decode(z).sample
    meta["vae_scaling_factor"] = vae.config.scaling_factor

    # Scheduler config and model index, as in runwayml/stable-diffusion-v1-5
    # The file as the SD 1.5 repository has it (PNDM's class name, DDIM-style fields).
    write_json(
        os.path.join(SD, "scheduler", "scheduler_config.json"),
        {"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", **SD15_SCHEDULER},
    )
    write_json(
        os.path.join(SD, "model_index.json"),
        {
            "_class_name": "StableDiffusionPipeline",
            "_diffusers_version": diffusers.__version__,
            "feature_extractor": [None, None],
            "requires_safety_checker": False,
            "safety_checker": [None, None],
            "scheduler": ["diffusers", "PNDMScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        },
    )

    # Realigned runs
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=make_scheduler("ddim", STEPS),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    meta["runs"] = {}
    for name, spec in RUNS.items():
        kind, overrides, n = spec["sampler"], spec["config"], spec["steps"]
        prompts, negative = spec["prompts"], spec["negative"]
        b = len(prompts)
        negatives = None if negative is None else [negative] * b  # one negative prompt for all
        gen = torch.Generator().manual_seed(spec["seed"])
        noise = [torch.randn((b, 4, 8, 8), generator=gen) for _ in range(n + 1)]
        both, weights = [unet, aligned], [1 - LAMBDA, LAMBDA]
        with torch.no_grad():
            cond, uncond = pipe.encode_prompt(prompts, torch.device("cpu"), 1, True, negatives)
            embeds = torch.cat([uncond, cond])
            final, trace, timesteps = realigned_run(kind, both, weights, embeds, noise, GUIDANCE, n, overrides)
            with tanh_geglu():
                final_tanh, _, _ = realigned_run(kind, both, weights, embeds, noise, GUIDANCE, n, overrides)
            # The loop with the reference alone must be diffusers' pipeline itself.
            single, _, _ = realigned_run(kind, [unet], [1.0], embeds, noise, GUIDANCE, n, overrides)
            piped, image_u8 = pipeline_run(kind, pipe, prompts, negatives, noise, GUIDANCE, n, overrides)
            err = (single - piped).abs().max().item()
            assert err <= 1e-5, (name, err)
            single_aligned, _, _ = realigned_run(kind, [aligned], [1.0], embeds, noise, GUIDANCE, n, overrides)
        spread = (single - single_aligned).abs().max().item()
        assert spread > 0.05, f"{name}: the two UNets barely differ ({spread}); the realigned test would be weak"
        tensors[f"run.{name}.noise"] = torch.stack(noise)
        tensors[f"run.{name}.embeds"] = embeds
        tensors[f"run.{name}.final"] = final
        tensors[f"run.{name}.final_tanh"] = final_tanh
        tensors[f"run.{name}.trace"] = torch.stack(trace)
        tensors[f"run.{name}.single_ref"] = single
        tensors[f"run.{name}.image_ref"] = torch.from_numpy(image_u8.copy())
        meta["runs"][name] = {
            "sampler": kind,
            "scheduler_config_overrides": overrides,
            "prompts": prompts,
            "negative_prompt": negative,
            "guidance_scale": GUIDANCE,
            "lambda": LAMBDA,
            "steps": n,
            "timesteps": timesteps,
            "pipeline_vs_loop_max_abs": err,
            "ref_vs_aligned_max_abs": spread,
            "tanh_vs_exact_max_abs": (final - final_tanh).abs().max().item(),
        }
        print(f"{name}: pipeline vs loop {err:.2e}, ref vs aligned {spread:.3f}, "
              f"tanh-GELU vs exact {meta['runs'][name]['tanh_vs_exact_max_abs']:.2e}")

    for k in ("ref", "aligned"):
        for i in range(3):
            d = (tensors[f"unet.{k}.out{i}"] - tensors[f"unet.{k}.out{i}_tanh"]).abs().max().item()
            print(f"unet {k} t={meta['unet_timesteps'][i]}: tanh-GELU vs exact {d:.2e}")

    tensors = {k: v.contiguous() for k, v in sorted(tensors.items())}
    for k, v in tensors.items():
        if v.dtype == torch.float64:
            tensors[k] = v.float()
    save_file(tensors, os.path.join(OUT, "reference.safetensors"), metadata={"format": "pt"})
    write_json(os.path.join(OUT, "reference.json"), meta)
    total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(OUT) for f in fs)
    print(f"wrote {OUT} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
