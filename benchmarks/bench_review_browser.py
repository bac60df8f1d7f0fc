"""Issue 14, point 6: how long an annotator waits in Chromium for the next item.

Three users are signed in (two annotators and an admin, each in their own browser context,
each working through the queue). For each of them in turn the script clicks "Next →" (next
item) and "Accept" (save + next) and measures, in the page, from the click to the moment the
new item is on screen: its id in the header and its three images (original, edited,
difference) decoded. The baseline, measured in the same run and the same pages, is the
floor of any answer: a ``fetch`` of the served page from the page itself (one HTTP round
trip, no Gradio event). It prints p50 / p95 of each and their ratio, against the goal of
p95 <= 150 ms; docs/studio.md records the figures.

    python -m benchmarks.bench_review_browser                 # 20 rounds per user and step
    python -m benchmarks.bench_review_browser --rounds 5 --json out.json
    python -m benchmarks.bench_review_browser --think-ms 500   # a pause before each step

Needs Debian's chromium (``apt-get install chromium``); Playwright drives it, nothing is
downloaded. tests/test_studio_browser.py runs the same flow for one round as a test of
behaviour (each click shows a new item, each save is stored), without timing goals.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.bench_review import percentile
from studio.app import create_context
from studio.rating import Evaluation
from tests.studio_helpers import (
    CHROMIUM,
    SYSTEM_A,
    SYSTEM_B,
    TIMEOUT,
    browser_login,
    build_store,
    chromium,
    serve,
    tiny_model,
)

USERS = ("alice", "bob", "ada")
GOAL_MS = 150.0

# One HTTP round trip from the page: the floor under any answer.
TIME_FETCH = """async () => {
  const start = performance.now();
  const r = await fetch(location.href, {cache: "no-store"});
  await r.text();
  return performance.now() - start;
}"""

# Click a button and wait, polling every millisecond, until another item is fully shown.
TIME_STEP = """async (buttonId) => {
  const header = document.getElementById("review-header");
  const ids = ["review-original", "review-edited", "review-diff"];
  const images = () => ids.map((id) => document.querySelector(`#${id} img`));
  // The item's id is the header's last id: a message before it may name the saved item.
  const shownId = () => [...header.querySelectorAll("code")].map((c) => c.textContent)
    .filter((text) => /^[0-9a-f]{16}$/.test(text)).pop();
  const before = shownId();
  const sources = images().map((img) => img && img.src);
  const start = performance.now();
  document.getElementById(buttonId).click();
  await new Promise((resolve, reject) => {
    const check = () => {
      const id = shownId();
      const shown = images().every((img, k) =>
        img && img.src !== sources[k] && img.complete && img.naturalWidth > 0);
      if (id && id !== before && shown) resolve();
      else if (performance.now() - start > 20000)
        reject(new Error(`no new item after 20 s: ${before} -> ${id}; ` +
          images().map((img, k) => `${sources[k]} -> ${img && img.src} ${img && img.complete}`)));
      else setTimeout(check, 1);
    };
    check();
  });
  return performance.now() - start;
}"""


def measure(browser: Any, folder: Path, rounds: int, think_ms: int = 0) -> dict[str, Any]:
    """Timings (ms) of next / save + next / the fetch baseline for three signed-in users,
    waiting ``think_ms`` after each step (an annotator looking at the item); the store
    afterwards, to check the saves happened."""
    store = build_store(folder / "s.db", n_train=3 * 2 * (rounds + 3) + 20)
    ctx = create_context(store, tiny_model(), login_required=True,
                         evaluation=Evaluation(SYSTEM_A, SYSTEM_B))  # fmt: skip
    timings: dict[str, list[float]] = {"next": [], "save": [], "fetch": []}
    with serve(ctx) as url:
        pages = []
        for user in USERS:
            page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
            page.set_default_timeout(TIMEOUT)
            browser_login(page, url, user)
            page.get_by_role("tab", name="Review").click()
            page.locator("#review-load").click()
            page.locator("#review-header code").first.wait_for()
            page.locator("#review-diff img").wait_for()
            pages.append(page)
        for page in pages:  # warm-up: one of each per user
            page.evaluate(TIME_STEP, "review-forward")
            page.evaluate(TIME_STEP, "review-accept")
        for _ in range(rounds):
            for page in pages:
                for step, button in (("next", "review-forward"), ("save", "review-accept")):
                    page.wait_for_timeout(think_ms)
                    timings[step].append(page.evaluate(TIME_STEP, button))
                timings["fetch"].append(page.evaluate(TIME_FETCH))
    return {"timings": timings, "store": store}


def summarise(timings: dict[str, list[float]]) -> dict[str, Any]:
    out: dict[str, Any] = {
        step: {"n": len(v), "p50_ms": round(statistics.median(v), 1),
               "p95_ms": round(percentile(v, 95), 1), "max_ms": round(max(v), 1)}
        for step, v in timings.items()
    }  # fmt: skip
    # The fetch's p95 is often an outlier of the page route on a busy machine, so the
    # medians' ratio is printed too (the steadier figure to compare runs by).
    floor = max(out["fetch"]["p95_ms"], 0.1)
    floor50 = max(out["fetch"]["p50_ms"], 0.1)
    for step in ("next", "save"):
        out[step]["p95_vs_fetch"] = round(out[step]["p95_ms"] / floor, 1)
        out[step]["p50_vs_fetch_p50"] = round(out[step]["p50_ms"] / floor50, 2)
        out[step]["meets_goal"] = out[step]["p95_ms"] <= GOAL_MS
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_review_browser",
                                 description=__doc__.split("\n\n")[0])  # fmt: skip
    ap.add_argument("--rounds", type=int, default=20, help="rounds per user and step")
    ap.add_argument("--think-ms", type=int, default=0,
                    help="pause before each step, as an annotator looks at the item (0: "
                    "back to back, the worst case for loading the next items ahead)")  # fmt: skip
    ap.add_argument("--json", default="", help="also write the summary here")
    args = ap.parse_args(argv)
    if not CHROMIUM.exists():
        print(f"{CHROMIUM} is not installed (apt-get install chromium).", file=sys.stderr)
        return 2
    with chromium() as browser, tempfile.TemporaryDirectory() as tmp:
        summary = summarise(measure(browser, Path(tmp), args.rounds, args.think_ms)["timings"])
    print(f"browser latency, {len(USERS)} users signed in, {args.think_ms} ms between steps "
          f"(goal: p95 <= {GOAL_MS:g} ms):")  # fmt: skip
    for step, f in summary.items():
        extra = (
            f"  {f['p95_vs_fetch']}x the fetch p95, p50 {f['p50_vs_fetch_p50']}x the fetch p50"
            if "p95_vs_fetch" in f
            else ""
        )
        print(f"  {step:6s} p50 {f['p50_ms']:7.1f} ms  p95 {f['p95_ms']:7.1f} ms{extra}")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
