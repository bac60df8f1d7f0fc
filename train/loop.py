"""The training loop: InstructPix2Pix (stage 1) and MRC (stage 2) on ``accelerate``.

One function, :func:`train`, runs unchanged on a CPU, one GPU, several GPUs or several nodes
(``accelerate launch``): accelerate wraps the model in DDP, handles mixed precision and saves or
restores the whole state. Per optimizer step (with ``A`` = gradient accumulation, ``P`` processes):

    for each of A micro-batches k (this process's slice of global batch k, see train.sampler):
        cond   = cached tensors, or the frozen VAE / text encoder applied to the batch now
        g      = Generator(seed, process, k)             # all draws below, on the CPU
        z0     = (mean + std * randn(g)) * vae_scale     # VAE posterior sample of the edit
        t, n   = randint(T, g), randn(g)
        zt     = add_noise(z0, n, t)
        text   -> "" embedding  where p < 2q             # conditioning dropout, p ~ U(g),
        c_I    -> zeros         where q <= p < 3q        #   q = conditioning_dropout_prob
        reward -> learned null  where u < reward_dropout  # stage 2
        r_text -> empty texts   where v < reward_text_dropout  # stage 2: scores alone
        pred   = UNet([zt, c_I], t, text[, reward])
        loss   = mse(pred, n or v(z0, n, t)) [x min-SNR weight]; backward(loss / A)
    clip, AdamW step, LR schedule step, EMA step

Outputs in ``output_dir``: ``checkpoint-<step>/`` (resumable, with config.yaml),
``logs/metrics.jsonl`` and TensorBoard events, ``validation/step-*.png``, ``bad_data.jsonl``,
``data_report.json``, and at the end ``pipeline/``: a folder that
``MRCInstructPix2PixPipeline.from_pretrained`` (and the studio) load directly; with
``push_to_hub`` it gets a model card and is uploaded (:mod:`train.hub`). Optional packages and
GPU settings (trackers, 8-bit Adam, xformers, TF32) live in :mod:`train.integrations`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel, compute_snr
from tqdm.auto import tqdm

from core.mrc import join_reward_texts
from train.cache import FrozenEncoders, build_or_load, cache_key
from train.checkpoints import (
    MetricsLog,
    Progress,
    list_checkpoints,
    prune_checkpoints,
    read_metrics,
    resolve_resume,
    save_checkpoint,
)
from train.config import TrainConfig, resume_mismatches
from train.datasets import BadDataLog, scan
from train.hub import push_to_hub, results_summary, write_model_card
from train.integrations import (
    apply_speed_settings,
    check_integrations,
    load_validation_example,
    log_validation_grid,
    make_optimizer,
    tracker,
)
from train.models import (
    Models,
    build_models,
    calibrate_scaling_factor,
    check_model_for_stage,
    export_pipeline,
    set_trainable,
)
from train.reward_filter import prepare_training_data
from train.sampler import CachedData, EpochBatchSampler, PixelData, identity_collate, step_generator
from train.sources import load_source, provenance_summary, select_for_stage
from train.validation import render_reconstructions, render_validation, save_grid

WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def train(cfg: TrainConfig) -> Path:
    """Run (or continue) the training described by ``cfg``; returns the pipeline folder."""
    out = cfg.run_dir
    # Refuse what cannot work before any work: missing optional packages, unusable checkpoints.
    check_integrations(cfg)
    check_model_for_stage(cfg.model, cfg.stage, cfg.revision)
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision,
        log_with=tracker(cfg),
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
    )
    main = accelerator.is_main_process
    _warn_single_cpu_process(accelerator)
    resume = resolve_resume(out, cfg.resume_from_checkpoint)
    if resume is None and list_checkpoints(out):
        raise ValueError(
            f"{out} already holds checkpoints of a run; pass --resume_from_checkpoint latest to "
            "continue it, or choose a new output_dir (a fresh run would mix with them)."
        )
    if resume is not None:
        saved = TrainConfig.load(resume / "config.yaml")
        diff = resume_mismatches(saved, cfg)
        if diff:
            raise ValueError(
                f"Cannot continue exactly from {resume}: settings that define the run changed ("
                + "; ".join(diff)
                + "). Use the checkpoint's settings, or start a new output_dir."
            )
    if main:
        out.mkdir(parents=True, exist_ok=True)
        cfg.save(out / "config.yaml")

    # -- models ---------------------------------------------------------------------------------
    models = build_models(cfg)
    if main:
        for change in models.changes:
            print(f"Model: {change}.")
    device = accelerator.device
    weight_dtype = WEIGHT_DTYPES[cfg.mixed_precision]
    frozen = [models.text_encoder] + ([models.vae] if cfg.stage != 0 else [])
    # Mixed precision runs the frozen encoders in half precision; their float32 weights are
    # kept aside so that the exported pipeline holds them unchanged.
    fp32_weights = []
    if weight_dtype != torch.float32:
        fp32_weights = [
            {k: v.detach().cpu().clone() for k, v in m.state_dict().items()} for m in frozen
        ]
    for m in frozen:  # nn.Module.to: no diffusers dtype warning
        torch.nn.Module.to(m, device=device, dtype=weight_dtype)
    resolution = cfg.resolution or models.native_resolution
    if resolution % models.vae_scale_factor:
        raise ValueError(
            f"resolution {resolution} is not a multiple of the VAE factor {models.vae_scale_factor}."
        )
    rm = models.reward_module
    text_mode = rm.config.text_mode if rm is not None else cfg.reward_text_mode
    encoders = FrozenEncoders(models, text_mode, device, weight_dtype)

    # -- data -----------------------------------------------------------------------------------
    source = load_source(cfg)
    examples, unlabeled = select_for_stage(source, cfg.stage)
    log = BadDataLog(cfg.on_bad_data)
    log.extend(source.bad)
    examples, data_ops = prepare_training_data(
        cfg, examples, log, resolution, out if main else None, progress=main
    )
    with_rewards = bool(examples) and all(ex.rewards is not None for ex in examples)
    if cfg.cache and cfg.stage != 0:  # stage 0 trains the VAE: its outputs change every step
        key = cache_key(
            models.encoder_hash(), examples, resolution, cfg.cache_dtype, with_rewards, text_mode,
            str(weight_dtype), flip=cfg.random_flip,
        )  # fmt: skip
        with accelerator.main_process_first():
            cache = build_or_load(
                cfg.resolved_cache_dir, key, examples, encoders, resolution, cfg.cache_dtype,
                with_rewards, log, progress=main, flip=cfg.random_flip,
            )  # fmt: skip
        by_id = {ex.id: ex for ex in examples}
        kept = [by_id[i] for i in cache.ids]
        dataset: Any = CachedData(cache)
        null_text = cache.null_text.to(device)
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
        "cache": str(cache.path) if cfg.cache and cfg.stage != 0 else None,
        "resolution": resolution,
        "model": models.source,
        "num_processes": accelerator.num_processes,
    }
    if main:
        log.write(out / "bad_data.jsonl")
        (out / "data_report.json").write_text(json.dumps(report, indent=1, default=str))
        if source.info.get("source") == "store" or data_ops:
            with open(out / "provenance.jsonl", "w", encoding="utf-8") as f:
                for ex in kept:
                    f.write(json.dumps({"id": ex.id, **ex.provenance}) + "\n")
        print(log.summary(len(examples)))

    # -- optimisation ---------------------------------------------------------------------------
    params = set_trainable(models, cfg.stage, cfg.trainable)
    module = models.trained_module(cfg.stage)
    if cfg.gradient_checkpointing:
        module.enable_gradient_checkpointing()
    for setting in apply_speed_settings(cfg, models.vae if cfg.stage == 0 else models.unet):
        if main:
            print(f"Speed: {setting}.")
    global_batch = (
        cfg.train_batch_size * cfg.gradient_accumulation_steps * accelerator.num_processes
    )
    lr = cfg.learning_rate * (global_batch if cfg.scale_lr else 1)
    optimizer = make_optimizer(cfg, params, lr)
    max_steps = _step_budget(cfg, len(dataset), accelerator.num_processes, main)
    lr_scheduler = get_scheduler(
        cfg.lr_scheduler,
        optimizer,
        num_warmup_steps=cfg.lr_warmup_steps,
        num_training_steps=max_steps,
    )
    module, optimizer = accelerator.prepare(module, optimizer)
    progress = Progress()
    accelerator.register_for_checkpointing(lr_scheduler, progress)
    ema = None
    if cfg.use_ema:
        ema = EMAModel(params, decay=cfg.ema_decay, use_ema_warmup=True)
        ema.to(device)
        accelerator.register_for_checkpointing(ema)
    if resume is not None:
        accelerator.load_state(str(resume))
        if ema is not None:
            ema.to(device)
        if main:
            print(f"Resumed from {resume} at step {progress.global_step}.")
    start = progress.global_step
    if start >= max_steps and main:
        print(f"At step {start} >= the step budget {max_steps}: exporting, no training.")
    if main and cfg.report_to != "none":
        accelerator.init_trackers(cfg.tracker_project_name, config=_hparams(cfg))
    metrics = (
        MetricsLog(out / "logs" / "metrics.jsonl", start if resume is not None else None)
        if main
        else None
    )

    accum = cfg.gradient_accumulation_steps
    rank = accelerator.process_index
    sampler = EpochBatchSampler(
        len(dataset), cfg.train_batch_size, accelerator.num_processes, rank, cfg.seed,
        start * accum, flip=cfg.random_flip,
    )  # fmt: skip
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=identity_collate,
        num_workers=cfg.dataloader_num_workers,
        persistent_workers=cfg.dataloader_num_workers > 0,
    )
    batches = iter(loader)
    ctx = _StepContext(cfg, models, encoders, null_text, device)
    val_examples = kept[: cfg.num_validation_images]
    user_example = load_validation_example(cfg, resolution)  # --validation_prompt/_image
    unwrapped = accelerator.unwrap_model(module)

    bar = tqdm(
        total=max_steps, initial=start, desc=f"stage {cfg.stage}", disable=not main,
        dynamic_ncols=True,
    )  # fmt: skip
    module.train()
    for step in range(start, max_steps):
        t0 = time.perf_counter()
        losses = []
        for micro in range(accum):
            k = step * accum + micro
            cond = ctx.conditioning(next(batches))
            sync = micro == accum - 1
            with contextlib.nullcontext() if sync else accelerator.no_sync(module):
                loss = ctx.loss(module, cond, step_generator(cfg.seed, rank, k))
                accelerator.backward(loss / accum)
            losses.append(loss.detach())
        if cfg.max_grad_norm > 0:
            accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(params)
        progress.global_step = step + 1
        loss_value = accelerator.reduce(torch.stack(losses).mean(), reduction="mean").item()
        if not math.isfinite(loss_value):
            raise FloatingPointError(
                f"The loss became {loss_value} at step {step + 1}; lower the learning rate or "
                "check the data. The last checkpoint is intact."
            )
        seconds = time.perf_counter() - t0
        record = {
            "step": step + 1,
            "loss": loss_value,
            "lr": lr_scheduler.get_last_lr()[0],
            "epoch": sampler.epoch_of(step * accum),
            "samples_per_s": global_batch / seconds,
        }
        if main:
            metrics.write(record)
            accelerator.log({k: v for k, v in record.items() if k != "step"}, step=step + 1)
            bar.set_postfix(loss=f"{loss_value:.4f}", samples_s=f"{record['samples_per_s']:.1f}")
            bar.update(1)
        if cfg.checkpointing_steps and (step + 1) % cfg.checkpointing_steps == 0:
            info = {
                "epoch": record["epoch"],
                "loss": loss_value,
                "num_processes": accelerator.num_processes,
                "global_batch": global_batch,
            }
            save_checkpoint(accelerator, out, step + 1, cfg, info)
            if main:
                prune_checkpoints(out, cfg.checkpoints_total_limit)
        if main and cfg.validation_steps and (step + 1) % cfg.validation_steps == 0:
            _validate(
                accelerator, models, unwrapped, params, ema, val_examples, user_example,
                resolution, cfg, step + 1,
            )  # fmt: skip
    bar.close()

    accelerator.wait_for_everyone()
    path = out / "pipeline"
    if main:
        if ema is not None:
            ema.copy_to(params)
        if cfg.stage == 0:
            sample = [dataset[i]["edited_pixels"][0] for i in range(min(len(dataset), 256))]
            factor = calibrate_scaling_factor(models.vae, torch.stack(sample))
            print(f"VAE scaling_factor = {factor:.4f} (1 / std of training latents)")
        for m, weights in zip(frozen, fp32_weights):
            torch.nn.Module.to(m, dtype=torch.float32)
            m.load_state_dict(weights)
        export_pipeline(models, path)
        cfg.save(path / "training_config.yaml")
        (path / "training_data.json").write_text(json.dumps(report, indent=1, default=str))
        print(f"Saved the trained pipeline to {path}.")
        if cfg.push_to_hub:
            results = results_summary(read_metrics(out), global_batch, len(kept))
            write_model_card(cfg, path, report, results)
            print(f"Uploaded the pipeline and its model card to {push_to_hub(cfg, path)}.")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return path


def _validate(
    accelerator, models, unwrapped, params, ema, examples, user_example, resolution, cfg, step
) -> None:
    if not examples and user_example is None:
        return
    mrc_unet = unwrapped if models.reward_module is not None else None
    unwrapped.eval()
    if ema is not None:
        ema.store(params)
        ema.copy_to(params)
    try:
        with accelerator.autocast():  # mixed precision: encoders in half, trained model in float
            if cfg.stage == 0:
                grid, titles = render_reconstructions(models, examples, resolution)
            else:
                grid, titles = render_validation(
                    models, examples, resolution, cfg, mrc_unet, user_example
                )
    finally:
        if ema is not None:
            ema.restore(params)
        unwrapped.train()
    path = save_grid(grid, cfg.run_dir / "validation", step)
    log_validation_grid(accelerator, cfg, grid, titles, step)
    print(f"Validation edits at step {step}: {path}")


def _step_budget(cfg: TrainConfig, n: int, processes: int, main: bool) -> int:
    """max_train_steps, or num_train_epochs passes over the n examples in optimizer steps."""
    if not cfg.num_train_epochs:
        return cfg.max_train_steps
    micro_per_epoch = n // (cfg.train_batch_size * processes)  # as EpochBatchSampler
    per_epoch = math.ceil(micro_per_epoch / cfg.gradient_accumulation_steps)
    steps = max(1, cfg.num_train_epochs * per_epoch)
    if main:
        print(f"num_train_epochs {cfg.num_train_epochs} x {per_epoch} steps = {steps} steps.")
    return steps


def _warn_single_cpu_process(accelerator: Accelerator) -> None:
    """``accelerate launch --cpu --num_processes N`` starts ONE process unless MPI is used."""
    launched = os.environ.get("MASTER_ADDR") and os.environ.get("ACCELERATE_USE_CPU")
    if accelerator.is_main_process and launched and accelerator.num_processes == 1:
        print(
            "Note: this is a single process. accelerate's --cpu launcher starts several CPU "
            "processes only through MPI (--mpirun_hostfile); without MPI use "
            "'ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N -m train ...' "
            "(torchrun + gloo). See docs/training.md."
        )


def _hparams(cfg: TrainConfig) -> dict[str, Any]:
    """TensorBoard accepts only scalars and strings as hyper-parameters."""
    return {
        k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
        for k, v in cfg.to_dict().items()
    }


class _StepContext:
    """Turns a batch into conditioning tensors and computes the training loss."""

    def __init__(
        self,
        cfg: TrainConfig,
        models: Models,
        encoders: FrozenEncoders,
        null_text: torch.Tensor,
        device,
    ):
        self.cfg, self.models, self.encoders = cfg, models, encoders
        self.null_text = null_text.float()  # (L, D)
        self.empty_reward_text = None
        if cfg.stage == 2:  # what a request with scores and no failure texts sends
            joined = join_reward_texts(("", "", ""), encoders.empty_text)
            self.empty_reward_text = encoders.reward_texts([joined])[0].to(device)  # (D) or (L, D)
        self.device = device
        self.scaling = float(models.vae.config.scaling_factor)
        self.noise_scheduler = models.noise_scheduler
        self.stage = cfg.stage

    def conditioning(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Cached batches are already tensors; pixel batches go through the frozen encoders."""
        if self.stage == 0:  # the VAE is what is trained: it sees pixels
            pixels = torch.cat([batch["original_pixels"], batch["edited_pixels"]])
            return {"pixels": pixels.to(self.device)}  # (2B, 3, H, W)
        if "original_pixels" in batch:
            enc = self.encoders
            original, _ = enc.images(batch["original_pixels"])
            mean, std = enc.images(batch["edited_pixels"])
            cond = {
                "original_latents": original,
                "edited_mean": mean,
                "edited_std": std,
                "text_embeds": enc.texts(batch["prompts"]),
            }
            if "reward_texts" in batch:
                cond["reward_text_embeds"] = enc.reward_texts(batch["reward_texts"])
                cond["scores"] = batch["scores"]
        else:
            cond = batch
        return {k: v.to(self.device, non_blocking=True) for k, v in cond.items()}

    def loss(self, module: Any, cond: dict[str, torch.Tensor], g: torch.Generator) -> torch.Tensor:
        if self.stage == 0:
            return self.autoencoder_loss(module, cond["pixels"], g)
        cfg, device = self.cfg, self.device
        mean, std = cond["edited_mean"], cond["edited_std"]  # (B, C, h, w)
        b = mean.shape[0]
        # Every random draw of the step, in a fixed order, from the step's generator.
        eps = torch.randn(mean.shape, generator=g).to(device)
        noise = torch.randn(mean.shape, generator=g).to(device)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (b,), generator=g)
        t = t.to(device)
        p = torch.rand(b, generator=g).to(device)
        u = torch.rand(b, generator=g).to(device)

        latents = (mean + std * eps) * self.scaling  # z0 ~ q(z | edited), scaled as SD
        noisy = self.noise_scheduler.add_noise(latents, noise, t)
        q = cfg.conditioning_dropout_prob
        text = torch.where((p < 2 * q)[:, None, None], self.null_text, cond["text_embeds"])
        keep_image = ~((p >= q) & (p < 3 * q))
        original = cond["original_latents"] * keep_image[:, None, None, None].to(mean.dtype)
        model_input = torch.cat([noisy, original], dim=1)  # (B, 2C, h, w)
        if self.stage == 2:
            pred = module(
                model_input,
                t,
                text,
                scores=cond["scores"],
                reward_text_embeds=self.reward_texts(cond["reward_text_embeds"], g),
                drop_mask=u < cfg.reward_dropout_prob,
            ).sample
        else:
            pred = module(model_input, t, text).sample
        prediction_type = self.noise_scheduler.config.prediction_type
        if prediction_type == "epsilon":
            target = noise
        else:
            target = self.noise_scheduler.get_velocity(latents, noise, t)
        per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        if cfg.snr_gamma > 0:
            snr = compute_snr(self.noise_scheduler, t)
            clipped = torch.clamp(snr, max=cfg.snr_gamma)
            weight = clipped / snr if prediction_type == "epsilon" else clipped / (snr + 1)
            per_sample = per_sample * weight
        return per_sample.mean()

    def reward_texts(self, embeds: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Failure texts -> the empty texts with probability reward_text_dropout_prob, so that
        the scores alone must carry the reward (drawn after every other draw of the step)."""
        v = torch.rand(embeds.shape[0], generator=g).to(self.device)
        drop = (v < self.cfg.reward_text_dropout_prob).view(-1, *([1] * (embeds.dim() - 1)))
        return torch.where(drop, self.empty_reward_text.to(embeds.dtype), embeds)

    def autoencoder_loss(self, step: Any, pixels: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Stage 0: pixel MSE of decode(sample of encode(x)) + a small KL to N(0, I)."""
        f = self.models.vae_scale_factor
        b, _, h, w = pixels.shape
        c = self.models.vae.config.latent_channels
        eps = torch.randn((b, c, h // f, w // f), generator=g).to(self.device)
        recon, mean, logvar = step(pixels, eps)
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)  # per latent element
        return F.mse_loss(recon.float(), pixels.float()) + self.cfg.vae_kl_weight * kl.mean()
