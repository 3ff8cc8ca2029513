"""diffusers' UNet forward and PyTorch's attention on the CPU at the shapes of `benches/unet_cpu.rs`,
for the side-by-side comparison (not part of CI).

The tiny SD UNet (tests/fixtures/tiny-sd/unet), batch 2, 8x8 ... 64x64 latents, 77 context
tokens, float32, torch.set_num_threads(THREADS) (default 2); and
`torch.nn.functional.scaled_dot_product_attention` at the bench's attention shapes. Prints the
median and the fastest of N timed calls per shape, after warm-up.

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

# (name, N = batch x heads, Lq, Lk, D), as ATTENTION_SHAPES in unet_cpu.rs
ATTENTION_SHAPES = [
    ("self_16x16", 4, 256, 256, 16),
    ("self_32x32", 4, 1024, 1024, 16),
    ("self_64x64", 4, 4096, 4096, 16),
    ("cross_64x64", 4, 4096, 77, 16),
    ("self_32x32_8heads_d8", 16, 1024, 1024, 8),
    ("sd15_self_64x64", 16, 4096, 4096, 40),
    ("sd15_cross_64x64", 16, 4096, 77, 40),
]


def timed(f, runs):
    for _ in range(2):
        f()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return f"median {statistics.median(times) * 1e3:.3f} ms, min {min(times) * 1e3:.3f} ms"


with torch.inference_mode():
    for name, n, lq, lk, d in ATTENTION_SHAPES:
        q, k, v = torch.randn(1, n, lq, d), torch.randn(1, n, lk, d), torch.randn(1, n, lk, d)
        sdpa = torch.nn.functional.scaled_dot_product_attention
        print(f"attention/torch/{name}: {timed(lambda: sdpa(q, k, v), 5 if lq * lk > 1 << 22 else 20)}")
    for size in (8, 16, 32, 64):
        x = torch.randn(2, unet.config.in_channels, size, size)
        forward = lambda: unet(x, 500.0, encoder_hidden_states=ctx)  # noqa: E731
        print(f"unet/torch/{size}x{size}: {timed(forward, 20 if size < 64 else 10)}")
