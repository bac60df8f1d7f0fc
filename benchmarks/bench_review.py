"""Review-tab latency on a large store, measured end to end through ``gradio_client``.

Builds (once, then reuses) a store with ``--triplets`` labelled triplets, two machine
annotations each (a judge and an oracle that disagree on some, so the doubt order is real),
serves the studio with login like a team deployment, and as an annotator repeats:

* **next**: ``/review_forward`` -- release the current item, find and lock the next most
  doubtful one, return its images, annotations and history;
* **save**: ``/review_fix`` -- save a corrected label (optimistic concurrency check, history
  row) and load the next item, which is what the annotator waits for after pressing Enter.

Each response carries the whole item: header, the three images (original, edited, and the
difference view), annotations, the form values and the history. The first call after
start-up (which computes the doubt order of every triplet) is reported on its own.

Layers: the handlers called in-process (server work only), then ``gradio_client`` against the
served app, with and without downloading the three images of every response, once with the
client as it comes and once with one TLS context shared by its requests. ``gradio_client``
opens a new ``httpx`` client for every request, and each builds a TLS context by loading
certifi's CA bundle even for ``http://`` URLs (the ``tls_context_ms`` figure in the output);
a browser pays nothing like it. ``ssl_verify=<context>`` passes one context built once from
the same bundle, so certificates are still verified against https servers. Also, the client
looks for the answer every 50 ms, so a call takes the server's answer time rounded up to the
next 50 ms step, plus the request itself.

Goal: p95 < 150 ms for both steps at 20,000 triplets, images included.

    python -m benchmarks.bench_review                    # 20,000 triplets, 200 rounds
    python -m benchmarks.bench_review --triplets 2000 --rounds 50 --json out.json
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import ssl
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from core.store import Store

PASSWORD = "benchmark password"
CLIENT_LAYERS = (  # result key, download the images, share one TLS context, table label
    ("api_ms", False, False, "gradio_client, file URLs only"),
    ("api_with_images_ms", True, False, "gradio_client, images downloaded"),
    ("api_tls_ms", False, True, "gradio_client + shared TLS context, file URLs only"),
    ("api_tls_with_images_ms", True, True, "gradio_client + shared TLS context, images downloaded"),
)
FILTERS = ("to review", "(any)", "(any)", "(any)", 0, 5)
CHUNK = 1000
MAX_LOST = 10  # responses gradio_client may lose (see _rounds) before the run is aborted


def _image(rng: np.random.Generator, size: int) -> np.ndarray:
    img = np.empty((size, size, 3), np.uint8)  # (H, W, 3)
    img[:] = rng.integers(0, 256, 3)
    x, y = rng.integers(0, size // 2, 2)
    img[y : y + size // 3, x : x + size // 3] = rng.integers(0, 256, 3)
    return img


def build(path: Path, n: int, size: int, seed: int = 0) -> Store:
    """A store with ``n`` labelled triplets of ``size`` px (reused when it already has them)."""
    store = Store(path)
    have = store.count_triplets()
    if have:
        first = store.list_triplets(limit=1)[0]
        width = store.image(first["original"]).width
        if width != size:
            raise ValueError(
                f"{path} holds {width} px images, not {size} px; pass another --db or --size."
            )
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


def _rounds(
    next_call, save_call, n: int, warmup: int, desc: str
) -> tuple[dict[str, list[float]], int]:
    """Time ``warmup + n`` next/save rounds (the first ``warmup`` untimed); also return how
    many responses the client lost.

    Under load, gradio_client 2.x can lose a response: the server closes the session's event
    stream just as the next call is submitted, and the client raises ``CancelledError``
    (the server did its work). Such a round is repeated and left out of the timings, and
    the count is reported; more than ``MAX_LOST`` stops the benchmark.
    """
    times: dict[str, list[float]] = {"next": [], "save": []}
    done = lost = 0
    with tqdm(total=warmup + n, desc=desc, unit="round") as bar:
        while done < warmup + n:
            try:
                t0 = time.perf_counter()
                out = next_call()
                t1 = time.perf_counter()
                saved = save_call(_correction(out))
                t2 = time.perf_counter()
            except concurrent.futures.CancelledError:
                lost += 1
                if lost > MAX_LOST:
                    raise RuntimeError(f"{desc}: gradio_client lost {lost} responses.") from None
                continue
            if "Saved" not in saved[0]:
                raise RuntimeError(f"{desc}: the correction was not saved: {saved[0][:200]}")
            if done >= warmup:
                times["next"].append(t1 - t0)
                times["save"].append(t2 - t1)
            done += 1
            bar.update()
    return times, lost


class _Request:  # what the handlers read from gr.Request
    username = "annotator"


def tls_context() -> ssl.SSLContext:
    """The context httpx builds for ``verify=True`` (certifi's CA bundle), built once."""
    import certifi

    return ssl.create_default_context(cafile=certifi.where())


def tls_context_ms(n: int = 20) -> float:
    """Median time to open an ``httpx.Client`` with ``verify=True`` (what gradio_client does
    for every request and every file download)."""
    import httpx

    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        httpx.Client(verify=True).close()
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times) * 1000, 1)


def run(args: argparse.Namespace) -> dict:
    """The layers of the module docstring, in order."""
    from gradio_client import Client

    from studio import review_handlers
    from studio.app import build_demo, create_context, launch_kwargs
    from studio.model import load_edit_model

    folder = Path(args.db).parent if args.db else Path(tempfile.gettempdir()) / "mrc_bench_review"
    store = build(Path(args.db) if args.db else folder / f"store_{args.triplets}_{args.size}px.db",
                  args.triplets, args.size)  # fmt: skip
    ctx = create_context(store, load_edit_model(None, "cpu"), login_required=True)
    results: dict = {
        "triplets": store.count_triplets(),
        "rounds": args.rounds,
        "image_size": args.size,
        "cpus": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "tls_context_ms": tls_context_ms(),
    }

    # 1. In-process: the handler functions without Gradio (server work only).
    forward = review_handlers.review_forward.__wrapped__
    fix = review_handlers.decision_handler("fix").__wrapped__
    t0 = time.perf_counter()
    state = [review_handlers.review_next.__wrapped__(ctx, None, *FILTERS, _Request())[0]]
    results["first_call_ms"] = round((time.perf_counter() - t0) * 1000, 1)  # builds the order

    def direct_next():
        out = forward(ctx, state[0], *FILTERS, _Request())
        state[0] = out[0]
        return out[1:]  # as gradio_client sees it (no state)

    def direct_save(form):
        out = fix(ctx, state[0], *form, *FILTERS, _Request())
        state[0] = out[0]
        return out[1:]

    times, _ = _rounds(direct_next, direct_save, args.rounds, args.warmup, "in-process")
    results["handler_ms"] = {k: summary(v) for k, v in times.items()}
    results["lost_responses"] = {}

    # 2./3. Through gradio_client, served with login like a team deployment.
    demo = build_demo(ctx)
    demo.launch(prevent_thread_lock=True, quiet=True, **launch_kwargs(ctx, "127.0.0.1", None))
    try:
        for key, download, shared_tls, _ in CLIENT_LAYERS:
            with tempfile.TemporaryDirectory(prefix="bench-review-") as target:
                client = Client(demo.local_url, auth=("annotator", PASSWORD), verbose=False,
                                download_files=target if download else False,
                                ssl_verify=tls_context() if shared_tls else True)  # fmt: skip
                client.predict(*FILTERS, api_name="/review_next")
                times, lost = _rounds(
                    lambda c=client: c.predict(*FILTERS, api_name="/review_forward"),
                    lambda form, c=client: c.predict(*form, *FILTERS, api_name="/review_fix"),
                    args.rounds, args.warmup, key,
                )  # fmt: skip
            results[key] = {k: summary(v) for k, v in times.items()}
            results["lost_responses"][key] = lost
    finally:
        demo.close()
    results["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
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
    print(f"\nReview latency, {result['triplets']:,} triplets of {result['image_size']} px, "
          f"{result['rounds']} rounds; {result['cpus']} CPUs, load average "
          f"{result['load_average_before']} -> {result['load_average_after']}")  # fmt: skip
    print(f"First call (orders the queue): {result['first_call_ms']} ms; one httpx client with "
          f"verify=True (a new TLS context): {result['tls_context_ms']} ms")  # fmt: skip
    print("| layer | step | p50 ms | p95 ms | max ms | p95 < 150 ms |")
    print("|---|---|---|---|---|---|")
    layers = [("handler_ms", "in-process handler")] + [(k, n) for k, _, _, n in CLIENT_LAYERS]
    for key, name in layers:
        for step in ("next", "save"):
            r = result[key][step]
            ok = "yes" if r["p95"] < 150 else "no"
            print(f"| {name} | {step} | {r['p50']} | {r['p95']} | {r['max']} | {ok} |")
    lost = {k: v for k, v in result["lost_responses"].items() if v}
    if lost:
        print(f"Rounds repeated because gradio_client lost a response (not timed): {lost}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
