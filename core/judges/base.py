"""The judge interface: one object that labels triplets (annotate) or grades model outputs (evaluate).

A *judge* looks at (original image, instruction, edited image) and answers, per perspective
(:data:`core.rewards.PERSPECTIVES`), either

* **annotate** -- the training label of the paper's RewardEdit-20K (§3): a score in [0, 5] and a
  text naming the failure points (empty when there are none), i.e. a :class:`~core.rewards.Rewards`;
* **evaluate** -- the Real-Edit benchmark verdict (§5): a yes/no verdict and a score in [0, 5] per
  perspective, i.e. an :class:`Evaluation`. The quality judgement compares the edited image with
  the input, as in the paper.

Every call returns a :class:`JudgeResult`, never raises for a bad reply: ``status == "ok"`` with the
value, or ``status == "failed"`` with a machine-readable ``reason_code``, a sentence ``reason`` and
the model's ``raw`` reply, so nothing is guessed and nothing is dropped silently. ``usage`` counts
calls, tokens and image bytes for the cost ledger.

Judges are identified by a :class:`JudgeSpec` (backend kind, model, prompt version, request mode);
:func:`idempotency_key` hashes the images, the instruction, the spec and the task into the key under
which a label is stored, so re-running a job skips finished work and never duplicates it.

Backends: :mod:`core.judges.openai_judge` (any OpenAI-compatible VLM) here in ``core``, and the
Shapes oracle in ``data.shapes_judge`` (``core`` never imports ``data``).
"""

from __future__ import annotations

import abc
import argparse
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from core.instructions import check_instruction
from core.rewards import PERSPECTIVES, Rewards, RewardValidationError, validate_score

Task = Literal["annotate", "evaluate"]
TASKS: tuple[str, str] = ("annotate", "evaluate")
Status = Literal["ok", "failed"]

# Reason codes of a failed result (the ``reason`` field holds the full sentence).
UNPARSABLE = "unparsable"  # the reply held no readable answer
OUT_OF_RANGE = "out_of_range"  # a score outside [0, 5] or a non-yes/no verdict
RATE_LIMITED = "rate_limited"  # HTTP 429 until the attempts ran out
SERVER_ERROR = "server_error"  # HTTP 5xx until the attempts ran out
TIMEOUT = "timeout"  # the request timed out on every attempt
CONNECTION = "connection"  # the server could not be reached
REJECTED = "rejected"  # a permanent HTTP error (400, 401, 403, 404, quota exhausted...)
BAD_INPUT = "bad_input"  # an image could not be decoded or the instruction is empty
BATCH_ERROR = "batch_error"  # a Batch API line came back with an error


def validate_task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"unknown judge task {task!r}; expected 'annotate' or 'evaluate'")
    return task


@dataclass(frozen=True)
class JudgeInput:
    """One triplet to judge. Images are the encoded file bytes (PNG, JPEG, ...)."""

    instruction: str
    original: bytes
    edited: bytes
    triplet_id: str | None = None  # for messages and logs only; never part of the key
    # Backend-specific ground truth, e.g. the Shapes scene for the oracle judge.
    context: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_instruction(self.instruction, f"triplet {self.triplet_id or '?'}: the instruction")
        for name in ("original", "edited"):
            value = getattr(self, name)
            if not isinstance(value, (bytes, bytearray)) or len(value) == 0:
                raise ValueError(f"triplet {self.triplet_id or '?'}: the {name} image is empty")


@dataclass(frozen=True)
class Verdict:
    """A benchmark verdict for one perspective: criterion met (yes/no) and a score in [0, 5]."""

    passed: bool
    score: float

    def __post_init__(self) -> None:
        if not isinstance(self.passed, bool):
            raise RewardValidationError(f"verdict must be True/False, got {self.passed!r}")
        object.__setattr__(self, "score", validate_score(self.score, "verdict score"))

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": "yes" if self.passed else "no", "score": self.score}


@dataclass(frozen=True)
class Evaluation:
    """The three perspectives' benchmark verdicts (paper §5, Fig. 8)."""

    following: Verdict
    preserving: Verdict
    quality: Verdict

    def __getitem__(self, name: str) -> Verdict:
        if name not in PERSPECTIVES:
            raise KeyError(f"unknown perspective {name!r}")
        return getattr(self, name)

    @property
    def scores(self) -> tuple[float, float, float]:
        return tuple(getattr(self, p).score for p in PERSPECTIVES)  # type: ignore[return-value]

    @property
    def verdicts(self) -> tuple[bool, bool, bool]:
        return tuple(getattr(self, p).passed for p in PERSPECTIVES)  # type: ignore[return-value]

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {p: getattr(self, p).to_dict() for p in PERSPECTIVES}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Evaluation:
        """Inverse of :meth:`to_dict`; raises :class:`RewardValidationError` on a bad value."""
        verdicts = []
        for p in PERSPECTIVES:
            item = d.get(p) if isinstance(d, Mapping) else None
            if not isinstance(item, Mapping) or "verdict" not in item or "score" not in item:
                raise RewardValidationError(f"{p}: expected {{'verdict': 'yes'|'no', 'score': s}}")
            if item["verdict"] not in ("yes", "no"):
                raise RewardValidationError(f"{p}: verdict must be 'yes' or 'no'")
            verdicts.append(Verdict(item["verdict"] == "yes", item["score"]))
        return cls(*verdicts)


@dataclass
class Usage:
    """What a judgement cost: API calls, tokens (from the server's ``usage``) and image bytes sent."""

    calls: int = 0  # HTTP requests made, retries included
    prompt_tokens: int = 0
    completion_tokens: int = 0
    image_bytes: int = 0  # encoded image bytes put on the wire (base64 payload length)
    retries: int = 0  # requests repeated after a transient error or an unusable reply

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.calls + other.calls,
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.image_bytes + other.image_bytes,
            self.retries + other.retries,
        )

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, int]:
        return {
            "calls": self.calls,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "image_bytes": self.image_bytes,
            "retries": self.retries,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> Usage:
        d = d or {}
        return cls(**{k: int(d.get(k, 0) or 0) for k in cls().to_dict()})


@dataclass(frozen=True)
class JudgeSpec:
    """Who judged: backend kind, model, prompt version and request mode (part of every label)."""

    kind: str  # "openai" (any OpenAI-compatible server) or "shapes-oracle"
    model: str  # e.g. "gpt-4o", or the oracle's version string
    prompt_version: str  # e.g. "v1"; "n/a" for judges without prompts
    mode: str = "one"  # "one" call per triplet or "three" calls (one per perspective)
    digest: str = ""  # hash of the prompt texts, so an edited-but-not-bumped prompt is a new key

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.model}"

    @property
    def stored_version(self) -> str:
        """The ``prompt_version`` stored with a label: version, mode and prompt digest
        (``v1-one+6096b4de92b5``), so labels of different prompts or modes never mix."""
        digest = f"+{self.digest[:12]}" if self.digest else ""
        return f"{self.prompt_version}-{self.mode}{digest}"

    def to_dict(self) -> dict[str, str]:
        return {
            "kind": self.kind,
            "model": self.model,
            "prompt_version": self.prompt_version,
            "mode": self.mode,
            "digest": self.digest,
        }


@dataclass(frozen=True)
class JudgeResult:
    """The outcome of one judgement: ok with a value, or failed with the raw reply and a reason."""

    task: str
    status: Status
    judge: JudgeSpec
    rewards: Rewards | None = None  # task == "annotate" and status == "ok"
    evaluation: Evaluation | None = None  # task == "evaluate" and status == "ok"
    raw: str = ""  # the model's reply (three-call mode: JSON object perspective -> reply)
    reason_code: str = ""  # one of the module-level reason codes when failed
    reason: str = ""  # a full sentence when failed
    usage: Usage = field(default_factory=Usage)
    attempts: int = 1
    # per-perspective standard deviation of the scores, from judges that predict one (the
    # learned reward model): the label's confidence; None for judges that do not
    std: Mapping[str, float] | None = None

    def __post_init__(self) -> None:
        validate_task(self.task)
        if self.status == "ok":
            want = self.rewards if self.task == "annotate" else self.evaluation
            if want is None:
                raise ValueError(f"an ok {self.task} result needs its value")
        elif self.status == "failed":
            if not self.reason_code or not self.reason:
                raise ValueError("a failed result needs a reason_code and a reason")
        else:
            raise ValueError(f"status must be 'ok' or 'failed', got {self.status!r}")

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def value_dict(self) -> dict[str, Any] | None:
        """The label as plain data (``Rewards.to_dict`` or ``Evaluation.to_dict``), or None."""
        if not self.ok:
            return None
        return self.rewards.to_dict() if self.task == "annotate" else self.evaluation.to_dict()

    @classmethod
    def failed(
        cls, task: str, judge: JudgeSpec, code: str, reason: str, raw: str = "", **kw: Any
    ) -> JudgeResult:
        return cls(task, "failed", judge, raw=raw, reason_code=code, reason=reason, **kw)


class Judge(abc.ABC):
    """A judge backend. Subclasses implement :meth:`_judge`; callers use annotate / evaluate."""

    spec: JudgeSpec

    async def annotate(self, item: JudgeInput) -> JudgeResult:
        """Training label: per perspective a score in [0, 5] and the failure points."""
        return await self._judge("annotate", item)

    async def evaluate(self, item: JudgeInput) -> JudgeResult:
        """Benchmark verdict: per perspective yes/no and a score in [0, 5]."""
        return await self._judge("evaluate", item)

    async def run(self, task: str, item: JudgeInput) -> JudgeResult:
        return await self._judge(validate_task(task), item)

    @abc.abstractmethod
    async def _judge(self, task: str, item: JudgeInput) -> JudgeResult: ...

    def estimate(self, task: str, item: JudgeInput) -> Usage:
        """The usage one judgement is expected to cost, without calling anything (for --dry-run)."""
        return Usage()

    async def aclose(self) -> None:
        """Release connections. Safe to call twice."""
        return None

    async def __aenter__(self) -> Judge:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def idempotency_key(
    original_sha256: str, edited_sha256: str, instruction: str, spec: JudgeSpec, task: str
) -> str:
    """The content-hash key of one judgement: same images, instruction, judge and task -> same key.

    Image identity is the SHA-256 of the stored file bytes. The key covers the model, the prompt
    version and digest and the request mode, so a new prompt or model labels again, while a re-run
    of the same job finds its earlier results.
    """
    validate_task(task)
    doc = {
        "original": original_sha256,
        "edited": edited_sha256,
        "instruction": instruction,
        "task": task,
        "judge": spec.to_dict(),
    }
    return sha256_hex(json.dumps(doc, sort_keys=True, ensure_ascii=False).encode("utf-8"))


# -- judge names on command lines --------------------------------------------------------------

REWARD_MODEL_JUDGE = "reward-model:"  # prefix of the learned reward model's judge name


def reward_model_folder(name: str) -> str | None:
    """The folder of a ``reward-model:FOLDER`` judge name; None for any other judge."""
    if name.startswith(REWARD_MODEL_JUDGE) and len(name) > len(REWARD_MODEL_JUDGE):
        return name[len(REWARD_MODEL_JUDGE) :]
    return None


def judge_name_type(*names: str) -> Callable[[str], str]:
    """An argparse ``type`` accepting one of ``names`` or ``reward-model:FOLDER``."""

    def check(text: str) -> str:
        if text in names or reward_model_folder(text) is not None:
            return text
        raise argparse.ArgumentTypeError(
            f"unknown judge {text!r}; choose {', '.join(names)} or {REWARD_MODEL_JUDGE}FOLDER"
        )

    return check
