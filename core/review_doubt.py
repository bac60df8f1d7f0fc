"""Which triplets the review queue offers, and in which order: filters and the doubt score.

Doubt. The queue shows the labels most likely to be wrong first. For each triplet, over its
machine annotations (judge and oracle, task ``annotate``):

    doubt = max over perspectives of (max score - min score across annotators)   [0..5]
          + 1 for each perspective whose score and failure text contradict each other
            (a 5 that names failure points, or a score <= 2.5 that names none)
          + 1 if any judge call on the triplet failed
          + 10 if the triplet has no machine label at all (e.g. sent from the Edit tab)
          + the largest predicted standard deviation of a judge that reports one (the learned
            reward model, ``--judge reward-model:FOLDER``: its own doubt, in score points)

Triplets without an edited image (benchmark inputs) are not in the queue. Ties keep
insertion order. The doubt of every triplet is computed once and cached; the cache
is rebuilt only when triplets or annotations are added (checked with two ``max(rowid)``
queries), so on 20,000 triplets taking the next item costs a few small queries.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from core.rewards import PERSPECTIVES
from core.store import REVIEW_STATUSES, Store

TO_REVIEW = "to review"  # pending, skipped or unlabelled
UNLABELED = "unlabeled"
STATUS_FILTERS = (TO_REVIEW, *REVIEW_STATUSES, UNLABELED, "all")


@dataclass(frozen=True)
class ReviewFilter:
    """Which triplets the queue offers. ``None`` means "any"."""

    status: str = TO_REVIEW
    category: str | None = None
    judge: str | None = None  # triplets annotated by this judge model
    perspective: str | None = None  # with ``score_min``/``score_max``: the label's score range
    score_min: float = 0.0
    score_max: float = 5.0
    split: str | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUS_FILTERS:
            raise ValueError(
                f"unknown status filter {self.status!r}; choose one of {', '.join(STATUS_FILTERS)}."
            )
        if self.perspective is not None and self.perspective not in PERSPECTIVES:
            raise ValueError(
                f"unknown perspective {self.perspective!r}; choose one of {', '.join(PERSPECTIVES)}."
            )
        if not 0.0 <= self.score_min <= self.score_max <= 5.0:
            raise ValueError(
                f"the score range must satisfy 0 <= min <= max <= 5, got [{self.score_min}, "
                f"{self.score_max}]."
            )

    def statuses(self) -> set[str | None]:
        """Wanted label statuses; None stands for "no label yet"."""
        if self.status == TO_REVIEW:
            return {"pending", "skipped", None}
        if self.status == UNLABELED:
            return {None}
        if self.status == "all":
            return {*REVIEW_STATUSES, None}
        return {self.status}


@dataclass(frozen=True)
class MachineLabel:
    """One machine annotation as the doubt score needs it (None scores: a failed call)."""

    scores: tuple[float, float, float] | None
    texts: tuple[str, str, str] = ("", "", "")
    std: tuple[float, ...] = ()  # a judge's predicted standard deviations (reward model), if any


def doubt_of(labels: Sequence[MachineLabel]) -> float:
    """The doubt score of one triplet from its machine annotations (module docstring)."""
    ok = [a for a in labels if a.scores is not None]
    failed = len(ok) < len(labels)
    if not ok:
        return 10.0 + (1.0 if failed else 0.0)
    spread = max(max(col) - min(col) for col in zip(*(a.scores for a in ok)))
    contradictions = sum(
        (score >= 5.0 and text.strip() != "") or (score <= 2.5 and text.strip() == "")
        for a in ok
        for score, text in zip(a.scores, a.texts)
    )
    uncertainty = max((max(a.std) for a in ok if a.std), default=0.0)
    return spread + float(contradictions) + (1.0 if failed else 0.0) + uncertainty


def annotation_std(meta: str | None) -> tuple[float, ...]:
    """The per-perspective standard deviations a judge stored in an annotation's meta."""
    try:
        std = json.loads(meta or "{}").get("std") or {}
    except (json.JSONDecodeError, AttributeError):
        return ()
    return tuple(float(v) for v in std.values() if isinstance(v, (int, float)))


class DoubtOrder:
    """Every reviewable triplet's doubt and the queue order (most doubtful first), cached per
    store and rebuilt when triplets or annotations are added. Not thread-safe on its own: the
    review queue calls it under its mutex."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.doubts: dict[str, float] = {}
        self.order: list[str] = []  # all triplet ids, most doubtful first
        self._stamp: tuple[int, int] | None = None

    def _current_stamp(self) -> tuple[int, int]:
        with self.store.db() as db:
            t = db.execute("SELECT ifnull(max(rowid), 0) FROM triplets").fetchone()[0]
            a = db.execute("SELECT ifnull(max(id), 0) FROM annotations").fetchone()[0]
        return t, a

    def refresh(self) -> None:
        """Recompute the doubts if triplets or annotations were added since the last call."""
        stamp = self._current_stamp()
        if stamp == self._stamp:
            return
        cols = ", ".join(f"{p}, {p}_text" for p in PERSPECTIVES)
        sql = (
            f"SELECT triplet_id, status, {cols}, meta FROM annotations "
            "WHERE kind IN ('judge', 'oracle') AND task = 'annotate'"
        )
        per_triplet: dict[str, list[MachineLabel]] = {}
        with self.store.db() as db:
            ids = [r[0] for r in db.execute(  # benchmark inputs have no edited image: not reviewable
                "SELECT id FROM triplets WHERE edited IS NOT NULL ORDER BY rowid"
            )]  # fmt: skip
            for row in db.execute(sql):
                label = (
                    MachineLabel(
                        row[2:8:2], tuple(t or "" for t in row[3:8:2]), annotation_std(row[8])
                    )
                    if row[1] == "ok"
                    else MachineLabel(None)
                )
                per_triplet.setdefault(row[0], []).append(label)
        doubt = {tid: doubt_of(per_triplet.get(tid, [])) for tid in ids}
        position = {tid: i for i, tid in enumerate(ids)}
        self.order = sorted(ids, key=lambda t: (-doubt[t], position[t]))
        self.doubts = doubt
        self._stamp = stamp

    def candidates(self, flt: ReviewFilter) -> list[str]:
        """Ids passing the static filters (category, judge, split), in doubt order."""
        where, params = [], []
        for col, value in (("category", flt.category), ("split", flt.split)):
            if value is not None:
                where.append(f"t.{col} = ?")
                params.append(value)
        if flt.judge is not None:
            where.append(
                "EXISTS (SELECT 1 FROM annotations a WHERE a.triplet_id = t.id "
                "AND a.judge_model = ?)"
            )
            params.append(flt.judge)
        if not where:
            return self.order
        with self.store.db() as db:
            keep = {
                r[0]
                for r in db.execute(
                    f"SELECT t.id FROM triplets t WHERE {' AND '.join(where)}", params
                )
            }
        return [t for t in self.order if t in keep]
