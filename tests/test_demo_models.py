"""The shipped Shapes demo models (docs/demo_models): they load as documented, stay small, were
trained with the shipped configs, and still give the numbers docs/results.md reports.

The reference is ``docs/results/verdicts.csv``, the oracle's verdict on every output of the
documented evaluation run (docs/results.md, "Reproduce"). This test regenerates the first item of
each category with the same settings and compares.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from core.pipeline import MRCInstructPix2PixPipeline

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "docs" / "demo_models"
RESULTS = ROOT / "docs" / "results"


def folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


@pytest.mark.parametrize("name,stage", [("shapes_baseline", 1), ("shapes_mrc", 2)])
def test_demo_model_folders_load_and_match_their_configs(name, stage):
    folder = MODELS / name
    assert folder_mb(folder) < 20, "the issue asks for demo models under ~20 MB each"
    trained = yaml.safe_load((folder / "training_config.yaml").read_text())
    shipped = yaml.safe_load((ROOT / "train" / "configs" / f"{name}.yaml").read_text())
    assert trained["stage"] == stage
    for key, value in shipped.items():  # made by exactly the shipped config
        if key != "output_dir":  # a local path: it names the run, it does not change it
            assert trained[key] == value, key
    stage1 = yaml.safe_load((ROOT / "train" / "configs" / "shapes_stage1.yaml").read_text())
    assert trained["model"] == f"{stage1['output_dir']}/pipeline"  # both from the same stage 1
    pipe = MRCInstructPix2PixPipeline.from_pretrained(folder)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.unet.config.in_channels == 6 and pipe.unet.config.sample_size == 32
    index = json.loads((folder / "model_index.json").read_text())
    assert ("reward_module" in index) == (stage == 2)


def test_demo_models_reproduce_the_documented_verdicts(tmp_path):
    from train.evaluate.cli import main

    out = tmp_path / "eval"
    argv = ["--benchmark", "shapes?size=32", "--per-category", "1",
            "--system", f"baseline={MODELS / 'shapes_baseline'}",
            "--system", f"mrc={MODELS / 'shapes_mrc'}",
            "--judge", "oracle", "--bootstrap", "200", "--no-progress", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    got = pd.read_csv(out / "report" / "verdicts.csv")
    ref = pd.read_csv(RESULTS / "verdicts.csv")
    keys = ["system", "item_id", "perspective"]
    both = got.merge(ref, on=keys, suffixes=("", "_doc"))
    assert len(both) == len(got) == 2 * 7 * 3, "every regenerated output has a documented verdict"
    assert (both["status"] == "ok").all()
    for (system, perspective), g in both.groupby(["system", "perspective"]):
        # Same torch, seeds and settings: the outputs match up to float rounding across CPUs,
        # which can move an oracle measure across a threshold on an odd item, never on most.
        agree = (g["passed"] == g["passed_doc"]).sum()
        assert agree >= 6, f"{system} {perspective}: {agree}/7 verdicts as documented"
        assert abs(g["score"].mean() - g["score_doc"].mean()) <= 0.5, (system, perspective)


# -- the sliders steer (issue: "the method, visible") -----------------------------------------


@pytest.fixture(scope="module")
def steering_outputs():
    """MRC outputs of four Shapes-Edit items at 5/5/5 and 0/5/5 (empty failure texts)."""
    from train.evaluate.benchmarks import load_benchmark

    pipe = MRCInstructPix2PixPipeline.from_pretrained(MODELS / "shapes_mrc")
    # Whole-image edits, which the shipped models carry out (object-level ones they do not yet,
    # docs/results.md): there the slider's effect is an edit made or not made.
    bench = load_benchmark("shapes?size=32").items
    items = [it for c in ("background", "global") for it in bench if it.category == c][::40][:4]
    out = {}
    for rewards in ((5, 5, 5), (0, 5, 5)):
        imgs = []
        for k, item in enumerate(items):
            g = torch.Generator().manual_seed(k)
            res = pipe(item.instruction, item.load_image(), rewards=rewards, generator=g,
                       num_inference_steps=20, output_type="np")  # fmt: skip
            imgs.append((np.asarray(res.images[0]) * 255).round().astype(np.uint8))
        out[rewards] = imgs
    inputs = [np.asarray(it.load_image().convert("RGB")) for it in items]
    return inputs, out


def test_following_zero_moves_the_output_towards_the_input(steering_outputs):
    inputs, out = steering_outputs
    src = np.stack(inputs).astype(float)
    at5, at0 = (np.stack(out[r]).astype(float) for r in ((5, 5, 5), (0, 5, 5)))
    assert np.abs(at0 - at5).mean() > 10  # visibly changed (the first demo models: 0.7-3.4)
    assert np.abs(at0 - src).mean() < 0.85 * np.abs(at5 - src).mean()  # towards a copy


def test_preserving_zero_changes_more_of_the_scene():
    """Object-level items (the edit touches one object, the rest should stay): asking for
    preserving 0 moves the output further from the input than 5/5/5 does (the 2,400-step model:
    11.5 vs 10.0 / 255, x1.15); on 280 items the shipped model's slider costs 21.1 points of
    preserving accuracy (docs/results.md, Table 6)."""
    from train.evaluate.benchmarks import load_benchmark

    pipe = MRCInstructPix2PixPipeline.from_pretrained(MODELS / "shapes_mrc")
    pipe.set_progress_bar_config(disable=True)
    bench = load_benchmark("shapes?size=32").items
    cats = ("local", "remove", "add", "texture", "style")
    items = [it for c in cats for it in bench if it.category == c][::40][:6]
    src = np.stack([np.asarray(it.load_image().convert("RGB"), dtype=float) for it in items])
    moved = {}
    for rewards in ((5, 5, 5), (5, 0, 5)):
        outs = [
            pipe(it.instruction, it.load_image(), rewards=rewards, num_inference_steps=20,
                 generator=torch.Generator().manual_seed(k), output_type="np").images[0] * 255
            for k, it in enumerate(items)
        ]  # fmt: skip
        moved[rewards] = np.abs(np.stack(outs) - src).mean()
    assert moved[(5, 0, 5)] > 1.08 * moved[(5, 5, 5)], moved


def test_quality_zero_costs_quality_at_reward_guidance_3():
    """The quality slider steers with reward guidance (docs/results.md, Table 6): at reward
    guidance 3, asking for quality 0 instead of 5 makes the oracle find more artifact area
    (colour noise and blends that belong to no colour of the scene) and lowers its quality
    score, 5 minus those costs and blur's. Measured on the shipped model on these eight items:
    score 3.54 -> 2.93, artifact area 0.46 -> 0.78 object areas. (At reward guidance 1 the
    slider costs 8.2 points of quality accuracy on 280 items, intervals overlapping by one.)"""
    from data.shapes.oracle import ShapesOracle
    from train.evaluate.benchmarks import load_benchmark

    pipe = MRCInstructPix2PixPipeline.from_pretrained(MODELS / "shapes_mrc")
    pipe.set_progress_bar_config(disable=True)
    oracle = ShapesOracle()
    bench = load_benchmark("shapes?size=32").items
    cats = ("add", "remove", "style", "background")
    items = [it for c in cats for it in bench if it.category == c][::40][:8]
    score, area = {}, {}
    for rewards in ((5, 5, 5), (5, 5, 0)):
        reports = [
            oracle.measure(it.load_image(), pipe(it.instruction, it.load_image(), rewards=rewards,
                           reward_guidance_scale=3.0, num_inference_steps=20,
                           generator=torch.Generator().manual_seed(k)).images[0], dict(it.context))
            for k, it in enumerate(items)
        ]  # fmt: skip
        score[rewards] = np.mean([r.rewards.scores[2] for r in reports])
        area[rewards] = np.mean([r.measures["noise"] + r.measures["blend"] for r in reports])
    assert score[(5, 5, 0)] <= score[(5, 5, 5)] - 0.3, score
    assert area[(5, 5, 0)] > 1.2 * area[(5, 5, 5)], area


def test_shipped_reward_model_prefers_the_target_edit_to_a_copy_and_a_wrong_edit():
    """docs/demo_models/shapes_reward_model: the ground-truth edit of a Shapes-Edit item scores
        higher on following than the unchanged input, and the target with a quality defect of the
    synthesiser (noise blotches, banding, blur) lower on quality than the clean target."""
    from core.reward_model import EditRewardModel
    from data.shapes.corrupt import CorruptionConfig, corrupt
    from data.shapes.oracle import ShapesOracle, parse_meta
    from data.shapes.scene import SceneConfig
    from train.evaluate.benchmarks import load_benchmark

    folder = MODELS / "shapes_reward_model"
    assert folder_mb(folder) < 5
    trained = yaml.safe_load((folder / "training_config.yaml").read_text())
    assert trained["text_encoder"] == "docs/demo_models/shapes_clip"
    model = EditRewardModel.from_pretrained(folder).eval()
    items = load_benchmark("shapes?size=32").items[::40][:14]
    originals = [np.asarray(it.load_image().convert("RGB")) for it in items]
    targets = [np.asarray(it.load_target().convert("RGB")) for it in items]
    noisy = []  # the target with one of the synthesiser's quality defects, drawn per item
    for k, it in enumerate(items):
        scene, edit = parse_meta(dict(it.context))
        kind = ("noise_blotches", "banding", "blur")[k % 3]
        forced = {"following": None, "preserving": None, "quality": kind}
        noisy.append(corrupt(scene, edit, np.random.default_rng(k), CorruptionConfig(),
                             SceneConfig(size=32), force=forced).edited)  # fmt: skip
    texts = [it.instruction for it in items]
    with torch.no_grad():
        on_target = model.predict(originals, texts, targets).mean
        on_copy = model.predict(originals, texts, originals).mean
        on_noisy = model.predict(originals, texts, noisy).mean
    assert (on_target[:, 0] > on_copy[:, 0] + 1).float().mean() >= 0.85
    # Quality: on the items where the oracle scores the defect at least a point lower, the
    # model ranks the clean target first (the pair accuracy, target >= 90 %).
    oracle = ShapesOracle()
    worse = [k for k, it in enumerate(items)
             if oracle.annotate(originals[k], texts[k], noisy[k], meta=dict(it.context)).quality.score
             <= oracle.annotate(originals[k], texts[k], targets[k], meta=dict(it.context)).quality.score - 1]  # fmt: skip
    assert len(worse) >= 7
    assert (on_target[worse, 2] > on_noisy[worse, 2]).float().mean() >= 0.85
