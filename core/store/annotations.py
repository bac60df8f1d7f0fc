"""Reward annotations with provenance: who or what scored a triplet, with which prompt, when.

``kind`` is ``judge`` (a model; ``judge_model`` and ``prompt_version`` required), ``oracle``
(the exact Shapes judge; ``judge_model`` names its version) or ``human`` (``user`` required).
A failed judge call is stored too -- ``status="failed"``, the raw reply and a reason, no
scores -- so failures can be counted and inspected.

Idempotency: every annotation has a ``key``; when the caller gives none it is
:func:`annotation_key` of (triplet id -- itself a content hash --, kind, task, judge model,
prompt version, and the user for human annotations). Adding an ``ok`` annotation whose key
already has an ``ok`` row is a no-op that returns the existing id, so re-running a judge over
a dataset never pays twice. Failed attempts are each kept as their own row (a retry after a
failure is a new event); a later success for the same key is stored normally.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from core.rewards import PERSPECTIVES

from .base import (
    StoreBase,
    as_rewards,
    dumps,
    fetch_one,
    now,
    require_choice,
    require_row,
    require_text,
    rewards_columns,
    rewards_from_row,
)
from .errors import NotFoundError, StoreInputError
from .schema import KINDS, RESULT_STATUSES, TASKS

_ANNOTATION_ARGS = {
    "triplet_id",
    "kind",
    "rewards",
    "judge_model",
    "prompt_version",
    "task",
    "status",
    "failure_reason",
    "raw",
    "user",
    "key",
    "meta",
}
_SCORE_COLS = [c for p in PERSPECTIVES for c in (p, f"{p}_text")]


def annotation_key(
    triplet_id: str,
    *,
    kind: str,
    task: str = "annotate",
    judge_model: str | None = None,
    prompt_version: str | None = None,
    user: str | None = None,
) -> str:
    """The default idempotency key (sha256 hex); ``user`` only counts for human annotations."""
    parts = {
        "triplet": triplet_id,
        "kind": kind,
        "task": task,
        "judge_model": judge_model,
        "prompt_version": prompt_version,
        "user": user if kind == "human" else None,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _annotation_row(item: Mapping[str, Any], where: str, created: str) -> dict[str, Any]:
    unknown = set(item) - _ANNOTATION_ARGS
    if unknown:
        raise StoreInputError(f"{where}unknown annotation field(s) {sorted(unknown)}.")
    triplet_id = require_text(item.get("triplet_id"), f"{where}triplet_id")
    kind = require_choice(item.get("kind"), KINDS, f"{where}kind")
    task = require_choice(item.get("task", "annotate"), TASKS, f"{where}task")
    status = require_choice(item.get("status", "ok"), RESULT_STATUSES, f"{where}status")
    judge_model, prompt_version, user = (
        item.get(k) for k in ("judge_model", "prompt_version", "user")
    )
    if kind in ("judge", "oracle"):
        require_text(judge_model, f"{where}judge_model (required for {kind} annotations)")
    if kind == "judge":
        require_text(prompt_version, f"{where}prompt_version (required for judge annotations)")
    if kind == "human":
        require_text(user, f"{where}user (required for human annotations)")
    for name, value in (
        ("judge_model", judge_model),
        ("prompt_version", prompt_version),
        ("user", user),
    ):
        if value is not None and not isinstance(value, str):
            raise StoreInputError(f"{where}{name} must be a string or None, got {value!r}.")
    rewards, reason = item.get("rewards"), item.get("failure_reason")
    if status == "ok":
        if rewards is None:
            raise StoreInputError(f"{where}an ok annotation needs rewards (three scores).")
        if reason is not None:
            raise StoreInputError(f"{where}an ok annotation cannot have a failure_reason.")
        try:
            scores = rewards_columns(as_rewards(rewards))
        except ValueError as e:
            raise type(e)(f"{where}{e}") from None
    else:
        if rewards is not None:
            raise StoreInputError(f"{where}a failed annotation must not carry rewards.")
        require_text(reason, f"{where}failure_reason (required when status is 'failed')")
        scores = {c: None for c in _SCORE_COLS}
    raw = item.get("raw")
    if raw is not None and not isinstance(raw, str):
        raise StoreInputError(f"{where}raw must be the judge's reply as a string.")
    key = item.get("key") or annotation_key(
        triplet_id,
        kind=kind,
        task=task,
        judge_model=judge_model,
        prompt_version=prompt_version,
        user=user,
    )
    return {
        "key": require_text(key, f"{where}key"),
        "triplet_id": triplet_id,
        "kind": kind,
        "task": task,
        "judge_model": judge_model,
        "prompt_version": prompt_version,
        "user": user,
        "status": status,
        "failure_reason": reason,
        **scores,
        "raw": raw,
        "meta": dumps(dict(item.get("meta") or {}), f"{where}meta"),
        "created_at": created,
    }


def annotation_from_row(row: dict[str, Any]) -> dict[str, Any]:
    row = dict(row)
    row["rewards"] = rewards_from_row(row)
    for c in _SCORE_COLS:
        row.pop(c, None)
    row["meta"] = json.loads(row["meta"])
    return row


class AnnotationsMixin(StoreBase):
    def add_annotation(self, triplet_id: str, *, kind: str, **fields: Any) -> int:
        """Store one annotation; return its id (the existing one if its key is already ok).

        Fields: ``rewards`` (Rewards or mapping; required when ok), ``judge_model``,
        ``prompt_version``, ``task`` ("annotate"), ``status`` ("ok" | "failed"),
        ``failure_reason``, ``raw``, ``user``, ``key``, ``meta``.
        """
        return self.add_annotations(
            [{"triplet_id": triplet_id, "kind": kind, **fields}], _where=""
        )[0]

    def add_annotations(
        self, items: Iterable[Mapping[str, Any]], *, _where: str | None = None
    ) -> list[int]:
        """Store many annotations in one transaction (all or nothing); ids in input order."""
        created = now()
        rows = []
        for i, item in enumerate(items):
            where = _where if _where is not None else f"annotation {i}: "
            if not isinstance(item, Mapping):
                raise StoreInputError(f"{where}expected a mapping, got {type(item).__name__}.")
            rows.append(_annotation_row(item, where, created))
        columns = list(rows[0]) if rows else []
        insert = (
            f"INSERT INTO annotations ({', '.join(columns)}) "
            f"VALUES ({', '.join(':' + c for c in columns)})"
        )
        ids: list[int] = []
        known: set[str] = set()
        with self.transaction() as db:
            for row in rows:
                if row["status"] == "ok":
                    found = db.execute(
                        "SELECT id FROM annotations WHERE key = ? AND status = 'ok'", [row["key"]]
                    ).fetchone()
                    if found:
                        ids.append(found[0])
                        continue
                if row["triplet_id"] not in known:
                    if not db.execute(
                        "SELECT 1 FROM triplets WHERE id = ?", [row["triplet_id"]]
                    ).fetchone():
                        raise NotFoundError(f"no triplet with id {row['triplet_id']!r} exists.")
                    known.add(row["triplet_id"])
                ids.append(db.conn.execute(insert, row).lastrowid)
        return ids

    def find_annotation(self, key: str) -> int | None:
        """Id of the ok annotation with this idempotency key, or None (e.g. to skip done work)."""
        with self.db() as db:
            found = db.execute(
                "SELECT id FROM annotations WHERE key = ? AND status = 'ok'", [key]
            ).fetchone()
        return found[0] if found else None

    def get_annotation(self, annotation_id: int) -> dict[str, Any]:
        """One annotation as a dict with ``rewards`` (a Rewards, None when failed)."""
        with self.db() as db:
            return annotation_from_row(
                require_row(db, "annotations", "id", annotation_id, "annotation")
            )

    def annotations(
        self,
        triplet_id: str | None = None,
        *,
        kind: str | None = None,
        judge_model: str | None = None,
        prompt_version: str | None = None,
        task: str | None = None,
        status: str | None = None,
    ) -> list[dict[str, Any]]:
        """Annotations matching every given filter, oldest first."""
        filters = {
            "triplet_id": triplet_id,
            "kind": kind,
            "judge_model": judge_model,
            "prompt_version": prompt_version,
            "task": task,
            "status": status,
        }
        where = [f"{k} = ?" for k, v in filters.items() if v is not None]
        params = [v for v in filters.values() if v is not None]
        sql = "SELECT * FROM annotations" + (" WHERE " + " AND ".join(where) if where else "")
        with self.db() as db:
            return [annotation_from_row(r) for r in db.query(sql + " ORDER BY id", params)]

    def _ok_annotation(self, db: Any, annotation_id: int) -> dict[str, Any]:
        row = fetch_one(db, "SELECT * FROM annotations WHERE id = ?", [annotation_id])
        if row is None:
            raise NotFoundError(f"no annotation with id {annotation_id!r} exists.")
        if row["status"] != "ok":
            raise StoreInputError(
                f"annotation {annotation_id} is a failed judge call ({row['failure_reason']}); "
                "it has no scores to use as a label."
            )
        return row
