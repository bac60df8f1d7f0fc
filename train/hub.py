"""Publishing a trained pipeline: its model card and the upload to the Hugging Face Hub.

The card (``README.md`` in the pipeline folder) records what a reader needs to trust or redo the
run: the data (source, counts, bad examples, label origins), the rewards (which labels, their
dropout, any reward-model filtering or relabelling), the full config, and the results (steps,
samples seen, the final training loss and the last validation grid). ``--push_to_hub`` writes it
and uploads the folder with ``huggingface_hub.HfApi``; tests replace the two HfApi calls with a
local stand-in, so nothing here is ever tested against the network.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np


def results_summary(
    metrics: list[dict[str, Any]], global_batch: int, examples: int
) -> dict[str, Any]:
    """Steps, samples seen, passes over the ``examples`` and the training loss at the end (mean
    of the last 50 steps)."""
    if not metrics:
        return {"steps": 0}
    last = [m["loss"] for m in metrics[-50:]]
    return {
        "steps": metrics[-1]["step"],
        "samples_seen": metrics[-1]["step"] * global_batch,
        "epochs": round(metrics[-1]["step"] * global_batch / max(examples, 1), 2),
        "final_loss_mean_last_50": round(float(np.mean(last)), 5),
        "first_loss": round(float(metrics[0]["loss"]), 5),
        "median_samples_per_s": round(float(np.median([m["samples_per_s"] for m in metrics])), 2),
    }


def model_card(
    cfg: Any, report: dict[str, Any], results: dict[str, Any], validation: Path | None
) -> str:
    """The README.md of the exported pipeline (YAML front matter + Markdown)."""
    stage = {0: "VAE (stage 0)", 1: "InstructPix2Pix (stage 1)", 2: "MRC (stage 2)"}[cfg.stage]
    tags = ["diffusers", "image-to-image", "instruct-pix2pix", "mrc-studio"]
    if cfg.stage == 2:
        tags.append("multi-reward-conditioning")
    front = ["---", "library_name: diffusers", "pipeline_tag: image-to-image", "tags:"]
    front += [f"- {t}" for t in tags]
    if cfg.model != "tiny":
        front.append(f"base_model: {cfg.model}")
    front.append("---")
    lines = [
        *front,
        "",
        f"# {cfg.hub_model_id or cfg.run_dir.name}",
        "",
        f"An instruction-based image editing model, {stage}, trained with MRC Studio's "
        f"`python -m train` from `{report.get('model', cfg.model)}`.",
        "",
        "## Data",
        "",
        f"- source: `{cfg.data}` from `{cfg.data_dir}` (split `{cfg.split}`)",
        f"- examples in the source: {report.get('examples_in_source')}; used: "
        f"{report.get('used')}; bad: {report.get('bad')}"
        + (f" {json.dumps(report['bad_by_kind'])}" if report.get("bad_by_kind") else "")
        + "; "
        f"unlabelled left out: {report.get('unlabeled_left_out')}",
        f"- resolution {report.get('resolution')} px, random horizontal flip: "
        f"{'yes' if cfg.random_flip else 'no'}",
    ]
    if report.get("label_origins"):
        lines.append(f"- label origins: `{json.dumps(report['label_origins'])}`")
    lines += ["", "## Rewards", ""]
    if cfg.stage == 2:
        lines += [
            "Conditioned on three reward scores in [0, 5] (instruction following, detail "
            "preserving, generation quality) and their failure texts (Multi-Reward "
            "Conditioning).",
            "",
            f"- labels: `{cfg.rewards_json or cfg.data}`"
            + (f"; relabelled by `{cfg.relabel_with}`" if cfg.relabel_with else ""),
            f"- learned null reward with probability {cfg.reward_dropout_prob}; failure texts "
            f"dropped (scores kept) with probability {cfg.reward_text_dropout_prob}",
        ]
    else:
        lines.append("None: this stage does not condition on rewards.")
    if cfg.data_filter:
        lines.append(
            f"- data filtered by `{cfg.data_filter}`: kept {cfg.data_filter_keep:.3g} by "
            f"{cfg.data_filter_by}"
        )
    lines += ["", "## Results", ""]
    lines += [f"- {k.replace('_', ' ')}: {v}" for k, v in results.items()]
    if validation is not None:
        lines += ["", f"Last validation grid: ![validation]({validation.name})"]
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from core.pipeline import MRCInstructPix2PixPipeline  # MRC Studio",
        "",
        f'pipe = MRCInstructPix2PixPipeline.from_pretrained("{cfg.hub_model_id or "PATH"}")',
        'pipe("turn the sky red", image, rewards=(5, 5, 5)).images[0]',
        "```",
        "",
        "## Training config",
        "",
        "```yaml",
        cfg.to_yaml().rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def write_model_card(cfg: Any, path: Path, report: dict, results: dict) -> Path:
    """Write README.md (and a copy of the last validation grid) into the pipeline folder."""
    grids = sorted((cfg.run_dir / "validation").glob("step-*.png"))
    validation = None
    if grids:
        validation = path / "validation.png"
        shutil.copyfile(grids[-1], validation)
    card = path / "README.md"
    card.write_text(model_card(cfg, report, results, validation), encoding="utf-8")
    return card


def push_to_hub(cfg: Any, path: Path, api: Any = None) -> str:
    """Create (or reuse) the hub repository and upload the pipeline folder; returns its id."""
    from huggingface_hub import HfApi

    api = api or HfApi()
    repo_id = api.create_repo(cfg.hub_model_id or cfg.run_dir.name, exist_ok=True).repo_id
    api.upload_folder(
        repo_id=repo_id,
        folder_path=str(path),
        commit_message=f"python -m train: stage {cfg.stage}, {cfg.max_train_steps} steps",
        ignore_patterns=["step_*", "epoch_*"],
    )
    return repo_id
