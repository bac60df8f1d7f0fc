"""Gold pairs for rating campaigns: Shapes benchmark items, where the right answer is exact.

For each Shapes benchmark item the store holds the input, the instruction, the exact target
and the scene and edit it was drawn from (``meta``). A gold pair puts the exact target beside
a seeded corruption of it (``data.shapes.corrupt``, the edit always damaged), and the Shapes
oracle scores both: the known answer is the image with the higher mean oracle score, and
the known scores are the oracle's. Pairs whose two images the oracle does not tell apart
by at least ``min_gap`` points are not used (a gold pair must have a clear answer).

Raters see gold pairs mixed into their campaign (``Evaluation.gold_share``) exactly like real
pairs; their answers feed the per-rater table of the results (``core.stats.rater_agreement``).
"""

from __future__ import annotations

import logging

import numpy as np

from core.rewards import PERSPECTIVES
from core.store import Store

log = logging.getLogger(__name__)
SOURCE = "shapes-oracle"


def _oracle_scores(oracle, triplet: dict, original, image, target, meta) -> dict[str, float]:
    rewards = oracle.annotate(original, triplet["instruction"], image, target=target, meta=meta)
    return {p: float(rewards[p].score) for p in PERSPECTIVES}


def add_shapes_gold(
    store: Store, *, split: str = "bench", limit: int | None = None, seed: int = 0,
    min_gap: float = 1.0,
) -> list[int]:  # fmt: skip
    """Add a gold pair for each Shapes item of ``split`` (up to ``limit``); returns their ids.

    Idempotent: the corruption is seeded per item, so a second call finds the same pairs.
    Items without a target or without the Shapes meta are skipped.
    """
    from data.shapes.corrupt import CorruptionConfig, corrupt
    from data.shapes.oracle import ShapesOracle, parse_meta
    from data.shapes.scene import SceneConfig

    oracle = ShapesOracle()
    damage = CorruptionConfig(p_following=1.0, p_preserving=0.5, p_quality=0.5)
    ids = []
    for n, triplet in enumerate(store.list_triplets(split=split)):
        if limit is not None and len(ids) >= limit:
            break
        meta = triplet.get("meta") or {}
        if triplet.get("target") is None or "scene" not in meta or "edit" not in meta:
            continue
        scene, edit = parse_meta(meta)
        original = np.asarray(store.image(triplet["original"]))
        target = np.asarray(store.image(triplet["target"]))
        rng = np.random.default_rng([seed, 11, n])
        worse = corrupt(scene, edit, rng, damage, SceneConfig(size=scene.size)).edited
        better_scores = _oracle_scores(oracle, triplet, original, target, target, meta)
        worse_scores = _oracle_scores(oracle, triplet, original, worse, target, meta)
        gap = np.mean(list(better_scores.values())) - np.mean(list(worse_scores.values()))
        if gap < min_gap:
            log.info("gold: item %s skipped (oracle gap %.2f < %.2f)", triplet["id"], gap, min_gap)
            continue
        ids.append(
            store.add_gold_item(
                triplet["id"],
                triplet["target"],
                worse,
                source=SOURCE,
                better_scores=better_scores,
                worse_scores=worse_scores,
            )  # fmt: skip
        )
    return ids
