#!/usr/bin/env python3
"""Golden fixtures for deradiff's Euler, Heun, DPM-Solver++, UniPC and LCM schedulers, produced by
HuggingFace diffusers itself (an extension of `gen_scheduler_fixtures.py`, whose float64 patching
it reuses).

Run (from the repository root; no network needed; scipy is needed for `use_beta_sigmas`):

    /work/venv/bin/python scripts/gen_sampler_fixtures.py

It writes `crates/deradiff-core/tests/fixtures/diffusers_samplers.json` (a few hundred KB), which
`crates/deradiff-core/tests/golden_samplers.rs` checks our schedulers against:

    cargo test -p deradiff-core --test golden_samplers -- --nocapture

The output is deterministic (numpy is seeded).

Method
------
These schedulers keep state between steps (the multistep solvers' last model outputs, UniPC's
corrected sample, Heun's first-order derivative), so a case is a whole sampling run, not a bag of
independent steps. For every case (scheduler class x options x steps x prediction type):

* the scheduler is built with diffusers' constructor and `set_timesteps(n)` (begin index 0), and
  the fixture stores its `scheduler_config.json` (`to_json_string()`), timesteps, float32 sigmas
  and `init_noise_sigma`;
* the run starts from `x_T = z_T * init_noise_sigma` (float32, like a pipeline's latents) and at
  every step calls diffusers' own `scale_model_input` and `step` with a float32 "model output"
  `o_i`; the stochastic steps (`sde-dpmsolver++`, LCM) get their noise `z_i` injected
  (DPM-Solver's `variance_noise=`, LCM's module-level `randn_tensor` patched to return it).
  `z_T`, `o_i` and `z_i` are not stored: they are k/1000 drawn by a 64-bit LCG from the run's
  stored seed (`Draws`), which the Rust test reproduces. The step's output `y_i`
  (`prev_sample`, float32) is stored and is the next step's input: the run follows diffusers'
  trajectory;
* every step is also taken by a *float64 twin*: the same scheduler object built the same way
  (so with diffusers' float32 timesteps and sigmas), its sigma / alphas_cumprod tensors cast to
  float64, stepped with the same float32-valued inputs cast to float64 under the float32 ->
  float64 patch of `gen_scheduler_fixtures.py` (so `sample.to(torch.float32)` keeps float64).
  It keeps its own history, computed from the same inputs. Its output `y64_i` is diffusers'
  step evaluated in float64 arithmetic on diffusers' float32 schedule: what deradiff computes. It
  is stored as its relative deviation from `y_i` to 2 significant digits (`deviation`), which
  pins `y64_i` to ~1e-9 relative in a quarter of the space.

deradiff's schedulers reproduce diffusers' float32 timesteps and sigmas and do the step in f64, so
the Rust test holds them to the twin tightly and to diffusers as shipped within 2e-5 relative
(waived, and counted, only where diffusers' own float32 arithmetic is further than that from the
twin). Tensors have 2 elements (shape [1, 2]): the steps are elementwise.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import sys

import numpy as np
import torch

import diffusers
from diffusers import (
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LCMScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers import (
    scheduling_dpmsolver_multistep,
    scheduling_euler_discrete,
    scheduling_heun_discrete,
    scheduling_lcm,
    scheduling_unipc_multistep,
)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_scheduler_fixtures import _Float64Proxy  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "crates", "deradiff-core", "tests", "fixtures", "diffusers_samplers.json")

SHAPE = (1, 2)
STEP_COUNTS = (10, 25, 50)
PREDICTIONS = ("epsilon", "v_prediction")
SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
MODULES = {
    EulerDiscreteScheduler: scheduling_euler_discrete,
    HeunDiscreteScheduler: scheduling_heun_discrete,
    DPMSolverMultistepScheduler: scheduling_dpmsolver_multistep,
    UniPCMultistepScheduler: scheduling_unipc_multistep,
    LCMScheduler: scheduling_lcm,
}



@contextlib.contextmanager
def float64_module(module):
    """While active, `module`'s float32 requests give float64."""
    saved = (module.torch, module.np)
    module.torch = _Float64Proxy(torch, torch.float64)
    module.np = _Float64Proxy(np, np.float64)
    try:
        yield
    finally:
        module.torch, module.np = saved


@contextlib.contextmanager
def injected_randn(module, value):
    """Makes `module.randn_tensor` return `value` (LCM's noise)."""
    saved = module.randn_tensor

    def fake(shape, generator=None, device=None, dtype=None, layout=None):
        assert tuple(shape) == tuple(value.shape), (shape, value.shape)
        return value.to(dtype=dtype)

    module.randn_tensor = fake
    try:
        yield
    finally:
        module.randn_tensor = saved


def build(cls, n, config):
    s = cls(**config)
    s.set_timesteps(n)
    s.set_begin_index(0)
    return s


def to_float64(s):
    for name in ("sigmas", "alphas_cumprod", "final_alpha_cumprod"):
        v = getattr(s, name, None)
        if isinstance(v, torch.Tensor) and v.dtype == torch.float32:
            setattr(s, name, v.double())
    return s


class Draws:
    """Reproducible inputs without storing them: a 64-bit LCG (Knuth's MMIX constants); each draw
    is k / 1000 for an integer k in [-2000, 2000] (the Rust test computes the same values)."""

    def __init__(self, seed: int):
        self.state = seed % 2**64

    def next(self) -> float:
        self.state = (self.state * 6364136223846793005 + 1442695040888963407) % 2**64
        return ((self.state >> 33) % 4001 - 2000) / 1000

    def __call__(self, size=SHAPE):
        return np.array([self.next() for _ in range(int(np.prod(size)))], dtype=np.float64).reshape(size)


def deviation(y64, y) -> list[int]:
    """The twin's output as its relative deviation from diffusers' float32 output in units of
    1e-10: round((y64 - y) / max(|y|, 1) * 1e10), an integer (pins y64 to 1e-10 relative)."""
    return [int(round((a - b) / max(abs(b), 1.0) * 1e10))
            for a, b in zip(np.asarray(y64, dtype=np.float64).flatten(), np.asarray(y, dtype=np.float64).flatten())]


def f32(values) -> list[float]:
    """float32 values as the shortest decimals that round-trip in float32."""
    out = [float(np.format_float_scientific(v, unique=True)) for v in np.asarray(values, dtype=np.float32).flatten()]
    assert all(np.float32(a) == b for a, b in zip(out, np.asarray(values, dtype=np.float32).flatten()))
    return out


def f64(values) -> list[float]:
    return [float(v) for v in np.asarray(values, dtype=np.float64).flatten()]


def stochastic(cls, config) -> bool:
    return cls is LCMScheduler or config.get("algorithm_type") == "sde-dpmsolver++"


def step_call(cls, s, module, mo, t, x, z):
    """One diffusers step, with the noise z injected where the step draws noise."""
    if cls is DPMSolverMultistepScheduler and z is not None:
        return s.step(mo, t, x, variance_noise=z).prev_sample
    if cls is LCMScheduler:
        with injected_randn(module, z):
            return s.step(mo, t, x).prev_sample
    return s.step(mo, t, x).prev_sample


def run_case(cls, n, config, prediction, seed):
    config = dict(config, prediction_type=prediction)
    module = MODULES[cls]
    s32 = build(cls, n, config)
    s64 = to_float64(build(cls, n, config))
    noisy = stochastic(cls, config)
    draws = Draws(seed)
    z_t = draws()
    x = torch.tensor(z_t, dtype=torch.float32) * s32.init_noise_sigma
    x_t = x
    assert x.dtype == torch.float32
    steps, scaled_0 = [], None
    for i, t in enumerate(s32.timesteps):
        mo = torch.tensor(draws(), dtype=torch.float32)
        zt = torch.tensor(draws(), dtype=torch.float32) if noisy else None
        scaled = s32.scale_model_input(x, t)
        if i == 0:
            scaled_0 = f32(scaled.numpy())
        y = step_call(cls, s32, module, mo, t, x, zt)
        with float64_module(module):
            s64.scale_model_input(x.double(), t)
            y64 = step_call(cls, s64, module, mo.double(), t, x.double(), zt.double() if zt is not None else None)
        assert y.dtype == torch.float32 and y64.dtype == torch.float64, (y.dtype, y64.dtype)
        steps.append([f32(y.numpy()), deviation(y64.numpy(), y.numpy())])
        x = y
    return {"prediction_type": prediction, "seed": seed, "x_T": f32(x_t.numpy()), "scaled_0": scaled_0,
            "steps": steps}


def zlib_seed(name: str, n: int, prediction: str) -> int:
    import zlib

    return zlib.crc32(f"{name}/{n}/{prediction}".encode())


def case(name, cls, n, predictions=PREDICTIONS, **config):
    s = build(cls, n, config)
    timesteps = s.timesteps.numpy()
    ts = [int(v) for v in timesteps] if timesteps.dtype == np.int64 else f32(timesteps)
    runs = [run_case(cls, n, config, p, zlib_seed(name, n, p)) for p in predictions]
    cfg = json.loads(s.to_json_string().replace("-Infinity", '"-Infinity"'))
    cfg.pop("prediction_type", None)
    return cfg, {
        "num_inference_steps": n,
        "timesteps": ts,
        "sigmas": f32(s.sigmas.numpy()) if hasattr(s, "sigmas") else None,
        "init_noise_sigma": float(s.init_noise_sigma),
        "runs": runs,
    }


def option_set(name, cls, counts, predictions=PREDICTIONS, **config):
    """One scheduler configuration at several step counts: its scheduler_config.json once."""
    cases = [case(name, cls, n, predictions, **config) for n in counts]
    cfg = cases[0][0]
    assert all(c[0] == cfg for c in cases)
    return {"name": name, "class": cls.__name__, "config": cfg, "cases": [c[1] for c in cases]}


def all_cases():
    cases = []
    E, H, D, U, L = (EulerDiscreteScheduler, HeunDiscreteScheduler, DPMSolverMultistepScheduler,
                     UniPCMultistepScheduler, LCMScheduler)
    option_sets = [
        # Euler: SDXL's config (leading + 1), diffusers' default (linspace, linear betas), trailing,
        # Karras / exponential / beta sigmas, log-linear interpolation, final sigma_min, zero SNR.
        ("euler/sdxl", E, dict(SD, timestep_spacing="leading", steps_offset=1)),
        ("euler/default", E, dict()),
        ("euler/trailing", E, dict(SD, timestep_spacing="trailing")),
        ("euler/karras", E, dict(SD, use_karras_sigmas=True)),
        ("euler/exponential/sigma_min", E, dict(SD, use_exponential_sigmas=True, final_sigmas_type="sigma_min")),
        ("euler/beta", E, dict(SD, use_beta_sigmas=True, timestep_spacing="leading", steps_offset=1)),
        ("euler/log_linear", E, dict(SD, interpolation_type="log_linear")),
        ("euler/zero_snr/trailing", E, dict(SD, rescale_betas_zero_snr=True, timestep_spacing="trailing")),
        # Heun.
        ("heun/default", H, dict()),
        ("heun/sd/leading", H, dict(SD, timestep_spacing="leading", steps_offset=1)),
        ("heun/karras", H, dict(SD, use_karras_sigmas=True)),
        ("heun/beta/trailing", H, dict(SD, use_beta_sigmas=True, timestep_spacing="trailing")),
        # DPM-Solver++: 2M (default), 2M Karras, 2M SDE Karras, heun solver, orders 1 and 3,
        # euler_at_final / lower_order_final, lu lambdas, exponential and beta sigmas, sigma_min,
        # zero SNR, lambda_min_clipped.
        ("dpm/2m", D, dict(SD)),
        ("dpm/2m/karras/leading", D, dict(SD, use_karras_sigmas=True, timestep_spacing="leading", steps_offset=1)),
        ("dpm/2m_sde/karras", D, dict(SD, use_karras_sigmas=True, algorithm_type="sde-dpmsolver++")),
        ("dpm/2m_sde/heun/trailing", D, dict(SD, algorithm_type="sde-dpmsolver++", solver_type="heun",
                                               timestep_spacing="trailing")),
        ("dpm/2m/heun/no_lower_order_final/sigma_min", D, dict(SD, solver_type="heun", lower_order_final=False,
                                                                final_sigmas_type="sigma_min")),
        ("dpm/1/default", D, dict(solver_order=1)),
        ("dpm/3m/euler_at_final", D, dict(SD, solver_order=3, euler_at_final=True)),
        ("dpm/3m_sde/exponential", D, dict(SD, solver_order=3, algorithm_type="sde-dpmsolver++",
                                             use_exponential_sigmas=True)),
        ("dpm/2m/lu_lambdas", D, dict(SD, use_lu_lambdas=True)),
        ("dpm/2m/beta/cosine", D, dict(beta_schedule="squaredcos_cap_v2", use_beta_sigmas=True)),
        ("dpm/2m/zero_snr/trailing", D, dict(SD, rescale_betas_zero_snr=True, timestep_spacing="trailing")),
        ("dpm/2m/lambda_min_clipped", D, dict(beta_schedule="squaredcos_cap_v2", lambda_min_clipped=-5.1)),
        # UniPC: bh2 order 2 (default), bh1 order 3, order 1, Karras, predict_x0 = False,
        # disable_corrector, sigma_min, zero SNR.
        ("unipc/bh2/2", U, dict(SD)),
        ("unipc/bh1/3/sigma_min", U, dict(SD, solver_type="bh1", solver_order=3, final_sigmas_type="sigma_min")),
        ("unipc/bh2/1/default", U, dict(solver_order=1)),
        ("unipc/bh2/3/karras/leading", U, dict(SD, solver_order=3, use_karras_sigmas=True,
                                                 timestep_spacing="leading", steps_offset=1)),
        ("unipc/bh2/2/eps_space/disable_corrector", U, dict(SD, predict_x0=False, disable_corrector=[0, 3, 7],
                                                               final_sigmas_type="sigma_min")),
        ("unipc/bh2/2/exponential/zero_snr", U, dict(SD, use_exponential_sigmas=True, rescale_betas_zero_snr=True,
                                                      timestep_spacing="trailing")),
        # LCM.
        ("lcm/default", L, dict()),
        ("lcm/original100/scaling1", L, dict(original_inference_steps=100, timestep_scaling=1.0)),
    ]
    for name, cls, config in option_sets:
        counts = STEP_COUNTS + ((1, 2, 4, 8) if name == "lcm/default" else ())
        cases.append(option_set(name, cls, counts, **config))
    # LCM with zero SNR (v-prediction only: ε is undefined there), and prediction_type "sample"
    # for each class.
    cases.append(option_set("lcm/zero_snr", L, (4, 10), predictions=("v_prediction",), rescale_betas_zero_snr=True))
    for name, cls, config in (("euler/sdxl", E, dict(SD, timestep_spacing="leading", steps_offset=1)),
                              ("heun/default", H, dict()), ("dpm/2m/karras", D, dict(SD, use_karras_sigmas=True)),
                              ("unipc/bh2/2", U, dict(SD)), ("lcm/default", L, dict())):
        cases.append(option_set(name + "/sample", cls, (10,), predictions=("sample",), **config))
    return cases


def main() -> None:
    cases = all_cases()
    doc = {
        "generator": "scripts/gen_sampler_fixtures.py",
        "diffusers_version": diffusers.__version__,
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "step_layout": "[y (diffusers' float32 output), d (the float64 twin's (y64 - y) / max(|y|, 1) / 1e-10)]; the model "
        "outputs, then (stochastic steps) the noise, are drawn by Draws(seed) in this order, z_T first",
        "cases": cases,
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")
    n_steps = sum(len(r["steps"]) for o in cases for c in o["cases"] for r in c["runs"])
    print(f"wrote {OUT}: {len(cases)} cases, {n_steps} steps, {os.path.getsize(OUT)} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
