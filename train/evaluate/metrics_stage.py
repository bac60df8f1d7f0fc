"""Reference metrics of every output of a run (L1 / PSNR to ground truth, CLIP-I / CLIP-T /
CLIP direction).

Computed in one batched pass per run (see :func:`train.evaluate.image_metrics.compute_metrics`)
and cached in a JSON file keyed by (output image hash, benchmark triplet, CLIP model -- a local folder by its
path and contents, see :func:`~train.evaluate.systems.model_digest` --, the item's captions), so a
resumed run only measures new outputs and a caption that changed (or appeared: Shapes items got
captions later than the cache format's first version) is measured again. Keys carry a version
prefix; entries of older formats are dropped when the cache is read. The table has one row per
(system, item) with an output.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pandas as pd

from core.fileio import write_atomic
from core.images import load_image
from train.evaluate.image_metrics import ClipConfig, ClipScorer, MetricInput, compute_metrics
from train.evaluate.systems import model_digest

CACHE_VERSION = "v2"  # v2: keys include the captions (CLIP-T, CLIP direction depend on them)


def _key(
    output_hash: str,
    triplet_id: str,
    clip: str | None,
    target_caption: str | None = None,
    source_caption: str | None = None,
) -> str:
    captions = json.dumps([target_caption, source_caption])
    digest = hashlib.sha256(captions.encode("utf-8")).hexdigest()[:16]
    return f"{CACHE_VERSION}|{output_hash}|{triplet_id}|{clip or '-'}|{digest}"


def compute_run_metrics(
    run: Any, cache_path: str | Path, clip_model: str | None = None, device: str = "cpu"
) -> pd.DataFrame:
    """Metrics of every output in ``run`` (a :class:`~train.evaluate.runner.BenchmarkRun`)."""
    cache_path = Path(cache_path)
    clip_id = clip_model
    if clip_model and Path(clip_model).expanduser().is_dir():  # retrained in place: new values
        clip_id = f"{clip_model}#{model_digest(clip_model)}"
    cache: dict[str, dict[str, float]] = {}
    if cache_path.is_file():
        try:
            cache = json.loads(cache_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            cache = {}  # a damaged cache is only a cache: recompute everything
        if not isinstance(cache, dict):
            cache = {}
        cache = {k: v for k, v in cache.items() if k.startswith(CACHE_VERSION + "|")}
    todo: list[tuple[str, str, str, Any]] = []  # (key, system, item_id, output row)
    rows = []
    for name, state in run.states.items():
        for item_id, out in state.outputs.items():
            item = run.items[item_id]
            key = _key(
                out["image"],
                run.triplet_of[item_id],
                clip_id,
                item.target_caption,
                item.source_caption,
            )
            if key in cache:
                rows.append({"system": name, "item_id": item_id, **cache[key]})
            else:
                todo.append((key, name, item_id, out))
    if todo:
        clip = ClipScorer(ClipConfig(clip_model, device=device)) if clip_model else None
        chunk = 256  # bounds the images held in memory at once
        for start in range(0, len(todo), chunk):
            part = todo[start : start + chunk]
            inputs = []
            for _, _, item_id, out in part:
                item = run.items[item_id]
                output = load_image(
                    run.store.image_path(out["image"]), name=f"output of {item_id!r}"
                )
                inputs.append(
                    MetricInput(
                        output,
                        item.load_image(),
                        item.instruction,
                        item.load_target(),
                        item.target_caption,
                        item.source_caption,
                    )  # fmt: skip
                )
            for (key, name, item_id, _), m in zip(part, compute_metrics(inputs, clip)):
                cache[key] = m
                rows.append({"system": name, "item_id": item_id, **m})
        write_atomic(cache_path, json.dumps(cache))
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame.insert(2, "category", frame["item_id"].map(lambda i: run.items[i].category))
    return frame
