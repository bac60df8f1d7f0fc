"""Versioned judge prompts, loaded from ``core/judges/prompts/<name>_v<N>.txt``.

Names: ``<task>_<perspective>`` for the paper's three calls per triplet (``annotate_following``,
``evaluate_quality``, ...) and ``<task>_all`` for the single call that covers all three
perspectives. A file is::

    # comment lines
    [system]
    system message
    [user]
    user message with the one placeholder {instruction}

The images follow the user text in the request: the original first, then the edited image.
Prompts are never edited in place: a change is a new file with the next version number, and the
version (plus a digest of the texts, see :attr:`PromptSet.digest`) is stored with every label,
so labels made with different prompts are never mixed up.

:meth:`Prompt.match` is the inverse of :meth:`Prompt.render`; the local judge server uses it to
tell which prompt (task, perspective) a request carries and to read the instruction back.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.judges.base import validate_task
from core.rewards import PERSPECTIVES

PROMPT_DIR = Path(__file__).with_name("prompts")
PLACEHOLDER = "{instruction}"
MODES = ("one", "three")
_FILE = re.compile(r"^(?P<name>[a-z]+_[a-z]+)_v(?P<version>\d+)\.txt$")


class PromptError(ValueError):
    """A prompt file is missing or malformed."""


@dataclass(frozen=True)
class Prompt:
    name: str  # e.g. "annotate_following" or "annotate_all"
    version: int
    system: str
    user: str  # contains {instruction} exactly once

    @property
    def task(self) -> str:
        return self.name.split("_", 1)[0]

    @property
    def perspectives(self) -> tuple[str, ...]:
        part = self.name.split("_", 1)[1]
        return PERSPECTIVES if part == "all" else (part,)

    def render(self, instruction: str) -> tuple[str, str]:
        """(system, user) texts for one triplet."""
        return self.system, self.user.replace(PLACEHOLDER, instruction)

    def match(self, user_text: str) -> str | None:
        """The instruction if ``user_text`` is this prompt rendered, else None."""
        m = self._regex.fullmatch(user_text)
        return m.group("instruction") if m else None

    @property
    def _regex(self) -> re.Pattern[str]:
        head, tail = self.user.split(PLACEHOLDER)
        return re.compile(re.escape(head) + r"(?P<instruction>.*?)" + re.escape(tail), re.S)


def parse_prompt_file(text: str, name: str, version: int) -> Prompt:
    lines = text.splitlines()
    while lines and (lines[0].startswith("#") or not lines[0].strip()):
        lines.pop(0)
    body = "\n".join(lines)
    m = re.fullmatch(r"\[system\]\n(?P<system>.*?)\n\[user\]\n(?P<user>.*)", body, re.S)
    if not m:
        raise PromptError(f"prompt {name} v{version}: expected a [system] then a [user] section")
    system, user = m.group("system").strip(), m.group("user").strip()
    if user.count(PLACEHOLDER) != 1:
        raise PromptError(
            f"prompt {name} v{version}: the [user] section must contain {PLACEHOLDER} exactly once"
        )
    return Prompt(name, version, system, user)


def load_prompt(name: str, version: int, directory: Path | str | None = None) -> Prompt:
    path = Path(directory or PROMPT_DIR) / f"{name}_v{version}.txt"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PromptError(f"no prompt file {path}") from None
    return parse_prompt_file(text, name, version)


def prompt_names(task: str, mode: str) -> tuple[str, ...]:
    validate_task(task)
    if mode not in MODES:
        raise ValueError(f"unknown request mode {mode!r}; expected 'one' or 'three'")
    return (f"{task}_all",) if mode == "one" else tuple(f"{task}_{p}" for p in PERSPECTIVES)


def available_versions(directory: Path | str | None = None) -> dict[str, list[int]]:
    """{prompt name: sorted versions} of the files in ``directory``."""
    out: dict[str, list[int]] = {}
    for path in sorted(Path(directory or PROMPT_DIR).glob("*_v*.txt")):
        m = _FILE.match(path.name)
        if m:
            out.setdefault(m.group("name"), []).append(int(m.group("version")))
    return {k: sorted(v) for k, v in out.items()}


def latest_version(mode: str, directory: Path | str | None = None) -> int:
    """The highest version for which every prompt of ``mode`` (both tasks) exists."""
    have = available_versions(directory)
    names = prompt_names("annotate", mode) + prompt_names("evaluate", mode)
    common = set.intersection(*(set(have.get(n, [])) for n in names))
    if not common:
        raise PromptError(f"no complete prompt set for mode {mode!r} in {directory or PROMPT_DIR}")
    return max(common)


@dataclass(frozen=True)
class PromptSet:
    """The prompts a judge uses in one request mode at one version, for both tasks."""

    mode: str
    version: int
    prompts: dict[str, Prompt] = field(repr=False)  # name -> Prompt

    @property
    def label(self) -> str:
        return f"v{self.version}"

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        for name in sorted(self.prompts):
            p = self.prompts[name]
            h.update(f"{name}\0{p.system}\0{p.user}\0".encode())
        return h.hexdigest()[:16]

    def for_task(self, task: str) -> list[Prompt]:
        return [self.prompts[n] for n in prompt_names(task, self.mode)]


def load_prompt_set(
    mode: str, version: int | None = None, directory: Path | str | None = None
) -> PromptSet:
    version = latest_version(mode, directory) if version is None else int(version)
    names = prompt_names("annotate", mode) + prompt_names("evaluate", mode)
    return PromptSet(mode, version, {n: load_prompt(n, version, directory) for n in names})


def identify(user_text: str, directory: Path | str | None = None) -> tuple[Prompt, str] | None:
    """Which prompt (any version) rendered ``user_text``, and with what instruction."""
    for name, versions in available_versions(directory).items():
        for v in versions:
            prompt = load_prompt(name, v, directory)
            instruction = prompt.match(user_text)
            if instruction is not None:
                return prompt, instruction
    return None


def response_schema(task: str, perspectives: tuple[str, ...] = PERSPECTIVES) -> dict[str, Any]:
    """The ``response_format`` of a structured-output request (OpenAI ``json_schema``, strict)."""
    validate_task(task)
    score = {"type": "number", "minimum": 0, "maximum": 5}
    if task == "annotate":
        one = {
            "type": "object",
            "properties": {"score": score, "failure_points": {"type": "string"}},
            "required": ["score", "failure_points"],
            "additionalProperties": False,
        }
    else:
        one = {
            "type": "object",
            "properties": {"verdict": {"type": "string", "enum": ["yes", "no"]}, "score": score},
            "required": ["verdict", "score"],
            "additionalProperties": False,
        }
    schema = (
        one
        if len(perspectives) == 1
        else {
            "type": "object",
            "properties": {p: one for p in perspectives},
            "required": list(perspectives),
            "additionalProperties": False,
        }
    )
    name = f"{task}_{'all' if len(perspectives) > 1 else perspectives[0]}"
    return {"type": "json_schema", "json_schema": {"name": name, "strict": True, "schema": schema}}
