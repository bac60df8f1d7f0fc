"""Checkpoints under faults: a damaged latest checkpoint is named and skipped for the newest
intact one, a damaged checkpoint named explicitly is refused with its file, and a torn line in
the metrics log does not stop a resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests._train_helpers import make_rewardedit, settings
from train.checkpoints import MANIFEST, read_metrics, resolve_resume, verify_checkpoint
from train.config import TrainConfig
from train.loop import train


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, TrainConfig]:
    root = tmp_path_factory.mktemp("ckpt")
    make_rewardedit(root / "data", 8)
    cfg = TrainConfig.from_dict(settings(root / "data", root / "run", max_train_steps=3,
                                         checkpointing_steps=1, train_batch_size=2))  # fmt: skip
    train(cfg)
    return root / "run", cfg


def test_every_checkpoint_lists_its_files_and_verifies(run):
    out, _ = run
    for step in (1, 2, 3):
        folder = out / f"checkpoint-{step}"
        files = json.loads((folder / MANIFEST).read_text())
        assert {"model.safetensors", "config.yaml", "train_state.json"} <= set(files)
        assert verify_checkpoint(folder) is None


def test_damaged_latest_is_skipped_and_a_named_one_is_refused(run, tmp_path):
    out, cfg = run
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    weights = copy / "checkpoint-3" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated by a full disk or a kill
    pickle = next((copy / "checkpoint-2").glob("random_states_*.pkl"))
    with pytest.warns(
        UserWarning, match=r"checkpoint-3 is damaged \(model.safetensors has 100 bytes"
    ):
        assert resolve_resume(copy, "latest") == copy / "checkpoint-2"
    pickle.write_bytes(b"")
    with pytest.raises(ValueError, match=r"cannot resume from .*checkpoint-2: random_states_0.pkl"):
        resolve_resume(copy, str(copy / "checkpoint-2"))
    with pytest.warns(UserWarning) as caught:
        assert resolve_resume(copy, "latest") == copy / "checkpoint-1"
    assert [str(w.message).split("/")[-1].split(" ")[0] for w in caught] == [
        "checkpoint-3",
        "checkpoint-2",
    ]
    # The run continues from checkpoint-1 and ends where it should.
    with pytest.warns(UserWarning, match="damaged"):
        train(cfg.replace(output_dir=str(copy), resume_from_checkpoint="latest"))
    assert [m["step"] for m in read_metrics(copy)] == [1, 2, 3]


def test_a_torn_metrics_line_does_not_stop_a_resume(run, tmp_path):
    out, cfg = run
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "checkpoint-3")
    shutil.rmtree(copy / "pipeline")
    log = copy / "logs" / "metrics.jsonl"
    log.write_text(log.read_text() + '{"step": 4, "loss": 0.1')  # killed mid-write
    with pytest.warns(UserWarning, match="line 4 is torn"):
        train(cfg.replace(output_dir=str(copy), resume_from_checkpoint="latest"))
    assert [m["step"] for m in read_metrics(copy)] == [1, 2, 3]
