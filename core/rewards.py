"""The reward schema: three perspectives, a score in [0, 5] and a failure text each.

A training triplet (original image, instruction, edited image) is judged from three
perspectives (paper §3):

* ``following``  -- instruction following: was the instruction carried out?
* ``preserving`` -- detail preserving: is everything the instruction did not name unchanged?
* ``quality``    -- generation quality: is the edited image free of artifacts?

Each perspective gets a :class:`Label`: a score in [0, 5] (floats allowed) and a text that
names the failure points (empty when there are none). :class:`Rewards` holds all three, in
that fixed order. The "best" reward, asked for at inference, is (5, 5, 5) with empty texts.

The paper's RewardEdit-20K JSON is ``{triplet_id: [{"Score": s, "Negative Prompt": text}, ...x3]}``
in the order following, preserving, quality; :func:`load_rewardedit` / :func:`dump_rewardedit`
convert it losslessly. Malformed entries are returned with their id and reason, never dropped.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PERSPECTIVES: tuple[str, str, str] = ("following", "preserving", "quality")
TITLES: dict[str, str] = {
    "following": "Instruction following",
    "preserving": "Detail preserving",
    "quality": "Generation quality",
}
MIN_SCORE, MAX_SCORE = 0.0, 5.0
MAX_TEXT_CHARS = 2000  # failure texts longer than this are almost surely a parsing accident


class RewardValidationError(ValueError):
    """A reward value is malformed; the message says which field and why."""


def validate_score(score: Any, where: str = "score") -> float:
    """Return ``score`` as a float in [0, 5] or raise :class:`RewardValidationError`."""
    if isinstance(score, bool) or not isinstance(score, (int, float)):
        try:
            import numpy as np  # numpy scalars are fine; strings and None are not

            if isinstance(score, np.generic) and np.issubdtype(type(score), np.number):
                score = float(score)
            else:
                raise TypeError
        except (ImportError, TypeError):
            raise RewardValidationError(
                f"{where} must be a number in [0, 5], got {type(score).__name__} {score!r}"
            ) from None
    score = float(score)
    if math.isnan(score) or math.isinf(score):
        raise RewardValidationError(f"{where} must be a finite number in [0, 5], got {score}")
    if not MIN_SCORE <= score <= MAX_SCORE:
        raise RewardValidationError(f"{where} must be in [0, 5], got {score}")
    return score


def validate_perspective(name: str) -> str:
    if name not in PERSPECTIVES:
        raise RewardValidationError(
            f"unknown perspective {name!r}; expected one of {', '.join(PERSPECTIVES)}"
        )
    return name


@dataclass(frozen=True)
class Label:
    """One perspective's judgement: a score in [0, 5] and the failure points (may be empty)."""

    score: float
    text: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "score", validate_score(self.score))
        if not isinstance(self.text, str):
            raise RewardValidationError(
                f"failure text must be a string, got {type(self.text).__name__}"
            )
        if len(self.text) > MAX_TEXT_CHARS:
            raise RewardValidationError(
                f"failure text has {len(self.text)} characters; the limit is {MAX_TEXT_CHARS}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {"score": self.score, "text": self.text}


@dataclass(frozen=True)
class Rewards:
    """The three perspectives' labels of one triplet, always in the order of PERSPECTIVES."""

    following: Label
    preserving: Label
    quality: Label

    def __post_init__(self) -> None:
        for name in PERSPECTIVES:
            if not isinstance(getattr(self, name), Label):
                raise RewardValidationError(f"{name} must be a Label, got {getattr(self, name)!r}")

    # -- construction -------------------------------------------------------------------
    @classmethod
    def best(cls) -> Rewards:
        """The reward asked for at inference: scores 5 and no failure text."""
        return cls.from_scores((MAX_SCORE,) * 3)

    @classmethod
    def from_scores(cls, scores: Sequence[float], texts: Sequence[str] | None = None) -> Rewards:
        scores = list(scores)
        texts = list(texts) if texts is not None else ["", "", ""]
        if len(scores) != 3:
            raise RewardValidationError(
                f"expected 3 scores (following, preserving, quality), got {len(scores)}"
            )
        if len(texts) != 3:
            raise RewardValidationError(
                f"expected 3 failure texts (following, preserving, quality), got {len(texts)}"
            )
        labels = []
        for name, s, t in zip(PERSPECTIVES, scores, texts):
            try:
                labels.append(Label(s, t))
            except RewardValidationError as e:
                raise RewardValidationError(f"{name}: {e}") from None
        return cls(*labels)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Rewards:
        """Inverse of :meth:`to_dict`: ``{perspective: {"score": s, "text": t}}``."""
        if not isinstance(d, Mapping):
            raise RewardValidationError(f"rewards must be a mapping, got {type(d).__name__}")
        unknown = set(d) - set(PERSPECTIVES)
        if unknown:
            raise RewardValidationError(
                f"unknown perspective(s) {sorted(unknown)}; expected {', '.join(PERSPECTIVES)}"
            )
        labels = []
        for name in PERSPECTIVES:
            if name not in d:
                raise RewardValidationError(f"missing perspective {name!r}")
            item = d[name]
            if not isinstance(item, Mapping) or "score" not in item:
                raise RewardValidationError(f"{name}: missing field 'score'")
            try:
                labels.append(Label(item["score"], item.get("text", "") or ""))
            except RewardValidationError as e:
                raise RewardValidationError(f"{name}: {e}") from None
        return cls(*labels)

    # -- views --------------------------------------------------------------------------
    @property
    def scores(self) -> tuple[float, float, float]:
        return (self.following.score, self.preserving.score, self.quality.score)

    @property
    def texts(self) -> tuple[str, str, str]:
        return (self.following.text, self.preserving.text, self.quality.text)

    def __getitem__(self, name: str) -> Label:
        return getattr(self, validate_perspective(name))

    def items(self) -> Iterable[tuple[str, Label]]:
        return ((name, getattr(self, name)) for name in PERSPECTIVES)

    def joined_text(self, sep: str = "; ") -> str:
        """The three failure texts joined for the text encoder (empty parts kept as empty)."""
        return sep.join(self.texts)

    def replace(self, name: str, score: float | None = None, text: str | None = None) -> Rewards:
        old = self[name]
        new = Label(old.score if score is None else score, old.text if text is None else text)
        kw = {p: getattr(self, p) for p in PERSPECTIVES}
        kw[name] = new
        return Rewards(**kw)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: label.to_dict() for name, label in self.items()}

    def to_rewardedit(self) -> list[dict[str, Any]]:
        """The paper's per-triplet list: ``[{"Score": s, "Negative Prompt": t}] * 3``."""
        return [
            {"Score": _plain(lab.score), "Negative Prompt": lab.text} for _, lab in self.items()
        ]


def _plain(score: float) -> int | float:
    """Keep integers integral in JSON so a RewardEdit-20K file round-trips byte-for-byte."""
    return int(score) if float(score).is_integer() else score


# -- RewardEdit-20K interop -----------------------------------------------------------------


@dataclass(frozen=True)
class Malformed:
    """An entry that could not be read, with its id and the reason."""

    triplet_id: str
    reason: str


def parse_rewardedit_entry(entry: Any) -> Rewards:
    """One RewardEdit-20K value (a list of three ``{"Score", "Negative Prompt"}``) to Rewards."""
    if not isinstance(entry, list):
        raise RewardValidationError(f"expected a list of 3 objects, got {type(entry).__name__}")
    if len(entry) != 3:
        raise RewardValidationError(
            f"expected 3 objects (following, preserving, quality), got {len(entry)}"
        )
    scores, texts = [], []
    for name, item in zip(PERSPECTIVES, entry):
        if not isinstance(item, Mapping):
            raise RewardValidationError(f"{name}: expected an object, got {type(item).__name__}")
        for key in ("Score", "Negative Prompt"):  # the format's keys; a null text means none
            if key not in item:
                raise RewardValidationError(f"{name}: missing field {key!r}")
        text = item["Negative Prompt"]
        if text is None:
            text = ""
        if not isinstance(text, str):
            raise RewardValidationError(f"{name}: 'Negative Prompt' must be a string")
        scores.append(item["Score"])
        texts.append(text)
    return Rewards.from_scores(scores, texts)


def load_rewardedit(
    source: str | Path | Mapping[str, Any],
) -> tuple[dict[str, Rewards], list[Malformed]]:
    """Read RewardEdit-20K JSON (a path, a JSON string or the parsed object).

    Returns the readable entries and the malformed ones with their reasons, in file order.
    Raises :class:`RewardValidationError` only when the document as a whole is unreadable.
    """
    if isinstance(source, Mapping):
        doc = source
    else:
        text, where = source, "the RewardEdit-20K text"
        if isinstance(source, Path) or (
            isinstance(source, str) and not source.lstrip().startswith(("{", "["))
        ):
            path = Path(source)
            where = str(path)
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise RewardValidationError(f"cannot read {path}: {e}") from e
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise RewardValidationError(f"{where} is not valid JSON: {e}") from e
    if not isinstance(doc, Mapping):
        raise RewardValidationError(
            f"RewardEdit-20K JSON must be an object of triplet_id -> list, got {type(doc).__name__}"
        )
    good: dict[str, Rewards] = {}
    bad: list[Malformed] = []
    for key, entry in doc.items():
        try:
            good[str(key)] = parse_rewardedit_entry(entry)
        except RewardValidationError as e:
            bad.append(Malformed(str(key), str(e)))
    return good, bad


def dump_rewardedit(labels: Mapping[str, Rewards]) -> dict[str, list[dict[str, Any]]]:
    return {str(k): v.to_rewardedit() for k, v in labels.items()}


def write_rewardedit(labels: Mapping[str, Rewards], path: str | Path) -> None:
    Path(path).write_text(json.dumps(dump_rewardedit(labels), ensure_ascii=False, indent=1))
