"""The concurrent judging loop of ``python -m data annotate`` and ``python -m train.evaluate``.

Both judge a list of jobs and store every result as soon as it arrives; they differ only in
how a job becomes a :class:`~core.judges.base.JudgeInput` and where a result is written
(annotations and labels, or benchmark verdicts). :func:`judge_jobs` is the loop itself:

* ``concurrency`` workers take jobs from a queue, build the input in a thread (it reads image
  files) and await the judge. The judge bounds HTTP requests in flight, rate-limits and retries
  (:mod:`core.judges.openai_judge`, :mod:`core.judges.limits`); this loop only keeps
  ``concurrency`` judgements going.
* A single writer drains whatever results have arrived and hands them to ``write`` in one call
  (in a thread, so the event loop keeps judging), then to ``on_written`` (in the loop: counters,
  progress bars). Under load results are batched; when idle each lands within milliseconds.
* The results queue is bounded by ``concurrency``: when the store lags, workers wait instead of
  judging ahead, so a ``kill -9`` loses at most the judgements in flight, the results queued and
  the batch being written.
* A failing ``write`` stops the run: the workers are cancelled and the store's error is raised.
  A failing worker (e.g. an unreadable image file) stops the other workers and raises its error
  once everything that had arrived is written. On cancellation (Ctrl-C) every result that
  arrived is still written before ``CancelledError`` propagates.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import TypeVar

from core.judges.base import Judge, JudgeInput, JudgeResult

J = TypeVar("J")  # a caller's job type
Batch = list[tuple[J, JudgeResult]]


async def judge_jobs(
    judge: Judge,
    task: str,
    jobs: Sequence[J],
    make_input: Callable[[J], JudgeInput],
    write: Callable[[Batch], None],
    *,
    concurrency: int = 8,
    on_written: Callable[[Batch], None] | None = None,
    on_start: Callable[[J], None] | None = None,
) -> None:
    """Judge every job (``judge.run(task, make_input(job))``) with ``concurrency`` workers,
    passing results to ``write`` (blocking, in a thread) and then ``on_written`` as they arrive;
    ``on_start(job)`` runs just before each judgement is requested.
    See the module docstring for batching, back-pressure and failure handling."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}.")
    queue: asyncio.Queue[J] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    results: asyncio.Queue[tuple[J, JudgeResult] | None] = asyncio.Queue(maxsize=concurrency)

    async def worker() -> None:
        while True:
            try:
                job = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            item = await asyncio.to_thread(make_input, job)
            if on_start is not None:  # e.g. the cost ledger: recorded before the request
                on_start(job)
            await results.put((job, await judge.run(task, item)))

    async def writer() -> None:
        stop = False
        while not stop:
            batch = [await results.get()]
            while not results.empty():
                batch.append(results.get_nowait())
            stop = batch[-1] is None
            done = [b for b in batch if b is not None]
            if not done:
                continue
            await asyncio.to_thread(write, done)
            if on_written is not None:
                on_written(done)

    writer_task = asyncio.create_task(writer())
    tasks = [asyncio.create_task(worker()) for _ in range(min(concurrency, max(1, len(jobs))))]
    workers = asyncio.gather(*tasks)
    try:
        await asyncio.wait({workers, writer_task}, return_when=asyncio.FIRST_COMPLETED)
        if writer_task.done():  # the writer only stops early when the store fails: stop judging
            await _cancel(workers)
            writer_task.result()  # raises the store's error
        await workers
    except asyncio.CancelledError:
        await _cancel(workers)
        raise
    finally:
        for t in tasks:  # one failed worker leaves its siblings running: stop them too
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if not writer_task.done():
            await results.put(None)
            await asyncio.shield(writer_task)  # store every result that arrived, even on Ctrl-C


async def _cancel(fut: asyncio.Future) -> None:
    """Cancel ``fut`` and wait for it, so no task is left with an unretrieved exception."""
    fut.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await fut
