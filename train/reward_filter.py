"""Keep the top fraction of a training source by a reward model's score (EditReward's data use).

    from train.reward_filter import filter_by_reward
    result = filter_by_reward(examples, model, keep_fraction=0.5, resolution=32)
    result.kept                       # the kept EditExamples, in source order, provenance added
    result.write(run_dir)             # reward_filter.jsonl (one line per example) + .json summary

Each example (a :class:`train.datasets.EditExample` of any source) is decoded once, scored by
the model, and ranked by :func:`core.reward_model.aggregate` of its predicted means (``by``);
the best ``ceil(keep_fraction * N)`` are kept (ties broken by source order). Every kept
example's ``provenance`` gains ``reward_filter`` (model, score, rank), and the records of all
examples -- kept or not, with their three predicted means and standard deviations -- are the
filter's provenance file. Unreadable examples follow the bad-data policy of ``log`` (stop, or
skip and list them), as in the trainer.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from core.reward_model import EditRewardModel, RewardPrediction, aggregate
from core.rewards import PERSPECTIVES
from train.datasets import BadDataLog, EditExample, scan


@dataclass
class FilterResult:
    kept: list[EditExample]
    records: list[dict[str, Any]]  # one per scored example, in source order
    summary: dict[str, Any] = field(default_factory=dict)

    def write(self, folder: str | Path) -> Path:
        """``reward_filter.jsonl`` (per example) and ``reward_filter.json`` (the summary)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "reward_filter.jsonl", "w", encoding="utf-8") as f:
            for rec in self.records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        (folder / "reward_filter.json").write_text(json.dumps(self.summary, indent=1))
        return folder / "reward_filter.jsonl"


def filter_by_reward(
    examples: Sequence[EditExample],
    model: EditRewardModel,
    keep_fraction: float,
    *,
    by: str = "mean",
    resolution: int | None = None,
    batch_size: int = 256,
    log: BadDataLog | None = None,
    model_name: str = "",
    progress: bool = False,
) -> FilterResult:
    """Score ``examples`` with ``model`` and keep the top ``keep_fraction`` (see the module
    docstring). ``resolution``: the side images are decoded at (default: the model's)."""
    if not 0.0 < keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must be in (0, 1]; got {keep_fraction}.")
    log = log or BadDataLog("stop")
    size = resolution or model.config.image_size
    good, originals, editeds = [], [], []
    for ex, o, e in scan(examples, log, size, progress):
        good.append(ex)
        originals.append(o)
        editeds.append(e)
    if not good:
        raise ValueError("no readable example to score.")
    means, logvars = [], []
    for i in range(0, len(good), batch_size):
        pred = model.predict(torch.stack(originals[i : i + batch_size]),
                             [ex.instruction for ex in good[i : i + batch_size]],
                             torch.stack(editeds[i : i + batch_size]), batch_size)  # fmt: skip
        means.append(pred.mean)
        logvars.append(pred.logvar)
    pred = RewardPrediction(torch.cat(means), torch.cat(logvars))
    score = aggregate(pred, by).tolist()
    order = sorted(range(len(good)), key=lambda i: (-score[i], i))
    n_keep = math.ceil(keep_fraction * len(good))
    rank = {i: r for r, i in enumerate(order)}
    name = model_name or "reward-model"
    records, kept = [], []
    for i, ex in enumerate(good):
        keep = rank[i] < n_keep
        records.append({
            "id": ex.id, "score": round(score[i], 4), "rank": rank[i] + 1, "kept": keep,
            "mean": {p: round(v, 4) for p, v in zip(PERSPECTIVES, pred.mean[i].tolist())},
            "std": {p: round(v, 4) for p, v in zip(PERSPECTIVES, pred.std[i].tolist())},
        })  # fmt: skip
        if keep:
            info = {"model": name, "by": by, "score": round(score[i], 4), "rank": rank[i] + 1}
            kept.append(replace(ex, provenance={**ex.provenance, "reward_filter": info}))
    threshold = score[order[n_keep - 1]]
    summary = {
        "model": name, "by": by, "keep_fraction": keep_fraction, "scored": len(good),
        "kept": len(kept), "bad": len(log.items), "threshold": round(threshold, 4),
        "mean_score_kept": round(sum(score[i] for i in order[:n_keep]) / n_keep, 4),
        "mean_score_all": round(sum(score) / len(score), 4),
    }  # fmt: skip
    return FilterResult(kept, records, summary)
