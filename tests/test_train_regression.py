"""Seeded expected values of short training runs, so that no change to the trainer moves a run.

Three steps of the VAE stage, stage 1 (cached, EMA, v-prediction, Min-SNR, conditioning dropout)
and stage 2 (cached with flips; uncached with gradient accumulation), each with a checkpoint per
step (:mod:`tests._train_fingerprint`). Checked: the per-step losses (recorded with the trainer
before its split into TrainLoop and train.objectives, on this project's CPU machine, one thread),
the checkpoint's files and weight names, and that a run continued from its step-2 checkpoint
ends with exactly the same losses, weights, optimizer and EMA states as the uninterrupted one.

For a bit-for-bit comparison of two versions of the code (the weights' hashes, and resuming the
old version's checkpoints with the new code) run ``python -m tests._train_fingerprint``.
"""

from __future__ import annotations

import pytest

from tests._train_fingerprint import fingerprint_runs

EXPECTED_LOSSES = {
    "stage0_vae": [0.5380051732063293, 0.46362051367759705, 0.3770197033882141],
    "stage1_cached_ema_v": [0.20066222548484802, 0.19129358232021332, 0.16311533749103546],
    "stage2_cached": [1.0958025455474854, 0.9888165593147278, 0.8445204496383667],
    "stage2_uncached_accum": [0.8661900758743286, 0.9405861496925354, 0.6415393948554993],
}
CHECKPOINT_FILES = [
    "config.yaml",
    "custom_checkpoint_0.pkl",  # LR schedule
    "custom_checkpoint_1.pkl",  # Progress
    "files.json",
    "model.safetensors",
    "optimizer.bin",
    "random_states_0.pkl",
    "train_state.json",
]
WITH_EMA = sorted(CHECKPOINT_FILES + ["custom_checkpoint_2.pkl"])
# SHA-256 of the sorted (weight name, shape) pairs of model.safetensors: the checkpoint layout.
WEIGHT_KEYS = {
    "stage0_vae": "81c049f9f6fb48fb10f81e3dc07d2ef6e9d1ef36c927c29d36cac9930ce803ae",
    "stage1_cached_ema_v": "07875a737ced974ba27272a7808773cff370c97a749eb3cf2aee366ffd8eb892",
    "stage2_cached": "9c768cf23b070bfb67d7e36c0e27529646b6d200ea848410a32063bf6f65ea77",
    "stage2_uncached_accum": "9c768cf23b070bfb67d7e36c0e27529646b6d200ea848410a32063bf6f65ea77",
}


@pytest.mark.slow
def test_short_runs_keep_their_losses_layout_and_exact_resume(tmp_path, one_torch_thread):
    runs = fingerprint_runs(tmp_path, resume_from=tmp_path)
    for name, losses in EXPECTED_LOSSES.items():
        run = runs[name]
        assert [float(x) for x in run["losses"]] == pytest.approx(losses, rel=1e-5, abs=0), name
        files = WITH_EMA if name == "stage1_cached_ema_v" else CHECKPOINT_FILES
        assert run["checkpoint"]["files"] == files, name
        assert run["checkpoint"]["weight_keys"] == WEIGHT_KEYS[name], name
        assert runs[f"{name}-resumed"] == run, f"{name}: resuming at step 2 changed the run"
