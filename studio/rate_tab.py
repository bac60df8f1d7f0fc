"""Tab 3, Human evaluation: blind side-by-side rating and (for admins) the results.

Events (``api_name``): ``rate_next``, ``rate_submit``, ``rate_skip`` for raters;
``rate_configure``, ``rate_add_gold``, ``results``, ``results_exclude``, ``results_include``,
``results_export`` for admins.

Nothing a rater receives names a system: the images come from
:class:`~studio.media.NeutralImages`, the page text is the instruction and the progress, and
the current assignment stays in a server-side ``gr.State``. The system choices and the results
(which do name systems) are only filled in for admins, after login, never in the page config.
"""

from __future__ import annotations

import time
from typing import Any

import gradio as gr

from core.rewards import PERSPECTIVES, TITLES
from studio.auth import CAN_RATE, CAN_SEE_RESULTS
from studio.context import StudioContext, bind, user_errors, username
from studio.gold import add_shapes_gold
from studio.rating import SIDE_PREFERENCES, BlindRating, Evaluation, results

SCORES = ["0", "1", "2", "3", "4", "5"]
RUBRIC = """
**How to rate.** Each image is an attempt to carry out the instruction on the input image.
Give each attempt a score from 0 (worst) to 5 (best) per perspective:

* **Instruction following**: was the instruction carried out, fully and on the right object?
* **Detail preserving**: is everything the instruction did *not* ask to change unchanged?
* **Generation quality**: is the image free of noise, blur, smears and other artifacts?

Then, optionally, say which image you prefer overall. The two images come from different
systems, shown in random order; judge each on its own merits.
**Keys:** `0`–`5` set the highlighted score and move on (↑/↓ choose), `l` / `r` / `t` / `x`
prefer left / right / tie / both bad, `Enter` submits, `→` skips.
"""


def _user(ctx: StudioContext, request: gr.Request) -> str:
    return ctx.access.user(username(request), CAN_RATE, "rate outputs").name


def _rating(ctx: StudioContext) -> BlindRating:
    if ctx.rating is None:
        raise gr.Error(
            "No evaluation is set up: an admin must choose two benchmark runs to compare.",
            print_exception=False,
        )
    return ctx.rating


def _progress_text(rating: BlindRating, rater: str) -> str:
    done, assigned = rating.counts(rater)
    cov = rating.coverage()
    return (
        f"You have rated **{done}** pair(s). Overall: {cov['ratings_done']} of "
        f"{cov['ratings_needed']} ratings ({cov['items_complete']} of {cov['items']} items "
        f"have all {rating.evaluation.overlap} raters)."
    )


def _pair_outputs(ctx: StudioContext, rater: str, message: str = "") -> tuple:
    rating = _rating(ctx)
    pair = rating.next(rater)
    resets = [None] * (2 * len(PERSPECTIVES)) + [None]
    progress = _progress_text(rating, rater)
    if pair is None:
        done = "Nothing left for you to rate. Thank you!"
        return (None, f"{message}\n\n{done}".strip(), None, None, None, *resets, progress)
    state = {"assignment": pair.assignment_id, "shown_at": time.monotonic()}
    text = f"### {pair.instruction}"
    if message:
        text = f"{message}\n\n{text}"
    return (state, text, pair.original, pair.left, pair.right, *resets, progress)


@user_errors
def rate_next(ctx: StudioContext, request: gr.Request):
    """The rater's current blind pair (allocated on demand)."""
    return _pair_outputs(ctx, _user(ctx, request))


def _score(value: Any, where: str) -> float:
    if value in (None, ""):
        raise gr.Error(f"Give a score for {where}.", print_exception=False)
    return float(value)


@user_errors
def rate_submit(ctx: StudioContext, state, l_f, l_p, l_q, r_f, r_p, r_q, preference,
                request: gr.Request):  # fmt: skip
    """Store the rating of the pair on screen, then show the next pair."""
    rater = _user(ctx, request)
    if not state:
        raise gr.Error("No pair is on screen; press “Start rating” first.", print_exception=False)
    left = {p: _score(v, f"the left image's {TITLES[p].lower()}")
            for p, v in zip(PERSPECTIVES, (l_f, l_p, l_q))}  # fmt: skip
    right = {p: _score(v, f"the right image's {TITLES[p].lower()}")
             for p, v in zip(PERSPECTIVES, (r_f, r_p, r_q))}  # fmt: skip
    seconds = max(0.0, time.monotonic() - state["shown_at"])
    rating = _rating(ctx)
    rating.submit(rater, state["assignment"], left, right, preference or None, seconds)
    message = "Rating saved."
    if rating.evaluation.reveal:  # arena style, a campaign setting (off by default)
        message += " " + rating.reveal(rater, state["assignment"])
    return _pair_outputs(ctx, rater, message)


@user_errors
def rate_skip(ctx: StudioContext, state, request: gr.Request):
    """Pass on the pair on screen (it goes to another rater)."""
    rater = _user(ctx, request)
    if state:
        _rating(ctx).skip(rater, state["assignment"])
    return _pair_outputs(ctx, rater, "Skipped.")


# -- admin: set-up and results ------------------------------------------------------------------


def _admin(ctx: StudioContext, request: gr.Request) -> str:
    return ctx.access.user(username(request), CAN_SEE_RESULTS, "see or configure results").name


@user_errors
def rate_configure(ctx: StudioContext, system_a: str, system_b: str, overlap, gold_percent,
                   reveal, request: gr.Request):  # fmt: skip
    """Compare two runs with ``overlap`` raters per item, ``gold_percent`` % gold pairs and,
    if ``reveal``, the systems named after each vote (admins only)."""
    _admin(ctx, request)
    if not system_a or not system_b:
        raise gr.Error("Choose two runs to compare.", print_exception=False)
    try:
        evaluation = Evaluation(system_a, system_b, overlap=int(overlap or 0),
                                gold_share=float(gold_percent or 0) / 100, reveal=bool(reveal))  # fmt: skip
        ctx.rating = BlindRating(ctx.store, evaluation, ctx.media)
    except ValueError as e:
        raise gr.Error(str(e), print_exception=False) from e
    gold = len(ctx.store.gold_items())
    return (
        f"Raters now compare **{system_a}** with **{system_b}** on "
        f"{len(ctx.rating.items)} items, {evaluation.overlap} raters per item; "
        f"{evaluation.gold_share:.0%} of the pairs are gold pairs ({gold} in the store); "
        f"systems {'are' if evaluation.reveal else 'are not'} revealed after each vote."
    )


@user_errors
def rate_add_gold(ctx: StudioContext, request: gr.Request):
    """Add a gold pair for every Shapes benchmark item (admins only)."""
    _admin(ctx, request)
    ids = add_shapes_gold(ctx.store)
    total = len(ctx.store.gold_items())
    if not ids:
        raise gr.Error(
            "No Shapes benchmark item with a target and its scene could be made into a gold "
            "pair; gold pairs can also be added with Store.add_gold_item.",
            print_exception=False,
        )
    return f"{len(ids)} Shapes gold pairs are ready ({total} gold pairs in the store)."


@user_errors
def show_results(ctx: StudioContext, request: gr.Request):
    """The results tables (admins only): Table 3, win rates, Bradley-Terry, alpha, judges."""
    _admin(ctx, request)
    report = results(ctx.store)
    if report.ratings.empty:
        note = "No team ratings yet." if len(report.raters) else "No ratings yet."
    else:
        n_raters = report.ratings["rater"].nunique()
        note = (
            f"{n_raters} rater{'s' if n_raters != 1 else ''}, "
            f"{len(report.ratings) // len(PERSPECTIVES)} rated outputs, "
            f"{len(report.preferences)} preferences. Means with 95% bootstrap intervals over items."
        )
    excluded = sorted(report.raters.loc[report.raters["excluded"], "rater"])
    local = int((report.raters["mode"] != "team").sum())
    if excluded:
        note += f" Excluded from these tables: {', '.join(excluded)}."
    if local:
        note += " Ratings made in local single-user mode are counted apart (below)."
    rounded = [t.round(3) for t in (report.win_rates, report.bradley_terry, report.alpha,
                                    report.judge_agreement, report.raters)]  # fmt: skip
    raters = gr.update(choices=list(report.raters["rater"]))
    return (note, report.scores_wide, *rounded, report.local_scores, raters)


def _set_exclusion(ctx: StudioContext, rater: str, reason: str, exclude: bool,
                   request: gr.Request):  # fmt: skip
    admin = _admin(ctx, request)
    if not rater:
        raise gr.Error("Choose a rater first.", print_exception=False)
    if exclude:
        ctx.store.exclude_rater(rater, by=admin, reason=reason or "")
    else:
        ctx.store.include_rater(rater, by=admin, reason=reason or "")
    return show_results(ctx, request)


@user_errors
def exclude_rater(ctx: StudioContext, rater: str, reason: str, request: gr.Request):
    """Leave a rater out of the result tables (admins only; reversible, logged)."""
    return _set_exclusion(ctx, rater, reason, True, request)


@user_errors
def include_rater(ctx: StudioContext, rater: str, reason: str, request: gr.Request):
    """Count an excluded rater in the result tables again (admins only)."""
    return _set_exclusion(ctx, rater, reason, False, request)


@user_errors
def export_results(ctx: StudioContext, request: gr.Request):
    """Every results table as CSV (admins only)."""
    _admin(ctx, request)
    return [str(p) for p in results(ctx.store).write_csv(ctx.export_folder("results"))]


def admin_setup(ctx: StudioContext, request: gr.Request) -> tuple:
    """On page load: fill the run choices and show the admin panels, for admins only."""
    is_admin = ctx.access.role_of(username(request)) in CAN_SEE_RESULTS
    if not is_admin:
        hidden = gr.update(visible=False)
        return hidden, hidden, gr.update(choices=[]), gr.update(choices=[]), 0, False
    runs = [r["name"] for r in ctx.store.list_runs()]
    ev = ctx.rating.evaluation if ctx.rating else None
    return (
        gr.update(visible=True),
        gr.update(visible=True),
        gr.update(choices=runs, value=ev.system_a if ev else None),
        gr.update(choices=runs, value=ev.system_b if ev else None),
        round(100 * ev.gold_share) if ev else 0,
        ev.reveal if ev else False,
    )


def build_rate_tab(ctx: StudioContext) -> list[Any]:
    """Build the tab; returns the outputs of :func:`admin_setup` (refreshed on page load)."""
    gr.Markdown(RUBRIC)
    start = gr.Button("Start rating", variant="primary", elem_id="rate-start")
    instruction = gr.Markdown(elem_id="rate-instruction")
    with gr.Row():
        shown = dict(type="filepath", interactive=False, format="png", height=260,
                     elem_classes=["mrc-pixels"])  # fmt: skip
        original = gr.Image(label="Input", **shown)
        left = gr.Image(label="Left", elem_id="rate-left-image", **shown)
        right = gr.Image(label="Right", elem_id="rate-right-image", **shown)
    radios = {}
    with gr.Row():
        for side in ("left", "right"):
            with gr.Column():
                for p in PERSPECTIVES:
                    radios[side, p] = gr.Radio(
                        SCORES, label=f"{side.capitalize()}: {TITLES[p]}",
                        elem_id=f"rate-{side}-{p}", elem_classes=["mrc-hotkey-row"],
                    )  # fmt: skip
    preference = gr.Radio(list(SIDE_PREFERENCES), label="Which do you prefer? (optional)",
                          elem_id="rate-preference")  # fmt: skip
    with gr.Row():
        submit = gr.Button("Submit", variant="primary", elem_id="rate-submit")
        skip = gr.Button("Skip", elem_id="rate-skip")
    progress = gr.Markdown(elem_id="rate-progress")

    with gr.Accordion("Evaluation set-up (admin)", open=False, visible=False) as setup:
        with gr.Row():
            # Choices are filled for admins on page load (never in the page config); the
            # server checks the names (an unknown run is refused with its name).
            run_a = gr.Dropdown([], label="System A (run)", allow_custom_value=True)
            run_b = gr.Dropdown([], label="System B (run)", allow_custom_value=True)
            overlap = gr.Number(3, label="Raters per item (k)", precision=0, minimum=1)
        with gr.Row():
            gold_percent = gr.Number(0, label="Gold pairs (% of pairs, known answers)",
                                     minimum=0, maximum=100, elem_id="rate-gold-percent")  # fmt: skip
            reveal = gr.Checkbox(False, label="Reveal the systems after each vote (arena style)",
                                 elem_id="rate-reveal")  # fmt: skip
        with gr.Row():
            configure = gr.Button("Use these systems", elem_id="rate-configure")
            add_gold = gr.Button("Add Shapes gold pairs", elem_id="rate-add-gold")
        setup_status = gr.Markdown()
    with gr.Accordion(
        "Results (admin)", open=False, visible=False, elem_id="results-box"
    ) as results_box:
        refresh = gr.Button("Refresh results", elem_id="results-refresh")
        note = gr.Markdown()
        scores = gr.Dataframe(label="Human scores (mean [95% CI])", interactive=False,
                              elem_id="results-scores")  # fmt: skip
        wins = gr.Dataframe(label="Win rates (ties and both-bad count half)", interactive=False)
        bt = gr.Dataframe(label="Bradley-Terry ranking (Elo scale, 95% CI)", interactive=False)
        alpha = gr.Dataframe(
            label="Krippendorff's alpha (interval) per perspective", interactive=False
        )
        agreement = gr.Dataframe(label="Judge vs. humans on the same outputs", interactive=False)
        raters = gr.Dataframe(
            label="Raters: agreement with gold answers and with the other raters",
            interactive=False, elem_id="results-raters",
        )  # fmt: skip
        with gr.Row():
            rater = gr.Dropdown([], label="Rater", elem_id="results-rater", allow_custom_value=True)
            reason = gr.Textbox(label="Reason (logged)", elem_id="results-reason")
            exclude = gr.Button("Exclude from the tables", elem_id="results-exclude")
            include = gr.Button("Include again", elem_id="results-include")
        local = gr.Dataframe(
            label="Local single-user mode ratings (not in the tables above)",
            interactive=False, elem_id="results-local",
        )  # fmt: skip
        export = gr.Button("Export results as CSV")
        files = gr.File(label="Results CSV", file_count="multiple", interactive=False)

    state = gr.State(None)
    side_radios = [radios["left", p] for p in PERSPECTIVES] + [
        radios["right", p] for p in PERSPECTIVES
    ]
    outputs = [state, instruction, original, left, right, *side_radios, preference, progress]
    # A refusal (a missing score, no pair) is a toast that leaves the pair on screen: no
    # "Error" badge over each output (show_progress="hidden"; these events are quick).
    quiet = dict(show_progress="hidden")
    start.click(bind(rate_next, ctx), None, outputs, api_name="rate_next", **quiet)
    submit.click(bind(rate_submit, ctx), [state, *side_radios, preference], outputs,
                 api_name="rate_submit", **quiet)  # fmt: skip
    skip.click(bind(rate_skip, ctx), [state], outputs, api_name="rate_skip", **quiet)
    configure.click(bind(rate_configure, ctx), [run_a, run_b, overlap, gold_percent, reveal],
                    [setup_status], api_name="rate_configure", **quiet)  # fmt: skip
    add_gold.click(bind(rate_add_gold, ctx), None, [setup_status], api_name="rate_add_gold",
                   show_progress="minimal")  # fmt: skip
    tables = [note, scores, wins, bt, alpha, agreement, raters, local, rater]
    refresh.click(bind(show_results, ctx), None, tables, api_name="results",
                  show_progress="minimal")  # fmt: skip
    exclude.click(bind(exclude_rater, ctx), [rater, reason], tables, api_name="results_exclude",
                  show_progress="minimal")  # fmt: skip
    include.click(bind(include_rater, ctx), [rater, reason], tables, api_name="results_include",
                  show_progress="minimal")  # fmt: skip
    export.click(bind(export_results, ctx), None, [files], api_name="results_export")
    return [setup, results_box, run_a, run_b, gold_percent, reveal]
