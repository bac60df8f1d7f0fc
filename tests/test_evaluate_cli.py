"""``python -m train.evaluate`` as a command: against the local OpenAI-compatible judge server,
the Shapes-Edit acceptance command with the oracle, and every flag documented."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tests._evaluate_helpers import make_folder_benchmark, tiny_pipelines
from train.evaluate.benchmarks import load_benchmark
from train.evaluate.systems import safe_name

# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    return tiny_pipelines(tmp_path_factory)


# -- the command line, against the local OpenAI-compatible judge server --------------------------


def test_cli_end_to_end_with_a_vlm_judge_over_http(tmp_path, models, monkeypatch, capsys):
    """``python -m train.evaluate`` with ``--judge openai`` against data.judge_server: the
    server does not know items 2 and 4 (HTTP 400), so their verdicts fail as ``rejected``."""
    from core.images import image_hash, load_image
    from data.judge_server import FaultConfig, ServerState, start_server
    from tests._judge_fakes import HashAnswerer
    from train.evaluate.cli import main

    bench = make_folder_benchmark(tmp_path / "bench", fail=())
    known = {image_hash(load_image(bench / f"in{i}.png")) for i in (0, 1, 3, 5)}
    srv = start_server(ServerState(HashAnswerer(known), FaultConfig(seed=0)))
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    argv = ["--benchmark", f"folder:{bench}", "--system", f"base={models['ip2p']}",
            "--system", f"mrc={models['mrc']}", "--sweep", "0,5", "--steps", "2",
            "--judge", "openai", "--judge-base-url", srv.url, "--judge-model", "judge-test",
            "--bootstrap", "200", "--no-progress", "--out", str(tmp_path / "out")]  # fmt: skip
    try:
        assert main(argv) == 0
        first = srv.state.stats()["chat_completions"]
        assert first == 3 * 4  # four known items per system, one call each (mode "one")
        printed = capsys.readouterr().out
        assert "| `mrc@5/5/5` |" in printed and "report.md" in printed
        failures = pd.read_csv(tmp_path / "out" / "report" / "failures.csv")
        assert set(failures.reason_code) == {"rejected"} and (failures.n_items == 2).all()
        assert main(argv) == 0  # the re-run asks the server nothing
        assert srv.state.stats()["chat_completions"] == first
        info = json.loads((tmp_path / "out" / "run.json").read_text())
        assert info["judging"]["judge"]["reused_ok"] == 12
        assert info["judging"]["judge"]["reused_failed"] == 6
    finally:
        srv.shutdown()
        srv.server_close()
    assert main(["--benchmark", "nope", "--system", "a=b", "--out", str(tmp_path / "x")]) == 2
    assert "unknown benchmark" in capsys.readouterr().err


# -- Shapes-Edit with the oracle: the acceptance command on tiny models ------------------------


def test_shapes_benchmark_command_with_the_oracle(tmp_path, models, capsys):
    """The Table 1 / 4 / 6 command on Shapes-Edit (one item per category): the ground truth as
    a system scores 5/5/5, a copy of the input follows nothing but preserves everything."""
    from train.evaluate.cli import main

    bench = load_benchmark("shapes").select(per_category=1)
    assert len(bench) == 7 and len(bench.categories) == 7
    gt, copy = tmp_path / "gt", tmp_path / "copy"
    gt.mkdir()
    copy.mkdir()
    for item in bench.items:
        item.load_target().save(gt / f"{safe_name(item.item_id)}.png")
        item.load_image().save(copy / f"{safe_name(item.item_id)}.png")
    out = tmp_path / "out"
    argv = ["--benchmark", "shapes", "--per-category", "1", "--system", f"truth={gt}",
            "--system", f"copy={copy}", "--system", f"mrc={models['mrc']}", "--sweep", "0,5",
            "--steps", "2", "--judge", "oracle", "--bootstrap", "200", "--no-progress",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    t1 = pd.read_csv(out / "report" / "table1.csv").set_index(["system", "perspective"])
    for p in ("following", "preserving", "quality"):
        assert t1.loc[("truth", p), "acc"] == 1.0 and t1.loc[("truth", p), "score"] == 5.0
    assert t1.loc[("copy", "following"), "acc"] == 0.0
    assert t1.loc[("copy", "preserving"), "score"] == 5.0
    assert (t1["n_items"] == 7).all() and (t1["n_failed"] == 0).all()
    md = (out / "report" / "report.md").read_text()
    assert "`copy` (B) vs `truth` (A)" in md and "### `mrc`" in md  # Table 4 and Table 6
    by_cat = pd.read_csv(out / "report" / "table1_by_category.csv")
    assert len(set(by_cat["category"])) == 7
    assert main(argv) == 0  # nothing left to do on the second run
    info = json.loads((out / "run.json").read_text())
    assert info["judging"]["judge"]["planned"] == 0
    assert [s["generated_now"] for s in info["systems"]] == [0, 0, 0, 0]


def test_every_flag_is_documented():
    from train.evaluate.cli import build_parser

    docs = (Path(__file__).parents[1] / "docs" / "evaluation.md").read_text()
    flags = [o for a in build_parser()._actions for o in a.option_strings if o.startswith("--")]
    missing = [f for f in flags if f != "--help" and f"`{f}" not in docs]
    assert not missing, f"flags missing from docs/evaluation.md: {missing}"
