"""Blinded human ratings of benchmark outputs.

An *assignment* puts one item in front of one rater: the output of system A, and optionally
the output of system B for a side-by-side comparison. The system names are stored but meant to
be hidden by the interface; ``a_side`` ("L" or "R", drawn from a seeded RNG per assignment)
records on which side A's output is shown, so position bias can be measured and undone.

A *rating* answers an assignment: per-perspective scores in [0, 5] for A (and B), a
preference ``A`` / ``B`` / ``tie`` / ``both_bad`` for pairs, and the seconds spent. Preference
refers to systems, not sides (the interface maps the clicked side through ``a_side``). Each
assignment gets at most one rating; ``ratings`` is append-only; the view ``ratings_full``
joins both tables for analysis.

Trust (issue #14, point 4): a *gold item* is a pair of images for one item with a known answer
(``better`` is preferred; known scores optional); a gold assignment (``gold_id``) shows it like
any pair. Each assignment records the ``mode`` it was made in: ``team`` or ``local`` (the
studio's single-user mode, kept out of the team's tables). Raters can be excluded from the
result tables and included again (``rater_exclusions``, an append-only log).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from typing import Any

from core.rewards import PERSPECTIVES, RewardValidationError, validate_perspective, validate_score

from .base import StoreBase, fetch_one, now, require_row, require_text
from .errors import ConflictError, StoreInputError
from .schema import PREFERENCES

_ASSIGNMENT_ARGS = {"item_id", "system_a", "output_a", "system_b", "output_b", "gold_id"}
MODES = ("team", "local")


def _scores(scores: Mapping[str, Any] | None, prefix: str) -> dict[str, Any]:
    """``{perspective: score}`` (any subset) -> ``{prefix + perspective: score}``."""
    cols = {f"{prefix}{p}": None for p in PERSPECTIVES}
    if scores is None:
        return cols
    if not isinstance(scores, Mapping):
        raise RewardValidationError(
            f"scores must be a mapping of perspective -> score, got {type(scores).__name__}"
        )
    for name, value in scores.items():
        validate_perspective(name)
        cols[f"{prefix}{name}"] = validate_score(value, f"{name} score")
    return cols


def _side(seed: int, rater: str, a: Mapping[str, Any]) -> str:
    rng = random.Random(f"{seed}|{rater}|{a['item_id']}|{a['system_a']}|{a.get('system_b')}")
    return rng.choice(("L", "R"))


class RatingsMixin(StoreBase):
    def assign_ratings(
        self,
        rater: str,
        items: Iterable[Mapping[str, Any]],
        *,
        seed: int = 0,
        mode: str = "team",
    ) -> list[int]:
        """Create assignments for ``rater``; each item: ``item_id``, ``system_a``, ``output_a``
        and optionally ``system_b``, ``output_b``, or a ``gold_id`` (a gold pair: the outputs
        stay empty). ``mode`` is ``team`` or ``local`` (single-user mode). Re-assigning the
        same (rater, item, systems) returns the existing assignment. Returns ids in input
        order."""
        require_text(rater, "rater")
        if mode not in MODES:
            raise StoreInputError(f"mode must be one of {', '.join(MODES)}; got {mode!r}.")
        items = list(items)
        for i, a in enumerate(items):
            if not isinstance(a, Mapping) or set(a) - _ASSIGNMENT_ARGS:
                raise StoreInputError(
                    f"assignment {i} must be a mapping with keys among {sorted(_ASSIGNMENT_ARGS)}."
                )
            require_text(a.get("item_id"), f"assignment {i}: item_id")
            require_text(a.get("system_a"), f"assignment {i}: system_a")
            if a.get("system_b") is not None:
                require_text(a["system_b"], f"assignment {i}: system_b")
                if a["system_b"] == a["system_a"]:
                    raise StoreInputError(f"assignment {i}: system_a and system_b are the same.")
            elif a.get("output_b") is not None:
                raise StoreInputError(f"assignment {i}: output_b given without system_b.")
        at, ids = now(), []
        with self.transaction() as db:
            user = require_row(db, "users", "name", rater, "user")
            if user["role"] not in ("rater", "admin") or not user["active"]:
                raise StoreInputError(f"user {rater!r} is not an active rater.")
            for a in items:
                key = [rater, a["item_id"], a["system_a"], a.get("system_b") or ""]
                found = db.execute(
                    "SELECT id FROM rating_assignments WHERE rater = ? AND item_id = ? "
                    "AND system_a = ? AND ifnull(system_b, '') = ?",
                    key,
                ).fetchone()
                if found:
                    ids.append(found[0])
                    continue
                require_row(db, "triplets", "id", a["item_id"], "benchmark item (triplet)")
                if a.get("gold_id") is not None:
                    gold = require_row(db, "gold_items", "id", a["gold_id"], "gold item")
                    if gold["item_id"] != a["item_id"]:
                        raise StoreInputError(
                            f"gold item {a['gold_id']} belongs to item {gold['item_id']!r}, "
                            f"not {a['item_id']!r}."
                        )
                for out in ("output_a", "output_b"):
                    if a.get(out) is not None:
                        require_row(db, "run_outputs", "id", a[out], "run output")
                ids.append(
                    db.conn.execute(
                        "INSERT INTO rating_assignments (rater, item_id, system_a, output_a, "
                        "system_b, output_b, a_side, created_at, gold_id, mode) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [
                            rater,
                            a["item_id"],
                            a["system_a"],
                            a.get("output_a"),
                            a.get("system_b"),
                            a.get("output_b"),
                            _side(seed, rater, a),
                            at,
                            a.get("gold_id"),
                            mode,
                        ],
                    ).lastrowid
                )
        return ids

    def next_assignment(self, rater: str) -> dict[str, Any] | None:
        """The rater's oldest pending assignment, with ``left_output``/``right_output`` ids."""
        with self.db() as db:
            row = fetch_one(
                db,
                "SELECT * FROM rating_assignments WHERE rater = ? AND status = 'pending' "
                "ORDER BY id LIMIT 1",
                [rater],
            )
        if row is None:
            return None
        a, b = row["output_a"], row["output_b"]
        row["left_output"], row["right_output"] = (a, b) if row["a_side"] == "L" else (b, a)
        return row

    def skip_assignment(self, assignment_id: int, rater: str) -> None:
        """Mark a pending assignment as skipped (it will not be offered again)."""
        with self.transaction() as db:
            cur = db.conn.execute(
                "UPDATE rating_assignments SET status = 'skipped', done_at = ? "
                "WHERE id = ? AND rater = ? AND status = 'pending'",
                [now(), assignment_id, rater],
            )
            if cur.rowcount != 1:
                raise ConflictError(f"assignment {assignment_id} is not pending for {rater!r}.")

    def add_rating(
        self,
        assignment_id: int,
        *,
        rater: str,
        scores_a: Mapping[str, Any] | None = None,
        scores_b: Mapping[str, Any] | None = None,
        preference: str | None = None,
        seconds: float | None = None,
    ) -> int:
        """Answer an assignment. Scores are ``{perspective: score}`` (a subset is allowed);
        at least one score or a preference is required. Returns the rating id."""
        require_text(rater, "rater")
        cols = {**_scores(scores_a, "a_"), **_scores(scores_b, "b_")}
        if preference is not None and preference not in PREFERENCES:
            raise StoreInputError(
                f"preference must be one of {', '.join(PREFERENCES)}; got {preference!r}."
            )
        if all(v is None for v in cols.values()) and preference is None:
            raise StoreInputError("a rating needs at least one score or a preference.")
        if seconds is not None and not (isinstance(seconds, (int, float)) and seconds >= 0):
            raise StoreInputError(f"seconds must be a non-negative number, got {seconds!r}.")
        at = now()
        with self.transaction() as db:
            a = require_row(db, "rating_assignments", "id", assignment_id, "rating assignment")
            if a["rater"] != rater:
                raise StoreInputError(
                    f"assignment {assignment_id} belongs to {a['rater']!r}, not {rater!r}."
                )
            if a["status"] != "pending":
                raise ConflictError(f"assignment {assignment_id} is already {a['status']}.")
            if a["system_b"] is None and (scores_b is not None or preference is not None):
                raise StoreInputError(
                    f"assignment {assignment_id} shows a single output; scores_b and preference "
                    "only apply to comparisons."
                )
            rid = db.conn.execute(
                f"INSERT INTO ratings (assignment_id, {', '.join(cols)}, preference, seconds, "
                f"created_at) VALUES ({', '.join('?' * (len(cols) + 4))})",
                [assignment_id, *cols.values(), preference, seconds, at],
            ).lastrowid
            db.conn.execute(
                "UPDATE rating_assignments SET status = 'done', done_at = ? WHERE id = ?",
                [at, assignment_id],
            )
            return rid

    def ratings(
        self, *, rater: str | None = None, item_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Rows of the ``ratings_full`` view (rating + its assignment), oldest first."""
        filters = {"rater": rater, "item_id": item_id}
        where = [f"{k} = ?" for k, v in filters.items() if v is not None]
        sql = "SELECT * FROM ratings_full" + (" WHERE " + " AND ".join(where) if where else "")
        with self.db() as db:
            return list(
                db.query(sql + " ORDER BY id", [v for v in filters.values() if v is not None])
            )

    # -- gold items ----------------------------------------------------------------------------
    def add_gold_item(
        self,
        item_id: str,
        better: Any,
        worse: Any,
        *,
        source: str,
        better_scores: Mapping[str, Any] | None = None,
        worse_scores: Mapping[str, Any] | None = None,
    ) -> int:
        """Store a gold pair for ``item_id``: ``better`` is the known preference over ``worse``
        (images: anything :meth:`put_image` takes), with the known scores if any. Adding the
        same pair again returns its id."""
        require_text(source, "source")
        cols = {**_scores(better_scores, "better_"), **_scores(worse_scores, "worse_")}
        better_hash, worse_hash = self._image_ref(better), self._image_ref(worse)
        if better_hash == worse_hash:
            raise StoreInputError("a gold pair needs two different images; both are the same.")
        with self.transaction() as db:
            require_row(db, "triplets", "id", item_id, "benchmark item (triplet)")
            found = db.execute(
                "SELECT id FROM gold_items WHERE item_id = ? AND better = ? AND worse = ?",
                [item_id, better_hash, worse_hash],
            ).fetchone()
            if found:
                return found[0]
            return db.conn.execute(
                f"INSERT INTO gold_items (item_id, better, worse, {', '.join(cols)}, source, "
                f"created_at) VALUES ({', '.join('?' * (len(cols) + 5))})",
                [item_id, better_hash, worse_hash, *cols.values(), source, now()],
            ).lastrowid

    def _image_ref(self, src: Any) -> str:
        """The hash of a stored image given by its hash, else :meth:`put_image` of ``src``."""
        if isinstance(src, str) and len(src) == 64 and self.image_path(src).exists():
            return src
        return self.put_image(src)

    def gold_items(self) -> list[dict[str, Any]]:
        """Every gold pair, oldest first."""
        with self.db() as db:
            return list(db.query("SELECT * FROM gold_items ORDER BY id"))

    # -- excluding raters from the results -----------------------------------------------------
    def _log_exclusion(self, rater: str, action: str, by: str, reason: str) -> None:
        require_text(rater, "rater")
        require_text(by, "by")
        with self.transaction() as db:
            require_row(db, "users", "name", rater, "user")
            admin = require_row(db, "users", "name", by, "user")
            if admin["role"] != "admin" or not admin["active"]:
                raise StoreInputError(
                    f"only an active admin may exclude or include raters; {by!r} is not one."
                )
            db.conn.execute(
                "INSERT INTO rater_exclusions (rater, action, by_user, reason, at) "
                "VALUES (?, ?, ?, ?, ?)",
                [rater, action, by, reason or "", now()],
            )

    def exclude_rater(self, rater: str, *, by: str, reason: str = "") -> None:
        """Leave ``rater``'s ratings out of the result tables (reversible, logged)."""
        self._log_exclusion(rater, "exclude", by, reason)

    def include_rater(self, rater: str, *, by: str, reason: str = "") -> None:
        """Count ``rater``'s ratings in the result tables again (logged)."""
        self._log_exclusion(rater, "include", by, reason)

    def excluded_raters(self) -> dict[str, dict[str, Any]]:
        """Rater -> their newest exclusion row, for raters excluded now."""
        with self.db() as db:
            rows = db.query(
                "SELECT * FROM rater_exclusions WHERE id IN "
                "(SELECT max(id) FROM rater_exclusions GROUP BY rater) AND action = 'exclude'"
            )
            return {r["rater"]: r for r in rows}

    def exclusion_log(self) -> list[dict[str, Any]]:
        """Every exclusion and inclusion, oldest first."""
        with self.db() as db:
            return list(db.query("SELECT * FROM rater_exclusions ORDER BY id"))
