"""The training loop: VAE (stage 0), InstructPix2Pix (stage 1) and MRC (stage 2) on ``accelerate``.

:func:`train` runs unchanged on a CPU, one GPU, several GPUs or several nodes (``accelerate
launch``): accelerate wraps the model in DDP, handles mixed precision and saves or restores the
whole state. :class:`TrainLoop` reads top to bottom: set-up (models, data, optimisation), then
``run_loop`` -> ``run_step`` -> ``forward_backward`` -> ``optimise``, ``save``, ``validate``, and
``export``. What a batch becomes and the loss it gives is the stage's objective
(:mod:`train.objectives`, with the draws of a step); the data is :mod:`train.training_data`.

Outputs in ``output_dir``: ``checkpoint-<step>/`` (resumable, with config.yaml),
``logs/metrics.jsonl`` and TensorBoard events, ``validation/step-*.png``, ``bad_data.jsonl``,
``data_report.json``, and at the end ``pipeline/``: a folder that
``MRCInstructPix2PixPipeline.from_pretrained`` (and the studio) load directly; with
``push_to_hub`` it gets a model card and is uploaded (:mod:`train.hub`). Optional packages and
GPU settings (trackers, 8-bit Adam, xformers, TF32) live in :mod:`train.integrations`.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any

import torch
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from train.cache import FrozenEncoders
from train.checkpoints import (
    MetricsLog,
    Progress,
    prune_checkpoints,
    read_metrics,
    resume_point,
    save_checkpoint,
)
from train.config import TrainConfig
from train.data_order import step_generator
from train.hub import push_to_hub, results_summary, write_model_card
from train.integrations import (
    apply_speed_settings,
    check_integrations,
    load_validation_example,
    log_validation_grid,
    make_accelerator,
    make_optimizer,
    tracker_hparams,
)
from train.models import (
    build_models,
    export_pipeline,
    move_frozen,
    restore_float32,
    set_trainable,
)
from train.objectives import objective_for_stage
from train.starting_checkpoint import check_model_for_stage
from train.training_data import load_training_data, write_data_files
from train.validation import save_grid

WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def train(cfg: TrainConfig) -> Path:
    """Run (or continue) the training described by ``cfg``; returns the pipeline folder."""
    return TrainLoop(cfg).run()


class TrainLoop:
    """One run: set-up, the optimizer steps, checkpoints, validation, the exported pipeline."""

    def __init__(self, cfg: TrainConfig):
        self.cfg, self.out = cfg, cfg.run_dir
        self.objective_class = objective_for_stage(cfg.stage)  # built in set_up_optimisation
        # Refuse what cannot work before any work: missing optional packages, unusable checkpoints.
        check_integrations(cfg)
        check_model_for_stage(cfg.model, cfg.stage, cfg.revision)
        self.accelerator = make_accelerator(cfg)
        self.main = self.accelerator.is_main_process
        self.resume = resume_point(self.out, cfg)
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            cfg.save(self.out / "config.yaml")

    def run(self) -> Path:
        self.set_up_models()
        self.set_up_data()
        self.set_up_optimisation()
        self.run_loop()
        return self.export()

    # -- set-up ------------------------------------------------------------------------------------
    def set_up_models(self) -> None:
        cfg, models = self.cfg, build_models(self.cfg)
        self.models = models
        if self.main:
            for change in models.changes:
                print(f"Model: {change}.")
        self.device = self.accelerator.device
        self.weight_dtype = WEIGHT_DTYPES[cfg.mixed_precision]
        # Mixed precision runs the frozen encoders in half precision (float32 copies kept aside).
        self.frozen = self.objective_class.frozen_modules(models)
        self.fp32_weights = move_frozen(self.frozen, self.device, self.weight_dtype)
        self.resolution = models.training_resolution(cfg.resolution)
        text_mode = models.reward_text_mode(cfg.reward_text_mode)
        self.encoders = FrozenEncoders(models, text_mode, self.device, self.weight_dtype)

    def set_up_data(self) -> None:
        """Checked training data, cached for stages 1 and 2 (the VAE stage's inputs change)."""
        cached = self.cfg.cache and self.objective_class.encodes_inputs
        self.data = load_training_data(
            self.cfg, self.models, self.encoders, self.resolution, self.accelerator, cached
        )
        if self.main:
            write_data_files(self.data, self.out)

    def set_up_optimisation(self) -> None:
        """Optimizer, LR schedule, EMA, the resumed state, the data order and the objective."""
        cfg, acc, models = self.cfg, self.accelerator, self.models
        self.params = set_trainable(models, cfg.stage, cfg.trainable)
        module = models.trained_module(cfg.stage)
        if cfg.gradient_checkpointing:
            module.enable_gradient_checkpointing()
        for setting in apply_speed_settings(cfg, self.objective_class.network(models)):
            if self.main:
                print(f"Speed: {setting}.")
        self.accum = cfg.gradient_accumulation_steps
        self.global_batch = cfg.train_batch_size * self.accum * acc.num_processes
        lr = cfg.learning_rate * (self.global_batch if cfg.scale_lr else 1)
        optimizer = make_optimizer(cfg, self.params, lr)
        self.max_steps = self.data.step_budget(cfg, acc.num_processes, self.main)
        self.lr_scheduler = get_scheduler(
            cfg.lr_scheduler,
            optimizer,
            num_warmup_steps=cfg.lr_warmup_steps,
            num_training_steps=self.max_steps,
        )
        self.module, self.optimizer = acc.prepare(module, optimizer)
        self.progress = Progress()
        acc.register_for_checkpointing(self.lr_scheduler, self.progress)
        self.ema = None
        if cfg.use_ema:
            self.ema = EMAModel(self.params, decay=cfg.ema_decay, use_ema_warmup=True)
            self.ema.to(self.device)
            acc.register_for_checkpointing(self.ema)
        self.start = self.load_resumed_state()
        resumed_at = self.start if self.resume is not None else None  # cut the log back to it
        log = self.out / "logs" / "metrics.jsonl"
        self.metrics = MetricsLog(log, resumed_at) if self.main else None
        self.sampler, self.batches = self.data.batches(cfg, acc, self.start * self.accum)
        self.objective = self.objective_class(
            cfg, models, self.encoders, self.data.null_text, self.device
        )

    def load_resumed_state(self) -> int:
        """Restore the checkpoint's state (if resuming); returns the step to start from."""
        if self.resume is not None:
            self.accelerator.load_state(str(self.resume))
            if self.ema is not None:
                self.ema.to(self.device)
            if self.main:
                print(f"Resumed from {self.resume} at step {self.progress.global_step}.")
        start = self.progress.global_step
        if start >= self.max_steps and self.main:
            print(f"At step {start} >= the step budget {self.max_steps}: exporting, no training.")
        if self.main and self.cfg.report_to != "none":
            self.accelerator.init_trackers(
                self.cfg.tracker_project_name, config=tracker_hparams(self.cfg)
            )
        return start

    # -- the loop ----------------------------------------------------------------------------------
    def run_loop(self) -> None:
        cfg, main = self.cfg, self.main
        self.val_examples = self.data.kept[: cfg.num_validation_images]
        self.user_example = load_validation_example(cfg, self.resolution)  # --validation_prompt
        self.unwrapped = self.accelerator.unwrap_model(self.module)
        self.bar = tqdm(
            total=self.max_steps, initial=self.start, desc=f"stage {cfg.stage}", disable=not main,
            dynamic_ncols=True,
        )  # fmt: skip
        self.module.train()
        for step in range(self.start, self.max_steps):
            self.run_step(step)
            if cfg.checkpointing_steps and (step + 1) % cfg.checkpointing_steps == 0:
                self.save(step + 1)
            if main and cfg.validation_steps and (step + 1) % cfg.validation_steps == 0:
                self.validate(step + 1)
        self.bar.close()

    def run_step(self, step: int) -> None:
        t0 = time.perf_counter()
        loss = self.forward_backward(step)
        self.optimise()
        self.progress.global_step = step + 1
        loss_value = self.accelerator.reduce(loss, reduction="mean").item()
        if not math.isfinite(loss_value):
            raise FloatingPointError(
                f"The loss became {loss_value} at step {step + 1}; lower the learning rate or "
                "check the data. The last checkpoint is intact."
            )
        self.record = {
            "step": step + 1,
            "loss": loss_value,
            "lr": self.lr_scheduler.get_last_lr()[0],
            "epoch": self.sampler.epoch_of(step * self.accum),
            "samples_per_s": self.global_batch / (time.perf_counter() - t0),
        }
        if self.main:
            self.log_step(self.record)

    def forward_backward(self, step: int) -> torch.Tensor:
        """Gradients of the step's A micro-batches (DDP syncs on the last); their mean loss."""
        losses = []
        for micro in range(self.accum):
            k = step * self.accum + micro
            cond = self.objective.conditioning(next(self.batches))
            sync = micro == self.accum - 1
            with contextlib.nullcontext() if sync else self.accelerator.no_sync(self.module):
                g = step_generator(self.cfg.seed, self.accelerator.process_index, k)
                loss = self.objective.loss(self.module, cond, g)
                self.accelerator.backward(loss / self.accum)
            losses.append(loss.detach())
        return torch.stack(losses).mean()

    def optimise(self) -> None:
        if self.cfg.max_grad_norm > 0:
            self.accelerator.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.step(self.params)

    def log_step(self, record: dict[str, Any]) -> None:
        self.metrics.write(record)
        self.accelerator.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])
        self.bar.set_postfix(
            loss=f"{record['loss']:.4f}", samples_s=f"{record['samples_per_s']:.1f}"
        )
        self.bar.update(1)

    def save(self, step: int) -> None:
        """A resumable checkpoint (every process takes part); the oldest beyond the limit go."""
        info = {
            "epoch": self.record["epoch"],
            "loss": self.record["loss"],
            "num_processes": self.accelerator.num_processes,
            "global_batch": self.global_batch,
        }
        save_checkpoint(self.accelerator, self.out, step, self.cfg, info)
        if self.main:
            prune_checkpoints(self.out, self.cfg.checkpoints_total_limit)

    def validate(self, step: int) -> None:
        """A grid of validation edits with the EMA weights (when kept); training RNG untouched."""
        if not self.val_examples and self.user_example is None:
            return
        ema, params = self.ema, self.params
        self.unwrapped.eval()
        if ema is not None:
            ema.store(params)
            ema.copy_to(params)
        try:
            with self.accelerator.autocast():  # mixed precision: encoders half, trained float
                grid, titles = self.objective.validation_grid(
                    self.unwrapped, self.val_examples, self.user_example, self.resolution
                )
        finally:
            if ema is not None:
                ema.restore(params)
            self.unwrapped.train()
        path = save_grid(grid, self.cfg.run_dir / "validation", step)
        log_validation_grid(self.accelerator, self.cfg, grid, titles, step)
        print(f"Validation edits at step {step}: {path}")

    # -- export ------------------------------------------------------------------------------------
    def export(self) -> Path:
        """The pipeline folder (EMA weights, float32 encoders), and its model card if pushed."""
        self.accelerator.wait_for_everyone()
        path = self.out / "pipeline"
        if self.main:
            if self.ema is not None:
                self.ema.copy_to(self.params)
            self.objective.before_export(self.data.dataset)
            restore_float32(self.frozen, self.fp32_weights)
            export_pipeline(self.models, path, self.cfg, self.data.report)
            print(f"Saved the trained pipeline to {path}.")
            if self.cfg.push_to_hub:
                results = results_summary(
                    read_metrics(self.out), self.global_batch, len(self.data.kept)
                )
                write_model_card(self.cfg, path, self.data.report, results)
                print(f"Uploaded the pipeline and its model card to {push_to_hub(self.cfg, path)}.")
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()
        return path
