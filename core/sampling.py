"""What a pipeline samples with unless a call says otherwise: the sampler table
(:func:`make_scheduler`) and the default text / image guidance a pipeline folder records in its
``model_index.json`` (:func:`recorded_guidance`, :func:`record_guidance`). InstructPix2Pix's
7.5 / 1.5 suit SD-scale models; small models record values measured for them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
)

from core.pipeline_inputs import check_scale

SCHEDULERS = {
    "euler": EulerDiscreteScheduler,
    "euler_ancestral": EulerAncestralDiscreteScheduler,  # InstructPix2Pix's and the authors' choice
    "ddim": DDIMScheduler,
    "dpm": DPMSolverMultistepScheduler,
}
# Stable Diffusion 1.x training schedule: 1000 steps, scaled-linear betas.
SD_SCHEDULE = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
)


def make_scheduler(name: str, config: Any = None, **overrides: Any):
    """A scheduler by short name (``euler``, ``euler_ancestral``, ``ddim``, ``dpm``), from an
    existing scheduler's config (swap samplers, same training schedule) or SD's schedule."""
    if name not in SCHEDULERS:
        raise ValueError(f"Unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}.")
    if config is not None:
        return SCHEDULERS[name].from_config(config, **overrides)
    return SCHEDULERS[name](**{**SD_SCHEDULE, **overrides})


# InstructPix2Pix's guidance (Brooks et al.), used unless a pipeline folder records its own.
DEFAULT_GUIDANCE = (7.5, 1.5)  # (text, image)


def guidance_config(guidance_scale: float, image_guidance_scale: float) -> dict[str, float]:
    """The two ``model_index.json`` keys of a recorded default guidance, checked (>= 1)."""
    return {
        "default_guidance_scale": check_scale(guidance_scale, "default_guidance_scale", 1.0),
        "default_image_guidance_scale": check_scale(
            image_guidance_scale, "default_image_guidance_scale", 1.0
        ),
    }


def recorded_guidance(folder: str | Path) -> tuple[float, float]:
    """The (text, image) guidance a pipeline folder records in ``model_index.json``
    (``default_guidance_scale``, ``default_image_guidance_scale``), read without loading the
    model; :data:`DEFAULT_GUIDANCE` for what records none (a stock folder, a hub id)."""
    index = Path(folder).expanduser() / "model_index.json"
    if not index.is_file():
        return DEFAULT_GUIDANCE
    try:
        cfg = json.loads(index.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {index}: {e}") from e
    checked = guidance_config(
        cfg.get("default_guidance_scale", DEFAULT_GUIDANCE[0]),
        cfg.get("default_image_guidance_scale", DEFAULT_GUIDANCE[1]),
    )
    return checked["default_guidance_scale"], checked["default_image_guidance_scale"]


def record_guidance(folder: str | Path, guidance_scale: float, image_guidance_scale: float) -> None:
    """Write measured default guidance into a saved pipeline folder's ``model_index.json``, for an
    MRC folder or a stock InstructPix2Pix one alike (which keeps its class and components:
    diffusers' stock pipeline loads it with a warning that it ignores the two keys; this pipeline
    and :func:`recorded_guidance` read them).
    """
    index = Path(folder).expanduser() / "model_index.json"
    if not index.is_file():
        raise ValueError(f"{folder} is not a saved pipeline folder (no model_index.json).")
    cfg = {**json.loads(index.read_text()), **guidance_config(guidance_scale, image_guidance_scale)}
    tmp = index.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    tmp.replace(index)
