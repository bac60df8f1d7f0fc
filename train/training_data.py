"""A run's training data: the source's examples -> checked, cached or pixel dataset + report.

:func:`load_training_data` takes the examples of ``cfg.data`` (:mod:`train.sources`), keeps
those the stage trains on, applies the reward filter (:mod:`train.reward_filter`), reports bad
examples (:class:`train.datasets.BadDataLog`) and returns a dataset: the memory-mapped cache of
the frozen encoders' outputs (:mod:`train.cache`; stages 1 and 2) or the decoded pixels (the VAE
stage, ``--no-cache``). :func:`write_data_files` writes ``bad_data.jsonl``,
``data_report.json`` and ``provenance.jsonl`` into the run folder.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from train.cache import FrozenEncoders, TrainCache, build_or_load, cache_key
from train.config import TrainConfig
from train.datasets import BadDataLog, EditExample, scan
from train.models import Models
from train.reward_filter import prepare_training_data
from train.sampler import CachedData, EpochBatchSampler, PixelData, identity_collate
from train.sources import load_source, provenance_summary, select_for_stage


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
        dataset = PixelData(kept, resolution, joined)
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
    key = cache_key(
        models.encoder_hash(), examples, resolution, cfg.cache_dtype, with_rewards,
        encoders.reward_text_mode, str(encoders.dtype), flip=cfg.random_flip,
    )  # fmt: skip
    return build_or_load(
        cfg.resolved_cache_dir, key, examples, encoders, resolution, cfg.cache_dtype,
        with_rewards, log, progress=progress, flip=cfg.random_flip,
    )  # fmt: skip


def write_data_files(data: TrainingData, out: Path) -> None:
    """``bad_data.jsonl``, ``data_report.json`` and (if wanted) ``provenance.jsonl``."""
    data.bad.write(out / "bad_data.jsonl")
    (out / "data_report.json").write_text(json.dumps(data.report, indent=1, default=str))
    if data.with_provenance:
        with open(out / "provenance.jsonl", "w", encoding="utf-8") as f:
            for ex in data.kept:
                f.write(json.dumps({"id": ex.id, **ex.provenance}) + "\n")
    print(data.bad.summary(data.examples_checked))
