"""A reward model (or the labels themselves) applied to training data before a run.

Two uses, each recorded in the run's provenance:

* **Filter** (EditReward's use): keep the top fraction of a training source, ranked by a
  reward model's predicted scores or -- as the ceiling of filtering -- by the source's own
  labels (on Shapes, the exact oracle's)::

      result = filter_by_reward(examples, model, keep_fraction=1 / 3)
      result = filter_by_labels(examples, keep_fraction=1 / 3)
      result.kept                       # the kept EditExamples, in source order, provenance added
      result.write(run_dir)             # reward_filter.jsonl (one line per example) + .json summary

* **Relabel** (MRC without an oracle or a paid judge): replace every example's reward labels by
  the model's predicted means, with empty failure texts, as a judge backend would label them::

      relabelled, records = relabel_by_reward(examples, model)

Examples are :class:`train.datasets.EditExample` of any source. Each is decoded once, scored,
and ranked by :func:`core.reward_model.aggregate` (``by``: mean, min or one perspective); the
best ``ceil(keep_fraction * N)`` are kept (ties broken by source order). Unreadable examples
follow the bad-data policy of ``log`` (stop, or skip and list them), as in the trainer.

:func:`prepare_training_data` is the trainer's entry point: it applies ``--relabel_with``,
``--data_filter``, ``--data_filter_keep`` and ``--data_filter_by`` of a
:class:`train.config.TrainConfig` and writes their provenance files into the run folder.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from core.reward_model import AGGREGATES, EditRewardModel, RewardPrediction, aggregate
from core.rewards import PERSPECTIVES, Rewards
from train.datasets import BadDataLog, EditExample, scan

LABELS = "labels"  # --data_filter value: rank by the source's own reward labels


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


# -- scoring ----------------------------------------------------------------------------------


def score_examples(
    examples: Sequence[EditExample],
    model: EditRewardModel,
    *,
    resolution: int | None = None,
    batch_size: int = 256,
    log: BadDataLog | None = None,
    progress: bool = False,
) -> tuple[list[EditExample], RewardPrediction]:
    """The readable examples and the model's Gaussians for them, in source order."""
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
    return good, RewardPrediction(torch.cat(means), torch.cat(logvars))


def _per_perspective(values: torch.Tensor) -> dict[str, float]:
    return {p: round(v, 4) for p, v in zip(PERSPECTIVES, values.tolist())}


# -- filtering --------------------------------------------------------------------------------


def _keep_top(
    good: Sequence[EditExample],
    score: list[float],
    keep_fraction: float,
    info: dict[str, Any],
    details: list[dict[str, Any]],
    bad: int,
) -> FilterResult:
    """Keep the best ``ceil(keep_fraction * N)`` of ``good`` by ``score`` (ties: source order)."""
    order = sorted(range(len(good)), key=lambda i: (-score[i], i))
    n_keep = math.ceil(keep_fraction * len(good))
    rank = {i: r for r, i in enumerate(order)}
    records, kept = [], []
    for i, ex in enumerate(good):
        keep = rank[i] < n_keep
        rec = {"id": ex.id, "score": round(score[i], 4), "rank": rank[i] + 1, "kept": keep}
        records.append({**rec, **details[i]})
        if keep:
            tag = {**info, "score": round(score[i], 4), "rank": rank[i] + 1}
            kept.append(replace(ex, provenance={**ex.provenance, "reward_filter": tag}))
    summary = {
        **info, "keep_fraction": keep_fraction, "scored": len(good), "kept": len(kept),
        "bad": bad, "threshold": round(score[order[n_keep - 1]], 4),
        "mean_score_kept": round(sum(score[i] for i in order[:n_keep]) / n_keep, 4),
        "mean_score_all": round(sum(score) / len(score), 4),
    }  # fmt: skip
    return FilterResult(kept, records, summary)


def _check_fraction(keep_fraction: float) -> None:
    if not 0.0 < keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must be in (0, 1]; got {keep_fraction}.")


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
    _check_fraction(keep_fraction)
    log = log or BadDataLog("stop")
    bad_before = len(log.items)
    good, pred = score_examples(
        examples, model, resolution=resolution, batch_size=batch_size, log=log, progress=progress
    )
    details = [
        {"mean": _per_perspective(pred.mean[i]), "std": _per_perspective(pred.std[i])}
        for i in range(len(good))
    ]
    info = {"model": model_name or "reward-model", "by": by}
    score = aggregate(pred, by).tolist()
    return _keep_top(good, score, keep_fraction, info, details, len(log.items) - bad_before)


def filter_by_labels(
    examples: Sequence[EditExample], keep_fraction: float, *, by: str = "mean"
) -> FilterResult:
    """Keep the top ``keep_fraction`` ranked by the examples' own reward labels (the oracle's on
    Shapes: the ceiling a reward model can reach as a filter). Every example needs a label."""
    _check_fraction(keep_fraction)
    missing = [ex.id for ex in examples if ex.rewards is None]
    if missing:
        raise ValueError(
            f"filtering by labels needs a reward label on every example; {len(missing)} have "
            f"none (first: {missing[0]!r})."
        )
    if not examples:
        raise ValueError("no example to filter.")
    scores = torch.tensor([ex.rewards.scores for ex in examples], dtype=torch.float32)
    score = aggregate(RewardPrediction(scores, torch.zeros_like(scores)), by).tolist()
    details = [{"labels": _per_perspective(s)} for s in scores]
    return _keep_top(examples, score, keep_fraction, {"model": LABELS, "by": by}, details, 0)


# -- relabelling ------------------------------------------------------------------------------


def relabel_by_reward(
    examples: Sequence[EditExample],
    model: EditRewardModel,
    *,
    resolution: int | None = None,
    batch_size: int = 256,
    log: BadDataLog | None = None,
    model_name: str = "",
    progress: bool = False,
) -> tuple[list[EditExample], list[dict[str, Any]]]:
    """Every readable example with its rewards replaced by the model's predicted means (empty
    failure texts: the model writes none), and one provenance record per example."""
    good, pred = score_examples(
        examples, model, resolution=resolution, batch_size=batch_size, log=log, progress=progress
    )
    name = model_name or "reward-model"
    out, records = [], []
    for i, ex in enumerate(good):
        mean, std = _per_perspective(pred.mean[i]), _per_perspective(pred.std[i])
        before = ex.rewards.to_dict() if ex.rewards is not None else None
        tag = {"origin": "reward-model", "judge_model": name, "std": std, "replaced": before}
        rewards = Rewards.from_scores([mean[p] for p in PERSPECTIVES])
        out.append(replace(ex, rewards=rewards, provenance={**ex.provenance, **tag}))
        records.append({"id": ex.id, "mean": mean, "std": std, "replaced": before})
    return out, records


# -- the trainer's entry point ----------------------------------------------------------------


def prepare_training_data(
    cfg: Any,
    examples: Sequence[EditExample],
    log: BadDataLog,
    resolution: int,
    out: Path | None,
    progress: bool = False,
) -> tuple[list[EditExample], dict[str, Any]]:
    """Apply the run's ``relabel_with`` and ``data_filter`` (in that order: a filter by labels
    then ranks by the new labels) to ``examples``; write the provenance files into ``out`` (the
    main process's run folder, or None). Returns the examples to train on and a report entry."""
    examples = list(examples)
    report: dict[str, Any] = {}
    models: dict[str, EditRewardModel] = {}

    def load(folder: str) -> EditRewardModel:
        if folder not in models:
            models[folder] = EditRewardModel.from_pretrained(folder).eval()
        return models[folder]

    if cfg.relabel_with:
        examples, records = relabel_by_reward(
            examples, load(cfg.relabel_with), resolution=resolution, log=log,
            model_name=cfg.relabel_with, progress=progress,
        )  # fmt: skip
        report["relabelled_with"] = {"model": cfg.relabel_with, "examples": len(examples)}
        if out is not None:
            with open(out / "relabel.jsonl", "w", encoding="utf-8") as f:
                for rec in records:
                    f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    if cfg.data_filter:
        if cfg.data_filter == LABELS:
            result = filter_by_labels(examples, cfg.data_filter_keep, by=cfg.data_filter_by)
        else:
            result = filter_by_reward(
                examples, load(cfg.data_filter), cfg.data_filter_keep, by=cfg.data_filter_by,
                resolution=resolution, log=log, model_name=cfg.data_filter, progress=progress,
            )  # fmt: skip
        examples = result.kept
        report["data_filter"] = result.summary
        if out is not None:
            result.write(out)
    return examples, report


def check_filter_options(data_filter: str, by: str) -> None:
    """Config validation of ``data_filter`` / ``data_filter_by`` (raises ValueError)."""
    if by not in AGGREGATES:
        raise ValueError(f"data_filter_by must be one of {', '.join(AGGREGATES)}; got {by!r}.")
    if data_filter and data_filter != LABELS and not Path(data_filter).is_dir():
        raise ValueError(
            f"data_filter must be '', {LABELS!r} or a reward model folder (python -m "
            f"train.reward_model); {data_filter!r} is not a folder."
        )
