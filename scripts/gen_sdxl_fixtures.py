#!/usr/bin/env python3
"""Tiny SDXL fixtures for deradiff-sd, with reference outputs from diffusers/transformers.

Run (from the repository root, after `scripts/gen_sd_fixtures.py`, whose tokenizer it reuses):

    /work/venv/bin/python scripts/gen_sdxl_fixtures.py

It writes `crates/deradiff-sd/tests/fixtures/tiny-sdxl/` (a complete diffusers-layout SDXL
checkpoint), `tiny-sdxl-aligned-unet/` (a second UNet of the same shape) and
`tiny-sdxl-reference.{safetensors,json}`. Everything is seeded; the same library versions give
the same files. Methods as in `gen_sd_fixtures.py`: float16 storage, references in float32 after
an exact upcast, norms perturbed, realigned runs built from diffusers' own UNet and scheduler
calls with injected noise.

Models
------
* `text_encoder/`: `CLIPTextModel` (hidden 32, 3 layers, `quick_gelu`, as CLIP ViT-L).
* `text_encoder_2/`: `CLIPTextModelWithProjection` (hidden 48, 3 layers, `gelu`, projection 24,
  `eos_token_id = 2` as the real SDXL config: pooled at the argmax of the ids), stored with the
  `text_model.` prefix and `text_projection.weight` of real checkpoints.
* `tokenizer/`, `tokenizer_2/`: the tiny CLIP BPE of `gen_sd_fixtures.py`; `tokenizer_2` pads
  with `!` as SDXL's does.
* `unet/`: `UNet2DConditionModel` with SDXL's shape in small: blocks 16/32 (8 groups), down
  `DownBlock2D`, `CrossAttnDownBlock2D` (2 transformer layers, the mid block too),
  linear projections, cross-attention dim 80 (32 + 48), `addition_embed_type = "text_time"`,
  `addition_time_embed_dim = 8`, `projection_class_embeddings_input_dim = 24 + 6 * 8`,
  `upcast_attention = null` (as SDXL's file has it).
* `vae/`: the tiny two-level `AutoencoderKL` (scale factor 2, `scaling_factor = 0.13025`).
* `scheduler/`: SDXL's `EulerDiscreteScheduler` config (leading spacing, steps_offset 1).
* `model_index.json`: `StableDiffusionXLPipeline`, `force_zeros_for_empty_prompt = true`.

References
----------
* tokenizer_2 ids; `pipe.encode_prompt` outputs (prompt embeds = penultimate hidden states of
  both encoders concatenated; pooled = encoder 2's projected pooled output), with a negative
  prompt and without one (zeros, `force_zeros_for_empty_prompt`), and with that flag off;
* UNet outputs for given latents, timesteps, embeddings, pooled embeddings and time_ids (also
  with other time_ids, and with candle's tanh-GELU for diagnosis);
* two-model realigned Euler-ancestral runs (lambda = 0.5, CFG, 4 steps, injected noise), one
  with default micro-conditioning and no negative prompt, one with a negative prompt,
  a non-square size and explicit original size / crop / target size; the one-model loop is
  asserted equal to `StableDiffusionXLPipeline` itself.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_sd_fixtures as sd  # noqa: E402

import diffusers  # noqa: E402
import transformers  # noqa: E402
from diffusers import (  # noqa: E402
    EulerAncestralDiscreteScheduler,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.schedulers import scheduling_euler_ancestral_discrete as euler_module  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer  # noqa: E402

OUT = sd.OUT
XL = os.path.join(OUT, "tiny-sdxl")
ALIGNED = os.path.join(OUT, "tiny-sdxl-aligned-unet")

SDXL_SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler",
    "_diffusers_version": "0.19.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}

HIDDEN_1, HIDDEN_2, PROJ = 32, 48, 24
TIME_DIM = 8

UNET_CONFIG = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(16, 32),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=HIDDEN_1 + HIDDEN_2,
    attention_head_dim=[2, 4],
    transformer_layers_per_block=[1, 2],
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=TIME_DIM,
    projection_class_embeddings_input_dim=PROJ + 6 * TIME_DIM,
    norm_num_groups=8,  # not 32: candle's down/up blocks would silently use 32
)

GUIDANCE = 5.0
LAMBDA = 0.5
STEPS = 4
RUNS = {
    "default": dict(
        prompts=["a red cube on a wooden table", "an astronaut riding a horse"],
        negative=None,
        height=16,
        width=16,
        original_size=None,
        crop=(0, 0),
        target_size=None,
        seed=81,
    ),
    "micro": dict(
        prompts=["a lighthouse at dusk"],
        negative="blurry, dark",
        height=16,
        width=24,
        original_size=(40, 32),
        crop=(4, 2),
        target_size=(24, 20),
        seed=82,
    ),
}

TEXT_PROMPTS = ["a photograph of an astronaut riding a horse", "", "A RED cube,   on a\ttable!!  "]


def make_text_encoder_2(vocab_size: int, tokenizer: CLIPTokenizer, seed: int) -> CLIPTextModelWithProjection:
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=HIDDEN_2,
        intermediate_size=53,
        projection_dim=PROJ,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=sd.MAX_LEN,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        bos_token_id=0,
        eos_token_id=2,  # as SDXL's text_encoder_2/config.json: the legacy argmax pooling
        pad_token_id=1,
    )
    torch.manual_seed(seed)
    model = CLIPTextModelWithProjection(config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) / module.in_features**0.5)
                if module.bias is not None:
                    module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))
            elif isinstance(module, torch.nn.Embedding):
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen))
    sd.perturb_norms(model, gen)
    sd.round_to_f16(model)
    return model


def save_text_encoder_2(model, directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    state = sd.f16_state(model)
    state = {
        k if (k.startswith("text_model.") or k.startswith("text_projection.")) else f"text_model.{k}": v
        for k, v in state.items()
    }
    assert "text_projection.weight" in state, sorted(state)
    state["text_model.embeddings.position_ids"] = torch.arange(sd.MAX_LEN, dtype=torch.int64)[None]
    save_file(state, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config["architectures"] = ["CLIPTextModelWithProjection"]
    config["torch_dtype"] = "float16"
    for k in ("dtype", "transformers_version"):
        config.pop(k, None)
    sd.write_json(os.path.join(directory, "config.json"), config)


def make_unet(seed: int) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**UNET_CONFIG).eval()
    sd.perturb_norms(unet, torch.Generator().manual_seed(seed + 1000))
    # The default init leaves add_embedding small next to the time embedding: make it count.
    gen = torch.Generator().manual_seed(seed + 2000)
    with torch.no_grad():
        for lin in (unet.add_embedding.linear_1, unet.add_embedding.linear_2):
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=gen) / lin.in_features**0.5)
            lin.bias.copy_(0.1 * torch.randn(lin.bias.shape, generator=gen))
    sd.round_to_f16(unet)
    return unet


def save_unet(unet, directory: str) -> None:
    sd.save_diffusers_model(unet, directory)
    path = os.path.join(directory, "config.json")
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    config["upcast_attention"] = None  # as stabilityai/stable-diffusion-xl-base-1.0 writes it
    sd.write_json(path, config)


def make_scheduler(n: int):
    scheduler = EulerAncestralDiscreteScheduler.from_config(SDXL_SCHEDULER)
    scheduler.set_timesteps(n)
    return scheduler


def time_ids(spec) -> list[float]:
    h, w = spec["height"], spec["width"]
    original = spec["original_size"] or (h, w)
    target = spec["target_size"] or (h, w)
    return list(original + spec["crop"] + target)


def guided(unet, x_in, t, embeds, added, g):
    out = unet(torch.cat([x_in] * 2), t, encoder_hidden_states=embeds, added_cond_kwargs=added).sample
    uncond, cond = out.chunk(2)
    return uncond + g * (cond - uncond)


def realigned_run(unets, weights, embeds, added, noise, g, n):
    scheduler = make_scheduler(n)
    x = noise[0] * scheduler.init_noise_sigma
    trace = []
    for i, t in enumerate(scheduler.timesteps):
        scheduler._step_index = i
        x_in = scheduler.scale_model_input(x, t)
        means, stds = [], []
        for unet in unets:
            out = guided(unet, x_in, t, embeds, added, g)
            mean, std = sd.posterior("euler_a", scheduler, euler_module, i, t, x, out)
            means.append(mean)
            stds.append(std)
        for s in stds[1:]:
            assert torch.equal(s, stds[0])
        x = sum(w * m for w, m in zip(weights, means)) + stds[0] * noise[i + 1]
        trace.append(x.clone())
    return x, trace, [float(t) for t in scheduler.timesteps]


def pipeline_run(pipe, spec, noise, g, n):
    pipe.scheduler = make_scheduler(n)
    queue = list(noise[1:])

    def injected(shape, dtype, device):
        z = queue.pop(0)
        assert tuple(z.shape) == tuple(shape), (z.shape, shape)
        return z.to(dtype=dtype, device=device)

    negatives = None if spec["negative"] is None else [spec["negative"]] * len(spec["prompts"])
    with sd.patched_noise(euler_module, injected):
        return pipe(
            spec["prompts"],
            negative_prompt=negatives,
            num_inference_steps=n,
            guidance_scale=g,
            height=spec["height"],
            width=spec["width"],
            original_size=spec["original_size"],
            crops_coords_top_left=spec["crop"],
            target_size=spec["target_size"],
            latents=noise[0].clone(),
            output_type="latent",
        ).images


def main() -> None:
    for d in (XL, ALIGNED):
        shutil.rmtree(d, ignore_errors=True)
    tensors: dict[str, torch.Tensor] = {}
    meta: dict = {
        "generator": "scripts/gen_sdxl_fixtures.py",
        "versions": {"diffusers": diffusers.__version__, "transformers": transformers.__version__, "torch": torch.__version__},
    }

    # Tokenizers: the SD fixture's BPE; tokenizer_2 pads with "!".
    shutil.copytree(os.path.join(sd.SD, "tokenizer"), os.path.join(XL, "tokenizer"))
    shutil.copytree(os.path.join(sd.SD, "tokenizer"), os.path.join(XL, "tokenizer_2"))
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = os.path.join(XL, "tokenizer_2", name)
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
        cfg["pad_token"] = "!"
        sd.write_json(path, cfg)
    tokenizer = CLIPTokenizer.from_pretrained(os.path.join(XL, "tokenizer"))
    tokenizer_2 = CLIPTokenizer.from_pretrained(os.path.join(XL, "tokenizer_2"))
    assert tokenizer_2.pad_token == "!" and tokenizer_2.pad_token_id != tokenizer.pad_token_id
    vocab_size = len(tokenizer.get_vocab())
    assert tokenizer.eos_token_id == vocab_size - 1, "the legacy argmax pooling needs eos to be the largest id"
    meta["tokenizer_2"] = {"prompts": TEXT_PROMPTS, "ids": sd.token_ids(tokenizer_2, TEXT_PROMPTS)}

    # Text encoders
    te1 = sd.make_text_encoder(vocab_size, tokenizer, seed=61, act="quick_gelu")
    sd.save_text_encoder(te1, os.path.join(XL, "text_encoder"))
    te2 = make_text_encoder_2(vocab_size, tokenizer_2, seed=62)
    save_text_encoder_2(te2, os.path.join(XL, "text_encoder_2"))
    with torch.no_grad():
        reloaded = CLIPTextModelWithProjection.from_pretrained(os.path.join(XL, "text_encoder_2"), torch_dtype=torch.float32)
        ids2 = torch.tensor(meta["tokenizer_2"]["ids"], dtype=torch.int64)
        a, b = te2(ids2, output_hidden_states=True), reloaded(ids2, output_hidden_states=True)
        assert torch.equal(a.text_embeds, b.text_embeds) and torch.equal(a.hidden_states[-2], b.hidden_states[-2])
        tensors["te2.penultimate"] = a.hidden_states[-2]
        tensors["te2.pooled"] = a.text_embeds

    # UNets, VAE
    unet = make_unet(seed=63)
    aligned = make_unet(seed=64)
    save_unet(unet, os.path.join(XL, "unet"))
    save_unet(aligned, ALIGNED)
    vae = sd.make_vae(seed=65)
    sd.save_diffusers_model(vae, os.path.join(XL, "vae"))
    sd.write_json(os.path.join(XL, "scheduler", "scheduler_config.json"), SDXL_SCHEDULER)
    sd.write_json(
        os.path.join(XL, "model_index.json"),
        {
            "_class_name": "StableDiffusionXLPipeline",
            "_diffusers_version": diffusers.__version__,
            "force_zeros_for_empty_prompt": True,
            "scheduler": ["diffusers", "EulerDiscreteScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "tokenizer_2": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        },
    )

    # UNet outputs with added conditioning
    gen = torch.Generator().manual_seed(66)
    x = torch.randn((2, 4, 8, 8), generator=gen)
    emb = torch.randn((2, sd.MAX_LEN, HIDDEN_1 + HIDDEN_2), generator=gen)
    pooled = torch.randn((2, PROJ), generator=gen)
    ids_a = torch.tensor([[16.0, 16.0, 0.0, 0.0, 16.0, 16.0], [1024.0, 768.0, 32.0, 8.0, 1024.0, 1024.0]])
    ids_b = torch.tensor([[512.0, 512.0, 0.0, 0.0, 16.0, 16.0], [1024.0, 768.0, 32.0, 8.0, 1024.0, 1024.0]])
    tensors.update({"unet.x": x, "unet.emb": emb, "unet.pooled": pooled, "unet.time_ids": ids_a, "unet.time_ids_b": ids_b})
    meta["unet_timesteps"] = [999.0, 587.5, 1.0]
    with torch.no_grad():
        for name, model in (("ref", unet), ("aligned", aligned)):
            for k, t in enumerate(meta["unet_timesteps"]):
                ts = torch.tensor(t, dtype=torch.float32)
                for tag, ids in (("", ids_a), ("_b", ids_b)):
                    added = {"text_embeds": pooled, "time_ids": ids}
                    tensors[f"unet.{name}.out{k}{tag}"] = model(x, ts, encoder_hidden_states=emb, added_cond_kwargs=added).sample
                    with sd.tanh_geglu():
                        tensors[f"unet.{name}.out{k}{tag}_tanh"] = model(
                            x, ts, encoder_hidden_states=emb, added_cond_kwargs=added
                        ).sample
        d = (tensors["unet.ref.out0"] - tensors["unet.ref.out0_b"]).abs()
        assert d[0].max() > 1e-2 and d[1].max() == 0, "time_ids of row 0 must change row 0 only"
        meta["time_ids_effect_max_abs"] = d.max().item()

    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=te1,
        text_encoder_2=te2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=make_scheduler(STEPS),
        force_zeros_for_empty_prompt=True,
    )
    pipe.set_progress_bar_config(disable=True)

    # encode_prompt: with and without a negative prompt, and with force_zeros off.
    cpu = torch.device("cpu")
    with torch.no_grad():
        pe, npe, pp, npp = pipe.encode_prompt(TEXT_PROMPTS, device=cpu, num_images_per_prompt=1, do_classifier_free_guidance=True)
        assert npe.abs().max() == 0 and npp.abs().max() == 0
        tensors["text.embeds"], tensors["text.pooled"] = pe, pp
        _, npe2, _, npp2 = pipe.encode_prompt(
            TEXT_PROMPTS, device=cpu, num_images_per_prompt=1, do_classifier_free_guidance=True,
            negative_prompt=["blurry, dark"] * len(TEXT_PROMPTS),
        )
        tensors["text.neg_embeds"], tensors["text.neg_pooled"] = npe2, npp2
        pipe.register_to_config(force_zeros_for_empty_prompt=False)
        _, npe3, _, npp3 = pipe.encode_prompt(TEXT_PROMPTS, device=cpu, num_images_per_prompt=1, do_classifier_free_guidance=True)
        pipe.register_to_config(force_zeros_for_empty_prompt=True)
        tensors["text.empty_embeds"], tensors["text.empty_pooled"] = npe3[:1], npp3[:1]
        # The empty prompt's own encoding is what force_zeros=false uses.
        pe_empty, _, pp_empty, _ = pipe.encode_prompt([""], device=cpu, num_images_per_prompt=1, do_classifier_free_guidance=False)
        assert (pe_empty - npe3[:1]).abs().max() < 1e-5 and (pp_empty - npp3[:1]).abs().max() < 1e-5
    meta["text_prompts"] = TEXT_PROMPTS
    meta["text_negative_prompt"] = "blurry, dark"

    # Realigned runs
    meta["runs"] = {}
    for name, spec in RUNS.items():
        prompts, b = spec["prompts"], len(spec["prompts"])
        negatives = None if spec["negative"] is None else [spec["negative"]] * b
        h, w = spec["height"] // 2, spec["width"] // 2
        gen = torch.Generator().manual_seed(spec["seed"])
        noise = [torch.randn((b, 4, h, w), generator=gen) for _ in range(STEPS + 1)]
        with torch.no_grad():
            cond, uncond, pooled_c, pooled_u = pipe.encode_prompt(
                prompts, device=cpu, num_images_per_prompt=1, do_classifier_free_guidance=True, negative_prompt=negatives
            )
            ids = torch.tensor([time_ids(spec)], dtype=torch.float32)
            embeds = torch.cat([uncond, cond])
            added = {"text_embeds": torch.cat([pooled_u, pooled_c]), "time_ids": torch.cat([ids, ids]).repeat(b, 1)}
            final, trace, timesteps = realigned_run([unet, aligned], [1 - LAMBDA, LAMBDA], embeds, added, noise, GUIDANCE, STEPS)
            with sd.tanh_geglu():
                final_tanh, _, _ = realigned_run(
                    [unet, aligned], [1 - LAMBDA, LAMBDA], embeds, added, noise, GUIDANCE, STEPS
                )
            single, _, _ = realigned_run([unet], [1.0], embeds, added, noise, GUIDANCE, STEPS)
            piped = pipeline_run(pipe, spec, noise, GUIDANCE, STEPS)
            err = (single - piped).abs().max().item()
            assert err <= 1e-5, (name, err)
            single_aligned, _, _ = realigned_run([aligned], [1.0], embeds, added, noise, GUIDANCE, STEPS)
        spread = (single - single_aligned).abs().max().item()
        assert spread > 0.05, spread
        tensors[f"run.{name}.noise"] = torch.stack(noise)
        tensors[f"run.{name}.embeds"] = embeds
        tensors[f"run.{name}.pooled"] = added["text_embeds"]
        tensors[f"run.{name}.time_ids"] = added["time_ids"]
        tensors[f"run.{name}.final"] = final
        tensors[f"run.{name}.final_tanh"] = final_tanh
        tensors[f"run.{name}.trace"] = torch.stack(trace)
        tensors[f"run.{name}.single_ref"] = single
        meta["runs"][name] = {
            **{k: v for k, v in spec.items() if k != "seed"},
            "guidance_scale": GUIDANCE,
            "lambda": LAMBDA,
            "steps": STEPS,
            "timesteps": timesteps,
            "time_ids": time_ids(spec),
            "pipeline_vs_loop_max_abs": err,
            "ref_vs_aligned_max_abs": spread,
            "tanh_vs_exact_max_abs": (final - final_tanh).abs().max().item(),
        }
        print(f"{name}: pipeline vs loop {err:.2e}, ref vs aligned {spread:.3f}, "
              f"tanh vs exact {meta['runs'][name]['tanh_vs_exact_max_abs']:.2e}")

    for k in range(3):
        dd = (tensors[f"unet.ref.out{k}"] - tensors[f"unet.ref.out{k}_tanh"]).abs().max().item()
        print(f"unet ref t={meta['unet_timesteps'][k]}: tanh vs exact {dd:.2e}")
    tensors = {k: v.float().contiguous() for k, v in sorted(tensors.items())}
    save_file(tensors, os.path.join(OUT, "tiny-sdxl-reference.safetensors"), metadata={"format": "pt"})
    sd.write_json(os.path.join(OUT, "tiny-sdxl-reference.json"), meta)
    total = sum(
        os.path.getsize(os.path.join(r, f))
        for d in (XL, ALIGNED)
        for r, _, fs in os.walk(d)
        for f in fs
    ) + os.path.getsize(os.path.join(OUT, "tiny-sdxl-reference.safetensors"))
    print(f"wrote tiny-sdxl fixtures ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
