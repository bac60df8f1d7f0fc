"""Importing the authors' stage-2 UNet (core.authors_import) with synthetic state dicts."""

from __future__ import annotations

import json
import logging

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import EulerAncestralDiscreteScheduler
from safetensors.torch import save_file

from core.authors_import import (
    load_authors_pipeline,
    load_authors_unet,
    read_state_dict,
    reward_module_from_authors,
    split_state_dict,
)
from core.mrc import MultiRewardCondition, encode_reward_text
from core.mrc_unet import MRCUNet
from core.tiny import TinyConfig, build_components, unet_config
from tests.test_mrc_module import AUTHORS_SD15, SD15_UNET

CFG = TinyConfig()


def synthetic(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) * 0.05 for k, s in shapes.items()}


def authors_unet_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A tiny stage-2 UNet in the authors' layout: stock keys + MRC keys at the UNet's top level."""
    unet = build_components(CFG, seed)["unet"]
    mrc = MultiRewardCondition.from_unet_config(unet.config, CFG.text_dim, identity_init=False)
    mrc_sd = {k: v for k, v in mrc.state_dict().items() if not k.startswith("null_")}
    return {**unet.state_dict(), **synthetic({k: tuple(v.shape) for k, v in mrc_sd.items()}, seed)}


def write_authors_unet(folder, state_dict, **config_overrides) -> None:
    folder.mkdir(parents=True)
    config = {"_class_name": "UNet2DConditionModel", "_diffusers_version": "0.25.0",
              **unet_config(CFG), **config_overrides}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in state_dict.items()},
              str(folder / "diffusion_pytorch_model.safetensors"))  # fmt: skip


def test_sd15_mrc_keys_load_one_to_one():
    sd = synthetic(AUTHORS_SD15)
    module, report = reward_module_from_authors(sd, SD15_UNET)
    assert report.mrc_keys == sorted(AUTHORS_SD15)  # every key consumed
    assert report.new_keys == ["null_tokens", "null_time"]
    own = module.state_dict()
    for key, value in sd.items():
        assert torch.equal(own[key], value), key
    assert module.config.empty_text == "None" and module.config.num_heads == 8
    with torch.no_grad():  # the forward runs at SD 1.5 sizes
        cond = module(torch.tensor([[5.0, 3.0, 1.0]]), torch.randn(1, 768))
        out = module.reward_encoder(torch.randn(1, 320, 8, 8), cond.tokens)
    assert cond.time_emb.shape == (1, 1280) and cond.tokens.shape == (1, 2, 320)
    assert out.shape == (1, 320, 8, 8) and torch.isfinite(out).all()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda sd: sd.pop("ca.output.LayerNorm.bias"), "missing keys \\['ca.output.LayerNorm.bias'\\]"),
        (lambda sd: sd.__setitem__("ca.extra.weight", torch.zeros(1)), "unexpected keys"),
        (lambda sd: sd.__setitem__("text_linear2.bias", torch.zeros(7)), "text_linear2.bias: checkpoint \\(7,\\)"),
        (lambda sd: sd.pop("text_linear.weight"), "not an MRC stage-2 UNet"),
    ],
)  # fmt: skip
def test_mismatched_state_dicts_are_refused(edit, message):
    sd = synthetic(AUTHORS_SD15)
    edit(sd)
    with pytest.raises(ValueError, match=message):
        reward_module_from_authors(sd, SD15_UNET)


def test_split_keeps_stock_keys_for_the_stock_unet():
    sd = authors_unet_state_dict()
    unet_sd, mrc_sd = split_state_dict(sd)
    stock_keys = set(build_components(CFG, 0)["unet"].state_dict())
    assert set(unet_sd) == stock_keys and len(unet_sd) + len(mrc_sd) == len(sd)
    assert all(k.split(".")[0] in ("add_embedding", "add_embedding2", "text_linear",
                                   "text_linear2", "proj_deal", "ca") for k in mrc_sd)  # fmt: skip


def test_full_unet_import_and_forward(tmp_path, caplog):
    sd = authors_unet_state_dict()
    write_authors_unet(tmp_path / "unet", sd, addition_embed_type="text")
    with caplog.at_level(logging.WARNING):
        unet, module, report = load_authors_unet(tmp_path / "unet")
    assert "Ignoring addition_embed_type" in caplog.text
    assert report.consumed == len(sd) and set(report.unet_keys) | set(report.mrc_keys) == set(sd)
    for key in report.unet_keys:
        assert torch.equal(unet.state_dict()[key], sd[key])
    wrapped = MRCUNet(unet, module)
    x, enc = torch.randn(1, 8, 16, 16), torch.randn(1, 77, CFG.text_dim)
    with torch.no_grad():
        out = wrapped(x, 500, enc, scores=torch.tensor([[5.0, 5, 5]]),
                      reward_text_embeds=torch.randn(1, CFG.text_dim)).sample  # fmt: skip
        stock = unet(x, 500, enc).sample
    assert out.shape == (1, 4, 16, 16) and (out - stock).abs().max() > 1e-4
    assert (
        read_state_dict(tmp_path / "unet" / "diffusion_pytorch_model.safetensors").keys()
        == sd.keys()
    )


def test_sharded_weights_are_read(tmp_path):
    sd = authors_unet_state_dict()
    keys = sorted(sd)
    shards = {"a.safetensors": keys[: len(keys) // 2], "b.safetensors": keys[len(keys) // 2 :]}
    for name, part in shards.items():
        save_file({k: sd[k].contiguous() for k in part}, str(tmp_path / name))
    weight_map = {k: name for name, part in shards.items() for k in part}
    (tmp_path / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"weight_map": weight_map})
    )
    loaded = read_state_dict(tmp_path)
    assert loaded.keys() == sd.keys() and all(torch.equal(loaded[k], sd[k]) for k in sd)


def test_authors_pipeline_folder_loads_and_edits(tmp_path):
    parts = build_components(CFG, 0, scheduler="ddim")
    for name in ("vae", "text_encoder", "tokenizer", "scheduler"):
        parts[name].save_pretrained(tmp_path / name)
    write_authors_unet(tmp_path / "unet", authors_unet_state_dict())
    pipe = load_authors_pipeline(tmp_path)
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.scheduler, EulerAncestralDiscreteScheduler)  # as their eval.py
    # Empty failure texts are encoded as the authors' "None; None; None".
    ours = pipe.encode_reward_text([("", "", "")])
    theirs = encode_reward_text(["None; None; None"], pipe.tokenizer, pipe.text_encoder)
    torch.testing.assert_close(ours, theirs)
    image = PIL.Image.fromarray(np.full((32, 32, 3), 128, np.uint8))
    out = pipe("make it red", image, num_inference_steps=2, output_type="np").images
    assert out.shape == (1, 32, 32, 3) and np.isfinite(out).all()


def test_stage1_unet_is_refused_with_a_pointer(tmp_path):
    write_authors_unet(tmp_path / "unet", build_components(CFG, 0)["unet"].state_dict())
    with pytest.raises(ValueError, match="not an MRC stage-2 UNet"):
        load_authors_unet(tmp_path / "unet")
    with pytest.raises(ValueError, match="config.json"):
        load_authors_unet(tmp_path)
