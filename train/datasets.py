"""Training examples, lazy image references, preprocessing, and the bad-data policy.

Every source (:mod:`train.sources`) turns its layout into a list of :class:`EditExample` (id,
instruction, original and edited image references, optional :class:`~core.rewards.Rewards`,
provenance) plus a list of :class:`BadItem` for entries it could not read:

``shapes``      a folder written by ``python -m data synth`` (oracle reward labels on train);
``hf``          InstructPix2Pix data in the Hugging Face ``datasets`` layout: a folder saved with
                ``save_to_disk``, a local data folder, or a hub id (online), with column flags;
                rewards from a RewardEdit-20K JSON joined on ``id_column`` (or the row number);
``rewardedit``  a RewardEdit-20K JSON of labels plus an image folder (path patterns per id);
``store``       the studio's SQLite store, through ``Store.export_labels``: a reviewer's
                correction wins over the judge's label, rejected triplets are left out, and each
                label's provenance (origin, reviewer, judge model, prompt version) is recorded.

Images are loaded lazily (:class:`PathImage`, :class:`HFImage`) and always through
:func:`core.images.load_image`, so every decoder problem becomes an :class:`ImageError` with a
sentence. :func:`scan` decodes each example once before training and applies the policy:
``on_bad_data="stop"`` raises :class:`BadDataError` at the first bad example with its id and
reason; ``"skip"`` leaves it out, counts it by kind and writes it to ``bad_data.jsonl``.
Examples without reward labels are not bad data; in stage 2 they are left out and counted.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from core.images import ImageError, load_image
from core.instructions import InstructionError, check_instruction
from core.rewards import Rewards

BAD_KINDS = {
    "missing_image": "missing image",
    "corrupt_image": "corrupt image",
    "bad_label": "label out of range or malformed",
    "bad_instruction": "missing or empty instruction",
    "bad_record": "malformed record",
}


# -- image references --------------------------------------------------------------------------


class MissingImageError(ImageError):
    """The image an example points at does not exist."""


class PathImage:
    """An image file on disk."""

    __slots__ = ("path",)

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)

    def load(self) -> Image.Image:
        if not os.path.exists(self.path):
            raise MissingImageError(f"the image file {self.path} does not exist")
        return load_image(self.path)

    def fingerprint(self) -> str:
        try:
            st = os.stat(self.path)
        except OSError:
            return f"{self.path}:missing"
        return f"{self.path}:{st.st_size}:{st.st_mtime_ns}"

    def __repr__(self) -> str:
        return f"PathImage({self.path!r})"


class HFImage:
    """Row ``row`` of column ``column`` of a ``datasets.Dataset`` whose images are not decoded
    (``Image(decode=False)``: ``{"bytes", "path"}``), or a path string relative to ``root``."""

    __slots__ = ("dataset", "row", "column", "root")

    def __init__(self, dataset: Any, row: int, column: str, root: str = ""):
        self.dataset, self.row, self.column, self.root = dataset, row, column, root

    def load(self) -> Image.Image:
        value = self.dataset[self.row][self.column]
        name = f"row {self.row}, column {self.column!r}"
        if value is None:
            raise MissingImageError(f"{name} holds no image")
        if isinstance(value, dict):
            if value.get("bytes"):
                return load_image(value["bytes"], name=name)
            value = value.get("path")
            if not value:
                raise MissingImageError(f"{name} holds neither image bytes nor a path")
        if isinstance(value, str):
            return PathImage(os.path.join(self.root, value)).load()
        if isinstance(value, Image.Image):
            return load_image(value, name=name)
        raise ImageError(f"{name} holds a {type(value).__name__}, not an image")

    def fingerprint(self) -> str:
        return f"{getattr(self.dataset, '_fingerprint', '?')}:{self.row}:{self.column}"


# -- examples and bad data ---------------------------------------------------------------------


@dataclass(frozen=True)
class EditExample:
    """One training triplet. ``rewards`` is None when the source has no label for it."""

    id: str
    instruction: str
    original: Any  # PathImage | HFImage: .load() -> RGB PIL image, .fingerprint() -> str
    edited: Any
    rewards: Rewards | None = None
    provenance: dict[str, Any] = field(default_factory=dict)  # who produced the label

    def fingerprint(self) -> str:
        """Everything the cached tensors depend on, as one string (for the cache key)."""
        r = self.rewards.to_dict() if self.rewards is not None else None
        parts = [self.id, self.instruction, self.original.fingerprint(), self.edited.fingerprint()]
        return json.dumps([*parts, r], sort_keys=True)


@dataclass(frozen=True)
class BadItem:
    id: str
    kind: str  # a key of BAD_KINDS
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "kind": self.kind, "reason": self.reason}


class BadDataError(ValueError):
    """The run stopped on a bad example (``on_bad_data="stop"``)."""

    def __init__(self, item: BadItem):
        self.item = item
        super().__init__(
            f"Bad training example {item.id!r} ({BAD_KINDS[item.kind]}): {item.reason}. The run "
            "stops because on_bad_data is 'stop'; fix the data, or pass --on_bad_data skip to "
            "leave such examples out (each is then listed in bad_data.jsonl and counted)."
        )


class BadDataLog:
    """Applies the bad-data policy and keeps the skipped examples with their reasons."""

    def __init__(self, policy: str):
        if policy not in ("skip", "stop"):
            raise ValueError(f"on_bad_data must be 'skip' or 'stop', got {policy!r}.")
        self.policy = policy
        self.items: list[BadItem] = []

    def report(self, item: BadItem) -> None:
        if self.policy == "stop":
            raise BadDataError(item)
        self.items.append(item)

    def extend(self, items: Sequence[BadItem]) -> None:
        for item in items:
            self.report(item)

    def counts(self) -> dict[str, int]:
        return dict(Counter(i.kind for i in self.items))

    def summary(self, total: int) -> str:
        if not self.items:
            return f"No bad examples among {total}."
        kinds = ", ".join(f"{BAD_KINDS[k]}: {n}" for k, n in sorted(self.counts().items()))
        return f"Skipped {len(self.items)} bad example(s) of {total} ({kinds}); see bad_data.jsonl."

    def write(self, path: str | Path) -> None:
        with open(path, "w", encoding="utf-8") as f:
            for item in self.items:
                f.write(json.dumps(item.to_dict(), ensure_ascii=False) + "\n")


@dataclass
class SourceData:
    """What a source yields: readable examples, unreadable entries, and a description."""

    examples: list[EditExample]
    bad: list[BadItem]
    info: dict[str, Any]


def _classify(e: Exception) -> str:
    return "missing_image" if isinstance(e, MissingImageError) else "corrupt_image"


# -- preprocessing -----------------------------------------------------------------------------


def to_pixels(img: Image.Image, resolution: int) -> torch.Tensor:
    """RGB PIL -> (3, R, R) float32 in [-1, 1]: shorter side resized to R, then centre-cropped."""
    w, h = img.size
    if min(w, h) != resolution:
        s = resolution / min(w, h)
        img = img.resize(
            (max(resolution, round(w * s)), max(resolution, round(h * s))), Image.BICUBIC
        )
        w, h = img.size
    if (w, h) != (resolution, resolution):
        left, top = (w - resolution) // 2, (h - resolution) // 2
        img = img.crop((left, top, left + resolution, top + resolution))
    a = np.asarray(img, dtype=np.float32) / 127.5 - 1.0  # (R, R, 3)
    return torch.from_numpy(a).permute(2, 0, 1).contiguous()  # (3, R, R)


def load_pair(ex: EditExample, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Both images of an example as (3, R, R) tensors; raises ImageError."""
    return to_pixels(ex.original.load(), resolution), to_pixels(ex.edited.load(), resolution)


def scan(
    examples: Sequence[EditExample], log: BadDataLog, resolution: int, progress: bool = True
) -> Iterator[tuple[EditExample, torch.Tensor, torch.Tensor]]:
    """Decode every example once; yield the good ones with their pixels, report the bad ones."""
    from tqdm.auto import tqdm

    for ex in tqdm(examples, desc="checking images", disable=not progress, leave=False):
        try:
            check_instruction(ex.instruction)
        except InstructionError as e:
            log.report(BadItem(ex.id, "bad_instruction", str(e)))
            continue
        try:
            original, edited = load_pair(ex, resolution)
        except ImageError as e:
            log.report(BadItem(ex.id, _classify(e), str(e)))
            continue
        yield ex, original, edited
