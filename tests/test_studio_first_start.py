"""Issue 14, point 5: a fresh checkout's ``python app.py``, as a new user meets it.

One real first start in a copy of the tracked files (no ``.mrc``, no ``__pycache__``): the
progress lines come in order with growing times while the demo store is built, the page is
served and shows the Edit tab in Chromium, and Ctrl-C stops the server cleanly. How long it
takes is the benchmark's business (``python -m benchmarks.bench_first_start``), not a test's.
"""

from __future__ import annotations

import pytest

from benchmarks.bench_first_start import copy_checkout, first_start
from tests.studio_helpers import CHROMIUM

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium")


def test_fresh_checkout_shows_progress_serves_the_page_and_stops_on_ctrl_c(tmp_path):
    checkout = copy_checkout(tmp_path / "checkout")
    assert not (checkout / ".mrc").exists()

    r = first_start(checkout, chromium_path=CHROMIUM, timeout_s=480)

    text = "\n".join(r.output)
    assert r.serving_s is not None, text[-3000:]
    assert r.page_s is not None and r.page_s >= r.serving_s
    messages = [m for _, m in r.steps]
    expected = ["Starting MRC Studio", "Opening the store (the demo set-up)",
                "Loading the editing model", "Building the interface", "Serving"]  # fmt: skip
    assert [next(i for i, m in enumerate(messages) if m.startswith(e)) for e in expected] == sorted(
        range(len(expected))
    ), messages
    times = [t for t, _ in r.steps]
    assert times == sorted(times) and times[0] == 0.0
    assert "Demo set-up: creating the demo store" in text  # the slow part says what it does
    # The shipped benchmark outputs were used: nothing was generated on first start.
    assert "generating" not in text, text
    assert (checkout / ".mrc" / "studio.db").is_file()
    # Ctrl-C: a clean stop, no traceback.
    assert "Traceback" not in text, text[-3000:]
    assert r.returncode in (0, 130, -2), (r.returncode, text[-2000:])
