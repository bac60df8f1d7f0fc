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
A best-of-N system (``best_of`` > 1) draws N candidates per item -- candidate 0 with the item's
own seed, so it is the single-sample output, candidate k with the seed of ``"{item}#k"`` -- and
keeps the one its reward model ranks first (:func:`core.best_of_n.rank_candidates`); every
candidate's predicted scores go with the output.
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

from core.best_of_n import rank_candidates
from train.evaluate.systems import SystemSpec, item_seed

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class GenerationResult:
    item_id: str
    image: Image.Image  # at the input image's size
    seed: int
    seconds: float  # this item's share of its batch's wall time
    candidates: tuple[dict[str, Any], ...] = ()  # best-of-N: every candidate's scores, drawn order


def load_reward_model(spec: SystemSpec, device: str = "cpu") -> Any:
    """The reward model that ranks a best-of-N system's candidates (None for single sampling)."""
    if spec.best_of == 1:
        return None
    from core.reward_model import EditRewardModel

    try:
        return EditRewardModel.from_pretrained(spec.reward_model).to(device).eval()
    except (OSError, ValueError) as e:
        raise OSError(
            f"Cannot load the reward model of system {spec.name!r} from {spec.reward_model!r}: {e}"
        ) from e


def candidate_seeds(spec: SystemSpec, item_id: str) -> list[int]:
    """Seeds of an item's best-of-N candidates; the first is the single-sample seed."""
    return [
        item_seed(spec.seed, item_id if k == 0 else f"{item_id}#{k}") for k in range(spec.best_of)
    ]


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
        from core.sampling import make_scheduler

        pipe.scheduler = make_scheduler(spec.scheduler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _rounded(d: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in d.items()}


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
    reward_model: Any = None,
) -> int:
    """Generate ``todo`` = [(item_id, instruction, load input image)], calling ``on_result`` per
    output as soon as its batch is done (so a kill loses at most one batch). Inputs are loaded
    ``chunk`` items at a time, which bounds memory on benchmarks of large photos.
    ``reward_model`` ranks the candidates of a best-of-N system (:func:`load_reward_model`).
    Returns how many outputs were made."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    if spec.best_of > 1 and reward_model is None:
        raise ValueError(f"System {spec.name!r} is best-of-{spec.best_of}: pass its reward model.")
    made = 0
    step = max(chunk, batch_size)
    for start in range(0, len(todo), step):
        loaded = [(i, text, load()) for i, text, load in todo[start : start + step]]
        originals = {i: img.size for i, _, img in loaded}
        prepared = [(i, text, _resized(img, spec.resolution)) for i, text, img in loaded]
        for batch in _batches(prepared, batch_size):
            n = spec.best_of
            seeds = [s for i, _, _ in batch for s in candidate_seeds(spec, i)]
            generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
            t0 = time.perf_counter()
            with torch.inference_mode():
                images = pipe(
                    prompt=[t for _, t, _ in batch for _ in range(n)],
                    image=[img for _, _, img in batch for _ in range(n)],
                    generator=generators,
                    **pipeline_kwargs(spec, len(batch) * n),
                ).images
            seconds = (time.perf_counter() - t0) / len(batch)
            for k, (item_id, text, img_in) in enumerate(batch):
                drawn = images[k * n : (k + 1) * n]
                chosen, candidates = 0, ()
                if n > 1:
                    ranked = rank_candidates(reward_model, img_in, text, drawn)
                    chosen = ranked[0].index
                    by_index = sorted(ranked, key=lambda c: c.index)
                    candidates = tuple(
                        {"seed": seeds[k * n + c.index], "score": round(c.score, 4),
                         "mean": _rounded(c.mean), "std": _rounded(c.std), "chosen": c.index == chosen}
                        for c in by_index
                    )  # fmt: skip
                img = drawn[chosen]
                if img.size != originals[item_id]:
                    img = img.resize(originals[item_id], Image.Resampling.BICUBIC)
                made += 1
                if on_result is not None:
                    on_result(
                        GenerationResult(item_id, img, seeds[k * n + chosen], seconds, candidates)
                    )
    return made
