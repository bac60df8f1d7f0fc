"""The annotation runner: plan, judge concurrently, store as results arrive, account for cost.

Planning (:func:`plan`) turns store triplets into :class:`Job` s keyed by
:func:`core.judges.base.idempotency_key` (image hashes, instruction, judge model, prompt version and
digest, request mode, task). One SQL query finds which keys already have rows, so a re-run only
plans what has never been attempted (or, with ``only_failed``, what failed and never succeeded).

Running (:func:`run_jobs`, on the loop of :mod:`data.judge_pool` that ``train.evaluate`` uses
too): ``concurrency`` workers take jobs from a queue, read the two image files, and await the
judge (which bounds HTTP requests in flight, rate-limits, retries -- see
:mod:`core.judges.openai_judge`). Results go to a single writer task that drains whatever has
arrived and stores it in one transaction, so labels land in the store within milliseconds and
under load are batched. A ``kill -9`` loses at most the jobs in flight and the results not yet
written; the content key guarantees that what *was* written is never written twice (the store
keeps one ok row per key), and the next run judges only the rest.

Accounting: every stored result carries its ``usage`` (calls, tokens, image bytes, retries) in
``meta``, and the run appends to ``<db>_ledger.jsonl``: a ``started`` line, synced to disk, before
each judgement is requested (a call in flight at a ``kill -9`` may have been billed), and the
results' usage after each batch is stored (``ledger_every`` seconds apart at most; 0 = every
batch), plus a final line. :func:`read_ledger` totals both, so ``started - results`` counts the
judgements a killed run may have paid for without storing them.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from core.judges.base import Judge, JudgeInput, JudgeResult, JudgeSpec, Usage, idempotency_key
from core.judges.cost import Pricing
from core.rewards import Rewards
from data.judge_pool import judge_jobs

ORACLE_KINDS = ("shapes-oracle",)


def store_kind(spec: JudgeSpec) -> str:
    return "oracle" if spec.kind in ORACLE_KINDS else "judge"


def label_version(spec: JudgeSpec) -> str | None:
    """The ``prompt_version`` column of an annotation: the judge's stored version
    (``v1-one+<digest>``, see :attr:`JudgeSpec.stored_version`); none for the oracle."""
    return spec.stored_version if store_kind(spec) == "judge" else None


@dataclass(frozen=True)
class Job:
    triplet_id: str
    key: str
    instruction: str
    original: str  # image hash
    edited: str  # image hash


@dataclass
class Plan:
    jobs: list[Job]
    total: int  # triplets matching the filters
    done: int  # already have an ok result
    failed_before: int  # have failed attempts and no ok result
    no_edited: int  # have no edited image (cannot be judged)


def plan(
    store: Any,
    spec: JudgeSpec,
    task: str,
    *,
    split: str | None = None,
    source: str | None = None,
    ids: Sequence[str] | None = None,
    only_failed: bool = False,
    limit: int | None = None,
) -> Plan:
    where, params = [], []
    for col, value in (("split", split), ("source", source)):
        if value is not None:
            where.append(f"{col} = ?")
            params.append(value)
    sql = "SELECT id, instruction, original, edited FROM triplets"
    sql += (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY rowid"
    with store.db() as db:
        rows = db.execute(sql, params).fetchall()
        seen = db.execute(
            "SELECT key, max(status = 'ok') FROM annotations WHERE task = ? AND judge_model = ? "
            "AND prompt_version IS ? GROUP BY key",
            [task, spec.model, label_version(spec)],
        ).fetchall()
    if ids is not None:
        wanted = set(ids)
        rows = [r for r in rows if r[0] in wanted]
    ok = {k for k, has_ok in seen if has_ok}
    failed = {k for k, has_ok in seen if not has_ok}
    jobs, no_edited, n_ok, n_failed = [], 0, 0, 0
    for tid, instruction, original, edited in rows:
        if not edited:
            no_edited += 1
            continue
        key = idempotency_key(original, edited, instruction, spec, task)
        if key in ok:
            n_ok += 1
            continue
        n_failed += key in failed
        if (key in failed) == only_failed:
            jobs.append(Job(tid, key, instruction, original, edited))
    if limit is not None:
        jobs = jobs[: max(0, limit)]
    return Plan(jobs, len(rows), n_ok, n_failed, no_edited)


def result_record(job: Job, result: JudgeResult, run_id: str) -> dict[str, Any]:
    """The store row (``Store.add_annotations`` item) of one result."""
    spec = result.judge
    meta: dict[str, Any] = {
        "judge": spec.to_dict(),
        "usage": result.usage.to_dict(),
        "attempts": result.attempts,
        "run": run_id,
    }
    rec: dict[str, Any] = {
        "triplet_id": job.triplet_id,
        "kind": store_kind(spec),
        "task": result.task,
        "judge_model": spec.model,
        "prompt_version": label_version(spec),
        "status": result.status,
        "raw": result.raw,
        "key": job.key,
        "meta": meta,
    }
    if result.std is not None:
        meta["std"] = dict(result.std)  # the judge's confidence per perspective
    if result.ok:
        if result.task == "annotate":
            rec["rewards"] = result.rewards
        else:
            rec["rewards"] = Rewards.from_scores(result.evaluation.scores)
            meta["verdicts"] = {p: v["verdict"] for p, v in result.evaluation.to_dict().items()}
    else:
        rec["failure_reason"] = f"{result.reason_code}: {result.reason}"
        meta["reason_code"] = result.reason_code
    return rec


def store_results(
    store: Any, results: Sequence[tuple[Job, JudgeResult]], run_id: str, *, set_labels: bool = True
) -> list[int]:
    """Store results as annotations in one call; with ``set_labels``, the ok ``annotate`` results
    also become their triplets' labels (pending review). Returns the annotation ids."""
    ids = store.add_annotations([result_record(j, r, run_id) for j, r in results])
    ok = [(i, r) for i, (_, r) in zip(ids, results) if r.ok and r.task == "annotate"]
    if set_labels and ok:
        spec = ok[0][1].judge
        store.set_labels_from_annotations(
            [i for i, _ in ok], user=f"{store_kind(spec)}:{spec.model}"
        )
    return ids


@dataclass
class Summary:
    run_id: str
    task: str
    judge: dict[str, str]
    planned: int
    skipped_done: int
    ok: int = 0
    failed: Counter = field(default_factory=Counter)  # reason code -> count
    usage: Usage = field(default_factory=Usage)
    cost_usd: float | None = None
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def finished(self) -> int:
        return self.ok + sum(self.failed.values())

    def count(self, result: JudgeResult) -> None:
        """Account for one stored result: ok or failed (by reason code), and its usage."""
        self.usage += result.usage
        if result.ok:
            self.ok += 1
        else:
            self.failed[result.reason_code] += 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "run": self.run_id,
            "task": self.task,
            "judge": self.judge,
            "planned": self.planned,
            "skipped_done": self.skipped_done,
            "ok": self.ok,
            "failed": dict(self.failed),
            "usage": self.usage.to_dict(),
            "cost_usd": self.cost_usd,
            "seconds": round(self.seconds, 3),
            "triplets_per_s": round(self.finished / self.seconds, 3) if self.seconds else None,
            "interrupted": self.interrupted,
        }

    def text(self) -> str:
        u = self.usage
        cost = (
            "unknown (no price for this model)"
            if self.cost_usd is None
            else f"${self.cost_usd:.4f}"
        )
        lines = [
            f"run {self.run_id}: {self.task} with {self.judge['kind']}:{self.judge['model']} "
            f"(prompts {self.judge['prompt_version']}, mode {self.judge['mode']})",
            f"  planned {self.planned}, already done {self.skipped_done}, "
            f"labelled {self.ok}, failed {sum(self.failed.values())}"
            + (" -- INTERRUPTED" if self.interrupted else ""),
        ]
        for code, n in self.failed.most_common():
            lines.append(f"    failed {code}: {n}")
        lines.append(
            f"  {u.calls} calls ({u.retries} retries), {u.prompt_tokens} prompt + "
            f"{u.completion_tokens} completion tokens, {u.image_bytes / 1e6:.2f} MB of images"
        )
        rate = self.finished / self.seconds if self.seconds else 0.0
        lines.append(f"  cost {cost}; {self.seconds:.1f} s, {rate:.2f} triplets/s")
        return "\n".join(lines)


class Ledger:
    """Append-only JSONL ledger of token use and cost per run (checkpoints, crash-safe)."""

    def __init__(self, path: Path | None, run_id: str, spec: JudgeSpec, pricing: Pricing | None):
        self.path, self.run_id, self.spec, self.pricing = path, run_id, spec, pricing
        self.pending, self.last = Usage(), time.monotonic()
        self.pending_results = 0

    def started(self) -> None:
        """Record, durably and before the request is sent, that one judgement starts: a call
        in flight at a kill may have been billed, so it must be on disk before it is made."""
        if self.path is None:
            return
        line = {"run": self.run_id, "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "started": 1}  # fmt: skip
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def add(self, usage: Usage, results: int, every: float) -> None:
        self.pending += usage
        self.pending_results += results
        if time.monotonic() - self.last >= every:
            self.flush()

    def flush(self, final: Summary | None = None) -> None:
        self.last = time.monotonic()
        if self.path is None or (not self.pending_results and final is None):
            return
        line = {
            "run": self.run_id,
            "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "judge": self.spec.to_dict(),
            "results": self.pending_results,
            "usage": self.pending.to_dict(),
            "cost_usd": self.pricing.cost(self.pending) if self.pricing else None,
        }
        if final is not None:
            line["final"] = final.to_dict()
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
            f.flush()
        self.pending, self.pending_results = Usage(), 0


def ledger_path(store: Any) -> Path:
    return Path(store.path).with_name(f"{Path(store.path).stem}_ledger.jsonl")


def read_ledger(path: Path, run_id: str | None = None) -> dict[str, dict[str, Any]]:
    """Totals per run from a ledger file: results, usage, cost."""
    runs: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return runs
    for line in path.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if run_id is not None and rec["run"] != run_id:
            continue
        r = runs.setdefault(
            rec["run"], {"results": 0, "started": 0, "usage": Usage(), "cost_usd": 0.0}
        )
        if "started" in rec:  # a judgement about to be requested
            r["started"] += rec["started"]
            continue
        r["results"] += rec["results"]
        r["usage"] += Usage.from_dict(rec["usage"])
        r["cost_usd"] = (
            None
            if rec["cost_usd"] is None or r["cost_usd"] is None
            else r["cost_usd"] + rec["cost_usd"]
        )
    return runs


def make_input(store: Any, job: Job) -> JudgeInput:
    return JudgeInput(
        job.instruction,
        store.image_path(job.original).read_bytes(),
        store.image_path(job.edited).read_bytes(),
        triplet_id=job.triplet_id,
        context={"store": store},
    )


async def run_jobs(
    store: Any,
    judge: Judge,
    jobs: Sequence[Job],
    task: str,
    *,
    concurrency: int = 8,
    pricing: Pricing | None = None,
    set_labels: bool = True,
    progress: bool = True,
    ledger_every: float = 0.0,
    skipped_done: int = 0,
    on_result: Callable[[Job, JudgeResult], None] | None = None,
) -> Summary:
    """Judge ``jobs`` with ``concurrency`` workers, storing each result as it arrives."""
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    summary = Summary(run_id, task, judge.spec.to_dict(), len(jobs), skipped_done)
    ledger = Ledger(ledger_path(store), run_id, judge.spec, pricing)
    bar = tqdm(
        total=len(jobs), desc=f"{task} ({judge.spec.name})", unit="triplet", disable=not progress
    )
    start = time.monotonic()

    def write(batch: list[tuple[Job, JudgeResult]]) -> None:
        store_results(store, batch, run_id, set_labels=set_labels)

    def written(batch: list[tuple[Job, JudgeResult]]) -> None:
        usage = Usage()
        for job, r in batch:
            usage += r.usage
            summary.count(r)
            if on_result:
                on_result(job, r)
        ledger.add(usage, len(batch), ledger_every)
        bar.update(len(batch))
        bar.set_postfix(
            ok=summary.ok,
            failed=sum(summary.failed.values()),
            tokens=summary.usage.total_tokens,
            refresh=False,
        )

    try:
        await judge_jobs(
            judge,
            task,
            jobs,
            lambda job: make_input(store, job),
            write,
            concurrency=concurrency,
            on_written=written,
            on_start=lambda job: ledger.started(),
        )
    except asyncio.CancelledError:
        summary.interrupted = True
        raise
    finally:
        bar.close()
        summary.seconds = time.monotonic() - start
        summary.cost_usd = pricing.cost(summary.usage) if pricing else None
        ledger.flush(final=summary)
    return summary


def repair_labels(store: Any, spec: JudgeSpec) -> int:
    """Give a label to triplets whose ok annotation (of this judge) was stored but whose label
    was not, e.g. after a kill between the two writes. Returns how many labels were set."""
    with store.db() as db:
        ids = [
            r[0]
            for r in db.execute(
                "SELECT min(a.id) FROM annotations a LEFT JOIN labels l ON l.triplet_id = a.triplet_id "
                "WHERE l.triplet_id IS NULL AND a.status = 'ok' AND a.task = 'annotate' "
                "AND a.judge_model = ? AND a.prompt_version IS ? GROUP BY a.triplet_id",
                [spec.model, label_version(spec)],
            ).fetchall()
        ]
    if not ids:
        return 0
    return store.set_labels_from_annotations(ids, user=f"{store_kind(spec)}:{spec.model}")
