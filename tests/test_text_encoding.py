"""One text encoding (core.text_encoding) for the pipeline, the trainer and the reward text; one
reward type (core.rewards.Rewards) for the pipeline's requests."""

from __future__ import annotations

import torch

from core import mrc
from core.pipeline import MRCInstructPix2PixPipeline
from core.pipeline_inputs import normalize_rewards
from core.rewards import Rewards
from core.text_encoding import encode_reward_text, encode_text, join_reward_texts
from core.tiny import TinyConfig, build_components
from train.cache import FrozenEncoders

PROMPTS = ["turn the red square blue", "", "make it look like a watercolour painting"]
REQUESTS = [
    Rewards.from_scores((5, 5, 5)),
    Rewards.from_scores((1, 2, 3), ("blurry", "", "noise")),
    Rewards.from_scores((4, 4, 4)),
]


def pipeline() -> MRCInstructPix2PixPipeline:
    return MRCInstructPix2PixPipeline(**build_components(TinyConfig(), seed=0))


def test_encode_text_is_the_padded_tokenisation_through_the_encoder():
    pipe = pipeline()
    tok, enc = pipe.tokenizer, pipe.text_encoder
    ids = tok(PROMPTS, padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids  # fmt: skip
    with torch.no_grad():
        want, got = enc(ids), encode_text(PROMPTS, tok, enc)
    assert got.last_hidden_state.shape == (3, tok.model_max_length, enc.config.hidden_size)
    assert torch.equal(got.last_hidden_state, want.last_hidden_state)
    assert torch.equal(got.pooler_output, want.pooler_output)


def test_pipeline_trainer_and_reward_text_embeddings_are_identical():
    """A cached training embedding must be the one the pipeline computes at inference."""
    pipe = pipeline()
    empty = pipe.reward_module.config.empty_text
    with torch.no_grad():
        prompts, negatives, rewards = pipe.encode_all_text(PROMPTS, None, REQUESTS, "cpu")
        encoders = FrozenEncoders(pipe, "pooled", torch.device("cpu"), torch.float32)
        trainer = encoders.texts(PROMPTS)
        trainer_rewards = encoders.reward_texts([join_reward_texts(r.texts) for r in REQUESTS])
        direct = encode_reward_text([r.texts for r in REQUESTS], pipe.tokenizer,
                                    pipe.text_encoder, "pooled", empty)  # fmt: skip
    assert negatives is None
    assert torch.equal(prompts, trainer)
    assert torch.equal(rewards, trainer_rewards) and torch.equal(rewards, direct)
    assert torch.equal(rewards[0], rewards[2])  # the same texts, the same embedding


def test_core_mrc_still_exports_the_reward_text_functions():
    assert mrc.encode_reward_text is encode_reward_text
    assert mrc.join_reward_texts is join_reward_texts
    assert mrc.join_reward_texts(("a", " ", "c"), "None") == "a; None; c"


def test_the_pipeline_requests_are_core_rewards():
    requests = normalize_rewards([(5, 4, 3), (5, 5, 5)], [("a", "", ""), ("", "", "")], 2)
    assert requests == [Rewards.from_scores((5, 4, 3), ("a", "", "")), Rewards.best()]
    assert normalize_rewards(Rewards.best(), None, 1) == [Rewards.best()]
