"""Shared helpers of the core.store tests: seeded images, a triplet, a labelled triplet
(the ``store`` fixture is in conftest.py)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from core.rewards import Rewards
from core.store import TABLES, Store

R = Rewards.from_scores


def img(seed: int, size: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img(seed)).save(buf, "PNG")
    return buf.getvalue()


def add(store: Store, seed: int = 0, instruction: str = "make the circle blue", **kw) -> str:
    return store.add_triplet(img(seed), img(seed + 1000), instruction, **kw)


def counts(store: Store) -> dict[str, int]:
    return {t: store.count(t) for t in TABLES}


def labelled(store: Store, seed: int = 0) -> str:
    tid = add(store, seed)
    aid = store.add_annotation(
        tid, kind="judge", judge_model="gpt-4o", prompt_version="v1", rewards=R((3, 5, 4))
    )
    store.set_label_from_annotation(aid)
    return tid
