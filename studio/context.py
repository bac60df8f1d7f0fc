"""What every tab shares: the store, the login policy, the model, the queues; error handling.

Handlers are small module-level functions that take a :class:`StudioContext` (bound with
:func:`bind` when the Blocks are built) and a ``gr.Request`` for the user. Errors
with a message meant for people (access, conflicts, bad input) become ``gr.Error`` through
:func:`user_errors`, so the page shows the sentence and ``gradio_client`` raises it; anything
else is a bug and propagates unchanged.
"""

from __future__ import annotations

import functools
import inspect
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import gradio as gr

from core.images import ImageError
from core.review_queue import ReviewQueue
from core.rewards import RewardValidationError
from core.store import Store, StoreError
from studio.auth import Access, AccessDenied
from studio.media import DifferenceImages, NeutralImages
from studio.model import EditModel
from studio.rating import BlindRating

F = TypeVar("F", bound=Callable[..., Any])
# Errors whose message is meant for people (access, conflicts, bad input), not bugs.
USER_ERRORS = (AccessDenied, StoreError, ImageError, RewardValidationError)


@dataclass
class StudioContext:
    store: Store
    access: Access
    model: EditModel
    media: NeutralImages
    differences: DifferenceImages  # cached difference views for the review tab
    queue: ReviewQueue
    rating: BlindRating | None  # None when the store has fewer than two runs to compare
    banner: str = ""  # Markdown shown on top of every page ("" for none)
    examples: list[tuple[str, str]] = field(default_factory=list)  # (image path, instruction)
    export_dir: Path | None = None  # where exports are written (defaults to the media folder)

    def export_folder(self, kind: str) -> Path:
        """A fresh folder for one export, so concurrent exports never overwrite each other."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        folder = (
            self.export_dir or self.media.root / "exports"
        ) / f"{kind}-{stamp}-{uuid.uuid4().hex[:8]}"
        folder.mkdir(parents=True)
        return folder


def user_errors(fn: F) -> F:
    """Turn errors addressed to the user into ``gr.Error`` (their message is shown as is)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as e:
            raise gr.Error(str(e), print_exception=False) from e

    return wrapper  # type: ignore[return-value]


def bind(fn: Callable[..., Any], ctx: StudioContext) -> Callable[..., Any]:
    """``fn`` with its first argument (the context) bound.

    Unlike ``functools.partial``, the result is a plain function whose signature and type
    hints Gradio can read, so ``gr.Request`` and ``gr.Progress`` parameters are still
    injected.
    """

    @functools.wraps(fn)
    def bound(*args: Any, **kwargs: Any) -> Any:
        return fn(ctx, *args, **kwargs)

    signature = inspect.signature(fn)
    bound.__signature__ = signature.replace(parameters=list(signature.parameters.values())[1:])
    return bound


def username(request: gr.Request | None) -> str | None:
    """The logged-in user of a request (None when the studio runs without login)."""
    return getattr(request, "username", None) if request is not None else None
