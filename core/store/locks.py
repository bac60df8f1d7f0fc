"""Edit locks on labels: an annotator holds an item while reviewing it.

``acquire_lock`` marks a label as held by one annotator until ``locked_until``; while the lock
is live, other users' edits raise :class:`LockedError` (:meth:`LabelsMixin.update_label`).
Expired locks are ignored, so a closed browser tab never blocks an item for good. Locks are
not label changes: they do not bump the version and are not recorded in history.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from .base import fetch_one, now, require_choice, require_text
from .errors import NotFoundError, StoreInputError
from .labels import LabelRecord, label_record, locked_error
from .schema import REVIEW_STATUSES

DEFAULT_LOCK_SECONDS = 600  # an annotator holds an item for 10 minutes unless they save


def _later(seconds: float) -> str:
    return (datetime.now(timezone.utc) + timedelta(seconds=seconds)).isoformat(
        timespec="microseconds"
    )


class LocksMixin:
    """Acquire, release and hand out locked labels; mixed into :class:`core.store.Store`."""

    def acquire_lock(
        self, triplet_id: str, user: str, *, seconds: float = DEFAULT_LOCK_SECONDS
    ) -> LabelRecord:
        """Hold a label for ``user`` for ``seconds`` (renewing one's own lock is fine).

        Raises LockedError if another user holds a live lock, NotFoundError if unlabelled.
        """
        require_text(user, "user")
        if not seconds > 0:
            raise StoreInputError(f"lock duration must be positive, got {seconds!r} seconds.")
        at = now()
        with self.transaction() as db:
            cur = db.conn.execute(
                "UPDATE labels SET locked_by = ?, locked_until = ? WHERE triplet_id = ? "
                "AND (locked_by IS NULL OR locked_by = ? OR locked_until <= ?)",
                [user, _later(seconds), triplet_id, user, at],
            )
            row = fetch_one(db, "SELECT * FROM labels WHERE triplet_id = ?", [triplet_id])
            if row is None:
                raise NotFoundError(f"triplet {triplet_id!r} has no label to lock.")
            if cur.rowcount != 1:
                raise locked_error(triplet_id, row)
            return label_record(row)

    def release_lock(self, triplet_id: str, user: str, *, force: bool = False) -> bool:
        """Release ``user``'s lock (any user's with ``force``); True if a lock was released."""
        require_text(user, "user")
        cond = "" if force else " AND locked_by = ?"
        with self.transaction() as db:
            cur = db.conn.execute(
                "UPDATE labels SET locked_by = NULL, locked_until = NULL "
                f"WHERE triplet_id = ? AND locked_by IS NOT NULL{cond}",
                [triplet_id] if force else [triplet_id, user],
            )
            return cur.rowcount == 1

    def next_for_review(
        self,
        user: str,
        *,
        status: str | Sequence[str] = "pending",
        split: str | None = None,
        seconds: float = DEFAULT_LOCK_SECONDS,
    ) -> LabelRecord | None:
        """Lock and return the next label to review (the user's own live lock first), or None.

        Atomic: two annotators calling this at the same moment never get the same item.
        """
        require_text(user, "user")
        statuses = [status] if isinstance(status, str) else list(status)
        for s in statuses:
            require_choice(s, REVIEW_STATUSES, "status")
        at = now()
        cond = f"l.status IN ({', '.join('?' * len(statuses))})"
        params: list[Any] = list(statuses)
        if split is not None:
            cond, params = cond + " AND t.split = ?", [*params, split]
        base = (
            f"SELECT l.triplet_id FROM labels l JOIN triplets t ON t.id = l.triplet_id WHERE {cond}"
        )
        with self.transaction() as db:
            found = (
                db.execute(
                    f"{base} AND l.locked_by = ? AND l.locked_until > ? ORDER BY t.rowid LIMIT 1",
                    [*params, user, at],
                ).fetchone()
                or db.execute(
                    f"{base} AND (l.locked_by IS NULL OR l.locked_until <= ?) "
                    "ORDER BY t.rowid LIMIT 1",
                    [*params, at],
                ).fetchone()
            )
            if found is None:
                return None
            db.conn.execute(
                "UPDATE labels SET locked_by = ?, locked_until = ? WHERE triplet_id = ?",
                [user, _later(seconds), found[0]],
            )
            return label_record(
                fetch_one(db, "SELECT * FROM labels WHERE triplet_id = ?", [found[0]])
            )
