"""Reward judges: one interface (annotate / evaluate), an OpenAI-compatible backend, parsing.

See :mod:`core.judges.base` for the interface and docs/judges.md for how to run them.
"""

from core.judges.base import (
    Evaluation,
    Judge,
    JudgeInput,
    JudgeResult,
    JudgeSpec,
    Usage,
    Verdict,
    idempotency_key,
)
from core.judges.limits import RateLimiter, RetryPolicy
from core.judges.parsing import ReplyError, parse_annotation, parse_evaluation

__all__ = [
    "Evaluation",
    "Judge",
    "JudgeInput",
    "JudgeResult",
    "JudgeSpec",
    "RateLimiter",
    "ReplyError",
    "RetryPolicy",
    "Usage",
    "Verdict",
    "idempotency_key",
    "parse_annotation",
    "parse_evaluation",
]
