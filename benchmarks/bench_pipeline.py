"""Time the MRC editing pipeline against diffusers' InstructPix2Pix on the same weights.

Both pipelines are built in the same process from identical components (the stock pipeline gets
deep copies, so no hooks are shared), run the same prompt, image, seed, scheduler and guidance,
and are timed alternately, ``--repeats`` times each after ``--warmup`` untimed runs; the median
wall time is reported. Three timings:

* ``stock``   -- ``StableDiffusionInstructPix2PixPipeline`` (3 guidance branches);
* ``mrc``     -- ``MRCInstructPix2PixPipeline`` at ``reward_guidance_scale=1`` (3 branches: the
  same work plus the reward encoder after ``conv_in`` and the reward time term); goal <= 1.03x;
* ``mrc+rg``  -- with reward guidance (a 4th branch with the null reward): about 4/3 of the UNet
  work by construction, reported separately.

The reward module has random (non-identity) weights, so nothing is skipped.

    python -m benchmarks.bench_pipeline                      # SD-proportioned "medium" config
    python -m benchmarks.bench_pipeline --preset small --repeats 3
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from dataclasses import asdict

import numpy as np
import PIL.Image
import torch
from diffusers import StableDiffusionInstructPix2PixPipeline
from tqdm import tqdm

from core.mrc import MultiRewardCondition, count_parameters
from core.pipeline import MRCInstructPix2PixPipeline
from core.sampling import SCHEDULERS
from core.tiny import TinyConfig, build_components

PRESETS = {
    # the unit-test configuration: 32 px, two UNet levels
    "small": TinyConfig(),
    # SD 1.5 proportions at 1/5 width: 4 levels (C0 x 1, 2, 4, 4), cross-attention on the first
    # three, 2 layers per block, 8x VAE factor (128 px -> 16x16 latents), 77 text tokens
    "medium": TinyConfig(
        image_size=128,
        vae_channels=(32, 64, 64, 64),
        unet_channels=(64, 128, 256, 256),
        unet_layers_per_block=2,
        unet_cross_attention=(True, True, True, False),
        text_dim=128,
        text_layers=4,
        text_heads=4,
        text_intermediate=512,
    ),
}


def build(preset: str, scheduler: str, device: str, dtype: torch.dtype):
    cfg = PRESETS[preset]
    parts = build_components(cfg, seed=0, scheduler=scheduler)
    stock_parts = copy.deepcopy(parts)
    torch.manual_seed(1)
    module = MultiRewardCondition.from_unet_config(
        parts["unet"].config, cfg.text_dim, identity_init=False
    )
    mrc = MRCInstructPix2PixPipeline(**parts, reward_module=module)
    stock = StableDiffusionInstructPix2PixPipeline(
        **stock_parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    for pipe in (mrc, stock):
        pipe.to(device)
        if dtype != torch.float32:
            pipe.to(dtype)
        pipe.set_progress_bar_config(disable=True)
    return cfg, mrc, stock


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="medium")
    ap.add_argument("--steps", type=int, default=10, help="denoising steps per call")
    ap.add_argument("--repeats", type=int, default=7, help="timed calls per variant")
    ap.add_argument("--warmup", type=int, default=2, help="untimed calls per variant first")
    ap.add_argument("--batch", type=int, default=1, help="prompts per call")
    ap.add_argument("--scheduler", choices=sorted(SCHEDULERS), default="euler_ancestral")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    ap.add_argument("--json", default="", help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    cfg, mrc, stock = build(args.preset, args.scheduler, args.device, dtype)

    size = cfg.image_size
    rng = np.random.RandomState(0)
    image = PIL.Image.fromarray((rng.rand(size, size, 3) * 255).astype(np.uint8))
    prompts = ["make the circle red"] * args.batch
    common = dict(image=image, num_inference_steps=args.steps, output_type="np")

    def call(name: str) -> tuple[float, float]:
        """(wall seconds, CPU seconds of this thread) of one pipeline call."""
        gen = torch.Generator(args.device).manual_seed(0)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.thread_time()
        if name == "stock":
            stock(prompts, generator=gen, **common)
        else:
            rg = 2.0 if name == "mrc+rg" else 1.0
            mrc(prompts, generator=gen, reward_guidance_scale=rg, **common)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0, time.thread_time() - c0

    names = ["stock", "mrc", "mrc+rg"]
    for _ in range(args.warmup):
        for name in names:
            call(name)
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for r in tqdm(range(args.repeats), desc="timing"):
        order = names if r % 2 == 0 else names[::-1]  # alternate to cancel drift
        for name in order:
            w, c = call(name)
            wall[name].append(w)
            cpu[name].append(c)

    def ratios(times: dict[str, list[float]], name: str) -> dict[str, float]:
        """Ratio of medians, and the median of the per-repeat (adjacent-in-time) ratios."""
        paired = [a / b for a, b in zip(times[name], times["stock"])]
        return {
            "of_medians": statistics.median(times[name]) / statistics.median(times["stock"]),
            "paired_median": statistics.median(paired),
        }

    result = {
        "preset": args.preset,
        "config": {k: v for k, v in asdict(cfg).items() if k != "words"},
        "device": args.device,
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "scheduler": args.scheduler,
        "steps": args.steps,
        "batch": args.batch,
        "repeats": args.repeats,
        "unet_params": count_parameters(mrc.unet),
        "reward_module_params": count_parameters(mrc.reward_module),
        "wall_s": wall,
        "cpu_s": cpu,
        "wall_ratio": {n: ratios(wall, n) for n in names[1:]},
        "cpu_ratio": {n: ratios(cpu, n) for n in names[1:]},
    }
    print(f"preset={args.preset} device={args.device} dtype={args.dtype} "
          f"threads={result['threads']} steps={args.steps} batch={args.batch} "
          f"repeats={args.repeats}")  # fmt: skip
    print(f"UNet {result['unet_params']:,} params; reward module "
          f"{result['reward_module_params']:,} params")  # fmt: skip
    print(f"  {'':7s} {'wall median':>12s} {'wall min':>9s} {'CPU median':>11s}")
    for n in names:
        print(f"  {n:7s} {statistics.median(wall[n]) * 1e3:9.1f} ms {min(wall[n]) * 1e3:6.1f} ms "
              f"{statistics.median(cpu[n]) * 1e3:8.1f} ms")  # fmt: skip
    for n, label in (("mrc", "goal <= 1.03"), ("mrc+rg", "4 UNet branches instead of 3")):
        wr, cr = result["wall_ratio"][n], result["cpu_ratio"][n]
        print(f"ratio {n:6s}/ stock: wall {wr['of_medians']:.3f} (paired {wr['paired_median']:.3f})"
              f", CPU {cr['of_medians']:.3f} (paired {cr['paired_median']:.3f})   [{label}]")  # fmt: skip
    if args.device == "cpu" and result["threads"] > 1:
        print("note: CPU time counts the main thread only; use --threads 1 for CPU-time ratios")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
