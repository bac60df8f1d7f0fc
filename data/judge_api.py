"""What the parts of the local judge server share: its errors and the interfaces between them.

:mod:`data.judge_server` (HTTP), :mod:`data.judge_server_batches` (the Batch API) and the answerers
(:mod:`data.shapes_judge`) all import from here, so none of them imports another's internals.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any, Protocol

from PIL import Image

from core.judges.prompts import Prompt


class UnknownItem(ValueError):
    """The answerer cannot judge this request (unknown triplet); the server answers 400."""


class HTTPError(Exception):
    """An error reply: HTTP ``status``, OpenAI-style error ``kind`` and extra ``headers``."""

    def __init__(
        self, status: int, message: str, kind: str = "invalid_request_error", headers=None
    ):
        super().__init__(message)
        self.status, self.message, self.kind, self.headers = status, message, kind, headers or {}


class Answerer(Protocol):
    """Judges one request: ``{perspective: Label}`` (annotate) or ``{perspective: Verdict}``."""

    def answer(
        self, prompt: Prompt, instruction: str, original: Image.Image, edited: Image.Image
    ) -> dict[str, Any]: ...


class CompletionServer(Protocol):
    """What the Batch API runner needs of the server: answer one chat completion, count it."""

    batch_delay: float
    lock: threading.Lock
    requests: Counter[str]

    def completion(
        self, body: Any, model: str | None = None, batch: bool = False
    ) -> dict[str, Any]: ...
