"""Load a Shapes folder into the MRC Studio store: the one place that maps a Shapes item to a
store triplet.

Both splits become triplets (``source="shapes"``, ``external_id`` = the manifest id, ``meta`` =
the scene and edit plus, for training triplets, the injected corruptions); benchmark items have
no edited image. Everything is content-addressed: loading the same folder twice adds nothing.

Two entry points share :func:`add_shapes_folder`:

* ``python -m data synth --db PATH`` (:func:`load_into_store`) also stores the oracle labels of
  the training triplets as ``kind="oracle"`` annotations, under the same judge name and
  idempotency key that ``python -m data annotate --judge shapes-oracle`` uses, so that command
  finds them done;
* :func:`data.interop.import_shapes_folder` (``python -m data annotate --shapes DIR``, the
  studio demo) adds the triplets only, leaving the labelling to the chosen judge.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .folder import SPLITS, ShapesItem, load_split
from .oracle import ShapesOracle

CHUNK = 256  # triplets per store transaction


def shapes_record(item: ShapesItem) -> dict[str, Any]:
    """The store triplet (``Store.add_triplets`` item) of one Shapes item."""
    meta = dict(item.meta)
    if item.corruptions:
        meta["corruptions"] = list(item.corruptions)
    return {
        "original": item.original,
        "edited": item.edited,
        "target": item.target,
        "mask": item.mask,
        "instruction": item.instruction,
        "category": item.category,
        "split": item.split,
        "source": "shapes",
        "external_id": item.id,
        "meta": meta,
    }


def add_shapes_folder(
    store: Any,
    folder: str | Path,
    *,
    oracle_labels: bool = False,
    progress: bool = True,
    desc: str = "importing Shapes",
) -> dict[str, int]:
    """Add both splits of a Shapes folder to ``store``, ``CHUNK`` triplets per transaction.

    With ``oracle_labels`` the training triplets' oracle labels are stored too (see the module
    docstring). Returns ``{"triplets": items in the folder, "oracle_labels": labels stored or
    already there}``. A malformed folder raises :class:`~data.shapes.ShapesFolderError` before
    anything is written.
    """
    items = [it for split in SPLITS for it in load_split(folder, split)]
    bar = tqdm(total=len(items), desc=desc, unit="triplet", disable=not progress)
    n_labels = 0
    for start in range(0, len(items), CHUNK):
        chunk = items[start : start + CHUNK]
        ids = store.add_triplets([shapes_record(it) for it in chunk], progress=False)
        if oracle_labels:
            n_labels += _add_oracle_labels(store, ids, chunk)
        bar.update(len(chunk))
    bar.close()
    return {"triplets": len(items), "oracle_labels": n_labels}


def _add_oracle_labels(store: Any, ids: list[str], chunk: list[ShapesItem]) -> int:
    """Store the oracle labels of the labelled items of one chunk; returns how many."""
    from core.judges.base import idempotency_key
    from data.shapes_judge import oracle_spec

    labelled = [(tid, it) for tid, it in zip(ids, chunk) if it.rewards is not None]
    if not labelled:
        return 0
    spec = oracle_spec(ShapesOracle())
    with store.db() as conn:
        marks = ",".join("?" * len(labelled))
        rows = conn.execute(
            f"SELECT id, original, edited FROM triplets WHERE id IN ({marks})",
            [tid for tid, _ in labelled],
        ).fetchall()
    hashes = {r[0]: (r[1], r[2]) for r in rows}
    store.add_annotations(
        [
            {
                "triplet_id": tid,
                "kind": "oracle",
                "task": "annotate",
                "judge_model": spec.model,
                "status": "ok",
                "rewards": it.rewards,
                "key": idempotency_key(*hashes[tid], it.instruction, spec, "annotate"),
                "meta": {"judge": spec.to_dict(), "from": "python -m data synth"},
            }
            for tid, it in labelled
        ]
    )
    return len(labelled)


def load_into_store(folder: str | Path, db: str | Path, progress: bool = True) -> dict[str, int]:
    """Add a Shapes folder's triplets and oracle labels to the store at ``db`` (created)."""
    from core.store import Store

    return add_shapes_folder(
        Store(db), folder, oracle_labels=True, progress=progress, desc="loading into the store"
    )
