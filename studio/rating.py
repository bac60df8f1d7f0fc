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

Trust (docs/studio.md, "Results a team can trust"): with ``gold_share`` > 0 a rater's next pair
is, with that probability, a *gold pair* (:mod:`studio.gold`: two images with a known answer),
shown exactly like a real pair and counted in the rater's progress; gold answers only feed the
per-rater table. Ratings made in local single-user mode (the built-in ``local`` user) are
stored with ``mode = 'local'`` and kept out of the team's tables; excluded raters
(``Store.exclude_rater``) too.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from core.rewards import PERSPECTIVES
from core.stats import (
    GOLD_COLUMNS,
    JUDGE_COLUMNS,
    PREFERENCE_COLUMNS,
    RATING_COLUMNS,
    ResultsConfig,
    ResultsReport,
    build_report,
    judge_human_agreement,
    rater_agreement,
    score_table,
    score_table_wide,
)
from core.store import ConflictError, Store, StoreInputError
from studio.auth import LOCAL_USER
from studio.media import NeutralImages

SIDE_PREFERENCES = {"left": None, "right": None, "tie": "tie", "both bad": "both_bad"}
GOLD_BETTER, GOLD_WORSE = "gold:better", "gold:worse"  # system names of gold assignments


@dataclass(frozen=True)
class Evaluation:
    """Which two runs are compared and by how many raters each item is seen."""

    system_a: str  # run name (never shown to raters)
    system_b: str  # run name (never shown to raters)
    overlap: int = 3  # k: raters per item
    seed: int = 0  # left/right draw and per-rater item order
    gold_share: float = 0.0  # chance that a rater's next pair is a gold pair (known answer)
    reveal: bool = False  # after each vote, tell the rater which system was on which side

    def __post_init__(self) -> None:
        if not 0.0 <= self.gold_share <= 1.0:
            raise ValueError(f"gold_share must be between 0 and 1, got {self.gold_share}.")
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

    # A rater's work in this evaluation: its pairs and any gold pair.
    _MINE = "rater = ? AND ((system_a = ? AND system_b = ?) OR gold_id IS NOT NULL)"

    def _pending(self, rater: str) -> dict[str, Any] | None:
        ev = self.evaluation
        with self.store.db() as db:
            rows = list(
                db.query(
                    f"SELECT * FROM rating_assignments WHERE {self._MINE} "
                    "AND status = 'pending' ORDER BY id LIMIT 1",
                    [rater, ev.system_a, ev.system_b],
                )
            )
        return rows[0] if rows else None

    @staticmethod
    def mode(rater: str) -> str:
        """``local`` for the single-user mode's built-in user, else ``team``."""
        return "local" if rater == LOCAL_USER else "team"

    def _gold_turn(self, rater: str) -> bool:
        """Whether the rater's next pair is a gold one: a seeded draw per rater and pair."""
        if self.evaluation.gold_share <= 0:
            return False
        _, assigned = self.counts(rater)
        draw = random.Random(f"{self.evaluation.seed}|{rater}|gold|{assigned}").random()
        return draw < self.evaluation.gold_share

    def _allocate_gold(self, rater: str) -> dict[str, Any] | None:
        """Assign a gold pair the rater has not seen (one per benchmark item), if any."""
        with self.store.db() as db:
            seen = {
                r[0]
                for r in db.execute(
                    "SELECT item_id FROM rating_assignments WHERE rater = ? AND gold_id IS NOT NULL",
                    [rater],
                ).fetchall()
            }
        fresh = [g for g in self.store.gold_items() if g["item_id"] not in seen]
        if not fresh:
            return None
        gold = random.Random(f"{self.evaluation.seed}|{rater}|gold").choice(fresh)
        self.store.assign_ratings(
            rater,
            [{"item_id": gold["item_id"], "system_a": GOLD_BETTER, "system_b": GOLD_WORSE,
              "gold_id": gold["id"]}],
            seed=self.evaluation.seed,
            mode=self.mode(rater),
        )  # fmt: skip
        return self._pending(rater)

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
            return None  # gold pairs only ever come between real ones
        if self._gold_turn(rater):
            gold = self._allocate_gold(rater)
            if gold is not None:
                return gold
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
            mode=self.mode(rater),
        )  # fmt: skip
        return self._pending(rater)

    def next(self, rater: str) -> BlindPair | None:
        """The rater's current pair (allocating one if needed), or None when done."""
        with self._alloc:
            row = self._pending(rater) or self._allocate(rater)
        if row is None:
            return None
        return self._present(rater, row)

    def _images(self, row: dict[str, Any]) -> tuple[str, str]:
        """The image hashes of system A and B (a gold pair: its better and worse image)."""
        with self.store.db() as db:
            if row["gold_id"] is not None:
                return db.execute(
                    "SELECT better, worse FROM gold_items WHERE id = ?", [row["gold_id"]]
                ).fetchone()
            return tuple(
                db.execute("SELECT image FROM run_outputs WHERE id = ?", [out]).fetchone()[0]
                for out in (row["output_a"], row["output_b"])
            )

    def _present(self, rater: str, row: dict[str, Any]) -> BlindPair:
        triplet = self.store.get_triplet(row["item_id"])
        a, b = self._images(row)
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
                f"SELECT sum(status = 'done'), count(*) FROM rating_assignments WHERE {self._MINE}",
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
                "SELECT a_side, system_a, system_b, gold_id FROM rating_assignments WHERE id = ?",
                [assignment_id],
            ).fetchone()
        ev = self.evaluation
        if row is None or (row[3] is None and (row[1], row[2]) != (ev.system_a, ev.system_b)):
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

    def reveal(self, rater: str, assignment_id: int) -> str:
        """After a vote, with ``reveal`` on: which system was on which side (Markdown)."""
        with self.store.db() as db:
            row = fetch_assignment(db, assignment_id)
        if row is None or row["rater"] != rater or row["status"] != "done":
            raise ConflictError(f"assignment {assignment_id} is not a finished rating of yours.")
        if row["gold_id"] is not None:
            side = "left" if row["a_side"] == "L" else "right"
            return f"That was a check pair with a known answer: the better image was on the {side}."
        names = display_names(self.store)
        a, b = (
            names.get(row["system_a"], row["system_a"]),
            names.get(row["system_b"], row["system_b"]),
        )
        left, right = (a, b) if row["a_side"] == "L" else (b, a)
        return f"Left was **{left}**, right was **{right}**."


def fetch_assignment(db: Any, assignment_id: int) -> dict[str, Any] | None:
    rows = list(db.query("SELECT * FROM rating_assignments WHERE id = ?", [assignment_id]))
    return rows[0] if rows else None


# -- results ---------------------------------------------------------------------------------


def ratings_frames(
    store: Store, rows: list[dict[str, Any]] | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Ratings as the long ``ratings`` and ``preferences`` frames of :mod:`core.stats`: the
    given ``store.ratings()`` rows, by default every team rating of a real pair."""
    if rows is None:
        rows = [r for r in store.ratings() if r["gold_id"] is None and r["mode"] == "team"]
    scores, prefs = [], []
    outcome = {"A": "a", "B": "b", "tie": "tie", "both_bad": "both_bad"}
    for r in rows:
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


def gold_frame(store: Store, rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The raters' answers to gold pairs: their outcome against the known one (``a``: the
    better image) and the mean absolute error of their scores against the known scores."""
    gold = {g["id"]: g for g in store.gold_items()}
    outcome = {"A": "a", "B": "b", "tie": "tie", "both_bad": "both_bad", None: None}
    answers = []
    for r in rows:
        g = gold[r["gold_id"]]
        errors = [
            abs(r[f"{side}_{p}"] - g[f"{known}_{p}"])
            for side, known in (("a", "better"), ("b", "worse"))
            for p in PERSPECTIVES
            if r[f"{side}_{p}"] is not None and g[f"{known}_{p}"] is not None
        ]
        error = float(np.mean(errors)) if errors else float("nan")
        answers.append((r["rater"], r["gold_id"], outcome[r["preference"]], "a", error))
    return pd.DataFrame(answers, columns=list(GOLD_COLUMNS))


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


def _rater_table(
    table: pd.DataFrame, rows: list[dict[str, Any]], excluded: dict[str, dict[str, Any]]
) -> pd.DataFrame:
    """:func:`core.stats.rater_agreement`'s table with each rater's mode(s) and exclusion."""
    modes: dict[str, set[str]] = {}
    for r in rows:
        modes.setdefault(r["rater"], set()).add(r["mode"])
    table = table.copy()
    table.insert(1, "mode", [" + ".join(sorted(modes.get(r, {"team"}))) for r in table["rater"]])
    table.insert(2, "excluded", [r in excluded for r in table["rater"]])
    table["exclusion_reason"] = [excluded.get(r, {}).get("reason", "") for r in table["rater"]]
    return table


def results(
    store: Store, config: ResultsConfig = ResultsConfig(), *, include_local: bool = False
) -> ResultsReport:
    """The full human-evaluation report (for admins).

    The system tables count team ratings of real pairs by raters who are not excluded
    (``include_local`` adds local single-user ratings). The per-rater table covers every rater,
    local and excluded ones included (flagged), with their gold answers; ``local_scores`` is
    Table 3 over the local-mode ratings alone. Systems appear under :func:`display_names`;
    judge agreement is reported per judge (model and prompt version).
    """
    rows = store.ratings()
    excluded = store.excluded_raters()
    real = [r for r in rows if r["gold_id"] is None]
    counted = [
        r for r in real if (r["mode"] == "team" or include_local) and r["rater"] not in excluded
    ]
    ratings, prefs = ratings_frames(store, counted)
    all_ratings, all_prefs = ratings_frames(store, real)
    local_ratings, _ = ratings_frames(store, [r for r in real if r["mode"] == "local"])
    gold = gold_frame(store, [r for r in rows if r["gold_id"] is not None])
    judges = judge_frame(store, set(ratings["system"]))
    names = display_names(store)
    for frame in (ratings, local_ratings, judges):
        frame["system"] = frame["system"].map(lambda n: names.get(n, n))
    for col in ("system_a", "system_b"):
        prefs[col] = prefs[col].map(lambda n: names.get(n, n))
    report = build_report(ratings, prefs, None, config)
    report.raters = _rater_table(rater_agreement(all_ratings, all_prefs, gold), rows, excluded)
    report.local_scores = score_table_wide(score_table(local_ratings, config))
    agreement = []
    for judge, frame in judges.groupby("judge", sort=True):
        table = judge_human_agreement(ratings, frame[list(JUDGE_COLUMNS)], config)
        agreement.append(table.assign(judge=judge))
    if agreement:
        table = pd.concat(agreement, ignore_index=True)
        report.judge_agreement = table[["judge", *[c for c in table.columns if c != "judge"]]]
    return report
