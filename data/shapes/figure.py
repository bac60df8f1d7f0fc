"""Example grids of the Shapes domain for the docs.

``python -m data.shapes.figure [--out docs/img] [--seed 0] [--size 64]`` writes

* ``shapes_categories.png``: per instruction category, two examples (original | target | mask)
  with their instructions;
* ``shapes_corruptions.png``: per corruption type of the training split, one example
  (original | ground truth | edited) with the instruction and the oracle's scores and texts.
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .corrupt import (  # noqa: E402
    CORRUPTION_TYPES,
    FOLLOWING_TYPES,
    PRESERVING_TYPES,
    CorruptionConfig,
    corrupt,
    damages,
)
from .edits import CATEGORIES, apply_edit, sample_edit  # noqa: E402
from .oracle import ShapesOracle  # noqa: E402
from .scene import SceneConfig, random_scene, render  # noqa: E402


def _examples(category: str, rng: np.random.Generator, cfg: SceneConfig):
    while True:
        scene = random_scene(rng, cfg)
        edit = sample_edit(scene, category, rng, cfg)
        if edit is not None:
            return scene, edit


def _show(ax, img: np.ndarray, title: str = "", size: float = 7.0) -> None:
    ax.imshow(img, interpolation="nearest", vmin=0, vmax=255, cmap="gray")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=size)


def categories_figure(path: Path, seed: int = 0, size: int = 64, per_row: int = 2) -> None:
    cfg = SceneConfig(size=size)
    rng = np.random.default_rng([seed, 7])
    fig, axes = plt.subplots(
        len(CATEGORIES), 3 * per_row, figsize=(2.0 * 3 * per_row, 2.35 * len(CATEGORIES))
    )
    for r, cat in enumerate(CATEGORIES):
        for k in range(per_row):
            scene, edit = _examples(cat, rng, cfg)
            res = apply_edit(scene, edit)
            a = axes[r, 3 * k : 3 * k + 3]
            _show(a[0], render(scene), "original")
            _show(a[1], res.target, "target")
            _show(a[2], res.mask.astype(np.uint8) * 255, "edit mask")
            a[1].text(
                0.5,
                -0.08,
                "\n".join(textwrap.wrap(f'{cat}: "{edit.instruction}"', 44)),
                transform=a[1].transAxes,
                ha="center",
                va="top",
                fontsize=8,
            )
    fig.suptitle(
        "Shapes: one instruction category per row (original | ground-truth target | edit region)",
        fontsize=11,
    )
    fig.tight_layout(h_pad=2.2, rect=(0, 0, 1, 0.985))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def corruptions_figure(path: Path, seed: int = 0, size: int = 64) -> None:
    cfg = SceneConfig(size=size)
    oracle = ShapesOracle()
    rows = []
    rng = np.random.default_rng([seed, 11])
    for kind in CORRUPTION_TYPES:
        group = (
            "following"
            if kind in FOLLOWING_TYPES
            else "preserving"
            if kind in PRESERVING_TYPES
            else "quality"
        )
        while True:
            cat = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
            scene, edit = _examples(cat, rng, cfg)
            force = {"following": None, "preserving": None, "quality": None, group: kind}
            try:
                noisy = corrupt(scene, edit, rng, CorruptionConfig(), cfg, force=force)
            except ValueError:
                continue
            break
        res = apply_edit(scene, edit)
        meta = {"size": size, "scene": scene.to_dict(), "edit": edit.to_dict()}
        r = oracle.annotate(
            render(scene), edit.instruction, noisy.edited, res.target, res.mask, meta
        )
        rows.append((kind, scene, edit, res.target, noisy.edited, r))
    fig, axes = plt.subplots(
        len(rows), 4, figsize=(11, 1.75 * len(rows)), gridspec_kw={"width_ratios": [1, 1, 1, 4.2]}
    )
    for a, (kind, scene, edit, target, edited, r) in zip(axes, rows):
        _show(a[0], render(scene), "original")
        _show(a[1], target, "ground truth")
        _show(a[2], edited, f"edited: {kind}")
        a[3].axis("off")
        hit = " + ".join(damages(kind, edit.category))
        lines = [f'{kind}  (damages {hit})    "{edit.instruction}"']
        for p, lab in r.items():
            lines.append(f"{p:<10} {lab.score:.1f}  " + (lab.text or "-"))
        wrapped = [
            w
            for line in lines
            for w in (textwrap.wrap(line, 78, subsequent_indent=" " * 16) or [""])
        ]
        a[3].text(
            0.0,
            0.5,
            "\n".join(wrapped[:7]),
            transform=a[3].transAxes,
            va="center",
            fontsize=8.5,
            family="monospace",
        )
    fig.suptitle(
        "Shapes training noise: one corruption type per example, with the oracle's scores and texts",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m data.shapes.figure", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--out", type=Path, default=Path("docs/img"), help="folder for the PNGs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=64)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    categories_figure(args.out / "shapes_categories.png", args.seed, args.size)
    corruptions_figure(args.out / "shapes_corruptions.png", args.seed, args.size)
    print(f"wrote {args.out / 'shapes_categories.png'} and {args.out / 'shapes_corruptions.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
