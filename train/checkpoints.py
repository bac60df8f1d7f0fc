"""Checkpoint folders, the resumable progress counter and the per-step metrics log.

A checkpoint is ``<output_dir>/checkpoint-<step>/``, written by ``accelerator.save_state`` (model
weights as safetensors, optimizer, per-process RNG states, and the registered custom objects: LR
scheduler, :class:`Progress`, EMA) plus ``config.yaml`` (the frozen run config) and
``train_state.json`` (a human-readable summary). It is written as ``checkpoint-<step>.tmp`` and
renamed only when every process has finished writing, so a run killed while saving leaves no
half-checkpoint for ``--resume_from_checkpoint latest`` to pick up. ``files.json`` lists every
file with its size and SHA-256, written last: a checkpoint is complete only when it is there and
every file matches it (:func:`verify_checkpoint`). ``latest`` skips a damaged checkpoint (a
truncated weight file, an emptied pickle) for the newest intact one and says so; a damaged
checkpoint named explicitly is refused with the file and the reason.

``logs/metrics.jsonl`` holds one line per optimizer step (loss, learning rate, samples/s). On
resume it is cut back to the checkpoint's step, so the file always describes one trajectory; a
torn last line (a kill mid-write) is dropped with a warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

from train.config import TrainConfig, resume_mismatches

_CKPT = re.compile(r"^checkpoint-(\d+)$")
MANIFEST = "files.json"


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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(folder: Path) -> None:
    """``files.json``: every file of ``folder`` (but itself) with its size and SHA-256."""
    files = {
        p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(files, indent=1))
    os.replace(tmp, folder / MANIFEST)


def verify_checkpoint(folder: str | Path) -> str | None:
    """None when the checkpoint is intact; else what is wrong, naming the file. Checkpoints
    written before manifests existed are checked for missing or empty files only."""
    folder = Path(folder)
    manifest = folder / MANIFEST
    if not manifest.is_file():
        empty = [p.name for p in sorted(folder.iterdir()) if p.is_file() and p.stat().st_size == 0]
        if empty:
            return f"{empty[0]} is empty"
        return None if (folder / "config.yaml").is_file() else "config.yaml is missing"
    try:
        files = json.loads(manifest.read_text())
    except (OSError, json.JSONDecodeError) as e:
        return f"{MANIFEST} is unreadable ({e})"
    for name, want in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != want["size"]:
            return f"{name} has {size} bytes, {want['size']} were written"
        if _sha256(path) != want["sha256"]:
            return f"{name} does not match its checksum"
    return None


def resolve_resume(output_dir: str | Path, spec: str) -> Path | None:
    """``""`` -> None; ``"latest"`` -> the newest intact checkpoint (None if there is none yet,
    so the same command both starts and continues a run; damaged ones are skipped with a
    warning); else the given folder, which must be intact."""
    if not spec:
        return None
    if spec == "latest":
        found = list_checkpoints(output_dir)
        for _, path in reversed(found):
            problem = verify_checkpoint(path)
            if problem is None:
                return path
            warnings.warn(
                f"{path} is damaged ({problem}); resuming from the newest intact checkpoint "
                "before it instead.",
                stacklevel=2,
            )
        if found:
            raise ValueError(
                f"every checkpoint in {output_dir} is damaged (see the warnings above); remove "
                "them to start afresh, or restore one."
            )
        return None
    path = Path(spec)
    if not path.is_dir() or not (path / "config.yaml").exists():
        raise ValueError(
            f"resume_from_checkpoint={spec!r} is not a complete checkpoint folder "
            "(expected a checkpoint-<step> folder with config.yaml), nor 'latest'."
        )
    problem = verify_checkpoint(path)
    if problem is not None:
        raise ValueError(f"cannot resume from {path}: {problem}. Pass 'latest' or another one.")
    return path


def resume_point(output_dir: Path, config: TrainConfig) -> Path | None:
    """The checkpoint a run continues from, or None for a fresh run; refused with the reason when a fresh run would mix with the checkpoints already
    in ``output_dir``, or when the checkpoint's run-defining settings differ."""
    resume = resolve_resume(output_dir, config.resume_from_checkpoint)
    if resume is None and list_checkpoints(output_dir):
        raise ValueError(
            f"{output_dir} already holds checkpoints of a run; pass --resume_from_checkpoint "
            "latest to continue it, or choose a new output_dir (a fresh run would mix with them)."
        )
    if resume is None:
        return None
    diff = resume_mismatches(TrainConfig.load(resume / "config.yaml"), config)
    if diff:
        raise ValueError(
            f"Cannot continue exactly from {resume}: settings that define the run changed ("
            + "; ".join(diff)
            + "). Use the checkpoint's settings, or start a new output_dir."
        )
    return resume


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
        write_manifest(tmp)
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
            for record in _records(path):
                if record["step"] <= resume_step:
                    kept.append(json.dumps(record))
        path.write_text("".join(k + "\n" for k in kept), encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def _records(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of ``path``; a torn line (a kill mid-write) is left out with a warning."""
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            warnings.warn(
                f"{path} line {n} is torn (a kill while writing?); left out.", stacklevel=3
            )
            continue
        if isinstance(record, dict) and "step" in record:
            out.append(record)
    return out


def read_metrics(output_dir: str | Path) -> list[dict[str, Any]]:
    return _records(Path(output_dir) / "logs" / "metrics.jsonl")
