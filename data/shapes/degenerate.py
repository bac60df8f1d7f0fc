"""Degenerate outputs: images that wreck the scene, which the oracle must never call "followed".

A model that outputs a flat colour, noise, or a shifted or zoomed copy of the picture has not
carried out the instruction, whatever the pixels of the edit region happen to show. These
generators make such outputs for any Shapes triplet; ``tests/test_oracle_degenerate.py`` pins
that the oracle refuses them, and

    python -m data.shapes.degenerate --per-category 40 --size 32

prints the table of ``docs/shapes.md`` ("What the oracle refuses"): for every category and kind,
the share of items whose output still passes *following* (score >= the yes threshold).

Every generator is deterministic given ``rng`` (the measurement seeds one per item and kind).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
from PIL import Image

from .edits import CATEGORIES
from .oracle import ShapesOracle
from .scene import rgb
from .synth import SynthConfig, Triplet, bench_scene

NOISE_SIGMA = 80.0  # heavy Gaussian noise (of 255)


def shift_px(size: int) -> int:
    """How far the shifted copies move: 4 px at 32 px, 8 px at 64 px."""
    return max(3, round(size / 8))


ZOOM = 1.5  # the zoomed copies show the central 1/ZOOM of the picture, enlarged


def _uniform(size: int, colour: np.ndarray) -> np.ndarray:
    out = np.empty((size, size, 3), np.uint8)
    out[:] = np.clip(np.rint(colour), 0, 255).astype(np.uint8)
    return out


def asked_colour(t: Triplet) -> np.ndarray:
    """The colour the instruction names (local, texture, background, add), else the target's
    mean colour (remove: the background colour that replaces the object)."""
    p, cat = t.edit.params, t.edit.category
    if cat in ("local", "texture", "background"):
        return rgb(p["colour"]).astype(np.float32)
    if cat == "add":
        return rgb(t.edit.new_object().colour).astype(np.float32)
    if cat == "remove":
        return rgb(t.scene.background).astype(np.float32)
    return t.target.reshape(-1, 3).mean(0)


def shifted(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``img`` moved by :func:`shift_px` left, right, up or down (edges replicated)."""
    s = shift_px(img.shape[0])
    dy, dx = [(0, s), (0, -s), (s, 0), (-s, 0)][int(rng.integers(4))]
    n = img.shape[0]
    ys = np.clip(np.arange(n) - dy, 0, n - 1)
    xs = np.clip(np.arange(n) - dx, 0, n - 1)
    return img[ys][:, xs]


def zoomed(img: np.ndarray, factor: float = ZOOM) -> np.ndarray:
    """The central 1/factor of ``img`` enlarged to the full size (bilinear)."""
    n = img.shape[0]
    half = n / (2 * factor)
    box = (n / 2 - half, n / 2 - half, n / 2 + half, n / 2 + half)
    return np.asarray(
        Image.fromarray(img).resize((n, n), Image.Resampling.BILINEAR, box=box), dtype=np.uint8
    )


def noisy(img: np.ndarray, rng: np.random.Generator, sigma: float = NOISE_SIGMA) -> np.ndarray:
    noise = rng.normal(0.0, sigma, img.shape)
    return np.clip(np.rint(img.astype(np.float64) + noise), 0, 255).astype(np.uint8)


Generator = Callable[[Triplet, np.random.Generator], np.ndarray]

KINDS: dict[str, Generator] = {
    "uniform-background": lambda t, r: _uniform(t.scene.size, rgb(t.scene.background)),
    "uniform-grey": lambda t, r: _uniform(t.scene.size, np.array([128, 128, 128])),
    "uniform-black": lambda t, r: _uniform(t.scene.size, np.zeros(3)),
    "uniform-white": lambda t, r: _uniform(t.scene.size, np.full(3, 255.0)),
    "uniform-asked": lambda t, r: _uniform(t.scene.size, asked_colour(t)),
    "uniform-mean": lambda t, r: _uniform(t.scene.size, t.target.reshape(-1, 3).mean(0)),
    "noise-uniform": lambda t, r: r.integers(0, 256, t.target.shape, dtype=np.uint8),
    "noise-input": lambda t, r: noisy(t.original, r),
    "noise-target": lambda t, r: noisy(t.target, r),
    "shift-input": lambda t, r: shifted(t.original, r),
    "shift-target": lambda t, r: shifted(t.target, r),
    "zoom-input": lambda t, r: zoomed(t.original),
    "zoom-target": lambda t, r: zoomed(t.target),
}
"""Every kind of degenerate output, by name: ``KINDS[kind](triplet, rng) -> (H, W, 3) uint8``."""


def degenerate(kind: str, t: Triplet, seed: int = 0) -> np.ndarray:
    """The degenerate output ``kind`` for triplet ``t`` (deterministic in ``seed`` and the id)."""
    if kind not in KINDS:
        raise ValueError(f"unknown degenerate kind {kind!r}; choose from {', '.join(KINDS)}")
    key = [seed, list(KINDS).index(kind)] + [ord(c) for c in t.id]
    return KINDS[kind](t, np.random.default_rng(key))


def bench_items(per_category: int, size: int = 32, seed: int = 0) -> list[Triplet]:
    """The first ``per_category`` Shapes-Edit scenes (one item per category each), in memory."""
    cfg = SynthConfig(train=0, bench=per_category, seed=seed, size=size)
    return [t for i in range(per_category) for t in bench_scene(i, cfg)]


def follow_passes(
    oracle: ShapesOracle, items: list[Triplet], kinds: list[str] | None = None, seed: int = 0
) -> dict[str, dict[str, list[bool]]]:
    """``{kind: {category: [following passed, per item]}}`` plus the kinds ``"target"`` and
    ``"input"`` (the ground truth and a copy of the original, for reference)."""
    kinds = list(KINDS) if kinds is None else kinds
    out: dict[str, dict[str, list[bool]]] = {}
    for kind in ["target", "input", *kinds]:
        per: dict[str, list[bool]] = {c: [] for c in CATEGORIES}
        for t in items:
            if kind == "target":
                e = t.target
            elif kind == "input":
                e = t.original
            else:
                e = degenerate(kind, t, seed)
            v = oracle.evaluate(t.original, t.edit.instruction, e, t.target, t.mask, t.meta)
            per[t.edit.category].append(v["following"][0])
        out[kind] = per
    return out


def table(rates: dict[str, dict[str, list[bool]]]) -> str:
    """A markdown table: one row per kind, one column per category, % passing following."""
    head = "| output | " + " | ".join(CATEGORIES) + " |"
    lines = [head, "|---|" + "---:|" * len(CATEGORIES)]
    for kind, per in rates.items():
        cells = [f"{100 * np.mean(per[c]):.0f}" if per[c] else "-" for c in CATEGORIES]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m data.shapes.degenerate",
        description="Share of Shapes-Edit items whose degenerate outputs pass the oracle's "
        "following check, per category (a markdown table).",
    )
    ap.add_argument("--per-category", type=int, default=40, help="items per category")
    ap.add_argument("--size", type=int, default=32, help="image side in pixels")
    ap.add_argument("--seed", type=int, default=0, help="benchmark and noise seed")
    args = ap.parse_args(argv)
    items = bench_items(args.per_category, args.size, args.seed)
    start = time.perf_counter()
    rates = follow_passes(ShapesOracle(), items, seed=args.seed)
    seconds = time.perf_counter() - start
    print(table(rates))
    calls = len(items) * (len(KINDS) + 2)
    print(f"\n{calls} oracle calls in {seconds:.1f} s ({1000 * seconds / calls:.1f} ms each)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
