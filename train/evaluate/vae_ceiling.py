"""How good can an editor be through this VAE? The oracle's verdicts on VAE round trips.

A latent-diffusion editor can only output what its VAE decoder can draw. This check passes the
*ground-truth targets* of a Shapes benchmark through ``decode(encode(target))`` and asks the
oracle judge for its verdicts, per category: a perfect UNet could score no better. Use it to
accept a stage-0 VAE before training stages 1 and 2 on top of it (the Shapes demo asks for
>= 95% yes on every perspective; docs/training.md).

    python -m train.evaluate.vae_ceiling --pipeline runs/shapes_vae/pipeline --data runs/shapes32
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np
import torch

from core.rewards import PERSPECTIVES
from train.datasets import to_pixels


@torch.no_grad()
def vae_ceiling(pipeline: str, data: str, split: str = "bench", limit: int = 0) -> dict:
    """``{category: {perspective: yes-rate}}`` plus ``"all"``, for VAE round trips of targets."""
    from diffusers import AutoencoderKL
    from PIL import Image

    from data.shapes.folder import load_split
    from data.shapes.oracle import ShapesOracle

    vae = AutoencoderKL.from_pretrained(pipeline, subfolder="vae").eval()
    oracle = ShapesOracle()
    items = load_split(data, split)
    if limit:
        items = items[:limit]
    yes: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for start in range(0, len(items), 64):
        chunk = items[start : start + 64]
        size = chunk[0].load("target").shape[0]
        pix = torch.stack([to_pixels(Image.fromarray(it.load("target")), size) for it in chunk])
        out = vae.decode(vae.encode(pix).latent_dist.mode()).sample.clamp(-1, 1)
        imgs = ((out.permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().astype(np.uint8)
        for it, img in zip(chunk, imgs):
            verdict = oracle.evaluate(
                it.load("original"),
                it.instruction,
                img,
                it.load("target"),
                it.load("mask"),
                it.meta,
            )
            for p in PERSPECTIVES:
                yes[it.category][p].append(verdict[p][0])
                yes["all"][p].append(verdict[p][0])
    return {c: {p: float(np.mean(v)) for p, v in d.items()} for c, d in yes.items()}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--pipeline", required=True, help="a pipeline folder with a vae/ subfolder")
    ap.add_argument("--data", required=True, help="a Shapes folder (python -m data synth)")
    ap.add_argument("--split", default="bench", help="split whose targets are round-tripped")
    ap.add_argument("--limit", type=int, default=0, help="only the first N items (0: all)")
    args = ap.parse_args()
    rates = vae_ceiling(args.pipeline, args.data, args.split, args.limit)
    print(f"{'category':<12}" + "".join(f"{p:>12}" for p in PERSPECTIVES))
    for cat in sorted(rates, key=lambda c: (c == "all", c)):
        print(f"{cat:<12}" + "".join(f"{rates[cat][p]:>12.1%}" for p in PERSPECTIVES))


if __name__ == "__main__":
    main()
