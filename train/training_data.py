"""A run's training data: the source's examples -> checked, cached or pixel dataset + report.

:func:`load_training_data` takes the examples of ``cfg.data`` (:mod:`train.sources`), keeps
those the stage trains on, applies the reward filter (:mod:`train.reward_filter`), reports bad
examples (:class:`train.datasets.BadDataLog`) and returns a dataset: :class:`CachedData`, the
memory-mapped cache of the frozen encoders' outputs (:mod:`train.cache`; stages 1 and 2), or
:class:`PixelData`, the decoded pixels (the VAE stage, ``--no-cache``), in the seeded order of
:mod:`train.data_order`. :func:`write_data_files` writes ``bad_data.jsonl``,
``data_report.json`` and ``provenance.jsonl`` into the run folder.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from train.cache import FrozenEncoders, TrainCache, build_or_load, cache_key
from train.config import TrainConfig
from train.data_order import EpochBatchSampler
from train.datasets import BadDataLog, EditExample, load_pair, scan
from train.models import Models
from train.reward_filter import prepare_training_data
from train.sources import load_source, provenance_summary, select_for_stage

# --- the datasets the DataLoader indexes ----------------------------------------------------


def identity_collate(batch: Any) -> Any:
    return batch


def split_items(items: Sequence[Any]) -> tuple[list[int], list[bool] | None]:
    """Sampler items -> (indices, flips or None): plain indices, or (index, flipped) pairs."""
    if items and isinstance(items[0], tuple):
        return [int(i) for i, _ in items], [bool(f) for _, f in items]
    return [int(i) for i in items], None


class CachedData(torch.utils.data.Dataset):
    """The cache as a dataset; ``__getitems__`` gathers a whole batch (DataLoader fast path)."""

    def __init__(self, cache: TrainCache):
        self.cache = cache

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.cache.gather([i]).items()}

    def __getitems__(self, items: Sequence[Any]) -> dict[str, torch.Tensor]:
        indices, flips = split_items(items)
        return self.cache.gather(indices, flips)


class PixelData(torch.utils.data.Dataset):
    """Examples decoded on the fly: pixels, instructions, joined reward texts and scores."""

    def __init__(
        self,
        examples: Sequence[EditExample],
        resolution: int,
        reward_texts: list[str] | None,
        text_subsets: list[list[str]] | None = None,
    ):
        self.examples, self.resolution, self.reward_texts = list(examples), resolution, reward_texts
        self.text_subsets = text_subsets  # per-perspective text dropout: 8 joins per example

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.__getitems__([i])

    def __getitems__(self, items: Sequence[Any]) -> dict[str, Any]:
        indices, flips = split_items(items)
        pairs = [load_pair(self.examples[i], self.resolution) for i in indices]
        original = torch.stack([p[0] for p in pairs])  # (B, 3, H, W)
        edited = torch.stack([p[1] for p in pairs])
        if flips is not None and any(flips):
            f = torch.tensor(flips)
            original[f], edited[f] = original[f].flip(-1), edited[f].flip(-1)
        batch: dict[str, Any] = {
            "original_pixels": original,
            "edited_pixels": edited,
            "prompts": [self.examples[i].instruction for i in indices],
        }
        if self.reward_texts is not None:
            batch["reward_texts"] = [self.reward_texts[i] for i in indices]
            if self.text_subsets is not None:
                batch["reward_text_subsets"] = [self.text_subsets[i] for i in indices]
            batch["scores"] = torch.tensor(
                [self.examples[i].rewards.scores for i in indices], dtype=torch.float32
            )  # (B, 3)
        return batch


# --- a run's training data -----------------------------------------------------------------


@dataclass
class TrainingData:
    dataset: Any  # CachedData or PixelData
    kept: list[EditExample]  # the examples trained on, in dataset order
    null_text: torch.Tensor  # (L, D): the empty prompt's embedding, for text dropout
    report: dict[str, Any]  # data_report.json
    bad: BadDataLog
    with_provenance: bool  # write provenance.jsonl (store data, or a reward filter applied)
    examples_checked: int  # how many examples were checked (for the bad-data summary)

    def step_budget(self, cfg: TrainConfig, processes: int, main: bool) -> int:
        """max_train_steps, or num_train_epochs passes over the data in optimizer steps."""
        if not cfg.num_train_epochs:
            return cfg.max_train_steps
        micro_per_epoch = len(self.dataset) // (cfg.train_batch_size * processes)  # as the sampler
        per_epoch = math.ceil(micro_per_epoch / cfg.gradient_accumulation_steps)
        steps = max(1, cfg.num_train_epochs * per_epoch)
        if main:
            print(f"num_train_epochs {cfg.num_train_epochs} x {per_epoch} steps = {steps} steps.")
        return steps

    def batches(
        self, cfg: TrainConfig, accelerator: Any, start: int
    ) -> tuple[EpochBatchSampler, Iterator[Any]]:
        """This process's batches in the seeded order, from micro-batch ``start`` on."""
        sampler = EpochBatchSampler(
            len(self.dataset), cfg.train_batch_size, accelerator.num_processes,
            accelerator.process_index, cfg.seed, start, flip=cfg.random_flip,
        )  # fmt: skip
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=sampler,
            collate_fn=identity_collate,
            num_workers=cfg.dataloader_num_workers,
            persistent_workers=cfg.dataloader_num_workers > 0,
        )
        return sampler, iter(loader)


def load_training_data(
    cfg: TrainConfig,
    models: Models,
    encoders: FrozenEncoders,
    resolution: int,
    accelerator: Any,
    cached: bool,
) -> TrainingData:
    """The dataset of the run; ``cached``: the frozen encoders' outputs, else decoded pixels."""
    main = accelerator.is_main_process
    source = load_source(cfg)
    examples, unlabeled = select_for_stage(source, cfg.stage)
    log = BadDataLog(cfg.on_bad_data)
    log.extend(source.bad)
    examples, data_ops = prepare_training_data(
        cfg, examples, log, resolution, cfg.run_dir if main else None, progress=main
    )
    with_rewards = bool(examples) and all(ex.rewards is not None for ex in examples)
    cache = None
    if cached:
        with accelerator.main_process_first():
            cache = _cache(cfg, models, encoders, examples, resolution, with_rewards, log, main)
        by_id = {ex.id: ex for ex in examples}
        kept = [by_id[i] for i in cache.ids]
        dataset: Any = CachedData(cache)
        null_text = cache.null_text.to(encoders.device)
    else:
        kept = [ex for ex, _, _ in scan(examples, log, resolution, progress=main)]
        if not kept:
            raise ValueError("No usable training examples: every example was reported as bad.")
        joined = [encoders.join(ex) for ex in kept] if with_rewards and cfg.stage else None
        subsets = None
        if joined is not None and _text_subsets(cfg):
            subsets = [encoders.subset_joins(ex) for ex in kept]
        dataset = PixelData(kept, resolution, joined, subsets)
        null_text = encoders.texts([""])[0]
    if cfg.stage == 2 and not with_rewards:
        raise ValueError("Stage 2 needs reward labels, and none of the training examples has one.")
    report = {
        **source.info,
        "examples_in_source": len(source.examples) + len(source.bad),
        "unlabeled_left_out": unlabeled,
        "bad": len(log.items),
        "bad_by_kind": log.counts(),
        "used": len(kept),
        "label_origins": provenance_summary(kept),
        **data_ops,
        "cache": str(cache.path) if cache is not None else None,
        "resolution": resolution,
        "model": models.source,
        "num_processes": accelerator.num_processes,
    }
    with_provenance = source.info.get("source") == "store" or bool(data_ops)
    return TrainingData(dataset, kept, null_text, report, log, with_provenance, len(examples))


def _cache(
    cfg: TrainConfig,
    models: Models,
    encoders: FrozenEncoders,
    examples: list[EditExample],
    resolution: int,
    with_rewards: bool,
    log: BadDataLog,
    progress: bool,
) -> TrainCache:
    subsets = with_rewards and _text_subsets(cfg)
    key = cache_key(
        models.encoder_hash(), examples, resolution, cfg.cache_dtype, with_rewards,
        encoders.reward_text_mode, str(encoders.dtype), flip=cfg.random_flip,
        text_subsets=subsets,
    )  # fmt: skip
    return build_or_load(
        cfg.resolved_cache_dir, key, examples, encoders, resolution, cfg.cache_dtype,
        with_rewards, log, progress=progress, flip=cfg.random_flip, text_subsets=subsets,
    )  # fmt: skip


def _text_subsets(cfg: TrainConfig) -> bool:
    """Stage 2 with per-perspective text dropout needs every keep/drop combination's embedding."""
    return cfg.stage == 2 and cfg.reward_text_dropout_mode == "per_perspective"


def write_data_files(data: TrainingData, out: Path) -> None:
    """``bad_data.jsonl``, ``data_report.json`` and (if wanted) ``provenance.jsonl``."""
    data.bad.write(out / "bad_data.jsonl")
    (out / "data_report.json").write_text(json.dumps(data.report, indent=1, default=str))
    if data.with_provenance:
        with open(out / "provenance.jsonl", "w", encoding="utf-8") as f:
            for ex in data.kept:
                f.write(json.dumps({"id": ex.id, **ex.provenance}) + "\n")
    print(data.bad.summary(data.examples_checked))
