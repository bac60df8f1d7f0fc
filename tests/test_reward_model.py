"""The learned reward model: model, losses, training, judge backend, data filter, best-of-N."""

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

from core.reward_model import (
    EditRewardModel,
    RewardPrediction,
    gaussian_nll,
    pairwise_loss,
    split_ties,
)
from core.rewards import PERSPECTIVES

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SHAPES_CLIP = Path(__file__).resolve().parents[1] / "docs" / "demo_models" / "shapes_clip"
TINY = dict(image_size=16, channels=(8, 16), hidden_dim=32)


def tiny_model(seed: int = 0) -> EditRewardModel:
    torch.manual_seed(seed)
    return EditRewardModel.from_text_tower(SHAPES_CLIP, **TINY)


def pred(mean, logvar) -> RewardPrediction:
    return RewardPrediction(torch.tensor(mean, dtype=torch.float32),
                            torch.tensor(logvar, dtype=torch.float32))  # fmt: skip


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def shapes_folder(tmp_path_factory) -> Path:
    from data.shapes import SynthConfig, synthesize

    out = tmp_path_factory.mktemp("shapes")
    synthesize(out, SynthConfig(train=8, bench=1, size=32), workers=1, overwrite=True,
               progress=False)  # fmt: skip
    return out


# -- the model -------------------------------------------------------------------------------


def test_tiny_model_overfits_a_handful_of_labelled_triplets():
    model = tiny_model()
    g = torch.Generator().manual_seed(0)
    o = torch.rand(6, 3, 16, 16, generator=g) * 2 - 1
    e = torch.rand(6, 3, 16, 16, generator=g) * 2 - 1
    scores = torch.tensor([[5, 5, 5], [0, 4, 2], [3, 1, 5], [1, 1, 1], [4, 2, 0], [2, 5, 3.5]])
    text = model.embed_instructions([f"turn the red circle {c}" for c in
                                     ("blue", "green", "grey", "blue", "white", "green")])  # fmt: skip
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-2)
    for _ in range(300):
        loss = gaussian_nll(model(o, e, text), scores)
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = model(o, e, text)
    assert (out.mean - scores).abs().max() < 0.3, out.mean
    assert out.mean.shape == out.logvar.shape == (6, 3)
    clipped = model.predict(o, ["a"] * 6, e).mean
    assert ((clipped >= 0) & (clipped <= 5)).all()


def test_save_load_round_trip_is_exact(tmp_path):
    model = tiny_model()
    with torch.no_grad():
        for p in model.heads.parameters():
            p.add_(0.3)  # not the init values
    model.save_pretrained(tmp_path)
    back = EditRewardModel.from_pretrained(tmp_path)
    config = lambda m: {k: v for k, v in json.loads(m.to_json_string()).items()  # noqa: E731
                        if k != "_name_or_path"}  # fmt: skip
    assert config(back) == config(model)
    sd, sd2 = model.state_dict(), back.state_dict()
    assert sd.keys() == sd2.keys()
    assert all(torch.equal(sd[k], sd2[k]) for k in sd)
    imgs = [np.full((16, 16, 3), v, np.uint8) for v in (0, 90, 200)]
    a = model.eval().predict(imgs, ["add a blue star"] * 3, imgs[::-1])
    b = back.predict(imgs, ["add a blue star"] * 3, imgs[::-1])
    assert torch.equal(a.mean, b.mean) and torch.equal(a.logvar, b.logvar)


def test_clip_backbone_from_a_tiny_random_clip(tmp_path):
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    from train.clip import image_processor

    tok = CLIPTokenizer.from_pretrained(SHAPES_CLIP)
    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=77,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, image_size=16, patch_size=8),
        projection_dim=16,
    )  # fmt: skip
    CLIPModel(cfg).save_pretrained(tmp_path / "clip")
    tok.save_pretrained(tmp_path / "clip")
    image_processor(16).save_pretrained(tmp_path / "clip")
    model = EditRewardModel.from_clip(str(tmp_path / "clip"), hidden_dim=16)
    assert not any(p.requires_grad for p in model.clip.parameters())
    imgs = [np.full((20, 20, 3), v, np.uint8) for v in (10, 240)]
    out = model.eval().predict(imgs, ["make it night", "add a red star"], imgs)
    assert out.mean.shape == (2, 3)
    model.save_pretrained(tmp_path / "rm")
    back = EditRewardModel.from_pretrained(tmp_path / "rm")
    again = back.predict(imgs, ["make it night", "add a red star"], imgs)
    assert torch.equal(out.mean, again.mean) and torch.equal(out.logvar, again.logvar)


def test_instruction_embeddings_are_cached():
    model = tiny_model()
    calls = []
    hook = model.text_model.register_forward_hook(lambda *a: calls.append(1))
    model.embed_instructions(["a", "b", "a"])
    model.embed_instructions(["b", "a"])
    hook.remove()
    assert len(calls) == 1  # one batch for the two distinct instructions, then the cache


def test_bad_input_to_predict_names_the_item():
    model = tiny_model()
    img = np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match="image 1 is missing"):
        model.predict([img, None], ["a", "b"], [img, img])
    with pytest.raises(ValueError, match="instruction 0 is empty"):
        model.predict([img], [" "], [img])


# -- losses --------------------------------------------------------------------------------------


def test_pairwise_loss_prefers_the_better_edit():
    better, worse = pred([[4.5, 4.0, 5.0]], [[-2.0] * 3]), pred([[1.0, 2.0, 3.0]], [[-2.0] * 3])
    a_wins = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    assert pairwise_loss(better, worse, a_wins) < pairwise_loss(worse, better, a_wins)
    # the gradient raises A's mean and lowers B's when A is the better edit
    ma = torch.tensor([[2.0, 2.0, 2.0]], requires_grad=True)
    mb = torch.tensor([[2.5, 2.5, 2.5]], requires_grad=True)
    lv = torch.zeros(1, 3)
    pairwise_loss(RewardPrediction(ma, lv), RewardPrediction(mb, lv), a_wins).backward()
    assert (ma.grad < 0).all() and (mb.grad > 0).all()
    # more uncertainty, less confident preference: P(A>B) = Phi(d / sqrt(var_a + var_b))
    sure = pairwise_loss(better, worse, a_wins)
    unsure = pairwise_loss(pred([[4.5, 4.0, 5.0]], [[2.0] * 3]), worse, a_wins)
    assert unsure > sure


def test_a_tie_is_split_into_two_opposite_half_weight_pairs_as_editreward_does():
    a, b = pred([[3.0, 1.0, 4.0]], [[0.0, -1.0, 0.5]]), pred([[2.0, 1.5, 4.0]], [[0.3, 0.0, -1]])
    tie_on_following = torch.tensor([[0.5, float("nan"), float("nan"), float("nan")]])
    loss = pairwise_loss(a, b, tie_on_following)
    # EditReward's explicit form: (A > B) and (B > A), each with weight 0.5
    winners, losers, weights = split_ties(torch.tensor([[0, 1]]), tie_on_following, dim=0)
    assert winners.tolist() == [0, 1] and losers.tolist() == [1, 0]
    assert weights.tolist() == [0.5, 0.5]
    both, a_wins = [a, b], torch.tensor([[1.0] + [float("nan")] * 3])
    explicit = sum(
        wt * pairwise_loss(both[w], both[lo], a_wins)
        for w, lo, wt in zip(winners.tolist(), losers.tolist(), weights)
    )
    assert torch.allclose(loss, explicit)
    # a tie pulls the two means together: zero gradient when they are equal
    m = torch.tensor([[2.0, 2.0, 2.0]], requires_grad=True)
    m2 = torch.tensor([[2.0, 2.0, 2.0]], requires_grad=True)
    pairwise_loss(RewardPrediction(m, torch.zeros(1, 3)), RewardPrediction(m2, torch.zeros(1, 3)),
                  tie_on_following).backward()  # fmt: skip
    assert m.grad.abs().max() < 1e-6 and m2.grad.abs().max() < 1e-6


def test_gaussian_nll_ignores_missing_scores_and_learns_the_spread():
    p = pred([[3.0, 3.0, 3.0]], [[0.0, 0.0, 0.0]])
    assert torch.allclose(gaussian_nll(p, torch.tensor([[3.0, float("nan"), float("nan")]])),
                          torch.tensor(0.5 * np.log(2 * np.pi), dtype=torch.float32))  # fmt: skip
    # an error of 2 is likelier under a wide Gaussian than under a narrow one
    target = torch.tensor([[5.0, 5.0, 5.0]])
    assert gaussian_nll(pred([[3.0] * 3], [[1.5] * 3]), target) < gaussian_nll(
        pred([[3.0] * 3], [[-3.0] * 3]), target
    )


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
    assert len(data) == 6 and data.info["outputs"]["by_system"] == {"good": 3, "bad": 3}
    assert sorted(data.scores[:, 0].tolist()) == [1.0] * 3 + [5.0] * 3
    assert len(data.pairs) == 3  # one pair per item: good vs bad
    a, b = data.pairs[0].tolist()
    assert {data.ids[a].split("/")[0], data.ids[b].split("/")[0]} == {"good", "bad"}
    with pytest.raises(ValueError, match="no outputs with verdicts of 'gpt-judge'"):
        build_data(RewardTrainConfig(outputs=str(db), outputs_judge="gpt-judge"),
                   BadDataLog("stop"), progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="--outputs DB"):
        RewardTrainConfig()


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
