"""A benchmark run: register items, generate outputs, judge them, collect the verdict table.

Everything a number in a report rests on is in the store (:mod:`core.store`), so a run can be
killed at any point and started again with the same command:

1. **Items** become store triplets (split ``benchmark``, source ``bench:<name>``, the benchmark's
   item id as ``external_id``; input image, instruction, category and ground-truth target).
2. **Systems** become store runs named ``<benchmark>:<system>:<fingerprint>``; the fingerprint
   covers every generation setting and the model files' digest, so changing either starts a new
   run and nothing stale is reused. Each output image is stored content-addressed (its file name
   is its pixel hash: a neutral name that reveals no system) as soon as its batch is done.
3. **Verdicts** are stored per output with the judge's model and prompt version (version, request
   mode and prompt digest: :attr:`~core.judges.base.JudgeSpec.stored_version`) as they arrive
   (the judging loop of :mod:`data.judge_pool`, shared with ``python -m data annotate``: a single
   writer; ``kill -9`` loses at most the judgements in flight). A later run judges only
   outputs without a verdict of this judge. Failed verdicts are stored with their reason and are
   final unless ``retry_failed`` asks to try them again; they are counted in every table.

The verdict table (:meth:`BenchmarkRun.verdict_frame`) has a row per (system, item, perspective);
an item a system has no output for, or no verdict yet, is a *failed* row with its reason
(``no_output``, ``bad_output``, ``not_judged``), never a missing row.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from core.images import ImageError, image_hash, load_image
from core.judges.base import Judge, JudgeInput, JudgeResult, JudgeSpec
from core.rewards import PERSPECTIVES
from data.judge_pool import judge_jobs
from train.evaluate.benchmark_items import Benchmark, BenchmarkItem
from train.evaluate.generate import (
    GenerationResult,
    generate,
    load_pipeline,
    load_reward_model,
)
from train.evaluate.systems import SystemSpec, folder_identity, folder_outputs, model_digest
from train.evaluate.tables import NO_OUTPUT

log = logging.getLogger(__name__)

BENCHMARK_SPLIT = "benchmark"
BAD_OUTPUT = "bad_output"  # a pre-made output file that cannot be read
NOT_JUDGED = "not_judged"  # an output without any verdict of the judge (interrupted run)


@dataclass
class SystemState:
    """One system's store run and what this invocation did for it."""

    spec: SystemSpec
    run_id: int
    run_name: str
    fingerprint: str
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)  # item_id -> output row
    missing: dict[str, tuple[str, str]] = field(default_factory=dict)  # item_id -> (code, reason)
    generated: int = 0  # outputs made by this invocation
    reused: int = 0  # outputs found in the store
    gen_seconds: float = 0.0


@dataclass
class JudgeSummary:
    """Judging accounting of one judge over all systems."""

    judge: dict[str, str]
    planned: int = 0
    reused_ok: int = 0  # outputs that already had an ok verdict
    reused_failed: int = 0  # outputs whose earlier failed verdict was kept
    ok: int = 0
    failed: Counter = field(default_factory=Counter)  # reason code -> count, this invocation
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "judge": self.judge,
            "planned": self.planned,
            "reused_ok": self.reused_ok,
            "reused_failed": self.reused_failed,
            "ok": self.ok,
            "failed": dict(self.failed),
            "seconds": round(self.seconds, 2),
        }


@dataclass(frozen=True)
class _JudgeJob:
    system: str
    item: BenchmarkItem
    output_id: int
    original: str  # image hashes
    edited: str
    triplet_id: str


class BenchmarkRun:
    """Generation and judging of several systems on one benchmark, resumable through ``store``."""

    def __init__(
        self,
        benchmark: Benchmark,
        systems: Sequence[SystemSpec],
        store: Any,
        *,
        batch_size: int = 8,
        device: str = "cpu",
        dtype: str = "float32",
        progress: bool = True,
    ) -> None:
        if not len(benchmark):
            raise ValueError(f"Benchmark {benchmark.name!r} has no items.")
        names = [s.name for s in systems]
        if not systems or len(set(names)) != len(names):
            raise ValueError(f"Give at least one system, with unique names; got {names}.")
        self.benchmark, self.systems, self.store = benchmark, list(systems), store
        self.batch_size, self.device, self.dtype, self.progress = (
            batch_size,
            device,
            dtype,
            progress,
        )
        self.items = {i.item_id: i for i in benchmark.items}
        self.triplet_of: dict[str, str] = {}
        self.states: dict[str, SystemState] = {}

    # -- 1. items and runs ------------------------------------------------------------------------
    def prepare(self) -> None:
        """Register the items as store triplets and open (or resume) one store run per system."""
        rows = []
        for item in self.benchmark.items:
            rows.append(
                dict(
                    original=item.image,
                    edited=None,
                    instruction=item.instruction,
                    category=item.category,
                    target=item.target,
                    split=BENCHMARK_SPLIT,
                    source=f"bench:{self.benchmark.name}",
                    external_id=item.item_id,
                    meta=_json_safe({"benchmark": self.benchmark.name, **dict(item.context)}),
                )
            )
        ids = self.store.add_triplets(rows, progress=False)
        self.triplet_of = dict(zip(self.items, ids))
        dup = [t for t, n in Counter(ids).items() if n > 1]
        if dup:
            raise ValueError(
                f"{len(dup)} benchmark item(s) share an input image and instruction with another "
                "item; remove the duplicates so each output belongs to one item."
            )
        for spec in self.systems:
            # A pipeline is identified by its files; a folder of outputs by where it is (its
            # files are checked against the stored outputs on every run, see _read_folder).
            ident = model_digest(spec.path) if spec.kind != "folder" else folder_identity(spec.path)
            fp = spec.fingerprint(ident)
            name = f"{self.benchmark.name}:{spec.name}:{fp}"
            settings = {**spec.settings(), "fingerprint": fp, "system": spec.name}
            seed = spec.seed if spec.kind != "folder" else 0
            model = self._stored_location(name, spec) if spec.kind != "folder" else spec.path
            run_id = self.store.create_run(name, model, settings=settings, seed=seed)
            state = SystemState(spec, run_id, name, fp)
            by_triplet = {o["item_id"]: o for o in self.store.outputs(run_id)}
            for item_id, tid in self.triplet_of.items():
                if tid in by_triplet:
                    state.outputs[item_id] = by_triplet[tid]
            state.reused = len(state.outputs)
            self.states[spec.name] = state

    def _stored_location(self, name: str, spec: SystemSpec) -> str:
        """Where the store's run ``name`` says its pipeline was: ``spec.path``, unless the run
        was made from the same files at another path (the name carries the fingerprint, a
        digest of the files and settings), e.g. a model evaluated in its training folder and
        then copied to where it ships. Its outputs are then reused, and the move is logged."""
        stored = next((r for r in self.store.list_runs() if r["name"] == name), None)
        if stored is None or stored["model"] == spec.path:
            return spec.path
        log.info("%s: the run %s was made from %s; %s holds the same files (fingerprint in the "
                 "name), so its outputs are reused.", spec.name, name, stored["model"], spec.path)  # fmt: skip
        return stored["model"]

    # -- 2. outputs -------------------------------------------------------------------------------
    def generate_all(self) -> None:
        for state in self.states.values():
            self._generate(state)

    def _generate(self, state: SystemState) -> None:
        spec = state.spec
        todo = [i for i in self.benchmark.items if i.item_id not in state.outputs]
        if spec.kind == "folder":
            self._read_folder(state, todo)
            return
        if not todo:
            return
        pipe = load_pipeline(spec, self.device, self.dtype)
        reward_model = load_reward_model(spec, self.device)
        bar = tqdm(
            total=len(todo), desc=f"generate {spec.name}", unit="img", disable=not self.progress
        )
        start = time.perf_counter()

        def store_output(r: GenerationResult) -> None:
            oid = self.store.add_output(
                state.run_id,
                self.triplet_of[r.item_id],
                r.image,
                seed=r.seed,
                seconds=r.seconds,
                meta={
                    "item_id": r.item_id,
                    **({"candidates": list(r.candidates)} if r.candidates else {}),
                },
            )
            rows = self.store.outputs(state.run_id, item_id=self.triplet_of[r.item_id])
            state.outputs[r.item_id] = next(o for o in rows if o["id"] == oid)
            state.generated += 1
            bar.update(1)

        inputs = [(i.item_id, i.instruction, i.load_image) for i in todo]
        try:
            generate(pipe, spec, inputs, self.batch_size, self.device, store_output,
                     reward_model=reward_model)  # fmt: skip
        finally:
            bar.close()
            state.gen_seconds += time.perf_counter() - start
            del pipe

    def _read_folder(self, state: SystemState, todo: Sequence[BenchmarkItem]) -> None:
        """Store the folder's images as outputs. Items stored before are checked: a file whose
        pixels changed since is an error (its verdicts would be stale), never silently reused."""
        files = folder_outputs(state.spec.path, [i.item_id for i in self.benchmark.items])
        for item_id, out in state.outputs.items():
            path = files.get(item_id)
            if path is None:
                continue  # the stored output stays the record of this item
            try:
                changed = image_hash(load_image(path)) != out["image"]
            except ImageError:
                changed = True
            if changed:
                raise ValueError(
                    f"The output of item {item_id!r} in {path} differs from the one system "
                    f"{state.spec.name!r} was evaluated with before (store run {state.run_name!r}). "
                    "Give the changed outputs a new system name, or use a new --store."
                )
        for item in todo:
            path = files.get(item.item_id)
            if path is None:
                state.missing[item.item_id] = (
                    NO_OUTPUT,
                    f"no output file for this item in {state.spec.path}",
                )
                continue
            try:
                image = load_image(path)
            except ImageError as e:
                state.missing[item.item_id] = (BAD_OUTPUT, str(e))
                continue
            tid = self.triplet_of[item.item_id]
            oid = self.store.add_output(state.run_id, tid, image, seed=0, meta={"file": path.name})
            state.outputs[item.item_id] = next(
                o for o in self.store.outputs(state.run_id, item_id=tid) if o["id"] == oid
            )
            state.generated += 1

    # -- 3. verdicts ------------------------------------------------------------------------------
    def judge_all(
        self, judge: Judge, *, concurrency: int = 8, retry_failed: bool = False, close: bool = False
    ) -> JudgeSummary:
        """Judge every output that has no verdict of ``judge`` yet (see the module docstring).

        ``close`` releases the judge's connections in the same event loop when done (pass it when
        the judge is not used again)."""
        spec = judge.spec
        summary = JudgeSummary(spec.to_dict())
        jobs = []
        for state in self.states.values():
            done = self._verdicts_by_output(state, spec)
            for item_id, out in state.outputs.items():
                rows = done.get(out["id"], [])
                if any(r["status"] == "ok" for r in rows):
                    summary.reused_ok += 1
                    continue
                if rows and not retry_failed:
                    summary.reused_failed += 1
                    continue
                triplet = self.store.get_triplet(self.triplet_of[item_id])
                jobs.append(
                    _JudgeJob(
                        state.spec.name,
                        self.items[item_id],
                        out["id"],
                        triplet["original"],
                        out["image"],
                        triplet["id"],
                    )  # fmt: skip
                )
        summary.planned = len(jobs)
        start = time.perf_counter()

        async def go() -> None:
            try:
                await self._judge_jobs(judge, jobs, concurrency, summary)
            finally:
                if close:
                    await judge.aclose()

        asyncio.run(go())
        summary.seconds = time.perf_counter() - start
        return summary

    def _verdicts_by_output(self, state: SystemState, spec: JudgeSpec) -> dict[int, list[dict]]:
        rows = self.store.verdicts(
            run_id=state.run_id, judge_model=spec.model, prompt_version=spec.stored_version
        )
        out: dict[int, list[dict]] = {}
        for r in rows:
            out.setdefault(r["output_id"], []).append(r)
        return out

    def _input(self, job: _JudgeJob) -> JudgeInput:
        return JudgeInput(
            job.item.instruction,
            self.store.image_path(job.original).read_bytes(),
            self.store.image_path(job.edited).read_bytes(),
            triplet_id=job.triplet_id,
            context={"store": self.store, **dict(job.item.context)},
        )

    async def _judge_jobs(
        self, judge: Judge, jobs: list[_JudgeJob], concurrency: int, summary: JudgeSummary
    ) -> None:
        bar = tqdm(total=len(jobs), desc=f"judge ({judge.spec.name})", unit="output",
                   disable=not self.progress)  # fmt: skip
        spec = judge.spec

        def write(batch: list[tuple[_JudgeJob, JudgeResult]]) -> None:
            for job, r in batch:
                if r.ok:
                    verdict = {p: {"yes": v["verdict"] == "yes", "score": v["score"]}
                               for p, v in r.evaluation.to_dict().items()}  # fmt: skip
                    self.store.add_verdict(job.output_id, judge_model=spec.model,
                                           prompt_version=spec.stored_version, verdict=verdict,
                                           raw=r.raw or None)  # fmt: skip
                else:
                    self.store.add_verdict(
                        job.output_id, judge_model=spec.model, prompt_version=spec.stored_version,
                        status="failed", failure_reason=f"{r.reason_code}: {r.reason}", raw=r.raw or None,
                    )  # fmt: skip

        def written(batch: list[tuple[_JudgeJob, JudgeResult]]) -> None:
            for _, r in batch:
                if r.ok:
                    summary.ok += 1
                else:
                    summary.failed[r.reason_code] += 1
            bar.update(len(batch))
            bar.set_postfix(ok=summary.ok, failed=sum(summary.failed.values()), refresh=False)

        try:
            await judge_jobs(judge, "evaluate", jobs, self._input, write,
                             concurrency=concurrency, on_written=written)  # fmt: skip
        finally:
            bar.close()

    # -- 4. the verdict table ---------------------------------------------------------------------
    def verdict_frame(self, spec: JudgeSpec) -> pd.DataFrame:
        """One row per (system, item, perspective); see the module docstring for failed rows."""
        rows = []
        for state in self.states.values():
            verdicts = self._verdicts_by_output(state, spec)
            for item in self.benchmark.items:
                base = {
                    "system": state.spec.name,
                    "item_id": item.item_id,
                    "category": item.category,
                }
                out = state.outputs.get(item.item_id)
                if out is None:
                    code, reason = state.missing.get(item.item_id, (NO_OUTPUT, "not generated"))
                    rows += _failed_rows(base, code, reason)
                    continue
                found = verdicts.get(out["id"], [])
                ok = [r for r in found if r["status"] == "ok"]
                if ok:
                    for p in PERSPECTIVES:
                        v = ok[0]["verdict"][p]
                        rows.append({**base, "perspective": p, "status": "ok", "passed": float(v["yes"]),
                                     "score": float(v["score"]), "reason_code": "", "reason": ""})  # fmt: skip
                elif found:
                    reason = found[-1]["failure_reason"]
                    rows += _failed_rows(base, reason.split(":", 1)[0].strip(), reason)
                else:
                    rows += _failed_rows(base, NOT_JUDGED, "no verdict of this judge yet")
        return pd.DataFrame(rows)

    def output_path(self, system: str, item_id: str) -> Path | None:
        out = self.states[system].outputs.get(item_id)
        return None if out is None else self.store.image_path(out["image"])

    def counts(self) -> list[dict[str, Any]]:
        return [
            {
                "system": s.spec.name,
                "run": s.run_name,
                "outputs": len(s.outputs),
                "generated_now": s.generated,
                "reused": s.reused,
                "missing": len(s.missing),
                "seconds": round(s.gen_seconds, 2),
            }  # fmt: skip
            for s in self.states.values()
        ]


def _failed_rows(base: dict[str, Any], code: str, reason: str) -> list[dict[str, Any]]:
    return [
        {
            **base,
            "perspective": p,
            "status": "failed",
            "passed": float("nan"),
            "score": float("nan"),
            "reason_code": code,
            "reason": reason,
        }  # fmt: skip
        for p in PERSPECTIVES
    ]


def _json_safe(d: dict[str, Any]) -> dict[str, Any]:
    """``d`` if it is JSON-serialisable, else with the offending values replaced by their repr
    (context objects are for the judge in memory; the store keeps a readable trace)."""
    out = {}
    for k, v in d.items():
        try:
            json.dumps(v)
            out[k] = v
        except (TypeError, ValueError):
            out[k] = repr(v)
    return out
