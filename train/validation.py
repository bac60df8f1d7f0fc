"""Validation edits during training: a grid of input | target | model edit, every N steps.

The same fixed training examples are edited at every validation, with a fixed seed, by the
pipeline built over the live (or EMA) weights, so successive grids show the model's progress
and nothing else. Stage 2 models are asked for the best reward (5, 5, 5) and, in a fourth
column, for the lowest following score (0, 5, 5): the two should differ once rewards steer.
Stage 0 (the VAE alone) shows input | reconstruction instead. Validation never touches the training randomness (it runs inside ``torch.random.fork_rng`` and
uses its own generator), so a run with validation follows the same loss curve as one without.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from train.datasets import EditExample
from train.models import Models, build_pipeline

MIN_CELL = 128  # small training images are enlarged (nearest neighbour) for viewing


def _cell(img: Image.Image, size: int) -> Image.Image:
    img = img.convert("RGB")
    return img if img.size == (size, size) else img.resize((size, size), Image.NEAREST)


@torch.no_grad()
def render_reconstructions(
    models: Models, examples: Sequence[EditExample], resolution: int
) -> tuple[Image.Image, list[str]]:
    """Stage 0: input | VAE reconstruction, for both images of each example."""
    from train.datasets import to_pixels

    vae = models.vae
    pix = torch.stack(
        [to_pixels(im.load(), resolution) for ex in examples for im in (ex.original, ex.edited)]
    )  # (2n, 3, H, W)
    recon = vae.decode(vae.encode(pix.to(vae.device, vae.dtype)).latent_dist.mode()).sample
    size = max(resolution, MIN_CELL)
    grid = Image.new("RGB", (size * 2, size * len(pix)), "white")
    for r, (a, b) in enumerate(zip(pix, recon.float().cpu().clamp(-1, 1))):
        grid.paste(_cell(_as_image(a), size), (0, r * size))
        grid.paste(_cell(_as_image(b), size), (size, r * size))
    return grid, ["input", "reconstruction"]


@torch.no_grad()
def render_validation(
    models: Models,
    examples: Sequence[EditExample],
    resolution: int,
    cfg: Any,
    mrc_unet: Any = None,
    user_example: tuple[torch.Tensor, str] | None = None,
) -> tuple[Image.Image, list[str]]:
    """Edit ``examples``; returns the grid (one row per example) and its column titles.

    ``user_example`` ((3, R, R) pixels, instruction: ``--validation_prompt`` /
    ``--validation_image``) is edited in a last row, whose target cell stays blank."""
    from train.datasets import to_pixels

    pipe = build_pipeline(models, mrc_unet)
    device = models.unet.device
    pipe.to(device)
    size = max(resolution, MIN_CELL)
    inputs = [_as_image(to_pixels(ex.original.load(), resolution)) for ex in examples]
    targets = [_as_image(to_pixels(ex.edited.load(), resolution)) for ex in examples]
    prompts = [ex.instruction for ex in examples]
    if user_example is not None:
        inputs.append(_as_image(user_example[0]))
        targets.append(Image.new("RGB", (resolution, resolution), "white"))  # no target
        prompts.append(user_example[1])
    rewards = [(5.0, 5.0, 5.0)]
    titles = ["input", "target", "edit"]
    if models.reward_module is not None:
        rewards.append((0.0, 5.0, 5.0))
        titles = ["input", "target", "edit @5/5/5", "edit @0/5/5"]
    columns = [inputs, targets]
    with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
        for r in rewards:
            out = pipe(
                prompt=prompts,
                image=inputs,
                rewards=[r] * len(prompts),
                num_inference_steps=cfg.validation_inference_steps,
                guidance_scale=cfg.validation_guidance_scale,
                image_guidance_scale=cfg.validation_image_guidance_scale,
                generator=torch.Generator().manual_seed(cfg.seed),
            ).images
            columns.append(out)
    rows = len(prompts)
    grid = Image.new("RGB", (size * len(columns), size * rows), "white")
    for c, col in enumerate(columns):
        for r, img in enumerate(col):
            grid.paste(_cell(img, size), (c * size, r * size))
    return grid, titles


def _as_image(pixels: torch.Tensor) -> Image.Image:
    """(3, H, W) in [-1, 1] -> PIL."""
    a = ((pixels.permute(1, 2, 0).numpy() + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8)
    return Image.fromarray(a)


def save_grid(grid: Image.Image, out_dir: Path, step: int) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"step-{step:07d}.png"
    grid.save(path)
    return path
