"""diffusers' UNet forward on the CPU at the shapes of `benches/unet_cpu.rs`, for the side-by-side
comparison (not part of CI).

The tiny SD UNet (tests/fixtures/tiny-sd/unet), batch 2, 8x8 ... 64x64 latents, 77 context
tokens, float32, torch.set_num_threads(THREADS) (default 2). Prints the median and the fastest of
N timed forwards per size, after warm-up.

Run: /path/to/venv/bin/python crates/deradiff-sd/benches/unet_cpu_torch.py [THREADS]
"""

import pathlib
import statistics
import sys
import time

import torch
from diffusers import UNet2DConditionModel

THREADS = int(sys.argv[1]) if len(sys.argv) > 1 else 2
torch.set_num_threads(THREADS)
torch.manual_seed(0)
here = pathlib.Path(__file__).resolve().parent.parent
unet = UNet2DConditionModel.from_pretrained(here / "tests/fixtures/tiny-sd/unet").float().eval()
ctx = torch.randn(2, 77, unet.config.cross_attention_dim)
print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
with torch.inference_mode():
    for size in (8, 16, 32, 64):
        x = torch.randn(2, unet.config.in_channels, size, size)
        runs = 20 if size < 64 else 10
        for _ in range(3):
            unet(x, 500.0, encoder_hidden_states=ctx)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            unet(x, 500.0, encoder_hidden_states=ctx)
            times.append(time.perf_counter() - t0)
        print(f"unet/torch/{size}x{size}: median {statistics.median(times) * 1e3:.2f} ms, min {min(times) * 1e3:.2f} ms")
