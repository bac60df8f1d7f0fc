"""The learned reward model (:mod:`core.reward_model`) behind the :class:`Judge` interface.

It answers wherever a judge does -- ``python -m data annotate --judge reward-model:FOLDER``,
``python -m train.evaluate --judge reward-model:FOLDER`` -- locally, with no API call (``usage``
stays zero). ``annotate`` gives each perspective the predicted mean as its score, with an empty
failure text (the model names no failure points); ``evaluate`` says *yes* when the mean is at
least 4, the Shapes oracle's threshold. The predicted standard deviation of every perspective
is the label's confidence: it is returned in ``JudgeResult.std``, stored in the annotation's
``meta["std"]`` by ``data annotate``, and, with the means, in ``raw`` (JSON) for both tasks.

The spec's digest hashes the weights, so a retrained model labels again rather than reusing
the earlier model's results.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import threading
from pathlib import Path

import torch

from core.images import ImageError, load_image
from core.judges.base import (
    BAD_INPUT,
    Evaluation,
    Judge,
    JudgeInput,
    JudgeResult,
    JudgeSpec,
    Verdict,
)
from core.reward_model import EditRewardModel
from core.rewards import MAX_SCORE, MIN_SCORE, PERSPECTIVES, Rewards

KIND = "reward-model"
YES_THRESHOLD = 4.0  # the Shapes oracle's yes threshold


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 over the parameter and buffer bytes, in state-dict order."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class RewardModelJudge(Judge):
    """A judge that scores with an :class:`EditRewardModel` (a folder or a loaded model)."""

    def __init__(
        self,
        folder: str | Path | None = None,
        *,
        model: EditRewardModel | None = None,
        device: str = "cpu",
        name: str | None = None,
    ) -> None:
        if model is None:
            if folder is None:
                raise ValueError("RewardModelJudge needs a model folder or a loaded model.")
            if not (Path(folder) / "config.json").is_file():
                raise ValueError(
                    f"{folder} is not a reward model folder (no config.json); train one with "
                    "'python -m train.reward_model' (it is saved in OUTPUT_DIR/model)."
                )
            model = EditRewardModel.from_pretrained(str(folder))
        self.model = model.to(device).eval()
        if name is None and folder is not None:  # runs/reward_model/model -> "reward_model"
            path = Path(folder).resolve()
            name = path.parent.name if path.name == "model" else path.name
        self.spec = JudgeSpec(KIND, name or "in-memory", "n/a", "one", weights_digest(self.model))
        self._lock = threading.Lock()  # one forward pass at a time (judging runs in threads)

    def _score(self, item: JudgeInput) -> tuple[list[float], list[float]]:
        images = []
        for which in ("original", "edited"):
            data = getattr(item, which)
            images.append(load_image(io.BytesIO(data), name=f"the {which} image"))
        with self._lock:
            pred = self.model.predict([images[0]], [item.instruction], [images[1]])
        mean = pred.mean[0].clamp(MIN_SCORE, MAX_SCORE).tolist()
        return mean, pred.std[0].tolist()

    async def _judge(self, task: str, item: JudgeInput) -> JudgeResult:
        try:
            mean, std = await asyncio.to_thread(self._score, item)
        except (ImageError, ValueError) as e:
            return JudgeResult.failed(
                task, self.spec, BAD_INPUT, f"the reward model cannot score this triplet: {e}"
            )
        mean = [round(m, 3) for m in mean]
        std_by = {p: round(s, 4) for p, s in zip(PERSPECTIVES, std)}
        raw = json.dumps({"mean": dict(zip(PERSPECTIVES, mean)), "std": std_by})
        if task == "annotate":
            return JudgeResult(task, "ok", self.spec, rewards=Rewards.from_scores(mean), raw=raw,
                               std=std_by)  # fmt: skip
        evaluation = Evaluation(*(Verdict(m >= YES_THRESHOLD, m) for m in mean))
        return JudgeResult(task, "ok", self.spec, evaluation=evaluation, raw=raw, std=std_by)
