"""The review queue: locks, saves, progress and export, over the doubt order.

UI-independent: :class:`ReviewQueue` works on a :class:`~core.store.Store` and plain values,
and ``studio/review_tab.py`` only wires it to Gradio. Which items it offers and in which order
(filters, the doubt score) lives in :mod:`core.review_doubt`.

Locks. Taking an item locks its label for the annotator (``Store.acquire_lock``); another
annotator's queue passes over it. Items without a label cannot be locked in the store, so the
queue holds a claim on them in memory for the same duration (one studio process serves all).
Saving uses the label version loaded with the item: if someone else saved in between, the
store raises ConflictError and nothing is overwritten.

Time per item is measured on the server: from the moment the queue locks (or claims) an item
for the annotator to the moment their decision is saved, recorded with the save
(``Store.update_label(..., seconds=...)``, kept in ``label_history.seconds``). Progress
reports the median per annotator over the saves that carry a time.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.review_doubt import UNLABELED, DoubtOrder, ReviewFilter
from core.rewards import PERSPECTIVES, Rewards
from core.store import (
    DEFAULT_LOCK_SECONDS,
    REVIEW_STATUSES,
    LabelRecord,
    LockedError,
    NotFoundError,
    Store,
    StoreInputError,
)
from core.store.base import now as store_now

DECISIONS = {"accept": None, "fix": None, "reject": "rejected", "skip": "skipped"}
CHUNK = 64  # candidates checked per query when looking for the next free item


@dataclass
class ReviewItem:
    """One triplet in front of an annotator."""

    triplet: dict[str, Any]
    label: LabelRecord | None  # None: no label yet, saving creates one
    doubt: float
    annotations: list[dict[str, Any]]  # machine and human annotations, oldest first
    held_since: float = field(default_factory=time.monotonic)  # when it was locked for the user

    @property
    def triplet_id(self) -> str:
        return self.triplet["id"]

    @property
    def version(self) -> int:
        return self.label.version if self.label else 0

    @property
    def prefill(self) -> Rewards | None:
        """What the form starts with: the label, else the first machine annotation."""
        if self.label is not None:
            return self.label.rewards
        for a in self.annotations:
            if a["status"] == "ok" and a["kind"] != "human":
                return a["rewards"]
        return None


@dataclass(frozen=True)
class _Candidate:
    triplet_id: str
    doubt: float


class ReviewQueue:
    """Doubt-ordered review queue over a store; thread-safe (one per studio process)."""

    def __init__(self, store: Store, *, lock_seconds: float = DEFAULT_LOCK_SECONDS) -> None:
        self.store = store
        self.lock_seconds = lock_seconds
        self._mutex = threading.Lock()
        self._doubt_order = DoubtOrder(store)
        self._claims: dict[str, tuple[str, float]] = {}  # unlabelled id -> (user, until)

    # -- doubt ---------------------------------------------------------------------------------
    def warm(self) -> None:
        """Compute the doubt order now (the first ``next_item`` would, taking ~1 s per
        20,000 triplets); :func:`studio.app.create_context` runs this in the background."""
        with self._mutex:
            self._doubt_order.refresh()

    def doubt(self, triplet_id: str) -> float:
        with self._mutex:
            self._doubt_order.refresh()
            return self._doubt_order.doubts.get(triplet_id, 10.0)

    # -- choosing the next item ----------------------------------------------------------------
    def _eligible(self, flt: ReviewFilter, user: str, ids: list[str]) -> list[str]:
        """The ids among ``ids`` whose current label passes the dynamic filters."""
        cols = ", ".join(PERSPECTIVES)
        with self.store.db() as db:
            rows = db.execute(
                f"SELECT triplet_id, status, locked_by, locked_until, {cols} FROM labels "
                f"WHERE triplet_id IN ({', '.join('?' * len(ids))})",
                ids,
            ).fetchall()
        labels = {r[0]: r for r in rows}
        wanted = flt.statuses()
        stamp = store_now()
        now = time.monotonic()
        out = []
        for tid in ids:
            row = labels.get(tid)
            status = row[1] if row else None
            if status not in wanted:
                continue
            if row is not None and row[2] not in (None, user) and row[3] > stamp:
                continue  # locked by someone else
            if row is None:
                claim = self._claims.get(tid)
                if claim and claim[0] != user and claim[1] > now:
                    continue
            if flt.perspective is not None:
                if row is None:
                    continue
                score = row[4 + PERSPECTIVES.index(flt.perspective)]
                if not flt.score_min <= score <= flt.score_max:
                    continue
            out.append(tid)
        return out

    def next_item(
        self, user: str, flt: ReviewFilter = ReviewFilter(), *, after: str | None = None
    ) -> ReviewItem | None:
        """Lock and return the most doubtful item for ``user`` (after ``after`` in the order
        when given, to move forward past an item), or None when the queue is empty."""
        with self._mutex:
            self._doubt_order.refresh()
            order = self._doubt_order.candidates(flt)
            start = 0
            if after is not None and after in self._doubt_order.doubts:
                try:
                    start = order.index(after) + 1
                except ValueError:
                    start = 0
            for offset in range(start, len(order), CHUNK):
                for tid in self._eligible(flt, user, order[offset : offset + CHUNK]):
                    item = self._take(tid, user)
                    if item is not None:
                        return item
        return None

    def upcoming(self, user: str, flt: ReviewFilter, after: str | None, limit: int) -> list[str]:
        """The ids of up to ``limit`` items that ``next_item`` may give ``user`` after ``after``
        (the queue's order, the same checks), without taking any: for loading ahead."""
        out: list[str] = []
        with self._mutex:
            self._doubt_order.refresh()
            order = self._doubt_order.candidates(flt)
            start = order.index(after) + 1 if after in order else 0
            for offset in range(start, len(order), CHUNK):
                for tid in self._eligible(flt, user, order[offset : offset + CHUNK]):
                    if tid != after:
                        out.append(tid)
                    if len(out) == limit:
                        return out
        return out

    def previous_item(self, user: str, flt: ReviewFilter, before: str) -> ReviewItem | None:
        """The item just before ``before`` in the queue order that ``user`` may open."""
        with self._mutex:
            self._doubt_order.refresh()
            order = self._doubt_order.candidates(flt)
            if before not in order:
                return None
            end = order.index(before)
            for stop in range(end, 0, -CHUNK):
                chunk = order[max(0, stop - CHUNK) : stop]
                for tid in reversed(self._eligible(flt, user, chunk)):
                    item = self._take(tid, user)
                    if item is not None:
                        return item
        return None

    def open_item(self, user: str, triplet_id: str) -> ReviewItem:
        """Lock and return a given triplet (raises LockedError / NotFoundError)."""
        if self.store.get_triplet(triplet_id)["edited"] is None:
            raise StoreInputError(
                f"Triplet {triplet_id} has no edited image (it is a benchmark input); there is "
                "no edit to review."
            )
        with self._mutex:
            self._doubt_order.refresh()
            item = self._take(triplet_id, user, strict=True)
        assert item is not None
        return item

    def _take(self, tid: str, user: str, strict: bool = False) -> ReviewItem | None:
        triplet = self.store.get_triplet(tid)  # NotFoundError for an unknown id
        try:
            label = self.store.acquire_lock(tid, user, seconds=self.lock_seconds)
        except LockedError:
            if strict:
                raise
            return None  # someone took it between the check and the lock
        except NotFoundError:  # the triplet exists, so it has no label yet
            label = None
        held_since = time.monotonic()
        if label is None:
            claim = self._claims.get(tid)
            if claim and claim[0] != user and claim[1] > held_since:
                if strict:
                    raise LockedError(
                        f"Triplet {tid} is being labelled by {claim[0]}; try again later."
                    )
                return None
            self._claims[tid] = (user, held_since + self.lock_seconds)
        annotations = self.store.annotations(tid, task="annotate")
        return ReviewItem(
            triplet, label, self._doubt_order.doubts.get(tid, 10.0), annotations, held_since
        )

    def release(self, user: str, triplet_id: str) -> None:
        """Give an item back without deciding (e.g. when moving away from it)."""
        self.store.release_lock(triplet_id, user)
        with self._mutex:
            if self._claims.get(triplet_id, ("",))[0] == user:
                del self._claims[triplet_id]

    # -- saving -------------------------------------------------------------------------------
    def save(
        self,
        user: str,
        triplet_id: str,
        expected_version: int,
        decision: str,
        scores: Sequence[float],
        texts: Sequence[str],
        note: str | None = None,
        *,
        held_since: float | None = None,
    ) -> LabelRecord:
        """Record a decision: ``accept``, ``fix`` (Fix & Accept), ``reject`` or ``skip``.

        ``accept`` and ``fix`` both save the displayed values; the status is ``accepted``
        when they equal the loaded label and ``fixed`` when they differ (so a correction can
        never be recorded as an unchanged acceptance). ``held_since`` is the
        :attr:`ReviewItem.held_since` of the item on screen; the seconds since then are
        recorded as the time spent on it. Raises ConflictError (the label moved on),
        LockedError (someone else holds it) or a ValueError for bad input.
        """
        if decision not in DECISIONS:
            raise ValueError(
                f"unknown decision {decision!r}; choose one of {', '.join(DECISIONS)}."
            )
        rewards = Rewards.from_scores(list(scores), list(texts))
        status = DECISIONS[decision]
        if expected_version == 0:  # first label of an unlabelled triplet
            status = status or "fixed"
        seconds = None if held_since is None else max(0.0, time.monotonic() - held_since)
        record = self.store.update_label(
            triplet_id, rewards, user=user, expected_version=expected_version,
            status=status, note=note or None, seconds=seconds,
        )  # fmt: skip
        with self._mutex:
            self._claims.pop(triplet_id, None)
        return record

    # -- undo and overviews --------------------------------------------------------------------
    def undo_last(self, user: str) -> tuple[ReviewItem, LabelRecord]:
        """Undo ``user``'s most recent decision not yet undone (``Store.undo_label``) and
        open that item for them again; returns it with the label as it is now."""
        recent = self.store.recent_decisions(user, limit=1)
        if not recent:
            raise StoreInputError("You have no decision to undo.")
        last = recent[0]
        record = self.store.undo_label(last["triplet_id"], user=user, version=last["version"])
        return self.open_item(user, last["triplet_id"]), record

    def overview(self, flt: ReviewFilter, limit: int = 200) -> list[dict[str, Any]]:
        """The first ``limit`` items passing ``flt``, in queue order (most doubtful first),
        with their status and who holds them: the table the review tab jumps from."""
        with self._mutex:
            self._doubt_order.refresh()
            order = self._doubt_order.candidates(flt)
            doubt = dict(self._doubt_order.doubts)
        wanted, stamp, out = flt.statuses(), store_now(), []
        for offset in range(0, len(order), 4 * CHUNK):
            ids = order[offset : offset + 4 * CHUNK]
            with self.store.db() as db:
                rows = db.execute(
                    f"SELECT l.triplet_id, l.status, l.locked_by, l.locked_until, "
                    f"{', '.join('l.' + p for p in PERSPECTIVES)} FROM labels l "
                    f"WHERE l.triplet_id IN ({', '.join('?' * len(ids))})", ids,
                ).fetchall()  # fmt: skip
                texts = dict(db.execute(
                    f"SELECT id, instruction FROM triplets WHERE id IN "
                    f"({', '.join('?' * len(ids))})", ids,
                ).fetchall())  # fmt: skip
            labels = {r[0]: r for r in rows}
            for tid in ids:
                row = labels.get(tid)
                if (row[1] if row else None) not in wanted:
                    continue
                if flt.perspective is not None:
                    score = row[4 + PERSPECTIVES.index(flt.perspective)] if row else None
                    if score is None or not flt.score_min <= score <= flt.score_max:
                        continue
                held = row[2] if row and row[2] and row[3] > stamp else ""
                out.append({"id": tid, "instruction": texts[tid],
                            "status": row[1] if row else UNLABELED,
                            "doubt": round(doubt.get(tid, 10.0), 1), "held by": held})  # fmt: skip
                if len(out) == limit:
                    return out
        return out

    # -- progress and export -------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """Reviewable triplets (those with an edited image) per review status."""
        counts = dict.fromkeys((*REVIEW_STATUSES, UNLABELED), 0)
        with self.store.db() as db:
            for status, n in db.execute(
                "SELECT ifnull(l.status, ?), count(*) FROM triplets t "
                "LEFT JOIN labels l ON l.triplet_id = t.id WHERE t.edited IS NOT NULL GROUP BY 1",
                [UNLABELED],
            ):
                counts[status] = n
        return counts

    def progress(self) -> list[dict[str, Any]]:
        """Per annotator: saves, by outcome, and the median seconds per item (over the saves
        whose time was measured; None when there are none)."""
        with self.store.db() as db:
            rows = db.execute(
                "SELECT user, at, after, seconds FROM label_history "
                "WHERE action IN ('edit', 'review') OR (action = 'create' AND user IN "
                "(SELECT name FROM users)) ORDER BY user, at"
            ).fetchall()
        per_user: dict[str, list[tuple[str, str, float | None]]] = {}
        for user, at, after, seconds in rows:
            per_user.setdefault(user, []).append((at, json.loads(after)["status"], seconds))
        out = []
        for user, events in per_user.items():
            timed = [s for _, _, s in events if s is not None]
            statuses = [s for _, s, _ in events]
            out.append(
                {
                    "annotator": user,
                    "saved": len(events),
                    "accepted": statuses.count("accepted"),
                    "fixed": statuses.count("fixed"),
                    "rejected": statuses.count("rejected"),
                    "skipped": statuses.count("skipped"),
                    "median_seconds_per_item": round(statistics.median(timed), 1)
                    if timed
                    else None,
                    "last_active": events[-1][0][:19].replace("T", " "),
                }
            )
        return out

    def export(self, folder: Path, *, include_unreviewed: bool = False) -> list[Path]:
        """The labels (human corrections win, rejected left out) as CSV, JSON with provenance
        and RewardEdit-20K JSON, written by ``data.interop.export_labels``."""
        from data.interop import export_labels

        paths = []
        for fmt, name in (("csv", "labels.csv"), ("json", "labels.json"),
                          ("rewardedit", "labels_rewardedit.json")):  # fmt: skip
            export_labels(self.store, folder / name, fmt, reviewed_only=not include_unreviewed)
            paths.append(folder / name)
        return paths

    def filter_choices(self) -> dict[str, list[str]]:
        """Values offered by the filter dropdowns: categories and judge models."""
        with self.store.db() as db:
            cats = [r[0] for r in db.execute(
                "SELECT DISTINCT category FROM triplets WHERE category IS NOT NULL ORDER BY 1"
            )]  # fmt: skip
            judges = [r[0] for r in db.execute(
                "SELECT DISTINCT judge_model FROM annotations WHERE judge_model IS NOT NULL "
                "AND task = 'annotate' ORDER BY 1"
            )]  # fmt: skip
        return {"category": cats, "judge": judges}
