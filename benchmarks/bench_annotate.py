"""Annotation throughput against the local judge server: one call vs three calls vs the paper.

The server (``python -m data.judge_server``, a separate process so it does not share the
client's GIL) answers every chat completion after a fixed latency ``L``; the client judges
Shapes triplets with ``C`` requests in flight and stores every label. With ``k`` calls per
triplet the best possible throughput is ``C / (L * k)`` triplets/s; the target is >= 90% of it.

Scenarios:

* ``paper``  -- the paper's protocol as described: three calls per triplet, one after another,
  one triplet at a time (bound ``1 / (3 L)``);
* ``three``  -- three calls per triplet, ``C`` requests in flight (bound ``C / (3 L)``);
* ``one``    -- one call per triplet with a JSON-schema reply, images sent once (bound ``C / L``).

For each: triplets/s and its share of the bound, calls, image bytes and prompt tokens per
triplet (tokens as the server counts them: OpenAI's image-tile formula plus text/4), and what
20,000 triplets would cost on gpt-4o at list prices (standard and Batch API).

    python -m benchmarks.bench_annotate                       # L = 1 s, C = 16
    python -m benchmarks.bench_annotate --latency 0.2 --concurrency 32 --size 64 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from core.judges.cost import BATCH_DISCOUNT, pricing_for
from core.judges.limits import RetryPolicy
from core.judges.openai_judge import OpenAIJudge, OpenAIJudgeConfig
from core.store import Store
from data.annotate_runner import plan, run_jobs

ROOT = Path(__file__).resolve().parents[1]


def shapes_items(n: int, size: int, seed: int) -> list[dict]:
    """``n`` Shapes training triplets from the generator, as ``Store.add_triplets`` items."""
    from data.shapes.synth import SynthConfig, train_triplet

    cfg = SynthConfig(train=n, bench=0, seed=seed, size=size)
    items = []
    for i in range(n):
        t = train_triplet(i, cfg)
        items.append(
            {"original": t.original, "edited": t.edited, "target": t.target,
             "mask": t.mask.astype("uint8") * 255, "instruction": t.edit.instruction,
             "category": t.edit.category, "split": "train", "source": "bench", "meta": t.meta}
        )  # fmt: skip
    return items


def start_server(store_path: Path, latency: float) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "data.judge_server", "--store", str(store_path), "--port", str(port),
           "--latency", str(latency)]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if "judge server on" not in line:
        proc.kill()
        raise RuntimeError(f"the judge server did not start: {line!r}")
    return proc, f"http://127.0.0.1:{port}/v1"


def scenario(
    store: Store, url: str, ids: list[str], mode: str, sequential: bool, concurrency: int
) -> dict:
    cfg = OpenAIJudgeConfig(
        base_url=url, api_key="bench", model="gpt-4o", mode=mode, sequential=sequential,
        max_concurrency=concurrency, timeout_s=30, retry=RetryPolicy(max_attempts=2),
    )  # fmt: skip
    judge = OpenAIJudge(cfg)
    p = plan(store, judge.spec, "annotate", ids=ids)

    async def go():
        async with judge:
            return await run_jobs(
                store, judge, p.jobs, "annotate", concurrency=concurrency, progress=False
            )

    s = asyncio.run(go())
    if s.ok != len(ids):
        raise RuntimeError(f"{mode}: only {s.ok} of {len(ids)} triplets labelled: {dict(s.failed)}")
    n = len(ids)
    return {"triplets": n, "seconds": s.seconds, "calls": s.usage.calls / n,
            "image_bytes": s.usage.image_bytes / n, "prompt_tokens": s.usage.prompt_tokens / n,
            "completion_tokens": s.usage.completion_tokens / n}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--latency", type=float, default=1.0, help="server latency L, seconds [1.0]")
    ap.add_argument("--concurrency", type=int, default=16, help="requests in flight C [16]")
    ap.add_argument("--waves", type=int, default=16, help="one-call triplets = waves x C [16]")
    ap.add_argument("--paper-triplets", type=int, default=3, help="triplets of the paper run [3]")
    ap.add_argument("--size", type=int, default=64, help="Shapes image size, px [64]")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    L, C = args.latency, args.concurrency
    plans = {  # name: (mode, sequential, concurrency, triplets)
        "paper": ("three", True, 1, args.paper_triplets),
        "three": ("three", False, C, max(3, (args.waves * C) // 3)),
        "one": ("one", False, C, args.waves * C),
    }
    total = sum(p[3] for p in plans.values())
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "bench.db")
        ids = store.add_triplets(shapes_items(total, args.size, seed=0), progress=False)
        server, url = start_server(store.path, L)
        try:
            results, start = {}, 0
            for name, (mode, seq, conc, n) in plans.items():
                r = scenario(store, url, ids[start : start + n], mode, seq, conc)
                start += n
                r["calls_per_triplet"] = 1 if mode == "one" else 3
                r["bound"] = conc / (L * r["calls_per_triplet"])
                r["rate"] = r["triplets"] / r["seconds"]
                results[name] = r
        finally:
            server.terminate()
            server.wait(timeout=10)
    price = pricing_for("gpt-4o")
    print(f"\nL = {L} s, C = {C}, Shapes {args.size} px\n")
    print(
        "| protocol | triplets | triplets/s | bound C/(L k) | % of bound | calls/triplet | image KB/triplet | prompt tokens/triplet | gpt-4o USD / 20K (batch) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        usd = (
            20_000
            * (
                r["prompt_tokens"] * price.input_per_million
                + r["completion_tokens"] * price.output_per_million
            )
            / 1e6
        )
        r["usd_per_20k"], r["batch_usd_per_20k"] = usd, usd * BATCH_DISCOUNT
        print(f"| {name} | {r['triplets']} | {r['rate']:.2f} | {r['bound']:.2f} | {100 * r['rate'] / r['bound']:.1f}% | "
              f"{r['calls']:.2f} | {r['image_bytes'] / 1024:.1f} | {r['prompt_tokens']:.0f} | "
              f"{usd:.0f} ({r['batch_usd_per_20k']:.0f}) |")  # fmt: skip
    speed = results["one"]["rate"] / results["paper"]["rate"]
    print(f"\none-call at C={C} is {speed:.0f}x the paper's sequential protocol; "
          f"{results['three']['image_bytes'] / results['one']['image_bytes']:.1f}x fewer image bytes than three-call")  # fmt: skip
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"latency": L, "concurrency": C, "size": args.size, "results": results}, indent=1
            )
        )
    ok = all(r["rate"] >= 0.9 * r["bound"] for r in results.values())
    print("target (>= 90% of the bound):", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
