#!/usr/bin/env python3
"""What peft and diffusers do with hostile LoRA inputs, and one mixed-rank adapter whose config
uses peft's pattern keys as diffusers writes them.

Run from the repository root, after `gen_lora_fixtures.py` (whose tiny-sd adapters and inputs it
reads; it never rewrites them):

    /work/venv/bin/python scripts/gen_lora_hostile_fixtures.py

(diffusers 0.42.x, peft 0.21.x, torch, safetensors). It writes
`crates/deradiff-sd/tests/fixtures/lora/hostile/` (about 25 KB):

* `sd-rank-pattern.safetensors`: a LoRA on tiny-sd's attention projections with mixed ranks and
  alphas, saved by `StableDiffusionPipeline.save_lora_weights(..., unet_lora_adapter_metadata=
  unet.peft_config[...].to_dict())`. Its `lora_adapter_metadata` has `r` 4, `lora_alpha` 8, a
  `rank_pattern` with a diffusers-style anchored key (`^down_blocks.0...attn1.to_q`: 2) and a
  plain one (`attn2.to_k`: 6; peft matches keys as regular expressions, `(.*\\.)?(KEY)$`), and an
  `alpha_pattern` (`^mid_block...attn1.to_v`: 3). `reference.safetensors` holds
  `sd-rank-pattern.output`: the UNet output (inputs `sd.x`, `sd.t`, `sd.context` of
  `../reference.safetensors`) with the adapter loaded by `pipe.load_lora_weights(path)`,
  asserted equal (< 1e-5) to a float64 run of the hand-merged UNet.
* `hostile.json`: for each hostile case (built the same way by the Rust tests, which read this
  file), what peft 0.21 (`PeftModel.from_pretrained`) or diffusers 0.42
  (`pipe.load_lora_weights`) does: `"refuses"` with the exception's message, `"loads"` (with
  the output's max |value| and whether it is finite), or what else happens.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_lora_fixtures as g  # noqa: E402  (re-executes with PYTHONHASHSEED=0; main() is guarded)

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from peft import LoraConfig, PeftModel  # noqa: E402
from peft.utils import get_peft_model_state_dict  # noqa: E402
from diffusers import StableDiffusionPipeline  # noqa: E402
from diffusers.utils import convert_state_dict_to_diffusers  # noqa: E402

OUT = os.path.join(g.OUT, "hostile")
Q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
MID_V = "mid_block.attentions.0.transformer_blocks.0.attn1.to_v"


def outcome(fn) -> dict:
    """Runs `fn` (which returns a UNet output or a note), quietly; what happened."""
    with g.captured() as said:
        try:
            out = fn()
        except Exception as e:  # noqa: BLE001 — any refusal counts, and its message is recorded
            return {"result": "refuses", "error": f"{type(e).__name__}: {g.short(str(e), 300)}"}
    if isinstance(out, torch.Tensor):
        finite = bool(torch.isfinite(out).all())
        return {"result": "loads", "output_finite": finite, "output_max_abs": float(out.abs().max()) if finite else None,
                "warnings": [g.short(s, 200) for s in said][:3]}
    return {"result": out, "warnings": [g.short(s, 200) for s in said][:3]}


def peft_folder(tmp: str, name: str, config: dict | None, weights: dict | None = None) -> str:
    """sd-peft's adapter_model.safetensors (or `weights`) with `config` as adapter_config.json."""
    d = os.path.join(tmp, name)
    os.makedirs(d)
    src = os.path.join(g.OUT, "sd-peft")
    if weights is None:
        shutil.copy(os.path.join(src, "adapter_model.safetensors"), d)
    else:
        save_file(weights, os.path.join(d, "adapter_model.safetensors"), metadata={"format": "pt"})
    if config is not None:
        with open(os.path.join(d, "adapter_config.json"), "w") as f:
            json.dump(config, f)
    return d


def with_metadata(src: str, dst: str, metadata: str | None) -> str:
    tensors = load_file(src)
    meta = {"format": "pt"}
    if metadata is not None:
        meta["lora_adapter_metadata"] = metadata
    save_file(tensors, dst, metadata=meta)
    return dst


def main() -> None:
    torch.manual_seed(0)
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    refs = load_file(os.path.join(g.OUT, "reference.safetensors"))
    inputs = {k: refs[k] for k in ("sd.x", "sd.t", "sd.context")}
    base = g.load_unet(g.SD_DIR)
    meta: dict = {
        "generator": "scripts/gen_lora_hostile_fixtures.py",
        "versions": {"diffusers": g.diffusers.__version__, "peft": g.peft.__version__, "torch": torch.__version__},
        "cases": {},
    }

    # ------------------------------------------------ the mixed-rank adapter with pattern keys
    paths = sorted(p for p in g.adaptable(base) if any(p.endswith(f".{a}") for a in g.ATTN))
    rank_pattern = {f"^{Q}": 2, "attn2.to_k": 6}
    alpha_pattern = {f"^{MID_V}": 3}

    def rank_of(p: str) -> int:
        return 2 if p == Q else 6 if p.endswith("attn2.to_k") else 4

    def alpha_of(p: str) -> float:
        return 3.0 if p == MID_V else 8.0

    spec = g.make_spec(base, paths, torch.Generator().manual_seed(77), rank_of, alpha_of)
    config = LoraConfig(r=4, lora_alpha=8, rank_pattern=rank_pattern, alpha_pattern=alpha_pattern,
                        init_lora_weights=False, target_modules=g.ATTN)
    model = g.load_unet(g.SD_DIR)
    model.add_adapter(config)
    g.fill_peft(model, spec, "default")
    g.check_loaded(model, spec)
    unet_meta = model.peft_config["default"].to_dict()  # what training_utils._collate_lora_metadata passes
    path = os.path.join(OUT, "sd-rank-pattern.safetensors")
    StableDiffusionPipeline.save_lora_weights(
        OUT, unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(model)),
        unet_lora_adapter_metadata=unet_meta, weight_name="sd-rank-pattern.safetensors", safe_serialization=True)
    pipe = g.sd_pipe()
    pipe.load_lora_weights(path)
    g.check_loaded(pipe.unet, spec)
    out = g.run_unet(pipe.unet, "sd", inputs)
    manual = g.manual_output(base, spec, "sd", inputs)
    err = g.max_abs(out, manual)
    assert err < g.MAX_MERGE_ERR, err
    assert g.max_abs(out, g.run_unet(base, "sd", inputs)) > g.MIN_EFFECT
    save_file({"sd-rank-pattern.output": out.float().contiguous()}, os.path.join(OUT, "reference.safetensors"),
              metadata={"format": "pt"})
    meta["sd-rank-pattern"] = {
        "file": "sd-rank-pattern.safetensors",
        "rank_pattern": rank_pattern, "alpha_pattern": alpha_pattern, "r": 4, "lora_alpha": 8,
        "ranks": {p: rank_of(p) for p in paths}, "scales": {p: alpha_of(p) / rank_of(p) for p in paths},
        "output": "reference.safetensors sd-rank-pattern.output (pipe.load_lora_weights(path))",
        "vs_manual_float64_max_abs": err,
    }
    print(f"sd-rank-pattern: diffusers vs hand-merged float64 {err:.2e}")

    # ------------------------------------------------ hostile cases
    peft_cfg = json.load(open(os.path.join(g.OUT, "sd-peft", "adapter_config.json")))
    alpha_file = os.path.join(g.OUT, "sd-diffusers-alpha.safetensors")
    alpha_meta = json.loads(g.safe_open(alpha_file, "pt").metadata()["lora_adapter_metadata"])
    cases = meta["cases"]
    with tempfile.TemporaryDirectory() as tmp:
        def peft_load(folder):
            return lambda: g.run_unet(PeftModel.from_pretrained(copy.deepcopy(base), folder), "sd", inputs)

        def pipe_load(file):
            def run():
                p = g.sd_pipe()
                p.load_lora_weights(file)
                return g.run_unet(p.unet, "sd", inputs)
            return run

        cfg = lambda **kw: {**peft_cfg, **kw}  # noqa: E731
        for name, config in [
            ("peft-r-disagrees", cfg(r=8)),
            ("peft-no-r", {k: v for k, v in peft_cfg.items() if k != "r"}),
            ("peft-rank-pattern-disagrees", cfg(rank_pattern={"to_q": 2})),
            ("peft-anchored-rank-pattern-disagrees", cfg(rank_pattern={f"^{Q}": 8})),
            ("peft-rank-pattern-elsewhere", cfg(rank_pattern={"to_x": 2})),
        ]:
            cases[name] = {"tool": "peft PeftModel.from_pretrained(unet, folder)", "adapter_config": config,
                           **outcome(peft_load(peft_folder(tmp, name, config)))}
        cases["peft-no-config"] = {"tool": "peft PeftModel.from_pretrained(unet, folder)",
                                   **outcome(peft_load(peft_folder(tmp, "peft-no-config", None)))}
        nan = load_file(os.path.join(g.OUT, "sd-peft", "adapter_model.safetensors"))
        key = next(k for k in sorted(nan) if k.endswith("lora_B.weight"))
        nan[key] = nan[key].clone()
        nan[key][0, 0] = float("nan")
        cases["peft-nan-up"] = {"tool": "peft PeftModel.from_pretrained(unet, folder)", "tensor": key,
                                **outcome(peft_load(peft_folder(tmp, "peft-nan", peft_cfg, nan)))}

        def meta_case(name, m):
            f = with_metadata(alpha_file, os.path.join(tmp, f"{name}.safetensors"), m)
            cases[name] = {"tool": "diffusers pipe.load_lora_weights(file)", "lora_adapter_metadata": m,
                           **outcome(pipe_load(f))}

        meta_case("metadata-r-disagrees", json.dumps({**alpha_meta, "unet.r": 8}))
        meta_case("metadata-no-r", json.dumps({k: v for k, v in alpha_meta.items() if k != "unet.r"}))
        meta_case("metadata-rank-pattern-disagrees", json.dumps({**alpha_meta, "unet.rank_pattern": {"to_q": 2}}))
        meta_case("metadata-without-unet-keys", json.dumps({k.removeprefix("unet."): v for k, v in alpha_meta.items()}))
        meta_case("metadata-empty", "")
        kohya = os.path.join(g.OUT, "sd-kohya.safetensors")
        f = with_metadata(kohya, os.path.join(tmp, "kohya-meta.safetensors"), json.dumps(alpha_meta))
        cases["kohya-alpha-with-metadata"] = {"tool": "diffusers pipe.load_lora_weights(file)",
                                              **outcome(pipe_load(f))}
        # A folder with two adapters: what each tool loads from it.
        two = os.path.join(tmp, "two")
        shutil.copytree(os.path.join(g.OUT, "sd-peft"), two)
        shutil.copy(os.path.join(g.OUT, "sd-diffusers.safetensors"), os.path.join(two, "pytorch_lora_weights.safetensors"))
        by_peft = peft_load(two)()
        by_diffusers = pipe_load(two)()
        cases["two-adapters-in-a-folder"] = {
            "folder": "sd-peft/ + pytorch_lora_weights.safetensors (= sd-diffusers.safetensors)",
            "result": "the tools disagree",
            "peft_loads": "adapter_model.safetensors" if g.max_abs(by_peft, refs["sd-peft.output"]) < 1e-5 else "?",
            "diffusers_loads": "pytorch_lora_weights.safetensors"
            if g.max_abs(by_diffusers, refs["sd-diffusers.output"]) < 1e-5 else "?",
        }
        dnan = load_file(os.path.join(g.OUT, "sd-diffusers.safetensors"))
        key = next(k for k in sorted(dnan) if k.endswith("lora.up.weight"))
        dnan[key] = dnan[key].clone()
        dnan[key][1, 2] = float("inf")
        f = os.path.join(tmp, "inf-up.safetensors")
        save_file(dnan, f, metadata={"format": "pt"})
        cases["diffusers-inf-up"] = {"tool": "diffusers pipe.load_lora_weights(file)", "tensor": key,
                                     **outcome(pipe_load(f))}
    for name, c in cases.items():
        print(f"{name}: {c['result']} {c.get('error', '')[:150]}")
    g.sd.write_json(os.path.join(OUT, "hostile.json"), meta)
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"wrote {OUT} ({total / 1e3:.1f} KB)")


if __name__ == "__main__":
    main()
