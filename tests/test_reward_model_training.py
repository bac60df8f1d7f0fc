"""The reward model's training data (Shapes, store, bad input), its trainer (checkpoints,
exact resume, CLI help) and measuring a model on edits (rank metrics, the CLIP baseline,
model outputs and human ratings as data)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from core.reward_model import EditRewardModel, RewardPrediction
from core.rewards import PERSPECTIVES
from tests._reward_model_helpers import SHAPES_CLIP, synthesize_shapes, tiny_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def shapes_folder(tmp_path_factory) -> Path:
    return synthesize_shapes(tmp_path_factory)


# -- training data and the trainer ---------------------------------------------------------


def _data_cfg(folder, **kw):
    base = dict(shapes=str(folder), store="", store_split="", outputs="", max_train_samples=0, variants=2,
                tie_threshold=0.25, image_size=32, seed=0, on_bad_data="stop")  # fmt: skip
    return SimpleNamespace(**{**base, **kw})


def test_shapes_data_pairs_edits_of_the_same_input(shapes_folder):
    from train.datasets import BadDataLog
    from train.reward_data import build_data

    data = build_data(_data_cfg(shapes_folder), BadDataLog("stop"), progress=False)
    assert len(data) == 8 * 3  # each input: its edited image, the target, one noisy edit
    # every two different edited images of one input form a pair (a clean edit is the target)
    groups = {}
    for o, e, u in data.triplets.tolist():
        groups.setdefault((o, u), set()).add(e)
    assert len(data.pairs) == sum(len(g) * (len(g) - 1) // 2 for g in groups.values()) >= 8
    t = data.triplets[data.pairs]  # (P, 2, 3)
    assert torch.equal(t[:, 0, 0], t[:, 1, 0]) and torch.equal(t[:, 0, 2], t[:, 1, 2])
    assert (t[:, 0, 1] != t[:, 1, 1]).all()
    targets = data.pair_targets[:, :3]
    assert set(targets.unique().tolist()) <= {0.0, 0.5, 1.0}
    assert torch.isnan(data.pair_targets[:, 3]).all()  # Shapes gives no overall preference
    target_rows = [i for i, s in enumerate(data.ids) if s.endswith("v0:target")]
    assert (data.scores[target_rows] == 5).all()  # the ground truth scores 5/5/5


def test_bad_input_is_reported_with_its_id_and_reason(shapes_folder, tmp_path):
    import shutil

    from train.datasets import BadDataError, BadDataLog
    from train.reward_data import build_data

    bad = tmp_path / "bad"
    shutil.copytree(shapes_folder, bad)
    (bad / "train" / "edited" / "000002.png").unlink()  # a missing image
    with pytest.raises(BadDataError, match=r"'train-000002' \(missing image\)"):
        build_data(_data_cfg(bad, variants=0), BadDataLog("stop"), progress=False)
    lines = (bad / "train" / "manifest.jsonl").read_text().splitlines()
    rec = json.loads(lines[4])
    rec["rewards"]["preserving"]["score"] = 7  # a score out of range
    lines[4] = json.dumps(rec)
    (bad / "train" / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(BadDataError, match=r"train-000004.*preserving.*got 7"):
        build_data(_data_cfg(bad, variants=0), BadDataLog("stop"), progress=False)
    log = BadDataLog("skip")
    data = build_data(_data_cfg(bad, variants=0, on_bad_data="skip"), log, progress=False)
    reasons = {i.id: (i.kind, i.reason) for i in log.items}
    assert reasons["train-000002"][0] == "missing_image"
    assert reasons["train-000004"] == ("bad_label", "preserving: score must be in [0, 5], got 7.0")
    assert len(data) == 6


def test_store_data_human_correction_wins_and_ratings_give_pairs(tmp_path, shapes_folder):
    from core.store import Store
    from data.annotate import main as annotate
    from train.datasets import BadDataLog
    from train.reward_data import build_data

    db = tmp_path / "s.db"
    assert annotate(["--store", str(db), "--shapes", str(shapes_folder), "--split", "train",
                     "--judge", "shapes-oracle", "--no-progress"]) == 0  # fmt: skip
    store = Store(db)
    ids = [t["id"] for t in store.list_triplets(split="train")]
    label = store.get_label(ids[0])
    fixed = label.rewards.replace("following", score=1.0, text="not done")
    store.update_label(ids[0], fixed, user="ann", expected_version=label.version)
    # a side-by-side rating of two outputs for one benchmark item
    item = store.list_triplets(split="bench")[0]
    black, white = np.zeros((32, 32, 3), np.uint8), np.full((32, 32, 3), 255, np.uint8)
    out_a = store.add_output(store.create_run("x", "m"), item["id"], Image.fromarray(black))
    out_b = store.add_output(store.create_run("y", "m"), item["id"], Image.fromarray(white))
    store.add_user("rater", "rater", "pw-12345678")
    [aid] = store.assign_ratings("rater", [dict(item_id=item["id"], system_a="x", output_a=out_a,
                                                system_b="y", output_b=out_b)])  # fmt: skip
    store.add_rating(aid, rater="rater", scores_a={"following": 4, "preserving": 2},
                     scores_b={"following": 4, "preserving": 5}, preference="B")  # fmt: skip
    data = build_data(_data_cfg("", shapes="", store=str(store.path), variants=0),
                      BadDataLog("stop"), progress=False)  # fmt: skip
    row = data.ids.index(ids[0])
    assert data.scores[row, 0] == 1.0  # the correction, not the oracle's label
    a, b = data.ids.index(f"rating-1-a"), data.ids.index(f"rating-1-b")  # noqa: F541
    assert torch.isnan(data.scores[a, 2])  # quality was not rated
    k = [i for i, (x, y) in enumerate(data.pairs.tolist()) if (x, y) == (a, b)]
    assert len(k) == 1
    t = data.pair_targets[k[0]].tolist()
    assert t[:2] == [0.5, 0.0] and np.isnan(t[2]) and t[3] == 0.0  # tie, B, unknown, B overall


def _train_cfg(folder, out, **kw):
    from train.reward_model import RewardTrainConfig

    base = dict(output_dir=str(out), shapes=str(folder), max_train_samples=0, variants=2,
                text_encoder=str(SHAPES_CLIP), image_size=32, channels="8,16", hidden_dim=32,
                batch_size=8, max_train_steps=4, warmup_steps=2, checkpointing_steps=2,
                checkpoints_total_limit=0, eval_items=7, eval_variants=2, threads=1)  # fmt: skip
    return RewardTrainConfig(**{**base, **kw})


def test_training_checkpoints_and_resumes_exactly(shapes_folder, tmp_path):
    from train.checkpoints import list_checkpoints, read_metrics
    from train.reward_model import RewardTrainer

    full = RewardTrainer(_train_cfg(shapes_folder, tmp_path / "full"), progress=False).train()
    assert [s for s, _ in list_checkpoints(tmp_path / "full")] == [2, 4]
    assert (tmp_path / "full" / "model" / "config.json").is_file()
    h = full["heldout"]["perspectives"]
    assert set(h) == set(PERSPECTIVES) and 0 <= h["quality"]["coverage_2sigma"] <= 1
    # stop after 2 steps, then continue to 4
    RewardTrainer(_train_cfg(shapes_folder, tmp_path / "cut", max_train_steps=2,
                             eval_items=0), progress=False).train()  # fmt: skip
    RewardTrainer(_train_cfg(shapes_folder, tmp_path / "cut", resume_from_checkpoint="latest"),
                  progress=False).train()  # fmt: skip
    a = EditRewardModel.from_pretrained(tmp_path / "full" / "model").state_dict()
    b = EditRewardModel.from_pretrained(tmp_path / "cut" / "model").state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    losses = [m["loss"] for m in read_metrics(tmp_path / "full")]
    assert [m["loss"] for m in read_metrics(tmp_path / "cut")] == pytest.approx(losses, abs=1e-5)
    with pytest.raises(ValueError, match="batch_size"):  # a resumed run keeps its trajectory
        RewardTrainer(_train_cfg(shapes_folder, tmp_path / "cut", batch_size=4,
                                 resume_from_checkpoint="latest"), progress=False).train()  # fmt: skip


def test_cli_help_documents_every_flag(capsys):
    from dataclasses import fields

    from train.reward_model import RewardTrainConfig, main

    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for f in fields(RewardTrainConfig):
        assert f"--{f.name}" in text
    assert "(default: 0.25)" in text.replace("\n", " ").replace("  ", " ") or "0.25" in text


# -- measuring a reward model (and the CLIP-score baseline) on edits ----------------------------


def test_rank_metrics_count_only_pairs_whose_labels_differ_enough():
    from train.reward_eval import rank_metrics

    truth = np.array([5.0, 1.0, 4.5, np.nan])
    pairs = np.array([[0, 1], [0, 2], [1, 2], [0, 3]])  # gaps 4, 0.5 (too small), 3.5, unknown
    good = rank_metrics(np.array([3.0, 0.0, 2.0, 9.0]), truth, pairs)
    assert good["pairs"] == 2 and good["pair_accuracy"] == 1.0
    assert good["spearman"] == pytest.approx(1.0)
    bad = rank_metrics(np.array([0.0, 3.0, 4.0, 9.0]), truth, pairs)
    assert bad["pair_accuracy"] == 0.5  # (0, 1) wrong, (1, 2) right


def test_clip_baseline_ranks_a_copy_as_best_preserved_and_without_direction(shapes_folder):
    from data.shapes import load_split
    from train.evaluate.image_metrics import ClipConfig, ClipScorer
    from train.reward_data import DataBuilder
    from train.reward_eval import clip_baseline, clip_baseline_metrics

    b = DataBuilder(32, tie_threshold=0.0)
    for it in load_split(shapes_folder, "train")[:4]:
        original = it.load("original")
        b.triplet(f"{it.id}/copy", original, original, it.instruction, [0.0, 5.0, 5.0])
        b.triplet(f"{it.id}/target", original, it.load("target"), it.instruction, [5.0, 3.0, 5.0])
    b.pairs_from_scores()
    data = b.build({})
    scorer = ClipScorer(ClipConfig(model=str(SHAPES_CLIP)))
    scores = clip_baseline(scorer, data, batch_size=3)  # batches that split the triplets
    copies, targets = scores["preserving"][0::2], scores["preserving"][1::2]
    assert np.allclose(copies, 1.0, atol=1e-5) and (targets < copies).all()
    assert np.allclose(scores["following"][0::2], 0.0)  # no change, no direction
    figures = clip_baseline_metrics(scorer, data)
    assert set(figures) == {"following", "preserving"}  # CLIP has no quality perspective
    assert figures["preserving"]["pairs"] == 4 and figures["preserving"]["pair_accuracy"] == 1.0


def _outputs_store(path: Path, n_items: int = 3) -> Path:
    """An evaluation store: two systems' outputs on n items, judged by the oracle's name."""
    from core.store import Store

    rng = np.random.default_rng(0)
    img = lambda: rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)  # noqa: E731
    store = Store(path)
    ids = store.add_triplets([dict(original=img(), edited=None, instruction=f"make shape {i} red",
                                   category="local", split="train", target=img())
                              for i in range(n_items)], progress=False)  # fmt: skip
    for system, score in (("good", 5.0), ("bad", 1.0)):
        run = store.create_run(system, "m", settings={"system": system})
        for tid in ids:
            out = store.add_output(run, tid, img())
            verdict = {p: {"yes": score >= 4, "score": score} for p in PERSPECTIVES}
            store.add_verdict(out, judge_model="shapes-oracle-v1", prompt_version="v1",
                              verdict=verdict)  # fmt: skip
    return path


def test_outputs_source_labels_model_outputs_and_pairs_them_by_item(tmp_path):
    from train.datasets import BadDataLog
    from train.reward_data import build_data
    from train.reward_model import RewardTrainConfig

    db = _outputs_store(tmp_path / "eval.db")
    cfg = RewardTrainConfig(outputs=str(db), output_dir=str(tmp_path / "rm"))
    data = build_data(cfg, BadDataLog("stop"), progress=False)
    assert len(data) == 6 and data.info["outputs"][0]["by_system"] == {"good": 3, "bad": 3}
    assert sorted(data.scores[:, 0].tolist()) == [1.0] * 3 + [5.0] * 3
    assert len(data.pairs) == 3  # one pair per item: good vs bad
    a, b = data.pairs[0].tolist()
    assert {data.ids[a].split("/")[0], data.ids[b].split("/")[0]} == {"good", "bad"}
    with pytest.raises(ValueError, match="no outputs with verdicts of 'gpt-judge'"):
        build_data(RewardTrainConfig(outputs=str(db), outputs_judge="gpt-judge"),
                   BadDataLog("stop"), progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="--outputs DB"):
        RewardTrainConfig()


def test_outputs_from_several_stores_pair_across_stores(tmp_path):
    """Two stores holding outputs for the same inputs (e.g. two model generations judged on the
    same training scenes): every output is kept under a unique id and the outputs of one input
    pair up across the stores."""
    import shutil

    from train.datasets import BadDataLog
    from train.reward_data import build_data
    from train.reward_model import RewardTrainConfig

    a = _outputs_store(tmp_path / "a" / "eval.db")
    (tmp_path / "b").mkdir()
    for f in (tmp_path / "a").iterdir():  # the same items and systems, a second store
        (shutil.copytree if f.is_dir() else shutil.copy)(f, tmp_path / "b" / f.name)
    b = tmp_path / "b" / "eval.db"
    cfg = RewardTrainConfig(outputs=f"{a}, {b}", output_dir=str(tmp_path / "rm"))
    data = build_data(cfg, BadDataLog("stop"), progress=False)
    assert [o["outputs"] for o in data.info["outputs"]] == [6, 6]
    assert len(data) == 12 and len(set(data.ids)) == 12
    assert {i.split(":")[0] for i in data.ids} == {"0", "1"}
    # identical images count once within an input's group: the copy adds no new pair
    assert len(data.pairs) == 3


def test_agreement_with_raters_scores_and_choices(tmp_path):
    from core.store import Store
    from train.reward_eval import main as reward_eval
    from train.reward_eval import rating_agreement, store_ratings

    db = _outputs_store(tmp_path / "eval.db", n_items=2)
    store = Store(db)
    store.add_user("rater", "rater", "pw-12345678")
    rng = np.random.default_rng(1)
    for k, item in enumerate(store.list_triplets(split="train")):
        outs = [store.add_output(store.create_run(s, "m"), item["id"],
                                 Image.fromarray(rng.integers(0, 255, (32, 32, 3), np.uint8)))
                for s in (f"x{k}", f"y{k}")]  # fmt: skip
        [aid] = store.assign_ratings("rater", [dict(item_id=item["id"], system_a=f"x{k}",
                                     output_a=outs[0], system_b=f"y{k}", output_b=outs[1])])  # fmt: skip
        store.add_rating(aid, rater="rater", scores_a={"following": 5, "preserving": 4},
                         scores_b={"following": 1, "preserving": 4}, preference="A")  # fmt: skip
    data = store_ratings(str(db))
    assert len(data) == 4 and len(data.pairs) == 2
    a = torch.tensor([0, 2])  # the A sides (x systems): rated higher and chosen
    mean = torch.zeros(4, 3)
    mean[a] = 4.0
    agree = rating_agreement(RewardPrediction(mean, torch.zeros(4, 3)), data)
    assert agree["following"]["pair_accuracy"] == 1.0 and agree["following"]["pairs"] == 2
    assert agree["preserving"]["pairs"] == 0  # equal scores: no decided pair
    assert agree["overall_choice"] == {"choices": 2, "accuracy": 1.0}
    flipped = rating_agreement(RewardPrediction(4.0 - mean, torch.zeros(4, 3)), data)
    assert flipped["overall_choice"]["accuracy"] == 0.0
    tiny_model().save_pretrained(tmp_path / "rm")
    out = tmp_path / "r.json"
    assert (
        reward_eval(["--model", str(tmp_path / "rm"), "--ratings", str(db), "--out", str(out)]) == 0
    )
    assert json.loads(out.read_text())["ratings"]["rated_outputs"] == 4
    with pytest.raises(SystemExit):
        reward_eval(["--model", str(tmp_path / "rm")])
