"""Issue 14, point 5: how long a fresh checkout takes from ``python app.py`` to a served page.

Each run copies the repository's tracked files (as they are in the working tree; no ``.mrc``,
no ``__pycache__``) into a temporary folder, starts ``python app.py`` there and times, from the
moment the process starts:

* each start-up progress line the app prints (``[ 31.8 s] Opening the store ...``),
* "Running on" (Gradio serving), and
* with Debian's chromium (when installed): the page loaded in a browser with its Edit tab
  shown.

The baseline, measured in the same run, is the floor under any start: a fresh Python process
importing torch, diffusers, transformers and gradio, nothing else. The script prints each
run's figures and the start's ratio to that floor, against the goal of serving within 60 s;
docs/studio.md records the figures.

    python -m benchmarks.bench_first_start               # 3 runs, about a minute each here
    python -m benchmarks.bench_first_start --runs 1 --json out.json

tests/test_studio_first_start.py makes one such start as a test of behaviour (progress in
order, the demo store built, the page served, a clean stop on Ctrl-C), without timing goals.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOAL_S = 60.0
STEP_LINE = re.compile(r"^\[\s*([0-9.]+) s\] (.*)$")
IMPORT_FLOOR = "import torch, diffusers, transformers, gradio"


@dataclass
class FirstStart:
    """One fresh start: seconds from process start to each milestone (None: never reached)."""

    steps: list[tuple[float, str]] = field(default_factory=list)  # the app's own progress lines
    serving_s: float | None = None  # Gradio's "Running on"
    page_s: float | None = None  # the page shown in chromium, Edit tab visible
    output: list[str] = field(default_factory=list)  # every line the app printed
    returncode: int | None = None  # after the stop (Ctrl-C)


def copy_checkout(dest: Path) -> Path:
    """The tracked files of this repository, as in the working tree, copied into ``dest``."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        src = REPO / rel
        if src.is_file():  # a tracked file deleted in the working tree is not copied
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1")
    env.pop("PYTHONPATH", None)  # the copy must stand on its own
    return env


def import_floor_s() -> float:
    """Seconds for a fresh Python to import the libraries the studio needs (the baseline)."""
    start = time.monotonic()
    subprocess.run([sys.executable, "-c", IMPORT_FLOOR], check=True, env=_child_env(),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    return time.monotonic() - start


def _open_page(url: str, chromium_path: Path, timeout_s: float) -> None:
    """Load ``url`` in headless chromium and wait until the Edit tab's image input is shown."""
    from playwright.sync_api import sync_playwright

    from tests.studio_helpers import ARGS

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium_path), args=ARGS, headless=True)
        try:
            page = browser.new_page()
            page.goto(url, timeout=timeout_s * 1000)
            page.get_by_role("tab", name="Edit").wait_for(timeout=timeout_s * 1000)
        finally:
            browser.close()


def first_start(
    checkout: Path,
    *,
    chromium_path: Path | None = None,
    timeout_s: float = 600.0,
    app_args: tuple[str, ...] = (),
) -> FirstStart:
    """Start ``python app.py`` in ``checkout``, time it to serving (and to the page in
    ``chromium_path`` if given), then stop it with Ctrl-C (SIGINT) and record its exit code."""
    port = free_port()
    result = FirstStart()
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "app.py", "--port", str(port), *app_args],
        cwd=checkout, env=_child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, bufsize=1,
    )  # fmt: skip
    serving = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            result.output.append(line)
            m = STEP_LINE.match(line)
            if m:
                result.steps.append((float(m.group(1)), m.group(2)))
            if "Running on" in line and result.serving_s is None:
                result.serving_s = time.monotonic() - started
                serving.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        while not serving.wait(0.2):
            if proc.poll() is not None or time.monotonic() - started > timeout_s:
                break
        if result.serving_s is not None and chromium_path is not None:
            _open_page(f"http://127.0.0.1:{port}/", chromium_path, timeout_s)
            result.page_s = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        reader.join(10)
        result.returncode = proc.returncode
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    p.add_argument("--runs", type=int, default=3, help="fresh starts to time")
    p.add_argument("--chromium", type=Path, default=Path("/usr/bin/chromium"),
                   help="Debian's chromium, to time the page load too (skipped if missing)")  # fmt: skip
    p.add_argument("--json", type=Path, help="write every figure here")
    args = p.parse_args(argv)
    chromium_path = args.chromium if args.chromium.exists() else None
    runs, floors = [], []
    for i in range(args.runs):
        floors.append(import_floor_s())
        with tempfile.TemporaryDirectory(prefix="mrc-first-start-") as tmp:
            r = first_start(copy_checkout(Path(tmp)), chromium_path=chromium_path)
        runs.append(r)
        steps = "; ".join(f"{t:.1f} s {m.split(':')[0].rstrip('.')}" for t, m in r.steps)
        print(f"run {i + 1}: import floor {floors[-1]:.1f} s | {steps} | serving "
              f"{r.serving_s and round(r.serving_s, 1)} s | page {r.page_s and round(r.page_s, 1)} s"
              f" | exit {r.returncode}", flush=True)  # fmt: skip
        if r.serving_s is None:
            print("\n".join(r.output[-20:]), file=sys.stderr)
            return 1
    serving = [r.serving_s for r in runs if r.serving_s is not None]
    floor = statistics.median(floors)
    med = statistics.median(serving)
    print(f"median: serving {med:.1f} s = {med / floor:.2f}x the import floor ({floor:.1f} s); "
          f"goal <= {GOAL_S:.0f} s: {'met' if max(serving) <= GOAL_S else 'NOT met'} "
          f"(worst {max(serving):.1f} s)")  # fmt: skip
    if args.json:
        doc = {"goal_s": GOAL_S, "import_floor_s": floors,
               "runs": [{k: v for k, v in asdict(r).items() if k != "output"} for r in runs]}  # fmt: skip
        args.json.write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
