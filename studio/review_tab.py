"""Tab 2, Review: correct the judges' labels, doubtful items first.

Events (``api_name``): ``review_next`` (apply filters, take the first item), ``review_forward``
/ ``review_back`` (arrows), ``review_open`` (a triplet by id), ``review_accept``,
``review_fix``, ``review_reject``, ``review_skip``, ``review_progress``, ``review_export``.

The item on screen lives in a server-side ``gr.State`` (its id and the label version it was
loaded at); the browser never sends a version or a user name. A save based on a stale
version is refused by the store and reported in the status line; the form keeps the
annotator's values so nothing typed is lost, and the history shows who changed what.

The events that show an item (``review_next`` … ``review_undo``, and selecting a table row)
run with ``queue=False``; their last output is ``studio.notice.notice_box``: ``None``, or a
refusal's ``{"message", "key"}`` with every other output left as it was (a toast in the page).
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from core.review_doubt import STATUS_FILTERS
from core.rewards import PERSPECTIVES, TITLES
from studio.context import StudioContext, bind
from studio.media import prefetch_box
from studio.notice import notice_box
from studio.review_handlers import (
    ANNOTATION_COLUMNS,
    ANY,
    HISTORY_COLUMNS,
    ITEM_OUTPUTS,
    OVERVIEW_COLUMNS,
    PROGRESS_COLUMNS,
    RECENT_COLUMNS,
    decision_handler,
    review_apply_mine,
    review_back,
    review_export,
    review_forward,
    review_next,
    review_open,
    review_pick,
    review_progress,
    review_recent,
    review_table,
    review_take_theirs,
    review_undo,
)


def build_review_tab(ctx: StudioContext) -> dict[str, Any]:
    """Build the tab; returns the components ``app.py`` refreshes on page load."""
    gr.Markdown(
        "Judge labels come pre-filled; correct scores and failure points, then decide. "
        "**Keys:** `0`–`5` set the highlighted score (↑/↓ choose the perspective), "
        "`Enter` accepts (recorded as fixed when you changed something), `←`/`→` move, "
        "`r` rejects, `s` skips, `u` undoes your last decision (the item opens again)."
    )
    with gr.Row():
        status = gr.Dropdown(
            list(STATUS_FILTERS), value="to review", label="Status", elem_id="review-f-status"
        )
        choices = ctx.queue.filter_choices()  # refreshed on every page load
        category = gr.Dropdown([ANY, *choices["category"]], value=ANY, label="Category",
                               allow_custom_value=True, elem_id="review-f-category")  # fmt: skip
        judge = gr.Dropdown([ANY, *choices["judge"]], value=ANY, label="Judge",
                            allow_custom_value=True, elem_id="review-f-judge")  # fmt: skip
        perspective = gr.Dropdown([ANY, *PERSPECTIVES], value=ANY, label="Perspective")
        lo = gr.Number(0, label="Score ≥", minimum=0, maximum=5, step=0.1)
        hi = gr.Number(5, label="Score ≤", minimum=0, maximum=5, step=0.1)
        load = gr.Button("Load queue", variant="primary", elem_id="review-load")
    header = gr.Markdown(elem_id="review-header")
    with gr.Row():
        shown = dict(interactive=False, format="png", height=280, elem_classes=["mrc-pixels"])
        original = gr.Image(label="Original", type="filepath", elem_id="review-original", **shown)
        edited = gr.Image(label="Edited", type="filepath", elem_id="review-edited", **shown)
        diff = gr.Image(label="Difference ×3", type="filepath", elem_id="review-diff", **shown)
    annotations = gr.Dataframe(
        headers=ANNOTATION_COLUMNS, label="Judge and human annotations", interactive=False
    )
    scores, texts = [], []
    for p in PERSPECTIVES:
        with gr.Row(elem_id=f"review-row-{p}", elem_classes=["mrc-hotkey-row"]):
            # step 0.1: judge scores such as 2.6 (and the oracle's) sit exactly on the slider
            scores.append(gr.Slider(0, 5, value=5, step=0.1, label=TITLES[p], scale=1,
                                    elem_id=f"review-score-{p}"))  # fmt: skip
            texts.append(gr.Textbox(label=f"{TITLES[p]}: failure points", scale=2, lines=1,
                                    elem_id=f"review-text-{p}"))  # fmt: skip
    note = gr.Textbox(label="Note (optional)", lines=1, elem_id="review-note")
    with gr.Row():
        back = gr.Button("← Previous", elem_id="review-back")
        # One button: it saves the values on screen; the store records "accepted" when they
        # equal the loaded label and "fixed" when you changed something. ``fix`` is hidden:
        # it only keeps the older ``/review_fix`` endpoint (the same decision) for API users.
        accept = gr.Button("Accept (with your changes)", variant="primary",
                           elem_id="review-accept")  # fmt: skip
        fix = gr.Button("Fix & Accept", visible=False, elem_id="review-fix")
        reject = gr.Button("Reject", variant="stop", elem_id="review-reject")
        skip = gr.Button("Skip", elem_id="review-skip")
        undo = gr.Button("↶ Undo last decision", elem_id="review-undo")
        forward = gr.Button("Next →", elem_id="review-forward")
    with gr.Group(visible=False, elem_id="review-conflict") as conflict_box:
        conflict_md = gr.Markdown(elem_id="review-conflict-table")
        with gr.Row():
            apply_mine = gr.Button("Apply mine on top", variant="primary",
                                   elem_id="review-apply-mine")  # fmt: skip
            take_theirs = gr.Button("Take theirs", elem_id="review-take-theirs")
    history = gr.Dataframe(
        headers=HISTORY_COLUMNS, label="History (newest first)", interactive=False
    )
    with gr.Accordion("My recent decisions (select one to open it)", open=False):
        recent = gr.Dataframe(headers=RECENT_COLUMNS, interactive=False, elem_id="review-recent")
        recent_refresh = gr.Button(
            "Refresh my decisions", size="sm", elem_id="review-recent-refresh"
        )
    with gr.Accordion("All items (select one to open it)", open=False):
        table = gr.Dataframe(headers=OVERVIEW_COLUMNS, interactive=False, elem_id="review-table")
        table_refresh = gr.Button("Show the queue", size="sm", elem_id="review-table-refresh")
    with gr.Accordion("Open a triplet by id", open=False):
        with gr.Row():
            open_id = gr.Textbox(label="Triplet id", scale=3)
            open_btn = gr.Button("Open", scale=1)
    with gr.Accordion("Progress and export", open=False):
        progress_md = gr.Markdown()
        progress_df = gr.Dataframe(
            headers=PROGRESS_COLUMNS, label="Per annotator", interactive=False
        )
        refresh = gr.Button("Refresh progress")
        include = gr.Checkbox(False, label="Include unreviewed judge labels in the export")
        export = gr.Button("Export labels (CSV, JSON, RewardEdit-20K JSON)")
        files = gr.File(label="Exported labels", file_count="multiple", interactive=False)

    state = gr.State(None)
    notice = notice_box("review-notice")  # a refusal, shown as a toast
    # the next item's images, loaded in the background
    upcoming = prefetch_box("review-prefetch", ["review-original", "review-edited", "review-diff"])
    filters = [status, category, judge, perspective, lo, hi]
    item_outputs = [
        state,
        header,
        original,
        edited,
        diff,
        annotations,
        *scores,
        *texts,
        note,
        history,
        conflict_box,
        conflict_md,
        upcoming,
    ]
    if len(item_outputs) != ITEM_OUTPUTS:  # the handlers' refusals skip exactly that many
        raise RuntimeError(f"the Review tab shows {len(item_outputs)} outputs per item; "
                           f"review_handlers.ITEM_OUTPUTS says {ITEM_OUTPUTS}")  # fmt: skip
    # The steps that show an item run with queue=False: the page sends one POST to
    # /gradio_api/run/<api> instead of joining the queue and waiting on the session's event
    # stream (a third of a step's time in docs/studio.md's browser benchmark). On that path
    # Gradio 6's page would show a raised gr.Error as an "Error" badge over every output and
    # no toast, so these handlers answer a refusal with every output untouched and the
    # message in `notice`, a toast (studio/notice.py; tests/test_studio_browser.py checks it).
    # show_progress="hidden": no progress animation over the item for a step of milliseconds.
    step = dict(show_progress="hidden", queue=False)
    shows_item = [*item_outputs, notice]
    load.click(bind(review_next, ctx), [state, *filters], shows_item, api_name="review_next",
               **step)  # fmt: skip
    forward.click(bind(review_forward, ctx), [state, *filters], shows_item,
                  api_name="review_forward", **step)  # fmt: skip
    back.click(bind(review_back, ctx), [state, *filters], shows_item, api_name="review_back",
               **step)  # fmt: skip
    open_btn.click(bind(review_open, ctx), [state, open_id], shows_item,
                   api_name="review_open", **step)  # fmt: skip
    form = [state, *scores, *texts, note, *filters]
    for button, decision in ((accept, "accept"), (fix, "fix"), (reject, "reject"), (skip, "skip")):
        button.click(
            bind(decision_handler(decision), ctx),
            form,
            shows_item,
            api_name=f"review_{decision}",
            **step,
        )
    apply_mine.click(bind(review_apply_mine, ctx), form, shows_item,
                     api_name="review_apply_mine", **step)  # fmt: skip
    take_theirs.click(bind(review_take_theirs, ctx), [state], shows_item,
                      api_name="review_take_theirs", **step)  # fmt: skip
    undo.click(bind(review_undo, ctx), [state], [*item_outputs, recent, notice],
               api_name="review_undo", **step)  # fmt: skip
    quiet = dict(show_progress="hidden")  # queued: a refusal is a gr.Error, shown as a toast
    recent_refresh.click(bind(review_recent, ctx), None, [recent], api_name="review_recent",
                         **quiet)  # fmt: skip
    table_refresh.click(bind(review_table, ctx), filters, [table], api_name="review_table",
                        **quiet)  # fmt: skip
    for picked in (recent, table):
        picked.select(bind(review_pick, ctx), [state], shows_item, api_visibility="private",
                      **step)  # fmt: skip
    refresh.click(bind(review_progress, ctx), None, [progress_md, progress_df],
                  api_name="review_progress", **quiet)  # fmt: skip
    export.click(bind(review_export, ctx), [include], [files], api_name="review_export")
    return {"category": category, "judge": judge}
