"""Blind side-by-side human evaluation: allocation with k-rater overlap, submission, results.

UI-independent; ``studio/rate_tab.py`` wires it to Gradio.

An :class:`Evaluation` compares two benchmark runs (the *systems*) on the items both have an
output for. Raters pull work: when a rater has no pending assignment, :meth:`BlindRating.next`
allocates the item that has the fewest live assignments (pending or done, not skipped) among
those still below ``overlap`` (k) and not yet shown to this rater; ties are broken by an order
shuffled per rater, so raters do not walk the benchmark in the same sequence. Allocation
holds a process lock, so two raters asking at the same moment cannot push an item past k.

Blinding: the store draws on which side system A appears (``a_side``); what leaves this
module for the rater is only the instruction, the input image and the two outputs (served
by :meth:`~studio.media.NeutralImages.blind` under fresh random names, with one byte size and
one modification time, so no header or file property tells the systems apart; store files
carry no metadata) plus an opaque assignment number. The mapping from sides back to systems happens
here, on the server, at submission. The rater comes from the login session, and the store
refuses a rating for an assignment that belongs to someone else.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass
from typing import Any

import pandas as pd

from core.rewards import PERSPECTIVES
from core.store import ConflictError, Store, StoreInputError
from studio.media import NeutralImages
from studio.results import (
    JUDGE_COLUMNS,
    PREFERENCE_COLUMNS,
    RATING_COLUMNS,
    ResultsConfig,
    ResultsReport,
    build_report,
    judge_agreement,
)

SIDE_PREFERENCES = {"left": None, "right": None, "tie": "tie", "both bad": "both_bad"}


@dataclass(frozen=True)
class Evaluation:
    """Which two runs are compared and by how many raters each item is seen."""

    system_a: str  # run name (never shown to raters)
    system_b: str  # run name (never shown to raters)
    overlap: int = 3  # k: raters per item
    seed: int = 0  # left/right draw and per-rater item order

    def __post_init__(self) -> None:
        if self.system_a == self.system_b:
            raise ValueError("an evaluation compares two different runs; both are the same.")
        if self.overlap < 1:
            raise ValueError(f"overlap (raters per item) must be at least 1, got {self.overlap}.")


@dataclass(frozen=True)
class BlindPair:
    """What a rater sees: nothing here names a system."""

    assignment_id: int
    instruction: str
    original: str  # neutral file paths
    left: str
    right: str
    done: int  # this rater's finished assignments in the evaluation
    assigned: int  # this rater's assignments so far (done + pending + skipped)


class BlindRating:
    """Allocation, blind presentation and submission for one evaluation."""

    def __init__(self, store: Store, evaluation: Evaluation, media: NeutralImages) -> None:
        self.store = store
        self.evaluation = evaluation
        self.media = media
        self._alloc = threading.Lock()
        run_a = store.get_run(evaluation.system_a)  # NotFoundError names a missing run
        run_b = store.get_run(evaluation.system_b)
        out_a = {o["item_id"]: o["id"] for o in store.outputs(run_a["id"])}
        out_b = {o["item_id"]: o["id"] for o in store.outputs(run_b["id"])}
        self.items = [i for i in out_a if i in out_b]  # benchmark order of run A
        if not self.items:
            raise ValueError(
                f"runs {evaluation.system_a!r} and {evaluation.system_b!r} have no benchmark "
                "item in common; there is nothing to compare."
            )
        self._outputs = {i: (out_a[i], out_b[i]) for i in self.items}

    # -- allocation ---------------------------------------------------------------------------
    def _assignments(self, db: Any) -> list[tuple[str, str, str]]:
        ev = self.evaluation
        return db.execute(
            "SELECT rater, item_id, status FROM rating_assignments "
            "WHERE system_a = ? AND system_b = ?",
            [ev.system_a, ev.system_b],
        ).fetchall()

    def _pending(self, rater: str) -> dict[str, Any] | None:
        ev = self.evaluation
        with self.store.db() as db:
            rows = list(
                db.query(
                    "SELECT * FROM rating_assignments WHERE rater = ? AND status = 'pending' "
                    "AND system_a = ? AND system_b = ? ORDER BY id LIMIT 1",
                    [rater, ev.system_a, ev.system_b],
                )
            )
        return rows[0] if rows else None

    def _allocate(self, rater: str) -> dict[str, Any] | None:
        ev = self.evaluation
        with self.store.db() as db:
            rows = self._assignments(db)
        live: dict[str, int] = {}
        mine: set[str] = set()
        for who, item, status in rows:
            if who == rater:
                mine.add(item)
            if status != "skipped":
                live[item] = live.get(item, 0) + 1
        open_items = [i for i in self.items if i not in mine and live.get(i, 0) < ev.overlap]
        if not open_items:
            return None
        order = list(self.items)
        random.Random(f"{ev.seed}|{rater}").shuffle(order)
        rank = {item: n for n, item in enumerate(order)}
        item = min(open_items, key=lambda i: (live.get(i, 0), rank[i]))
        out_a, out_b = self._outputs[item]
        self.store.assign_ratings(
            rater,
            [{"item_id": item, "system_a": ev.system_a, "output_a": out_a,
              "system_b": ev.system_b, "output_b": out_b}],
            seed=ev.seed,
        )  # fmt: skip
        return self._pending(rater)

    def next(self, rater: str) -> BlindPair | None:
        """The rater's current pair (allocating one if needed), or None when done."""
        with self._alloc:
            row = self._pending(rater) or self._allocate(rater)
        if row is None:
            return None
        return self._present(rater, row)

    def _present(self, rater: str, row: dict[str, Any]) -> BlindPair:
        triplet = self.store.get_triplet(row["item_id"])
        images = {}
        with self.store.db() as db:
            for out in (row["output_a"], row["output_b"]):
                images[out] = db.execute(
                    "SELECT image FROM run_outputs WHERE id = ?", [out]
                ).fetchone()[0]
        a, b = images[row["output_a"]], images[row["output_b"]]
        left, right = (a, b) if row["a_side"] == "L" else (b, a)
        done, assigned = self.counts(rater)
        original, left, right = self.media.blind(
            [self.store.image_path(h) for h in (triplet["original"], left, right)]
        )
        return BlindPair(
            assignment_id=row["id"],
            instruction=triplet["instruction"],
            original=original,
            left=left,
            right=right,
            done=done,
            assigned=assigned,
        )

    def counts(self, rater: str) -> tuple[int, int]:
        ev = self.evaluation
        with self.store.db() as db:
            done, total = db.execute(
                "SELECT sum(status = 'done'), count(*) FROM rating_assignments "
                "WHERE rater = ? AND system_a = ? AND system_b = ?",
                [rater, ev.system_a, ev.system_b],
            ).fetchone()
        return int(done or 0), int(total)

    def coverage(self) -> dict[str, int]:
        """Items with k finished ratings, ratings done and needed in total."""
        with self.store.db() as db:
            rows = self._assignments(db)
        done: dict[str, int] = {}
        for _, item, status in rows:
            if status == "done":
                done[item] = done.get(item, 0) + 1
        k = self.evaluation.overlap
        return {
            "items": len(self.items),
            "items_complete": sum(1 for i in self.items if done.get(i, 0) >= k),
            "ratings_done": sum(done.values()),
            "ratings_needed": k * len(self.items),
        }

    # -- submission ---------------------------------------------------------------------------
    def submit(
        self,
        rater: str,
        assignment_id: int,
        left: dict[str, float],
        right: dict[str, float],
        preference: str | None,
        seconds: float | None = None,
    ) -> int:
        """Store a rating given by side; maps sides to systems here. Returns the rating id."""
        if preference is not None and preference not in SIDE_PREFERENCES:
            raise StoreInputError(
                f"preference must be one of {', '.join(SIDE_PREFERENCES)} or empty; "
                f"got {preference!r}."
            )
        for side, scores in (("left", left), ("right", right)):
            missing = [p for p in PERSPECTIVES if scores.get(p) is None]
            if missing:
                raise StoreInputError(f"give the {side} image a score for {', '.join(missing)}.")
        with self.store.db() as db:
            row = db.execute(
                "SELECT a_side, system_a, system_b FROM rating_assignments WHERE id = ?",
                [assignment_id],
            ).fetchone()
        ev = self.evaluation
        if row is None or (row[1], row[2]) != (ev.system_a, ev.system_b):
            raise ConflictError(f"assignment {assignment_id} is not part of this evaluation.")
        a_is_left = row[0] == "L"
        scores_a, scores_b = (left, right) if a_is_left else (right, left)
        pref = SIDE_PREFERENCES.get(preference) if preference else None
        if preference in ("left", "right"):
            pref = "A" if (preference == "left") == a_is_left else "B"
        return self.store.add_rating(
            assignment_id,
            rater=rater,
            scores_a=scores_a,
            scores_b=scores_b,
            preference=pref,
            seconds=seconds,
        )

    def skip(self, rater: str, assignment_id: int) -> None:
        self.store.skip_assignment(assignment_id, rater)


# -- results ---------------------------------------------------------------------------------


def ratings_frames(store: Store) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every stored rating as the long ``ratings`` and ``preferences`` frames of results.py."""
    scores, prefs = [], []
    outcome = {"A": "a", "B": "b", "tie": "tie", "both_bad": "both_bad"}
    for r in store.ratings():
        for side, system in (("a", r["system_a"]), ("b", r["system_b"])):
            if system is None:
                continue
            for p in PERSPECTIVES:
                if r[f"{side}_{p}"] is not None:
                    scores.append((r["item_id"], system, r["rater"], p, float(r[f"{side}_{p}"])))
        if r["preference"] is not None and r["system_b"] is not None:
            prefs.append(
                (r["item_id"], r["rater"], r["system_a"], r["system_b"], outcome[r["preference"]])
            )
    return (
        pd.DataFrame(scores, columns=list(RATING_COLUMNS)),
        pd.DataFrame(prefs, columns=list(PREFERENCE_COLUMNS)),
    )


def judge_frame(store: Store, systems: set[str]) -> pd.DataFrame:
    """The judges' verdict scores on the rated systems' outputs (``judge`` names the judge)."""
    rows = []
    for run in store.list_runs():
        if run["name"] not in systems:
            continue
        for v in store.verdicts(run_id=run["id"], status="ok"):
            judge = f"{v['judge_model']} ({v['prompt_version']})"
            for p in PERSPECTIVES:
                rows.append((v["item_id"], run["name"], p, v["verdict"][p]["score"], judge))
    return pd.DataFrame(rows, columns=[*JUDGE_COLUMNS, "judge"])


def display_names(store: Store) -> dict[str, str]:
    """Run name -> the name shown in results: the system name ``train.evaluate`` stored in the
    run's settings (``demo-corrupted`` for ``store-bench-shapes:demo-corrupted:ad5c...``) when
    that is unique, else the full run name."""
    runs = store.list_runs()
    short = {r["name"]: str(r["settings"].get("system") or r["name"]) for r in runs}
    taken = [v for v in short.values()]
    return {k: (v if taken.count(v) == 1 else k) for k, v in short.items()}


def results(store: Store, config: ResultsConfig = ResultsConfig()) -> ResultsReport:
    """The full human-evaluation report over every rating in the store (for admins).

    Systems appear under :func:`display_names`; judge agreement is reported per judge (model
    and prompt version).
    """
    ratings, prefs = ratings_frames(store)
    judges = judge_frame(store, set(ratings["system"]))
    names = display_names(store)
    ratings["system"] = ratings["system"].map(lambda n: names.get(n, n))
    for col in ("system_a", "system_b"):
        prefs[col] = prefs[col].map(lambda n: names.get(n, n))
    judges["system"] = judges["system"].map(lambda n: names.get(n, n))
    report = build_report(ratings, prefs, None, config)
    agreement = []
    for judge, frame in judges.groupby("judge", sort=True):
        table = judge_agreement(ratings, frame[list(JUDGE_COLUMNS)], config)
        agreement.append(table.assign(judge=judge))
    if agreement:
        table = pd.concat(agreement, ignore_index=True)
        report.judge_agreement = table[["judge", *[c for c in table.columns if c != "judge"]]]
    return report
