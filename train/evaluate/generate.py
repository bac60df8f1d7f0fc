"""Producing a system's outputs: run a pipeline over benchmark items, or read pre-made images.

Pipelines are loaded lazily (only when some item still needs an output) with diffusers'
``from_pretrained``: :class:`core.pipeline.MRCInstructPix2PixPipeline` for ``mrc`` systems and
diffusers' own ``StableDiffusionInstructPix2PixPipeline`` for ``ip2p`` systems, so a "stock"
baseline really is the stock pipeline.

Items are generated in batches of equal input size (the pipeline needs one size per batch), each
with its own ``torch.Generator`` seeded by :func:`~train.evaluate.systems.item_seed`: an output
does not depend on the batch size, the order of items, or on what was generated before a kill
(up to floating-point rounding: batched and single convolutions differ in the last bits, which
can move a pixel by one level out of 255).
With ``resolution`` set, inputs are resized so their short side is that many pixels (a multiple
of 8) and outputs are resized back to the input's size, so judges and metrics always compare
images of the benchmark's size.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from train.evaluate.systems import SystemSpec, item_seed

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class GenerationResult:
    item_id: str
    image: Image.Image  # at the input image's size
    seed: int
    seconds: float  # this item's share of its batch's wall time


def load_pipeline(spec: SystemSpec, device: str = "cpu", dtype: str = "float32") -> Any:
    """The pipeline of an ``mrc`` or ``ip2p`` system, on ``device``, progress bar off."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}.")
    torch_dtype = DTYPES[dtype]
    try:
        if spec.kind == "mrc":
            from core.pipeline import MRCInstructPix2PixPipeline

            pipe = MRCInstructPix2PixPipeline.from_pretrained(spec.path, dtype=torch_dtype)
        elif spec.kind == "ip2p":
            from diffusers import StableDiffusionInstructPix2PixPipeline

            pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(
                spec.path,
                dtype=torch_dtype,
                safety_checker=None,
                requires_safety_checker=False,
            )
        else:
            raise ValueError(f"System {spec.name!r} is a folder of outputs; it has no pipeline.")
    except OSError as e:
        raise OSError(
            f"Cannot load the pipeline of system {spec.name!r} from {spec.path!r}: {e}"
        ) from e
    if spec.scheduler:
        from core.pipeline import make_scheduler

        pipe.scheduler = make_scheduler(spec.scheduler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _resized(img: Image.Image, resolution: int | None) -> Image.Image:
    if resolution is None:
        return img
    w, h = img.size
    scale = resolution / min(w, h)
    size = (max(8, round(w * scale / 8) * 8), max(8, round(h * scale / 8) * 8))
    return img if size == img.size else img.resize(size, Image.Resampling.LANCZOS)


def _batches(
    todo: Sequence[tuple[str, str, Image.Image]], batch_size: int
) -> Iterator[list[tuple[str, str, Image.Image]]]:
    """Batches of items whose (resized) inputs have the same size, in first-seen order."""
    by_size: dict[tuple[int, int], list[tuple[str, str, Image.Image]]] = {}
    for entry in todo:
        by_size.setdefault(entry[2].size, []).append(entry)
    for group in by_size.values():
        for start in range(0, len(group), batch_size):
            yield group[start : start + batch_size]


def pipeline_kwargs(spec: SystemSpec, n: int) -> dict[str, Any]:
    """The settings passed to the pipeline for a batch of ``n`` prompts."""
    kw: dict[str, Any] = dict(
        num_inference_steps=spec.num_inference_steps,
        guidance_scale=spec.guidance_scale,
        image_guidance_scale=spec.image_guidance_scale,
    )
    if spec.kind == "mrc":
        kw.update(
            rewards=[tuple(spec.rewards)] * n,
            reward_text=[tuple(spec.reward_text)] * n,
            reward_guidance_scale=spec.reward_guidance_scale,
        )
    return kw


def generate(
    pipe: Any,
    spec: SystemSpec,
    todo: Sequence[tuple[str, str, Callable[[], Image.Image]]],
    batch_size: int,
    device: str = "cpu",
    on_result: Callable[[GenerationResult], None] | None = None,
    chunk: int = 64,
) -> int:
    """Generate ``todo`` = [(item_id, instruction, load input image)], calling ``on_result`` per
    output as soon as its batch is done (so a kill loses at most one batch). Inputs are loaded
    ``chunk`` items at a time, which bounds memory on benchmarks of large photos.
    Returns how many outputs were made."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    made = 0
    step = max(chunk, batch_size)
    for start in range(0, len(todo), step):
        loaded = [(i, text, load()) for i, text, load in todo[start : start + step]]
        originals = {i: img.size for i, _, img in loaded}
        prepared = [(i, text, _resized(img, spec.resolution)) for i, text, img in loaded]
        for batch in _batches(prepared, batch_size):
            seeds = [item_seed(spec.seed, i) for i, _, _ in batch]
            generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
            t0 = time.perf_counter()
            with torch.inference_mode():
                images = pipe(
                    prompt=[t for _, t, _ in batch],
                    image=[img for _, _, img in batch],
                    generator=generators,
                    **pipeline_kwargs(spec, len(batch)),
                ).images
            seconds = (time.perf_counter() - t0) / len(batch)
            for (item_id, _, _), img, seed in zip(batch, images, seeds):
                if img.size != originals[item_id]:
                    img = img.resize(originals[item_id], Image.Resampling.BICUBIC)
                made += 1
                if on_result is not None:
                    on_result(GenerationResult(item_id, img, seed, seconds))
    return made
