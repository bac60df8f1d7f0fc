"""The Review tab's event handlers: open, move, decide, undo, resolve conflicts, progress, export.

Each handler takes the :class:`~studio.context.StudioContext` first and is bound to it by
:func:`studio.review_tab.build_review_tab`, which only lays the tab out and wires these. The
item on screen lives in a server-side ``gr.State`` (its id and the label version it was loaded
at); the browser never sends a version or a user name.

The handlers that show an item do not raise for a refusal (no access, a locked item, no item
open, a bad filter): :func:`studio.notice.with_notice` answers with every output untouched and
the message in one more output, shown in the page as a toast (those events run with
``queue=False``, where Gradio's page cannot show a raised ``gr.Error`` as one). The others
(tables, progress, export) stay queued and raise ``gr.Error`` through ``user_errors``.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
import pandas as pd

from core.review_doubt import ReviewFilter
from core.review_queue import ReviewItem
from core.rewards import PERSPECTIVES, TITLES, Rewards
from core.store import ConflictError, LabelRecord, LockedError
from studio.auth import CAN_REVIEW
from studio.context import StudioContext, user_errors, username
from studio.media import file_url_tail
from studio.notice import with_notice

ANY = "(any)"
ANNOTATION_COLUMNS = ["source", "prompt", *PERSPECTIVES, "failure points"]
HISTORY_COLUMNS = ["version", "who", "when", "action", "before", "after", "note"]
NO_CONFLICT = (gr.update(visible=False), "")  # the conflict panel's outputs when there is none
# An item's outputs: state, header, three images, annotations, scores, failure points, note,
# history, the conflict panel (box, table) and the next item's images to prefetch. The events
# that show an item run with queue=False and have one more output,
# studio.notice.notice_box, for a refusal.
ITEM_OUTPUTS = 6 + 2 * len(PERSPECTIVES) + 5
# Items whose images the page loads ahead: the next one, and the ones after it that other
# annotators may take first (docs/studio.md, "Prefetching the next items").
PREFETCH_ITEMS = 6
PROGRESS_COLUMNS = ["annotator", "saved", "accepted", "fixed", "rejected", "skipped",
                    "median_seconds_per_item", "last_active"]  # fmt: skip


def _filter(status, category, judge, perspective, score_min, score_max) -> ReviewFilter:
    try:
        return ReviewFilter(
            status=status or "to review",
            category=None if category in (None, ANY) else category,
            judge=None if judge in (None, ANY) else judge,
            perspective=None if perspective in (None, ANY) else perspective,
            score_min=float(score_min if score_min is not None else 0),
            score_max=float(score_max if score_max is not None else 5),
        )
    except ValueError as e:
        raise gr.Error(str(e), print_exception=False) from e


def _scores_text(snapshot: dict[str, Any] | None) -> str:
    if not snapshot:
        return ""
    r = snapshot["rewards"]
    scores = "/".join(f"{r[p]['score']:g}" for p in PERSPECTIVES)
    texts = "; ".join(f"{p}: {r[p]['text']}" for p in PERSPECTIVES if r[p]["text"])
    return f"{snapshot['status']} {scores}" + (f" ({texts})" if texts else "")


def _annotation_table(item: ReviewItem) -> pd.DataFrame:
    rows = []
    for a in item.annotations:
        source = a["user"] if a["kind"] == "human" else f"{a['kind']}: {a['judge_model']}"
        if a["status"] != "ok":
            rows.append(
                [source, a["prompt_version"] or "", "", "", "", f"failed: {a['failure_reason']}"]
            )
            continue
        r = a["rewards"]
        texts = "; ".join(f"{p}: {r[p].text}" for p in PERSPECTIVES if r[p].text)
        rows.append([source, a["prompt_version"] or "", *(r[p].score for p in PERSPECTIVES), texts])
    return pd.DataFrame(rows, columns=ANNOTATION_COLUMNS)


def _history_table(ctx: StudioContext, triplet_id: str) -> pd.DataFrame:
    rows = [
        [
            h["version"],
            h["user"],
            h["at"][:19].replace("T", " "),
            h["action"],
            _scores_text(h["before"]),
            _scores_text(h["after"]),
            h["note"] or "",
        ]  # fmt: skip
        for h in reversed(ctx.store.history(triplet_id))
    ]
    return pd.DataFrame(rows, columns=HISTORY_COLUMNS)


def _empty(message: str) -> tuple:
    blank_scores = [gr.update(value=5) for _ in PERSPECTIVES]
    blank_texts = [gr.update(value="") for _ in PERSPECTIVES]
    return (
        None, message, None, None, None,
        pd.DataFrame(columns=ANNOTATION_COLUMNS), *blank_scores, *blank_texts, "",
        pd.DataFrame(columns=HISTORY_COLUMNS), *NO_CONFLICT, [],
    )  # fmt: skip


def _header(triplet: dict[str, Any], label: LabelRecord | None, doubt: float) -> str:
    """Instruction, then "`<id>` · category · split · status (version) · doubt"."""
    status = label.status if label else "unlabeled (no judge label yet)"
    version = f"version {label.version}, last by {label.updated_by}" if label else "new label"
    return (
        f"### {triplet['instruction']}\n"
        f"`{triplet['id']}` · category **{triplet['category'] or '–'}** · split "
        f"{triplet['split']} · status **{status}** ({version}) · doubt {doubt:.1f}"
    )


def _show(ctx: StudioContext, item: ReviewItem | None, message: str = "",
          upcoming: list[str] | None = None) -> tuple:  # fmt: skip
    """The ``ITEM_OUTPUTS`` outputs for one item, in the Review tab's order (state first);
    ``upcoming``: the next item's images for the page to prefetch (:func:`_upcoming`)."""
    if item is None:
        return _empty(message or "Nothing left to review with these filters.")
    t = item.triplet
    original_path = ctx.store.image_path(t["original"])
    edited_path = ctx.store.image_path(t["edited"]) if t["edited"] else original_path
    label = item.label
    header = _header(t, label, item.doubt)
    prefill = item.prefill
    scores = [prefill[p].score if prefill else 5.0 for p in PERSPECTIVES]
    texts = [prefill[p].text if prefill else "" for p in PERSPECTIVES]
    state = {"triplet_id": t["id"], "version": item.version, "held_since": item.held_since}
    return (
        state,
        f"{message}\n\n{header}" if message else header,
        str(original_path),
        str(edited_path) if t["edited"] else None,
        ctx.differences.path(original_path, edited_path),
        _annotation_table(item),
        *scores,
        *texts,
        (label.note or "") if label else "",
        _history_table(ctx, t["id"]),
        *NO_CONFLICT,
        upcoming or [],
    )


def _upcoming(
    ctx: StudioContext, user: str, flt: ReviewFilter, item: ReviewItem | None
) -> list[str]:
    """The images of the items that *Next →* or a decision may show after ``item``: the
    queue's next ``PREFETCH_ITEMS`` free items for ``user`` (none taken), as the tails of
    their URLs, for the page to load in the background while the annotator works
    (studio.media.prefetch_box). More than one, since other annotators take items from the
    same queue meanwhile. Their difference views are drawn now (each once: they are cached),
    so the step that shows one finds it ready. [] at the end of the queue."""
    if item is None:
        return []
    files: list[str] = []
    for tid in ctx.queue.upcoming(user, flt, item.triplet_id, PREFETCH_ITEMS):
        t = ctx.store.get_triplet(tid)
        if not t["edited"]:
            continue
        original = ctx.store.image_path(t["original"])
        edited = ctx.store.image_path(t["edited"])
        diff = ctx.differences.path(original, edited)
        files += [file_url_tail(p) for p in (original, edited, diff)]
    return files


def _release_unless_shown(ctx: StudioContext, user: str, state, item: ReviewItem | None) -> None:
    """Give back the item that was on screen, once its successor has been taken (so a refused
    open or an error never costs the annotator the item they hold)."""
    if state and (item is None or item.triplet_id != state["triplet_id"]):
        ctx.queue.release(user, state["triplet_id"])


def _user(ctx: StudioContext, request: gr.Request) -> str:
    return ctx.access.user(username(request), CAN_REVIEW, "review labels").name


@with_notice(ITEM_OUTPUTS)
def review_next(ctx: StudioContext, state, status, category, judge, perspective, lo, hi,
                request: gr.Request):  # fmt: skip
    """Apply the filters and take the most doubtful free item."""
    user = _user(ctx, request)
    flt = _filter(status, category, judge, perspective, lo, hi)
    item = ctx.queue.next_item(user, flt)
    _release_unless_shown(ctx, user, state, item)
    return _show(ctx, item, upcoming=_upcoming(ctx, user, flt, item))


@with_notice(ITEM_OUTPUTS)
def review_forward(ctx: StudioContext, state, status, category, judge, perspective, lo, hi,
                   request: gr.Request):  # fmt: skip
    """Leave the current item undecided and move to the next one in the queue order."""
    user = _user(ctx, request)
    flt = _filter(status, category, judge, perspective, lo, hi)
    after = state["triplet_id"] if state else None
    item = ctx.queue.next_item(user, flt, after=after)
    _release_unless_shown(ctx, user, state, item)
    return _show(ctx, item, upcoming=_upcoming(ctx, user, flt, item))


@with_notice(ITEM_OUTPUTS)
def review_back(ctx: StudioContext, state, status, category, judge, perspective, lo, hi,
                request: gr.Request):  # fmt: skip
    """Move to the previous item in the queue order (the current one stays undecided)."""
    user = _user(ctx, request)
    flt = _filter(status, category, judge, perspective, lo, hi)
    if not state:
        return _show(ctx, ctx.queue.next_item(user, flt))
    item = ctx.queue.previous_item(user, flt, state["triplet_id"])
    if item is None:  # stay on the item (and keep timing it from when it was first shown)
        item = ctx.queue.open_item(user, state["triplet_id"])
        item.held_since = state["held_since"]
        return _show(ctx, item, "This is the first item.")
    _release_unless_shown(ctx, user, state, item)
    return _show(ctx, item)


@with_notice(ITEM_OUTPUTS)
def review_open(ctx: StudioContext, state, triplet_id: str, request: gr.Request):
    """Open one triplet by id (e.g. to look at its history), if nobody else holds it."""
    user = _user(ctx, request)
    triplet_id = (triplet_id or "").strip()
    if not triplet_id:
        raise gr.Error("Enter a triplet id to open.", print_exception=False)
    item = ctx.queue.open_item(user, triplet_id)  # a refusal leaves the current item held
    _release_unless_shown(ctx, user, state, item)
    return _show(ctx, item)


def _rewards_cell(rewards: Any, p: str) -> str:
    r = rewards[p]
    text = r.text.replace("|", "/") if r.text else "no failure points"
    return f"**{r.score:g}** · {text}"


def _conflict_table(current: LabelRecord | None, mine: Rewards, decision: str, note) -> str:
    """Theirs (the label as it is now) beside mine (the form's values), per perspective."""
    if current is None:
        theirs_head, theirs = "Theirs: no label", None
    else:
        when = current.updated_at[:19].replace("T", " ")
        theirs_head = f"Theirs: version {current.version}, {current.updated_by}, {when}"
        theirs = current.rewards
    rows = [f"| | {theirs_head} | Mine (in the form) |", "|---|---|---|"]
    for p in PERSPECTIVES:
        rows.append(f"| {TITLES[p]} | {_rewards_cell(theirs, p) if theirs else '–'} | "
                    f"{_rewards_cell(mine, p)} |")  # fmt: skip
    rows.append(f"| Decision | {current.status if current else '–'} | {decision} |")
    theirs_note = (current.note or "") if current else ""
    rows.append(f"| Note | {theirs_note.replace('|', '/')} | {(note or '').replace('|', '/')} |")
    return "\n".join(rows)


def _save(ctx: StudioContext, user: str, state, version: int, decision: str, scores, texts,
          note, flt: ReviewFilter, saved: str = "Saved") -> tuple:  # fmt: skip
    """Save the form over ``version``; on a conflict, keep the form and show theirs and mine."""
    tid = state["triplet_id"]
    try:
        record = ctx.queue.save(
            user, tid, version, decision, scores, texts, note, held_since=state["held_since"]
        )
    except (ConflictError, LockedError) as e:
        current = ctx.store.get_label(tid)
        mine = Rewards.from_scores([float(x) for x in scores], [t or "" for t in texts])
        message = (
            f"**Not saved.** {e} Your values are still in the form. Compare them with the "
            "current label below: **Apply mine on top** saves yours over it, **Take theirs** "
            "loads it into the form."
        )
        header = _header(ctx.store.get_triplet(tid), current, ctx.queue.doubt(tid))
        conflict = {"version": current.version if current else 0, "decision": decision}
        return (
            {**state, "conflict": conflict}, f"{message}\n\n{header}",
            *(gr.skip() for _ in range(4 + 2 * len(PERSPECTIVES) + 1)),
            _history_table(ctx, tid),
            gr.update(visible=True), _conflict_table(current, mine, decision, note), [],
        )  # fmt: skip
    done = f"{saved} `{tid}` as **{record.status}** (version {record.version})."
    item = ctx.queue.next_item(user, flt, after=tid)
    return _show(ctx, item, done, _upcoming(ctx, user, flt, item))


def _decide(ctx: StudioContext, decision: str, state, s_f, s_p, s_q, t_f, t_p, t_q, note,
            status, category, judge, perspective, lo, hi, request: gr.Request):  # fmt: skip
    user = _user(ctx, request)
    if not state:
        raise gr.Error("No item is open; press “Load queue” first.", print_exception=False)
    flt = _filter(status, category, judge, perspective, lo, hi)
    return _save(ctx, user, state, state["version"], decision, [s_f, s_p, s_q],
                 [t_f, t_p, t_q], note, flt)  # fmt: skip


@with_notice(ITEM_OUTPUTS)
def review_apply_mine(ctx: StudioContext, state, s_f, s_p, s_q, t_f, t_p, t_q, note,
                      status, category, judge, perspective, lo, hi, request: gr.Request):  # fmt: skip
    """After a conflict: save the form's values (and decision) on top of the current version."""
    user = _user(ctx, request)
    if not state or "conflict" not in state:
        raise gr.Error("There is no conflict to resolve.", print_exception=False)
    flt = _filter(status, category, judge, perspective, lo, hi)
    conflict = state["conflict"]
    return _save(ctx, user, state, conflict["version"], conflict["decision"], [s_f, s_p, s_q],
                 [t_f, t_p, t_q], note, flt, saved="Saved your values over theirs:")  # fmt: skip


@with_notice(ITEM_OUTPUTS)
def review_take_theirs(ctx: StudioContext, state, request: gr.Request):
    """After a conflict: load the current label (theirs) into the form, dropping mine."""
    user = _user(ctx, request)
    if not state:
        raise gr.Error("No item is open; press “Load queue” first.", print_exception=False)
    item = ctx.queue.open_item(user, state["triplet_id"])
    return _show(ctx, item, "Loaded the current version; your values were dropped.")


def decision_handler(decision: str):
    @with_notice(ITEM_OUTPUTS)
    def handler(ctx: StudioContext, state, s_f, s_p, s_q, t_f, t_p, t_q, note,
                status, category, judge, perspective, lo, hi, request: gr.Request):  # fmt: skip
        return _decide(ctx, decision, state, s_f, s_p, s_q, t_f, t_p, t_q, note,
                       status, category, judge, perspective, lo, hi, request)  # fmt: skip

    handler.__name__ = f"review_{decision}"
    handler.__doc__ = (
        f"Save the displayed label with the decision “{decision}”, then load the next item."
    )
    return handler


RECENT_COLUMNS = ["id", "when", "decision", *PERSPECTIVES, "undoable"]
OVERVIEW_COLUMNS = ["id", "instruction", "status", "doubt", "held by"]


def _recent_table(ctx: StudioContext, user: str) -> pd.DataFrame:
    rows = [
        [d["triplet_id"], d["at"][:19].replace("T", " "), d["status"],
         *(d["rewards"][p]["score"] for p in PERSPECTIVES), "yes" if d["current"] else "no"]
        for d in ctx.store.recent_decisions(user)
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=RECENT_COLUMNS)


@with_notice(ITEM_OUTPUTS + 1)  # and the recent decisions
def review_undo(ctx: StudioContext, state, request: gr.Request):
    """Undo your last decision: the label goes back to what it was, and the item is open
    again for you (the item on screen is given back)."""
    user = _user(ctx, request)
    item, record = ctx.queue.undo_last(user)
    _release_unless_shown(ctx, user, state, item)
    message = (
        f"Undid your last decision on `{item.triplet_id}`: it is back to **{record.status}** "
        f"(now version {record.version}) and open again."
    )
    return (*_show(ctx, item, message), _recent_table(ctx, user))


@user_errors
def review_recent(ctx: StudioContext, request: gr.Request):
    """Your latest decisions, newest first (select one to open it)."""
    return _recent_table(ctx, _user(ctx, request))


@user_errors
def review_table(ctx: StudioContext, status, category, judge, perspective, lo, hi,
                 request: gr.Request):  # fmt: skip
    """The queue as a table (first 200 items, most doubtful first); select one to open it."""
    _user(ctx, request)
    flt = _filter(status, category, judge, perspective, lo, hi)
    return pd.DataFrame(ctx.queue.overview(flt), columns=OVERVIEW_COLUMNS)


@with_notice(ITEM_OUTPUTS)
def review_pick(ctx: StudioContext, state, evt: gr.SelectData, request: gr.Request):
    """Open the item of the selected table row (its first cell is the triplet id)."""
    row = evt.row_value or []
    if not row or not row[0]:
        raise gr.Error("That row names no item.", print_exception=False)
    return review_open.__wrapped__(ctx, state, str(row[0]), request)


@user_errors
def review_progress(ctx: StudioContext, request: gr.Request):
    """Counts per review status and per-annotator progress with time per item."""
    _user(ctx, request)
    counts = ctx.queue.counts()
    total = sum(counts.values())
    done = counts["accepted"] + counts["fixed"] + counts["rejected"]
    summary = f"**{done} of {total}** triplets reviewed · " + " · ".join(
        f"{k} {v}" for k, v in counts.items()
    )
    return summary, pd.DataFrame(ctx.queue.progress(), columns=PROGRESS_COLUMNS)


@user_errors
def review_export(ctx: StudioContext, include_unreviewed: bool, request: gr.Request):
    """Write the labels (human corrections win) as CSV, JSON and RewardEdit-20K JSON."""
    _user(ctx, request)
    folder = ctx.export_folder("labels")
    return [str(p) for p in ctx.queue.export(folder, include_unreviewed=include_unreviewed)]


def filter_choices(ctx: StudioContext) -> tuple:
    choices = ctx.queue.filter_choices()
    return (
        gr.update(choices=[ANY, *choices["category"]]),
        gr.update(choices=[ANY, *choices["judge"]]),
    )
