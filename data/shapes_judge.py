"""The Shapes oracle behind the :class:`core.judges.base.Judge` interface, and as a server brain.

* :class:`ShapesJudge` -- ``annotate`` / ``evaluate`` with the exact oracle
  (:class:`data.shapes.oracle.ShapesOracle`). The ground truth (the scene and the edit, from which
  the oracle renders the target and the edit mask) comes from the item's ``context``: either
  ``{"meta": {...}}`` directly (optionally with ``target`` / ``mask`` images), or
  ``{"store": store}`` plus ``item.triplet_id``, in which case the triplet's meta and stored
  target/mask are read from the store. The oracle makes no API call: ``usage`` is zero and it
  never fails on a reply, only on missing ground truth (``bad_input``).
* :class:`ShapesAnswerer` -- the brain of the local judge server (:mod:`data.judge_server`). It
  indexes Shapes triplets by (pixel hash of the original image, instruction) -- the two things a
  VLM request carries -- so it can recover the ground truth of any request and let the oracle
  judge the edited image that was sent.

Labels are stored with ``kind = "oracle"`` and ``judge_model = "shapes-oracle-v<version>"``; the
judge's digest hashes the oracle's config, so changing a tolerance labels again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from PIL import Image

from core.images import ImageError, image_hash
from core.judges.base import (
    BAD_INPUT,
    Evaluation,
    Judge,
    JudgeInput,
    JudgeResult,
    JudgeSpec,
    Verdict,
)
from core.judges.prompts import Prompt
from core.rewards import PERSPECTIVES
from data.judge_api import UnknownItem
from data.shapes.oracle import ShapesOracle

CACHE_SIZE = 4096  # oracle results kept by the server (three-call mode asks three times)


def oracle_spec(oracle: ShapesOracle) -> JudgeSpec:
    digest = hashlib.sha256(json.dumps(asdict(oracle.config), sort_keys=True).encode()).hexdigest()[
        :16
    ]
    return JudgeSpec("shapes-oracle", f"shapes-oracle-v{oracle.version}", "n/a", "one", digest)


def _evaluation(verdicts: Mapping[str, tuple[bool, float]]) -> Evaluation:
    return Evaluation(*(Verdict(bool(verdicts[p][0]), verdicts[p][1]) for p in PERSPECTIVES))


class ShapesJudge(Judge):
    """The exact oracle as a judge (see the module docstring for where ground truth comes from)."""

    def __init__(self, store: Any = None, oracle: ShapesOracle | None = None) -> None:
        self.store = store
        self.oracle = oracle or ShapesOracle()
        self.spec = oracle_spec(self.oracle)

    def _ground_truth(self, item: JudgeInput) -> dict[str, Any]:
        ctx = dict(item.context)
        if "meta" in ctx:
            return {"meta": ctx["meta"], "target": ctx.get("target"), "mask": ctx.get("mask")}
        store = ctx.get("store", self.store)
        if store is None or item.triplet_id is None:
            raise ValueError(
                "the Shapes oracle needs the triplet's ground truth: pass context={'meta': ...} "
                "or a store and the triplet id"
            )
        row = store.get_triplet(item.triplet_id)
        return {
            "meta": row["meta"],
            "target": store.image(row["target"]) if row.get("target") else None,
            "mask": store.image(row["mask"]) if row.get("mask") else None,
        }

    def _measure(self, task: str, item: JudgeInput) -> Any:
        gt = self._ground_truth(item)
        args = (item.original, item.instruction, item.edited)
        if task == "annotate":
            return self.oracle.annotate(*args, **gt)
        return _evaluation(self.oracle.evaluate(*args, **gt))

    async def _judge(self, task: str, item: JudgeInput) -> JudgeResult:
        try:
            value = await asyncio.to_thread(self._measure, task, item)
        except (ValueError, KeyError, LookupError, ImageError) as e:
            return JudgeResult.failed(
                task, self.spec, BAD_INPUT, f"the oracle cannot judge this triplet: {e}"
            )
        if task == "annotate":
            return JudgeResult(
                task, "ok", self.spec, rewards=value, raw=json.dumps(value.to_dict())
            )
        return JudgeResult(task, "ok", self.spec, evaluation=value, raw=json.dumps(value.to_dict()))


class ShapesAnswerer:
    """Recovers a Shapes triplet from a request's original image and instruction, and judges it."""

    def __init__(
        self,
        records: Iterable[tuple[str, str, Mapping[str, Any]]],
        oracle: ShapesOracle | None = None,
    ):
        """``records``: (pixel hash of the original, instruction, triplet meta) per triplet."""
        self.oracle = oracle or ShapesOracle()
        self.index: dict[tuple[str, str], Mapping[str, Any]] = {}
        for original_hash, instruction, meta in records:
            self.index[(original_hash, instruction)] = meta
        # The three per-perspective requests of a triplet carry the same images: measure once.
        self._cache: OrderedDict[tuple[str, ...], Any] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.index)

    @classmethod
    def from_store(cls, store: Any, split: str | None = None) -> ShapesAnswerer:
        """Index the store's Shapes triplets (those whose meta has a scene and an edit)."""
        sql = "SELECT original, instruction, meta FROM triplets"
        params: list[Any] = []
        if split is not None:
            sql, params = sql + " WHERE split = ?", [split]
        with store.db() as db:
            rows = db.execute(sql, params).fetchall()
        records = []
        for original, instruction, meta in rows:
            meta = json.loads(meta)
            if "scene" in meta and "edit" in meta:
                records.append((original, instruction, meta))
        if not records:
            raise ValueError(
                f"the store {store.path} holds no Shapes triplets (meta with scene and edit)"
            )
        return cls(records)

    @classmethod
    def from_folder(cls, folder: str | Path) -> ShapesAnswerer:
        """Index both splits of a Shapes folder written by ``python -m data synth``."""
        from core.images import load_image
        from data.shapes.folder import SPLITS, load_split

        records, hashes = [], {}
        for split in SPLITS:
            for item in load_split(folder, split):
                if item.original not in hashes:  # benchmark scenes share one original
                    hashes[item.original] = image_hash(load_image(item.original))
                records.append((hashes[item.original], item.instruction, item.meta))
        return cls(records)

    def answer(
        self, prompt: Prompt, instruction: str, original: Image.Image, edited: Image.Image
    ) -> dict[str, Any]:
        original_hash = image_hash(original)
        meta = self.index.get((original_hash, instruction))
        if meta is None:
            raise UnknownItem(
                "this (original image, instruction) pair is not a Shapes triplet this server knows; "
                "start the server with the folder or store the triplets come from"
            )
        key = (prompt.task, original_hash, instruction, image_hash(edited))
        with self._lock:
            value = self._cache.get(key)
        if value is None:
            try:
                if prompt.task == "annotate":
                    value = self.oracle.annotate(original, instruction, edited, meta=dict(meta))
                else:
                    verdicts = self.oracle.evaluate(original, instruction, edited, meta=dict(meta))
                    value = {p: Verdict(bool(y), s) for p, (y, s) in verdicts.items()}
            except (ValueError, ImageError) as e:
                raise UnknownItem(f"the oracle cannot judge this request: {e}") from None
            with self._lock:
                self._cache[key] = value
                while len(self._cache) > CACHE_SIZE:
                    self._cache.popitem(last=False)
        return {p: value[p] for p in prompt.perspectives}
