"""The on-disk format of a Shapes dataset folder, and :func:`load_split` to read it back.

::

    OUT/
      info.json                      # generator settings, counts, format version
      train/manifest.jsonl           # one JSON object per triplet, in index order
      train/{original,edited,target,mask}/000123.png
      bench/manifest.jsonl
      bench/original/042.png         # one original per benchmark scene
      bench/{target,mask}/042_local.png

A manifest line holds ``id``, ``split``, ``instruction``, ``category``, the image paths
(relative to the split folder; ``edited`` is null in the benchmark, where models produce it),
``meta`` (``{"size", "scene", "edit"}``: everything the oracle needs), and for training
triplets ``corruptions`` (what was injected, for analysis only) and ``rewards`` (the oracle's
labels of the edited image, in :meth:`core.rewards.Rewards.to_dict` form).
Masks are 8-bit greyscale PNGs (255 = inside the edit region).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from core.rewards import Rewards, RewardValidationError

FORMAT_VERSION = 1
SPLITS = ("train", "bench")
IMAGE_KINDS = ("original", "edited", "target", "mask")


class ShapesFolderError(ValueError):
    """A Shapes folder or one of its manifest lines cannot be read; the message says where."""


@dataclass(frozen=True)
class ShapesItem:
    """One triplet of a Shapes split, with absolute image paths."""

    id: str
    split: str
    instruction: str
    category: str
    original: Path
    target: Path
    mask: Path
    meta: dict[str, Any]
    edited: Path | None = None  # None in the benchmark split
    rewards: Rewards | None = None  # oracle labels of ``edited`` (training split)
    corruptions: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    def load(self, kind: str) -> np.ndarray:
        """One image as uint8: (H, W, 3) for images, (H, W) bool for ``mask``."""
        if kind not in IMAGE_KINDS:
            raise ValueError(f"unknown image kind {kind!r}; choose from {', '.join(IMAGE_KINDS)}")
        path = getattr(self, kind)
        if path is None:
            raise ShapesFolderError(f"{self.id} has no {kind} image (benchmark items have none)")
        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("L" if kind == "mask" else "RGB"))
        except (OSError, ValueError) as e:
            raise ShapesFolderError(f"{self.id}: cannot read {kind} image {path}: {e}") from e
        return arr > 127 if kind == "mask" else arr

    def to_record(self, root: Path) -> dict[str, Any]:
        """The manifest line (paths relative to ``root``, the split folder)."""
        rec: dict[str, Any] = {
            "id": self.id,
            "split": self.split,
            "instruction": self.instruction,
            "category": self.category,
        }
        for kind in IMAGE_KINDS:
            p = getattr(self, kind)
            rec[kind] = None if p is None else p.relative_to(root).as_posix()
        rec["meta"] = self.meta
        if self.split == "train":
            rec["corruptions"] = list(self.corruptions)
            rec["rewards"] = self.rewards.to_dict() if self.rewards is not None else None
        return rec


def save_png(arr: np.ndarray, path: Path) -> None:
    """Write a uint8 RGB array or a bool mask as PNG (fixed settings, so identical bytes)."""
    img = Image.fromarray(arr.astype(np.uint8) * 255 if arr.dtype == bool else arr)
    img.save(path, format="PNG", compress_level=6, optimize=False)


def read_info(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / "info.json"
    if not path.is_file():
        raise ShapesFolderError(
            f"{folder} is not a Shapes folder: {path.name} is missing "
            "(write one with `python -m data synth --out DIR`)"
        )
    try:
        info = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ShapesFolderError(f"cannot read {path}: {e}") from e
    if info.get("complete") is False:
        raise ShapesFolderError(
            f"{folder} is an incomplete Shapes folder (its generation was interrupted); "
            "generate it again with --overwrite"
        )
    if info.get("format_version") != FORMAT_VERSION:
        raise ShapesFolderError(
            f"{path} has format version {info.get('format_version')!r}; this code reads "
            f"version {FORMAT_VERSION}"
        )
    return info


def load_split(folder: str | Path, split: str, check_files: bool = True) -> list[ShapesItem]:
    """Read a split (``"train"`` or ``"bench"``) of a Shapes folder, in manifest order.

    Every malformed line raises :class:`ShapesFolderError` with its line number; with
    ``check_files`` a missing image raises too. Nothing is skipped silently.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    read_info(folder)
    root = Path(folder) / split
    manifest = root / "manifest.jsonl"
    if not manifest.is_file():
        raise ShapesFolderError(f"{manifest} is missing")
    items = []
    with manifest.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                items.append(_parse(json.loads(line), root, split, check_files))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise ShapesFolderError(f"{manifest}:{lineno}: {type(e).__name__}: {e}") from e
    return items


def _parse(rec: dict[str, Any], root: Path, split: str, check_files: bool) -> ShapesItem:
    if rec.get("split") != split:
        raise ValueError(f"record {rec.get('id')!r} belongs to split {rec.get('split')!r}")
    paths: dict[str, Path | None] = {}
    for kind in IMAGE_KINDS:
        rel = rec.get(kind)
        if rel is None:
            if kind != "edited" or split == "train":
                raise ValueError(f"record {rec['id']!r} has no {kind} image")
            paths[kind] = None
            continue
        p = (root / rel).resolve()
        if check_files and not p.is_file():
            raise ValueError(f"record {rec['id']!r}: {kind} image {p} does not exist")
        paths[kind] = p
    rewards = None
    if rec.get("rewards") is not None:
        try:
            rewards = Rewards.from_dict(rec["rewards"])
        except RewardValidationError as e:
            raise ValueError(f"record {rec['id']!r}: bad rewards: {e}") from None
    meta = rec["meta"]
    if not isinstance(meta, dict) or "scene" not in meta or "edit" not in meta:
        raise ValueError(f"record {rec['id']!r}: meta must hold 'scene' and 'edit'")
    return ShapesItem(
        id=str(rec["id"]),
        split=split,
        instruction=str(rec["instruction"]),
        category=str(rec["category"]),
        original=paths["original"],
        edited=paths["edited"],
        target=paths["target"],
        mask=paths["mask"],
        meta=meta,
        rewards=rewards,
        corruptions=tuple(rec.get("corruptions") or ()),
    )
