"""Best-of-N editing: draw N candidates, let the reward model rank them (EditScore's use).

    from core.best_of_n import best_of_n
    ranked = best_of_n(pipe, reward_model, "turn the red circle blue", image, n=4)
    ranked[0].image            # the candidate the reward model ranks first
    [(c.index, c.score, c.mean, c.std) for c in ranked]   # every candidate, best first

:func:`rank_candidates` ranks any list of edited images of one (original, instruction), so the
candidates may come from one pipeline call with ``num_images_per_prompt=N``, several seeds, or
several systems. The ranking score is :func:`core.reward_model.aggregate` of the predicted
means (``by``: the mean of the three perspectives by default, their minimum, or one of them);
each candidate keeps its three predicted means and standard deviations to show.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from core.reward_model import EditRewardModel, aggregate
from core.rewards import PERSPECTIVES


@dataclass(frozen=True)
class RankedCandidate:
    """One candidate with its predicted scores; ``index`` is its position in the input list."""

    index: int
    image: Any
    score: float  # the ranking score (see ``by``)
    mean: dict[str, float]  # predicted score per perspective, in [0, 5]
    std: dict[str, float]  # predicted standard deviation per perspective


def rank_candidates(
    model: EditRewardModel,
    original: Any,
    instruction: str,
    candidates: Sequence[Any],
    by: str = "mean",
) -> list[RankedCandidate]:
    """The candidates (PIL images or uint8 arrays) best first; ties keep the input order."""
    if not candidates:
        raise ValueError("best-of-N needs at least one candidate image; got none.")
    n = len(candidates)
    pred = model.predict([original] * n, [instruction] * n, list(candidates))
    scores = aggregate(pred, by).tolist()
    ranked = [
        RankedCandidate(
            index=i,
            image=candidates[i],
            score=scores[i],
            mean=dict(zip(PERSPECTIVES, pred.mean[i].tolist())),
            std=dict(zip(PERSPECTIVES, pred.std[i].tolist())),
        )
        for i in range(n)
    ]
    return sorted(ranked, key=lambda c: (-c.score, c.index))


def best_of_n(
    pipe: Any,
    model: EditRewardModel,
    prompt: str,
    image: Any,
    n: int = 4,
    by: str = "mean",
    **pipe_kwargs: Any,
) -> list[RankedCandidate]:
    """One pipeline call with ``num_images_per_prompt=n``; its N outputs ranked, best first.
    ``pipe_kwargs`` go to the pipeline (rewards, guidance scales, generator, steps, ...)."""
    if n < 1:
        raise ValueError(f"n must be at least 1; got {n}.")
    out = pipe(prompt, image=image, num_images_per_prompt=n, output_type="pil", **pipe_kwargs)
    return rank_candidates(model, image, prompt, out.images, by=by)
