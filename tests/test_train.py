"""The trainer: config, data sources, bad data, checkpoints, exact resume, cache parity, DDP.

Everything runs on the tiny SD-shaped components of core.tiny (32 px, ~1 M parameters) on the
CPU, with a few dozen synthetic coloured-square edits written into tmp folders.
"""

from __future__ import annotations

import json
import os
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

from train.checkpoints import read_metrics
from train.config import TrainConfig, build_parser, parse_args
from train.datasets import BadDataError, BadDataLog, scan
from train.loop import train
from train.sources import load_source

ROOT = Path(__file__).resolve().parents[1]
COLOURS = {
    "red": (220, 30, 30),
    "blue": (30, 30, 220),
    "green": (30, 200, 30),
    "yellow": (230, 220, 40),
}


def make_rewardedit(root: Path, n: int, seed: int = 0) -> Path:
    """n coloured-square recolour edits in the RewardEdit layout; returns the labels file."""
    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    labels = {}
    for i in range(n):
        d = root / f"{i // 4:04d}"
        d.mkdir(parents=True, exist_ok=True)
        a, b = rng.choice(4, 2, replace=False)
        img = np.zeros((32, 32, 3), np.uint8) + rng.integers(0, 255, 3).astype(np.uint8)
        edit = img.copy()
        x, y = rng.integers(4, 20, 2)
        img[y : y + 8, x : x + 8] = COLOURS[names[a]]
        edit[y : y + 8, x : x + 8] = COLOURS[names[b]]
        Image.fromarray(img).save(d / f"{i}_0.png")
        Image.fromarray(edit).save(d / f"{i}_1.png")
        (d / f"prompt_{i}.json").write_text(
            json.dumps({"edit": f"turn the {names[a]} square {names[b]}"})
        )
        s = [float(rng.integers(0, 6)) for _ in range(3)]
        texts = ["instruction executed poorly" if s[0] < 5 else "", "", "noise" if s[2] < 5 else ""]
        labels[f"{d.name}/{i}"] = [{"Score": sc, "Negative Prompt": t} for sc, t in zip(s, texts)]
    path = root / "labels.json"
    path.write_text(json.dumps(labels))
    return path


def settings(data: Path, out: Path, **kw) -> dict:
    base = dict(
        data="rewardedit",
        data_dir=str(data),
        rewards_json=str(data / "labels.json"),
        original_pattern="{id}_0.png",
        edited_pattern="{id}_1.png",
        prompt_pattern="{dir}/prompt_{name}.json",
        stage=2,
        train_batch_size=4,
        max_train_steps=4,
        checkpointing_steps=0,
        report_to="none",
        output_dir=str(out),
        cache_dir=str(out.parent / "cache"),
    )
    base.update(kw)
    return base


def cli(d: dict) -> list[str]:
    args = []
    for k, v in d.items():
        if isinstance(v, bool):
            args.append(f"--{k}" if v else f"--no-{k}")
        else:
            args += [f"--{k}", json.dumps(v) if isinstance(v, dict) else str(v)]
    return args


def env() -> dict:
    e = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    return e


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rewardedit")
    make_rewardedit(root, 16)
    return root


def losses(out: Path) -> list[float]:
    return [m["loss"] for m in read_metrics(out)]


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


# -- bad data ---------------------------------------------------------------------------------------


@pytest.fixture()
def bad_data(tmp_path) -> Path:
    root = tmp_path / "bad"
    labels_path = make_rewardedit(root, 12)
    (root / "0000" / "1_1.png").unlink()  # missing image
    good = (root / "0000" / "2_0.png").read_bytes()
    (root / "0000" / "2_0.png").write_bytes(good[: len(good) // 2])  # truncated: corrupt
    labels = json.loads(labels_path.read_text())
    labels["0000/3"][1]["Score"] = 7  # label out of range
    labels_path.write_text(json.dumps(labels))
    return root


def test_bad_data_stop_names_the_example_and_reason(bad_data, tmp_path):
    cfg = TrainConfig.from_dict(settings(bad_data, tmp_path / "run", on_bad_data="stop"))
    with pytest.raises(
        BadDataError,
        match=r"'0000/3' \(label out of range or malformed\).*must be in \[0, 5\], got 7",
    ):
        train(cfg)
    assert not (tmp_path / "run" / "pipeline").exists()
    # Image problems stop the scan with the example's id and the decoder's reason.
    examples = load_source(cfg).examples
    with pytest.raises(BadDataError, match=r"'0000/1' \(missing image\).*1_1.png does not exist"):
        list(scan(examples, BadDataLog("stop"), 32, progress=False))
    with pytest.raises(BadDataError, match=r"'0000/2' \(corrupt image\)"):
        list(
            scan([e for e in examples if e.id != "0000/1"], BadDataLog("stop"), 32, progress=False)
        )


def test_bad_data_skip_reports_counts_and_trains_on_the_rest(bad_data, tmp_path):
    out = tmp_path / "run"
    for cache in (True, False):  # the cache's second read must report the same items
        for _ in range(2 if cache else 1):
            train(
                TrainConfig.from_dict(
                    settings(bad_data, out, on_bad_data="skip", max_train_steps=1, cache=cache)
                )
            )
            bad = [json.loads(line) for line in (out / "bad_data.jsonl").read_text().splitlines()]
            assert {(b["id"], b["kind"]) for b in bad} == {
                ("0000/1", "missing_image"), ("0000/2", "corrupt_image"), ("0000/3", "bad_label")
            }  # fmt: skip
            assert all(b["reason"] for b in bad)
            report = json.loads((out / "data_report.json").read_text())
            assert report["used"] == 9 and report["bad"] == 3
            assert report["bad_by_kind"] == {"bad_label": 1, "missing_image": 1, "corrupt_image": 1}


# -- other sources ---------------------------------------------------------------------------------


def test_hf_dataset_source_with_column_flags_and_joined_rewards(data, tmp_path):
    import datasets

    rows = {"src": [], "instr": [], "dst": [], "tid": []}
    for i in range(6):
        d = data / f"{i // 4:04d}"
        rows["src"].append(Image.open(d / f"{i}_0.png"))
        rows["dst"].append(Image.open(d / f"{i}_1.png"))
        rows["instr"].append(json.loads((d / f"prompt_{i}.json").read_text())["edit"])
        rows["tid"].append(f"{d.name}/{i}")
    features = datasets.Features(
        src=datasets.Image(),
        instr=datasets.Value("string"),
        dst=datasets.Image(),
        tid=datasets.Value("string"),
    )
    folder = tmp_path / "hf"
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(folder))
    base = dict(data="hf", data_dir=str(folder), rewards_json=str(data / "labels.json"),
                original_image_column="src", edit_prompt_column="instr", edited_image_column="dst")  # fmt: skip
    cfg = TrainConfig.from_dict({**base, "id_column": "tid"})
    src = load_source(cfg)
    assert [e.id for e in src.examples] == rows["tid"]
    assert all(
        e.rewards is not None and e.provenance["origin"] == "rewardedit" for e in src.examples
    )
    assert np.array_equal(np.asarray(src.examples[5].edited.load()), np.asarray(rows["dst"][5]))
    with pytest.raises(ValueError, match=r"no column\(s\) \['edit_prompt'\].*'instr'"):
        load_source(TrainConfig.from_dict({**base, "edit_prompt_column": "edit_prompt"}))
    out = tmp_path / "run"
    train(TrainConfig.from_dict({**base, "id_column": "tid", "stage": 2, "train_batch_size": 2,
                                 "max_train_steps": 1, "report_to": "none", "output_dir": str(out)}))  # fmt: skip
    assert json.loads((out / "data_report.json").read_text())["used"] == 6


def test_store_source_human_correction_wins_and_provenance_is_recorded(data, tmp_path):
    from core.rewards import Rewards
    from core.store import Store

    store = Store(tmp_path / "studio.db")
    ids = []
    for i in range(4):
        d = data / f"{i // 4:04d}"
        instr = json.loads((d / f"prompt_{i}.json").read_text())["edit"]
        ids.append(store.add_triplet(d / f"{i}_0.png", d / f"{i}_1.png", instr, split="train"))
    judge = Rewards.from_scores((2, 3, 4), ("the square kept its colour", "", ""))
    for tid in ids:
        ann = store.add_annotation(
            tid, kind="judge", rewards=judge, judge_model="gpt-4o", prompt_version="v1"
        )
        store.set_label_from_annotation(ann)
    fixed = Rewards.from_scores((5, 5, 5))
    store.update_label(ids[0], fixed, user="alice", expected_version=1)
    store.update_label(ids[1], None, user="bob", expected_version=1, status="rejected")

    out = tmp_path / "run"
    cfg = TrainConfig.from_dict(dict(data="store", data_dir=str(store.path), stage=2, train_batch_size=3,
                                     max_train_steps=1, report_to="none", output_dir=str(out)))  # fmt: skip
    src = load_source(cfg)
    by_id = {e.id: e for e in src.examples}
    assert ids[1] not in by_id and src.info["rejected_left_out"] == 1
    assert by_id[ids[0]].rewards == fixed and by_id[ids[0]].provenance["origin"] == "human"
    assert by_id[ids[0]].provenance["reviewed_by"] == "alice"
    assert by_id[ids[2]].rewards == judge and by_id[ids[2]].provenance["judge_model"] == "gpt-4o"
    train(cfg)
    prov = {
        p["id"]: p for p in map(json.loads, (out / "provenance.jsonl").read_text().splitlines())
    }
    assert prov[ids[0]]["origin"] == "human" and prov[ids[3]]["origin"] == "judge"
    report = json.loads((out / "data_report.json").read_text())
    assert report["label_origins"] == {"human": 1, "judge:gpt-4o@v1": 2}


def test_shapes_source_and_bad_manifest_lines(tmp_path):
    from data.shapes.synth import SynthConfig, synthesize

    folder = tmp_path / "shapes"
    synthesize(folder, SynthConfig(train=12, bench=1, seed=1, size=32), workers=1, progress=False)
    cfg = TrainConfig.from_dict(dict(data="shapes", data_dir=str(folder), stage=2, train_batch_size=4,
                                     max_train_steps=1, report_to="none", output_dir=str(tmp_path / "run")))  # fmt: skip
    src = load_source(cfg)
    assert len(src.examples) == 12 and not src.bad
    assert all(e.rewards is not None and e.provenance == {"origin": "oracle"} for e in src.examples)
    train(cfg)
    assert json.loads((tmp_path / "run" / "data_report.json").read_text())["label_origins"] == {
        "oracle": 12
    }
    # One label out of range in the manifest: 'stop' names the line, 'skip' keeps the other 11.
    manifest = folder / "train" / "manifest.jsonl"
    lines = manifest.read_text().splitlines()
    rec = json.loads(lines[4])
    rec["rewards"]["quality"]["score"] = 9
    lines[4] = json.dumps(rec)
    manifest.write_text("\n".join(lines) + "\n")
    with pytest.raises(BadDataError, match="manifest.jsonl:5"):
        load_source(cfg)
    src = load_source(cfg.replace(on_bad_data="skip"))
    assert len(src.examples) == 11
    assert [(b.id, b.kind) for b in src.bad] == [(rec["id"], "bad_label")]
    assert "must be in [0, 5], got 9" in src.bad[0].reason


@pytest.mark.parametrize(
    "name", sorted(p.name for p in (ROOT / "train" / "configs").glob("*.yaml"))
)
def test_shipped_configs_are_valid(name):
    cfg = TrainConfig.load(ROOT / "train" / "configs" / name)
    if name.startswith("shapes_") and cfg.stage in (1, 2):
        other = TrainConfig.load(
            ROOT
            / "train"
            / "configs"
            / ("shapes_mrc.yaml" if cfg.stage == 1 else "shapes_baseline.yaml")
        )
        # Baseline and MRC differ only in what makes them baseline and MRC.
        same = {"stage", "output_dir", "trainable", "reward_dropout_prob"}
        diff = {k for k, v in cfg.to_dict().items() if other.to_dict()[k] != v}
        assert diff <= same, diff


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
