"""Captions on benchmark items, CLIP direction similarity, and the Table 2 report section."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from data.shapes.captions import captions_from_meta
from tests._evaluate_helpers import build_tiny_clip
from train.evaluate.benchmarks import load_benchmark
from train.evaluate.image_metrics import (
    PERCENT_METRICS,
    TABLE2_METRICS,
    ClipConfig,
    ClipScorer,
    MetricInput,
    compute_metrics,
    direction_similarity,
)

# -- captions on benchmark items ------------------------------------------------------------------


@pytest.fixture(scope="module")
def shapes_folder(tmp_path_factory) -> Path:
    from data.shapes import SynthConfig, synthesize

    root = tmp_path_factory.mktemp("shapes") / "s"
    synthesize(root, SynthConfig(train=0, bench=1, size=32), workers=1, progress=False)
    return root


def test_shapes_items_carry_captions_in_both_forms(shapes_folder):
    generated = load_benchmark("shapes?size=32&scenes=1")
    folder = load_benchmark(f"shapes:{shapes_folder}")
    assert len(generated) == len(folder) == 7
    for a, b in zip(generated.items, folder.items):
        source, target = captions_from_meta(a.context)
        assert (a.source_caption, a.target_caption) == (source, target)
        assert (b.source_caption, b.target_caption) == (source, target)
        assert source and target and source != target, a.item_id  # every edit changes the caption
    style = next(i for i in generated.items if i.category == "style")
    assert style.target_caption.endswith(style.source_caption)  # "a neon sign of <scene>"


def test_store_selection_of_shapes_triplets_gets_captions(shapes_folder, store):
    from data.shapes.to_store import add_shapes_folder

    add_shapes_folder(store, shapes_folder, progress=False)
    bench = load_benchmark(f"store:{store.path}?split=bench")
    assert len(bench) == 7
    for item in bench.items:
        assert (item.source_caption, item.target_caption) == captions_from_meta(item.context)


def test_folder_manifest_caption_columns(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "in.png")
    rows = [
        {"file_name": "in.png", "instruction": "make it red", "output_caption": "a red square",
         "input_caption": "a black square"},
        {"file_name": "in.png", "instruction": "make it blue", "source_caption": " "},
    ]  # fmt: skip
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    a, b = load_benchmark(f"folder:{tmp_path}").items
    assert (a.source_caption, a.target_caption) == ("a black square", "a red square")
    assert (b.source_caption, b.target_caption) == (None, None)  # blank cells are no caption


# -- CLIP direction similarity --------------------------------------------------------------------

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


class StubClip:
    """Fixed, L2-normalised embeddings: an image by its (solid) colour, a text by its words."""

    IMAGES = {RED: (1.0, 0.0, 0.0), GREEN: (0.0, 1.0, 0.0), BLUE: (0.0, 0.0, 1.0)}
    TEXTS = {
        "a red square": (1.0, 0.0, 0.0),
        "a green square": (0.0, 0.6, 0.8),
        "make it green": (0.0, 1.0, 0.0),
    }

    def image_embeddings(self, images):
        vectors = [self.IMAGES[im.convert("RGB").getpixel((0, 0))] for im in images]
        return torch.tensor(vectors, dtype=torch.float64)  # exact, for the hand computation

    def text_embeddings(self, texts):
        return torch.tensor([self.TEXTS[t] for t in texts], dtype=torch.float64)


def _solid(colour) -> Image.Image:
    return Image.new("RGB", (4, 4), colour)


def test_direction_similarity_matches_a_hand_computation():
    red, green, blue = _solid(RED), _solid(GREEN), _solid(BLUE)
    caps = dict(target_caption="a green square", source_caption="a red square")
    inputs = [
        MetricInput(green, red, "make it green", green, **caps),  # the ground truth as output
        MetricInput(red, red, "make it green", green, **caps),  # a copy of the input
        MetricInput(blue, red, "make it green", green, **caps),  # a wrong edit
        MetricInput(green, red, "make it green", green, "a green square"),  # no source caption
        MetricInput(green, red, "make it green", green, "a red square", "a red square"),
    ]
    rows = compute_metrics(inputs, StubClip())
    # image change (-1, 1, 0), caption change (-1, 0.6, 0.8): dot 1.6, norms sqrt(2) * sqrt(2)
    assert rows[0]["clip_direction"] == pytest.approx(0.8, abs=1e-12)
    assert rows[0]["clip_t"] == pytest.approx(0.6) and rows[0]["clip_i"] == pytest.approx(1.0)
    assert rows[1]["clip_direction"] == 0.0  # no change has no direction: 0, never NaN
    # image change (-1, 0, 1): dot 1 + 0.8 = 1.8 over 2 = 0.9
    assert rows[2]["clip_direction"] == pytest.approx(0.9, abs=1e-12)
    assert "clip_direction" not in rows[3] and "clip_t" in rows[3]
    assert rows[4]["clip_direction"] == 0.0  # equal captions: no text direction
    assert rows[0]["clip_direction"] > rows[1]["clip_direction"]  # ground truth beats a copy
    assert all(np.isfinite(r["clip_direction"]) for r in rows if "clip_direction" in r)
    # the formula on its own, batched, with torch tensors or arrays alike
    d = direction_similarity(
        torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]),
        np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]),
        np.array([[0.0, 0.6, 0.8]] * 2),
        np.array([[1.0, 0.0, 0.0]] * 2),
    )
    assert d.dtype == np.float64 and d.tolist() == pytest.approx([0.8, 0.0])
    assert "clip_direction" in PERCENT_METRICS
    assert TABLE2_METRICS == ("l1", "clip_i", "clip_t", "clip_direction")


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    """A randomly initialised CLIP with a letter-level tokenizer (32 px images), as ClipScorer
    loads it from a folder."""
    return build_tiny_clip(tmp_path_factory.mktemp("clip"), max_positions=128)


def test_direction_with_a_real_clip_on_shapes_items(tiny_clip):
    clip = ClipScorer(ClipConfig(str(tiny_clip), batch_size=3))
    items = load_benchmark("shapes?size=32&scenes=1").items
    src = [i.load_image() for i in items]
    tgt = [i.load_target() for i in items]
    inputs = [
        MetricInput(out, s, i.instruction, t, i.target_caption, i.source_caption)
        for i, s, t in zip(items, src, tgt)
        for out in (t, s)  # the ground truth, then a copy of the input
    ]
    rows = compute_metrics(inputs, clip)
    truth, copy = rows[0::2], rows[1::2]
    assert all(r["clip_direction"] == 0.0 for r in copy)  # output == input: defined, not NaN
    values = np.array([r["clip_direction"] for r in truth])
    assert np.isfinite(values).all() and (np.abs(values) <= 1 + 1e-9).all()
    direct = clip.clip_direction(
        tgt, src, [i.target_caption for i in items], [i.source_caption for i in items]
    )
    assert direct == pytest.approx(values, abs=1e-5)  # batched = one pass, embeddings reused
    with pytest.raises(ValueError, match="must pair up"):
        clip.clip_direction(tgt, src[:1], ["a"], ["b"])


# -- the metrics stage and the report -------------------------------------------------------------


def _fake_run(items, outputs: dict[str, Path]):
    """What compute_run_metrics reads of a BenchmarkRun: one system whose outputs are files."""
    return SimpleNamespace(
        states={"sys": SimpleNamespace(outputs={k: {"image": f"h-{k}"} for k in outputs})},
        triplet_of={i.item_id: f"t-{i.item_id}" for i in items},
        items={i.item_id: i for i in items},
        store=SimpleNamespace(image_path=lambda h: outputs[h[2:]]),
    )


def test_metrics_stage_passes_captions_and_keys_its_cache_on_them(tmp_path, tiny_clip, monkeypatch):
    import train.evaluate.metrics_stage as stage

    items = load_benchmark("shapes?size=32&scenes=1").select(limit=2).items
    outputs = {}
    for i in items:
        outputs[i.item_id] = tmp_path / f"{i.item_id}.png"
        i.load_target().save(outputs[i.item_id])
    calls = []
    real = stage.compute_metrics
    monkeypatch.setattr(
        stage, "compute_metrics", lambda xs, c: calls.append(len(xs)) or real(xs, c)
    )
    cache = tmp_path / "cache.json"
    legacy = {f"h-{i.item_id}|t-{i.item_id}|{tiny_clip}": {"l1": 9.0} for i in items}
    cache.write_text(json.dumps(legacy))  # the pre-caption key format: must not be reused

    first = stage.compute_run_metrics(_fake_run(items, outputs), cache, str(tiny_clip))
    assert calls == [2] and (first["l1"] == 0.0).all()
    assert {"clip_direction", "clip_t", "clip_i"} <= set(first.columns)
    assert not first[["clip_direction", "clip_t"]].isna().any().any()
    assert all(k.startswith("v2|") for k in json.loads(cache.read_text()))

    again = stage.compute_run_metrics(_fake_run(items, outputs), cache, str(tiny_clip))
    assert calls == [2]  # all cached
    pd.testing.assert_frame_equal(first, again)

    recaptioned = [replace(items[0], source_caption=items[0].target_caption), items[1]]
    third = stage.compute_run_metrics(_fake_run(recaptioned, outputs), cache, str(tiny_clip))
    assert calls == [2, 1]  # only the item whose caption changed is measured again
    before = first.set_index("item_id")["clip_direction"]
    after = third.set_index("item_id")["clip_direction"]
    assert after[items[0].item_id] == 0.0  # equal captions: no direction
    assert after[items[1].item_id] == before[items[1].item_id]


def test_evaluation_writes_table2_on_shapes(tmp_path, tiny_clip):
    """`python -m train.evaluate --clip` on Shapes-Edit: the ground truth as a system and a copy
    of the input, through generation (folder systems), the metrics stage and the report."""
    from train.evaluate.cli import main
    from train.evaluate.systems import safe_name

    bench = load_benchmark("shapes?size=32&scenes=1")
    gt, copy = tmp_path / "gt", tmp_path / "copy"
    gt.mkdir()
    copy.mkdir()
    for item in bench.items:
        item.load_target().save(gt / f"{safe_name(item.item_id)}.png")
        item.load_image().save(copy / f"{safe_name(item.item_id)}.png")
    out = tmp_path / "out"
    argv = ["--benchmark", "shapes?size=32&scenes=1", "--system", f"truth={gt}",
            "--system", f"copy={copy}", "--judge", "oracle", "--clip", str(tiny_clip),
            "--bootstrap", "200", "--no-progress", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    t2 = pd.read_csv(out / "report" / "table2.csv").set_index("system")
    assert list(t2.index) == ["truth", "copy"]
    assert {f"{m}{k}" for m in TABLE2_METRICS for k in ("", "_low", "_high", "_n")} <= set(
        t2.columns
    )
    assert (t2[[f"{m}_n" for m in TABLE2_METRICS]] == 7).all().all()
    assert t2.loc["truth", "l1"] == 0.0 and t2.loc["truth", "clip_i"] == pytest.approx(1.0)
    assert t2.loc["copy", "clip_direction"] == 0.0 and t2.loc["copy", "l1"] > 0
    assert np.isfinite(t2.loc["truth", "clip_direction"])
    m = pd.read_csv(out / "report" / "metrics.csv")
    assert "clip_direction" in set(m["metric"])
    md = (out / "report" / "report.md").read_text()
    assert "## Table 2: L1, CLIP-I, CLIP-T and CLIP direction" in md
    assert "CLIP direction ↑" in md and "n/a" not in md.split("## Table 2")[1].split("###")[0]
