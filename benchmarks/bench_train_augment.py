"""What random flips cost the cached trainer, and its speed-up with them on.

Three loops train the same model (same weights, data, batch size, seed) in the same process,
alternating in rounds so that a load change on a shared machine hits all of them:

1. ``python -m train`` with the cache, no augmentation: the baseline of this run;
2. ``python -m train --random_flip`` with the cache (both views cached, each example's view chosen
   per epoch);
3. the straightforward loop of ``bench_train_cache.py`` (written like diffusers'
   ``train_instruct_pix2pix.py``: VAE and text encoder applied in every step), with each pair
   flipped with probability 0.5 as the peer's ``--random_flip`` does.

It prints median steady-state samples/s of each, the flip's cost as the ratio (2) / (1), the
speed-up (2) / (3) (the goal: >= 1.5x), and the cache build time with and without the flipped
views (the one-off price of exact flips).

    OMP_NUM_THREADS=1 python benchmarks/bench_train_augment.py          # ~4 minutes on an idle core
    python benchmarks/bench_train_augment.py --rounds 2 --steps 10 --examples 256
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import benchmarks.bench_train_cache as plain  # noqa: E402
from train.checkpoints import read_metrics  # noqa: E402
from train.config import TrainConfig  # noqa: E402
from train.datasets import load_pair  # noqa: E402
from train.loop import train  # noqa: E402


def flipping_load_pair(ex, resolution):
    """load_pair followed by the peer's RandomHorizontalFlip on both images (p = 0.5)."""
    original, edited = load_pair(ex, resolution)
    if torch.rand(()) < 0.5:
        original, edited = original.flip(-1), edited.flip(-1)
    return original, edited


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--steps", type=int, default=15, help="optimizer steps per loop and round")
    ap.add_argument("--warmup", type=int, default=3, help="first steps of each run left out")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of the three loops")
    ap.add_argument("--batch", type=int, default=16, help="examples per step")
    ap.add_argument("--examples", type=int, default=512, help="training examples generated")
    ap.add_argument("--stage", type=int, default=2, choices=(1, 2))
    ap.add_argument("--tiny_config", type=json.loads, default=plain.SD_PROPORTIONED)
    args = ap.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "data"
        plain.make_data(data, args.examples, args.tiny_config["image_size"])
        base = dict(
            data="rewardedit", data_dir=str(data), rewards_json=str(data / "labels.json"),
            original_pattern="{id}_0.png", edited_pattern="{id}_1.png",
            prompt_pattern="{dir}/prompt_{name}.json", stage=args.stage,
            tiny_config=args.tiny_config, train_batch_size=args.batch,
            max_train_steps=args.steps, checkpointing_steps=0, report_to="none",
        )  # fmt: skip
        build = {}
        for name, extra in (("no flip", {}), ("flip", {"random_flip": True})):
            cache = tmp / f"cache-{name}"
            warm = base | extra | {"cache_dir": str(cache), "max_train_steps": 1}
            train(TrainConfig.from_dict(warm | {"output_dir": str(tmp / f"warm-{name}")}))
            build[name] = json.loads(next(cache.glob("*/meta.json")).read_text())["build_seconds"]
        loops = {
            "trainer, cached": base | {"cache_dir": str(tmp / "cache-no flip")},
            "trainer, cached, --random_flip": base
            | {"cache_dir": str(tmp / "cache-flip"), "random_flip": True},
        }
        results: dict[str, list[float]] = {}
        for r in range(args.rounds):
            for i, (name, values) in enumerate(loops.items()):
                out = tmp / f"{r}-{i}"
                train(TrainConfig.from_dict(values | {"output_dir": str(out)}))
                sps = [m["samples_per_s"] for m in read_metrics(out)]
                results.setdefault(name, []).extend(sps[args.warmup :])
            cfg = TrainConfig.from_dict(loops["trainer, cached"] | {"output_dir": str(tmp / "n")})
            plain.load_pair = flipping_load_pair  # the peer's per-step flip in its transform
            try:
                sps = plain.naive_loop(cfg, args.steps)
            finally:
                plain.load_pair = load_pair
            results.setdefault("straightforward loop, flip", []).extend(sps[args.warmup :])
    print(f"\n{'loop':<32} {'samples/s':>10} {'(p25-p75)':>14}")
    med = {}
    for name, sps in results.items():
        med[name] = statistics.median(sps)
        q = statistics.quantiles(sps, n=4)
        print(f"{name:<32} {med[name]:>10.1f} {f'({q[0]:.1f}-{q[2]:.1f})':>14}")
    flip, baseline = med["trainer, cached, --random_flip"], med["trainer, cached"]
    print(f"\nflip cost: cached trainer with/without --random_flip = {flip / baseline:.2f}x")
    print(
        "speed-up with flips vs the straightforward loop with flips: "
        f"{flip / med['straightforward loop, flip']:.2f}x (goal >= 1.5x)"
    )
    print(
        f"cache build for {args.examples} examples: {build['no flip']:.1f} s without flips, "
        f"{build['flip']:.1f} s with both views ({build['flip'] / build['no flip']:.2f}x)"
    )


if __name__ == "__main__":
    main()
