"""Make the screenshots in docs/img: ``python -m studio.screenshots --out docs/img``.

Builds a fresh demo store in a temporary folder, lets three *simulated* raters rate every
blind pair through the real API (their scores are the oracle's verdict on the output they
see, plus seeded Gaussian noise, rounded: a stand-in so the results view has data), then
drives the studio in Debian's Chromium with Playwright and captures each tab. Nothing here
touches the user's own store.
"""

from __future__ import annotations

import argparse
import secrets
import tempfile
from pathlib import Path

import numpy as np

from core.rewards import PERSPECTIVES

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
RATERS = ("rater-1", "rater-2", "rater-3")


def simulate_ratings(store, url: str, password: str, seed: int = 0) -> int:
    """Every simulated rater rates until nothing is left; returns the number of ratings."""
    from gradio_client import Client

    rng = np.random.default_rng(seed)
    oracle = {
        v["output_id"]: v["verdict"]
        for v in store.verdicts(judge_model="shapes-oracle-v1", status="ok")
    }
    gold = {g["id"]: g for g in store.gold_items()}
    done = 0
    for rater in RATERS:
        client = Client(url, auth=(rater, password), verbose=False, download_files=False)
        while client.predict(api_name="/rate_next")[1] is not None:
            with store.db() as db:
                a = db.execute(
                    "SELECT output_a, output_b, a_side, gold_id FROM rating_assignments "
                    "WHERE rater = ? AND status = 'pending' ORDER BY id LIMIT 1",
                    [rater],
                ).fetchone()
            if a[3] is not None:  # a gold pair: the known scores of its better / worse image
                g = gold[a[3]]
                known = [{p: g[f"{k}_{p}"] for p in PERSPECTIVES} for k in ("better", "worse")]
            else:
                known = [{p: oracle[o][p]["score"] for p in PERSPECTIVES} for o in a[:2]]
            sides = known if a[2] == "L" else known[::-1]
            scores = []
            for truth in sides:
                for p in PERSPECTIVES:
                    noisy = truth[p] + rng.normal(0.0, 0.8)
                    scores.append(str(int(np.clip(np.rint(noisy), 0, 5))))
            left, right = sum(map(int, scores[:3])), sum(map(int, scores[3:]))
            pref = "tie" if abs(left - right) <= 1 else ("left" if left > right else "right")
            client.predict(*scores, pref, api_name="/rate_submit")
            done += 1
    return done


def capture(url: str, out: Path) -> list[Path]:
    from playwright.sync_api import sync_playwright

    paths = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1360, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(url)
        page.get_by_text("Local single-user mode").wait_for()
        page.locator("table tbody tr").first.click()  # the first example
        page.locator("#edit-run").click()
        page.locator("#edit-status").get_by_text("Edited").wait_for()
        page.locator("#edit-sweep").click()
        page.locator("#edit-grid img").wait_for(timeout=300_000)  # nine images on a CPU
        paths.append(out / "studio_edit.png")
        page.screenshot(path=paths[-1], full_page=True)

        page.get_by_role("tab", name="Review").click()
        page.locator("#review-load").click()
        header = page.locator("#review-header")
        header.get_by_text("doubt").wait_for()
        header.click()
        for keys in (("3", "Enter"), ("Enter",)):  # a keyboard correction, then an acceptance
            for key in keys:
                page.keyboard.press(key)
            header.get_by_text("Saved").wait_for()
            page.wait_for_timeout(500)
        page.get_by_text("Progress and export").click()
        page.get_by_role("button", name="Refresh progress").click()
        page.wait_for_timeout(1500)
        paths.append(out / "studio_review.png")
        page.screenshot(path=paths[-1], full_page=True)

        page.get_by_role("tab", name="Human evaluation").click()
        page.locator("#rate-start").click()
        page.wait_for_timeout(1500)
        paths.append(out / "studio_rate.png")
        page.screenshot(path=paths[-1], full_page=True)

        page.get_by_text("Results (admin)").click()
        page.locator("#results-refresh").click()
        page.get_by_text("Means with 95% bootstrap intervals").wait_for()
        page.get_by_text("Evaluation set-up (admin)").click()
        page.wait_for_timeout(1000)
        paths.append(out / "studio_results.png")
        page.locator("#results-box").screenshot(path=paths[-1])
        paths.append(out / "studio_rate_setup.png")
        page.get_by_text("Evaluation set-up (admin)").locator("xpath=ancestor::*[2]").screenshot(
            path=paths[-1]
        )
        browser.close()
    return paths


def main(argv: list[str] | None = None) -> int:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=fmt)
    ap.add_argument("--out", default="docs/img", help="folder for the PNG files")
    args = ap.parse_args(argv)
    from studio.app import build_demo, create_context, default_evaluation, launch_kwargs
    from studio.demo import demo_banner, ensure_demo_store, example_inputs
    from studio.model import load_edit_model

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_edit_model(None, "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        store = ensure_demo_store(Path(tmp) / "studio.db")
        password = secrets.token_urlsafe(16)
        for rater in RATERS:
            store.add_user(rater, "rater", password)
        for login in (True, False):  # rate as three raters, then look as the local admin
            # overlap 3 for the simulated raters; 4 leaves a pair for the admin's screenshot
            evaluation = default_evaluation(store, overlap=3 if login else 4, gold_share=0.2)
            ctx = create_context(
                store, model, login_required=login, evaluation=evaluation,
                banner=demo_banner(store, model), examples=example_inputs(store),
            )  # fmt: skip
            demo = build_demo(ctx)
            demo.launch(
                prevent_thread_lock=True, quiet=True, **launch_kwargs(ctx, "127.0.0.1", None)
            )
            try:
                if login:
                    print(f"{simulate_ratings(store, demo.local_url, password)} simulated ratings")
                else:
                    for path in capture(demo.local_url, out):
                        print(f"wrote {path}")
            finally:
                demo.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
