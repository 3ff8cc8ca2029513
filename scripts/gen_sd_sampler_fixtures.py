#!/usr/bin/env python3
"""Realigned Stable Diffusion and SDXL runs with Euler, Heun, DPM-Solver++ (2M Karras, 2M SDE
Karras), UniPC and LCM, written with diffusers' own schedulers, for
`crates/deradiff-sd/tests/realigned_samplers.rs`.

Run (from the repository root, after `gen_sd_fixtures.py` / `gen_sdxl_fixtures.py` wrote the
tiny checkpoints, which this script only loads):

    /work/venv/bin/python scripts/gen_sd_sampler_fixtures.py

It writes `crates/deradiff-sd/tests/fixtures/samplers-reference.safetensors` and
`samplers-reference.json` (deterministic: the noise is seeded).

The loop
--------
DeRaDiff's realigned step with a scheduler that keeps state (`docs/math.md` §7) is written here
with diffusers' classes alone: **one scheduler instance per model**, each stepped by diffusers'
`step()` with that model's guided output at the shared latent, so each keeps its own history of
model outputs; the next latent is the weighted sum of the models' `prev_sample`s. The noise of a
stochastic step is the same for every model (DPM-Solver's `variance_noise=`, LCM's
`randn_tensor` patched), so the weighted sum of the samples is the fused mean plus the shared
noise. UniPC's corrected latent is shared and fused like the latent: after each step every
instance's `last_sample` is set to the weighted sum of theirs. Heun's second evaluation is taken
at the fused Euler point, by each model's instance with its own first derivative.

The run starts from `noise[0] * init_noise_sigma` and step i draws `noise[i + 1]` (used only by
stochastic steps), as deradiff's sampler draws one tensor per step. For Stable Diffusion the loop
with the reference alone is checked against `StableDiffusionPipeline` itself (same latents, same
injected noise, the scheduler swapped in): the loop is diffusers' sampling.
"""

from __future__ import annotations

import contextlib
import json
import os

import torch
from safetensors.torch import save_file

import diffusers
from diffusers import (
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LCMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
    UniPCMultistepScheduler,
)
from diffusers.schedulers import scheduling_lcm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "crates", "deradiff-sd", "tests", "fixtures")
LAMBDA = 0.5
STEPS = 6
SAMPLERS = {
    "euler": (EulerDiscreteScheduler, {}),
    "heun": (HeunDiscreteScheduler, {}),
    "dpm2m_karras": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
    "dpm2m_sde_karras": (
        DPMSolverMultistepScheduler,
        {"use_karras_sigmas": True, "algorithm_type": "sde-dpmsolver++"},
    ),
    "unipc": (UniPCMultistepScheduler, {}),
    "lcm": (LCMScheduler, {}),
}
CHECKPOINTS = {
    "sd": dict(prompts=["a red cube on a wooden table"], negative="blurry, dark", guidance=7.5, size=(16, 16), seed=61),
    "sdxl": dict(prompts=["a lighthouse at dusk"], negative=None, guidance=5.0, size=(16, 24), seed=62),
}


@contextlib.contextmanager
def injected_randn(module, z):
    saved = module.randn_tensor

    def fake(shape, generator=None, device=None, dtype=None, layout=None):
        assert tuple(shape) == tuple(z.shape), (shape, z.shape)
        return z.to(dtype=dtype)

    module.randn_tensor = fake
    try:
        yield
    finally:
        module.randn_tensor = saved


def make(cls, base, overrides, n):
    s = cls.from_config({**base, **overrides})
    s.set_timesteps(n)
    s.set_begin_index(0)
    return s


def step(s, out, t, x, z):
    if isinstance(s, DPMSolverMultistepScheduler) and s.config.algorithm_type == "sde-dpmsolver++":
        return s.step(out, t, x, variance_noise=z).prev_sample
    if isinstance(s, LCMScheduler):
        with injected_randn(scheduling_lcm, z):
            return s.step(out, t, x).prev_sample
    return s.step(out, t, x).prev_sample


def guided(unet, x_in, t, embeds, added, g):
    kwargs = {} if added is None else {"added_cond_kwargs": added}
    out = unet(torch.cat([x_in] * 2), t, encoder_hidden_states=embeds, **kwargs).sample
    uncond, cond = out.chunk(2)
    return uncond + g * (cond - uncond)


def realigned(cls, base, overrides, unets, weights, embeds, added, noise, g, n):
    scheds = [make(cls, base, overrides, n) for _ in unets]
    x = noise[0] * scheds[0].init_noise_sigma
    for i, t in enumerate(scheds[0].timesteps):
        z = noise[i + 1]
        prevs = []
        for s, unet in zip(scheds, unets):
            x_in = s.scale_model_input(x, t)
            prevs.append(step(s, guided(unet, x_in, t, embeds, added, g), t, x, z))
        x = sum(w * p for w, p in zip(weights, prevs))
        if isinstance(scheds[0], UniPCMultistepScheduler):
            fused = sum(w * s.last_sample for w, s in zip(weights, scheds))
            for s in scheds:
                s.last_sample = fused
    return x, [float(t) for t in scheds[0].timesteps]


def pipeline_single(pipe, cls, base, overrides, spec, noise, n):
    """StableDiffusionPipeline itself with the scheduler swapped in, the same latents and noise."""
    pipe.scheduler = make(cls, base, overrides, n)
    queue = list(noise[1:])
    module = diffusers.schedulers.scheduling_dpmsolver_multistep if cls is DPMSolverMultistepScheduler else None
    module = scheduling_lcm if cls is LCMScheduler else module
    saved = module.randn_tensor if module is not None else None

    def popped(shape, generator=None, device=None, dtype=None, layout=None):
        return queue.pop(0).to(dtype=dtype)

    if module is not None:
        module.randn_tensor = popped
    try:
        h, w = spec["size"]
        negatives = None if spec["negative"] is None else [spec["negative"]] * len(spec["prompts"])
        return pipe(
            spec["prompts"], negative_prompt=negatives, num_inference_steps=n, guidance_scale=spec["guidance"],
            height=h, width=w, latents=noise[0].clone(), output_type="latent",
        ).images
    finally:
        if module is not None:
            module.randn_tensor = saved


def main() -> None:
    tensors, meta = {}, {"generator": "scripts/gen_sd_sampler_fixtures.py", "diffusers_version": diffusers.__version__,
                         "lambda": LAMBDA, "steps": STEPS, "checkpoints": {}}
    cpu = torch.device("cpu")
    for ckpt, spec in CHECKPOINTS.items():
        xl = ckpt == "sdxl"
        path = os.path.join(FIX, "tiny-sdxl" if xl else "tiny-sd")
        cls_pipe = StableDiffusionXLPipeline if xl else StableDiffusionPipeline
        extra = {} if xl else {"safety_checker": None, "requires_safety_checker": False}
        pipe = cls_pipe.from_pretrained(path, torch_dtype=torch.float32, **extra)
        pipe.set_progress_bar_config(disable=True)
        aligned = UNet2DConditionModel.from_pretrained(
            os.path.join(FIX, "tiny-sdxl-aligned-unet" if xl else "tiny-aligned-unet"), torch_dtype=torch.float32
        )
        base = dict(pipe.scheduler.config)
        b, (h, w) = len(spec["prompts"]), spec["size"]
        scale = pipe.vae_scale_factor
        negatives = None if spec["negative"] is None else [spec["negative"]] * b
        with torch.no_grad():
            if xl:
                cond, uncond, pooled_c, pooled_u = pipe.encode_prompt(
                    spec["prompts"], device=cpu, num_images_per_prompt=1, do_classifier_free_guidance=True,
                    negative_prompt=negatives,
                )
                ids = torch.tensor([[h, w, 0, 0, h, w]], dtype=torch.float32)
                added = {"text_embeds": torch.cat([pooled_u, pooled_c]), "time_ids": torch.cat([ids, ids]).repeat(b, 1)}
            else:
                cond, uncond = pipe.encode_prompt(spec["prompts"], cpu, 1, True, negatives)
                added = None
            embeds = torch.cat([uncond, cond])
        meta["checkpoints"][ckpt] = {k: v for k, v in spec.items() if k != "seed"}
        meta["checkpoints"][ckpt]["runs"] = {}
        for name, (cls, overrides) in SAMPLERS.items():
            n_draws = len(make(cls, base, overrides, STEPS).timesteps) + 1
            gen = torch.Generator().manual_seed(spec["seed"])
            noise = [torch.randn((b, 4, h // scale, w // scale), generator=gen) for _ in range(n_draws)]
            with torch.no_grad():
                final, timesteps = realigned(cls, base, overrides, [pipe.unet, aligned], [1 - LAMBDA, LAMBDA],
                                             embeds, added, noise, spec["guidance"], STEPS)
                single, _ = realigned(cls, base, overrides, [pipe.unet], [1.0], embeds, added, noise,
                                      spec["guidance"], STEPS)
                aligned_only, _ = realigned(cls, base, overrides, [aligned], [1.0], embeds, added, noise,
                                            spec["guidance"], STEPS)
                piped_err = None
                if not xl:
                    piped = pipeline_single(pipe, cls, base, overrides, spec, noise, STEPS)
                    piped_err = (single - piped).abs().max().item()
                    assert piped_err <= 1e-5, (ckpt, name, piped_err)
            spread = (single - aligned_only).abs().max().item()
            assert spread > 0.05, (ckpt, name, spread)
            key = f"{ckpt}.{name}"
            tensors[f"{key}.noise"] = torch.stack(noise)
            tensors[f"{key}.final"] = final
            meta["checkpoints"][ckpt]["runs"][name] = {
                "class": cls.__name__, "overrides": overrides, "timesteps": timesteps,
                "pipeline_vs_loop_max_abs": piped_err, "ref_vs_aligned_max_abs": spread,
            }
            print(f"{key}: {len(timesteps)} steps, ref vs aligned {spread:.3f}, pipeline vs loop {piped_err}")
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(FIX, "samplers-reference.safetensors"))
    with open(os.path.join(FIX, "samplers-reference.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
