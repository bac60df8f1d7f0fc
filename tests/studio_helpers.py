"""Shared set-up for the studio tests: a small store, the tiny model, a running app.

The store is built from seeded random images (no Shapes generator needed), with two judges
that disagree on some triplets (so the doubt order is non-trivial), one label per triplet,
two benchmark runs with distinctive names (so the blind tests can look for leaks) and one
judge verdict per output.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from core.store import Store

SYSTEM_A = "secret-system-alpha"  # run names: must never reach a rater
SYSTEM_B = "secret-system-bravo"
MODEL_A = "model-ALPHA-weights"
MODEL_B = "model-BRAVO-weights"
PASSWORD = "correct horse battery"
GOOD = {"following": 5, "preserving": 5, "quality": 5}  # a gold pair's better image
BAD = {"following": 1, "preserving": 1, "quality": 1}  # and its worse one
# Debian's chromium, driven by Playwright (never a browser download).
CHROMIUM = Path(os.environ.get("MRC_CHROMIUM", "/usr/bin/chromium"))
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
TIMEOUT = 30_000  # ms for any one UI step on a busy 2-core machine
USERS = {"ada": "admin", "alice": "annotator", "bob": "annotator", "rita": "rater", "raul": "rater"}


def _image(rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """A flat colour with a rectangle of another colour: compresses well, never identical."""
    img = np.empty((size, size, 3), np.uint8)
    img[:] = rng.integers(0, 256, 3)
    x, y = rng.integers(0, size // 2, 2)
    img[y : y + size // 3, x : x + size // 3] = rng.integers(0, 256, 3)
    return img


def build_store(path: str | Path, *, n_train: int = 8, n_bench: int = 6, seed: int = 0) -> Store:
    """A store with ``n_train`` labelled triplets, ``n_bench`` benchmark items and two runs."""
    rng = np.random.default_rng(seed)
    store = Store(path)
    for name, role in USERS.items():
        store.add_user(name, role, PASSWORD)
    items = [
        dict(original=_image(rng), edited=_image(rng), instruction=f"make shape {i} blue",
             category=("local", "remove")[i % 2], split="train")
        for i in range(n_train)
    ]  # fmt: skip
    ids = store.add_triplets(items, progress=False)
    labels = []
    for i, tid in enumerate(ids):
        scores = {"following": 4, "preserving": 5, "quality": 3}
        texts = {"following": "the shape is only partly blue", "preserving": "", "quality": "noise"}
        ann = {p: {"score": s, "text": texts[p]} for p, s in scores.items()}
        labels.append(store.add_annotation(tid, kind="judge", judge_model="judge-one",
                                           prompt_version="v1", rewards=ann))  # fmt: skip
        other = dict(ann, following={"score": 4 - (i % 3), "text": texts["following"]})
        store.add_annotation(tid, kind="oracle", judge_model="shapes-oracle-v1", rewards=other)
    store.set_labels_from_annotations(labels)
    bench = [
        dict(original=_image(rng), edited=None, instruction=f"turn item {i} red",
             category="local", split="benchmark", target=_image(rng))
        for i in range(n_bench)
    ]  # fmt: skip
    bench_ids = store.add_triplets(bench, progress=False)
    for run_name, model in ((SYSTEM_A, MODEL_A), (SYSTEM_B, MODEL_B)):
        run = store.create_run(run_name, model, settings={"note": f"{run_name} settings"})
        for tid in bench_ids:
            out = store.add_output(run, tid, _image(rng))
            verdict = {p: {"yes": True, "score": float(rng.integers(2, 6))} for p in
                       ("following", "preserving", "quality")}  # fmt: skip
            store.add_verdict(out, judge_model="judge-one", prompt_version="v1", verdict=verdict)
    return store


def triplet_ids(store: Store, split: str = "train") -> list[str]:
    return [t["id"] for t in store.list_triplets(split=split)]


_MODEL = None


def tiny_model():
    """The randomly initialised tiny model, built once per test process."""
    global _MODEL
    if _MODEL is None:
        from studio.model import load_edit_model

        _MODEL = load_edit_model(None, "cpu")
    return _MODEL


@contextlib.contextmanager
def serve(ctx, *, auth: bool | None = None) -> Iterator[str]:
    """Launch the studio for ``ctx`` on a free local port; yields its URL.

    ``auth`` defaults to what the context's policy asks for; ``auth=False`` launches without
    login even when the policy requires it (a misconfigured public server).
    """
    from studio.app import build_demo, launch_kwargs

    demo = build_demo(ctx)
    kwargs = launch_kwargs(ctx, "127.0.0.1", None)
    if auth is False:
        kwargs.pop("auth", None)
        kwargs.pop("auth_message", None)
    demo.launch(prevent_thread_lock=True, quiet=True, **kwargs)
    try:
        yield demo.local_url.rstrip("/") + "/"
    finally:
        demo.close()


def client(url: str, user: str | None = None):
    from gradio_client import Client

    auth = (user, PASSWORD) if user else None
    return Client(url, auth=auth, verbose=False, download_files=os.environ.get("TMPDIR", "/tmp"))


def login_opener(url: str, user: str):
    """A urllib opener holding ``user``'s session cookie, as a browser would after login."""
    import urllib.parse
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    form = urllib.parse.urlencode({"username": user, "password": PASSWORD}).encode()
    opener.open(url + "login", form)
    return opener


def call(opener, url: str, api: str, *data) -> list:
    """One event through Gradio's plain HTTP API (``/gradio_api/call/<api>``), as the page's
    own requests go: returns the list of outputs, or raises RuntimeError with the error text."""
    import json
    import urllib.request

    body = json.dumps({"data": list(data)}).encode()
    request = urllib.request.Request(
        f"{url}gradio_api/call/{api}", body, {"Content-Type": "application/json"}
    )
    event_id = json.loads(opener.open(request).read())["event_id"]
    stream = opener.open(f"{url}gradio_api/call/{api}/{event_id}").read().decode()
    event = None
    for line in stream.splitlines():
        if line.startswith("event: "):
            event = line[len("event: ") :]
        elif line.startswith("data: ") and event in ("complete", "error"):
            payload = json.loads(line[len("data: ") :])
            if event == "error":
                raise RuntimeError(str(payload))
            return payload
    raise RuntimeError(f"no result in the event stream of {api}: {stream[:300]}")


@contextlib.contextmanager
def chromium():
    """A headless Debian chromium through Playwright."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def add_gold_pairs(store: Store, n: int) -> list[int]:
    """``n`` gold pairs on the first benchmark items: the better image scored 5s, the worse 1s."""
    rng = np.random.default_rng(5)
    ids = []
    for item in triplet_ids(store, "benchmark")[:n]:
        better, worse = (rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(2))
        ids.append(store.add_gold_item(item, better, worse, source="test",
                                       better_scores=GOOD, worse_scores=BAD))  # fmt: skip
    return ids


def browser_login(page, url: str, user: str) -> None:
    """Sign ``user`` in on the studio's login page (the shared test password)."""
    page.goto(url)
    page.get_by_label("username").fill(user)
    page.get_by_label("password").fill(PASSWORD)
    page.get_by_role("button", name="Login").click()
    page.locator("#mrc-user").get_by_text(f"Signed in as {user}").wait_for()
