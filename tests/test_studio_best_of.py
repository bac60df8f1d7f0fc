"""Best of N in the Edit tab: N candidates ranked by the reward model, the first being the plain
edit's seed; through the model and through the studio's API."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from studio.model import EditSettings
from tests.studio_helpers import build_store, client, serve, tiny_model

SETTINGS = EditSettings(steps=2, seed=5)


def _image() -> Image.Image:
    img = np.full((32, 32, 3), 200, np.uint8)
    img[8:20, 10:22] = (220, 30, 30)
    return Image.fromarray(img)


def test_best_of_ranks_candidates_and_the_first_seed_is_the_plain_edit():
    model = tiny_model()
    assert model.reward_model is not None  # the shipped Shapes reward model, with the demo model
    _, ranked = model.best_of(_image(), "turn the red square blue", SETTINGS, n=3)
    assert sorted(c.index for c in ranked) == [0, 1, 2]
    assert [c.score for c in ranked] == sorted((c.score for c in ranked), reverse=True)
    for c in ranked:  # candidate k is the plain edit with seed + k
        _, plain = model.edit(
            _image(), "turn the red square blue", replace(SETTINGS, seed=5 + c.index)
        )
        assert np.abs(np.asarray(plain, int) - np.asarray(c.image, int)).max() <= 1
    no_rm = replace(model, reward_model=None)
    with pytest.raises(ValueError, match="--reward-model"):
        no_rm.best_of(_image(), "x", SETTINGS, n=2)


def test_best_of_through_the_studio_api(tmp_path):
    from gradio_client import handle_file

    from studio.app import create_context

    store = build_store(tmp_path / "s.db")
    ctx = create_context(store, tiny_model(), login_required=False)
    path = tmp_path / "in.png"
    _image().save(path)
    args = [handle_file(str(path)), "turn the red square blue", 5, 5, 5, "", "", "", 2, 7.5, 1.5,
            1.0, 5]  # fmt: skip
    with serve(ctx) as url:
        (before, after), status, gallery = client(url).predict(*args, 3, api_name="/best_of")
    assert status.startswith("Best of 3 by the reward model: seed ")
    assert len(gallery) == 3 and all("F " in g["caption"] and "±" in g["caption"] for g in gallery)
    best_seed = int(status.split("seed ")[1].split(" ")[0])
    assert gallery[0]["caption"].startswith(f"seed {best_seed}:")
    assert np.array_equal(
        np.asarray(Image.open(after)), np.asarray(Image.open(gallery[0]["image"]))
    )
