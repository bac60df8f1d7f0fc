"""The trainer: config, short runs, checkpoints, exact resume, cache parity, several processes.

Everything runs on the tiny SD-shaped components of core.tiny (32 px, ~1 M parameters) on the
CPU, with a few dozen synthetic coloured-square edits written into tmp folders.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tests._train_helpers import ROOT, cli, env, losses, make_rewardedit, settings
from train.checkpoints import read_metrics
from train.config import TrainConfig, build_parser, parse_args
from train.loop import train


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rewardedit")
    make_rewardedit(root, 16)
    return root


# -- config -----------------------------------------------------------------------------------


def test_help_documents_every_flag_with_default():
    text = build_parser().format_help()
    for name in TrainConfig.__dataclass_fields__:
        assert f"--{name}" in text, name
    assert text.count("(default:") == len(TrainConfig.__dataclass_fields__)
    assert "--use_ema, --no-use_ema" in text and "--cache, --no-cache" in text


def test_yaml_then_flags_precedence_and_errors(tmp_path):
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(
        "data_dir: /x\nlearning_rate: 1e-3\nuse_ema: true\ntiny_config:\n  unet_channels: [16, 32]\n"
    )
    cfg = parse_args(["--config", str(cfg_file), "--no-use_ema", "--max_train_steps", "7"])
    assert (cfg.learning_rate, cfg.use_ema, cfg.max_train_steps) == (1e-3, False, 7)
    assert cfg.tiny_config == {"unet_channels": [16, 32]}
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg  # the saved YAML round-trips
    with pytest.raises(ValueError, match="unknown setting"):
        TrainConfig.from_dict({"data_dir": "/x", "learnig_rate": 1})
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        TrainConfig.from_dict({"data_dir": "/x", "prediction_type": "sample"})
    with pytest.raises(ValueError, match="trainable='reward' needs stage 2"):
        TrainConfig.from_dict({"data_dir": "/x", "trainable": "reward"})
    with pytest.raises(ValueError, match="tiny_config has unknown field"):
        TrainConfig.from_dict({"data_dir": "/x", "tiny_config": {"width": 3}})


# -- a short run --------------------------------------------------------------------------------


def test_few_step_run_overfits_and_writes_checkpoints_and_pipeline(data, tmp_path):
    out = tmp_path / "run"
    cfg = TrainConfig.from_dict(
        settings(
            data,
            out,
            max_train_samples=4,
            max_train_steps=24,
            checkpointing_steps=8,
            checkpoints_total_limit=2,
            learning_rate=2e-3,
            conditioning_dropout_prob=0.0,
            use_ema=True,
            ema_decay=0.9,
            validation_steps=24,
            num_validation_images=2,
            validation_inference_steps=2,
        )  # fmt: skip
    )
    path = train(cfg)
    curve = losses(out)
    assert len(curve) == 24
    assert np.mean(curve[-5:]) < 0.4 * np.mean(curve[:5])  # one batch of 4, memorised

    ckpts = sorted(p.name for p in out.glob("checkpoint-*"))
    assert ckpts == ["checkpoint-16", "checkpoint-24"]  # total limit 2: checkpoint-8 removed
    ck = out / "checkpoint-16"
    for name in ("model.safetensors", "optimizer.bin", "random_states_0.pkl", "config.yaml"):
        assert (ck / name).is_file(), name
    assert len(list(ck.glob("custom_checkpoint_*.pkl"))) == 3  # LR schedule, progress, EMA
    assert TrainConfig.load(ck / "config.yaml") == cfg
    assert json.loads((ck / "train_state.json").read_text())["global_step"] == 16
    weights = load_file(ck / "model.safetensors")
    assert any(k.startswith("reward_module.") for k in weights)
    assert any(k.startswith("unet.") for k in weights)
    assert (out / "validation" / "step-0000024.png").is_file()

    from core.pipeline import MRCInstructPix2PixPipeline

    pipe = MRCInstructPix2PixPipeline.from_pretrained(path)
    assert pipe.scheduler.config.prediction_type == "epsilon"
    assert TrainConfig.load(path / "training_config.yaml") == cfg
    img = Image.open(data / "0000" / "0_0.png")
    out_img = pipe("turn the red square blue", img, num_inference_steps=2).images[0]
    assert out_img.size == (32, 32)
    # The exported weights are the EMA weights, not the raw ones.
    raw = load_file(out / "checkpoint-24" / "model.safetensors")
    k = "unet.conv_in.weight"
    assert not torch.equal(pipe.unet.conv_in.weight, raw[k])


def test_stage1_exports_stock_instructpix2pix_layout(data, tmp_path):
    from diffusers import StableDiffusionInstructPix2PixPipeline

    from core.pipeline import MRCInstructPix2PixPipeline

    out = tmp_path / "s1"
    path = train(
        TrainConfig.from_dict(
            settings(data, out, stage=1, max_train_steps=2, prediction_type="v_prediction")
        )
    )
    index = json.loads((path / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionInstructPix2PixPipeline"
    stock = StableDiffusionInstructPix2PixPipeline.from_pretrained(path)
    assert stock.scheduler.config.prediction_type == "v_prediction"
    ours = MRCInstructPix2PixPipeline.from_pretrained(path)
    assert torch.equal(ours.unet.conv_in.weight, stock.unet.conv_in.weight)

    # Fine-tuning it keeps its noise schedule (v-prediction) unless told otherwise ...
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tuned = train(TrainConfig.from_dict(settings(data, tmp_path / "s2", model=str(path))))
    assert not [w for w in caught if "was trained with" in str(w.message)]
    assert (
        json.loads((tuned / "scheduler" / "scheduler_config.json").read_text())["prediction_type"]
        == "v_prediction"
    )
    # ... and an explicit change is allowed but warned about.
    with pytest.warns(UserWarning, match="trained with {'prediction_type': 'v_prediction'}"):
        cfg = settings(data, tmp_path / "s3", model=str(path), prediction_type="epsilon")
        train(TrainConfig.from_dict(cfg))


def test_cached_and_uncached_runs_follow_the_same_curve(data, tmp_path):
    a, b = tmp_path / "cached", tmp_path / "uncached"
    train(TrainConfig.from_dict(settings(data, a, max_train_steps=3)))
    train(TrainConfig.from_dict(settings(data, b, max_train_steps=3, cache=False)))
    np.testing.assert_allclose(losses(a), losses(b), rtol=0, atol=1e-5)
    meta = json.loads(next((tmp_path / "cache").glob("*/meta.json")).read_text())
    assert meta["n"] == 16 and meta["distinct_instructions"] <= 12


def test_identity_vae_gives_pixel_space_through_the_stock_pipeline(data, tmp_path):
    from diffusers import AutoencoderKL

    from core.pipeline import MRCInstructPix2PixPipeline
    from train.models import identity_vae

    vae = identity_vae(32)
    x = torch.cat(
        [torch.rand(4, 3, 32, 32) * 2 - 1, torch.ones(1, 3, 32, 32), -torch.ones(1, 3, 32, 32)]
    )
    with torch.no_grad():
        dist = vae.encode(x).latent_dist
        assert (dist.mode() - x).abs().max() < 2e-5 and dist.std.max() < 1e-6  # latents = pixels
        assert (vae.decode(dist.mode()).sample - x).abs().max() < 3e-5
    out = tmp_path / "px"
    path = train(TrainConfig.from_dict(settings(data, out, pixel_space=True, max_train_steps=1)))
    pipe = MRCInstructPix2PixPipeline.from_pretrained(path)
    assert isinstance(pipe.vae, AutoencoderKL) and pipe.unet.config.in_channels == 6
    assert pipe.unet.config.sample_size == 32
    img = Image.open(data / "0000" / "0_0.png")
    assert pipe("turn the red square blue", img, num_inference_steps=2).images[0].size == (32, 32)
    with pytest.raises(ValueError, match="pixel_space fixes the VAE"):
        TrainConfig.from_dict(
            settings(data, out, pixel_space=True, tiny_config={"latent_channels": 4})
        )


def test_stage0_trains_the_vae_and_sets_its_scaling_factor(data, tmp_path):
    from diffusers import AutoencoderKL

    out = tmp_path / "vae"
    path = train(
        TrainConfig.from_dict(settings(data, out, stage=0, max_train_steps=3, learning_rate=1e-3))
    )
    assert len(losses(out)) == 3 and all(np.isfinite(losses(out)))
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae")
    assert vae.config.scaling_factor != 0.18215  # calibrated: 1 / std of the training latents
    before = TrainConfig.from_dict(settings(data, tmp_path / "x"))
    from train.models import build_models

    fresh = build_models(before).vae.state_dict()
    assert any(not torch.equal(fresh[k], v) for k, v in vae.state_dict().items())


def test_validation_mid_run_does_not_change_the_trajectory(data, tmp_path):
    a, b = tmp_path / "plain", tmp_path / "validated"
    kw = dict(max_train_steps=4, use_ema=True)
    train(TrainConfig.from_dict(settings(data, a, **kw)))
    train(TrainConfig.from_dict(settings(data, b, **kw, validation_steps=2, num_validation_images=2,
                                         validation_inference_steps=2)))  # fmt: skip
    assert losses(a) == losses(b)  # bit for bit: validation uses its own RNG and the EMA swap
    assert sorted(p.name for p in (b / "validation").iterdir()) == [
        "step-0000002.png",
        "step-0000004.png",
    ]
    grid = Image.open(b / "validation" / "step-0000002.png")
    assert grid.size == (4 * 128, 2 * 128)  # input | target | edit @5/5/5 | edit @0/5/5


def test_bf16_run_with_checkpointing_exports_the_float32_encoders_unchanged(data, tmp_path):
    from accelerate.state import AcceleratorState
    from transformers import CLIPTextModel

    from train.models import build_models

    AcceleratorState._reset_state(reset_partial_state=True)  # other tests ran without bf16
    kw = dict(mixed_precision="bf16", gradient_checkpointing=True, max_train_steps=2,
              validation_steps=2, num_validation_images=1, validation_inference_steps=2)  # fmt: skip
    cfg = TrainConfig.from_dict(settings(data, tmp_path / "bf16", **kw))
    try:
        path = train(cfg)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert np.isfinite(losses(tmp_path / "bf16")).all()
    fresh = build_models(cfg).text_encoder.state_dict()
    saved = CLIPTextModel.from_pretrained(path, subfolder="text_encoder").state_dict()
    assert all(
        saved[k].dtype == torch.float32 and torch.equal(saved[k], v) for k, v in fresh.items()
    )


# -- exact resume -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_kill_and_resume_reproduces_the_uninterrupted_run(data, tmp_path):
    kw = dict(max_train_steps=14, checkpointing_steps=2, use_ema=True, lr_scheduler="cosine",
              lr_warmup_steps=3, gradient_accumulation_steps=2, train_batch_size=2)  # fmt: skip
    ref = tmp_path / "ref"
    # the reference runs as a subprocess with the same single-thread environment as the killed
    # run: pytest's own process may use more threads, whose reductions differ in the last bits
    subprocess.run([sys.executable, "-m", "train", *cli(settings(data, ref, **kw))], cwd=ROOT,
                   env=env(), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip

    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "train", *cli(settings(data, out, **kw))]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while not (out / "checkpoint-4").is_dir():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "pipeline").exists()  # really interrupted
    done = int(read_metrics(out)[-1]["step"])
    assert 4 <= done < 14

    subprocess.run(cmd + ["--resume_from_checkpoint", "latest"], cwd=ROOT, env=env(), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    steps = [m["step"] for m in read_metrics(out)]
    assert steps == list(range(1, 15))  # one trajectory: the replayed steps were cut back
    np.testing.assert_allclose(losses(out), losses(ref), rtol=0, atol=1e-5)
    a = load_file(ref / "checkpoint-14" / "model.safetensors")
    b = load_file(out / "checkpoint-14" / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5


def test_resume_refuses_changed_run_settings(data, tmp_path):
    out = tmp_path / "run"
    train(TrainConfig.from_dict(settings(data, out, max_train_steps=2, checkpointing_steps=2)))
    with pytest.raises(ValueError, match="already holds checkpoints"):
        train(TrainConfig.from_dict(settings(data, out, max_train_steps=2)))  # fresh run: refused
    changed = settings(data, out, max_train_steps=4, seed=1, resume_from_checkpoint="latest")
    with pytest.raises(ValueError, match="seed: checkpoint has 0, this run has 1"):
        train(TrainConfig.from_dict(changed))
    # A longer budget is an allowed change and continues from step 2.
    train(
        TrainConfig.from_dict(
            settings(data, out, max_train_steps=3, resume_from_checkpoint="latest")
        )
    )
    assert [m["step"] for m in read_metrics(out)] == [1, 2, 3]
    # Ending at an earlier checkpoint exports it without training (cutting two runs to one step).
    (out / "pipeline" / "model_index.json").unlink()
    ck2 = str(out / "checkpoint-2")
    train(TrainConfig.from_dict(settings(data, out, max_train_steps=2, resume_from_checkpoint=ck2)))
    assert [m["step"] for m in read_metrics(out)] == [1, 2]
    assert (out / "pipeline" / "model_index.json").is_file()


# -- several processes --------------------------------------------------------------------------------


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes_trains_and_saves(data, tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", "29517", "-m", "train",
        *cli(settings(data, out, max_train_steps=2, checkpointing_steps=2)),
    ]  # fmt: skip
    e = env() | {"ACCELERATE_USE_CPU": "1"}
    subprocess.run(
        cmd, cwd=ROOT, env=e, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    ck = out / "checkpoint-2"
    assert (ck / "random_states_0.pkl").is_file() and (ck / "random_states_1.pkl").is_file()
    state = json.loads((ck / "train_state.json").read_text())
    assert state["num_processes"] == 2 and state["global_batch"] == 8
    assert len(read_metrics(out)) == 2  # only the main process logs
    assert (out / "pipeline" / "model_index.json").is_file()
