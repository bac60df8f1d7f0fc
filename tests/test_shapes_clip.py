"""The Shapes CLIP (``python -m train.clip``), its text tower in the trainer, and the reward-text
dropout that makes stage 2 learn the scores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import CLIPModel, CLIPTokenizer

from core.mrc_unet import MRCUNet
from data.shapes import load_split
from data.shapes.captions import captions_from_meta, scene_caption
from data.shapes.scene import Obj, Scene
from data.shapes.synth import SynthConfig, synthesize
from tests._train_helpers import make_rewardedit, settings
from train.clip import build_parser, main
from train.config import TrainConfig
from train.loop import train
from train.models import load_text_tower


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shapes") / "s"
    synthesize(out, SynthConfig(train=96, bench=2, size=32, seed=3), workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def clip_folder(shapes, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clip") / "clip"
    args = ["--data_dir", str(shapes), "--out", str(out), "--steps", "4", "--batch_size", "16"]
    args += ["--warmup_steps", "2", "--no-progress"]
    assert main(args) == 0
    return out


def test_captions_name_every_object_in_reading_order():
    scene = Scene(32, "green", (Obj("star", "blue", 26, 6, 4), Obj("circle", "red", 5, 5, 4)))
    assert scene_caption(scene) == (
        "a red circle at the top-left and a blue star at the top-right on a green background"
    )


def test_target_captions_describe_the_edit(shapes):
    for item in load_split(shapes, "bench"):
        before, after = captions_from_meta(item.meta)
        assert before != after, item.category  # every edit changes what the picture shows
        if item.category in ("global", "style"):
            assert after.endswith(before)


def test_help_documents_every_flag():
    text = build_parser().format_help()
    for flag in ("--data_dir", "--out", "--steps", "--batch_size", "--text_dim", "--max_length"):
        assert flag in text
    assert "default" in text


def test_missing_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["--data_dir", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "error:" in capsys.readouterr().err


def test_clip_folder_loads_and_reports_retrieval(clip_folder, shapes):
    model = CLIPModel.from_pretrained(clip_folder)
    tokenizer = CLIPTokenizer.from_pretrained(clip_folder)
    assert model.config.text_config.hidden_size == 64
    # Shapes words are single tokens: "make the red circle blue" is 5 tokens + BOS/EOS.
    assert len(tokenizer("make the red circle blue").input_ids) == 7
    report = json.loads((clip_folder / "clip_report.json").read_text())
    bench = report["retrieval_bench"]
    assert bench["items"] == len(load_split(shapes, "bench"))
    for key in ("caption_to_image", "image_to_caption", "instruction_to_edit"):
        assert 0.0 <= bench[key]["top1"] <= bench[key]["top5"] <= 1.0
    log = (clip_folder / "train_log.jsonl").read_text().splitlines()
    assert len(log) == 4 and "direction" in json.loads(log[0])


def test_text_tower_is_the_clips_text_weights_frozen_in_training(clip_folder, shapes, tmp_path):
    text, _ = load_text_tower(clip_folder)
    clip = CLIPModel.from_pretrained(clip_folder)
    for k, v in clip.text_model.state_dict().items():
        assert torch.equal(text.state_dict()[k], v), k

    out = tmp_path / "run"
    tiny = {"image_size": 32, "unet_channels": [32, 64], "text_dim": 64}
    cfg = TrainConfig.from_dict(
        dict(
            stage=1,
            model="tiny",
            text_encoder=str(clip_folder),
            pixel_space=True,
            tiny_config=tiny,
            data="shapes",
            data_dir=str(shapes),
            train_batch_size=4,
            max_train_steps=2,
            checkpointing_steps=0,
            report_to="none",
            output_dir=str(out),
        )  # fmt: skip
    )
    pipe_dir = train(cfg)
    exported, _ = load_text_tower(clip_folder)
    from transformers import CLIPTextModel

    saved = CLIPTextModel.from_pretrained(pipe_dir / "text_encoder")
    for k, v in exported.state_dict().items():
        assert torch.equal(saved.state_dict()[k], v), k  # frozen: exported unchanged

    narrow = TrainConfig.from_dict({**cfg.to_dict(), "tiny_config": {**tiny, "text_dim": 32}})
    with pytest.raises(ValueError, match="text_dim to 64"):
        train(narrow.replace(output_dir=str(tmp_path / "run2")))


@pytest.mark.parametrize("prob", [0.0, 1.0])
def test_reward_text_dropout_sends_the_empty_texts_with_the_scores(prob, tmp_path, monkeypatch):
    data = tmp_path / "data"
    make_rewardedit(data, 8)
    seen = []
    forward = MRCUNet.forward

    def spy(self, *args, **kwargs):
        seen.append((kwargs["scores"].clone(), kwargs["reward_text_embeds"].clone()))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(MRCUNet, "forward", spy)
    cfg = TrainConfig.from_dict(
        settings(
            data,
            tmp_path / "run",
            max_train_steps=1,
            train_batch_size=8,
            reward_text_dropout_prob=prob,
        )  # fmt: skip
    )
    train(cfg)
    scores, texts = seen[0]
    assert not torch.all(scores == 5)  # the scores always go through
    rows_equal = torch.allclose(texts, texts[:1].expand_as(texts))
    # make_rewardedit writes different failure texts: only dropout makes all rows the same
    assert rows_equal == (prob == 1.0)
