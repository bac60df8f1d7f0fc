"""The shared judging loop (data.judge_pool): concurrency bound, batching, and what a failing
worker, a failing store and a cancellation leave written."""

from __future__ import annotations

import asyncio
import time

import pytest

from core.judges.base import Evaluation, Judge, JudgeInput, JudgeResult, JudgeSpec, Verdict
from data.judge_pool import judge_jobs


class SlowJudge(Judge):
    """Answers after ``delay`` seconds; records how many judgements were in flight at most."""

    spec = JudgeSpec("fake", "slow-v1", "v1")

    def __init__(self, delay: float = 0.01) -> None:
        self.delay, self.in_flight, self.max_in_flight, self.done = delay, 0, 0, []

    async def _judge(self, task, item):
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        self.done.append(item.triplet_id)
        return JudgeResult(task, "ok", self.spec, evaluation=Evaluation(*[Verdict(True, 5)] * 3))


def make_input(job: int) -> JudgeInput:
    if job < 0:
        raise FileNotFoundError(f"the image of job {job} is gone")
    return JudgeInput("make it red", b"a", b"b", triplet_id=str(job))


def pool(judge: SlowJudge, jobs: list[int], written: list[int], concurrency: int, **kw):
    """The loop over ``jobs``, appending each written job to ``written``."""

    def write(batch):
        written.extend(j for j, _ in batch)

    return judge_jobs(judge, "evaluate", jobs, make_input, write, concurrency=concurrency, **kw)


def test_every_job_is_written_once_within_the_concurrency_bound():
    judge, written, batches = SlowJudge(), [], []
    asyncio.run(pool(judge, list(range(20)), written, 3, on_written=batches.append))
    assert sorted(written) == list(range(20)) and judge.max_in_flight == 3
    assert sum(len(b) for b in batches) == 20 and all(r.ok for b in batches for _, r in b)
    with pytest.raises(ValueError, match="at least 1"):
        asyncio.run(judge_jobs(judge, "evaluate", [1], make_input, print, concurrency=0))


def test_a_failing_worker_stops_the_others_after_writing_what_arrived():
    judge, written = SlowJudge(0.02), []
    jobs = [*range(6), -1, *range(6, 40)]
    with pytest.raises(FileNotFoundError, match="job -1 is gone"):
        asyncio.run(pool(judge, jobs, written, 2))
    assert sorted(written) == sorted(int(t) for t in judge.done)  # nothing judged is lost
    assert len(written) < 39  # the other worker did not carry on through the queue


def test_a_failing_store_stops_judging_with_its_error():
    judge, calls = SlowJudge(), []

    def write(batch):
        calls.append(len(batch))
        if len(calls) == 2:
            raise OSError("the disk is full (simulated)")

    with pytest.raises(OSError, match="disk is full"):
        asyncio.run(
            judge_jobs(judge, "evaluate", list(range(50)), make_input, write, concurrency=2)
        )
    assert len(judge.done) < 50 and len(calls) == 2


def test_cancelling_writes_every_result_that_arrived():
    judge, written = SlowJudge(0.02), []

    async def main() -> None:
        task = asyncio.create_task(pool(judge, list(range(100)), written, 4))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    start = time.monotonic()
    asyncio.run(main())
    assert time.monotonic() - start < 5
    assert 0 < len(written) < 100
    assert sorted(written) == sorted(int(t) for t in judge.done)
