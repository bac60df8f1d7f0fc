"""The trainer for users of diffusers' InstructPix2Pix example: starting from a text-to-image SD
checkpoint (conv_in widened), refusing unusable checkpoints before any work, random flips that
keep the cache exact and resume exactly, the model card and hub upload (against a local
stand-in, never the network), trackers, epochs and the GPU knobs' flag handling on the CPU.
"""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests._train_helpers import losses, make_rewardedit, settings
from train.checkpoints import read_metrics
from train.config import TrainConfig
from train.loop import train


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rewardedit")
    make_rewardedit(root, 16)
    return root


@pytest.fixture(scope="module")
def text_to_image(tmp_path_factory) -> Path:
    """A tiny Stable Diffusion text-to-image pipeline folder: a 4-channel UNet."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    from core.tiny import TinyConfig, build_components, unet_config

    cfg = TinyConfig()
    parts = build_components(cfg, seed=0)
    torch.manual_seed(7)
    parts["unet"] = UNet2DConditionModel(**unet_config(cfg) | {"in_channels": cfg.latent_channels})
    path = tmp_path_factory.mktemp("sd") / "t2i"
    StableDiffusionPipeline(
        **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    ).save_pretrained(path)
    return path


# -- starting from a text-to-image checkpoint ---------------------------------------------------


def test_widened_unet_ignores_the_new_channels_and_equals_the_original():
    from diffusers import UNet2DConditionModel

    from core.tiny import TinyConfig, unet_config
    from train.starting_checkpoint import widen_conv_in

    cfg = TinyConfig()
    c = cfg.latent_channels
    torch.manual_seed(1)
    original = UNet2DConditionModel(**unet_config(cfg) | {"in_channels": c}).eval()
    wide = UNet2DConditionModel.from_config(original.config).eval()
    wide.load_state_dict(original.state_dict())
    widen_conv_in(wide, 2 * c)
    assert wide.config.in_channels == 2 * c and wide.conv_in.weight.shape[1] == 2 * c
    assert torch.count_nonzero(wide.conv_in.weight[:, c:]) == 0
    assert torch.equal(wide.conv_in.weight[:, :c], original.conv_in.weight)
    assert torch.equal(wide.conv_in.bias, original.conv_in.bias)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, c, 8, 8, generator=g)
    image_latents = torch.randn(2, c, 8, 8, generator=g) * 3
    text = torch.randn(2, 77, cfg.text_dim, generator=g)
    t = torch.tensor([10, 500])
    with torch.no_grad():
        expected = original(x, t, text).sample
        got = wide(torch.cat([x, image_latents], 1), t, text).sample
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="already takes 8 channels"):
        widen_conv_in(wide, 8)


def test_text_to_image_checkpoint_trains_stage1_and_exports_an_instructpix2pix_pipeline(
    data, text_to_image, tmp_path, capsys
):
    from diffusers import StableDiffusionInstructPix2PixPipeline, UNet2DConditionModel

    lr, steps = 1e-4, 2
    out = tmp_path / "s1"
    path = train(
        TrainConfig.from_dict(
            settings(
                data,
                out,
                stage=1,
                model=str(text_to_image),
                max_train_steps=steps,
                learning_rate=lr,
            )  # fmt: skip
        )
    )
    assert "UNet conv_in widened from 4 to 8 input channels" in capsys.readouterr().out
    report = json.loads((out / "data_report.json").read_text())
    assert "conv_in widened from 4 to 8" in report["model"]
    stock = StableDiffusionInstructPix2PixPipeline.from_pretrained(path)
    assert stock.unet.config.in_channels == 8
    before = UNet2DConditionModel.from_pretrained(text_to_image, subfolder="unet").conv_in
    new = stock.unet.conv_in.weight[:, 4:]
    # The new channels started at zero: AdamW moves a weight by at most ~lr per step.
    assert 0 < new.abs().max() <= steps * lr * 1.01
    assert new.abs().max() < 1e-2 * before.weight.abs().max()  # vs the trained channels
    moved = (stock.unet.conv_in.weight[:, :4] - before.weight).abs().max()
    assert moved <= steps * lr * 1.01 + 1e-6


def test_unusable_checkpoints_are_refused_before_the_cache_is_built(data, text_to_image, tmp_path):
    out = tmp_path / "refused"
    with pytest.raises(ValueError, match="is a text-to-image model .* Train stage 1 first"):
        train(TrainConfig.from_dict(settings(data, out, stage=2, model=str(text_to_image))))
    inpaint = tmp_path / "inpaint"
    shutil.copytree(text_to_image, inpaint)
    unet_cfg = json.loads((inpaint / "unet" / "config.json").read_text())
    (inpaint / "unet" / "config.json").write_text(json.dumps(unet_cfg | {"in_channels": 9}))
    with pytest.raises(ValueError, match="takes 9 input channels, but training needs 8"):
        train(TrainConfig.from_dict(settings(data, out, stage=1, model=str(inpaint))))
    shutil.rmtree(inpaint / "vae")
    with pytest.raises(ValueError, match="it has no vae config"):
        train(TrainConfig.from_dict(settings(data, out, stage=1, model=str(inpaint))))
    with pytest.raises(ValueError, match="neither a pipeline folder nor a hub id"):
        train(TrainConfig.from_dict(settings(data, out, stage=1, model=str(tmp_path / "nope"))))
    assert not (tmp_path / "cache").exists() and not out.exists()  # no work was done


# -- random flips -----------------------------------------------------------------------------------


def test_flip_draws_are_seeded_per_epoch_and_example():
    from train.data_order import EpochBatchSampler

    a = EpochBatchSampler(16, 4, seed=3, flip=True)
    b = EpochBatchSampler(16, 2, num_processes=2, process_index=1, seed=3, flip=True)
    epoch0 = dict(x for k in range(4) for x in a.batch(k))
    assert sorted(epoch0) == list(range(16)) and 0 < sum(epoch0.values()) < 16
    assert dict(x for k in range(4) for x in b.batch(k)).items() <= epoch0.items()  # epoch 0
    epoch1 = dict(x for k in range(4, 8) for x in a.batch(k))
    assert epoch1 != epoch0  # a fresh coin per epoch
    assert EpochBatchSampler(16, 4, seed=3).batch(0) == [i for i, _ in a.batch(0)]


@pytest.mark.slow
def test_random_flip_cached_equals_uncached_and_resumes_exactly(data, tmp_path):
    kw = dict(random_flip=True, max_train_steps=4, train_batch_size=8)
    cached, uncached = tmp_path / "cached", tmp_path / "uncached"
    train(TrainConfig.from_dict(settings(data, cached, **kw)))
    train(TrainConfig.from_dict(settings(data, uncached, cache=False, **kw)))
    np.testing.assert_allclose(losses(cached), losses(uncached), rtol=0, atol=1e-5)
    meta = json.loads(next((tmp_path / "cache").glob("*/meta.json")).read_text())
    assert meta["views"] == ["identity", "hflip"]
    assert (next((tmp_path / "cache").glob("*/original_hflip.npy"))).is_file()

    resumed = tmp_path / "resumed"
    train(TrainConfig.from_dict(settings(data, resumed, **kw | {"max_train_steps": 2},
                                         checkpointing_steps=2)))  # fmt: skip
    train(TrainConfig.from_dict(settings(data, resumed, **kw, resume_from_checkpoint="latest")))
    assert [m["step"] for m in read_metrics(resumed)] == [1, 2, 3, 4]
    np.testing.assert_allclose(losses(resumed), losses(cached), rtol=0, atol=1e-6)


def test_flipped_cache_view_is_the_encoding_of_the_flipped_images(data, tmp_path):
    from train.cache import TrainCache
    from train.datasets import load_pair
    from train.models import build_models
    from train.sources import load_source

    cfg = TrainConfig.from_dict(settings(data, tmp_path / "x", random_flip=True, stage=1))
    train(cfg.replace(max_train_steps=1))
    cache = TrainCache(next((tmp_path / "cache").glob("*/meta.json")).parent)
    vae = build_models(cfg).vae
    ex = {e.id: e for e in load_source(cfg).examples}[cache.ids[5]]
    original, _ = load_pair(ex, 32)
    flipped = cache.gather([5], [True])["original_latents"]
    plain = cache.gather([5], [False])["original_latents"]
    with torch.no_grad():
        expected = vae.encode(original.flip(-1)[None]).latent_dist.mean
    torch.testing.assert_close(flipped, expected, rtol=0, atol=1e-5)
    assert (flipped - plain).abs().max() > 1e-3  # the tiny VAE is not flip-equivariant


# -- logging and publishing ------------------------------------------------------------------------


class LocalHub:
    """A stand-in for the Hub: HfApi's create_repo / upload_folder copy into a folder."""

    def __init__(self, root: Path):
        self.root, self.calls = root, []

    def create_repo(self, api, repo_id, exist_ok=False, **kw):
        self.calls.append(("create_repo", repo_id, exist_ok))
        return types.SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, api, *, repo_id, folder_path, **kw):
        self.calls.append(("upload_folder", repo_id, kw.get("commit_message")))
        shutil.copytree(folder_path, self.root / repo_id, dirs_exist_ok=True)


def test_push_to_hub_uploads_the_pipeline_with_a_model_card(data, tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    hub = LocalHub(tmp_path / "hub")
    monkeypatch.setattr(HfApi, "create_repo", lambda self, *a, **k: hub.create_repo(self, *a, **k))
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **k: hub.upload_folder(self, **k))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_TOKEN", "hf_local_stand_in")
    image = tmp_path / "mine.png"
    Image.new("RGB", (40, 32), (200, 20, 20)).save(image)
    out = tmp_path / "pub"
    cfg = TrainConfig.from_dict(
        settings(data, out, num_train_epochs=1, push_to_hub=True, hub_model_id="me/tiny-mrc",
                 report_to="tensorboard",
                 validation_prompt="turn the red square blue", validation_image=str(image),
                 validation_steps=4, num_validation_images=1, validation_inference_steps=2)
    )  # fmt: skip
    train(cfg)
    assert [m["step"] for m in read_metrics(out)] == [1, 2, 3, 4]  # 16 examples / batch 4
    assert [c[0] for c in hub.calls] == ["create_repo", "upload_folder"]
    repo = tmp_path / "hub" / "me" / "tiny-mrc"
    assert (repo / "model_index.json").is_file() and (repo / "unet").is_dir()
    card = (repo / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: diffusers")
    for part in ("## Data", "source: `rewardedit`", "used: 16", "## Rewards",
                 "learned null reward with probability 0.1", "labels.json", "## Results",
                 "steps: 4", "samples seen: 16", "epochs: 1.0", "final loss mean last 50",
                 "## Training config", "num_train_epochs: 1", "hub_model_id: me/tiny-mrc"):  # fmt: skip
        assert part in card, part
    assert "![validation](validation.png)" in card and (repo / "validation.png").is_file()
    grid = Image.open(out / "validation" / "step-0000004.png")
    assert grid.size == (4 * 128, 2 * 128)  # one training example + the user's own row
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "logs" / "train"), size_guidance={"images": 0})
    events.Reload()
    assert events.Tags()["images"] == ["input | target | edit @5/5/5 | edit @0/5/5"]


def test_push_to_hub_without_a_token_and_missing_packages_fail_before_any_work(
    data, tmp_path, monkeypatch
):
    import huggingface_hub

    import train.integrations as integrations

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)  # not logged in
    out = tmp_path / "x"
    with pytest.raises(ValueError, match="push_to_hub needs a Hugging Face token"):
        train(TrainConfig.from_dict(settings(data, out, push_to_hub=True)))
    monkeypatch.setattr(integrations, "_installed", lambda name: False)
    for flag, message in (
        ({"report_to": "wandb"}, "report_to='wandb' needs the wandb package"),
        ({"use_8bit_adam": True}, "use_8bit_adam needs the bitsandbytes package"),
        ({"enable_xformers_memory_efficient_attention": True}, "needs the xformers package"),
    ):
        with pytest.raises(ValueError, match=message):
            train(TrainConfig.from_dict(settings(data, out, **flag)))
    assert not out.exists() and not (tmp_path / "cache").exists()
    monkeypatch.setattr(integrations, "_installed", lambda name: True)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs a CUDA GPU"):
            integrations.check_integrations(
                TrainConfig.from_dict(
                    settings(data, out, enable_xformers_memory_efficient_attention=True)
                )
            )


def test_config_errors_of_the_new_settings(data, tmp_path):
    base = settings(data, tmp_path / "x")
    for changes, message in (
        ({"validation_prompt": "make it blue"}, "validation_prompt and validation_image go"),
        (
            {"validation_prompt": "x", "validation_image": "x.png"},
            "set validation_steps too",
        ),
        ({"hub_model_id": "me/x"}, "hub_model_id is only used with push_to_hub"),
        ({"report_to": "comet"}, "report_to must be one of 'tensorboard', 'wandb', 'all'"),
        ({"num_train_epochs": -1}, "num_train_epochs must not be negative"),
    ):
        with pytest.raises(ValueError, match=message):
            TrainConfig.from_dict(base | changes)
    bad_image = tmp_path / "not_an_image.png"
    bad_image.write_text("hello")
    import train.integrations as integrations

    cfg = TrainConfig.from_dict(
        base | {"validation_prompt": "x", "validation_image": str(bad_image), "validation_steps": 1}
    )
    with pytest.raises(ValueError, match="cannot be read as an image"):
        integrations.check_integrations(cfg)


# -- GPU knobs (flag handling on the CPU) ------------------------------------------------------------


def test_gpu_knobs_tf32_and_8bit_adam_flag_handling(data, tmp_path, monkeypatch):
    import train.integrations as integrations

    cfg = TrainConfig.from_dict(settings(data, tmp_path / "x", allow_tf32=True, use_8bit_adam=True))
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        done = integrations.apply_speed_settings(cfg, unet=None)
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert done[0].startswith("TF32")
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    made = {}

    class AdamW8bit(torch.optim.AdamW):  # bitsandbytes' class, standing in on the CPU
        def __init__(self, params, **kw):
            made.update(kw)
            super().__init__(params, **kw)

    fake = types.ModuleType("bitsandbytes")
    fake.optim = types.SimpleNamespace(AdamW8bit=AdamW8bit)
    monkeypatch.setitem(sys.modules, "bitsandbytes", fake)
    params = [torch.nn.Parameter(torch.zeros(3))]
    opt = integrations.make_optimizer(cfg, params, lr=0.5)
    assert isinstance(opt, AdamW8bit)
    assert made == {"lr": 0.5, "betas": (0.9, 0.999), "weight_decay": 1e-2, "eps": 1e-8}
    plain = integrations.make_optimizer(cfg.replace(use_8bit_adam=False), params, lr=0.5)
    assert type(plain) is torch.optim.AdamW and plain.defaults["fused"]


# -- data and model loading flags of the diffusers example ---------------------------------------


def test_imagefolder_with_two_image_columns_trains_and_config_names_reach_datasets(tmp_path):
    """diffusers' --train_data_dir: an imagefolder whose metadata.jsonl names both images
    (``input_image_file_name``, ``edited_image_file_name``) loads with --data hf."""
    folder = tmp_path / "folder"
    folder.mkdir()
    rows = []
    for i in range(4):
        for kind, v in (("in", 40), ("out", 200)):
            Image.fromarray(np.full((32, 32, 3), v + i, np.uint8)).save(folder / f"{kind}{i}.png")
        rows.append({"input_image_file_name": f"in{i}.png", "edited_image_file_name": f"out{i}.png",
                     "edit_prompt": "make it brighter"})  # fmt: skip
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    cfg = TrainConfig.from_dict(dict(data="hf", data_dir=str(folder), stage=1, train_batch_size=2,
                                     max_train_steps=1, report_to="none", output_dir=str(out)))  # fmt: skip
    train(cfg)
    report = json.loads((out / "data_report.json").read_text())
    assert report["used"] == 4 and report["source"] == "hf"
    with pytest.raises(ValueError, match="BuilderConfig 'nope' not found|nope"):
        train(cfg.replace(dataset_config_name="nope", output_dir=str(tmp_path / "r2")))
    with pytest.raises(ValueError, match="dataset_config_name applies to data='hf' only"):
        cfg.replace(data="shapes", dataset_config_name="x")


def test_variant_weights_load_with_variant(tmp_path, data):
    """--variant picks the variant's weight files, as diffusers' from_pretrained(variant=...)."""
    from core.pipeline import MRCInstructPix2PixPipeline
    from core.tiny import TinyConfig, build_components

    folder = tmp_path / "fp16"
    MRCInstructPix2PixPipeline(**build_components(TinyConfig(), seed=0)).save_pretrained(
        folder, variant="fp16"
    )
    assert list((folder / "unet").glob("*.fp16.safetensors"))
    out = tmp_path / "run"
    cfg = TrainConfig.from_dict(settings(data, out, stage=1, model=str(folder), variant="fp16",
                                         max_train_steps=1))  # fmt: skip
    train(cfg)
    assert "(variant fp16)" in json.loads((out / "data_report.json").read_text())["model"]
    with pytest.raises(ValueError, match="not model='tiny'"):
        cfg.replace(model="tiny")
