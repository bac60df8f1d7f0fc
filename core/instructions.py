"""One check of an edit instruction, applied where text enters MRC Studio.

The pipeline, the store, the judges and the trainer's data scan all call
:func:`check_instruction`, so an empty instruction or one that is not valid Unicode (an unpaired
surrogate, possible from the Python API or a bad JSON escape) fails at the edge with the same
clear message instead of deep inside a tokenizer, SQLite or an HTTP client.
:func:`warn_truncated` says when the text encoder will cut an instruction to its token limit
(77 for SD's CLIP), which it otherwise does without a word.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any


class InstructionError(ValueError):
    """An instruction that cannot be used, with the reason."""


def check_instruction(text: Any, where: str = "the instruction") -> str:
    """``text`` if it is a usable instruction; else raise :class:`InstructionError`."""
    if not isinstance(text, str):
        raise InstructionError(f"{where} must be a string, got {type(text).__name__}.")
    if not text.strip():
        raise InstructionError(f"{where} is empty.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = text[e.start]
        raise InstructionError(
            f"{where} is not valid Unicode text: an unpaired surrogate U+{ord(bad):04X} at "
            f"character {e.start} (a broken emoji or escape sequence?)."
        ) from None
    return text


def warn_truncated(tokenizer: Any, texts: Sequence[str], what: str = "instruction") -> int:
    """Warn once per call when some of ``texts`` exceed the tokenizer's ``model_max_length``
    (they will be cut); returns how many do."""
    limit = getattr(tokenizer, "model_max_length", None)
    if not limit or limit > 100_000 or not texts:  # no real limit configured
        return 0
    lengths = [
        len(ids) for ids in tokenizer(list(texts), truncation=False, verbose=False)["input_ids"]
    ]
    over = [n for n in lengths if n > limit]
    if over:
        warnings.warn(
            f"{len(over)} {what}(s) of up to {max(over)} tokens exceed the text encoder's "
            f"{limit}-token limit and are cut to {limit} tokens; shorten them to keep every word.",
            stacklevel=3,
        )
    return len(over)
