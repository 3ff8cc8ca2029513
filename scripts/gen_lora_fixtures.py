#!/usr/bin/env python3
"""LoRA adapter fixtures for the tiny SD / SDXL UNets, in each published layout, with diffusers' outputs.

Run from the repository root (after `gen_sd_fixtures.py` and `gen_sdxl_fixtures.py`, whose tiny
checkpoints and reference runs it reads; it never rewrites them):

    /work/venv/bin/python scripts/gen_lora_fixtures.py

(any Python with diffusers 0.42.x, peft, transformers 5.x, torch, safetensors). The script
re-executes itself with `PYTHONHASHSEED=0` so that peft's and diffusers' writers, which list
`target_modules` from a Python set, write the same order every time: re-running with the same
library versions gives byte-identical files. It writes
`crates/deradiff-sd/tests/fixtures/lora/` (about 0.95 MB), the whole folder anew:

Adapters (random non-zero A *and* B, seeded, sized so that the UNet output moves by far more
than 1e-2 and stays sane; float32 unless said)
-----------------------------------------------------------------------------------------
* `sd-peft/`: `peft.get_peft_model(unet, LoraConfig(r=4, lora_alpha=2, target_modules=[to_q,
  to_k, to_v, to_out.0]))` then `PeftModel.save_pretrained`: `adapter_model.safetensors` (keys
  `base_model.model.<module>.lora_A.weight` / `.lora_B.weight`) + `adapter_config.json`
  (scale = lora_alpha / r = 0.5). peft's README.md model card is removed.
* `sd-diffusers.safetensors`: what diffusers' DPO script writes:
  `StableDiffusionPipeline.save_lora_weights(unet_lora_layers=convert_state_dict_to_diffusers(
  get_peft_model_state_dict(unet)))`, r = lora_alpha = 8 on to_q/to_k/to_v/to_out.0; keys
  `unet.<module>.lora.down.weight` / `.lora.up.weight`, no alpha (scale 1).
* `sd-diffusers-alpha.safetensors`: the same layout, r = 4, lora_alpha = 8 (scale 2), saved as
  diffusers' current training scripts do (`unet_lora_adapter_metadata=unet.peft_config[...]
  .to_dict()`): the alpha lives only in the safetensors header, `__metadata__
  ["lora_adapter_metadata"]`, a JSON object with keys `unet.r`, `unet.lora_alpha`, ...
* `sd-attn-procs.safetensors`: the diffusers <= 0.20 `save_attn_procs` layout
  (`<block>.attn1.processor.to_q_lora.down.weight`, `to_out_lora`, no `unet.` prefix, no
  alpha: scale 1), r = 4, every attention projection.
* `sd-kohya.safetensors`: kohya-ss / LyCORIS LoCon with SD 1.5 diffusers block names
  (`lora_unet_<module path, dots as _>.lora_down.weight`, `.lora_up.weight`, `.alpha` as a
  0-d tensor), float16, on every Linear and Conv2d of the UNet that diffusers' converter maps
  (attention q/k/v/out, ff, proj_in/out 1x1, resnet conv1/conv2 3x3, time_emb_proj,
  conv_shortcut, down/up-sampler convs, conv_in, conv_out, time_embedding linear_1/2).
  Linear and 1x1 conv: rank 4, alpha 2 (scale 0.5); 3x3 convs (LoCon conv_dim / conv_alpha):
  rank 2, alpha 1.5 (scale 0.75).
* `sdxl-kohya-sgm.safetensors`: kohya with the original SGM (Stability) SDXL names
  (`lora_unet_input_blocks_3_1_transformer_blocks_0_attn1_to_q`, `middle_block_*`,
  `output_blocks_*`, resnets `in_layers_2` / `out_layers_3` / `emb_layers_1` /
  `skip_connection`, `op`, `conv`, `input_blocks_0_0`, `out_2`, `time_embed_*`, `label_emb_0_*`),
  float16, rank 4, alpha 3 (scale 0.75), for tiny-sdxl; the SGM -> diffusers mapping used is
  recorded in the JSON.
* `sdxl-diffusers.safetensors`: SDXL in diffusers' layout (`unet.` prefix), r = lora_alpha = 4.
* Error cases: `sd-dora/` (peft `use_dora=True`, has `lora_magnitude_vector` keys),
  `sd-loha.safetensors` (LyCORIS LoHa `hada_w1_a` ...), `sd-kohya-te.safetensors` (kohya with
  `lora_te_text_model_encoder_layers_0_*` keys too), `sd-unknown-key.safetensors`
  (`sd-diffusers`' down_blocks.0 modules plus `unet.mystery_block.lora.down.weight`); what
  diffusers does with each is recorded in the JSON.

References (`reference.safetensors`, float32, and `reference.json`)
-------------------------------------------------------------------
* inputs `sd.x`, `sd.t` (0-d), `sd.context`; `sdxl.x`, `sdxl.t`, `sdxl.context`,
  `sdxl.text_embeds`, `sdxl.time_ids`; base outputs `sd.base`, `sdxl.base`;
* `<layout>.output` for every loadable layout, the UNet output with the adapter loaded by
  diffusers / peft (float32 forward, LoRA unmerged), `<layout>.output_x0.5` (sd-kohya,
  sd-peft) with a user multiplier 0.5, and `sd-kohya-te.output_unet_only`; each is asserted
  equal (< 1e-5) to a float64 run of the manually merged UNet `W + m * (alpha / r) * up @ down`
  (flattened for convs), and to differ from the base output by > 1e-2;
* realigned runs: the `ddim` and `euler_a` runs of `../reference.json` (same embeddings, noise,
  settings, read from `../reference.safetensors`) with the aligned model = tiny-sd's UNet
  + `sd-kohya.safetensors` loaded by `pipe.load_lora_weights`: `run.<name>.final`, `.trace`,
  `.single_aligned` (the LoRA model alone). The stored reference fixtures were made on another
  CPU: the reference-only loop rerun here matches them to ~1e-5 relative, not bit for bit.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math
import os
import shutil
import sys
import warnings

if os.environ.get("PYTHONHASHSEED") != "0":
    # peft / diffusers serialise `target_modules` from a set: fix the hash seed so the order is stable.
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable] + sys.argv)

import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_sd_fixtures as sd  # noqa: E402  (its main() is guarded; only helpers are used)

import accelerate  # noqa: E402
import diffusers  # noqa: E402
import numpy  # noqa: E402
import peft  # noqa: E402
import safetensors  # noqa: E402
import transformers  # noqa: E402
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel  # noqa: E402
from diffusers.loaders.lora_conversion_utils import (  # noqa: E402
    _convert_non_diffusers_lora_to_diffusers,
    _maybe_map_sgm_blocks_to_diffusers,
)
from diffusers.utils import convert_state_dict_to_diffusers, convert_unet_state_dict_to_peft  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from peft.tuners.lora import LoraLayer  # noqa: E402
from peft.tuners.tuners_utils import BaseTunerLayer  # noqa: E402
from peft.utils import get_peft_model_state_dict  # noqa: E402

assert diffusers.__version__.startswith("0.42"), diffusers.__version__

FIXTURES = sd.OUT
OUT = os.path.join(FIXTURES, "lora")
SD_DIR = os.path.join(FIXTURES, "tiny-sd")
XL_DIR = os.path.join(FIXTURES, "tiny-sdxl")

ATTN = ["to_q", "to_k", "to_v", "to_out.0"]
# Size of the LoRA update: std(scale * up @ down) = DELTA / sqrt(fan_in) (the torch default init of
# the base weights has std 0.577 / sqrt(fan_in)).
DELTA = 0.2
DELTA_FULL = 0.1  # for the adapters on every Linear / Conv2d (kohya LoCon): half as much per module
T = 587.5
CTX_LEN = 77
MAX_MERGE_ERR = 1e-5
MIN_EFFECT = 1e-2
SDXL_TIME_IDS = [[16.0, 16.0, 0.0, 0.0, 16.0, 16.0], [1024.0, 768.0, 32.0, 8.0, 1024.0, 1024.0]]

diffusers.utils.logging.set_verbosity_error()
diffusers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
warnings.filterwarnings("ignore", category=FutureWarning)


# --------------------------------------------------------------------------------------------
# Models and inputs
# --------------------------------------------------------------------------------------------


def load_unet(directory: str) -> UNet2DConditionModel:
    return UNet2DConditionModel.from_pretrained(directory, subfolder="unet", torch_dtype=torch.float32).eval()


def sd_pipe() -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline.from_pretrained(
        SD_DIR, torch_dtype=torch.float32, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def xl_pipe() -> StableDiffusionXLPipeline:
    pipe = StableDiffusionXLPipeline.from_pretrained(XL_DIR, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make_inputs() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(301)
    return {
        "sd.x": torch.randn((2, 4, 8, 8), generator=gen),
        "sd.t": torch.tensor(T, dtype=torch.float32),
        "sd.context": torch.randn((2, CTX_LEN, 32), generator=gen),
        "sdxl.x": torch.randn((2, 4, 8, 8), generator=gen),
        "sdxl.t": torch.tensor(T, dtype=torch.float32),
        "sdxl.context": torch.randn((2, CTX_LEN, 80), generator=gen),
        "sdxl.text_embeds": torch.randn((2, 24), generator=gen),
        "sdxl.time_ids": torch.tensor(SDXL_TIME_IDS, dtype=torch.float32),
    }


def run_unet(unet, kind: str, inputs, dtype=torch.float32, **kwargs) -> torch.Tensor:
    cast = lambda name: inputs[f"{kind}.{name}"].to(dtype)  # noqa: E731
    extra = {}
    if kind == "sdxl":
        extra["added_cond_kwargs"] = {"text_embeds": cast("text_embeds"), "time_ids": cast("time_ids")}
    with torch.no_grad():
        return unet(cast("x"), cast("t"), encoder_hidden_states=cast("context"), **extra, **kwargs).sample


# --------------------------------------------------------------------------------------------
# Adapter specs: module path -> (down, up, alpha); weights drawn here, written in every layout
# --------------------------------------------------------------------------------------------


def adaptable(unet) -> dict[str, torch.nn.Module]:
    return {n: m for n, m in unet.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}


def make_spec(unet, paths, gen, rank_of, alpha_of, f16=False, delta=DELTA) -> dict[str, dict]:
    """Seeded (down, up) for each path, in sorted order; std(scale * up @ down) = delta / sqrt(fan_in)."""
    modules = adaptable(unet)
    spec = {}
    for path in sorted(paths):
        w = modules[path].weight
        r, alpha = rank_of(path), alpha_of(path)
        out, fan_in = w.shape[0], w[0].numel()
        down = torch.randn((r, fan_in), generator=gen) / math.sqrt(fan_in)
        up = torch.randn((out, r), generator=gen) * (delta / (alpha / r)) / math.sqrt(r)
        if w.ndim == 4:
            down = down.reshape(r, *w.shape[1:])
            up = up.reshape(out, r, 1, 1)
        if f16:
            down, up = down.half().float(), up.half().float()
        spec[path] = {"down": down.contiguous(), "up": up.contiguous(), "rank": r, "alpha": float(alpha)}
    return spec


def fill_peft(unet, spec, adapter: str) -> None:
    """Copies the spec's weights into the peft layers of `unet` (which must cover exactly the spec)."""
    found = set()
    for name, module in unet.named_modules():
        if isinstance(module, LoraLayer) and adapter in module.lora_A:
            name = name.removeprefix("base_model.model.")
            found.add(name)
            with torch.no_grad():
                module.lora_A[adapter].weight.copy_(spec[name]["down"])
                module.lora_B[adapter].weight.copy_(spec[name]["up"])
    assert found == set(spec), sorted(found ^ set(spec))


def check_loaded(unet, spec, multiplier=1.0) -> str:
    """The peft layers of `unet` hold exactly the spec's weights with scale m * alpha / r.
    Returns the adapter name."""
    found = {}
    for name, module in unet.named_modules():
        if isinstance(module, BaseTunerLayer):
            name = name.removeprefix("base_model.model.")
            assert isinstance(module, LoraLayer), (name, type(module))
            (adapter,) = module.active_adapters
            found[name] = (module, adapter)
    assert set(found) == set(spec), sorted(set(found) ^ set(spec))
    for name, (module, adapter) in found.items():
        s = spec[name]
        assert torch.equal(module.lora_A[adapter].weight.detach().float(), s["down"]), name
        assert torch.equal(module.lora_B[adapter].weight.detach().float(), s["up"]), name
        want = multiplier * s["alpha"] / s["rank"]
        assert abs(module.scaling[adapter] - want) < 1e-12, (name, module.scaling[adapter], want)
    return adapter


def manual_output(base, spec, kind, inputs, multiplier=1.0) -> torch.Tensor:
    """float64 UNet with W + m * (alpha / r) * up @ down merged by hand."""
    unet = copy.deepcopy(base).double()
    modules = adaptable(unet)
    with torch.no_grad():
        for path, s in spec.items():
            w = modules[path].weight
            up, down = s["up"].double().reshape(w.shape[0], -1), s["down"].double().reshape(s["rank"], -1)
            w += (multiplier * s["alpha"] / s["rank"] * (up @ down)).reshape(w.shape)
    return run_unet(unet, kind, inputs, dtype=torch.float64)


def example_keys(keys: list[str]) -> list[str]:
    picks = keys[:3] + [k for k in keys if "attn1" in k][:3] + [k for k in keys if "conv1" in k or "in_layers" in k][:3]
    return list(dict.fromkeys(picks))


def max_abs(a, b) -> float:
    return (a.double() - b.double()).abs().max().item()


def file_keys(path: str) -> tuple[list[str], dict, list[str]]:
    with safe_open(path, "pt") as f:
        keys, metadata = sorted(f.keys()), f.metadata() or {}
        dtypes = sorted({str(f.get_tensor(k).dtype).removeprefix("torch.") for k in keys})
    return keys, metadata, dtypes


# --------------------------------------------------------------------------------------------
# Key layouts
# --------------------------------------------------------------------------------------------


def kohya_name(path: str) -> str:
    return "lora_unet_" + path.replace(".", "_")


def attn_proc_prefix(path: str) -> str:
    block, proj = path.rsplit(".", 1) if not path.endswith("to_out.0") else (path[: -len(".to_out.0")], "to_out")
    return f"{block}.processor.{proj}_lora"


def kohya_state(spec, name_of, dtype=torch.float16) -> dict[str, torch.Tensor]:
    state = {}
    for path, s in spec.items():
        key = name_of(path)
        state[f"{key}.lora_down.weight"] = s["down"].to(dtype)
        state[f"{key}.lora_up.weight"] = s["up"].to(dtype)
        state[f"{key}.alpha"] = torch.tensor(s["alpha"], dtype=dtype)  # 0-d, as kohya's buffer
    return state


def sgm_map(config) -> dict[str, str]:
    """diffusers block prefix -> SGM (Stability) block prefix for this UNet config: the inverse of
    diffusers' `_maybe_map_sgm_blocks_to_diffusers` (input block i = 1 + b (L + 1) + l, the
    downsampler at (b + 1)(L + 1); output block i = b (L + 1) + l, the upsampler at index 2 of the
    block's last layer; middle 0 / 1 / 2 = resnet 0 / attention / resnet 1)."""
    layers = config.layers_per_block
    assert isinstance(layers, int)
    n = len(config.block_out_channels)
    m = {"conv_in": "input_blocks.0.0", "conv_out": "out.2", "time_embedding.linear_1": "time_embed.0",
         "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
         "add_embedding.linear_2": "label_emb.0.2", "mid_block.resnets.0": "middle_block.0",
         "mid_block.attentions.0": "middle_block.1", "mid_block.resnets.1": "middle_block.2"}
    for b, kind in enumerate(config.down_block_types):
        for l in range(layers):
            i = 1 + b * (layers + 1) + l
            m[f"down_blocks.{b}.resnets.{l}"] = f"input_blocks.{i}.0"
            if "CrossAttn" in kind:
                m[f"down_blocks.{b}.attentions.{l}"] = f"input_blocks.{i}.1"
        if b < n - 1:
            m[f"down_blocks.{b}.downsamplers.0.conv"] = f"input_blocks.{(b + 1) * (layers + 1)}.0.op"
    for b, kind in enumerate(config.up_block_types):
        for l in range(layers + 1):
            i = b * (layers + 1) + l
            m[f"up_blocks.{b}.resnets.{l}"] = f"output_blocks.{i}.0"
            if "CrossAttn" in kind:
                m[f"up_blocks.{b}.attentions.{l}"] = f"output_blocks.{i}.1"
        if b < n - 1:
            # diffusers maps SGM index 2 to the upsampler, which is right only if the block has
            # attentions (index 1); asserted for this config.
            assert "CrossAttn" in kind, "SGM would put this upsampler at index 1, which diffusers reads as attentions"
            m[f"up_blocks.{b}.upsamplers.0.conv"] = f"output_blocks.{b * (layers + 1) + layers}.2.conv"
    return m


RESNET_SGM = {"conv1": "in_layers.2", "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1",
              "conv_shortcut": "skip_connection"}


def sgm_name(path: str, block_map: dict[str, str]) -> str:
    for prefix in sorted(block_map, key=len, reverse=True):
        if path == prefix or path.startswith(prefix + "."):
            rest = path[len(prefix) + 1:]
            if ".resnets." in prefix:
                rest = RESNET_SGM[rest]
            sgm = block_map[prefix] + ("." + rest if rest else "")
            return "lora_unet_" + sgm.replace(".", "_")
    raise KeyError(path)


# --------------------------------------------------------------------------------------------
# Capturing what diffusers / peft say
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def captured():
    """Collects diffusers' / peft's log warnings and Python warnings into a list of strings."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setLevel(logging.WARNING)
    loggers = [logging.getLogger("diffusers"), logging.getLogger("peft")]
    saved = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.WARNING)
    messages: list[str] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield messages
        messages.extend(str(w.message) for w in caught)
    finally:
        for lg, level in zip(loggers, saved):
            lg.removeHandler(handler)
            lg.setLevel(level)
        messages[:0] = [line for line in stream.getvalue().splitlines() if line.strip()]


def short(msg: str, n: int = 300) -> str:
    msg = " ".join(str(msg).split())
    return msg if len(msg) <= n else msg[:n] + " ..."


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def main() -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    inputs = make_inputs()
    tensors: dict[str, torch.Tensor] = dict(inputs)
    meta: dict = {
        "generator": "scripts/gen_lora_fixtures.py",
        "versions": {
            "diffusers": diffusers.__version__,
            "peft": peft.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "safetensors": safetensors.__version__,
            "accelerate": accelerate.__version__,
            "numpy": numpy.__version__,
        },
        "inputs": {
            "sd": {"t": T, "x": [2, 4, 8, 8], "context": [2, CTX_LEN, 32], "unet": "tiny-sd/unet"},
            "sdxl": {"t": T, "x": [2, 4, 8, 8], "context": [2, CTX_LEN, 80], "text_embeds": [2, 24],
                     "time_ids": SDXL_TIME_IDS, "unet": "tiny-sdxl/unet"},
        },
        "merge_rule": "W' = W + m * (alpha / r) * (up.reshape(out, r) @ down.reshape(r, -1)).reshape(W.shape); "
                      "m = user multiplier (1 unless said); conv LoRA keeps the base conv's stride / padding "
                      "in down and is 1x1 in up",
        "layouts": {},
        "error_cases": {},
    }
    sd_base = load_unet(SD_DIR)
    xl_base = load_unet(XL_DIR)
    tensors["sd.base"] = run_unet(sd_base, "sd", inputs)
    tensors["sdxl.base"] = run_unet(xl_base, "sdxl", inputs)
    sd_modules, xl_modules = adaptable(sd_base), adaptable(xl_base)
    sd_attn = [p for p in sd_modules if any(p.endswith("." + a) for a in ATTN)]
    xl_attn = [p for p in xl_modules if any(p.endswith("." + a) for a in ATTN)]
    assert len(sd_attn) == 32 and len(xl_attn) == 64, (len(sd_attn), len(xl_attn))

    def record(name, kind, spec, output, path, fmt, notes, loaded_with, extra=None, multiplier_out=None):
        """Checks the output against the manual merge and fills the JSON entry."""
        base = sd_base if kind == "sd" else xl_base
        effect = max_abs(output, tensors[f"{kind}.base"])
        assert effect > MIN_EFFECT, (name, effect)
        err = max_abs(output, manual_output(base, spec, kind, inputs))
        assert err < MAX_MERGE_ERR, (name, err)
        tensors[f"{name}.output"] = output
        keys, metadata, dtypes = file_keys(path)
        ranks = sorted({s["rank"] for s in spec.values()})
        alphas = sorted({s["alpha"] for s in spec.values()})
        scales = sorted({s["alpha"] / s["rank"] for s in spec.values()})
        entry = {
            "file": os.path.relpath(path, OUT),
            "base": f"{'tiny-sd' if kind == 'sd' else 'tiny-sdxl'}/unet",
            "reference_inputs": kind,
            "format": fmt,
            "dtype": dtypes[0] if len(dtypes) == 1 else dtypes,
            "rank": ranks[0] if len(ranks) == 1 else ranks,
            "alpha": alphas[0] if len(alphas) == 1 else alphas,
            "scale": scales[0] if len(scales) == 1 else scales,
            "adapted_modules": sorted(spec),
            "num_modules": len(spec),
            "num_keys": len(keys),
            "example_keys": example_keys(keys),
            "safetensors_metadata": metadata,
            "output": f"{name}.output",
            "output_vs_base_max_abs": effect,
            "diffusers_vs_manual_merge_f64_max_abs": err,
            "loaded_with": loaded_with,
            "notes": notes,
        }
        if multiplier_out is not None:
            how, out_half, cross = multiplier_out
            err_half = max_abs(out_half, manual_output(base, spec, kind, inputs, multiplier=0.5))
            assert err_half < MAX_MERGE_ERR, (name, err_half)
            assert max_abs(out_half, output) > MIN_EFFECT
            tensors[f"{name}.output_x0.5"] = out_half
            entry["multiplier_0.5"] = {
                "output": f"{name}.output_x0.5",
                "how": how,
                "diffusers_vs_manual_merge_f64_max_abs": err_half,
                "cross_attention_kwargs_scale_vs_set_adapters_max_abs": cross,
                "applies_to": "every LoRA layer (Linear and Conv2d alike): effective scale = m * alpha / r",
            }
        if len(ranks) > 1 or len(alphas) > 1:
            entry["modules"] = {p: {"rank": s["rank"], "alpha": s["alpha"], "scale": s["alpha"] / s["rank"]}
                                for p, s in sorted(spec.items())}
        entry.update(extra or {})
        meta["layouts"][name] = entry
        print(f"{name}: {len(keys)} keys, {len(spec)} modules, effect {effect:.3f}, vs manual merge {err:.2e}")

    # ---------------------------------------------------------------- 1. sd-peft
    gen = torch.Generator().manual_seed(401)
    spec = make_spec(sd_base, sd_attn, gen, lambda p: 4, lambda p: 2.0)
    unet = load_unet(SD_DIR)
    torch.manual_seed(501)
    model = get_peft_model(unet, LoraConfig(r=4, lora_alpha=2, init_lora_weights=False, target_modules=ATTN))
    fill_peft(model, spec, "default")
    peft_dir = os.path.join(OUT, "sd-peft")
    model.save_pretrained(peft_dir)
    os.remove(os.path.join(peft_dir, "README.md"))
    with open(os.path.join(peft_dir, "adapter_config.json"), encoding="utf-8") as f:
        peft_config = json.load(f)
    assert peft_config["r"] == 4 and peft_config["lora_alpha"] == 2
    loaded = PeftModel.from_pretrained(load_unet(SD_DIR), peft_dir).eval()
    unet = loaded.get_base_model()
    check_loaded(unet, spec)
    out = run_unet(unet, "sd", inputs)
    out_half = run_unet(unet, "sd", inputs, cross_attention_kwargs={"scale": 0.5})
    check_loaded(unet, spec)  # diffusers' scale is undone after the call
    # The same through peft alone: LoraLayer.set_scale(adapter, 0.5) -> scaling = 0.5 * alpha / r.
    for module in unet.modules():
        if isinstance(module, LoraLayer):
            module.set_scale("default", 0.5)
    check_loaded(unet, spec, multiplier=0.5)
    cross = max_abs(run_unet(unet, "sd", inputs), out_half)
    assert cross < 1e-6, cross
    with captured() as said:
        probe = sd_pipe()
        try:
            probe.load_lora_weights(peft_dir)
        except Exception as e:  # noqa: BLE001
            said.append(f"{type(e).__name__}: {short(e)}")
    pipe_loaded_nothing = not any(isinstance(m, BaseTunerLayer) for m in probe.unet.modules())
    record(
        "sd-peft", "sd", spec, out, os.path.join(peft_dir, "adapter_model.safetensors"),
        "peft PeftModel.save_pretrained folder",
        [
            "scale = lora_alpha / r from adapter_config.json (r = 4, lora_alpha = 2); the safetensors file alone does not say it",
            "keys are 'base_model.model.' + diffusers module path + '.lora_A.weight' / '.lora_B.weight'",
            "diffusers' pipe.load_lora_weights(folder) "
            + ("loads nothing from this folder (keys lack the 'unet.' prefix)" if pipe_loaded_nothing else "loads it")
            + (": " + short(said[0]) if said else ""),
        ],
        "peft.PeftModel.from_pretrained(UNet2DConditionModel.from_pretrained(tiny-sd, subfolder='unet'), 'sd-peft')",
        extra={"adapter_config": {k: peft_config[k] for k in ("r", "lora_alpha", "target_modules", "use_dora", "use_rslora",
                                                               "peft_type", "rank_pattern", "alpha_pattern")},
               "diffusers_pipeline_load_lora_weights_loads_nothing": pipe_loaded_nothing},
        multiplier_out=(
            "unet(..., cross_attention_kwargs={'scale': 0.5}) (diffusers' scale_lora_layers: every peft "
            "LoraLayer's scaling *= 0.5 for the call); equal to peft's LoraLayer.set_scale('default', 0.5) "
            "on every layer",
            out_half, cross,
        ),
    )

    # ---------------------------------------------------------------- 2. sd-diffusers (DPO script)
    gen = torch.Generator().manual_seed(402)
    spec = make_spec(sd_base, sd_attn, gen, lambda p: 8, lambda p: 8.0)
    unet = load_unet(SD_DIR)
    torch.manual_seed(502)
    unet.add_adapter(LoraConfig(r=8, lora_alpha=8, init_lora_weights="gaussian", target_modules=ATTN))
    fill_peft(unet, spec, "default")
    tmp = os.path.join(OUT, "_tmp")
    StableDiffusionPipeline.save_lora_weights(
        tmp, unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)), text_encoder_lora_layers=None
    )
    path = os.path.join(OUT, "sd-diffusers.safetensors")
    os.replace(os.path.join(tmp, "pytorch_lora_weights.safetensors"), path)
    pipe = sd_pipe()
    pipe.load_lora_weights(path, adapter_name="lora")
    check_loaded(pipe.unet, spec)
    record(
        "sd-diffusers", "sd", spec, run_unet(pipe.unet, "sd", inputs), path, "diffusers (save_lora_weights)",
        ["no alpha anywhere in the file: scale 1 (diffusers / peft convention alpha = r)",
         "written as examples/research_projects/diffusion_dpo/train_diffusion_dpo.py does "
         "(LoraConfig(r=8, lora_alpha=8, init_lora_weights='gaussian', target_modules=[to_k, to_q, to_v, to_out.0]); "
         "B then overwritten with random values)"],
        "StableDiffusionPipeline.load_lora_weights(path)",
    )
    unknown_base = load_file(path)

    # ---------------------------------------------------------------- 2b. sd-diffusers-alpha
    gen = torch.Generator().manual_seed(403)
    spec = make_spec(sd_base, sd_attn, gen, lambda p: 4, lambda p: 8.0)
    unet = load_unet(SD_DIR)
    torch.manual_seed(503)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian", target_modules=ATTN))
    fill_peft(unet, spec, "default")
    adapter_metadata = unet.peft_config["default"].to_dict()  # what training_utils._collate_lora_metadata passes
    StableDiffusionPipeline.save_lora_weights(
        tmp, unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)),
        unet_lora_adapter_metadata=adapter_metadata,
    )
    path = os.path.join(OUT, "sd-diffusers-alpha.safetensors")
    os.replace(os.path.join(tmp, "pytorch_lora_weights.safetensors"), path)
    shutil.rmtree(tmp)
    _, header, _ = file_keys(path)
    stored = json.loads(header["lora_adapter_metadata"])
    assert stored["unet.r"] == 4 and stored["unet.lora_alpha"] == 8, stored
    pipe = sd_pipe()
    pipe.load_lora_weights(path, adapter_name="lora")
    check_loaded(pipe.unet, spec)
    out = run_unet(pipe.unet, "sd", inputs)
    # Without the header's metadata diffusers would take alpha = r (scale 1):
    pipe2 = sd_pipe()
    pipe2.load_lora_weights(load_file(path), adapter_name="lora")
    no_meta = run_unet(pipe2.unet, "sd", inputs)
    spec_scale1 = {p: {**s, "alpha": float(s["rank"])} for p, s in spec.items()}
    check_loaded(pipe2.unet, spec_scale1)
    record(
        "sd-diffusers-alpha", "sd", spec, out, path, "diffusers (save_lora_weights with unet_lora_adapter_metadata)",
        ["alpha is NOT in any tensor: it is in the safetensors header, __metadata__['lora_adapter_metadata'], a JSON "
         "string (indent 2, sorted keys) of LoraConfig.to_dict() with every key prefixed 'unet.'; "
         "'unet.r' = 4, 'unet.lora_alpha' = 8 -> scale 2 (also 'unet.rank_pattern' / 'unet.alpha_pattern', empty here)",
         "__metadata__['format'] = 'pt' as usual",
         "diffusers reads it only from a file path (load_lora_weights / lora_state_dict); the same tensors passed as a "
         "dict (no header) load with scale 1: see 'without_metadata_output_vs_output_max_abs'"],
        "StableDiffusionPipeline.load_lora_weights(path)",
        extra={"lora_adapter_metadata": {k: stored[k] for k in sorted(stored)
                                         if k.split(".", 1)[1] in ("r", "lora_alpha", "target_modules", "rank_pattern",
                                                                   "alpha_pattern", "use_dora", "use_rslora", "peft_type")},
               "without_metadata_output_vs_output_max_abs": max_abs(no_meta, out)},
    )

    # ---------------------------------------------------------------- 3. sd-attn-procs
    gen = torch.Generator().manual_seed(404)
    spec = make_spec(sd_base, sd_attn, gen, lambda p: 4, lambda p: 4.0)
    state = {}
    for p, s in spec.items():
        state[f"{attn_proc_prefix(p)}.down.weight"] = s["down"]
        state[f"{attn_proc_prefix(p)}.up.weight"] = s["up"]
    path = os.path.join(OUT, "sd-attn-procs.safetensors")
    save_file(state, path, metadata={"format": "pt"})
    with captured() as said:
        probe = sd_pipe()
        probe.load_lora_weights(path)
    attn_pipe_nothing = not any(isinstance(m, BaseTunerLayer) for m in probe.unet.modules())
    assert attn_pipe_nothing
    unet = load_unet(SD_DIR)
    unet.load_lora_adapter(path, prefix=None, adapter_name="lora")
    check_loaded(unet, spec)
    record(
        "sd-attn-procs", "sd", spec, run_unet(unet, "sd", inputs), path, "diffusers attention processors (<= 0.20 save_attn_procs)",
        ["no 'unet.' prefix and no alpha: scale 1",
         "<attention>.processor.{to_q,to_k,to_v,to_out}_lora.{down,up}.weight; to_out_lora is the to_out.0 Linear",
         "diffusers 0.42's pipe.load_lora_weights(path) loads nothing from it (" + short(said[0] if said else "no message", 160)
         + "); unet.load_attn_procs only takes Custom Diffusion now, so it was loaded with "
         "unet.load_lora_adapter(path, prefix=None), whose convert_unet_state_dict_to_peft drops '.processor' and maps "
         "'to_q_lora.down' -> 'to_q.lora_A' etc."],
        "UNet2DConditionModel.load_lora_adapter(path, prefix=None)",
    )

    # ---------------------------------------------------------------- 4. sd-kohya (LoCon)
    is_3x3 = lambda mods: (lambda p: isinstance(mods[p], torch.nn.Conv2d) and mods[p].kernel_size != (1, 1))  # noqa: E731
    conv3 = is_3x3(sd_modules)
    gen = torch.Generator().manual_seed(405)
    kohya_spec = make_spec(sd_base, list(sd_modules), gen, lambda p: 2 if conv3(p) else 4,
                           lambda p: 1.5 if conv3(p) else 2.0, f16=True, delta=DELTA_FULL)
    state = kohya_state(kohya_spec, kohya_name)
    path = os.path.join(OUT, "sd-kohya.safetensors")
    save_file(state, path, metadata={"format": "pt"})
    converted, alphas = StableDiffusionPipeline.lora_state_dict(path)
    peft_keys = convert_unet_state_dict_to_peft({k.removeprefix("unet."): v for k, v in converted.items()})
    assert {k.split(".lora_")[0] for k in peft_keys} == set(kohya_spec)
    assert len(converted) == 2 * len(kohya_spec) and len(alphas) == len(kohya_spec)
    pipe = sd_pipe()
    pipe.load_lora_weights(path, adapter_name="lora")
    check_loaded(pipe.unet, kohya_spec)
    out = run_unet(pipe.unet, "sd", inputs)
    cross_half = run_unet(pipe.unet, "sd", inputs, cross_attention_kwargs={"scale": 0.5})
    pipe.set_adapters(["lora"], adapter_weights=[0.5])
    check_loaded(pipe.unet, kohya_spec, multiplier=0.5)
    out_half = run_unet(pipe.unet, "sd", inputs)
    cross = max_abs(out_half, cross_half)
    assert cross < 1e-6, cross
    kohya_pipe = pipe
    pipe.set_adapters(["lora"], adapter_weights=[1.0])
    check_loaded(pipe.unet, kohya_spec)
    kinds = {}
    for p in kohya_spec:
        m = sd_modules[p]
        kinds.setdefault("Linear" if isinstance(m, torch.nn.Linear) else f"Conv2d {m.kernel_size[0]}x{m.kernel_size[1]}"
                         + (" stride 2" if getattr(m, "stride", (1, 1)) != (1, 1) else ""), []).append(p)
    record(
        "sd-kohya", "sd", kohya_spec, out, path, "kohya-ss / LyCORIS LoCon, SD 1.5 diffusers block names",
        ["key = 'lora_unet_' + diffusers module path with '.' -> '_' + '.lora_down.weight' / '.lora_up.weight' / '.alpha'",
         "alpha: 0-d float16 tensor per module (diffusers' converter reads it with .item(), so a 1-element tensor "
         "would do too); scale = alpha / rank, rank = lora_down.shape[0]",
         "mixed ranks as LoCon's conv_dim: Linear and 1x1 Conv2d rank 4 alpha 2 (scale 0.5); 3x3 Conv2d rank 2 alpha 1.5 "
         "(scale 0.75); diffusers turns these into LoraConfig rank_pattern / alpha_pattern",
         "Conv2d LoRA: down [r, in, kh, kw] (same stride / padding as the base conv), up [out, r, 1, 1]",
         "every Linear and Conv2d of the tiny UNet is adapted; diffusers' converter accepted all of them "
         "(incl. conv_in, conv_out, time_embedding_linear_1/2, downsampler and upsampler convs, conv_shortcut)"],
        "StableDiffusionPipeline.load_lora_weights(path, adapter_name='lora')",
        extra={"module_types": {k: len(v) for k, v in sorted(kinds.items())}},
        multiplier_out=(
            "pipe.set_adapters(['lora'], adapter_weights=[0.5]) (peft set_scale on every LoRA layer: scaling = "
            "0.5 * alpha / r, convs included); unet(..., cross_attention_kwargs={'scale': 0.5}) gives the same",
            out_half, cross,
        ),
    )

    # ---------------------------------------------------------------- 5. sdxl-kohya-sgm
    block_map = sgm_map(xl_base.config)
    gen = torch.Generator().manual_seed(406)
    spec = make_spec(xl_base, list(xl_modules), gen, lambda p: 4, lambda p: 3.0, f16=True, delta=DELTA_FULL)
    names = {p: sgm_name(p, block_map) for p in spec}
    assert len(set(names.values())) == len(names)
    state = kohya_state(spec, names.__getitem__)
    path = os.path.join(OUT, "sdxl-kohya-sgm.safetensors")
    save_file(state, path, metadata={"format": "pt"})
    # diffusers' own conversion, step by step: every key consumed and mapped back to our module.
    remapped = _maybe_map_sgm_blocks_to_diffusers(dict(state), xl_base.config)
    converted, alphas = _convert_non_diffusers_lora_to_diffusers(remapped)
    assert len(converted) == 2 * len(spec) and len(alphas) == len(spec)
    via_api, _ = StableDiffusionXLPipeline.lora_state_dict(path, unet_config=xl_base.config)
    assert sorted(via_api) == sorted(converted)
    peft_keys = convert_unet_state_dict_to_peft({k.removeprefix("unet."): v for k, v in converted.items()})
    back = {}
    for p, name in names.items():
        down = state[f"{name}.lora_down.weight"]
        hits = [k for k, v in peft_keys.items() if k.endswith("lora_A.weight") and v is down]
        assert len(hits) == 1, (p, hits)
        back[p] = hits[0].removesuffix(".lora_A.weight")
    assert all(k == v for k, v in back.items()), {k: v for k, v in back.items() if k != v}
    pipe = xl_pipe()
    pipe.load_lora_weights(path, adapter_name="lora")
    check_loaded(pipe.unet, spec)
    record(
        "sdxl-kohya-sgm", "sdxl", spec, run_unet(pipe.unet, "sdxl", inputs), path,
        "kohya-ss LoCon, original SGM (Stability) SDXL names",
        ["key = 'lora_unet_' + SGM module path with '.' -> '_' (+ .lora_down.weight / .lora_up.weight / .alpha, "
         "0-d float16 alpha); rank 4, alpha 3 everywhere (scale 0.75)",
         "resnet sub-modules: conv1 = in_layers_2, conv2 = out_layers_3, time_emb_proj = emb_layers_1, "
         "conv_shortcut = skip_connection; downsampler = input_blocks_<i>_0_op; upsampler = output_blocks_<i>_2_conv; "
         "conv_in = input_blocks_0_0, conv_out = out_2, time_embedding.linear_1/2 = time_embed_0/2, "
         "add_embedding.linear_1/2 = label_emb_0_0/label_emb_0_2; attention sub-paths (proj_in, "
         "transformer_blocks_<k>_attn1_to_q, ..._to_out_0, ff_net_0_proj, ff_net_2, proj_out) are unchanged",
         "the SGM block numbering depends on layers_per_block (1 here: real SDXL has 2) and the block types: see "
         "sgm_block_map; checked by running diffusers' _maybe_map_sgm_blocks_to_diffusers + "
         "_convert_non_diffusers_lora_to_diffusers (what StableDiffusionXLPipeline.lora_state_dict does with "
         "unet_config) and matching every key back to its module"],
        "StableDiffusionXLPipeline.load_lora_weights(path, adapter_name='lora')",
        extra={"sgm_block_map": {"diffusers_to_sgm": block_map,
                                 "resnet_submodules": RESNET_SGM,
                                 "layers_per_block": xl_base.config.layers_per_block,
                                 "rule": "input_blocks.{1 + b*(L+1) + l}.0 = down_blocks.b.resnets.l, .1 = attentions.l; "
                                         "input_blocks.{(b+1)*(L+1)}.0.op = down_blocks.b.downsamplers.0.conv; "
                                         "middle_block.0/1/2 = mid_block.resnets.0 / attentions.0 / resnets.1; "
                                         "output_blocks.{b*(L+1) + l}.0 = up_blocks.b.resnets.l, .1 = attentions.l, "
                                         "output_blocks.{b*(L+1) + L}.2.conv = up_blocks.b.upsamplers.0.conv"},
               "module_to_key": dict(sorted(names.items()))},
    )

    # ---------------------------------------------------------------- 6. sdxl-diffusers
    gen = torch.Generator().manual_seed(407)
    spec = make_spec(xl_base, xl_attn, gen, lambda p: 4, lambda p: 4.0)
    unet = load_unet(XL_DIR)
    torch.manual_seed(507)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=ATTN))
    fill_peft(unet, spec, "default")
    StableDiffusionXLPipeline.save_lora_weights(
        tmp, unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    )
    path = os.path.join(OUT, "sdxl-diffusers.safetensors")
    os.replace(os.path.join(tmp, "pytorch_lora_weights.safetensors"), path)
    shutil.rmtree(tmp)
    pipe = xl_pipe()
    pipe.load_lora_weights(path, adapter_name="lora")
    check_loaded(pipe.unet, spec)
    record(
        "sdxl-diffusers", "sdxl", spec, run_unet(pipe.unet, "sdxl", inputs), path, "diffusers (save_lora_weights)",
        ["SDXL diffusers layout: 'unet.' + diffusers module path + '.lora.down.weight' / '.lora.up.weight'; no alpha: scale 1",
         "as examples/research_projects/diffusion_dpo/train_diffusion_dpo_sdxl.py writes it (rank 4 here)"],
        "StableDiffusionXLPipeline.load_lora_weights(path, adapter_name='lora')",
    )

    # ---------------------------------------------------------------- 7. error cases
    # DoRA (peft)
    gen = torch.Generator().manual_seed(408)
    spec = make_spec(sd_base, sd_attn, gen, lambda p: 4, lambda p: 4.0)
    dora_unet = load_unet(SD_DIR)
    torch.manual_seed(508)
    model = get_peft_model(dora_unet, LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, use_dora=True,
                                                         target_modules=ATTN))
    fill_peft(model, spec, "default")
    dora_dir = os.path.join(OUT, "sd-dora")
    model.save_pretrained(dora_dir)
    os.remove(os.path.join(dora_dir, "README.md"))
    keys, _, dtypes = file_keys(os.path.join(dora_dir, "adapter_model.safetensors"))
    mags = [k for k in keys if "lora_magnitude_vector" in k]
    assert len(mags) == len(spec)
    loaded = PeftModel.from_pretrained(load_unet(SD_DIR), dora_dir).eval()
    dora_effect = max_abs(run_unet(loaded.get_base_model(), "sd", inputs), tensors["sd.base"])
    meta["error_cases"]["sd-dora"] = {
        "file": "sd-dora/adapter_model.safetensors (+ adapter_config.json with use_dora: true)",
        "why": "DoRA: W' = m * (W + s B A) / ||W + s B A||_row, not a plain low-rank sum; a loader must reject it "
               "(or implement DoRA)",
        "num_keys": len(keys),
        "dtype": dtypes[0],
        "example_keys": mags[:2] + [k for k in keys if "lora_A" in k][:1],
        "magnitude_vector_shape": "[out_features] per module, key '<prefix>.<module>.lora_magnitude_vector' (no '.weight')",
        "peft_loads_it": True,
        "peft_output_vs_base_max_abs": dora_effect,
    }

    # LoHa (LyCORIS), written by hand
    gen = torch.Generator().manual_seed(409)
    loha = {}
    for p in sorted(sd_attn)[:4]:
        w = sd_modules[p].weight
        out_f, in_f, r = w.shape[0], w.shape[1], 4
        key = kohya_name(p)
        loha[f"{key}.hada_w1_a"] = (torch.randn((out_f, r), generator=gen) * 0.3).half()
        loha[f"{key}.hada_w1_b"] = (torch.randn((r, in_f), generator=gen) * 0.3).half()
        loha[f"{key}.hada_w2_a"] = (torch.randn((out_f, r), generator=gen) * 0.3).half()
        loha[f"{key}.hada_w2_b"] = (torch.randn((r, in_f), generator=gen) * 0.3).half()
        loha[f"{key}.alpha"] = torch.tensor(2.0, dtype=torch.float16)
    path = os.path.join(OUT, "sd-loha.safetensors")
    save_file(loha, path, metadata={"format": "pt"})
    try:
        sd_pipe().load_lora_weights(path)
        loha_result = "loaded (unexpected)"
    except Exception as e:  # noqa: BLE001
        loha_result = f"{type(e).__name__}: {short(e)}"
    meta["error_cases"]["sd-loha"] = {
        "file": "sd-loha.safetensors",
        "why": "LyCORIS LoHa (Hadamard product: dW = (w1_a @ w1_b) * (w2_a @ w2_b) * alpha / r), not LoRA",
        "num_keys": len(loha),
        "dtype": "float16",
        "example_keys": sorted(loha)[:5],
        "diffusers_load_lora_weights": loha_result,
    }

    # kohya with text-encoder keys: a few UNet modules of sd-kohya plus CLIP layer-0 modules
    gen = torch.Generator().manual_seed(410)
    te_spec_unet = {p: kohya_spec[p] for p in sorted(sd_attn) if p.startswith("down_blocks.0.") and ".attn1." in p}
    te_state = kohya_state(te_spec_unet, kohya_name)
    for proj, (o, i) in {"self_attn_q_proj": (32, 32), "self_attn_k_proj": (32, 32), "self_attn_v_proj": (32, 32),
                         "self_attn_out_proj": (32, 32), "mlp_fc1": (37, 32), "mlp_fc2": (32, 37)}.items():
        key = f"lora_te_text_model_encoder_layers_0_{proj}"
        te_state[f"{key}.lora_down.weight"] = (torch.randn((4, i), generator=gen) / math.sqrt(i)).half()
        te_state[f"{key}.lora_up.weight"] = (torch.randn((o, 4), generator=gen) * 0.4 / 2).half()
        te_state[f"{key}.alpha"] = torch.tensor(2.0, dtype=torch.float16)
    path = os.path.join(OUT, "sd-kohya-te.safetensors")
    save_file(te_state, path, metadata={"format": "pt"})
    pipe = sd_pipe()
    pipe.load_lora_weights(path, adapter_name="lora")
    check_loaded(pipe.unet, te_spec_unet)
    te_layers = sorted(n for n, m in pipe.text_encoder.named_modules() if isinstance(m, BaseTunerLayer))
    te_out = run_unet(pipe.unet, "sd", inputs)
    te_err = max_abs(te_out, manual_output(sd_base, te_spec_unet, "sd", inputs))
    assert te_err < MAX_MERGE_ERR and max_abs(te_out, tensors["sd.base"]) > MIN_EFFECT
    tensors["sd-kohya-te.output_unet_only"] = te_out
    meta["error_cases"]["sd-kohya-te"] = {
        "file": "sd-kohya-te.safetensors",
        "why": "has text-encoder LoRA keys (lora_te_...): a UNet-only loader must reject them or say it ignores them",
        "num_keys": len(te_state),
        "dtype": "float16",
        "example_keys": sorted(k for k in te_state if k.startswith("lora_te_"))[:3]
        + sorted(k for k in te_state if k.startswith("lora_unet_"))[:3],
        "unet_modules": {p: {"rank": 4, "alpha": 2.0, "scale": 0.5} for p in sorted(te_spec_unet)},
        "unet_part": "the same tensors as these modules in sd-kohya.safetensors",
        "text_encoder_modules_diffusers_adapted": te_layers,
        "diffusers_load_lora_weights": "loads both: the UNet part into pipe.unet, the lora_te_ part into pipe.text_encoder",
        "output_unet_only": "sd-kohya-te.output_unet_only: UNet output (reference inputs sd.*) with this file loaded; "
                            "the text-encoder LoRA does not enter it (context is given)",
        "output_unet_only_vs_manual_merge_f64_max_abs": te_err,
    }

    # diffusers layout plus one unknown module
    unknown_modules = sorted(p for p in sd_attn if p.startswith("down_blocks.0."))
    state = {k: v for k, v in unknown_base.items() if k.removeprefix("unet.").split(".lora.")[0] in unknown_modules}
    assert len(state) == 2 * len(unknown_modules) == 16
    state["unet.mystery_block.lora.down.weight"] = torch.randn((8, 32), generator=torch.Generator().manual_seed(411))
    path = os.path.join(OUT, "sd-unknown-key.safetensors")
    save_file(state, path, metadata={"format": "pt"})
    with captured() as said:
        try:
            pipe = sd_pipe()
            pipe.load_lora_weights(path, adapter_name="lora")
            n_layers = sum(isinstance(m, BaseTunerLayer) for m in pipe.unet.modules())
            unknown_result = f"no exception; {n_layers} LoRA layers injected"
        except Exception as e:  # noqa: BLE001
            unknown_result = f"{type(e).__name__}: {short(e)}"
    meta["error_cases"]["sd-unknown-key"] = {
        "file": "sd-unknown-key.safetensors",
        "why": "a key naming no module of the UNet (unet.mystery_block.lora.down.weight, float32 [8, 32], no matching "
               "up): a loader must reject the file rather than silently skip it",
        "num_keys": len(state),
        "dtype": "float32",
        "rest": "the down_blocks.0 attention modules of sd-diffusers.safetensors (same tensors, rank 8, scale 1)",
        "modules": unknown_modules,
        "diffusers_load_lora_weights": unknown_result,
        "diffusers_messages": [short(m) for m in said if "deprecated" not in m][:2],
    }
    print("error cases:", {k: v.get("diffusers_load_lora_weights", "") for k, v in meta["error_cases"].items()})

    # ---------------------------------------------------------------- 9. realigned runs with the LoRA model
    with safe_open(os.path.join(FIXTURES, "reference.safetensors"), "pt") as f:
        old = {k: f.get_tensor(k) for k in f.keys() if k.startswith("run.")}
    with open(os.path.join(FIXTURES, "reference.json"), encoding="utf-8") as f:
        old_meta = json.load(f)
    ref_unet = load_unet(SD_DIR)
    lora_unet = kohya_pipe.unet  # tiny-sd's UNet with sd-kohya.safetensors, multiplier 1
    check_loaded(lora_unet, kohya_spec)
    meta["runs"] = {}
    for name in ("ddim", "euler_a"):
        spec_run, old_run = sd.RUNS[name], old_meta["runs"][name]
        kind, overrides, n = spec_run["sampler"], spec_run["config"], spec_run["steps"]
        assert old_run["sampler"] == kind and old_run["steps"] == n and old_run["prompts"] == spec_run["prompts"]
        noise, embeds = old[f"run.{name}.noise"], old[f"run.{name}.embeds"]
        negatives = None if spec_run["negative"] is None else [spec_run["negative"]] * len(spec_run["prompts"])
        with torch.no_grad():
            cond, uncond = kohya_pipe.encode_prompt(spec_run["prompts"], torch.device("cpu"), 1, True, negatives)
            assert max_abs(torch.cat([uncond, cond]), embeds) < 1e-6, "prompt embeddings differ from reference.safetensors"
            g, lam = sd.GUIDANCE, sd.LAMBDA
            final, trace, timesteps = sd.realigned_run(kind, [ref_unet, lora_unet], [1 - lam, lam], embeds, noise, g, n,
                                                       overrides)
            single_ref, _, _ = sd.realigned_run(kind, [ref_unet], [1.0], embeds, noise, g, n, overrides)
            single_al, _, _ = sd.realigned_run(kind, [lora_unet], [1.0], embeds, noise, g, n, overrides)
        assert timesteps == old_run["timesteps"]
        # The reference loop is rerun here, on this machine: equal to the stored one up to the CPU's float
        # rounding (the stored fixtures came from another CPU; UNet outputs differ there by ~2e-6).
        same = max_abs(single_ref, old[f"run.{name}.single_ref"])
        assert same < 1e-5 * max(1.0, old[f"run.{name}.single_ref"].abs().max().item()), same
        vs_ref = max_abs(final, old[f"run.{name}.single_ref"])
        assert vs_ref > 0.05, vs_ref
        tensors[f"run.{name}.final"] = final
        tensors[f"run.{name}.trace"] = torch.stack(trace)
        tensors[f"run.{name}.single_aligned"] = single_al
        meta["runs"][name] = {
            "as_in": f"../reference.json runs.{name} (same prompts, negative prompt, embeddings, noise, settings)",
            "reference_model": "tiny-sd/unet",
            "aligned_model": "tiny-sd/unet + lora/sd-kohya.safetensors (multiplier 1), via pipe.load_lora_weights",
            "sampler": kind,
            "scheduler_config_overrides": overrides,
            "prompts": spec_run["prompts"],
            "negative_prompt": spec_run["negative"],
            "guidance_scale": g,
            "lambda": lam,
            "weights": [1 - lam, lam],
            "steps": n,
            "timesteps": timesteps,
            "noise": f"../reference.safetensors run.{name}.noise, [steps + 1, batch, 4, 8, 8]: "
                     "x_T = noise[0] * init_noise_sigma, step i injects noise[i + 1]",
            "embeds": f"../reference.safetensors run.{name}.embeds ([uncond; cond], checked equal to pipe.encode_prompt here)",
            "single_ref_vs_reference_json_max_abs": same,
            "final_vs_single_ref_max_abs": vs_ref,
            "final_vs_tiny_aligned_unet_run_max_abs": max_abs(final, old[f"run.{name}.final"]),
            "single_aligned_vs_single_ref_max_abs": max_abs(single_al, single_ref),
        }
        print(f"run {name}: final vs reference-only {vs_ref:.3f}, LoRA-only vs reference-only "
              f"{meta['runs'][name]['single_aligned_vs_single_ref_max_abs']:.3f}")

    # ---------------------------------------------------------------- write
    tensors = {k: v.detach().float().contiguous() for k, v in sorted(tensors.items())}
    save_file(tensors, os.path.join(OUT, "reference.safetensors"), metadata={"format": "pt"})
    meta["reference_tensors"] = {k: list(v.shape) for k, v in tensors.items()}
    sd.write_json(os.path.join(OUT, "reference.json"), meta)
    total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(OUT) for f in fs)
    print(f"wrote {OUT} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
