"""The trainer's data: bad-data policy (stop / skip, reported with id and reason) and the
Hugging Face, store and Shapes sources, plus the shipped configs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests._train_helpers import ROOT, make_rewardedit, settings
from train.config import TrainConfig
from train.datasets import BadDataError, BadDataLog, scan
from train.loop import train
from train.sources import load_source


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rewardedit")
    make_rewardedit(root, 16)
    return root


# -- bad data ---------------------------------------------------------------------------------------


@pytest.fixture()
def bad_data(tmp_path) -> Path:
    root = tmp_path / "bad"
    labels_path = make_rewardedit(root, 12)
    (root / "0000" / "1_1.png").unlink()  # missing image
    good = (root / "0000" / "2_0.png").read_bytes()
    (root / "0000" / "2_0.png").write_bytes(good[: len(good) // 2])  # truncated: corrupt
    labels = json.loads(labels_path.read_text())
    labels["0000/3"][1]["Score"] = 7  # label out of range
    labels_path.write_text(json.dumps(labels))
    return root


def test_bad_data_stop_names_the_example_and_reason(bad_data, tmp_path):
    cfg = TrainConfig.from_dict(settings(bad_data, tmp_path / "run", on_bad_data="stop"))
    with pytest.raises(
        BadDataError,
        match=r"'0000/3' \(label out of range or malformed\).*must be in \[0, 5\], got 7",
    ):
        train(cfg)
    assert not (tmp_path / "run" / "pipeline").exists()
    # Image problems stop the scan with the example's id and the decoder's reason.
    examples = load_source(cfg).examples
    with pytest.raises(BadDataError, match=r"'0000/1' \(missing image\).*1_1.png does not exist"):
        list(scan(examples, BadDataLog("stop"), 32, progress=False))
    with pytest.raises(BadDataError, match=r"'0000/2' \(corrupt image\)"):
        list(
            scan([e for e in examples if e.id != "0000/1"], BadDataLog("stop"), 32, progress=False)
        )


def test_bad_data_skip_reports_counts_and_trains_on_the_rest(bad_data, tmp_path):
    out = tmp_path / "run"
    for cache in (True, False):  # the cache's second read must report the same items
        for _ in range(2 if cache else 1):
            train(
                TrainConfig.from_dict(
                    settings(bad_data, out, on_bad_data="skip", max_train_steps=1, cache=cache)
                )
            )
            bad = [json.loads(line) for line in (out / "bad_data.jsonl").read_text().splitlines()]
            assert {(b["id"], b["kind"]) for b in bad} == {
                ("0000/1", "missing_image"), ("0000/2", "corrupt_image"), ("0000/3", "bad_label")
            }  # fmt: skip
            assert all(b["reason"] for b in bad)
            report = json.loads((out / "data_report.json").read_text())
            assert report["used"] == 9 and report["bad"] == 3
            assert report["bad_by_kind"] == {"bad_label": 1, "missing_image": 1, "corrupt_image": 1}


# -- other sources ---------------------------------------------------------------------------------


def test_hf_dataset_source_with_column_flags_and_joined_rewards(data, tmp_path):
    import datasets

    rows = {"src": [], "instr": [], "dst": [], "tid": []}
    for i in range(6):
        d = data / f"{i // 4:04d}"
        rows["src"].append(Image.open(d / f"{i}_0.png"))
        rows["dst"].append(Image.open(d / f"{i}_1.png"))
        rows["instr"].append(json.loads((d / f"prompt_{i}.json").read_text())["edit"])
        rows["tid"].append(f"{d.name}/{i}")
    features = datasets.Features(
        src=datasets.Image(),
        instr=datasets.Value("string"),
        dst=datasets.Image(),
        tid=datasets.Value("string"),
    )
    folder = tmp_path / "hf"
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(folder))
    base = dict(data="hf", data_dir=str(folder), rewards_json=str(data / "labels.json"),
                original_image_column="src", edit_prompt_column="instr", edited_image_column="dst")  # fmt: skip
    cfg = TrainConfig.from_dict({**base, "id_column": "tid"})
    src = load_source(cfg)
    assert [e.id for e in src.examples] == rows["tid"]
    assert all(
        e.rewards is not None and e.provenance["origin"] == "rewardedit" for e in src.examples
    )
    assert np.array_equal(np.asarray(src.examples[5].edited.load()), np.asarray(rows["dst"][5]))
    with pytest.raises(ValueError, match=r"no column\(s\) \['edit_prompt'\].*'instr'"):
        load_source(TrainConfig.from_dict({**base, "edit_prompt_column": "edit_prompt"}))
    out = tmp_path / "run"
    train(TrainConfig.from_dict({**base, "id_column": "tid", "stage": 2, "train_batch_size": 2,
                                 "max_train_steps": 1, "report_to": "none", "output_dir": str(out)}))  # fmt: skip
    assert json.loads((out / "data_report.json").read_text())["used"] == 6


def test_store_source_human_correction_wins_and_provenance_is_recorded(data, tmp_path):
    from core.rewards import Rewards
    from core.store import Store

    store = Store(tmp_path / "studio.db")
    ids = []
    for i in range(4):
        d = data / f"{i // 4:04d}"
        instr = json.loads((d / f"prompt_{i}.json").read_text())["edit"]
        ids.append(store.add_triplet(d / f"{i}_0.png", d / f"{i}_1.png", instr, split="train"))
    judge = Rewards.from_scores((2, 3, 4), ("the square kept its colour", "", ""))
    for tid in ids:
        ann = store.add_annotation(
            tid, kind="judge", rewards=judge, judge_model="gpt-4o", prompt_version="v1"
        )
        store.set_label_from_annotation(ann)
    fixed = Rewards.from_scores((5, 5, 5))
    store.update_label(ids[0], fixed, user="alice", expected_version=1)
    store.update_label(ids[1], None, user="bob", expected_version=1, status="rejected")

    out = tmp_path / "run"
    cfg = TrainConfig.from_dict(dict(data="store", data_dir=str(store.path), stage=2, train_batch_size=3,
                                     max_train_steps=1, report_to="none", output_dir=str(out)))  # fmt: skip
    src = load_source(cfg)
    by_id = {e.id: e for e in src.examples}
    assert ids[1] not in by_id and src.info["rejected_left_out"] == 1
    assert by_id[ids[0]].rewards == fixed and by_id[ids[0]].provenance["origin"] == "human"
    assert by_id[ids[0]].provenance["reviewed_by"] == "alice"
    assert by_id[ids[2]].rewards == judge and by_id[ids[2]].provenance["judge_model"] == "gpt-4o"
    train(cfg)
    prov = {
        p["id"]: p for p in map(json.loads, (out / "provenance.jsonl").read_text().splitlines())
    }
    assert prov[ids[0]]["origin"] == "human" and prov[ids[3]]["origin"] == "judge"
    report = json.loads((out / "data_report.json").read_text())
    assert report["label_origins"] == {"human": 1, "judge:gpt-4o@v1": 2}


def test_shapes_source_and_bad_manifest_lines(tmp_path):
    from data.shapes.synth import SynthConfig, synthesize

    folder = tmp_path / "shapes"
    synthesize(folder, SynthConfig(train=12, bench=1, seed=1, size=32), workers=1, progress=False)
    cfg = TrainConfig.from_dict(dict(data="shapes", data_dir=str(folder), stage=2, train_batch_size=4,
                                     max_train_steps=1, report_to="none", output_dir=str(tmp_path / "run")))  # fmt: skip
    src = load_source(cfg)
    assert len(src.examples) == 12 and not src.bad
    assert all(e.rewards is not None and e.provenance == {"origin": "oracle"} for e in src.examples)
    train(cfg)
    assert json.loads((tmp_path / "run" / "data_report.json").read_text())["label_origins"] == {
        "oracle": 12
    }
    # One label out of range in the manifest: 'stop' names the line, 'skip' keeps the other 11.
    manifest = folder / "train" / "manifest.jsonl"
    lines = manifest.read_text().splitlines()
    rec = json.loads(lines[4])
    rec["rewards"]["quality"]["score"] = 9
    lines[4] = json.dumps(rec)
    manifest.write_text("\n".join(lines) + "\n")
    with pytest.raises(BadDataError, match="manifest.jsonl:5"):
        load_source(cfg)
    src = load_source(cfg.replace(on_bad_data="skip"))
    assert len(src.examples) == 11
    assert [(b.id, b.kind) for b in src.bad] == [(rec["id"], "bad_label")]
    assert "must be in [0, 5], got 9" in src.bad[0].reason


PLANS = {"filter_or_condition.yaml"}  # plans of python -m train.filter_or_condition, not runs


@pytest.mark.parametrize(
    "name",
    sorted(p.name for p in (ROOT / "train" / "configs").glob("*.yaml") if p.name not in PLANS),
)
def test_shipped_configs_are_valid(name):
    cfg = TrainConfig.load(ROOT / "train" / "configs" / name)
    if name in ("shapes_baseline.yaml", "shapes_mrc.yaml"):
        other = TrainConfig.load(
            ROOT
            / "train"
            / "configs"
            / ("shapes_mrc.yaml" if cfg.stage == 1 else "shapes_baseline.yaml")
        )
        # Baseline and MRC differ only in what makes them baseline and MRC: same start, data,
        # seed, batches and steps (Table 4's protocol).
        same = {
            "stage",
            "output_dir",
            "trainable",
            "reward_dropout_prob",
            "reward_text_dropout_prob",
        }
        diff = {k for k, v in cfg.to_dict().items() if other.to_dict()[k] != v}
        assert diff <= same, diff
        stage1 = TrainConfig.load(ROOT / "train" / "configs" / "shapes_stage1.yaml")
        assert cfg.model == f"{stage1.output_dir}/pipeline"  # both start from stage 1
        assert cfg.prediction_type == stage1.prediction_type
        assert cfg.beta_schedule == stage1.beta_schedule


def test_shipped_filter_or_condition_plan_gives_valid_arm_configs():
    from train.filter_or_condition import Plan

    plan = Plan.load(ROOT / "train" / "configs" / "filter_or_condition.yaml")
    base = TrainConfig.load(ROOT / "train" / "configs" / "shapes_baseline.yaml")
    for level in plan.noise:
        for arm in plan.arms:
            cfg = plan.arm_config(arm, level)  # validates
            assert cfg.model == plan.stage1 and cfg.seed == base.seed
            assert cfg.train_batch_size == base.train_batch_size
            assert cfg.max_train_samples == base.max_train_samples
