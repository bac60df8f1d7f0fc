"""python -m train.evaluate.text_probe: the loss with an item's own instruction vs another item's
of the same category vs the empty prompt, per category; deterministic; exactly no gain for a
model that ignores its instruction."""

from __future__ import annotations

import json

import pytest
import torch

from tests._evaluate_helpers import tiny_pipelines
from train.evaluate.benchmarks import load_benchmark
from train.evaluate.generate import load_pipeline
from train.evaluate.systems import parse_system
from train.evaluate.text_probe import group_items, main, probe_system

pytestmark = pytest.mark.usefixtures("one_torch_thread")
BENCH = "shapes?size=32&scenes=3&seed=11"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny_pipelines(tmp_path_factory)


@pytest.fixture(scope="module")
def groups():
    return group_items(load_benchmark(BENCH).items, 3)


def test_cli_writes_a_deterministic_report_per_system_and_category(models, tmp_path, capsys):
    args = ["--system", f"ip2p={models['ip2p']}", "--system", f"mrc={models['mrc']},rewards=0/5/5",
            "--benchmark", BENCH, "--per-category", "3", "--timesteps", "500"]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert "| `mrc` | local | 3 |" in capsys.readouterr().out
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    a = json.loads((tmp_path / "a" / "text_probe.json").read_text())
    b = json.loads((tmp_path / "b" / "text_probe.json").read_text())
    assert a["results"] == b["results"]  # fixed noise: the same numbers
    assert set(a["results"]) == {"ip2p", "mrc"}
    assert a["systems"]["mrc"]["rewards"] == [0.0, 5.0, 5.0]
    for rows in a["results"].values():
        assert len(rows) == 7 and all(r["items"] == 3 for r in rows)
        # a random model's output depends on its prompt: the empty prompt changes the loss
        assert any(abs(r["loss"]["empty"] - r["loss"]["true"]) > 1e-6 for r in rows)
    assert (tmp_path / "a" / "text_probe.png").stat().st_size > 1000
    assert (tmp_path / "a" / "text_probe.md").read_text().count("| `ip2p` |") == 7


def test_a_model_that_ignores_its_instruction_gains_nothing(models, groups):
    spec = parse_system(f"ip2p={models['ip2p']}")
    pipe = load_pipeline(spec)
    with torch.no_grad():  # zero every cross-attention output: the text can no longer matter
        for name, module in pipe.unet.named_modules():
            if name.endswith("attn2.to_out.0"):
                module.weight.zero_()
                module.bias.zero_()
    rows = probe_system(spec, groups, timesteps=(300, 700), pipe=pipe)
    for r in rows:
        assert r.gain == 0.0 and r.gain_ci == (0.0, 0.0) and r.reads == 0.0
        assert r.loss["true"] == r.loss["other"] == r.loss["empty"]


def test_bad_requests_are_refused_with_a_reason(models, capsys):
    assert main(["--system", f"x={models['ip2p']}", "--per-category", "1"]) == 2
    assert "at least 2" in capsys.readouterr().err
    assert main(["--system", f"x={models['ip2p']}", "--benchmark", "nope:x"]) == 2
    assert "error:" in capsys.readouterr().err
    with pytest.raises(ValueError, match="fewer than 2 items"):
        group_items(load_benchmark(BENCH).items[:8], 5)
