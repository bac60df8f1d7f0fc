"""Fault injection and reply writing for the local judge server (:mod:`data.judge_server`).

:class:`FaultConfig` draws, per request and from a seeded RNG, at most one fault:

=============  ================================================================================
kind           what the client sees
=============  ================================================================================
429            HTTP 429 with ``Retry-After`` (whole seconds, at least 1) and ``retry-after-ms``
500            HTTP 500 server error
timeout        nothing for ``hang`` seconds (the client's timeout fires first), then a 504
malformed      HTTP 200 whose reply has no usable answer: truncated JSON, a refusal, an empty
               string, or prose without an object
out_of_range   HTTP 200 whose reply is well-formed but has a score of 7, -1, NaN or 5.5, or a
               verdict of "maybe"
=============  ================================================================================

Healthy replies are written in one of several styles real models produce (plain JSON, a Python
dict, a fenced block, JSON inside prose), so the client's tolerant parser is exercised too.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from typing import Any

from core.judges.prompts import Prompt

FAULT_KINDS = ("429", "500", "timeout", "malformed", "out_of_range")
REPLY_STYLES = ("json", "dict", "fenced", "prose", "mixed")


@dataclass
class FaultConfig:
    latency: float = 0.0  # seconds added to every chat completion
    jitter: float = 0.0  # plus uniform [0, jitter] seconds
    p429: float = 0.0
    p500: float = 0.0
    ptimeout: float = 0.0
    pmalformed: float = 0.0
    prange: float = 0.0
    retry_after: float = 0.05  # seconds announced with a 429
    hang: float = 30.0  # seconds a "timeout" request is held
    reply_style: str = "json"
    seed: int = 0

    def __post_init__(self) -> None:
        probs = [self.p429, self.p500, self.ptimeout, self.pmalformed, self.prange]
        if any(p < 0 for p in probs) or sum(probs) > 1:
            raise ValueError("fault probabilities must be >= 0 and sum to at most 1")
        if self.reply_style not in REPLY_STYLES:
            raise ValueError(f"reply style must be one of {REPLY_STYLES}")

    @classmethod
    def spread(cls, total: float, **kw: Any) -> FaultConfig:
        """``total`` fault probability split evenly over the five kinds."""
        each = total / len(FAULT_KINDS)
        return cls(p429=each, p500=each, ptimeout=each, pmalformed=each, prange=each, **kw)

    def draw(self, rng: random.Random) -> str | None:
        r = rng.random()
        for kind, p in zip(
            FAULT_KINDS, [self.p429, self.p500, self.ptimeout, self.pmalformed, self.prange]
        ):
            if r < p:
                return kind
            r -= p
        return None


def _value(prompt: Prompt, result: Any) -> dict[str, Any]:
    if prompt.task == "annotate":
        return {"score": result.score, "failure_points": result.text}
    return {"verdict": "yes" if result.passed else "no", "score": result.score}


def reply_object(prompt: Prompt, answer: dict[str, Any]) -> dict[str, Any]:
    """The JSON object the prompt asks for, filled with the answerer's values."""
    if len(prompt.perspectives) > 1:
        return {p: _value(prompt, answer[p]) for p in prompt.perspectives}
    (p,) = prompt.perspectives
    obj = _value(prompt, answer[p])
    if prompt.task == "evaluate":  # the per-perspective evaluate prompt: {"following": "yes", ...}
        obj = {p: obj.pop("verdict"), **obj}
    return obj


def render_reply(obj: dict[str, Any], style: str, rng: random.Random) -> str:
    if style == "mixed":
        style = rng.choice(REPLY_STYLES[:-1])
    if style == "json":
        return json.dumps(obj)
    if style == "dict":
        return repr(obj)
    if style == "fenced":
        return "```json\n" + json.dumps(obj, indent=2) + "\n```"
    return "Here is my assessment of the edit.\n" + repr(obj) + "\nI hope this helps."


def corrupt_reply(obj: dict[str, Any], kind: str, rng: random.Random) -> str:
    """A malformed or out-of-range version of a healthy reply."""
    if kind == "malformed":
        text = json.dumps(obj)
        return rng.choice(
            [
                text[: max(1, len(text) // 2)],  # truncated
                "I am sorry, but I cannot assess these images.",
                "",
                "score: high; everything looks fine",
            ]
        )
    bad = json.loads(json.dumps(obj))
    leaves = [bad] if "score" in bad else [v for v in bad.values() if isinstance(v, dict)]
    target = rng.choice(leaves)
    verdict_key = next((k for k in target if k not in ("score", "failure_points")), None)
    choice = rng.choice(["seven", "negative", "nan", "half"] + (["maybe"] if verdict_key else []))
    if choice == "maybe":
        target[verdict_key] = "maybe"
    else:
        target["score"] = {"seven": 7, "negative": -1, "nan": float("nan"), "half": 5.5}[choice]
    return json.dumps(bad)  # NaN is written as the bare token NaN, as some servers do


def add_fault_args(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("fault injection")
    g.add_argument("--latency", type=float, default=0.0, help="seconds added to every completion")
    g.add_argument("--jitter", type=float, default=0.0, help="plus uniform [0, jitter] seconds")
    g.add_argument(
        "--faults", type=float, default=None, help="total fault rate, split over all kinds"
    )
    for kind, help_ in [
        ("p429", "429 + Retry-After"),
        ("p500", "500 error"),
        ("ptimeout", "held past the client timeout"),
        ("pmalformed", "malformed reply"),
        ("prange", "out-of-range reply"),
    ]:
        g.add_argument(f"--{kind}", type=float, default=0.0, help=f"probability of a {help_}")
    g.add_argument("--retry-after", type=float, default=0.05, help="seconds announced with a 429")
    g.add_argument("--hang", type=float, default=30.0, help="seconds a 'timeout' request is held")
    g.add_argument("--reply-style", choices=REPLY_STYLES, default="json")
    g.add_argument("--seed", type=int, default=0)


def fault_config(args: argparse.Namespace) -> FaultConfig:
    common = dict(
        latency=args.latency,
        jitter=args.jitter,
        retry_after=args.retry_after,
        hang=args.hang,
        reply_style=args.reply_style,
        seed=args.seed,
    )
    if args.faults is not None:
        return FaultConfig.spread(args.faults, **common)
    return FaultConfig(
        p429=args.p429,
        p500=args.p500,
        ptimeout=args.ptimeout,
        pmalformed=args.pmalformed,
        prange=args.prange,
        **common,
    )
