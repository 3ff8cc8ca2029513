#!/usr/bin/env python3
"""Per-step time of realigned sampling, deradiff vs diffusers + PyTorch, on one machine, side by side.

For each dtype it times four things with the same checkpoint, prompt, size, guidance and scheduler
(Euler ancestral), and reports per-step milliseconds and the ratio deradiff ÷ diffusers:

* deradiff, one UNet:   `deradiff sample --reference REF` (the reference alone);
* deradiff, realigned:  `deradiff sample --reference REF --aligned ALIGNED --lambda 0.5`;
* diffusers, one UNet:  the stock pipeline (`StableDiffusionPipeline` / `StableDiffusionXLPipeline`);
* diffusers, realigned: the same pipeline's components in a two-UNet loop, each UNet with
  classifier-free guidance, the two noise predictions mixed with weights 1 − λ, λ (a 30-line
  diffusers loop: what a researcher would write).

A per-step time is the difference of two runs with NA and NB steps divided by NB − NA (loading,
text encoding and decoding cancel), each the fastest of `--repeats` runs after a warm-up. The GPU
is synchronised before each clock read (PyTorch) and each deradiff run is a whole process (its
exit waits for the GPU). Peak GPU memory: PyTorch's `max_memory_allocated` for diffusers; for
deradiff the largest `used_memory` `nvidia-smi` reports for its process while it runs (when
`nvidia-smi` exists; CUDA's context included, so it reads high by a few hundred MiB).

    python scripts/gpu/bench.py --deradiff target/release/deradiff \\
        --reference sd15-random --aligned sd15-random-aligned/unet --dtype f16 bf16 --size 512 \\
        --out bench-sd15.json

`--device cpu` runs the same measurement on the CPU (for checking the script on the tiny test
fixtures; CPU numbers are what `benches/` measure better). SDXL is detected from the reference's
`model_index.json`. Full-size random checkpoints: `scripts/gpu/make_random_pipeline.py`.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import torch

PROMPT = "a red apple on a wooden table"
LAMBDA = 0.5
DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


def per_step(run, na, nb, repeats):
    """(per-step seconds, seconds at na, seconds at nb): the fastest of `repeats` runs each."""
    run(min(na, 2))  # warm-up (kernel JIT, allocator, caches)
    a = min(run(na) for _ in range(repeats))
    b = min(run(nb) for _ in range(repeats))
    return (b - a) / (nb - na), a, b


class GpuMemoryPoll:
    """The largest memory nvidia-smi reports for a process while it runs (MiB), or None."""

    def __init__(self, pid):
        self.pid, self.peak, self.stop = pid, None, threading.Event()
        self.smi = shutil.which("nvidia-smi")

    def __enter__(self):
        if self.smi:
            self.thread = threading.Thread(target=self.poll, daemon=True)
            self.thread.start()
        return self

    def poll(self):
        while not self.stop.is_set():
            out = subprocess.run(
                [self.smi, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                capture_output=True, text=True,
            ).stdout
            for line in out.splitlines():
                parts = [p.strip() for p in line.split(",")]
                if len(parts) == 2 and parts[0] == str(self.pid) and parts[1].isdigit():
                    self.peak = max(self.peak or 0, int(parts[1]))
            self.stop.wait(0.05)

    def __exit__(self, *exc):
        self.stop.set()
        if self.smi:
            self.thread.join()


def deradiff_runner(args, dtype, aligned, peaks):
    tmp = tempfile.mkdtemp(prefix="deradiff-bench-")

    def run(steps):
        cmd = [args.deradiff, "sample", "--reference", args.reference, "--prompt", PROMPT, "--steps", str(steps),
               "--size", f"{args.size}x{args.size}", "--guidance", str(args.guidance), "--scheduler", "euler-a",
               "--dtype", dtype, "--device", args.device, "--seed", "0", "--quiet",
               "--out", os.path.join(tmp, f"{dtype}-{steps}.png")]
        if aligned:
            cmd += ["--aligned", aligned, "--lambda", str(LAMBDA)]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        with GpuMemoryPoll(proc.pid) as poll:
            out, err = proc.communicate()
        seconds = time.perf_counter() - start
        if proc.returncode:
            sys.exit(f"deradiff failed ({proc.returncode}): {' '.join(cmd)}\n{out[-2000:]}{err[-4000:]}")
        if poll.peak is not None:
            peaks.append(poll.peak)
        return seconds

    return run


def diffusers_runners(args, dtype):
    from diffusers import DiffusionPipeline, EulerAncestralDiscreteScheduler, UNet2DConditionModel

    dev = args.device
    dt = DTYPES[dtype]
    pipe = DiffusionPipeline.from_pretrained(args.reference, torch_dtype=dt)
    for name in ("safety_checker", "feature_extractor"):
        if getattr(pipe, name, None) is not None:
            setattr(pipe, name, None)
    pipe = pipe.to(dev)
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    sdxl = hasattr(pipe, "text_encoder_2")
    unet2 = UNet2DConditionModel.from_pretrained(args.aligned_unet, torch_dtype=dt).to(dev)
    sync = torch.cuda.synchronize if dev.startswith("cuda") else (lambda: None)
    h = args.size
    g = args.guidance

    def timed(f):
        sync()
        s = time.perf_counter()
        f()
        sync()
        return time.perf_counter() - s

    def single(n):
        gen = torch.Generator(dev).manual_seed(0)
        return timed(lambda: pipe(PROMPT, num_inference_steps=n, height=h, width=h, guidance_scale=g,
                                  generator=gen, output_type="latent"))

    @torch.no_grad()
    def loop(n):
        if sdxl:
            pe, ne, pp, npp = pipe.encode_prompt(PROMPT, device=dev, num_images_per_prompt=1,
                                                 do_classifier_free_guidance=True)
            added = {"text_embeds": torch.cat([npp, pp]),
                     "time_ids": torch.tensor([[h, h, 0, 0, h, h]] * 2, device=dev, dtype=dt)}
        else:
            pe, ne = pipe.encode_prompt(PROMPT, dev, 1, True)
            added = None
        emb = torch.cat([ne, pe])
        s = pipe.scheduler
        s.set_timesteps(n, device=dev)
        gen = torch.Generator(dev).manual_seed(0)
        x = torch.randn(1, 4, h // 8, h // 8, device=dev, dtype=dt, generator=gen) * s.init_noise_sigma
        for t in s.timesteps:
            xi = s.scale_model_input(torch.cat([x] * 2), t)
            es = []
            for u in (pipe.unet, unet2):
                kw = {"added_cond_kwargs": added} if added else {}
                eu, ec = u(xi, t, encoder_hidden_states=emb, **kw).sample.chunk(2)
                es.append(eu + g * (ec - eu))
            x = s.step((1 - LAMBDA) * es[0] + LAMBDA * es[1], t, x, generator=gen).prev_sample

    def realigned(n):
        return timed(lambda: loop(n))

    return single, realigned


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--deradiff", required=True, help="the deradiff binary (built with --features cuda for a GPU)")
    p.add_argument("--reference", required=True, help="diffusers pipeline folder")
    p.add_argument("--aligned", required=True, help="aligned UNet folder (pipeline/unet or a unet/ folder)")
    p.add_argument("--dtype", nargs="+", default=["f16"], choices=sorted(DTYPES))
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--device", default="cuda", help="cuda (cuda:N) or cpu")
    p.add_argument("--na", type=int, default=5, help="steps of the short run")
    p.add_argument("--nb", type=int, default=25, help="steps of the long run")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args()
    if args.nb <= args.na or args.na < 1:
        sys.exit("--nb must exceed --na, both at least 1")
    args.aligned_unet = (os.path.join(args.aligned, "unet")
                         if os.path.isfile(os.path.join(args.aligned, "unet", "config.json")) else args.aligned)
    with open(os.path.join(args.reference, "model_index.json")) as f:
        kind = json.load(f).get("_class_name", "?")

    results = []
    for dtype in args.dtype:
        row = {"dtype": dtype, "pipeline": kind, "size": args.size, "device": args.device}
        for label, aligned in [("one_unet", None), ("realigned", args.aligned)]:
            peaks = []
            step, a, b = per_step(deradiff_runner(args, dtype, aligned, peaks), args.na, args.nb, args.repeats)
            row[f"deradiff_{label}_ms"] = step * 1e3
            row[f"deradiff_{label}_peak_mib"] = max(peaks) if peaks else None
        single, realigned = diffusers_runners(args, dtype)
        cuda = args.device.startswith("cuda")
        for label, run in [("one_unet", single), ("realigned", realigned)]:
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            step, a, b = per_step(run, args.na, args.nb, args.repeats)
            row[f"diffusers_{label}_ms"] = step * 1e3
            # The peak over the timed runs themselves (PyTorch's allocator).
            row[f"diffusers_{label}_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
            row[f"ratio_{label}"] = row[f"deradiff_{label}_ms"] / row[f"diffusers_{label}_ms"]
        results.append(row)
        if cuda:
            torch.cuda.empty_cache()

    print(f"{kind}, {args.size} px, Euler ancestral, guidance {args.guidance}, {args.device}; per denoising step")
    print("| dtype | | deradiff | diffusers | deradiff ÷ diffusers | peak MiB (deradiff / diffusers) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in results:
        for label in ("one_unet", "realigned"):
            peaks = (r[f"deradiff_{label}_peak_mib"], r[f"diffusers_{label}_peak_mib"])
            print(f"| {r['dtype']} | {label.replace('_', ' ')} | {r[f'deradiff_{label}_ms']:.2f} ms | "
                  f"{r[f'diffusers_{label}_ms']:.2f} ms | {r[f'ratio_{label}']:.3f} | "
                  f"{' / '.join('-' if v is None else f'{v:.0f}' for v in peaks)} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"prompt": PROMPT, "lambda": LAMBDA, "na": args.na, "nb": args.nb, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
