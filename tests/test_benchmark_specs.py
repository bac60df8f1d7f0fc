"""Every ``--benchmark`` spec of ``python -m train.evaluate`` loads and runs end to end.

A pre-made "copy" system (each output is the input image) keeps the runs model-free and fast;
Shapes benchmarks are judged by the real oracle, the others by a deterministic fake judge.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core.judges.base import Evaluation, Judge, JudgeResult, JudgeSpec, Verdict
from train.evaluate.benchmark_items import BenchmarkError
from train.evaluate.benchmarks import load_benchmark
from train.evaluate.cli import EvalConfig, run_evaluation
from train.evaluate.systems import safe_name


class HashJudge(Judge):
    """Deterministic verdicts from the edited image's bytes (benchmarks without ground truth)."""

    spec = JudgeSpec("fake", "hash-v1", "v1")

    async def _judge(self, task, item):
        h = hashlib.sha256(item.edited).digest()
        verdicts = [Verdict(h[k] % 2 == 0, (h[k] % 11) / 2) for k in range(3)]
        return JudgeResult(task, "ok", self.spec, evaluation=Evaluation(*verdicts))


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, str]:
    """One small source of every kind: a Shapes folder, a store holding it, Real-Edit, folder."""
    from data.shapes import SynthConfig, synthesize
    from data.shapes.to_store import load_into_store

    root = tmp_path_factory.mktemp("sources")
    synthesize(root / "shapes", SynthConfig(train=2, bench=1, size=32), workers=1, progress=False)
    load_into_store(root / "shapes", root / "studio.db", progress=False)
    real = root / "real"
    (real / "Real-Edit").mkdir(parents=True)
    Image.new("RGB", (40, 30), "white").save(real / "Real-Edit" / "1.jpg")
    doc = {"1.jpg": ["Local: make the cup red", "Style: as a watercolor", "Add: add a hat"]}
    (real / "real_edit_instruct.json").write_text(json.dumps(doc))
    folder = root / "folder"
    folder.mkdir()
    rows = []
    for i in range(3):
        Image.new("RGB", (32, 32), (40 * i, 0, 0)).save(folder / f"in{i}.png")
        rows.append({"file_name": f"in{i}.png", "instruction": f"make it blue {i}"})
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return {
        "shapes": "shapes?size=32&scenes=1",
        "shapes-dir": f"shapes:{root / 'shapes'}",
        "store": f"store:{root / 'studio.db'}?split=bench&source=shapes",
        "real-edit": f"real-edit:{real}",
        "folder": f"folder:{folder}",
    }


@pytest.mark.parametrize("kind", ["shapes", "shapes-dir", "store", "real-edit", "folder"])
def test_every_benchmark_spec_runs_end_to_end(tmp_path, sources, kind):
    spec = sources[kind]
    bench = load_benchmark(spec).select(limit=3)
    assert len(bench) == 3
    if kind == "shapes":  # the options of the spec reach the generator
        assert bench.items[0].load_image().size == (32, 32)
    copy = tmp_path / "copy"
    copy.mkdir()
    for item in bench.items:
        item.load_image().save(copy / f"{safe_name(item.item_id)}.png")
    oracle = kind in ("shapes", "shapes-dir", "store")
    cfg = EvalConfig(benchmark=spec, systems=(f"copy={copy}",), out=str(tmp_path / "out"),
                     limit=3, bootstrap=50, progress=False, gallery_items=3)  # fmt: skip
    info = run_evaluation(cfg, judge=None if oracle else HashJudge())
    assert info["systems"][0]["generated_now"] == 3
    assert info["judging"]["judge"]["ok"] == 3 and not info["judging"]["judge"]["failed"]
    t1 = pd.read_csv(tmp_path / "out" / "report" / "table1.csv").set_index("perspective")
    assert (t1["n_items"] == 3).all() and (t1["n_failed"] == 0).all()
    if oracle:  # a copy of the input preserves everything and follows nothing
        assert t1.loc["preserving", "score"] == 5.0 and t1.loc["following", "acc"] == 0.0
    again = run_evaluation(cfg, judge=None if oracle else HashJudge())
    assert again["judging"]["judge"]["planned"] == 0
    assert again["systems"][0]["generated_now"] == 0


def test_a_vlm_judge_on_a_store_selection_of_shapes_gets_the_oracle_agreement(tmp_path, sources):
    """``--truth auto`` looks at the items, not the benchmark's name: Shapes triplets selected
    from the store carry the ground truth, so a VLM judge is checked against the oracle."""
    copy = tmp_path / "copy"
    copy.mkdir()
    bench = load_benchmark(sources["store"]).select(limit=2)
    for item in bench.items:
        item.load_image().save(copy / f"{safe_name(item.item_id)}.png")
    cfg = EvalConfig(benchmark=sources["store"], systems=(f"copy={copy}",), limit=2,
                     out=str(tmp_path / "out"), bootstrap=50, progress=False)  # fmt: skip
    info = run_evaluation(cfg, judge=HashJudge())
    assert info["judging"]["truth"]["judge"]["kind"] == "shapes-oracle"
    assert info["judging"]["truth"]["ok"] == 2
    assert "Judge vs ground truth" in (tmp_path / "out" / "report" / "report.md").read_text()
    info = run_evaluation(replace(cfg, out=str(tmp_path / "o2"), truth="none"), judge=HashJudge())
    assert "truth" not in info["judging"]


def test_store_selection_equals_the_shapes_folder(sources):
    from_store = load_benchmark(sources["store"])
    from_folder = load_benchmark(sources["shapes-dir"])
    assert from_store.name == "store-bench-shapes" and len(from_store) == len(from_folder) == 7
    for a, b in zip(from_store.items, from_folder.items):
        assert (a.item_id, a.instruction, a.category) == (b.item_id, b.instruction, b.category)
        assert a.context == b.context
        assert np.array_equal(np.asarray(a.load_image()), np.asarray(b.load_image()))
        assert np.array_equal(np.asarray(a.load_target()), np.asarray(b.load_target()))
    train = load_benchmark(sources["store"].replace("split=bench", "split=train"))
    assert len(train) == 2 and all(i.context.get("scene") for i in train.items)


def test_store_spec_errors_are_sentences(tmp_path, sources):
    db = sources["store"].split("?")[0]
    with pytest.raises(BenchmarkError, match="must be split=..., source=... or category="):
        load_benchmark(f"{db}?colour=red")
    with pytest.raises(BenchmarkError, match="has no triplets with split='nope'"):
        load_benchmark(f"{db}?split=nope")
    with pytest.raises(BenchmarkError, match="does not exist"):
        load_benchmark(f"store:{tmp_path / 'missing.db'}")
    with pytest.raises(BenchmarkError, match="needs a source"):
        load_benchmark("real-edit:")
    with pytest.raises(BenchmarkError, match="needs a path"):
        load_benchmark("folder:")
