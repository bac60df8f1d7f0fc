"""Fingerprints of short training runs: per-step losses and hashes of every saved tensor.

A refactoring of the trainer must not change a run's numbers: the same random draws in the same
order, the same losses, the same checkpoint layout, and a checkpoint written by the old code
must resume exactly with the new one. :func:`fingerprint_runs` trains three steps of each
configuration in :data:`RUNS` (VAE stage 0, stage 1, stage 2 cached and uncached), saving a
checkpoint at every step, and returns for each its losses, the files of the last checkpoint and
SHA-256 hashes of the weights, optimizer and custom states, and of the exported pipeline.

    OMP_NUM_THREADS=1 python -m tests._train_fingerprint OUT_DIR [--resume-from OLD_OUT_DIR]

writes the fingerprints to OUT_DIR/fingerprint.json. With ``--resume-from``, every run is also
continued from step 2 of the runs saved in OLD_OUT_DIR (by another version of the code), and
every fingerprint, continued ones included, is compared with OLD_OUT_DIR/fingerprint.json: the
exit status is 1 when any differs. ``tests/test_train_regression.py`` checks seeded expected values.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from tests._train_helpers import losses, make_rewardedit, settings
from train.config import TrainConfig
from train.loop import train

STEPS = 3
RUNS: dict[str, dict[str, Any]] = {
    "stage0_vae": dict(stage=0, learning_rate=1e-3),
    "stage1_cached_ema_v": dict(
        stage=1, use_ema=True, ema_decay=0.9, prediction_type="v_prediction", snr_gamma=5.0,
        conditioning_dropout_prob=0.3, learning_rate=1e-3, lr_scheduler="cosine",
        lr_warmup_steps=1, max_grad_norm=1.0,
    ),
    "stage2_cached": dict(
        stage=2, conditioning_dropout_prob=0.2, reward_dropout_prob=0.3, learning_rate=1e-3,
        random_flip=True,
    ),
    "stage2_uncached_accum": dict(
        stage=2, cache=False, conditioning_dropout_prob=0.2, reward_dropout_prob=0.3,
        reward_text_dropout_prob=0.5, gradient_accumulation_steps=2, train_batch_size=2,
        learning_rate=1e-3, snr_gamma=5.0,
    ),
}  # fmt: skip


def tensor_hash(obj: Any) -> str:
    """SHA-256 over a nested structure of tensors, numbers and strings (dict keys sorted)."""
    h = hashlib.sha256()
    _update(h, obj)
    return h.hexdigest()


def _update(h: Any, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, dict):
        for k in sorted(obj, key=repr):
            h.update(repr(k).encode())
            _update(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}".encode())
        for v in obj:
            _update(h, v)
    else:
        h.update(repr(obj).encode())


def checkpoint_fingerprint(folder: Path) -> dict[str, Any]:
    """The files of a checkpoint and hashes of its weights, optimizer and custom states."""
    files = sorted(p.name for p in folder.iterdir())
    custom = {
        p.name: tensor_hash(torch.load(p, map_location="cpu", weights_only=False))
        for p in sorted(folder.glob("custom_checkpoint_*.pkl"))
    }
    weights = load_file(folder / "model.safetensors")
    optimizer = torch.load(folder / "optimizer.bin", map_location="cpu", weights_only=False)
    return {
        "files": files,
        "weight_keys": tensor_hash(sorted((k, tuple(v.shape)) for k, v in weights.items())),
        "weights": tensor_hash(weights),
        "optimizer": tensor_hash(optimizer),
        "custom": custom,
    }


def pipeline_fingerprint(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): tensor_hash(load_file(p))
        for p in sorted(folder.rglob("*.safetensors"))
    }


def run_fingerprint(out: Path) -> dict[str, Any]:
    return {
        "losses": [repr(x) for x in losses(out)],
        "checkpoint": checkpoint_fingerprint(out / f"checkpoint-{STEPS}"),
        "pipeline": pipeline_fingerprint(out / "pipeline"),
    }


def run_settings(name: str, data: Path, out: Path, **extra: Any) -> TrainConfig:
    kw = dict(RUNS[name], max_train_steps=STEPS, checkpointing_steps=1, **extra)
    return TrainConfig.from_dict(settings(data, out, **kw))


def fingerprint_runs(root: Path, resume_from: Path | None = None) -> dict[str, Any]:
    """Train every run of :data:`RUNS` under ``root``; with ``resume_from``, also continue each
    from step 2 of the same run saved there (``<resume_from>/<name>``)."""
    torch.set_num_threads(1)
    data = root / "data"
    if not (data / "labels.json").exists():
        make_rewardedit(data, 16)
    result = {}
    for name in RUNS:
        out = root / name
        if out.exists():
            shutil.rmtree(out)
        train(run_settings(name, data, out))
        result[name] = run_fingerprint(out)
        if resume_from is not None:
            resumed = root / f"{name}-resumed"
            copy_until(resume_from / name, resumed, step=2)
            old_data = resume_from / "data"  # a run-defining setting: the checkpoint's own
            train(run_settings(name, old_data, resumed, resume_from_checkpoint="latest"))
            result[f"{name}-resumed"] = run_fingerprint(resumed)
    return result


def copy_until(src: Path, dst: Path, step: int) -> None:
    """A copy of the run folder ``src`` as if it had been stopped after checkpoint ``step``."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    shutil.rmtree(dst / "pipeline")
    for p in dst.glob("checkpoint-*"):
        if int(p.name.split("-")[1]) > step:
            shutil.rmtree(p)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--resume-from", type=Path, default=None)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    result = fingerprint_runs(args.out, args.resume_from)
    (args.out / "fingerprint.json").write_text(json.dumps(result, indent=1))
    print(f"Wrote {args.out / 'fingerprint.json'}.")
    old = args.resume_from / "fingerprint.json" if args.resume_from else None
    if old is None or not old.exists():
        return 0
    return 0 if same_as(json.loads(old.read_text()), result) else 1


def same_as(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Print, per run, whether ``new`` equals the old version's uninterrupted run."""
    same = True
    for name, run in new.items():
        ref = old[name.removesuffix("-resumed")]
        differs = [k for k in run if run[k] != ref[k]]
        print(f"{name:30s} {'identical' if not differs else 'DIFFERS in ' + ', '.join(differs)}")
        same &= not differs
    return same


if __name__ == "__main__":
    sys.exit(main())
