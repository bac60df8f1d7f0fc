"""Optional packages and GPU settings of a run: trackers, 8-bit Adam, xformers, TF32.

Every optional dependency is checked by :func:`check_integrations` when the run starts, before
the models are loaded or the cache is built, so a missing package costs seconds, not a cache
build: the error says which setting needs which package and how to do without it. None of these
packages is a requirement of the project.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration


def _installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def check_integrations(cfg: Any) -> None:
    """Raise ValueError naming the setting and the missing package, before any work."""
    if cfg.report_to == "wandb" and not _installed("wandb"):
        raise ValueError(
            "report_to='wandb' needs the wandb package, which is not installed: 'pip install "
            "wandb' (and 'wandb login'), or use --report_to tensorboard."
        )
    if cfg.use_8bit_adam and not _installed("bitsandbytes"):
        raise ValueError(
            "use_8bit_adam needs the bitsandbytes package, which is not installed: 'pip install "
            "bitsandbytes' (a CUDA GPU), or drop --use_8bit_adam to use fused AdamW."
        )
    if cfg.enable_xformers_memory_efficient_attention:
        if not _installed("xformers"):
            raise ValueError(
                "enable_xformers_memory_efficient_attention needs the xformers package, which is "
                "not installed: 'pip install xformers', or drop the flag (PyTorch's "
                "scaled_dot_product_attention is used, with its own memory-efficient kernels)."
            )
        if not torch.cuda.is_available():
            raise ValueError(
                "enable_xformers_memory_efficient_attention needs a CUDA GPU and none is visible."
            )
    if cfg.validation_image:
        from core.images import ImageError, load_image

        try:
            load_image(Path(cfg.validation_image))
        except ImageError as e:
            raise ValueError(
                f"validation_image {cfg.validation_image!r} cannot be read as an image: {e}"
            ) from e
    if cfg.push_to_hub:
        from huggingface_hub import get_token

        if get_token() is None:
            raise ValueError(
                "push_to_hub needs a Hugging Face token: run 'hf auth login' or set HF_TOKEN "
                "(checked now so that the upload does not fail after training)."
            )


def apply_speed_settings(cfg: Any, unet: Any) -> list[str]:
    """TF32 and the attention kernels; returns what was switched on, for the console."""
    done = []
    if cfg.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        done.append(
            "TF32 matmuls/convolutions"
            + ("" if torch.cuda.is_available() else " (no GPU: no effect)")
        )
    if cfg.enable_xformers_memory_efficient_attention:
        unet.enable_xformers_memory_efficient_attention()
        done.append("xformers attention")
    return done


def make_optimizer(cfg: Any, params: list[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """Fused AdamW (one kernel for all tensors: ~3x faster steps than the default on CPU), or
    bitsandbytes' AdamW8bit with the same hyper-parameters."""
    kw = dict(
        lr=lr,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        weight_decay=cfg.adam_weight_decay,
        eps=cfg.adam_epsilon,
    )
    if cfg.use_8bit_adam:
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, **kw)
    return torch.optim.AdamW(params, fused=True, **kw)


def tracker(cfg: Any) -> str | None:
    """accelerate's log_with for report_to."""
    return None if cfg.report_to == "none" else cfg.report_to


def make_accelerator(cfg: Any) -> Accelerator:
    """The run's Accelerator: mixed precision, the tracker, logs in ``<run_dir>/logs``."""
    out = cfg.run_dir
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision,
        log_with=tracker(cfg),
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
    )
    _warn_single_cpu_process(accelerator)
    return accelerator


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


def tracker_hparams(cfg: Any) -> dict[str, Any]:
    """The run's settings as hyper-parameters: TensorBoard accepts only scalars and strings."""
    return {
        k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
        for k, v in cfg.to_dict().items()
    }


def log_validation_grid(
    accelerator: Any, cfg: Any, grid: Any, titles: list[str], step: int
) -> None:
    """Send a validation grid (PIL) to every active tracker that takes images."""
    import numpy as np

    caption = " | ".join(titles)
    for t in accelerator.trackers:
        if t.name == "tensorboard":
            t.tracker.add_image(caption, np.asarray(grid), step, dataformats="HWC")
        elif t.name == "wandb":
            import wandb

            t.log({"validation": [wandb.Image(grid, caption=caption)]}, step=step)


def load_validation_example(cfg: Any, resolution: int) -> tuple[torch.Tensor, str] | None:
    """The user's own validation example as ((3, R, R) pixels, instruction), or None."""
    if not cfg.validation_prompt:
        return None
    from core.images import load_image
    from train.datasets import to_pixels

    return to_pixels(load_image(Path(cfg.validation_image)), resolution), cfg.validation_prompt
