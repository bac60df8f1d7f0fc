"""Shared helpers of the trainer tests: tiny RewardEdit-layout data, settings, CLI args."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from train.checkpoints import read_metrics

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


def losses(out: Path) -> list[float]:
    return [m["loss"] for m in read_metrics(out)]
