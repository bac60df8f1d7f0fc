"""Uses of the reward model: judge backend, annotation, best-of-N, the training-data filter
(`--data_filter`), relabelling in the trainer, and as the judge of `python -m train.evaluate`."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from core.reward_model import RewardPrediction
from core.rewards import PERSPECTIVES
from tests._reward_model_helpers import synthesize_shapes, tiny_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def shapes_folder(tmp_path_factory) -> Path:
    return synthesize_shapes(tmp_path_factory)


# -- uses: judge, filter, best-of-N --------------------------------------------------------


def test_judge_backend_returns_valid_results_with_confidence():
    from core.judges.base import JudgeInput
    from core.judges.reward_model_judge import RewardModelJudge

    judge = RewardModelJudge(model=tiny_model(), name="tiny")
    o, e = np.zeros((32, 32, 3), np.uint8), np.full((32, 32, 3), 128, np.uint8)
    item = JudgeInput("turn the red circle blue", png(o), png(e), triplet_id="t1")
    ann = asyncio.run(judge.annotate(item))
    assert ann.ok and ann.judge.kind == "reward-model" and ann.judge.digest
    assert all(0 <= s <= 5 for s in ann.rewards.scores) and ann.rewards.texts == ("", "", "")
    assert set(ann.std) == set(PERSPECTIVES) and all(s > 0 for s in ann.std.values())
    assert json.loads(ann.raw)["std"] == ann.std
    ev = asyncio.run(judge.evaluate(item))
    assert ev.ok and ev.evaluation.scores == pytest.approx(ann.rewards.scores)
    assert ev.evaluation.verdicts == tuple(s >= 4 for s in ev.evaluation.scores)
    broken = asyncio.run(judge.annotate(JudgeInput("x", b"not a png", png(e), triplet_id="t2")))
    assert not broken.ok and broken.reason_code == "bad_input"


def test_annotate_cli_with_the_reward_model_stores_its_std(tmp_path, shapes_folder):
    from core.store import Store
    from data.annotate import main

    tiny_model().save_pretrained(tmp_path / "rm")
    db = tmp_path / "s.db"
    rc = main(["--store", str(db), "--shapes", str(shapes_folder), "--split", "train",
               "--judge", f"reward-model:{tmp_path / 'rm'}", "--no-progress"])  # fmt: skip
    assert rc == 0
    rows = Store(db).annotations()
    assert len(rows) == 8 and all(r["status"] == "ok" for r in rows)
    assert all(set(r["meta"]["std"]) == set(PERSPECTIVES) for r in rows)
    assert rows[0]["judge_model"] == "rm"  # kind "judge"; meta["judge"]["kind"] names the backend
    assert rows[0]["meta"]["judge"]["kind"] == "reward-model"


class FixedModel:
    """A stand-in reward model whose means are given per edited image's first pixel value."""

    config = SimpleNamespace(image_size=8)

    def __init__(self, table):
        self.table = table

    def predict(self, originals, instructions, editeds, batch_size=256):
        vals = [int(np.asarray(e)[0, 0, 0]) if not isinstance(e, torch.Tensor)
                else int(round((float(e[0, 0, 0]) + 1) * 127.5)) for e in editeds]  # fmt: skip
        mean = torch.tensor([self.table[v] for v in vals], dtype=torch.float32)
        return RewardPrediction(mean, torch.zeros_like(mean))


def test_best_of_n_picks_the_highest_predicted_score():
    from core.best_of_n import best_of_n, rank_candidates

    table = {10: [2, 2, 2], 20: [5, 4, 4.5], 30: [4.2, 4.2, 4.2], 40: [5, 5, 0]}
    model = FixedModel(table)
    cands = [Image.fromarray(np.full((8, 8, 3), v, np.uint8)) for v in (10, 20, 30, 40)]
    ranked = rank_candidates(model, cands[0], "add a star", cands)
    assert [c.index for c in ranked] == [1, 2, 3, 0]
    assert ranked[0].mean == {"following": 5.0, "preserving": 4.0, "quality": 4.5}
    assert [c.index for c in rank_candidates(model, cands[0], "x", cands, by="min")][0] == 2

    class Pipe:
        def __call__(self, prompt, image, num_images_per_prompt, output_type, **kw):
            assert kw == {"rewards": (5, 5, 5)}
            return SimpleNamespace(images=cands[:num_images_per_prompt])

    best = best_of_n(Pipe(), model, "add a star", cands[0], n=3, rewards=(5, 5, 5))
    assert [c.index for c in best] == [1, 2, 0]


def test_data_filter_keeps_the_top_fraction_with_provenance(tmp_path):
    from train.datasets import EditExample

    model = FixedModel({v: [v / 60] * 3 for v in range(0, 256)})
    examples = []
    for i, v in enumerate((50, 200, 120, 10)):
        for name, val in (("o", 0), ("e", v)):
            Image.fromarray(np.full((8, 8, 3), val, np.uint8)).save(tmp_path / f"{name}{i}.png")
        from train.datasets import PathImage

        examples.append(EditExample(f"ex{i}", "add a star", PathImage(tmp_path / f"o{i}.png"),
                                    PathImage(tmp_path / f"e{i}.png"), None, {"origin": "oracle"}))  # fmt: skip
    from train.reward_filter import filter_by_reward

    res = filter_by_reward(examples, model, keep_fraction=0.5, model_name="rm")
    assert [ex.id for ex in res.kept] == ["ex1", "ex2"]  # source order, top half by score
    assert res.kept[0].provenance["origin"] == "oracle"
    assert res.kept[0].provenance["reward_filter"]["rank"] == 1
    assert res.summary["kept"] == 2 and res.summary["scored"] == 4
    res.write(tmp_path / "run")
    lines = [
        json.loads(x) for x in (tmp_path / "run" / "reward_filter.jsonl").read_text().splitlines()
    ]
    assert [r["kept"] for r in lines] == [False, True, True, False]
    with pytest.raises(ValueError, match="keep_fraction"):
        filter_by_reward(examples, model, keep_fraction=0)


def test_evaluate_cli_accepts_the_reward_model_as_judge(tmp_path):
    from core.judges.reward_model_judge import RewardModelJudge
    from train.evaluate.cli import build_parser, config_from_args, make_judge

    tiny_model().save_pretrained(tmp_path / "rm")
    argv = ["--benchmark", "shapes", "--system", "a=b", "--out", str(tmp_path / "o")]
    cfg = config_from_args(
        build_parser().parse_args([*argv, "--judge", f"reward-model:{tmp_path / 'rm'}"])
    )
    judge = make_judge(cfg, store=None)
    assert isinstance(judge, RewardModelJudge) and judge.spec.name == "reward-model:rm"
    with pytest.raises(SystemExit):
        build_parser().parse_args([*argv, "--judge", "gpt"])
    with pytest.raises(ValueError, match="not a reward model folder"):
        RewardModelJudge(tmp_path / "nothing")


def test_filter_by_labels_ranks_by_the_sources_own_scores():
    from core.rewards import Rewards
    from train.datasets import EditExample, PathImage
    from train.reward_filter import filter_by_labels

    scores = [(5, 5, 5), (0, 5, 5), (5, 2, 4), (1, 1, 1)]
    examples = [EditExample(f"ex{i}", "add a star", PathImage("o"), PathImage("e"),
                            Rewards.from_scores(s)) for i, s in enumerate(scores)]  # fmt: skip
    res = filter_by_labels(examples, keep_fraction=0.5)
    assert [ex.id for ex in res.kept] == ["ex0", "ex2"]
    assert res.kept[1].provenance["reward_filter"] == {
        "model": "labels", "by": "mean", "score": round(11 / 3, 4), "rank": 2
    }  # fmt: skip
    assert [ex.id for ex in filter_by_labels(examples, 0.25, by="following").kept] == ["ex0"]
    unlabelled = [*examples, EditExample("ex9", "x", PathImage("o"), PathImage("e"))]
    with pytest.raises(ValueError, match="'ex9'"):
        filter_by_labels(unlabelled, 0.5)


def test_trainer_trains_on_exactly_the_filtered_subset(shapes_folder, tmp_path):
    from train.config import TrainConfig
    from train.loop import train

    base = dict(data="shapes", data_dir=str(shapes_folder), stage=2, train_batch_size=2,
                max_train_steps=1, report_to="none", cache_dir=str(tmp_path / "cache"))  # fmt: skip
    out = tmp_path / "filtered"
    train(TrainConfig.from_dict({**base, "output_dir": str(out), "data_filter": "labels",
                                 "data_filter_keep": 0.25, "data_filter_by": "min"}))  # fmt: skip
    records = [json.loads(x) for x in (out / "reward_filter.jsonl").read_text().splitlines()]
    assert len(records) == 8 and sum(r["kept"] for r in records) == 2
    kept = {r["id"] for r in records if r["kept"]}
    assert min(r["score"] for r in records if r["kept"]) >= max(
        r["score"] for r in records if not r["kept"]
    )
    trained = [json.loads(x) for x in (out / "provenance.jsonl").read_text().splitlines()]
    assert {p["id"] for p in trained} == kept
    assert all(p["reward_filter"]["model"] == "labels" for p in trained)
    report = json.loads((out / "pipeline" / "training_data.json").read_text())
    assert report["used"] == 2 and report["data_filter"]["kept"] == 2
    assert report["data_filter"]["keep_fraction"] == 0.25


def test_trainer_relabels_with_the_reward_model_and_filters_by_it(shapes_folder, tmp_path):
    from train.config import TrainConfig
    from train.loop import train

    rm = tmp_path / "rm"
    tiny_model().save_pretrained(rm)
    out = tmp_path / "local"
    cfg = TrainConfig.from_dict(dict(
        data="shapes", data_dir=str(shapes_folder), stage=2, train_batch_size=2,
        max_train_steps=1, report_to="none", cache_dir=str(tmp_path / "cache"),
        output_dir=str(out), relabel_with=str(rm), data_filter=str(rm), data_filter_keep=0.5,
    ))  # fmt: skip
    train(cfg)
    relabelled = [json.loads(x) for x in (out / "relabel.jsonl").read_text().splitlines()]
    assert len(relabelled) == 8 and all(r["replaced"] is not None for r in relabelled)
    # The labels trained on are the model's predictions, not the oracle's.
    expected = tiny_model().predict(*_shapes_triplets(shapes_folder))
    by_id = {r["id"]: r for r in relabelled}
    got = torch.tensor(
        [[by_id[i]["mean"][p] for p in PERSPECTIVES] for i in _shapes_ids(shapes_folder)]
    )
    assert torch.allclose(got, expected.mean, atol=1e-3)
    report = json.loads((out / "data_report.json").read_text())
    assert report["label_origins"] == {f"reward-model:{rm}": 4}
    assert report["relabelled_with"]["examples"] == 8 and report["data_filter"]["kept"] == 4
    with pytest.raises(ValueError, match="only stage 2"):
        cfg.replace(stage=1)
    with pytest.raises(ValueError, match="not a folder"):
        cfg.replace(data_filter=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="data_filter_keep"):
        cfg.replace(data_filter_keep=0)


def _shapes_ids(folder: Path) -> list[str]:
    lines = (folder / "train" / "manifest.jsonl").read_text().splitlines()
    return [json.loads(x)["id"] for x in lines]


def _shapes_triplets(folder: Path):
    from train.config import TrainConfig
    from train.datasets import load_pair
    from train.sources import load_source

    src = load_source(TrainConfig.from_dict(dict(data="shapes", data_dir=str(folder))))
    pairs = [load_pair(ex, 32) for ex in src.examples]
    return (torch.stack([o for o, _ in pairs]), [ex.instruction for ex in src.examples],
            torch.stack([e for _, e in pairs]))  # fmt: skip
