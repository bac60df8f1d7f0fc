"""Shared helpers of the reward-model tests (test_reward_model*.py): the tiny model and a tiny
Shapes folder."""

from __future__ import annotations

from pathlib import Path

import torch

from core.reward_model import EditRewardModel

SHAPES_CLIP = Path(__file__).resolve().parents[1] / "docs" / "demo_models" / "shapes_clip"
TINY = dict(image_size=16, channels=(8, 16), hidden_dim=32)


def tiny_model(seed: int = 0) -> EditRewardModel:
    torch.manual_seed(seed)
    return EditRewardModel.from_text_tower(SHAPES_CLIP, **TINY)


def synthesize_shapes(tmp_path_factory) -> Path:
    """A Shapes folder of 8 training inputs at 32 px (the body of each file's module-scoped
    ``shapes_folder`` fixture)."""
    from data.shapes import SynthConfig, synthesize

    out = tmp_path_factory.mktemp("shapes")
    synthesize(out, SynthConfig(train=8, bench=1, size=32), workers=1, overwrite=True,
               progress=False)  # fmt: skip
    return out
