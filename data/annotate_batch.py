"""The OpenAI Batch API path of ``python -m data annotate --batch submit|poll|collect``.

Large jobs at half price, results within 24 hours:

1. **submit** -- plan the pending jobs exactly as a live run would, write one JSONL line per call
   (``custom_id = "<idempotency key>:<prompt name>"``, ``body`` = the same chat-completions
   request a live call sends), split into files of at most ``max_lines`` lines and ~190 MB,
   upload each (``purpose="batch"``) and create a batch. Every submitted batch and its
   ``custom_id -> triplet`` map is recorded in ``<db>_batches.json``; keys in a batch that is not
   yet collected are never submitted again, so repeating ``submit`` does not pay twice.
2. **poll** -- show each batch's status and request counts (``--wait`` until all have ended).
3. **collect** -- download the output and error files of ended batches and store every triplet:
   ok when all its calls returned a usable reply, otherwise *failed* with the raw reply and the
   reason (unparsable / out of range / the HTTP error of the line). Calls cannot be retried
   inside a batch: re-run with ``--only-failed`` (live or as a new batch). Triplets missing from
   an expired or cancelled batch get no row, so the next plan picks them up again.

Usage per line comes from the ``usage`` of each response body and is priced at the batch rate.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from core.fileio import write_atomic
from core.judges.base import (
    BATCH_ERROR,
    Evaluation,
    JudgeResult,
    Usage,
)
from core.judges.cost import pricing_for
from core.judges.openai_judge import OpenAIJudge
from core.judges.parsing import ReplyError
from core.rewards import Rewards
from data.annotate_runner import (
    Job,
    Ledger,
    Summary,
    ledger_path,
    make_input,
    plan,
    store_results,
)

ENDPOINT = "/v1/chat/completions"
MAX_FILE_BYTES = 190 * 2**20  # OpenAI accepts up to 200 MB per batch input file
TERMINAL = ("completed", "failed", "expired", "cancelled")


def state_path(store: Any) -> Path:
    return Path(store.path).with_name(f"{Path(store.path).stem}_batches.json")


def load_state(store: Any) -> dict[str, Any]:
    path = state_path(store)
    if not path.exists():
        return {"batches": {}}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SystemExit(
            f"error: the batch state file {path} is corrupt ({e}); fix or move it"
        ) from None


def save_state(store: Any, state: dict[str, Any]) -> None:
    path = state_path(store)
    write_atomic(path, json.dumps(state, indent=1))  # a crash leaves the old or new state


def _in_flight_keys(state: dict[str, Any]) -> set[str]:
    keys = set()
    for b in state["batches"].values():
        if not b.get("collected") and b.get("status") != "failed":
            keys.update(cid.rsplit(":", 1)[0] for cid in b["jobs"])
    return keys


async def submit(store: Any, judge: OpenAIJudge, task: str, *, split=None, source=None,
                 only_failed=False, limit=None, max_lines=50_000) -> list[str]:  # fmt: skip
    """Create batches for the pending jobs; returns the new batch ids."""
    state = load_state(store)
    busy = _in_flight_keys(state)
    p = plan(store, judge.spec, task, split=split, source=source, only_failed=only_failed)
    jobs = [j for j in p.jobs if j.key not in busy]
    if limit is not None:
        jobs = jobs[: max(0, limit)]
    folder = Path(store.path).with_name(f"{Path(store.path).stem}_batches")
    folder.mkdir(exist_ok=True)
    prompts = judge.prompts.for_task(task)
    chunks: list[tuple[list[str], dict[str, str]]] = [([], {})]
    size = 0
    for job in jobs:
        images = judge.prepare(make_input(store, job))
        lines = []
        for prompt in prompts:
            cid = f"{job.key}:{prompt.name}"
            body = judge.build_request(prompt, job.instruction, images)
            lines.append(
                json.dumps({"custom_id": cid, "method": "POST", "url": ENDPOINT, "body": body})
            )
        n = sum(len(x) + 1 for x in lines)
        if chunks[-1][0] and (
            len(chunks[-1][0]) + len(lines) > max_lines or size + n > MAX_FILE_BYTES
        ):
            chunks.append(([], {}))
            size = 0
        chunks[-1][0].extend(lines)
        chunks[-1][1].update({f"{job.key}:{pr.name}": job.triplet_id for pr in prompts})
        size += n
    created = []
    for lines, mapping in chunks:
        if not lines:
            continue
        path = folder / f"{time.strftime('%Y%m%dT%H%M%S')}-{len(state['batches']):04d}.jsonl"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        with open(path, "rb") as f:
            uploaded = await judge.client.files.create(file=f, purpose="batch")
        batch = await judge.client.batches.create(
            input_file_id=uploaded.id, endpoint=ENDPOINT, completion_window="24h",
            metadata={"mrc_task": task, "mrc_judge": judge.spec.name},
        )  # fmt: skip
        state["batches"][batch.id] = {
            "task": task,
            "judge": judge.spec.to_dict(),
            "input_file": str(path),
            "status": batch.status,
            "jobs": mapping,
            "collected": False,
            "created_at": batch.created_at,
        }
        save_state(store, state)
        created.append(batch.id)
        print(
            f"submitted {batch.id}: {len(mapping) // len(prompts)} triplets, {len(lines)} requests",
            file=sys.stderr,
        )
    if not created:
        print(
            "nothing to submit: every planned triplet is done or already in a batch",
            file=sys.stderr,
        )
    return created


async def poll(
    store: Any, judge: OpenAIJudge, *, wait: bool = False, every: float = 30.0
) -> dict[str, str]:
    """Refresh the status of every uncollected batch; with ``wait``, until all have ended."""
    state = load_state(store)
    while True:
        statuses = {}
        for bid, rec in state["batches"].items():
            if rec.get("collected"):
                continue
            b = await judge.client.batches.retrieve(bid)
            rec.update(
                status=b.status, output_file_id=b.output_file_id, error_file_id=b.error_file_id
            )
            if b.errors and b.errors.data:
                rec["errors"] = [f"line {e.line}: {e.message}" for e in b.errors.data]
            counts = b.request_counts
            statuses[bid] = b.status
            done = (
                f"{counts.completed}/{counts.total} done, {counts.failed} failed" if counts else ""
            )
            print(f"{bid}: {b.status} {done}", file=sys.stderr)
        save_state(store, state)
        if not wait or all(s in TERMINAL for s in statuses.values()):
            return statuses
        await asyncio.sleep(every)


def _result_for(judge: OpenAIJudge, task: str, lines: dict[str, dict[str, Any]]) -> JudgeResult:
    """One triplet's result from its batch lines (``prompt name -> output line``)."""
    usage, raws, values, failure = Usage(), {}, {}, None
    for prompt in judge.prompts.for_task(task):
        line = lines.get(prompt.name)
        usage.calls += 1
        resp = (line or {}).get("response") or {}
        body = resp.get("body") or {}
        u = body.get("usage") or {}
        usage.prompt_tokens += int(u.get("prompt_tokens") or 0)
        usage.completion_tokens += int(u.get("completion_tokens") or 0)
        if line is None:
            failure = failure or (BATCH_ERROR, f"the batch returned no line for {prompt.name}")
            continue
        if resp.get("status_code") != 200 or line.get("error"):
            err = line.get("error") or body.get("error") or {}
            msg = err.get("message") if isinstance(err, dict) else str(err)
            failure = failure or (BATCH_ERROR, f"HTTP {resp.get('status_code')}: {msg}")
            continue
        try:
            text = body["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            failure = failure or (BATCH_ERROR, "the response body has no message content")
            continue
        raws[prompt.name] = text
        try:
            values.update(judge.parse_reply(task, prompt.name, text))
        except ReplyError as e:
            failure = failure or (e.code, str(e))
    raw = next(iter(raws.values()), "") if len(raws) <= 1 else json.dumps(raws, ensure_ascii=False)
    if failure:
        return JudgeResult.failed(task, judge.spec, failure[0], failure[1], raw, usage=usage)
    if task == "annotate":
        return JudgeResult(task, "ok", judge.spec, rewards=Rewards(**values), raw=raw, usage=usage)
    return JudgeResult(
        task, "ok", judge.spec, evaluation=Evaluation(**values), raw=raw, usage=usage
    )


async def collect(store: Any, judge: OpenAIJudge, *, set_labels: bool = True) -> Summary:
    """Store the results of every ended, uncollected batch of this judge."""
    state = load_state(store)
    pricing = pricing_for(judge.spec.model, batch=True)
    run_id = "batch-" + time.strftime("%Y%m%dT%H%M%S")
    summary = Summary(run_id, "", judge.spec.to_dict(), 0, 0)
    ledger = Ledger(ledger_path(store), run_id, judge.spec, pricing)
    for bid, rec in state["batches"].items():
        if rec.get("collected") or rec.get("judge") != judge.spec.to_dict():
            continue
        b = await judge.client.batches.retrieve(bid)
        if b.status not in TERMINAL:
            print(f"{bid} is {b.status}; collect it later", file=sys.stderr)
            continue
        task = summary.task = rec["task"]
        lines: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        for fid in (b.output_file_id, b.error_file_id):
            if fid:
                content = (await judge.client.files.content(fid)).content.decode("utf-8")
                for raw_line in content.splitlines():
                    if raw_line.strip():
                        line = json.loads(raw_line)
                        key, prompt_name = line["custom_id"].rsplit(":", 1)
                        lines[key][prompt_name] = line
        results: list[tuple[Job, JudgeResult]] = []
        missing = Counter()
        expected = {cid.rsplit(":", 1)[0]: tid for cid, tid in rec["jobs"].items()}
        for key, tid in expected.items():
            if key not in lines:
                missing[b.status] += 1  # never ran (expired / cancelled / failed batch)
                continue
            result = _result_for(judge, task, lines[key])
            results.append((Job(tid, key, "", "", ""), result))
            summary.count(result)
            ledger.add(result.usage, 1, every=1e9)
        if results:
            store_results(store, results, run_id, set_labels=set_labels)
        summary.planned += len(expected)
        rec.update(
            status=b.status, collected=True, stored=len(results), missing=sum(missing.values())
        )
        save_state(store, state)
        if missing:
            print(f"{bid}: {sum(missing.values())} triplets have no result ({b.status}); "
                  "they will be planned again", file=sys.stderr)  # fmt: skip
    summary.cost_usd = pricing.cost(summary.usage) if pricing else None
    ledger.flush(final=summary)
    return summary


def batch_command(args: Any, store: Any, judge: Any) -> int:
    if not isinstance(judge, OpenAIJudge):
        raise SystemExit("error: --batch needs --judge openai (the Batch API is an OpenAI feature)")

    async def go() -> int:
        async with judge:
            if args.batch == "submit":
                await submit(store, judge, args.task, split=args.split, source=args.source,
                             only_failed=args.only_failed, limit=args.limit,
                             max_lines=args.batch_max_lines)  # fmt: skip
            elif args.batch == "poll":
                await poll(store, judge, wait=args.wait, every=args.poll_every)
            else:
                if args.wait:
                    await poll(store, judge, wait=True, every=args.poll_every)
                summary = await collect(store, judge, set_labels=not args.no_labels)
                print(summary.text())
        return 0

    return asyncio.run(go())
