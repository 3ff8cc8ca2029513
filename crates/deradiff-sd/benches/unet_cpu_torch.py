"""diffusers' UNet forward and PyTorch's attention on the CPU at the shapes of `benches/unet_cpu.rs`,
for the side-by-side comparison (not part of CI).

The tiny SD UNet (tests/fixtures/tiny-sd/unet), batch 2, 8x8 ... 64x64 latents, 77 context
tokens, float32, torch.set_num_threads(THREADS) (default 2); and each kernel at the bench's
shapes: `scaled_dot_product_attention`, `group_norm` + `silu`, `conv2d`, `linear` and diffusers'
GEGLU gating (`h * gelu(g)` of the projection's two chunks). Prints the median and the fastest of
N timed calls per shape, after warm-up.

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


# (name, shape), as in unet_cpu.rs's group_norm_silu group (32 groups)
GROUP_NORM_SHAPES = [("2x32x64x64", (2, 32, 64, 64)), ("2x64x32x32", (2, 64, 32, 32)), ("2x96x16x16", (2, 96, 16, 16))]
# (name, Ci, Co, kernel, size, stride, padding), as in unet_cpu.rs's conv group (batch 2)
CONV_SHAPES = [
    ("32to32_3x3_64", 32, 32, 3, 64, 1, 1),
    ("64to64_3x3_32", 64, 64, 3, 32, 1, 1),
    ("4to32_3x3_64", 4, 32, 3, 64, 1, 1),
    ("32to4_3x3_64", 32, 4, 3, 64, 1, 1),
    ("64to32_1x1_64", 64, 32, 1, 64, 1, 0),
    ("32to32_3x3_64_s2", 32, 32, 3, 64, 2, 1),
    ("sd15_320to320_3x3_64", 320, 320, 3, 64, 1, 1),
    ("sd15_640to640_3x3_32", 640, 640, 3, 32, 1, 1),
    ("sd15_1280to1280_3x3_16", 1280, 1280, 3, 16, 1, 1),
    ("sd15_1280to1280_3x3_8", 1280, 1280, 3, 8, 1, 1),
]
# (name, tokens, K, N), as LINEAR_SHAPES in unet_cpu.rs
LINEAR_SHAPES = [
    ("to_q_32", 8192, 32, 32),
    ("ff_proj_32", 8192, 32, 256),
    ("ff_out_32", 8192, 128, 32),
    ("sd15_to_q_320", 8192, 320, 320),
    ("sd15_ff_proj_320", 8192, 320, 2560),
    ("sd15_ff_out_320", 8192, 1280, 320),
]
GEGLU_SHAPES = [("tiny_2x4096x256", 8192, 256), ("sd15_2x4096x2560", 8192, 2560)]
F = torch.nn.functional

with torch.inference_mode():
    for name, shape in GROUP_NORM_SHAPES:
        x, w, b = torch.randn(*shape), torch.randn(shape[1]), torch.randn(shape[1])
        print(f"group_norm_silu/torch/{name}: {timed(lambda: F.silu(F.group_norm(x, 32, w, b, 1e-5)), 20)}")
    for name, ci, co, k, size, stride, pad in CONV_SHAPES:
        x, w, b = torch.randn(2, ci, size, size), torch.randn(co, ci, k, k) * 0.1, torch.randn(co)
        print(f"conv/torch/{name}: {timed(lambda: F.conv2d(x, w, b, stride, pad), 20 if ci < 320 else 5)}")
    for name, m, k, n in LINEAR_SHAPES:
        x, w, b = torch.randn(2, m // 2, k), torch.randn(n, k) * 0.1, torch.randn(n)
        print(f"linear/torch/{name}: {timed(lambda: F.linear(x, w, b), 20)}")
    for name, m, two_f in GEGLU_SHAPES:
        x = torch.randn(2, m // 2, two_f)

        def gate(x=x):
            h, g = x.chunk(2, dim=-1)
            return h * F.gelu(g)

        print(f"geglu/torch/{name}: {timed(gate, 20)}")
    for name, n, lq, lk, d in ATTENTION_SHAPES:
        q, k, v = torch.randn(1, n, lq, d), torch.randn(1, n, lk, d), torch.randn(1, n, lk, d)
        sdpa = torch.nn.functional.scaled_dot_product_attention
        print(f"attention/torch/{name}: {timed(lambda: sdpa(q, k, v), 5 if lq * lk > 1 << 22 else 20)}")
    for size in (8, 16, 32, 64):
        x = torch.randn(2, unet.config.in_channels, size, size)
        forward = lambda: unet(x, 500.0, encoder_hidden_states=ctx)  # noqa: E731
        print(f"unet/torch/{size}x{size}: {timed(forward, 20 if size < 64 else 10)}")
