"""The filter-or-condition comparison end to end on tiny models: every arm trains from the same
stage-1 model, the filtered arms train on exactly the subset they claim, the local arms read the
reward model's labels, every arm (and best-of-N) has its table row, and a rerun resumes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from train.config import TrainConfig
from train.filter_or_condition import Plan, best_arm, run

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ROOT = Path(__file__).resolve().parents[1]
ARMS = ["baseline", "filter", "filter-oracle", "condition", "condition-local", "both",
        "filter-keep1of6", "filter-keep2of3"]  # fmt: skip


@pytest.fixture(scope="module")
def plan_dict(tmp_path_factory) -> dict:
    from core.reward_model import EditRewardModel
    from data.shapes import SynthConfig, synthesize
    from train.loop import train

    root = tmp_path_factory.mktemp("foc")
    pool = root / "pool"
    synthesize(pool, SynthConfig(train=24, bench=1, size=32), workers=1, progress=False)
    common = dict(data="shapes", data_dir=str(pool), train_batch_size=4, max_train_steps=2,
                  report_to="none", checkpointing_steps=0,
                  cache_dir=str(root / "cache"), prediction_type="v_prediction")  # fmt: skip
    stage1 = train(TrainConfig.from_dict({**common, "stage": 1, "model": "tiny",
                                          "pixel_space": True, "output_dir": str(root / "s1")}))  # fmt: skip
    for name, stage in (("baseline", 1), ("mrc", 2)):
        (root / f"{name}.yaml").write_text(yaml.safe_dump({**common, "stage": stage,
                                                           "model": "replaced by the plan"}))  # fmt: skip
    torch.manual_seed(0)
    rm = EditRewardModel.from_text_tower(ROOT / "docs/demo_models/shapes_clip", image_size=16,
                                         channels=(8, 16), hidden_dim=32)  # fmt: skip
    rm.save_pretrained(root / "rm")
    base = {"baseline": str(root / "baseline.yaml"), "mrc": str(root / "mrc.yaml")}
    arms = {
        "baseline": {"config": base["baseline"]},
        "filter": {"config": base["baseline"], "data_filter": "reward_model"},
        "filter-oracle": {"config": base["baseline"], "data_filter": "labels"},
        "condition": {"config": base["mrc"]},
        "condition-local": {"config": base["mrc"], "relabel_with": "reward_model"},
        "both": {"config": base["mrc"], "data_filter": "reward_model"},
        "filter-keep1of6": {"config": base["baseline"], "data_filter": "reward_model",
                            "data_filter_keep": "1/6"},
        "filter-keep2of3": {"config": base["baseline"], "data_filter": "reward_model",
                            "data_filter_keep": "2/3"},
    }  # fmt: skip
    return dict(
        output_dir=str(root / "out"), stage1=str(stage1), reward_model=str(root / "rm"),
        keep="1/3", arms=arms,
        noise={"default": {"data_dir": str(pool)},
               "double": {"data_dir": str(root / "pool2"),
                          "synth": {"train": 24, "bench": 1, "size": 32, "p_scale": 2}}},
        evaluation={"benchmark": "shapes?size=32&scenes=1", "steps": 2, "best_of": 2,
                    "bootstrap": 200, "batch_size": 8},
    )  # fmt: skip


def test_every_arm_trains_evaluates_and_reports(plan_dict):
    plan = Plan.from_dict(plan_dict)
    run(plan, ["default"], progress=False)
    # The doubled noise level with two arms: its pool is synthesised, its arms evaluated apart.
    report = run(plan, ["default", "double"], ["baseline", "condition"], progress=False)
    out = plan.output_dir
    info = json.loads((Path(plan_dict["noise"]["double"]["data_dir"]) / "info.json").read_text())
    assert info["config"]["corruption"]["p_following"] == pytest.approx(0.6)
    for level, arms in (("default", ARMS), ("double", ["baseline", "condition"])):
        t = pd.read_csv(out / level / "eval" / "report" / "table1.csv")
        systems = set(t[t.category == "all"].system)
        best = best_arm(out / level / "eval" / "report" / "table1.csv", arms)
        assert systems == {*arms, f"{best}+best-of-2"}
        paired = pd.read_csv(out / level / "eval" / "report" / "paired.csv")
        pairs = set(zip(paired.a, paired.b))
        assert {("baseline", a) for a in arms if a != "baseline"} <= pairs
        assert {("condition", a) for a in arms if a not in ("condition", "baseline")} <= pairs
        assert (best, f"{best}+best-of-2") in pairs
        for arm in arms:
            run_dir = out / level / arm
            cfg = TrainConfig.load(run_dir / "pipeline" / "training_config.yaml")
            assert cfg.model == plan_dict["stage1"]  # the same start for every arm
            assert cfg.data_dir == plan_dict["noise"][level]["data_dir"]
            data = json.loads((run_dir / "data_report.json").read_text())
            if cfg.data_filter:
                # The arm trained on exactly the subset its filter kept, and says so.
                records = [
                    json.loads(x)
                    for x in (run_dir / "reward_filter.jsonl").read_text().splitlines()
                ]
                kept = {r["id"] for r in records if r["kept"]}
                assert len(kept) == math.ceil(cfg.data_filter_keep * 24) == data["used"]
                trained = [
                    json.loads(x) for x in (run_dir / "provenance.jsonl").read_text().splitlines()
                ]
                assert {p["id"] for p in trained} == kept
            else:
                assert data["used"] == 24
            origins = data["label_origins"]
            if arm in ("condition-local",):
                assert set(origins) == {f"reward-model:{plan_dict['reward_model']}"}
            elif cfg.stage == 2:
                assert set(origins) == {"oracle"}
    text = report.read_text()
    for arm in ARMS:
        assert f"| {arm} |" in text
    assert (out / "fraction_kept.png").is_file()
    assert "judge_calls" in text

    # A rerun trains nothing (finished arms are skipped) and rebuilds the same tables.
    before = {a: (out / "default" / a / "cost.json").read_text() for a in ARMS}
    run(plan, ["default"], progress=False)
    assert {a: (out / "default" / a / "cost.json").read_text() for a in ARMS} == before


def test_plan_errors_are_clear(plan_dict, tmp_path):
    with pytest.raises(ValueError, match="needs 'config'"):
        Plan.from_dict({**plan_dict, "arms": {"x": {}}})
    with pytest.raises(ValueError, match="unknown key"):
        Plan.from_dict({**plan_dict, "colour": "red"})
    plan = Plan.from_dict({**plan_dict, "output_dir": str(tmp_path / "o")})
    with pytest.raises(ValueError, match="unknown noise level"):
        run(plan, ["triple"])
    with pytest.raises(ValueError, match="unknown arm"):
        run(plan, ["default"], ["nope"])
