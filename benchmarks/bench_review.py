"""Review-tab latency on a large store, measured end to end through ``gradio_client``.

Builds (once, then reuses) a store with ``--triplets`` labelled triplets, two machine
annotations each (a judge and an oracle that disagree on some, so the doubt order is real),
serves the studio with login like a team deployment, and as an annotator repeats:

* **next**: ``/review_forward`` -- release the current item, find and lock the next most
  doubtful one, return its images, annotations and history;
* **save**: ``/review_fix`` -- save a corrected label (optimistic concurrency check, history
  row) and load the next item, which is what the annotator waits for after pressing Enter.

The first call after start-up (which computes the doubt order of every triplet) is reported
on its own. Goal: p95 < 150 ms for both at 20,000 triplets.

    python -m benchmarks.bench_review                    # 20,000 triplets, 200 rounds
    python -m benchmarks.bench_review --triplets 2000 --rounds 50 --json out.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from core.store import Store

PASSWORD = "benchmark password"
FILTERS = ("to review", "(any)", "(any)", "(any)", 0, 5)
CHUNK = 1000


def _image(rng: np.random.Generator, size: int) -> np.ndarray:
    img = np.empty((size, size, 3), np.uint8)  # (H, W, 3)
    img[:] = rng.integers(0, 256, 3)
    x, y = rng.integers(0, size // 2, 2)
    img[y : y + size // 3, x : x + size // 3] = rng.integers(0, 256, 3)
    return img


def build(path: Path, n: int, size: int, seed: int = 0) -> Store:
    """A store with ``n`` labelled triplets (reused when it already has them)."""
    store = Store(path)
    have = store.count_triplets()
    if have >= n:
        return store
    rng = np.random.default_rng([seed, have])
    for start in tqdm(range(have, n, CHUNK), desc="building store", unit="chunk"):
        items = [
            dict(original=_image(rng, size), edited=_image(rng, size),
                 instruction=f"make object {i} blue", category=("local", "remove", "add")[i % 3])
            for i in range(start, min(n, start + CHUNK))
        ]  # fmt: skip
        ids = store.add_triplets(items, progress=False)
        judge, oracle = [], []
        for tid in ids:
            s = rng.integers(0, 6, 3).astype(float)
            o = np.clip(s + rng.integers(-2, 3, 3) * (rng.random(3) < 0.3), 0, 5)
            judge.append(dict(triplet_id=tid, kind="judge", judge_model="bench-judge",
                              prompt_version="v1", rewards=dict(zip(("following", "preserving",
                              "quality"), s))))  # fmt: skip
            oracle.append(dict(triplet_id=tid, kind="oracle", judge_model="bench-oracle",
                               rewards=dict(zip(("following", "preserving", "quality"), o))))  # fmt: skip
        store.set_labels_from_annotations(store.add_annotations(judge))
        store.add_annotations(oracle)
    if store.get_user("annotator") is None:
        store.add_user("annotator", "annotator", PASSWORD)
    return store


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(percentile(values, 50) * 1000, 1),
        "p95": round(percentile(values, 95) * 1000, 1),
        "max": round(max(values) * 1000, 1),
    }


def _correction(out: tuple) -> list:
    """Scores moved by one point (always a real change), the texts, a note.

    Outputs after the (server-side) state: header, 3 images, annotations, 3 scores, 3 texts,
    note, history.
    """
    scores = [s - 1.0 if s >= 1.0 else s + 1.0 for s in map(float, out[5:8])]
    return [*scores, *out[8:11], "bench"]


def _rounds(next_call, save_call, n: int, warmup: int, desc: str) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"next": [], "save": []}
    for i in tqdm(range(warmup + n), desc=desc, unit="round"):
        t0 = time.perf_counter()
        out = next_call()
        t1 = time.perf_counter()
        saved = save_call(_correction(out))
        t2 = time.perf_counter()
        if "Saved" not in saved[0]:
            raise RuntimeError(f"{desc} round {i}: the correction was not saved: {saved[0][:200]}")
        if i >= warmup:
            times["next"].append(t1 - t0)
            times["save"].append(t2 - t1)
    return times


class _Request:  # what the handlers read from gr.Request
    username = "annotator"


def run(args: argparse.Namespace) -> dict:
    """Three layers: the handlers called in-process (server work), then the same through
    ``gradio_client`` returning file URLs (what a browser waits for before rendering; it
    fetches the three images in parallel afterwards), then with the images downloaded."""
    from gradio_client import Client

    from studio import review_tab
    from studio.app import build_demo, create_context, launch_kwargs
    from studio.model import load_edit_model

    folder = Path(args.db).parent if args.db else Path(tempfile.gettempdir()) / "mrc_bench_review"
    store = build(Path(args.db) if args.db else folder / f"store_{args.triplets}.db",
                  args.triplets, args.size)  # fmt: skip
    ctx = create_context(store, load_edit_model(None, "cpu"), login_required=True)
    results: dict = {"triplets": store.count_triplets(), "rounds": args.rounds}

    # 1. In-process: the handler functions without Gradio (server work only).
    forward = review_tab.review_forward.__wrapped__
    fix = review_tab._decision_handler("fix").__wrapped__
    t0 = time.perf_counter()
    state = [review_tab.review_next.__wrapped__(ctx, None, *FILTERS, _Request())[0]]
    results["first_call_ms"] = round((time.perf_counter() - t0) * 1000, 1)  # builds the order

    def direct_next():
        out = forward(ctx, state[0], *FILTERS, _Request())
        state[0] = out[0]
        return out[1:]  # as gradio_client sees it (no state)

    def direct_save(form):
        out = fix(ctx, state[0], *form, *FILTERS, _Request())
        state[0] = out[0]
        return out[1:]

    times = _rounds(direct_next, direct_save, args.rounds, args.warmup, "in-process")
    results["handler_ms"] = {k: summary(v) for k, v in times.items()}

    # 2./3. Through gradio_client, served with login like a team deployment.
    demo = build_demo(ctx)
    demo.launch(prevent_thread_lock=True, quiet=True, **launch_kwargs(ctx, "127.0.0.1", None))
    try:
        for key, download in (("api_ms", False), ("api_with_images_ms", True)):
            target = tempfile.mkdtemp(prefix="bench-review-") if download else False
            client = Client(demo.local_url, auth=("annotator", PASSWORD), verbose=False,
                            download_files=target)  # fmt: skip
            client.predict(*FILTERS, api_name="/review_next")
            times = _rounds(
                lambda c=client: c.predict(*FILTERS, api_name="/review_forward"),
                lambda form, c=client: c.predict(*form, *FILTERS, api_name="/review_fix"),
                args.rounds, args.warmup, key,
            )  # fmt: skip
            results[key] = {k: summary(v) for k, v in times.items()}
    finally:
        demo.close()
    return results


def main(argv: list[str] | None = None) -> int:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=fmt)
    ap.add_argument("--triplets", type=int, default=20_000, help="triplets in the store")
    ap.add_argument("--rounds", type=int, default=200, help="timed next+save rounds")
    ap.add_argument("--warmup", type=int, default=10, help="untimed rounds first")
    ap.add_argument("--size", type=int, default=64, help="image side in pixels")
    ap.add_argument("--db", default=None, help="store path (default: a reusable temp store)")
    ap.add_argument("--json", default=None, help="also write the result as JSON here")
    args = ap.parse_args(argv)
    result = run(args)
    print(f"\nReview latency, {result['triplets']:,} triplets, {result['rounds']} rounds "
          f"(first call, which orders the queue: {result['first_call_ms']} ms)")  # fmt: skip
    print("| layer | step | p50 ms | p95 ms | max ms | p95 < 150 ms |")
    print("|---|---|---|---|---|---|")
    layers = (("handler_ms", "in-process handler"), ("api_ms", "gradio_client, file URLs"),
              ("api_with_images_ms", "gradio_client, images downloaded"))  # fmt: skip
    for key, name in layers:
        for step in ("next", "save"):
            r = result[key][step]
            ok = "yes" if r["p95"] < 150 else "no"
            print(f"| {name} | {step} | {r['p50']} | {r['p95']} | {r['max']} | {ok} |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
