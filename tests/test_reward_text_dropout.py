"""Per-perspective failure-text dropout (stage 2): each perspective's text is emptied on its own,
its score kept, and the UNet receives the embedding of exactly that join."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from core.mrc_unet import MRCUNet
from core.rewards import Rewards
from core.text_encoding import join_reward_texts
from tests._train_helpers import make_rewardedit, settings
from train.cache import TEXT_SUBSETS, FrozenEncoders, TrainCache
from train.config import TrainConfig
from train.loop import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_subset_joins_empty_exactly_the_dropped_perspectives():
    enc = SimpleNamespace(empty_text="")
    ex = SimpleNamespace(rewards=Rewards.from_dict({
        "following": {"score": 1, "text": "the star is missing"},
        "preserving": {"score": 2, "text": "the square moved"},
        "quality": {"score": 3, "text": "blotches"},
    }))  # fmt: skip
    joins = FrozenEncoders.subset_joins(enc, ex)
    assert len(joins) == TEXT_SUBSETS == 8
    assert joins[7] == join_reward_texts(ex.rewards)  # all kept: the ordinary join
    assert joins[0] == join_reward_texts(("", "", ""))  # none kept: what the sliders send
    assert joins[5] == join_reward_texts(("the star is missing", "", "blotches"))  # bits 0 and 2


def _run(tmp_path: Path, monkeypatch, name: str, **kw) -> list[torch.Tensor]:
    data = tmp_path / "data"
    if not data.exists():
        make_rewardedit(data, 8)
    seen: list[torch.Tensor] = []
    forward = MRCUNet.forward

    def spy(self, *args, **kwargs):
        seen.append(kwargs["reward_text_embeds"].clone())
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(MRCUNet, "forward", spy)
    cfg = TrainConfig.from_dict(settings(
        data, tmp_path / name, max_train_steps=2, train_batch_size=8,
        reward_text_dropout_prob=0.5, reward_text_dropout_mode="per_perspective", **kw,
    ))  # fmt: skip
    train(cfg)
    monkeypatch.setattr(MRCUNet, "forward", forward)
    return seen


def test_per_perspective_dropout_sends_one_of_each_examples_eight_joins(tmp_path, monkeypatch):
    cached = _run(tmp_path, monkeypatch, "cached", cache=True)
    caches = [p for p in (tmp_path / "cache").iterdir() if (p / "meta.json").exists()]
    cache = TrainCache(caches[0])
    assert cache.meta["reward_text_subsets"] and cache.subset_index.shape == (8, TEXT_SUBSETS)
    assert (cache.subset_index[:, 7] == cache.reward_text_index).all()  # row 7 = the full join
    table = cache.reward_text  # every distinct join, subsets included
    combos = set()
    for rows in cached:
        for row in rows:
            hits = [(i, m) for i in range(8) for m in range(TEXT_SUBSETS)
                    if torch.allclose(row, table[cache.subset_index[i, m]])]  # fmt: skip
            assert hits, "a reward-text embedding that is none of the examples' joins"
            combos |= {m for _, m in hits}
    assert combos - {0, 7}, "only all-or-nothing combinations: not per perspective"

    uncached = _run(tmp_path, monkeypatch, "uncached", cache=False)
    for a, b in zip(cached, uncached, strict=True):  # same draws, same embeddings
        assert torch.allclose(a, b, atol=1e-5)


def test_per_perspective_mode_is_checked_and_keys_its_own_cache(tmp_path):
    with pytest.raises(ValueError, match="reward_text_dropout_mode must be one of"):
        TrainConfig.from_dict(settings(tmp_path, tmp_path / "o", reward_text_dropout_mode="some"))
    from train.cache import cache_key

    args = ("enc", [], 32, "float32", True, "pooled", "float32")
    assert cache_key(*args) != cache_key(*args, text_subsets=True)
    assert cache_key(*args) == cache_key(*args, text_subsets=False)
