"""The edit-region loss weight: positions the edit changed count 1 + edit_region_weight in the
denoising loss; 0 is InstructPix2Pix's plain MSE, bit for bit."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from diffusers import DDPMScheduler

from tests._train_helpers import make_rewardedit, settings
from train.checkpoints import read_metrics
from train.config import TrainConfig
from train.loop import train
from train.objectives import DiffusionObjective

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _objective(weight: float, threshold: float = 0.1) -> DiffusionObjective:
    cfg = SimpleNamespace(edit_region_weight=weight, edit_region_threshold=threshold, snr_gamma=0)
    scheduler = DDPMScheduler(prediction_type="v_prediction", beta_schedule="linear")
    models = SimpleNamespace(
        vae=SimpleNamespace(config=SimpleNamespace(scaling_factor=1.0)),
        noise_scheduler=scheduler,
    )
    return DiffusionObjective(cfg, models, encoders=None, null_text=torch.zeros(4, 8), device="cpu")


def _pair() -> tuple[torch.Tensor, torch.Tensor]:
    """An edit that changes a 2x3 patch of one sample and nothing of the other."""
    original = torch.zeros(2, 3, 8, 8)
    edited = original.clone()
    edited[0, 1, 2:4, 5:8] = 0.5  # channel mean 0.167 > 0.1
    edited[1, 0, 0, 0] = 0.2  # channel mean 0.067: below the threshold
    return edited, original


def test_region_marks_exactly_the_changed_positions():
    edited, original = _pair()
    assert _objective(0.0).edit_region(edited, original) is None
    region = _objective(4.0).edit_region(edited, original)
    assert region.shape == (2, 1, 8, 8)
    expected = torch.ones(2, 1, 8, 8)
    expected[0, 0, 2:4, 5:8] = 5.0
    assert torch.equal(region, expected)
    looser = _objective(4.0, threshold=0.05).edit_region(edited, original)
    assert looser[1, 0, 0, 0] == 5.0 and looser[1].sum() == 64 + 4


def test_weighted_loss_counts_errors_inside_the_region_one_plus_weight_times():
    edited, original = _pair()
    obj = _objective(4.0)
    region = obj.edit_region(edited, original)
    latents, noise = edited, torch.zeros_like(edited)
    t = torch.tensor([0, 0])
    target = obj.noise_scheduler.get_velocity(latents, noise, t)

    inside = target.clone()
    inside[0, :, 2, 5] += 1.0  # an error of 1 on each channel at one changed position
    outside = target.clone()
    outside[0, :, 0, 0] += 1.0  # the same error where nothing changed

    plain_in = obj.weighted_mse(inside, latents, noise, t)
    plain_out = obj.weighted_mse(outside, latents, noise, t)
    assert torch.isclose(plain_in, plain_out)  # without the region: same loss
    assert torch.isclose(obj.weighted_mse(outside, latents, noise, t, region), plain_out)
    assert torch.isclose(obj.weighted_mse(inside, latents, noise, t, region), 5 * plain_in)


def test_training_with_the_weight_runs_and_changes_only_the_loss(tmp_path):
    data = tmp_path / "data"
    make_rewardedit(data, 8)
    losses = {}
    for w in (0.0, 9.0):
        out = tmp_path / f"w{w:g}"
        cfg = TrainConfig.from_dict(settings(
            data, out, stage=1, max_train_steps=2, train_batch_size=8, cache=False,
            edit_region_weight=w,
        ))  # fmt: skip
        train(cfg)
        losses[w] = [m["loss"] for m in read_metrics(out) if "loss" in m]
    assert len(losses[0.0]) == len(losses[9.0]) == 2
    # The recolour changes an 8x8 patch of 32x32 (1/16): the first step's loss (same draws,
    # same weights) grows, but by far less than 10x.
    assert 1.05 < losses[9.0][0] / losses[0.0][0] < 10


def test_weight_and_threshold_must_not_be_negative(tmp_path):
    for key in ("edit_region_weight", "edit_region_threshold"):
        with pytest.raises(ValueError, match=f"{key} must not be negative"):
            TrainConfig.from_dict(settings(tmp_path, tmp_path / "o", stage=1, **{key: -1.0}))
