"""The learned reward model itself: the network, saving and loading, the CLIP backbone, and
its losses (pairwise, ties, Gaussian NLL). Training: test_reward_model_training.py; uses:
test_reward_model_uses.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from core.reward_model import (
    EditRewardModel,
    RewardPrediction,
    gaussian_nll,
    pairwise_loss,
    split_ties,
)
from tests._reward_model_helpers import SHAPES_CLIP, tiny_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def pred(mean, logvar) -> RewardPrediction:
    return RewardPrediction(torch.tensor(mean, dtype=torch.float32),
                            torch.tensor(logvar, dtype=torch.float32))  # fmt: skip


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
