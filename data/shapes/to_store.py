"""Load a Shapes folder into the MRC Studio store (``python -m data synth --db PATH``).

Both splits become triplets (``source="shapes"``, ``external_id`` = the manifest id, ``meta`` =
the scene and edit plus, for training triplets, the injected corruptions), in the same form as
``data.interop.import_shapes_folder``. The oracle labels of the training triplets become
``kind="oracle"`` annotations under the same judge name and idempotency key that
``python -m data annotate --judge shapes-oracle`` uses, so that command finds them done.
Everything is content-addressed: loading the same folder twice adds nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .folder import SPLITS, ShapesItem, load_split
from .oracle import ShapesOracle

CHUNK = 256  # triplets per store transaction


def _record(item: ShapesItem) -> dict[str, Any]:
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


def load_into_store(folder: str | Path, db: str | Path, progress: bool = True) -> dict[str, int]:
    """Add a Shapes folder's triplets and oracle labels to the store at ``db`` (created)."""
    from core.judges.base import idempotency_key
    from core.store import Store
    from data.shapes_judge import oracle_spec

    store = Store(db)
    spec = oracle_spec(ShapesOracle())
    items = [it for split in SPLITS for it in load_split(folder, split)]
    bar = tqdm(
        total=len(items), desc="loading into the store", unit="triplet", disable=not progress
    )
    n_labels = 0
    for start in range(0, len(items), CHUNK):
        chunk = items[start : start + CHUNK]
        ids = store.add_triplets([_record(it) for it in chunk], progress=False)
        labelled = [(tid, it) for tid, it in zip(ids, chunk) if it.rewards is not None]
        if labelled:
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
            n_labels += len(labelled)
        bar.update(len(chunk))
    bar.close()
    return {"triplets": len(items), "oracle_labels": n_labels}
