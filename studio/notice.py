"""Refusals as toasts on Gradio's direct (``queue=False``) path.

The Review tab's steps run with ``queue=False``: the page sends one POST to
``/gradio_api/run/<api>`` instead of joining the queue and waiting on the session's event
stream, which saves about a third of a step's time (docs/studio.md, "In the browser"). On that
path Gradio 6's page cannot show a raised ``gr.Error`` as a toast: its client reports the
error without ``visible`` (only the queue's messages carry it), the page's toast function
shows nothing unless ``visible`` is true, and the failed event puts an "Error" badge over
every output. ``gr.Info`` / ``gr.Warning`` need the queue too.

So these handlers do not raise for an expected refusal (a role refusal, a locked item, a
stale label, "No item is open", a bad filter): :func:`with_notice` turns it into a normal
answer that leaves every output as it was (``gr.skip()``) and puts the message into one more
output, a :func:`notice_box`. Its value is ``None`` when there is nothing to say, else
``{"message": ..., "key": ...}`` (a fresh key each time, so the same refusal twice shows
twice); in the page, a few lines of ``js_on_load`` show it as a toast styled like Gradio's
(``role="alert"``, closes on a click, goes after 10 s). API clients read the same dict.
Anything else (a bug) still propagates and shows as Gradio's error.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import gradio as gr

from studio.context import USER_ERRORS

F = TypeVar("F", bound=Callable[..., Any])
NOTICE_SECONDS = 10  # as long as Gradio shows an error toast

# Runs once when the component mounts; `watch` calls back whenever an event sets the value.
# The toast is built with textContent, so a message is never parsed as HTML.
NOTICE_JS = """
watch("value", () => {
  const notice = props.value;
  if (!notice || !notice.message) return;
  let wrap = document.getElementById("mrc-toasts");
  if (!wrap) {
    wrap = document.createElement("div");
    wrap.id = "mrc-toasts";
    document.body.appendChild(wrap);
  }
  const toast = document.createElement("div");
  toast.className = "mrc-toast";
  toast.setAttribute("role", "alert");
  toast.dataset.key = notice.key || "";
  const head = document.createElement("div");
  head.className = "mrc-toast-head";
  const title = document.createElement("span");
  title.className = "mrc-toast-title";
  title.textContent = "\\u26a0 Error";
  const close = document.createElement("button");
  close.className = "mrc-toast-close";
  close.type = "button";
  close.setAttribute("aria-label", "Close");
  close.textContent = "\\u00d7";
  head.append(title, close);
  const text = document.createElement("div");
  text.className = "mrc-toast-text";
  text.textContent = notice.message;
  const timer = document.createElement("div");
  timer.className = "mrc-toast-timer";
  toast.append(head, text, timer);
  toast.addEventListener("click", () => toast.remove());
  wrap.appendChild(toast);
  setTimeout(() => toast.remove(), NOTICE_MS);
});
""".replace("NOTICE_MS", str(NOTICE_SECONDS * 1000))

# Global (the toasts live in <body>, outside the component); launch(css=...) adds it.
NOTICE_CSS = """
/* Refusal toasts of queue=False events (studio/notice.py), drawn like Gradio's own. */
#mrc-toasts { position: fixed; top: 28px; right: 12px; z-index: 1000; display: flex;
  flex-direction: column; gap: 8px; width: min(424px, calc(100vw - 24px)); }
.mrc-toast { position: relative; overflow: hidden; cursor: pointer;
  background: var(--background-fill-secondary, #f9fafb);
  border: 1px solid var(--border-color-primary, #e5e7eb); border-radius: 4px;
  box-shadow: var(--shadow-drop, 0 1px 3px rgba(0, 0, 0, 0.15));
  color: var(--body-text-color, #1f2937); animation: mrc-toast-in 0.15s ease-out; }
.dark .mrc-toast { background: var(--background-fill-primary, #0b0f19); }
.mrc-toast-head { display: flex; align-items: center; padding: 12px 12px 4px; }
.mrc-toast-title { flex: 1; font-weight: 700; font-size: var(--text-lg, 16px);
  color: var(--color-red-700, #b91c1c); }
.dark .mrc-toast-title { color: var(--color-red-500, #ef4444); }
.mrc-toast-close { background: none; border: none; font-size: 20px; line-height: 1;
  opacity: 0.6; cursor: pointer; color: inherit; }
.mrc-toast-text { padding: 0 12px 14px; font-size: var(--text-md, 14px); line-height: 1.5;
  overflow-wrap: break-word; }
.mrc-toast-timer { position: absolute; left: 0; bottom: 0; width: 100%; height: 4px;
  transform-origin: 0 0; background: var(--color-red-700, #b91c1c);
  animation: mrc-toast-countdown NOTICE_SECONDSs linear forwards; }
@keyframes mrc-toast-in { from { opacity: 0; transform: translateY(-6px); } }
@keyframes mrc-toast-countdown { from { transform: scaleX(1); } to { transform: scaleX(0); } }
""".replace("NOTICE_SECONDS", str(NOTICE_SECONDS))


NOTICE_API_INFO = {
    "anyOf": [
        {"type": "null"},
        {"type": "object", "properties": {"message": {"type": "string"},
                                          "key": {"type": "string"}}},
    ],
    "description": "None, or a refusal (every other output left as it was)",
}  # fmt: skip


def notice_box(elem_id: str) -> gr.HTML:
    """The output that shows a refusal as a toast; it renders nothing in the layout.

    A ``gr.HTML`` (its ``postprocess`` passes the dict through) rather than a subclass:
    Gradio writes a ``.pyi`` stub beside the module of every component class it sees
    defined. Its API description is set on the instance, since its value is no string.
    """
    box = gr.HTML(None, html_template="", js_on_load=NOTICE_JS, elem_id=elem_id)
    box.api_info = lambda: NOTICE_API_INFO  # type: ignore[method-assign]
    return box


def notice(message: str) -> dict[str, str]:
    """A notice's value: the message and a fresh key."""
    return {"message": message, "key": uuid.uuid4().hex}


def with_notice(n_outputs: int) -> Callable[[F], F]:
    """Decorate a handler of ``n_outputs`` outputs for an event whose last output is a
    :func:`notice_box`: its answer gets ``None`` appended; a refusal (``gr.Error`` or an error
    addressed to the user, as :func:`studio.context.user_errors` lists them) becomes
    ``gr.skip()`` for every output and the message in the notice."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> tuple:
            try:
                out = fn(*args, **kwargs)
            except gr.Error as e:
                return refusal(n_outputs, e.message)
            except USER_ERRORS as e:
                return refusal(n_outputs, str(e))
            return (*out, None)

        return wrapper  # type: ignore[return-value]

    return decorate


def refusal(n_outputs: int, message: str) -> tuple:
    """Every output untouched, and ``message`` in the notice."""
    return (*(gr.skip() for _ in range(n_outputs)), notice(message))
