"""Benchmark runs, their output images and the judges' verdicts on them.

A run is one model + settings + seed evaluated on benchmark items (triplets, usually of split
``benchmark``). Its name is unique; creating a run again with the same name, model, settings
and seed returns the existing id, so an interrupted evaluation resumes instead of starting a
second run (different settings under the same name raise ConflictError).

An output is identified by (run, item, seed). Adding it again with the same image is a no-op;
with a different image it raises ConflictError rather than silently replacing a result.

A verdict is one judge's answer about one output: per perspective a yes/no ("was it done?"),
a score in [0, 5] and an optional text. Idempotent like annotations: one ok verdict per
(output, judge model, prompt version); failed calls are kept as separate rows.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from core.rewards import PERSPECTIVES, RewardValidationError, validate_perspective, validate_score

from .base import (
    StoreBase,
    dumps,
    fetch_one,
    insert_image_rows,
    now,
    prepare_blob,
    require_choice,
    require_row,
    require_text,
)
from .errors import ConflictError, NotFoundError, StoreInputError
from .schema import RESULT_STATUSES


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise StoreInputError(f"{what} must be an integer, got {value!r}.")
    return value


def _verdict_columns(verdict: Any) -> dict[str, Any]:
    """``{perspective: {"yes": bool, "score": s, "text": t}}`` -> verdict columns."""
    if not isinstance(verdict, Mapping):
        raise RewardValidationError(
            "a verdict must be a mapping of perspective -> {yes, score, text}, "
            f"got {type(verdict).__name__}"
        )
    for name in verdict:
        validate_perspective(name)
    cols: dict[str, Any] = {}
    for p in PERSPECTIVES:
        if p not in verdict:
            raise RewardValidationError(f"the verdict is missing perspective {p!r}")
        item = verdict[p]
        if not isinstance(item, Mapping) or "yes" not in item or "score" not in item:
            raise RewardValidationError(f"{p}: a verdict needs 'yes' (true/false) and 'score'")
        if not isinstance(item["yes"], bool):
            raise RewardValidationError(f"{p}: 'yes' must be true or false, got {item['yes']!r}")
        text = item.get("text") or ""
        if not isinstance(text, str):
            raise RewardValidationError(f"{p}: 'text' must be a string")
        cols[f"{p}_yes"] = int(item["yes"])
        cols[p] = validate_score(item["score"], f"{p} score")
        cols[f"{p}_text"] = text
    return cols


def _verdict_from_row(row: dict[str, Any]) -> dict[str, Any]:
    row = dict(row)
    verdict = None
    if row["status"] == "ok":
        verdict = {
            p: {"yes": bool(row[f"{p}_yes"]), "score": row[p], "text": row[f"{p}_text"] or ""}
            for p in PERSPECTIVES
        }
    for p in PERSPECTIVES:
        for c in (p, f"{p}_yes", f"{p}_text"):
            row.pop(c, None)
    row["verdict"] = verdict
    return row


class BenchMixin(StoreBase):
    # -- runs --------------------------------------------------------------------------------
    def create_run(
        self,
        name: str,
        model: str,
        *,
        settings: Mapping[str, Any] | None = None,
        seed: int = 0,
        user: str | None = None,
    ) -> int:
        """Create (or resume) the run ``name``; return its id."""
        require_text(name, "run name")
        require_text(model, "model")
        _int(seed, "seed")
        if settings is not None and not isinstance(settings, Mapping):
            raise StoreInputError(f"settings must be a mapping, got {type(settings).__name__}.")
        settings_json = dumps(dict(settings or {}), "settings")
        with self.transaction() as db:
            row = fetch_one(db, "SELECT * FROM runs WHERE name = ?", [name])
            if row is not None:
                same = (row["model"], row["settings"], row["seed"]) == (model, settings_json, seed)
                if not same:
                    raise ConflictError(
                        f"A run named {name!r} already exists with model {row['model']!r}, "
                        f"seed {row['seed']} and settings {row['settings']}; choose another name "
                        "or use the same model, settings and seed to resume it."
                    )
                return row["id"]
            return db.conn.execute(
                "INSERT INTO runs (name, model, settings, seed, created_by, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [name, model, settings_json, seed, user, now()],
            ).lastrowid

    def get_run(self, run: int | str) -> dict[str, Any]:
        """A run by id or name, with ``settings`` parsed."""
        key = "name" if isinstance(run, str) else "id"
        with self.db() as db:
            row = require_row(db, "runs", key, run, "run")
        row["settings"] = json.loads(row["settings"])
        return row

    def list_runs(self) -> list[dict[str, Any]]:
        """All runs, oldest first, each with ``n_outputs``."""
        sql = (
            "SELECT r.*, (SELECT count(*) FROM run_outputs o WHERE o.run_id = r.id) AS n_outputs "
            "FROM runs r ORDER BY r.id"
        )
        with self.db() as db:
            rows = list(db.query(sql))
        for r in rows:
            r["settings"] = json.loads(r["settings"])
        return rows

    # -- outputs -----------------------------------------------------------------------------
    def add_output(
        self,
        run_id: int,
        item_id: str,
        image: Any,
        *,
        seed: int | None = None,
        seconds: float | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> int:
        """Store a run's output image for a benchmark item; ``seed`` defaults to the run's."""
        _int(run_id, "run_id")
        if seconds is not None and not (isinstance(seconds, (int, float)) and seconds >= 0):
            raise StoreInputError(f"seconds must be a non-negative number, got {seconds!r}.")
        meta_json = dumps(dict(meta or {}), "meta")
        blob = prepare_blob(image, mask=False, name=f"the output image for item {item_id}")
        at = now()
        image_row = self._write_blob(blob, at)
        with self.transaction() as db:
            run = require_row(db, "runs", "id", run_id, "run")
            require_row(db, "triplets", "id", item_id, "benchmark item (triplet)")
            seed = run["seed"] if seed is None else _int(seed, "seed")
            row = fetch_one(
                db,
                "SELECT * FROM run_outputs WHERE run_id = ? AND item_id = ? AND seed = ?",
                [run_id, item_id, seed],
            )
            if row is not None:
                if row["image"] != blob.hash:
                    raise ConflictError(
                        f"Run {run_id} already has a different output for item {item_id} with "
                        f"seed {seed} (image {row['image'][:12]}...); it was not replaced."
                    )
                return row["id"]
            insert_image_rows(db, [image_row])
            return db.conn.execute(
                "INSERT INTO run_outputs (run_id, item_id, image, seed, seconds, meta, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [run_id, item_id, blob.hash, seed, seconds, meta_json, at],
            ).lastrowid

    def outputs(self, run_id: int, *, item_id: str | None = None) -> list[dict[str, Any]]:
        """A run's outputs (oldest first), optionally for one item; ``image`` is a hash."""
        sql, params = "SELECT * FROM run_outputs WHERE run_id = ?", [run_id]
        if item_id is not None:
            sql, params = sql + " AND item_id = ?", [*params, item_id]
        with self.db() as db:
            rows = list(db.query(sql + " ORDER BY id", params))
        for r in rows:
            r["meta"] = json.loads(r["meta"])
        return rows

    # -- verdicts ----------------------------------------------------------------------------
    def add_verdict(
        self,
        output_id: int,
        *,
        judge_model: str,
        prompt_version: str,
        verdict: Mapping[str, Any] | None = None,
        status: str = "ok",
        failure_reason: str | None = None,
        raw: str | None = None,
    ) -> int:
        """Store a judge's verdict on an output; returns its id (existing one if already ok)."""
        _int(output_id, "output_id")
        require_text(judge_model, "judge_model")
        require_text(prompt_version, "prompt_version")
        require_choice(status, RESULT_STATUSES, "status")
        if raw is not None and not isinstance(raw, str):
            raise StoreInputError("raw must be the judge's reply as a string.")
        if status == "ok":
            if verdict is None or failure_reason is not None:
                raise StoreInputError("an ok verdict needs a verdict and no failure_reason.")
            cols = _verdict_columns(verdict)
        else:
            if verdict is not None:
                raise StoreInputError("a failed verdict must not carry scores.")
            require_text(failure_reason, "failure_reason (required when status is 'failed')")
            cols = {}
        row = {
            "output_id": output_id,
            "judge_model": judge_model,
            "prompt_version": prompt_version,
            "status": status,
            "failure_reason": failure_reason,
            **cols,
            "raw": raw,
            "created_at": now(),
        }
        with self.transaction() as db:
            if not db.execute("SELECT 1 FROM run_outputs WHERE id = ?", [output_id]).fetchone():
                raise NotFoundError(f"no run output with id {output_id} exists.")
            if status == "ok":
                found = db.execute(
                    "SELECT id FROM verdicts WHERE output_id = ? AND judge_model = ? "
                    "AND prompt_version = ? AND status = 'ok'",
                    [output_id, judge_model, prompt_version],
                ).fetchone()
                if found:
                    return found[0]
            return db.conn.execute(
                f"INSERT INTO verdicts ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                list(row.values()),
            ).lastrowid

    def verdicts(
        self,
        *,
        run_id: int | None = None,
        output_id: int | None = None,
        judge_model: str | None = None,
        prompt_version: str | None = None,
        status: str | None = None,
    ) -> list[dict[str, Any]]:
        """Verdicts with their output's ``run_id``/``item_id``/``seed``; ``verdict`` is a dict
        ``{perspective: {yes, score, text}}`` (None for failed calls)."""
        filters = {
            "o.run_id": run_id,
            "v.output_id": output_id,
            "v.judge_model": judge_model,
            "v.prompt_version": prompt_version,
            "v.status": status,
        }
        where = [f"{k} = ?" for k, v in filters.items() if v is not None]
        sql = (
            "SELECT v.*, o.run_id, o.item_id, o.seed FROM verdicts v "
            "JOIN run_outputs o ON o.id = v.output_id"
        )
        if where:
            sql += " WHERE " + " AND ".join(where)
        params = [v for v in filters.values() if v is not None]
        with self.db() as db:
            return [_verdict_from_row(r) for r in db.query(sql + " ORDER BY v.id", params)]
