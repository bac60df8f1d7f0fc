"""Checkpoint folders, the resumable progress counter and the per-step metrics log.

A checkpoint is ``<output_dir>/checkpoint-<step>/``, written by ``accelerator.save_state`` (model
weights as safetensors, optimizer, per-process RNG states, and the registered custom objects: LR
scheduler, :class:`Progress`, EMA) plus ``config.yaml`` (the frozen run config) and
``train_state.json`` (a human-readable summary). It is written as ``checkpoint-<step>.tmp`` and
renamed only when every process has finished writing, so a run killed while saving leaves no
half-checkpoint for ``--resume_from_checkpoint latest`` to pick up.

``logs/metrics.jsonl`` holds one line per optimizer step (loss, learning rate, samples/s). On
resume it is cut back to the checkpoint's step, so the file always describes one trajectory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

_CKPT = re.compile(r"^checkpoint-(\d+)$")


class Progress:
    """The optimizer-step counter, saved with each checkpoint (a custom accelerate object)."""

    def __init__(self) -> None:
        self.global_step = 0

    def state_dict(self) -> dict[str, int]:
        return {"global_step": self.global_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.global_step = int(state["global_step"])


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _CKPT.match(p.name)
        if m and p.is_dir() and (p / "config.yaml").exists():
            found.append((int(m.group(1)), p))
    return sorted(found)


def resolve_resume(output_dir: str | Path, spec: str) -> Path | None:
    """``""`` -> None; ``"latest"`` -> the newest complete checkpoint (None if there is none yet,
    so the same command both starts and continues a run); else the given folder."""
    if not spec:
        return None
    if spec == "latest":
        found = list_checkpoints(output_dir)
        return found[-1][1] if found else None
    path = Path(spec)
    if not path.is_dir() or not (path / "config.yaml").exists():
        raise ValueError(
            f"resume_from_checkpoint={spec!r} is not a complete checkpoint folder "
            "(expected a checkpoint-<step> folder with config.yaml), nor 'latest'."
        )
    return path


def save_checkpoint(accelerator: Any, output_dir: Path, step: int, config: Any, info: dict) -> Path:
    """Save the full training state for ``step``; every process must call this."""
    final = output_dir / f"checkpoint-{step}"
    tmp = output_dir / f"checkpoint-{step}.tmp"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        config.save(tmp / "config.yaml")
        (tmp / "train_state.json").write_text(json.dumps({"global_step": step, **info}, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    accelerator.wait_for_everyone()
    return final


def prune_checkpoints(output_dir: Path, limit: int) -> list[Path]:
    """Remove the oldest complete checkpoints beyond ``limit`` (0 keeps all)."""
    if limit <= 0:
        return []
    found = list_checkpoints(output_dir)
    removed = []
    for _, path in found[: max(0, len(found) - limit)]:
        shutil.rmtree(path)
        removed.append(path)
    return removed


class MetricsLog:
    """``logs/metrics.jsonl``: one JSON line per optimizer step."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        kept: list[str] = []
        if resume_step is not None and path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip() and json.loads(line)["step"] <= resume_step:
                    kept.append(line)
        path.write_text("".join(k + "\n" for k in kept), encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def read_metrics(output_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(output_dir) / "logs" / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
