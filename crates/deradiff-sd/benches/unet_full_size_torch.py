"""PyTorch / diffusers counterpart of `examples/unet_full_size.rs`: one full-size SD1.5-shaped
UNet forward on the CPU, random weights, batch 2 (classifier-free guidance), 4 x size x size
latents, 77 context tokens of 768; prints each forward's time, the median of the timed ones and
the peak resident memory (ru_maxrss).

    python benches/unet_full_size_torch.py [size=64] [f32|f16] [runs=2] [threads=2]
"""

import resource
import statistics
import sys
import time

import torch
from diffusers import UNet2DConditionModel

# runwayml/stable-diffusion-v1-5 unet/config.json
SD15_UNET = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}


def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main():
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    dtype = {"f32": torch.float32, "f16": torch.float16}[sys.argv[2] if len(sys.argv) > 2 else "f32"]
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    threads = int(sys.argv[4]) if len(sys.argv) > 4 else 2
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    unet = UNet2DConditionModel(**SD15_UNET).to(dtype).eval()
    build_s = time.perf_counter() - t0
    rss_built = peak_mib()
    x = torch.randn(2, 4, size, size, dtype=dtype)
    ctx = torch.randn(2, 77, 768, dtype=dtype)
    t = torch.tensor(500.0)
    times = []
    with torch.inference_mode():
        for i in range(runs + 1):
            s = time.perf_counter()
            out = unet(x, t, encoder_hidden_states=ctx).sample
            s = time.perf_counter() - s
            print(f"{'warm-up' if i == 0 else 'timed'} forward: {s:.2f} s (output max |x| {out.abs().max():.3f})")
            if i > 0:
                times.append(s)
    median = statistics.median(times) if times else float("nan")
    print(
        f"torch {dtype} batch 2 {size}x{size}: median {median:.2f} s per forward over {runs}; built in {build_s:.1f} s; "
        f"peak RSS after build {rss_built:.0f} MiB, peak {peak_mib():.0f} MiB; threads {torch.get_num_threads()}"
    )


if __name__ == "__main__":
    main()
