"""The studio in a real browser: Playwright driving Debian's Chromium (never a downloaded one).

Loads the app, runs an edit, corrects a label with the keyboard, submits a blind rating with
the keyboard and checks that the results table changed. Skipped with the reason when
/usr/bin/chromium is missing (CI installs it with apt in .ci/run).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from studio.app import create_context
from studio.rating import Evaluation
from tests.studio_helpers import SYSTEM_A, SYSTEM_B, build_store, serve, tiny_model

CHROMIUM = Path(os.environ.get("MRC_CHROMIUM", "/usr/bin/chromium"))
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"{CHROMIUM} is not installed (apt-get install chromium; .ci/run does this)",
    ),
]
TIMEOUT = 30_000  # ms for any one UI step on a busy 2-core machine


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        yield b
        b.close()


def test_edit_review_rate_and_results_in_the_browser(browser, tmp_path):
    store = build_store(tmp_path / "s.db")
    ctx = create_context(
        store, tiny_model(), login_required=False, evaluation=Evaluation(SYSTEM_A, SYSTEM_B)
    )
    image = tmp_path / "input.png"
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(image)
    with serve(ctx) as url:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(TIMEOUT)
        page.goto(url)
        page.get_by_text("Local single-user mode").wait_for()

        # 1. Edit: upload, instruct, run; the before/after slider shows two images.
        page.locator("#edit-input input[type=file]").set_input_files(str(image))
        page.locator("#edit-instruction textarea").fill("make the square red")
        page.locator("#edit-run").click()
        page.locator("#edit-status").get_by_text("Edited with rewards").wait_for()
        assert page.locator("#edit-output img").count() == 2

        # 2. Review: load the queue, set "following" to 2 with the keyboard, Enter saves.
        page.get_by_role("tab", name="Review").click()
        page.locator("#review-load").click()
        header = page.locator("#review-header")
        header.get_by_text("doubt").wait_for()
        tid = header.locator("code").first.inner_text()
        header.click()  # focus the page (not a text box)
        page.keyboard.press("2")
        page.keyboard.press("Enter")
        header.get_by_text("Saved").wait_for()
        label = store.get_label(tid)
        assert (label.status, label.rewards.following.score) == ("fixed", 2.0)
        assert label.updated_by == "local"

        # 3. Results before any rating, then a keyboard rating, then results again.
        page.get_by_role("tab", name="Human evaluation").click()
        page.get_by_text("Results (admin)").click()
        page.locator("#results-refresh").click()
        page.get_by_text("No ratings yet.").wait_for()
        before = page.locator("#results-scores").inner_text()
        page.locator("#rate-start").click()
        page.locator("#rate-instruction").get_by_text("turn item").wait_for()
        page.locator("#rate-instruction").click()
        for key in ("5", "4", "3", "1", "2", "0", "l"):
            page.keyboard.press(key)
        page.keyboard.press("Enter")
        page.get_by_text("Rating saved").wait_for()
        (row,) = store.ratings()
        left = (5.0, 4.0, 3.0)
        a = (row["a_following"], row["a_preserving"], row["a_quality"])
        assert a == (left if row["a_side"] == "L" else (1.0, 2.0, 0.0))
        page.locator("#results-refresh").click()
        page.get_by_text("1 raters").wait_for()
        after = page.locator("#results-scores").inner_text()
        assert after != before and SYSTEM_A in after and SYSTEM_B in after
        page.close()
