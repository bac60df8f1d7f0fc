"""Step cost of the Shapes demo UNet: the shipped layout against the first demo models' layout.

The first Shapes demo models (session 2) had cross-attention at 16x16 and 8x8 and cost ~2.4 s per
step of batch 64 on one thread; the budget bought ~290k samples. This script times one training
step (forward, backward, fused AdamW) of the candidate layouts built with ``core.tiny`` exactly as
``python -m train`` builds them (pixel space: 6 channels in, 3 out, 32 px; 77 text tokens of
width 64), in the same process, and prints seconds per step and the speed-up over the old layout.

    OMP_NUM_THREADS=1 python benchmarks/bench_step_cost.py          # ~2 minutes here
    python benchmarks/bench_step_cost.py --batch 64 --steps 5 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.tiny import TinyConfig, build_unet  # noqa: E402

LAYOUTS = {  # name -> (UNet widths, cross-attention per level)
    "first demo (attention 16x16 + 8x8)": ((32, 64, 64), (False, True, True)),
    "shipped (attention 8x8)": ((32, 64, 64), (False, False, True)),
    "narrow first level (16-32-64, 8x8)": ((16, 32, 64), (False, False, True)),
    "wider bottom (32-64-128, 8x8)": ((32, 64, 128), (False, False, True)),
}


def time_layout(channels, attention, batch: int, steps: int, tokens: int) -> tuple[float, int]:
    cfg = TinyConfig(
        image_size=32, vae_channels=(12,), latent_channels=3, unet_channels=channels,
        unet_cross_attention=attention, text_dim=64, max_length=tokens,
    )  # fmt: skip
    unet = build_unet(cfg).train()
    opt = torch.optim.AdamW(unet.parameters(), fused=True)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 6, 32, 32, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    text = torch.randn(batch, tokens, 64, generator=g)
    times = []
    for i in range(steps + 1):  # the first step warms up allocators and kernels
        t0 = time.perf_counter()
        unet(x, t, text).sample.pow(2).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.median(times), sum(p.numel() for p in unet.parameters())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=64, help="examples per step (the demo's 64)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per layout (median)")
    p.add_argument("--tokens", type=int, default=77, help="text tokens (SD: 77)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    base = None
    print(f"batch {args.batch}, {args.tokens} tokens, {torch.get_num_threads()} thread(s)")
    for name, (channels, attention) in LAYOUTS.items():
        sec, n = time_layout(channels, attention, args.batch, args.steps, args.tokens)
        base = base or sec
        print(f"{name:38s} {n / 1e6:5.2f} M params  {sec:6.3f} s/step  speed-up {base / sec:4.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
