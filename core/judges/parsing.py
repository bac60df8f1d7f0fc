"""Strict-but-tolerant parsing of judge replies.

Real VLM output is messy: a JSON object, a Python-dict string such as
``{'following': 'yes', 'score': 4.5}``, either of them inside a fenced code block or surrounded by
prose, integer or float scores, ``"4/5"``, ``"Yes."``. This module accepts all of that and nothing
more: it never guesses a value. Whatever it cannot read raises :class:`ReplyError` with a reason
code (``unparsable`` or ``out_of_range``) and a full sentence, and the caller retries and finally
stores a *failed* item with the raw reply.

How a reply is read:

1. every balanced ``{...}`` block in the text is a candidate (strings and escapes are respected,
   so braces inside quoted text do not confuse it; fences and prose around it are ignored);
2. each candidate is loaded as JSON, else as a Python literal (``ast.literal_eval``, also with
   ``true/false/null`` mapped), and must be a dict;
3. keys are matched case- and punctuation-insensitively against known aliases
   (``"Instruction Following"`` == ``instruction_following`` == ``following``);
4. the candidates that read as a complete answer must all agree; two different answers in one
   reply are ambiguous and rejected.

Expected shapes (see the prompt files in ``core/judges/prompts``):

* annotate, one perspective:  ``{"score": 3, "failure_points": "..."}``
* evaluate, one perspective:  ``{"following": "yes", "score": 4.5}`` (or ``"verdict": "yes"``)
* all three perspectives:     ``{"following": {...}, "preserving": {...}, "quality": {...}}``
  with the single-perspective object as each value.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from core.judges.base import OUT_OF_RANGE, UNPARSABLE, Verdict
from core.rewards import MAX_SCORE, MAX_TEXT_CHARS, MIN_SCORE, PERSPECTIVES, Label


class ReplyError(ValueError):
    """A reply that cannot be turned into a label; ``code`` is unparsable or out_of_range."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _norm(key: Any) -> str:
    return re.sub(r"[^a-z0-9]", "", str(key).lower())


PERSPECTIVE_ALIASES: dict[str, set[str]] = {
    "following": {"following", "instructionfollowing"},
    "preserving": {"preserving", "detailpreserving", "preservation", "detailpreservation"},
    "quality": {"quality", "generationquality", "imagequality"},
}
SCORE_KEYS = {"score", "rating"}
TEXT_KEYS = {"failurepoints", "failures", "failurepoint", "negativeprompt", "issues", "problems"}
VERDICT_KEYS = {"verdict", "answer", "decision", "result", "met"}
YES = {"yes", "y", "true"}
NO = {"no", "n", "false"}


# -- finding objects in text ---------------------------------------------------------------


def find_objects(text: str) -> list[str]:
    """Every outermost balanced ``{...}`` block of ``text``, in order (quoted braces ignored)."""
    out: list[str] = []
    depth, start, quote, escaped = 0, -1, "", False
    for i, ch in enumerate(text):
        if depth == 0:
            if ch == "{":
                depth, start, quote = 1, i, ""
            continue
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
            continue
        if ch in "\"'":
            quote = ch
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                out.append(text[start : i + 1])
    return out


_JSON_WORDS = re.compile(r"\b(true|false|null)\b")


def load_object(block: str) -> dict[str, Any]:
    """A ``{...}`` block as a dict: JSON first, then a Python literal. Raises ReplyError."""
    value: Any = _MISSING
    try:
        value = json.loads(block)
    except json.JSONDecodeError:
        for src in (block, _JSON_WORDS.sub(lambda m: _PY[m.group(1)], block)):
            try:
                value = ast.literal_eval(src)
                break
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                continue
    if value is _MISSING:
        raise ReplyError(UNPARSABLE, "the reply's {...} block is neither JSON nor a Python dict")
    if not isinstance(value, dict):
        raise ReplyError(UNPARSABLE, f"expected an object, found {type(value).__name__}")
    return value


_PY = {"true": "True", "false": "False", "null": "None"}
_MISSING = object()


# -- values --------------------------------------------------------------------------------

_FRACTION = re.compile(r"^\s*([-+]?\d+(?:\.\d+)?)\s*(?:/\s*5(?:\.0+)?|out of 5)?\s*$", re.I)


def parse_score(value: Any, where: str = "score") -> float:
    """A score in [0, 5] from a number or a numeric string (``"4"``, ``"4.5"``, ``"4/5"``)."""
    if isinstance(value, bool) or value is None:
        raise ReplyError(UNPARSABLE, f"{where} is {value!r}, not a number")
    if isinstance(value, (int, float)):
        score = float(value)
    elif isinstance(value, str):
        m = _FRACTION.match(value)
        if not m:
            raise ReplyError(UNPARSABLE, f"{where} {value!r} is not a number")
        score = float(m.group(1))
    else:
        raise ReplyError(UNPARSABLE, f"{where} is a {type(value).__name__}, not a number")
    if math.isnan(score) or math.isinf(score):
        raise ReplyError(OUT_OF_RANGE, f"{where} is {score}, not a finite number")
    if not MIN_SCORE <= score <= MAX_SCORE:
        raise ReplyError(OUT_OF_RANGE, f"{where} {score:g} is outside [0, 5]")
    return score


def parse_yes_no(value: Any, where: str = "verdict") -> bool:
    """True/False from a bool or a yes/no string (``"Yes."``, ``"no, because ..."``, ``"TRUE"``)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        words = re.findall(r"[a-z]+", value.lower())
        if words and words[0] in YES:
            return True
        if words and words[0] in NO:
            return False
    raise ReplyError(OUT_OF_RANGE, f"{where} {value!r} is neither yes nor no")


def parse_text(value: Any, where: str = "failure points") -> str:
    """The failure points: a string, a list of strings (joined with '; '), or None/[] for none."""
    if value is None:
        return ""
    if isinstance(value, str):
        text = value.strip()
    elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        text = "; ".join(v.strip() for v in value if v.strip())
    else:
        raise ReplyError(UNPARSABLE, f"{where} must be text or a list of texts, got {value!r}")
    if len(text) > MAX_TEXT_CHARS:
        raise ReplyError(
            OUT_OF_RANGE, f"{where} has {len(text)} characters (limit {MAX_TEXT_CHARS})"
        )
    return text


# -- shapes --------------------------------------------------------------------------------


def _lookup(obj: Mapping[str, Any], aliases: set[str]) -> tuple[bool, Any]:
    hits = [v for k, v in obj.items() if _norm(k) in aliases]
    if len(hits) > 1:
        raise ReplyError(UNPARSABLE, f"the reply gives {len(hits)} values for {sorted(aliases)[0]}")
    return (True, hits[0]) if hits else (False, None)


def _score_keys(p: str) -> set[str]:
    return SCORE_KEYS | {a + "score" for a in PERSPECTIVE_ALIASES[p]}


def _unwrap(obj: Mapping[str, Any], p: str) -> Mapping[str, Any]:
    """``{"following": {...}}`` for a single perspective -> the inner object."""
    found, inner = _lookup(obj, PERSPECTIVE_ALIASES[p])
    return inner if found and isinstance(inner, Mapping) else obj


def _label(obj: Mapping[str, Any], p: str) -> Label:
    obj = _unwrap(obj, p)
    found, score = _lookup(obj, _score_keys(p))
    if not found:
        raise ReplyError(UNPARSABLE, f"{p}: the reply has no score")
    found_text, text = _lookup(obj, TEXT_KEYS)
    if not found_text:
        raise ReplyError(UNPARSABLE, f"{p}: the reply has no failure_points field")
    return Label(parse_score(score, f"{p} score"), parse_text(text, f"{p} failure points"))


def _verdict(obj: Mapping[str, Any], p: str) -> Verdict:
    inner = _unwrap(obj, p)
    found, score = _lookup(inner, _score_keys(p))
    if not found:
        raise ReplyError(UNPARSABLE, f"{p}: the reply has no score")
    found_v, verdict = _lookup(inner, VERDICT_KEYS)
    if not found_v and inner is obj:  # flat {'following': 'yes', 'score': 4.5}
        found_v, verdict = _lookup(obj, PERSPECTIVE_ALIASES[p])
    if not found_v:
        raise ReplyError(UNPARSABLE, f"{p}: the reply has no yes/no verdict")
    return Verdict(parse_yes_no(verdict, f"{p} verdict"), parse_score(score, f"{p} score"))


def _read(obj: Mapping[str, Any], perspectives: Sequence[str], one) -> dict[str, Any]:
    if len(perspectives) == 1:
        return {perspectives[0]: one(obj, perspectives[0])}
    out = {}
    for p in perspectives:
        found, inner = _lookup(obj, PERSPECTIVE_ALIASES[p])
        if not found or not isinstance(inner, Mapping):
            raise ReplyError(UNPARSABLE, f"the reply has no object for perspective {p!r}")
        out[p] = one(inner, p)
    return out


def _parse(text: Any, perspectives: Sequence[str], one) -> dict[str, Any]:
    for p in perspectives:
        if p not in PERSPECTIVES:
            raise ValueError(f"unknown perspective {p!r}")
    if not isinstance(text, str) or not text.strip():
        raise ReplyError(UNPARSABLE, "the reply is empty")
    blocks = find_objects(text)
    if not blocks:
        raise ReplyError(UNPARSABLE, "the reply contains no {...} object")
    answers: list[dict[str, Any]] = []
    first_error: ReplyError | None = None
    for block in blocks:
        try:
            answers.append(_read(load_object(block), perspectives, one))
        except ReplyError as e:
            # out-of-range beats unparsable: it is the more specific diagnosis
            if first_error is None or (e.code == OUT_OF_RANGE and first_error.code != OUT_OF_RANGE):
                first_error = e
    if not answers:
        assert first_error is not None
        raise first_error
    if any(a != answers[0] for a in answers[1:]):
        raise ReplyError(UNPARSABLE, f"the reply contains {len(answers)} different answers")
    return answers[0]


def parse_annotation(text: str, perspectives: Sequence[str] = PERSPECTIVES) -> dict[str, Label]:
    """Labels (score + failure points) for ``perspectives`` from a reply. Raises ReplyError."""
    return _parse(text, perspectives, _label)


def parse_evaluation(text: str, perspectives: Sequence[str] = PERSPECTIVES) -> dict[str, Verdict]:
    """Verdicts (yes/no + score) for ``perspectives`` from a reply. Raises ReplyError."""
    return _parse(text, perspectives, _verdict)
