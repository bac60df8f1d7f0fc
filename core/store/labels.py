"""The current label of each triplet, its review state, its history and edit locks.

``labels`` holds one row per labelled triplet: the three scores/texts a human reviews, a
``version`` (1 when created, +1 on every change), the review ``status`` and the ``origin`` of
the current values (``judge``/``oracle`` until a human changes a value, then ``human``).

Review statuses: ``pending`` (machine label, not yet reviewed), ``accepted`` (a reviewer
confirmed it unchanged), ``fixed`` (a reviewer corrected it), ``rejected`` (the triplet is
unusable and is left out of exports), ``skipped`` (a reviewer passed; still unreviewed).

Optimistic concurrency: :meth:`LabelsMixin.update_label` takes the ``expected_version`` the
editor loaded and runs ``UPDATE labels ... WHERE triplet_id = ? AND version = ?`` in a
``BEGIN IMMEDIATE`` transaction; if no row matched, the edit was based on a stale version and
:class:`ConflictError` says who changed it, when, and what the version is now. The history
row (before/after JSON snapshots, and the ``seconds`` the reviewer spent when the caller
measured it) is written in the same transaction, so history and labels can never disagree,
and ``label_history`` is append-only (triggers refuse UPDATE/DELETE).

Locks (``core/store/locks.py``) hold a label for one annotator; while a lock is live, other
users' edits here raise :class:`LockedError`. Exports for training: ``core/store/label_export.py``.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from core.rewards import Rewards

from .annotations import AnnotationsMixin
from .base import (
    as_rewards,
    fetch_one,
    now,
    require_choice,
    require_text,
    rewards_columns,
    rewards_from_row,
)
from .errors import ConflictError, LockedError, NotFoundError, StoreInputError
from .schema import REVIEW_STATUSES


@dataclass(frozen=True)
class LabelRecord:
    """A triplet's current label (one row of ``labels``)."""

    triplet_id: str
    version: int
    status: str
    origin: str  # judge | oracle | human: who produced the current values
    rewards: Rewards
    annotation_id: int | None  # the annotation the label was created from
    note: str | None
    updated_by: str
    updated_at: str
    locked_by: str | None
    locked_until: str | None

    def locked_against(self, user: str, at: str | None = None) -> bool:
        """True when another user holds a live lock on this label."""
        return (
            self.locked_by is not None
            and self.locked_by != user
            and self.locked_until is not None
            and self.locked_until > (at or now())
        )


UNDO_NOTE = "undo of version "  # the history note of an undo, followed by the undone version


def label_record(row: dict[str, Any]) -> LabelRecord:
    return LabelRecord(
        triplet_id=row["triplet_id"],
        version=row["version"],
        status=row["status"],
        origin=row["origin"],
        rewards=rewards_from_row(row),
        annotation_id=row["annotation_id"],
        note=row["note"],
        updated_by=row["updated_by"],
        updated_at=row["updated_at"],
        locked_by=row["locked_by"],
        locked_until=row["locked_until"],
    )


def _snapshot(status: str, origin: str, rewards: Rewards, annotation_id: Any, note: Any) -> str:
    return json.dumps(
        {
            "status": status,
            "origin": origin,
            "rewards": rewards.to_dict(),
            "annotation_id": annotation_id,
            "note": note,
        },
        sort_keys=True,
    )


def _check_seconds(seconds: Any) -> float | None:
    """None, or a finite number of seconds >= 0 as a float (bools are refused)."""
    if seconds is None:
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, numbers.Real):
        raise StoreInputError(
            f"seconds must be a number of seconds >= 0 or None, got {type(seconds).__name__}."
        )
    if not math.isfinite(seconds) or seconds < 0:
        raise StoreInputError(f"seconds must be a finite number >= 0, got {seconds!r}.")
    return float(seconds)


def _conflict(triplet_id: str, row: dict[str, Any], expected: int) -> ConflictError:
    return ConflictError(
        f"The label of triplet {triplet_id} was changed by {row['updated_by']} at "
        f"{row['updated_at']}: it is now version {row['version']}, but your edit was based on "
        f"version {expected}. Reload the label and apply your change again."
    )


def locked_error(triplet_id: str, row: dict[str, Any]) -> LockedError:
    return LockedError(
        f"Triplet {triplet_id} is locked by {row['locked_by']} until {row['locked_until']}; "
        "your change was not saved."
    )


class LabelsMixin(AnnotationsMixin):
    # -- reading -----------------------------------------------------------------------------
    def get_label(self, triplet_id: str) -> LabelRecord | None:
        """The current label, or None if the triplet has none yet."""
        with self.db() as db:
            row = fetch_one(db, "SELECT * FROM labels WHERE triplet_id = ?", [triplet_id])
        return label_record(row) if row else None

    def history(self, triplet_id: str) -> list[dict[str, Any]]:
        """Every change of a triplet's label, oldest first; ``before``/``after`` are dicts."""
        with self.db() as db:
            rows = list(
                db.query(
                    "SELECT * FROM label_history WHERE triplet_id = ? ORDER BY version",
                    [triplet_id],
                )
            )
        for r in rows:
            r["before"] = json.loads(r["before"]) if r["before"] is not None else None
            r["after"] = json.loads(r["after"])
        return rows

    def review_counts(self, *, split: str | None = None) -> dict[str, int]:
        """Number of triplets per review status, plus ``unlabeled``."""
        counts = dict.fromkeys((*REVIEW_STATUSES, "unlabeled"), 0)
        sql = "SELECT ifnull(l.status, 'unlabeled'), count(*) FROM triplets t "
        sql += "LEFT JOIN labels l ON l.triplet_id = t.id"
        params: list[Any] = []
        if split is not None:
            sql, params = sql + " WHERE t.split = ?", [split]
        with self.db() as db:
            for status, n in db.execute(sql + " GROUP BY 1", params).fetchall():
                counts[status] = n
        return counts

    # -- writing -----------------------------------------------------------------------------
    def _history(
        self, db, triplet_id, version, user, at, action, before, after, note, seconds=None
    ) -> None:
        db.execute(
            "INSERT INTO label_history "
            "(triplet_id, version, user, at, action, before, after, note, seconds) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [triplet_id, version, user, at, action, before, after, note, seconds],
        )

    def _insert_label(
        self, db, triplet_id, rewards, *, status, origin, annotation_id, note, user, at,
        seconds=None,
    ):  # fmt: skip
        cols = {
            "triplet_id": triplet_id,
            "version": 1,
            "status": status,
            "origin": origin,
            "annotation_id": annotation_id,
            **rewards_columns(rewards),
            "note": note,
            "updated_by": user,
            "updated_at": at,
        }
        cur = db.conn.execute(
            f"INSERT INTO labels ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
            "ON CONFLICT(triplet_id) DO NOTHING",
            list(cols.values()),
        )
        if cur.rowcount == 1:
            after = _snapshot(status, origin, rewards, annotation_id, note)
            self._history(db, triplet_id, 1, user, at, "create", None, after, note, seconds)
        return cur.rowcount == 1

    def update_label(
        self,
        triplet_id: str,
        rewards: Any = None,
        *,
        user: str,
        expected_version: int,
        status: str | None = None,
        note: str | None = None,
        release_lock: bool = True,
        seconds: float | None = None,
    ) -> LabelRecord:
        """Change a label if it is still at ``expected_version``; return the new label.

        ``rewards`` None keeps the values (a pure review, e.g. ``status="accepted"``). When
        ``status`` is None it becomes ``fixed`` if the values changed, else ``accepted``.
        ``expected_version=0`` creates the first label of an unlabelled triplet (``origin``
        human, status ``fixed`` by default). ``seconds`` is how long the reviewer worked on
        the item (a finite number >= 0, or None when not measured); it is kept in the history
        row. Raises ConflictError when the label moved on, LockedError when another user
        holds it, NotFoundError for an unknown triplet.
        """
        require_text(user, "user")
        if (
            isinstance(expected_version, bool)
            or not isinstance(expected_version, int)
            or expected_version < 0
        ):
            raise StoreInputError(
                f"expected_version must be an integer >= 0, got {expected_version!r}."
            )
        if status is not None:
            require_choice(status, REVIEW_STATUSES, "status")
        if note is not None and not isinstance(note, str):
            raise StoreInputError(f"note must be a string, got {type(note).__name__}.")
        seconds = _check_seconds(seconds)
        new_rewards = as_rewards(rewards) if rewards is not None else None
        at = now()
        with self.transaction() as db:
            if not db.execute("SELECT 1 FROM triplets WHERE id = ?", [triplet_id]).fetchone():
                raise NotFoundError(f"no triplet with id {triplet_id!r} exists.")
            row = fetch_one(db, "SELECT * FROM labels WHERE triplet_id = ?", [triplet_id])
            if expected_version == 0:
                if row is not None:
                    raise _conflict(triplet_id, row, 0)
                if new_rewards is None:
                    raise StoreInputError("a new label needs rewards (three scores).")
                self._insert_label(
                    db, triplet_id, new_rewards, status=status or "fixed", origin="human",
                    annotation_id=None, note=note, user=user, at=at, seconds=seconds,
                )  # fmt: skip
                row = fetch_one(db, "SELECT * FROM labels WHERE triplet_id = ?", [triplet_id])
                return label_record(row)
            if row is None:
                raise NotFoundError(
                    f"triplet {triplet_id} has no label yet; pass expected_version=0 to create one."
                )
            old = label_record(row)
            changed = new_rewards is not None and new_rewards != old.rewards
            values = new_rewards if changed else old.rewards
            new_status = status or ("fixed" if changed else "accepted")
            origin = "human" if changed else old.origin
            new_note = note if note is not None else old.note
            lock = ", locked_by = NULL, locked_until = NULL" if release_lock else ""
            cols = {
                "status": new_status,
                "origin": origin,
                **rewards_columns(values),
                "note": new_note,
            }
            cur = db.conn.execute(
                f"UPDATE labels SET {', '.join(f'{c} = ?' for c in cols)}, version = version + 1, "
                f"updated_by = ?, updated_at = ?{lock} WHERE triplet_id = ? AND version = ? "
                "AND (locked_by IS NULL OR locked_by = ? OR locked_until <= ?)",
                [*cols.values(), user, at, triplet_id, expected_version, user, at],
            )
            if cur.rowcount != 1:
                if old.version != expected_version:
                    raise _conflict(triplet_id, row, expected_version)
                raise locked_error(triplet_id, row)
            before = _snapshot(old.status, old.origin, old.rewards, old.annotation_id, old.note)
            after = _snapshot(new_status, origin, values, old.annotation_id, new_note)
            action = "edit" if changed else "review"
            self._history(
                db, triplet_id, expected_version + 1, user, at, action, before, after, note,
                seconds,
            )  # fmt: skip
            return label_record(
                fetch_one(db, "SELECT * FROM labels WHERE triplet_id = ?", [triplet_id])
            )

    # -- a reviewer's own decisions: the recent ones, and undo ------------------------------
    def recent_decisions(self, user: str, limit: int = 20) -> list[dict[str, Any]]:
        """``user``'s latest label changes, newest first, leaving out undos and the changes
        they undid: ``triplet_id``, ``version`` (the one the change made), ``at``,
        ``status`` (the decision), ``rewards`` (a dict), ``current`` (True while the label
        is still at that version, so the change can be undone)."""
        require_text(user, "user")
        with self.db() as db:
            rows = list(db.query(
                "SELECT h.triplet_id, h.version, h.at, h.after, h.note, l.version AS now "
                "FROM label_history h JOIN labels l ON l.triplet_id = h.triplet_id "
                "WHERE h.user = ? AND h.action IN ('create', 'edit', 'review') "
                "ORDER BY h.id DESC LIMIT ?", [user, 4 * limit + 20],
            ))  # fmt: skip
        undone, out = set(), []
        for r in rows:
            if r["note"] and r["note"].startswith(UNDO_NOTE):
                undone.add((r["triplet_id"], int(r["note"][len(UNDO_NOTE) :])))
                continue
            if (r["triplet_id"], r["version"]) in undone:
                continue
            after = json.loads(r["after"])
            out.append({
                "triplet_id": r["triplet_id"], "version": r["version"], "at": r["at"],
                "status": after["status"], "rewards": after["rewards"],
                "current": r["now"] == r["version"],
            })  # fmt: skip
            if len(out) == limit:
                break
        return out

    def undo_label(self, triplet_id: str, *, user: str, version: int) -> LabelRecord:
        """Undo ``user``'s change that made ``version`` of the label, which must still be the
        current version: the label gets back the values, status, origin and note it had
        before, as a new version; the history keeps both, the new row noted ``undo of
        version N``. Raises ConflictError when the label moved on or the change was
        someone else's, LockedError when another user holds the label, StoreInputError when
        the change created the label (there is nothing before it to go back to)."""
        require_text(user, "user")
        at = now()
        with self.transaction() as db:
            row = fetch_one(db, "SELECT * FROM labels WHERE triplet_id = ?", [triplet_id])
            if row is None:
                raise NotFoundError(f"triplet {triplet_id!r} has no label to undo.")
            if row["version"] != version:
                raise _conflict(triplet_id, row, version)
            change = fetch_one(
                db, "SELECT user, before FROM label_history WHERE triplet_id = ? AND version = ?",
                [triplet_id, version],
            )  # fmt: skip
            if change is None or change["user"] != user:
                who = change["user"] if change else "nobody"
                raise ConflictError(
                    f"Version {version} of the label of triplet {triplet_id} was made by {who}, "
                    f"not {user}; you can only undo your own decisions."
                )
            if change["before"] is None:
                raise StoreInputError(
                    f"Your decision created the label of triplet {triplet_id}; there is no "
                    "earlier label to go back to. Open it and correct it instead."
                )
            before = json.loads(change["before"])
            old = label_record(row)
            values = as_rewards(before["rewards"])
            cols = {
                "status": before["status"],
                "origin": before["origin"],
                "annotation_id": before["annotation_id"],
                **rewards_columns(values),
                "note": before["note"],
            }
            cur = db.conn.execute(
                f"UPDATE labels SET {', '.join(f'{c} = ?' for c in cols)}, version = version + 1, "
                "updated_by = ?, updated_at = ?, locked_by = NULL, locked_until = NULL "
                "WHERE triplet_id = ? AND version = ? "
                "AND (locked_by IS NULL OR locked_by = ? OR locked_until <= ?)",
                [*cols.values(), user, at, triplet_id, version, user, at],
            )
            if cur.rowcount != 1:
                raise locked_error(triplet_id, row)
            now_snapshot = _snapshot(old.status, old.origin, old.rewards, old.annotation_id,
                                     old.note)  # fmt: skip
            action = "edit" if values != old.rewards else "review"
            self._history(
                db, triplet_id, version + 1, user, at, action, now_snapshot,
                json.dumps(before, sort_keys=True), f"{UNDO_NOTE}{version}",
            )  # fmt: skip
            return label_record(
                fetch_one(db, "SELECT * FROM labels WHERE triplet_id = ?", [triplet_id])
            )

    def set_label_from_annotation(
        self, annotation_id: int, *, user: str = "system", replace_pending: bool = False
    ) -> LabelRecord:
        """Make an ok annotation the triplet's label if it has none (status ``pending``, or
        ``fixed`` for human annotations). With ``replace_pending``, an existing label that no
        human has touched (``pending`` with a machine origin) is replaced too; reviewed or
        human-edited labels are never overwritten. Returns the (possibly unchanged) label."""
        self.set_labels_from_annotations(
            [annotation_id], user=user, replace_pending=replace_pending
        )
        with self.db() as db:
            triplet_id = db.execute(
                "SELECT triplet_id FROM annotations WHERE id = ?", [annotation_id]
            ).fetchone()[0]
        return self.get_label(triplet_id)

    def set_labels_from_annotations(
        self, annotation_ids: Sequence[int], *, user: str = "system", replace_pending: bool = False
    ) -> int:
        """Bulk :meth:`set_label_from_annotation` in one transaction; returns how many changed."""
        require_text(user, "user")
        at, changed = now(), 0
        with self.transaction() as db:
            for annotation_id in annotation_ids:
                ann = self._ok_annotation(db, annotation_id)
                rewards = rewards_from_row(ann)
                tid, origin = ann["triplet_id"], ann["kind"]
                status = "fixed" if origin == "human" else "pending"
                row = fetch_one(db, "SELECT * FROM labels WHERE triplet_id = ?", [tid])
                if row is None:
                    changed += self._insert_label(
                        db, tid, rewards, status=status, origin=origin,
                        annotation_id=annotation_id, note=None, user=user, at=at,
                    )  # fmt: skip
                    continue
                old = label_record(row)
                if not (replace_pending and old.status == "pending" and old.origin != "human"):
                    continue
                if old.annotation_id == annotation_id:
                    continue
                cols = {
                    "origin": origin,
                    "annotation_id": annotation_id,
                    **rewards_columns(rewards),
                }
                db.conn.execute(
                    f"UPDATE labels SET {', '.join(f'{c} = ?' for c in cols)}, "
                    "version = version + 1, updated_by = ?, updated_at = ? "
                    "WHERE triplet_id = ? AND version = ?",
                    [*cols.values(), user, at, tid, old.version],
                )  # cannot miss: BEGIN IMMEDIATE holds the write lock since the read above
                before = _snapshot(old.status, old.origin, old.rewards, old.annotation_id, old.note)
                after = _snapshot(old.status, origin, rewards, annotation_id, old.note)
                self._history(db, tid, old.version + 1, user, at, "reannotate", before, after, None)
                changed += 1
        return changed
