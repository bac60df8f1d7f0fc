"""Assemble the studio: context from a store and a model, the Blocks, and launch settings.

    ctx = create_context(db="studio.db", model=None)      # demo DB + demo model by default
    demo = build_demo(ctx)
    demo.launch(**launch_kwargs(ctx, host="127.0.0.1", port=7860))

``build_demo`` only wires the three tabs (``edit_tab``, ``review_tab``, ``rate_tab``) and
lets Gradio serve the store's images and the studio's media folder in place
(``studio.media.serve_statically``) instead of copying every returned file into its cache;
``launch_kwargs`` carries what Gradio 6 takes at launch: theme, css, the hotkey script
(``head``), login (``auth``), the folders Gradio may serve (``allowed_paths``) and the upload
cap (``max_file_size``). The queue lets two generations wait for the one model rather than
run at once (``concurrency_id="model"``) while reviews and ratings run in parallel.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import gradio as gr

from core.review_queue import ReviewQueue
from core.store import DEFAULT_LOCK_SECONDS, Store
from studio.auth import Access, ensure_local_user, password_check, visible_tabs
from studio.context import StudioContext, bind, username
from studio.edit_tab import build_edit_tab, model_note
from studio.media import DifferenceImages, NeutralImages, serve_statically
from studio.model import EditModel
from studio.notice import NOTICE_CSS
from studio.rate_tab import admin_setup, build_rate_tab
from studio.rating import BlindRating, Evaluation
from studio.review_handlers import ANY, filter_choices
from studio.review_tab import build_review_tab

HOTKEYS = Path(__file__).with_name("hotkeys.js")
TAB_IDS = ("edit", "review", "rate")
CSS = """
/* The shortcut cursor and the keyboard focus ring are drawn inside their element (negative
   offset): Gradio's blocks clip what overflows them, which hid an outside ring. */
.mrc-cursor { outline: 3px solid #f59e0b; outline-offset: -3px; border-radius: 8px; }
.gradio-container :is(a[href], button, input, textarea, select, [tabindex]):focus-visible {
  outline: 3px solid #2563eb !important; outline-offset: -3px !important;
}
#mrc-banner { border-left: 6px solid #f59e0b; padding: 6px 12px; background: #fffbeb; }
#mrc-banner p { margin: 0; }
/* Small images (Shapes are 64 px) fill their frame with sharp pixels instead of a blur. */
.mrc-pixels img { image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain; }
"""
MAX_UPLOAD = "20mb"
DEFAULT_CONCURRENCY = 8  # review/rating handlers in parallel; the model has its own limit of 1


def default_evaluation(
    store: Store, overlap: int = 3, *, gold_share: float = 0.0, reveal: bool = False
) -> Evaluation | None:
    """Compare the two most recent runs, or None when the store has fewer than two. Gold pairs
    are mixed in at ``gold_share`` when the store has any."""
    runs = store.list_runs()
    if len(runs) < 2:
        return None
    share = gold_share if store.gold_items() else 0.0
    return Evaluation(runs[-2]["name"], runs[-1]["name"], overlap=overlap, gold_share=share,
                      reveal=reveal)  # fmt: skip


def create_context(
    store: Store,
    model: EditModel,
    *,
    login_required: bool,
    evaluation: Evaluation | None = None,
    banner: str = "",
    examples: list[tuple[str, str]] | None = None,
    lock_seconds: float | None = None,
    media_root: str | Path | None = None,
) -> StudioContext:
    """Everything the handlers share. ``evaluation`` defaults to :func:`default_evaluation`."""
    if not login_required:
        ensure_local_user(store)
    media = NeutralImages(media_root)
    queue = ReviewQueue(store, lock_seconds=lock_seconds or DEFAULT_LOCK_SECONDS)
    threading.Thread(target=queue.warm, name="review-queue-warm", daemon=True).start()
    evaluation = evaluation or default_evaluation(store)
    rating = BlindRating(store, evaluation, media) if evaluation else None
    if not model.trained:
        warning = (
            "**No trained model is installed**: the Edit tab runs randomly initialised tiny "
            "components, so its outputs are noise. Pass `--model` (an MRC or InstructPix2Pix "
            "pipeline folder or hub id) or install the Shapes demo model (docs/studio.md)."
        )
        banner = f"{banner}\n\n{warning}" if banner else warning
    return StudioContext(
        store=store,
        access=Access(store, login_required),
        model=model,
        media=media,
        differences=DifferenceImages(media.root / "difference"),
        queue=queue,
        rating=rating,
        banner=banner,
        examples=list(examples or []),
    )


def on_load(ctx: StudioContext, request: gr.Request) -> tuple:
    """Per visitor: who is logged in, the tabs their role may use (and nothing the others
    would reveal: raters get no model name and no review filters), the admin panels."""
    user = username(request)
    role = ctx.access.role_of(user)
    who = f"Signed in as **{user}** ({role})." if user else "Local single-user mode (admin)."
    tabs = visible_tabs(role)
    shown = [gr.Tab(visible=tab in tabs) for tab in TAB_IDS]
    selected = gr.Tabs(selected=tabs[0]) if tabs else gr.Tabs()
    if "review" in tabs:
        choices = filter_choices(ctx)
    else:
        choices = (gr.update(choices=[ANY]), gr.update(choices=[ANY]))
    note = model_note(ctx) if "edit" in tabs else ""
    return (who, *shown, selected, note, *choices, *admin_setup(ctx, request))


def build_demo(ctx: StudioContext) -> gr.Blocks:
    # Store images and the studio's own media are served in place, not copied per response.
    serve_statically([ctx.store.images_dir, ctx.media.root])
    # delete_cache: every hour, drop Gradio's cached copies older than a day.
    with gr.Blocks(title="MRC Studio", fill_width=True, delete_cache=(3600, 86400)) as demo:
        gr.Markdown("# MRC Studio\nReward-conditioned instruction-based image editing "
                    "(Multi-Reward as Condition, Gu et al. ICLR 2025).")  # fmt: skip
        if ctx.banner:  # names no model or system: raters see it too
            gr.Markdown(ctx.banner, elem_id="mrc-banner")
        who = gr.Markdown(elem_id="mrc-user")
        # Every tab starts hidden; page_load shows those the visitor's role may use.
        with gr.Tabs() as tabs:
            with gr.Tab("Edit", id="edit", visible=False) as edit_tab:
                edit = build_edit_tab(ctx)
            with gr.Tab("Review", id="review", visible=False) as review_tab:
                review = build_review_tab(ctx)
            with gr.Tab("Human evaluation", id="rate", visible=False) as rate_tab:
                admin = build_rate_tab(ctx)
        outputs = [who, edit_tab, review_tab, rate_tab, tabs, edit["model_note"],
                   review["category"], review["judge"], *admin]  # fmt: skip
        demo.load(bind(on_load, ctx), None, outputs, api_name="page_load")
    demo.queue(default_concurrency_limit=DEFAULT_CONCURRENCY)
    return demo


def launch_kwargs(ctx: StudioContext, host: str, port: int | None) -> dict[str, Any]:
    """Arguments for ``demo.launch`` (Gradio 6 takes theme, css and head here)."""
    kwargs: dict[str, Any] = dict(
        server_name=host,
        server_port=port,
        css=CSS + NOTICE_CSS,
        head=f"<script>{HOTKEYS.read_text(encoding='utf-8')}</script>",
        theme=gr.themes.Soft(),
        allowed_paths=[str(ctx.store.images_dir), str(ctx.media.root)],
        max_file_size=MAX_UPLOAD,
        footer_links=["api", "settings"],
        run_history=False,
        show_error=True,
    )
    if ctx.access.login_required:
        kwargs["auth"] = password_check(ctx.store)
        kwargs["auth_message"] = "MRC Studio: sign in with the account an admin created for you."
    return kwargs
