#!/usr/bin/env python3
"""Golden fixtures for deradiff's schedulers, produced by HuggingFace diffusers itself.

Run (from the repository root; no network needed):

    /work/venv/bin/python scripts/gen_scheduler_fixtures.py

(any Python with diffusers 0.42.x, torch and numpy works). It writes
`crates/deradiff-core/tests/fixtures/diffusers_schedulers.json` (about 2 MB), which
`crates/deradiff-core/tests/golden_diffusers.rs` checks our `Ddpm`, `Ddim` and `EulerAncestral`
against:

    cargo test -p deradiff-core --test golden_diffusers -- --nocapture

The output is deterministic (numpy is seeded): re-running it with the same diffusers, torch and
numpy gives the same file.

Method
------
deradiff's schedulers are stateless and return the Gaussian posterior N(mean, variance) of a
reverse step, whereas diffusers' `step()` returns a *sample* `prev = mean + std * noise`, drawing
`noise` with the `randn_tensor` function that each scheduler module imports
(`diffusers.schedulers.scheduling_ddpm.randn_tensor`, `...scheduling_ddim.randn_tensor`,
`...scheduling_euler_ancestral_discrete.randn_tensor`). None of diffusers' arithmetic is
re-implemented here; mean and variance are read off diffusers' own `step()`:

* mean: monkeypatch that module's `randn_tensor` to return zeros; `step(model_output, t, x)`
  then returns exactly the posterior mean. (For DDIM, `step(..., variance_noise=0)` is also
  called and must agree.)
* std: patch `randn_tensor` to return ones and call `step` with `x = 0` and `model_output = 0`
  (for DDPM `learned_range` only the mean channels are zeroed, the variance channels are kept);
  with a zero mean the returned sample *is* the std (per element), and variance = std**2.
  DDPM adds noise only for t > 0, so its step at t = 0 has variance exactly 0; DDIM with
  eta = 0 has variance 0.
* The decomposition is validated once per family (asserted below): an unpatched `step` with a
  seeded `torch.Generator` equals `mean + std * noise` (bit for bit), `noise` being what
  `randn_tensor` draws from an identically seeded generator.

x and model_output are float64 tensors, so only diffusers' float32 schedule (betas,
`alphas_cumprod`, Euler's sigmas and timesteps are float32) limits the reference's precision.
Euler ancestral upcasts the sample to float32 inside `step`. Inputs are random normals rounded to
6 decimals (exact in JSON, shorter).

Euler ancestral keeps a hidden `_step_index` that every `step` advances; it is set explicitly to
the step being probed before each `scale_model_input` and each `step` call (the zero-input std
call included). Fresh random x and model_output are drawn for every step, since the posterior
of a step does not depend on the previous ones. For Euler the fixture also records
`scale_model_input(x, t)`, `init_noise_sigma`, the (fractional, float32) timesteps and the
float32 `sigmas` the steps use (`sigmas`, and the twin's as decimal strings in `sigmas_f64`).
deradiff's Euler ancestral reproduces diffusers' float32 timesteps and sigmas, so the Rust test
holds it to diffusers as shipped (tightly) rather than to the twin.

Float64 twin ("*_f64" fields)
-----------------------------
Where `alphas_cumprod` is close to 1 (the last steps, t <~ 100) diffusers' float32 schedule loses
digits to cancellation in `1 - alphas_cumprod`, and its variances there are off by up to ~5e-4
relative from what its own formulas give in exact arithmetic. To tell such float32 rounding from a
real discrepancy, every case is also run through a *float64 twin*: the very same diffusers classes
and `step()` code, with the names `torch` and `np` inside the three scheduler modules replaced
(while the twin is built and stepped) by proxies whose `float32` attribute is `float64`. All
float32 requests of those modules (`torch.linspace(..., dtype=torch.float32)`,
`torch.tensor(betas, dtype=torch.float32)`, `sample.to(torch.float32)`,
`np.linspace(..., dtype=np.float32)`, `.astype(np.float32)`) thus give float64, and nothing else
changes. The twin's results are stored next to the float32 ones (`mean_f64`, `variance_f64`,
`scaled_model_input_f64`, `timesteps_f64` (as decimal strings, for a bit-exact comparison),
`init_noise_sigma_f64`). The script asserts that the
twin really is float64 and that it agrees with the float32 run to 1e-3 relative.

Each case stores `json.loads(scheduler.to_json_string())`, i.e. exactly what diffusers writes to a
`scheduler_config.json`; the Rust test builds our scheduler from it via `SchedulerConfig::from_json`
and `DdpmConfig` / `DdimConfig` (plus eta) / `EulerAncestralConfig::from_diffusers`.

Tensors are tiny: shape [1, 2, 2, 1] (batch first, channels = dim 1); DDPM `learned_range`
model outputs have 2x channels ([1, 4, 2, 1]), the extra channels being the variance values
v in [-1, 1].
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import sys

import numpy as np
import torch

import diffusers
from diffusers import DDIMScheduler, DDPMScheduler, EulerAncestralDiscreteScheduler
from diffusers.schedulers import scheduling_ddim, scheduling_ddpm, scheduling_euler_ancestral_discrete
from diffusers.utils.torch_utils import randn_tensor as real_randn_tensor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "crates", "deradiff-core", "tests", "fixtures", "diffusers_schedulers.json")

SHAPE = (1, 2, 2, 1)
STEP_COUNTS = (10, 50)
SPACINGS = (("leading", 0), ("leading", 1), ("trailing", 0), ("linspace", 0))
SD_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
MODULES = (scheduling_ddpm, scheduling_ddim, scheduling_euler_ancestral_discrete)

rng = np.random.default_rng(20240607)

for _module in MODULES:
    assert _module.randn_tensor is real_randn_tensor, _module
    assert _module.torch is torch and _module.np is np, _module


# --------------------------------------------------------------------------------------------
# Patches: noise (zeros / ones) and the float64 twin
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def patched_noise(module, fill: str):
    """Makes `module.randn_tensor` return zeros or ones (of the requested shape and dtype)."""
    saved = module.randn_tensor

    def fake(shape, generator=None, device=None, dtype=None, layout=None):
        make = torch.zeros if fill == "zeros" else torch.ones
        return make(tuple(shape), dtype=dtype, device=device)

    module.randn_tensor = fake
    try:
        yield
    finally:
        module.randn_tensor = saved


class _Float64Proxy:
    """Stands for `torch` or `numpy` inside a scheduler module, with `float32` meaning float64."""

    def __init__(self, wrapped, float64):
        self._wrapped = wrapped
        self.float32 = float64

    def __getattr__(self, name):
        return getattr(self._wrapped, name)


@contextlib.contextmanager
def float64_twin():
    """While active, the scheduler modules' float32 requests give float64 (see the header)."""
    saved = [(m, m.torch, m.np) for m in MODULES]
    for m in MODULES:
        m.torch = _Float64Proxy(torch, torch.float64)
        m.np = _Float64Proxy(np, np.float64)
    try:
        yield
    finally:
        for m, t, n in saved:
            m.torch, m.np = t, n


class Twin:
    """A diffusers scheduler (float32 schedule, as shipped) and its float64 twin."""

    def __init__(self, cls, n: int, **config):
        self.f32 = cls(**config)
        self.f32.set_timesteps(n)
        with float64_twin():
            self.f64 = cls(**config)
            self.f64.set_timesteps(n)
        assert self.f32.alphas_cumprod.dtype == torch.float32
        assert self.f64.alphas_cumprod.dtype == torch.float64
        if isinstance(self.f64, EulerAncestralDiscreteScheduler):
            assert self.f32.sigmas.dtype == torch.float32 and self.f64.sigmas.dtype == torch.float64
        assert config_of(self.f32) == config_of(self.f64)

    def both(self, fn):
        """`fn(scheduler)` on the float32 scheduler, then on the twin (inside the twin patch)."""
        a = fn(self.f32)
        with float64_twin():
            b = fn(self.f64)
        return a, b


# --------------------------------------------------------------------------------------------
# One step of each family: mean (noise = 0) and std (x = 0, model output mean part = 0, noise = 1)
# --------------------------------------------------------------------------------------------


def ddpm_step(s: DDPMScheduler, i: int, x: torch.Tensor, mo: torch.Tensor, **kw) -> torch.Tensor:
    return s.step(mo, s.timesteps[i], x, **kw).prev_sample


def ddpm_posterior(s: DDPMScheduler, i: int, x, mo):
    with patched_noise(scheduling_ddpm, "zeros"):
        mean = ddpm_step(s, i, x, mo)
    mo0 = mo.clone()
    mo0[:, : x.shape[1]] = 0.0  # learned variance: keep the variance channels
    with patched_noise(scheduling_ddpm, "ones"):
        std = ddpm_step(s, i, torch.zeros_like(x), mo0)
    return mean, std


def ddim_step(s: DDIMScheduler, i: int, x, mo, eta, **kw) -> torch.Tensor:
    return s.step(mo, s.timesteps[i], x, eta=eta, **kw).prev_sample


def ddim_posterior(s: DDIMScheduler, i: int, x, mo, eta):
    with patched_noise(scheduling_ddim, "zeros"):
        mean = ddim_step(s, i, x, mo, eta)
        # variance_noise= is DDIM's own way to inject noise: it must agree with the patch.
        assert torch.equal(mean, ddim_step(s, i, x, mo, eta, variance_noise=torch.zeros_like(x)))
    x0, mo0 = torch.zeros_like(x), torch.zeros_like(mo)
    with patched_noise(scheduling_ddim, "ones"):
        std = ddim_step(s, i, x0, mo0, eta)
        assert torch.equal(std, ddim_step(s, i, x0, mo0, eta, variance_noise=torch.ones_like(x)))
    return mean, std


def euler_step(s: EulerAncestralDiscreteScheduler, i: int, x, mo, **kw) -> torch.Tensor:
    s._step_index = i
    out = s.step(mo, s.timesteps[i], x, **kw).prev_sample
    assert s._step_index == i + 1
    return out


def euler_scale(s: EulerAncestralDiscreteScheduler, i: int, x) -> torch.Tensor:
    s._step_index = i
    return s.scale_model_input(x, s.timesteps[i])


def euler_posterior(s: EulerAncestralDiscreteScheduler, i: int, x, mo):
    with patched_noise(scheduling_euler_ancestral_discrete, "zeros"):
        mean = euler_step(s, i, x, mo)
    with patched_noise(scheduling_euler_ancestral_discrete, "ones"):
        std = euler_step(s, i, torch.zeros_like(x), torch.zeros_like(mo))
    return mean, std


# --------------------------------------------------------------------------------------------
# Validation of the decomposition against unpatched, seeded diffusers
# --------------------------------------------------------------------------------------------

validated: dict[str, float] = {}


def check_decomposition(family: str, sample_with, mean, std, seed: int) -> None:
    """`sample_with(generator)` runs the unpatched step; it must equal mean + std * noise."""
    if family in validated:
        return
    noise = real_randn_tensor(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    sampled = sample_with(torch.Generator().manual_seed(seed))
    expected = mean + std * noise
    err = (sampled - expected).abs().max().item()
    assert err <= 1e-12 * max(1.0, expected.abs().max().item()), (family, err)
    # The noise must actually matter, else the check is vacuous.
    assert bool((std != 0).all()) and bool((sampled != mean).all()), family
    validated[family] = err


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------


def t64(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))


def flat(t: torch.Tensor) -> list[float]:
    assert t.dtype == torch.float64, t.dtype
    return [float(v) for v in t.flatten().tolist()]


def config_of(scheduler) -> dict:
    """What diffusers writes to scheduler_config.json for this scheduler."""
    return json.loads(scheduler.to_json_string())


def random_inputs(learned: bool = False, x_scale: float = 1.0):
    """x and model output, rounded to 6 decimals (exactly representable in the JSON)."""
    x = np.round(rng.standard_normal(SHAPE) * x_scale, 6)
    mo = np.round(rng.standard_normal(SHAPE), 6)
    if learned:
        v = np.round(rng.uniform(-1.0, 1.0, size=SHAPE), 6)
        mo = np.concatenate([mo, v], axis=1)
    return t64(x), t64(mo)


def variance_of(std: torch.Tensor, per_element: bool) -> list[float]:
    if per_element:
        return flat(std * std)
    s0 = float(std.flatten()[0].item())
    assert torch.equal(std, torch.full_like(std, s0)), "scalar variance expected"
    return [s0 * s0]


def close(a: list[float], b: list[float], rel: float = 1e-3, floor: float = 0.0) -> bool:
    """|a - b| <= rel * max(|b|, floor) elementwise (exact zeros must match exactly)."""
    return all(p == q or abs(p - q) <= rel * max(abs(q), floor) for p, q in zip(a, b, strict=True))


def record_step(i, x, mo, mean, std, per_element, scaled=None) -> dict:
    (m32, m64), (s32, s64) = mean, std
    step = {
        "x": flat(x),
        "model_output": flat(mo),
        "mean": flat(m32),
        "mean_f64": flat(m64),
        "variance": variance_of(s32, per_element),
        "variance_f64": variance_of(s64, per_element),
    }
    if scaled is not None:
        step["scaled_model_input"] = flat(scaled[0])
        step["scaled_model_input_f64"] = flat(scaled[1])
    # The twin differs from diffusers as shipped by float32 rounding only.
    for key, floor in (("mean", 1.0), ("variance", 0.0), ("scaled_model_input", 1.0)):
        if key in step:
            assert close(step[key], step[key + "_f64"], 1e-3, floor), (i, key, step[key], step[key + "_f64"])
    return step


def case_record(name, family, twin: Twin, n, steps, model_output_shape, timestep_type, **extra) -> dict:
    ts32 = [timestep_type(t) for t in twin.f32.timesteps]
    ts64 = [timestep_type(t) for t in twin.f64.timesteps]
    assert close(ts32, ts64, 1e-6, 1.0)
    return {
        "name": name,
        "family": family,
        **extra,
        "num_inference_steps": n,
        "config": config_of(twin.f32),
        "shape": list(SHAPE),
        "model_output_shape": list(model_output_shape),
        "timesteps": ts32,
        # As decimal strings (Python's shortest round-trip repr), so that the Rust test can compare
        # bit for bit: serde_json's default float parser may be off by one ulp.
        "timesteps_f64": [repr(float(t)) for t in ts64],
        "init_noise_sigma": float(twin.f32.init_noise_sigma),
        "init_noise_sigma_f64": float(twin.f64.init_noise_sigma),
        "steps": steps,
    }


def ddpm_case(name: str, n: int, **config) -> dict:
    twin = Twin(DDPMScheduler, n, **config)
    learned = twin.f32.config.variance_type in ("learned", "learned_range")
    steps = []
    for i, t in enumerate(twin.f32.timesteps):
        x, mo = random_inputs(learned)
        mean, std = zip(*twin.both(lambda s: ddpm_posterior(s, i, x, mo)))
        if int(t) > 0:
            check_decomposition("ddpm_learned_range" if learned else "ddpm",
                                lambda g: ddpm_step(twin.f32, i, x, mo, generator=g), mean[0], std[0], 1234)
        steps.append(record_step(i, x, mo, mean, std, learned))
    return case_record(name, "ddpm", twin, n, steps, mo.shape, int)


def ddim_case(name: str, n: int, eta: float, **config) -> dict:
    twin = Twin(DDIMScheduler, n, **config)
    steps = []
    for i in range(len(twin.f32.timesteps)):
        x, mo = random_inputs()
        mean, std = zip(*twin.both(lambda s: ddim_posterior(s, i, x, mo, eta)))
        if eta > 0:
            check_decomposition("ddim", lambda g: ddim_step(twin.f32, i, x, mo, eta, generator=g),
                                mean[0], std[0], 99)
        steps.append(record_step(i, x, mo, mean, std, False))
    return case_record(name, "ddim", twin, n, steps, mo.shape, int, eta=eta)


def euler_case(name: str, n: int, **config) -> dict:
    twin = Twin(EulerAncestralDiscreteScheduler, n, **config)
    steps = []
    for i in range(len(twin.f32.timesteps)):
        # Euler latents live in sigma space: scale x like one (|x| ~ sqrt(sigma^2 + 1)).
        sigma = float(twin.f32.sigmas[i])
        x, mo = random_inputs(x_scale=(sigma**2 + 1.0) ** 0.5)
        scaled = twin.both(lambda s: euler_scale(s, i, x))
        mean, std = zip(*twin.both(lambda s: euler_posterior(s, i, x, mo)))
        if i < len(twin.f32.timesteps) - 1:
            check_decomposition("euler_ancestral", lambda g: euler_step(twin.f32, i, x, mo, generator=g),
                                mean[0], std[0], 7)
        steps.append(record_step(i, x, mo, mean, std, False, scaled))
    # The float32 sigmas diffusers steps with (n + 1 values, the last 0), and the twin's.
    assert twin.f32.sigmas.dtype == torch.float32 and twin.f64.sigmas.dtype == torch.float64
    sigmas = [float(v) for v in twin.f32.sigmas.tolist()]
    sigmas_f64 = [repr(float(v)) for v in twin.f64.sigmas.tolist()]
    return case_record(name, "euler_ancestral", twin, n, steps, mo.shape, float, sigmas=sigmas, sigmas_f64=sigmas_f64)


def spacing_name(spacing: str, offset: int) -> str:
    return f"{spacing}+{offset}" if spacing == "leading" else spacing


def all_cases() -> list[dict]:
    cases = []
    # DDPM: beta schedules x fixed variance types x prediction types x spacings.
    for betas, variance, prediction, (spacing, offset), n in itertools.product(
        ("linear", "scaled_linear", "squaredcos_cap_v2"),
        ("fixed_small", "fixed_large"),
        ("epsilon", "v_prediction"),
        SPACINGS,
        STEP_COUNTS,
    ):
        extra = SD_BETAS if betas == "scaled_linear" else dict(beta_schedule=betas)
        cases.append(ddpm_case(
            f"ddpm/{betas}/{variance}/{prediction}/{spacing_name(spacing, offset)}/n{n}", n,
            variance_type=variance, prediction_type=prediction, timestep_spacing=spacing,
            steps_offset=offset, clip_sample=False, **extra))
    # DDPM learned_range (improved DDPM: cosine betas; also linear and scaled-linear).
    for betas, prediction, (spacing, offset), n in (
        ("squaredcos_cap_v2", "epsilon", ("leading", 0), 10),
        ("squaredcos_cap_v2", "epsilon", ("leading", 0), 50),
        ("squaredcos_cap_v2", "epsilon", ("trailing", 0), 50),
        ("linear", "epsilon", ("linspace", 0), 10),
        ("linear", "v_prediction", ("leading", 1), 50),
        ("scaled_linear", "epsilon", ("trailing", 0), 10),
    ):
        extra = SD_BETAS if betas == "scaled_linear" else dict(beta_schedule=betas)
        cases.append(ddpm_case(
            f"ddpm/{betas}/learned_range/{prediction}/{spacing_name(spacing, offset)}/n{n}", n,
            variance_type="learned_range", prediction_type=prediction, timestep_spacing=spacing,
            steps_offset=offset, clip_sample=False, **extra))
    # DDPM with clip_sample on (diffusers' default config) and with prediction_type "sample".
    for n in STEP_COUNTS:
        cases.append(ddpm_case(f"ddpm/linear/fixed_small/epsilon/leading+0/default_clip/n{n}", n))
        cases.append(ddpm_case(
            f"ddpm/linear/fixed_small/sample/leading+0/clip/n{n}", n, prediction_type="sample", clip_sample=True))
        cases.append(ddpm_case(
            f"ddpm/scaled_linear/fixed_large/sample/trailing/n{n}", n, prediction_type="sample",
            timestep_spacing="trailing", clip_sample=False, **SD_BETAS))

    # DDIM: eta x spacings x set_alpha_to_one (SD betas, epsilon); v_prediction for a few.
    for eta, (spacing, offset), one, n in itertools.product((0.0, 1.0), SPACINGS, (True, False), STEP_COUNTS):
        cases.append(ddim_case(
            f"ddim/eta{eta:g}/epsilon/{spacing_name(spacing, offset)}/alpha_one={one}/n{n}", n, eta,
            timestep_spacing=spacing, steps_offset=offset, set_alpha_to_one=one, clip_sample=False, **SD_BETAS))
    for eta, (spacing, offset), one, n in (
        (0.0, ("leading", 1), False, 50),  # SD 2.1 (768) as shipped
        (1.0, ("leading", 1), False, 10),
        (1.0, ("trailing", 0), True, 50),
        (0.0, ("linspace", 0), True, 10),
    ):
        cases.append(ddim_case(
            f"ddim/eta{eta:g}/v_prediction/{spacing_name(spacing, offset)}/alpha_one={one}/n{n}", n, eta,
            prediction_type="v_prediction", timestep_spacing=spacing, steps_offset=offset,
            set_alpha_to_one=one, clip_sample=False, **SD_BETAS))
    for n in STEP_COUNTS:
        # diffusers' default DDIMScheduler(): linear betas, clip_sample on.
        cases.append(ddim_case(f"ddim/eta1/epsilon/leading+0/default_clip/n{n}", n, 1.0))
        # Sample / v prediction with clipping: diffusers derives ε̂ from the model output before
        # x̂₀ is clipped.
        cases.append(ddim_case(
            f"ddim/eta0/sample/leading+1/clip/n{n}", n, 0.0, prediction_type="sample", steps_offset=1, **SD_BETAS))
        cases.append(ddim_case(
            f"ddim/eta1/v_prediction/trailing/clip/n{n}", n, 1.0, prediction_type="v_prediction",
            timestep_spacing="trailing", **SD_BETAS))

    # Euler ancestral: spacings x predictions (SD betas; leading with steps_offset 1 as SDXL),
    # plus linear betas (diffusers' default, and with leading spacing).
    for (spacing, offset), prediction, n in itertools.product(
        (("leading", 1), ("trailing", 0), ("linspace", 0)), ("epsilon", "v_prediction"), STEP_COUNTS
    ):
        cases.append(euler_case(
            f"euler_a/scaled_linear/{prediction}/{spacing_name(spacing, offset)}/n{n}", n,
            prediction_type=prediction, timestep_spacing=spacing, steps_offset=offset, **SD_BETAS))
    for n in STEP_COUNTS:
        cases.append(euler_case(f"euler_a/linear/epsilon/linspace/default/n{n}", n))
        cases.append(euler_case(f"euler_a/linear/epsilon/leading+0/n{n}", n, timestep_spacing="leading"))
    # Appended last, so that the random inputs of every case above stay as they were: 30 linspace
    # steps (999 / 29 is not a float32 number, so every fractional timestep is rounded) and the
    # cosine schedule.
    for prediction in ("epsilon", "v_prediction"):
        cases.append(euler_case(
            f"euler_a/scaled_linear/{prediction}/linspace/n30", 30, prediction_type=prediction,
            timestep_spacing="linspace", **SD_BETAS))
    cases.append(euler_case("euler_a/linear/epsilon/linspace/default/n30", 30))
    cases.append(euler_case(
        "euler_a/squaredcos_cap_v2/epsilon/linspace/n50", 50, beta_schedule="squaredcos_cap_v2"))
    # Zero terminal SNR (rescale_betas_zero_snr) with v-prediction and trailing spacing, the
    # setting it is made for (appended last, as above).
    for n in STEP_COUNTS:
        zero_snr = dict(rescale_betas_zero_snr=True, prediction_type="v_prediction", timestep_spacing="trailing",
                        **SD_BETAS)
        cases.append(ddpm_case(f"ddpm/scaled_linear/fixed_small/v_prediction/trailing/zero_snr/n{n}", n,
                               variance_type="fixed_small", clip_sample=False, **zero_snr))
        # (η = 0 only: with η = 1 diffusers' first step takes the square root of
        # 1 − ᾱ_prev − σ_t², which is 0 there and comes out a rounding-negative NaN.)
        cases.append(ddim_case(f"ddim/eta0/v_prediction/trailing/zero_snr/n{n}", n, 0.0,
                               clip_sample=False, set_alpha_to_one=False, **zero_snr))
        cases.append(euler_case(f"euler_a/scaled_linear/v_prediction/trailing/zero_snr/n{n}", n, **zero_snr))
    return cases


def main() -> None:
    cases = all_cases()
    assert set(validated) == {"ddpm", "ddpm_learned_range", "ddim", "euler_ancestral"}, validated
    doc = {
        "generator": "scripts/gen_scheduler_fixtures.py",
        "diffusers_version": diffusers.__version__,
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "method": "mean = step() with randn_tensor patched to zeros; std = step(x=0, model_output=0 "
        "(learned variance channels kept)) with randn_tensor patched to ones; variance = std^2; validated "
        "against unpatched seeded step() per family. *_f64: the same diffusers code with the scheduler "
        "modules' float32 requests redirected to float64.",
        "decomposition_max_abs_error": validated,
        "cases": cases,
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")
    n_steps = sum(len(c["steps"]) for c in cases)
    print(f"wrote {OUT}: {len(cases)} cases, {n_steps} steps, {os.path.getsize(OUT)} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
