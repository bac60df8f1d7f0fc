"""Texts -> the frozen CLIP text encoder's outputs, tokenised as Stable Diffusion's pipelines do.

:func:`encode_text` is the one tokenise-and-encode of the project's conditioning texts: the
pipeline's instructions, negative instructions and reward texts (:mod:`core.pipeline`), the
trainer's instructions (:mod:`train.cache`), and :func:`encode_reward_text`. Padded or truncated
to the tokenizer's ``model_max_length`` (77 for CLIP), so an embedding is the same wherever it is
computed (a cached training embedding equals the pipeline's).

The reward's failure texts are joined into one string, ``"t_f; t_p; t_q"`` (the authors'
``dataset.py``), with ``empty_text`` standing in for an empty text (:func:`join_reward_texts`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from core.rewards import PERSPECTIVES, Rewards

TEXT_SEPARATOR = "; "  # the authors join the three failure texts with "; " (dataset.py)
TEXT_MODES = ("pooled", "sequence")  # reward text: CLIP's pooled output, or every token


def encode_text(texts: Sequence[str], tokenizer: Any, text_encoder: Any, device: Any = None) -> Any:
    """Texts -> the text encoder's output: ``last_hidden_state`` (B, L, D) and, for CLIP,
    ``pooler_output`` (B, D). ``device``: where the token ids go (default: the encoder's)."""
    ids = tokenizer(
        list(texts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    return text_encoder(ids.to(text_encoder.device if device is None else device))


def join_reward_texts(texts: Sequence[str] | Rewards, empty_text: str = "") -> str:
    """Three failure texts -> ``"t_f; t_p; t_q"``, with ``empty_text`` standing in for empty ones."""
    if isinstance(texts, Rewards):
        texts = texts.texts
    if isinstance(texts, str) or len(texts) != len(PERSPECTIVES):
        raise ValueError(
            f"reward_text must be three strings (following, preserving, quality), got {texts!r}."
        )
    for name, t in zip(PERSPECTIVES, texts):
        if not isinstance(t, str):
            raise ValueError(f"reward_text[{name}] must be a string, got {type(t).__name__}.")
    return TEXT_SEPARATOR.join(t if t.strip() else empty_text for t in texts)


@torch.no_grad()
def encode_reward_text(
    texts: Sequence[Sequence[str] | Rewards | str],
    tokenizer: Any,
    text_encoder: Any,
    mode: str = "pooled",
    empty_text: str = "",
) -> torch.Tensor:
    """Failure texts -> (B, D) pooled or (B, L, D) sequence embeddings from the frozen encoder.

    Each item is a triple of texts, a :class:`Rewards`, or an already joined string. The pooled
    output is CLIP's ``pooler_output``, as in the authors' evaluation (``text_encoder(ids)[1]``).
    """
    if mode not in TEXT_MODES:
        raise ValueError(f"mode must be one of {TEXT_MODES}, got {mode!r}.")
    joined = [t if isinstance(t, str) else join_reward_texts(t, empty_text) for t in texts]
    out = encode_text(joined, tokenizer, text_encoder)
    return out.pooler_output if mode == "pooled" else out.last_hidden_state
