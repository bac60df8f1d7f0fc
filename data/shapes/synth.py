"""Generate Shapes datasets: the noisy training split and the Shapes-Edit benchmark.

``python -m data synth --out DIR [--train N] [--bench 80] [--seed S] [--size PX] [--workers W]
[--db STORE]``

Determinism: triplet ``i`` of a split draws everything from its own generator
``numpy.random.default_rng([seed, split_code, i])``, so the output is identical (byte for byte)
whatever the number of workers or the order they finish in, and any single triplet can be
regenerated on its own (:func:`train_triplet`, :func:`bench_scene`).

* **train**: a random scene, a random category (uniform over the seven), a random phrasing;
  then the noise of :mod:`data.shapes.corrupt`; the edited image is the (possibly corrupted)
  ground truth, labelled by the oracle judge.
* **bench**: ``--bench`` scenes (2-4 objects) x 7 categories, clean ground truth and no edited
  image: like Real-Edit, 80 scenes give 560 items.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from core.rewards import Rewards

from .corrupt import CorruptionConfig, corrupt
from .edits import CATEGORIES, Edit, apply_edit, sample_edit
from .folder import FORMAT_VERSION, SPLITS, ShapesItem, save_png
from .oracle import ShapesOracle
from .scene import MAX_SIZE, MIN_SIZE, Scene, SceneConfig, random_scene, render

SPLIT_CODE = {"train": 0, "bench": 1}


@dataclass(frozen=True)
class SynthConfig:
    """What ``python -m data synth`` writes."""

    train: int = 20_000  # training triplets
    bench: int = 80  # benchmark scenes (x 7 categories)
    seed: int = 0
    size: int = 64  # image side in pixels, 32..256
    corruption: CorruptionConfig = field(default_factory=CorruptionConfig)

    def __post_init__(self) -> None:
        if self.train < 0 or self.bench < 0:
            raise ValueError("--train and --bench must be >= 0")
        if self.seed < 0:
            raise ValueError(f"the seed must be >= 0, got {self.seed}")

    @property
    def scene(self) -> SceneConfig:
        return SceneConfig(size=self.size)

    @property
    def bench_scene(self) -> SceneConfig:
        return SceneConfig(size=self.size, min_objects=2)


@dataclass
class Triplet:
    """One generated item in memory (images as arrays)."""

    id: str
    split: str
    scene: Scene
    edit: Edit
    original: np.ndarray  # (H, W, 3) uint8
    target: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) bool
    edited: np.ndarray | None = None  # (H, W, 3) uint8; None in the benchmark
    corruptions: list[dict[str, Any]] = field(default_factory=list)
    rewards: Rewards | None = None

    @property
    def meta(self) -> dict[str, Any]:
        return {"size": self.scene.size, "scene": self.scene.to_dict(), "edit": self.edit.to_dict()}


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLIT_CODE[split], index])


def train_triplet(index: int, cfg: SynthConfig, oracle: ShapesOracle | None = None) -> Triplet:
    """Training triplet ``index``: scene, edit, injected noise and oracle labels."""
    rng = _rng(cfg.seed, "train", index)
    scfg = cfg.scene
    while True:
        scene = random_scene(rng, scfg)
        first = int(rng.integers(len(CATEGORIES)))
        for k in range(len(CATEGORIES)):  # the drawn category, else the next possible one
            edit = sample_edit(scene, CATEGORIES[(first + k) % len(CATEGORIES)], rng, scfg)
            if edit is not None:
                break
        if edit is not None:
            break
    res = apply_edit(scene, edit)
    noisy = corrupt(scene, edit, rng, cfg.corruption, scfg)
    original = render(scene)
    oracle = oracle or ShapesOracle()
    t = Triplet(
        f"train-{index:06d}",
        "train",
        scene,
        edit,
        original,
        res.target,
        res.mask,
        noisy.edited,
        noisy.corruptions,
    )
    t.rewards = oracle.annotate(
        original, edit.instruction, noisy.edited, res.target, res.mask, t.meta
    )
    return t


def bench_scene(index: int, cfg: SynthConfig) -> list[Triplet]:
    """Benchmark scene ``index`` with one clean item per category (7 items)."""
    rng = _rng(cfg.seed, "bench", index)
    scfg = cfg.bench_scene
    while True:
        scene = random_scene(rng, scfg)
        edits = [sample_edit(scene, c, rng, scfg) for c in CATEGORIES]
        if all(e is not None for e in edits):
            break
    original = render(scene)
    items = []
    for edit in edits:
        res = apply_edit(scene, edit)
        items.append(
            Triplet(
                f"bench-{index:03d}-{edit.category}",
                "bench",
                scene,
                edit,
                original,
                res.target,
                res.mask,
            )
        )
    return items


# -- writing --------------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _init_worker(cfg: SynthConfig, out: str) -> None:
    _WORKER.update(cfg=cfg, out=Path(out), oracle=ShapesOracle())


def _write_train(index: int) -> str:
    cfg, out = _WORKER["cfg"], _WORKER["out"]
    t = train_triplet(index, cfg, _WORKER["oracle"])
    root = out / "train"
    name = f"{index:06d}.png"
    paths = {k: root / k / name for k in ("original", "edited", "target", "mask")}
    for kind, path in paths.items():
        save_png(getattr(t, kind), path)
    item = ShapesItem(
        t.id,
        "train",
        t.edit.instruction,
        t.edit.category,
        paths["original"],
        paths["target"],
        paths["mask"],
        t.meta,
        paths["edited"],
        t.rewards,
        tuple(t.corruptions),
    )
    return json.dumps(item.to_record(root), separators=(",", ":"))


def _write_bench(index: int) -> str:
    cfg, out = _WORKER["cfg"], _WORKER["out"]
    items = bench_scene(index, cfg)
    root = out / "bench"
    original = root / "original" / f"{index:03d}.png"
    save_png(items[0].original, original)
    lines = []
    for t in items:
        name = f"{index:03d}_{t.edit.category}.png"
        target, mask = root / "target" / name, root / "mask" / name
        save_png(t.target, target)
        save_png(t.mask, mask)
        item = ShapesItem(
            t.id, "bench", t.edit.instruction, t.edit.category, original, target, mask, t.meta
        )
        lines.append(json.dumps(item.to_record(root), separators=(",", ":")))
    return "\n".join(lines)


def synthesize(
    out: str | Path,
    cfg: SynthConfig,
    workers: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Write both splits to ``out``; returns the folder's info.json content."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"{out} exists and is not empty; choose another --out or pass --overwrite"
            )
        if not (out / "info.json").is_file():
            raise FileExistsError(
                f"{out} is not empty and is not a Shapes folder; refusing to delete it"
            )
        shutil.rmtree(out)
    for split in SPLITS:
        kinds = (
            ("original", "edited", "target", "mask")
            if split == "train"
            else ("original", "target", "mask")
        )
        for kind in kinds:
            (out / split / kind).mkdir(parents=True, exist_ok=True)
    workers = workers or os.cpu_count() or 1
    start = time.perf_counter()
    info: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "complete": False,  # until both manifests are written (an interrupted run stays marked)
        "generator": "data.shapes",
        "oracle": f"{ShapesOracle.name} v{ShapesOracle.version}",
        "config": {**asdict(replace(cfg, corruption=None)), "corruption": asdict(cfg.corruption)},
    }
    (out / "info.json").write_text(json.dumps(info, indent=1))
    jobs = [("train", cfg.train, _write_train), ("bench", cfg.bench, _write_bench)]
    counts = {}
    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    for split, n, fn in jobs:
        tmp = out / split / "manifest.jsonl.partial"
        with tmp.open("w", encoding="utf-8") as fh:
            bar = tqdm(
                total=n,
                desc=f"synth {split}",
                unit="scene" if split == "bench" else "triplet",
                disable=not progress,
                dynamic_ncols=True,
            )
            if workers == 1 or n < 64:
                _init_worker(cfg, str(out))
                lines = map(fn, range(n))
                pool = None
            else:
                pool = ctx.Pool(workers, initializer=_init_worker, initargs=(cfg, str(out)))
                lines = pool.imap(fn, range(n), chunksize=32)
            try:
                for line in lines:
                    fh.write(line + "\n")
                    bar.update()
            except BaseException:  # Ctrl-C or a failure: stop the workers, keep the marker
                if pool is not None:
                    pool.terminate()
                raise
            else:
                if pool is not None:
                    pool.close()
                    pool.join()
            finally:
                bar.close()
        tmp.replace(out / split / "manifest.jsonl")
        counts[split] = n * (len(CATEGORIES) if split == "bench" else 1)
    info.update(
        complete=True,
        items=counts,
        seconds=round(time.perf_counter() - start, 1),
        workers=workers,
    )
    (out / "info.json").write_text(json.dumps(info, indent=1))
    return info


# -- CLI ------------------------------------------------------------------------------------


def _size(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be an integer, got {text!r}") from None
    if not MIN_SIZE <= v <= MAX_SIZE:
        raise argparse.ArgumentTypeError(f"size must be between {MIN_SIZE} and {MAX_SIZE}, got {v}")
    return v


def _count(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {v}")
    return v


def _prob(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a probability, got {text!r}") from None
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"a probability must be in [0, 1], got {v}")
    return v


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``synth`` on the ``python -m data`` command line."""
    d = CorruptionConfig()
    p = subparsers.add_parser(
        "synth",
        help="generate a Shapes dataset folder (noisy train split + 560-item benchmark)",
        description=__doc__.split("\n\n")[0] + " Writes PNG images and a manifest.jsonl per split.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", required=True, type=Path, help="output folder (created)")
    p.add_argument("--train", type=_count, default=20_000, help="number of training triplets")
    p.add_argument("--bench", type=_count, default=80, help="benchmark scenes (7 items each)")
    p.add_argument("--seed", type=_count, default=0, help="random seed")
    p.add_argument("--size", type=_size, default=64, help="image side in pixels (32-256)")
    p.add_argument("--workers", type=_count, default=0, help="processes (0 = one per CPU core)")
    p.add_argument(
        "--p-following",
        type=_prob,
        default=d.p_following,
        help="chance that a training edit is not (fully) carried out",
    )
    p.add_argument(
        "--p-preserving",
        type=_prob,
        default=d.p_preserving,
        help="chance that something the instruction did not name changes",
    )
    p.add_argument(
        "--p-quality",
        type=_prob,
        default=d.p_quality,
        help="chance of an image artifact (noise, blur, banding, ghosting)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing Shapes folder")
    p.add_argument(
        "--db",
        type=Path,
        default=None,
        help="also load both splits and the oracle labels into this store (SQLite file)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    ccfg = CorruptionConfig(args.p_following, args.p_preserving, args.p_quality)
    cfg = SynthConfig(
        train=args.train, bench=args.bench, seed=args.seed, size=args.size, corruption=ccfg
    )
    try:
        info = synthesize(
            args.out,
            cfg,
            workers=args.workers,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    except FileExistsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n = info["items"]
    print(
        f"wrote {n['train']} training triplets and {n['bench']} benchmark items to {args.out} "
        f"in {info['seconds']} s"
    )
    if args.db is not None:
        from .to_store import load_into_store

        got = load_into_store(args.out, args.db, progress=not args.no_progress)
        print(
            f"loaded {got['triplets']} triplets and {got['oracle_labels']} oracle labels into {args.db}"
        )
    return 0
