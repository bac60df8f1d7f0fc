"""Validation and normalisation of the editing pipeline's inputs (rewards, images, scales).

Every check raises ``ValueError`` with a sentence that says what was wrong and how to fix it;
nothing is silently clipped, dropped or guessed. Kept apart from ``core.pipeline`` so the
pipeline reads like the algorithm.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch

from core.images import to_rgb
from core.instructions import check_instruction
from core.rewards import PERSPECTIVES, Rewards, RewardValidationError, validate_score

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float, np.number)) and not isinstance(x, bool)


def _one_reward(
    value: Any, where: str
) -> tuple[tuple[float, float, float], tuple[str, ...] | None]:
    """A triple of scores or a Rewards -> (scores, texts or None)."""
    if isinstance(value, Rewards):
        return value.scores, value.texts
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().tolist()
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(
            f"{where} must be three scores (following, preserving, quality) in [0, 5] or a "
            f"core.rewards.Rewards, got {type(value).__name__} {value!r}."
        )
    if len(value) != len(PERSPECTIVES):
        raise ValueError(
            f"{where} must have exactly 3 scores (following, preserving, quality), got "
            f"{len(value)}: {list(value)!r}."
        )
    try:
        scores = tuple(
            validate_score(s, f"{where} {name} score") for name, s in zip(PERSPECTIVES, value)
        )
    except RewardValidationError as e:
        raise ValueError(f"{e}. Scores are 0 (worst) to 5 (best).") from None
    return scores, None  # type: ignore[return-value]


def _one_text(value: Any, where: str) -> tuple[str, str, str]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ValueError(
            f"{where} must be three strings (following, preserving, quality failure texts, '' for "
            f"none), got {type(value).__name__} {value!r}."
        )
    if len(value) != len(PERSPECTIVES):
        raise ValueError(
            f"{where} must have exactly 3 texts (following, preserving, quality), got {len(value)}."
        )
    for name, t in zip(PERSPECTIVES, value):
        if not isinstance(t, str):
            raise ValueError(f"{where} {name} text must be a string, got {type(t).__name__}.")
    return tuple(value)  # type: ignore[return-value]


def _is_single_reward(value: Any) -> bool:
    if isinstance(value, (Rewards, str, bytes)) or not isinstance(
        value, (Sequence, np.ndarray, torch.Tensor)
    ):
        return True  # _one_reward accepts it or explains why not
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return value.ndim <= 1
    return isinstance(value, Sequence) and all(_is_number(v) for v in value)


def normalize_rewards(rewards: Any, reward_text: Any, batch_size: int) -> list[Rewards]:
    """``rewards`` / ``reward_text`` as given to the pipeline -> one :class:`Rewards` per prompt.

    ``rewards``: a triple of scores, a :class:`Rewards`, or a list/tensor (B, 3) of those, one per
    prompt. ``reward_text``: None (no failure texts), three strings, or one triple per prompt.
    """
    if rewards is None:
        raise ValueError("rewards must be given, e.g. (5, 5, 5) for the best edit.")
    if _is_single_reward(rewards):
        per_prompt = [rewards] * batch_size
    else:
        per_prompt = list(rewards)
        if len(per_prompt) != batch_size:
            raise ValueError(
                f"rewards has {len(per_prompt)} entries but there are {batch_size} prompts; pass "
                "one reward for all prompts or exactly one per prompt."
            )
    parsed = [_one_reward(r, f"rewards[{i}]") for i, r in enumerate(per_prompt)]
    has_texts = any(t is not None for _, t in parsed)
    if has_texts and reward_text is not None:
        raise ValueError(
            "Failure texts were given twice: the Rewards objects in `rewards` carry texts, so leave "
            "`reward_text` unset (or pass plain score triples)."
        )
    if reward_text is None:
        texts = [t if t is not None else ("", "", "") for _, t in parsed]
    elif (
        isinstance(reward_text, str)
        or not isinstance(reward_text, Sequence)
        or not any(isinstance(t, Sequence) and not isinstance(t, str) for t in reward_text)
    ):  # one triple for every prompt (or something _one_text explains is wrong)
        texts = [_one_text(reward_text, "reward_text")] * batch_size
    else:
        if len(reward_text) != batch_size:
            raise ValueError(
                f"reward_text has {len(reward_text)} entries but there are {batch_size} prompts; "
                "pass three texts for all prompts or one triple per prompt."
            )
        texts = [_one_text(t, f"reward_text[{i}]") for i, t in enumerate(reward_text)]
    return [_requested(s, t, i) for i, ((s, _), t) in enumerate(zip(parsed, texts))]


def _requested(scores: Sequence[float], texts: Sequence[str], i: int) -> Rewards:
    try:
        return Rewards.from_scores(scores, texts)
    except RewardValidationError as e:  # the scores are checked; a failure text is too long
        raise ValueError(f"reward_text of prompt {i}: {e}.") from None


def check_scale(value: Any, name: str, minimum: float | None = None) -> float:
    if not _is_number(value) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}.")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}.")
    return float(value)


def check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


# -- images ------------------------------------------------------------------------------------


def _size_of(image: Any, where: str) -> tuple[int, int]:
    """(height, width) of a PIL image, an (H, W, C) array or a (C, H, W) tensor."""
    if isinstance(image, PIL.Image.Image):
        w, h = image.size
        return h, w
    if isinstance(image, np.ndarray):
        if image.ndim == 4 and image.shape[0] == 1:
            image = image[0]
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (1, 3)):
            raise ValueError(
                f"{where}: numpy images must be (H, W) or (H, W, 3), got {image.shape}."
            )
        return int(image.shape[0]), int(image.shape[1])
    if isinstance(image, torch.Tensor):
        if image.ndim == 4 and image.shape[0] == 1:
            image = image[0]
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(
                f"{where}: tensor images must be (3, H, W) in [-1, 1], got {tuple(image.shape)}."
            )
        return int(image.shape[1]), int(image.shape[2])
    raise ValueError(
        f"{where} must be a PIL image, a numpy array or a torch tensor, got {type(image).__name__}."
    )


def normalize_images(image: Any, batch_size: int, factor: int) -> tuple[list[Any], tuple[int, int]]:
    """Validate the images to edit -> (list of 1 or batch_size images, rounded (H, W)).

    PIL images are converted to RGB. Sizes are rounded down to a multiple of the VAE factor
    ``factor`` (as diffusers does); every image of a batch must round to the same size.
    """
    if image is None:
        raise ValueError("`image` is required: pass the picture to edit (a PIL image or a list).")
    if isinstance(image, (list, tuple)):
        images = list(image)
    elif isinstance(image, torch.Tensor) and image.ndim == 4:
        images = list(image)
    else:
        images = [image]
    if not images:
        raise ValueError("`image` is an empty list; pass at least one picture to edit.")
    if len(images) not in (1, batch_size):
        raise ValueError(
            f"Got {len(images)} images for {batch_size} prompts; pass one image for all prompts "
            "or exactly one per prompt."
        )
    if len({type(im) for im in images}) > 1:
        raise ValueError(
            "All images of a batch must be of the same type (all PIL, numpy or torch)."
        )
    sizes = []
    for i, im in enumerate(images):
        h, w = _size_of(im, f"image[{i}]")
        if h == 0 or w == 0:
            raise ValueError(f"image[{i}] has zero size ({w}x{h} pixels); pass a non-empty image.")
        if h < factor or w < factor:
            raise ValueError(
                f"image[{i}] is {w}x{h} pixels, smaller than the VAE factor {factor}; the pipeline "
                f"needs at least {factor}x{factor} pixels."
            )
        sizes.append((h - h % factor, w - w % factor))
    if len(set(sizes)) > 1:
        raise ValueError(
            f"The images round to different sizes {sorted(set(sizes))} (multiples of {factor}); "
            "resize them to one size, or call the pipeline once per size."
        )
    images = [
        to_rgb(im, f"image[{i}]") if isinstance(im, PIL.Image.Image) else im
        for i, im in enumerate(images)
    ]
    return images, sizes[0]


def normalize_prompts(prompt: Any, negative_prompt: Any) -> tuple[list[str], list[str]]:
    if isinstance(prompt, str):
        prompts = [check_instruction(prompt, "the prompt")]
    elif isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, str) for p in prompt):
        prompts = [check_instruction(p, f"prompt[{i}]") for i, p in enumerate(prompt)]
    else:
        raise ValueError(
            f"prompt must be an instruction string or a non-empty list of strings, got {prompt!r}."
        )
    if negative_prompt is None:
        negatives = [""] * len(prompts)
    elif isinstance(negative_prompt, str):
        negatives = [negative_prompt] * len(prompts)
    elif isinstance(negative_prompt, (list, tuple)) and all(
        isinstance(p, str) for p in negative_prompt
    ):
        if len(negative_prompt) != len(prompts):
            raise ValueError(
                f"negative_prompt has {len(negative_prompt)} entries but there are {len(prompts)} "
                "prompts; pass one string for all or one per prompt."
            )
        negatives = list(negative_prompt)
    else:
        raise ValueError(
            f"negative_prompt must be a string or a list of strings, got {negative_prompt!r}."
        )
    return prompts, negatives


__all__ = [
    "OUTPUT_TYPES",
    "check_positive_int",
    "check_scale",
    "normalize_images",
    "normalize_prompts",
    "normalize_rewards",
    "to_rgb",
]
