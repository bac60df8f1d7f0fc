"""What ``python -m train.evaluate`` compares and on what: system specs and sweeps, benchmark
loaders (Real-Edit, folders, generated Shapes-Edit) and the reference metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests._evaluate_helpers import (
    FakeJudge,
    _config,
    build_tiny_clip,
    make_folder_benchmark,
    tiny_pipelines,
)
from train.evaluate.benchmark_items import (
    BenchmarkError,
    FolderColumns,
    load_folder,
    load_real_edit,
    parse_real_edit_entry,
)
from train.evaluate.benchmarks import load_benchmark
from train.evaluate.cli import run_evaluation
from train.evaluate.image_metrics import (
    ClipConfig,
    ClipScorer,
    MetricInput,
    compute_metrics,
    l1_distance,
    psnr,
)
from train.evaluate.systems import expand_sweep, item_seed, parse_rewards, parse_sweep, parse_system

# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    return tiny_pipelines(tmp_path_factory)


# -- systems -------------------------------------------------------------------------------------


def test_unset_guidance_is_the_folders_recorded_default(models, tmp_path):
    import shutil

    assert (parse_system(f"m={models['mrc']}").guidance_scale,
            parse_system(f"m={models['mrc']}").image_guidance_scale) == (7.5, 1.5)  # fmt: skip
    folder = tmp_path / "tuned"
    shutil.copytree(models["mrc"], folder)
    index = json.loads((folder / "model_index.json").read_text())
    index.update(default_guidance_scale=2.0, default_image_guidance_scale=1.25)
    (folder / "model_index.json").write_text(json.dumps(index))
    s = parse_system(f"t={folder}")
    assert (s.guidance_scale, s.image_guidance_scale) == (2.0, 1.25)
    assert parse_system(f"t={folder},guidance=4").guidance_scale == 4.0  # the system's own wins
    cli = {"guidance_scale": None, "image_guidance_scale": 1.5}  # --image-guidance 1.5 only
    s = parse_system(f"t={folder}", cli)
    assert (s.guidance_scale, s.image_guidance_scale) == (2.0, 1.5)
    assert s.fingerprint("d") != parse_system(f"t={folder},guidance=7.5", cli).fingerprint("d")


def test_system_parsing_and_sweeps(models):
    s = parse_system(f"m={models['mrc']},rewards=5/3/1,steps=7,reward_guidance=2,reward_text=a;b;c")
    assert (s.kind, s.rewards, s.num_inference_steps) == ("mrc", (5.0, 3.0, 1.0), 7)
    assert s.reward_guidance_scale == 2.0 and s.reward_text == ("a", "b", "c")
    assert parse_system(f"b={models['ip2p']}").kind == "ip2p"
    assert parse_rewards("3") == (3.0, 3.0, 3.0)
    assert parse_sweep("0,3,5,0") == [(0, 0, 0), (3, 3, 3), (5, 5, 5)]
    assert parse_sweep("5/5/0, 0/0/0") == [(5, 5, 0), (0, 0, 0)]
    variants = expand_sweep([s, parse_system(f"b={models['ip2p']}")], parse_sweep("0,5"))
    assert [v.name for v in variants] == ["m", "m@0/0/0", "m@5/5/5", "b"]
    assert {v.group for v in variants[:3]} == {"m"}
    a, b = s.fingerprint("d1"), s.fingerprint("d2")
    assert a != b and a == s.fingerprint("d1")
    assert item_seed(0, "x") == item_seed(0, "x") != item_seed(1, "x")
    for bad, msg in [
        ("m", "NAME=PATH"),
        (f"m={models['mrc']},colour=red", "unknown option"),
        (f"m={models['mrc']},rewards=6/5/5", "outside"),
        ("m=/no/such/folder", "not a local pipeline"),
    ]:
        with pytest.raises(ValueError, match=msg):
            parse_system(bad)


# -- benchmarks ----------------------------------------------------------------------------------


def test_real_edit_release_layout(tmp_path):
    root = tmp_path / "real"
    (root / "Real-Edit").mkdir(parents=True)
    Image.new("RGB", (40, 30), "white").save(root / "Real-Edit" / "1.jpg")
    Image.new("RGB", (40, 30), "black").save(root / "Real-Edit" / "2.jpg")
    entries = ["Local: make the car red", "Remove: remove the dog", "Add: add a hat",
               "Texture: make it wooden", "Background: a beach", "Global: make it night",
               "Style: as a watercolor"]  # fmt: skip
    doc = {"1.jpg": entries, "2.jpg": [e.split(": ")[1] for e in entries]}
    (root / "real_edit_instruct.json").write_text(json.dumps(doc))
    b = load_real_edit(root)
    assert len(b) == 14 and b.items[0].item_id == "1/0" and b.items[0].category == "local"
    assert b.items[6].instruction == "as a watercolor" and b.items[6].category == "style"
    assert b.items[7].category is None and any("name no category" in n for n in b.notes)
    assert any("the paper's Real-Edit has 80" in n for n in b.notes)
    p = load_real_edit(root, category_by_position=True)
    assert [i.category for i in p.items[7:]] == [e.split(":")[0].lower() for e in entries]
    assert load_benchmark(f"real-edit:{root}").name == "real-edit"
    assert parse_real_edit_entry("3. Background editing: sky", "x") == ("background", "sky")
    assert parse_real_edit_entry({"category": "Style", "instruction": "oil"}, "x") == (
        "style",
        "oil",
    )
    doc["3.jpg"] = ["Local: x"]
    (root / "real_edit_instruct.json").write_text(json.dumps(doc))
    with pytest.raises(BenchmarkError, match="3.jpg.*not found"):
        load_real_edit(root)
    with pytest.raises(BenchmarkError, match="neither a folder nor a hub id"):
        load_real_edit(tmp_path / "missing folder")


def test_folder_layout_errors_name_the_row(tmp_path):
    root = make_folder_benchmark(tmp_path / "b", n=2, fail=())
    b = load_folder(root)
    assert [i.item_id for i in b.items] == ["item0", "item1"] and b.has_targets
    assert b.select(per_category=1, categories=["local"]).items[0].item_id == "item0"
    with pytest.raises(BenchmarkError, match="no category"):
        b.select(categories=["style"])
    rows = [{"picture": "in0.png", "instruction": "x"}]
    (root / "metadata.jsonl").write_text(json.dumps(rows[0]))
    with pytest.raises(BenchmarkError, match="needs a image column"):
        load_folder(root)
    assert load_folder(root, FolderColumns(image="picture")).items[0].instruction == "x"
    (root / "metadata.jsonl").write_text(json.dumps({"file_name": "nope.png", "instruction": "x"}))
    with pytest.raises(BenchmarkError, match="row 1.*does not exist"):
        load_folder(root)
    (root / "metadata.jsonl").write_text("{broken")
    with pytest.raises(BenchmarkError, match="line 1 is not valid JSON"):
        load_folder(root)
    with pytest.raises(BenchmarkError, match="unknown benchmark"):
        load_benchmark("imagenet")


# -- reference metrics ---------------------------------------------------------------------------


def test_pixel_metrics_closed_form():
    a = Image.new("RGB", (8, 8), (0, 0, 0))
    b = Image.new("RGB", (8, 8), (51, 51, 51))  # 0.2 on [0, 1]
    assert l1_distance(a, b) == pytest.approx(0.2)
    assert psnr(a, b) == pytest.approx(10 * np.log10(1 / 0.04))
    assert psnr(a, a) == 100.0
    assert l1_distance(Image.new("RGB", (16, 16), (51, 51, 51)), b) == pytest.approx(0.0)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("clip"), max_positions=32)


def test_clip_metrics_on_a_tiny_random_clip(tiny_clip):
    clip = ClipScorer(ClipConfig(str(tiny_clip), batch_size=2))
    rng = np.random.default_rng(1)
    imgs = [Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(5)]
    same = clip.clip_i(imgs, imgs)
    assert np.allclose(same, 1.0, atol=1e-5)
    cross = clip.clip_i(imgs, imgs[::-1])
    assert cross[2] == pytest.approx(1.0, abs=1e-5) and cross[0] < 0.9999
    t = clip.clip_t(imgs, ["a red square"] * 4 + ["a very long text " * 20])  # truncated, no error
    assert t.shape == (5,) and np.all(np.abs(t) <= 1 + 1e-6)
    # batched metrics equal one-by-one metrics, and only what applies is reported
    inputs = [MetricInput(imgs[i], imgs[i + 1], "make it blue", imgs[0] if i else None,
                          "a blue square" if i else None) for i in range(3)]  # fmt: skip
    rows = compute_metrics(inputs, clip)
    assert "clip_i" not in rows[0] and "clip_t" not in rows[0] and "clip_i_input" in rows[0]
    assert rows[1]["clip_i"] == pytest.approx(float(clip.clip_i([imgs[1]], [imgs[0]])[0]), abs=1e-6)
    assert rows[2]["clip_t"] == pytest.approx(
        float(clip.clip_t([imgs[2]], ["a blue square"])[0]), abs=1e-6
    )
    with pytest.raises(OSError, match="has no config.json"):
        ClipScorer(ClipConfig(str(tiny_clip.parent)))


def test_run_with_clip_reports_table2_metrics(tmp_path, models, tiny_clip):
    bench = make_folder_benchmark(tmp_path / "bench", n=3, fail=())
    cfg = _config(bench, models, tmp_path / "out", sweep=None, clip=str(tiny_clip))
    run_evaluation(cfg, judge=FakeJudge())
    m = pd.read_csv(tmp_path / "out" / "report" / "metrics.csv")
    assert {"clip_i", "clip_i_input", "clip_t_instruction", "l1", "psnr"} <= set(m["metric"])
    assert "CLIP-I (output vs target)" in (tmp_path / "out" / "report" / "report.md").read_text()


def test_generated_shapes_equal_the_synth_folder(tmp_path):
    from data.shapes import SynthConfig, synthesize

    synthesize(tmp_path / "s", SynthConfig(train=0, bench=2, size=32), workers=1, progress=False)
    folder = load_benchmark(f"shapes:{tmp_path / 's'}")
    generated = load_benchmark("shapes?size=32&scenes=2")
    assert len(folder) == len(generated) == 14
    for a, b in zip(folder.items, generated.items):
        assert (a.item_id, a.instruction, a.category) == (b.item_id, b.instruction, b.category)
        assert a.context == b.context
        assert np.array_equal(np.asarray(a.load_image()), np.asarray(b.load_image()))
        assert np.array_equal(np.asarray(a.load_target()), np.asarray(b.load_target()))
    with pytest.raises(BenchmarkError, match="unknown Shapes option"):
        load_benchmark("shapes?colour=red")
