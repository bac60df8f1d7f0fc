"""Tab 1, Edit: run the model with reward sliders; compare, sweep, send to review.

Events (``api_name``): ``edit``, ``sweep``, ``best_of``, ``randomize_seed``, ``send_to_review``.
The model runs under ``concurrency_id="model"`` with a limit of one: Gradio's queue makes
other users wait their turn instead of running two generations on one GPU at once.
"""

from __future__ import annotations

import base64
import binascii
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from core.images import load_image
from core.rewards import PERSPECTIVES, TITLES, Rewards
from studio.auth import CAN_EDIT, CAN_REVIEW
from studio.context import StudioContext, bind, user_errors, username
from studio.model import EditSettings

MAX_SEED = 2**31 - 1


def _settings(
    scores: list[float], texts: list[str], steps, text_cfg, image_cfg, reward_cfg, seed
) -> EditSettings:
    if seed is None or int(seed) < 0:
        raise gr.Error("The seed must be a whole number of 0 or more.", print_exception=False)
    return EditSettings(
        rewards=Rewards.from_scores([float(s) for s in scores], [(t or "").strip() for t in texts]),
        steps=int(steps),
        guidance_scale=float(text_cfg),
        image_guidance_scale=float(image_cfg),
        reward_guidance_scale=float(reward_cfg),
        seed=int(seed),
    )


def _raw_upload(payload: Any) -> str | bytes | None:
    """An uploaded image as the file's path (the bytes, for a pasted data URL), undecoded."""
    if payload is None:
        return None
    if payload.url and payload.url.startswith("data:"):
        try:
            return base64.b64decode(payload.url.partition(",")[2], validate=True)
        except (binascii.Error, ValueError) as e:
            raise gr.Error(
                f"The pasted image is not valid base64 data ({e}).", print_exception=False
            ) from e
    if payload.path is None:
        raise gr.Error("The upload arrived without a file; upload it again.")
    return payload.path


def uploaded_image(**kwargs: Any) -> gr.Image:
    """An image input that hands the handler the uploaded file itself, undecoded.

    ``gr.Image`` decodes an upload with PIL and converts it to its ``image_mode`` before any
    handler runs: a 16-bit greyscale PNG reached the model 93% white, and a truncated, empty or
    SVG-named file failed inside Gradio with "Could not preprocess input component". Here the
    handler gets the file's path and the project's loader, :func:`core.images.load_image`,
    decodes it exactly or says clearly what is wrong. (The override is per instance: a
    subclass of a Gradio component makes Gradio write a ``.pyi`` stub next to this module.)
    """
    image = gr.Image(type="filepath", **kwargs)
    image.preprocess = _raw_upload  # Gradio calls block.preprocess(payload) on the instance
    return image


def _input_image(image: Any) -> Image.Image:
    """The uploaded file (or example) as RGB through the project's loader; clear errors."""
    if image is None:
        raise gr.Error("Upload an image (or pick an example) to edit.", print_exception=False)
    return load_image(image, name="the uploaded image")


def _check(image: Any, instruction: str) -> str:
    if image is None:
        raise gr.Error("Upload an image (or pick an example) to edit.", print_exception=False)
    instruction = (instruction or "").strip()
    if not instruction:
        raise gr.Error("Write an instruction, e.g. “make the circle blue”.", print_exception=False)
    return instruction


def _prepare(ctx, request, image, instruction, scores, texts, *rest):
    """The checks and settings shared by an edit and a reward sweep: (the input image,
    instruction, settings)."""
    ctx.access.user(username(request), CAN_EDIT, "run the model")
    instruction = _check(image, instruction)
    return _input_image(image), instruction, _settings(scores, texts, *rest)


@user_errors
def check_edit(
    ctx: StudioContext,
    image, instruction, s_follow, s_preserve, s_quality, t_follow, t_preserve, t_quality,
    steps, text_cfg, image_cfg, reward_cfg, seed,
    request: gr.Request,
) -> None:  # fmt: skip
    """The checks of an edit or a sweep, run first without a progress display: a refusal is
    a toast and leaves the last result on screen (the edit itself repeats the checks)."""
    _prepare(
        ctx, request, image, instruction, [s_follow, s_preserve, s_quality],
        [t_follow, t_preserve, t_quality], steps, text_cfg, image_cfg, reward_cfg, seed,
    )  # fmt: skip


@user_errors
def run_edit(
    ctx: StudioContext,
    image, instruction, s_follow, s_preserve, s_quality, t_follow, t_preserve, t_quality,
    steps, text_cfg, image_cfg, reward_cfg, seed,
    request: gr.Request, progress=gr.Progress(),
):  # fmt: skip
    """Edit the image; returns the before/after pair, a status line and the edit (state)."""
    image, instruction, settings = _prepare(
        ctx, request, image, instruction, [s_follow, s_preserve, s_quality],
        [t_follow, t_preserve, t_quality], steps, text_cfg, image_cfg, reward_cfg, seed,
    )  # fmt: skip
    progress((0, settings.steps), desc="editing")
    before, after = ctx.model.edit(
        image, instruction, settings,
        progress=lambda i, n: progress((i, n), desc="editing", unit="steps"),
    )  # fmt: skip
    last = {"original": before, "edited": after, "instruction": instruction, "settings": settings}
    scores = ", ".join(f"{p} {s:g}" for p, s in zip(PERSPECTIVES, settings.rewards.scores))
    status = f"Edited with rewards ({scores}), seed {settings.seed}, {settings.steps} steps."
    if before.size != image.size:  # the model worked on a smaller copy: compare at full size
        status += (
            f" The model works at {ctx.model.resolution} px: your {image.width}×{image.height} "
            f"input was edited at {before.width}×{before.height}; the comparison shows your "
            "original beside the result enlarged to its size."
        )
        after = after.resize(image.size, Image.Resampling.LANCZOS)
        before = image
    return (before, after), status, last


@user_errors
def run_sweep(
    ctx: StudioContext,
    image, instruction, s_follow, s_preserve, s_quality, t_follow, t_preserve, t_quality,
    steps, text_cfg, image_cfg, reward_cfg, seed,
    request: gr.Request, progress=gr.Progress(),
):  # fmt: skip
    """A grid: each row varies one perspective's reward (0, 2.5, 5), the others fixed."""
    image, instruction, settings = _prepare(
        ctx, request, image, instruction, [s_follow, s_preserve, s_quality],
        [t_follow, t_preserve, t_quality], steps, text_cfg, image_cfg, reward_cfg, seed,
    )  # fmt: skip
    grid = ctx.model.sweep(
        image, instruction, settings,
        progress=lambda i, n: progress((i, n), desc="reward sweep", unit="steps"),
    )  # fmt: skip
    return grid


@user_errors
def run_best_of(
    ctx: StudioContext,
    image, instruction, s_follow, s_preserve, s_quality, t_follow, t_preserve, t_quality,
    steps, text_cfg, image_cfg, reward_cfg, seed, n,
    request: gr.Request, progress=gr.Progress(),
):  # fmt: skip
    """Best of N: N candidates (seeds seed .. seed + N - 1), ranked by the reward model; the
    best becomes the edit (compare view, state for "Send to review"), all are shown with their
    predicted scores."""
    image, instruction, settings = _prepare(
        ctx, request, image, instruction, [s_follow, s_preserve, s_quality],
        [t_follow, t_preserve, t_quality], steps, text_cfg, image_cfg, reward_cfg, seed,
    )  # fmt: skip
    if ctx.model.reward_model is None:
        raise gr.Error(
            "Best of N needs a reward model: start the studio with --reward-model FOLDER.",
            print_exception=False,
        )
    before, ranked = ctx.model.best_of(
        image, instruction, settings, int(n),
        progress=lambda i, k: progress((i, k), desc=f"best of {int(n)}", unit="steps"),
    )  # fmt: skip
    best = ranked[0]
    chosen = replace(settings, seed=settings.seed + best.index)
    last = {"original": before, "edited": best.image, "instruction": instruction,
            "settings": chosen}  # fmt: skip
    gallery = [(c.image, _caption(c, settings.seed)) for c in ranked]
    status = (
        f"Best of {len(ranked)} by the reward model: seed {chosen.seed} "
        f"({_caption(best, settings.seed)})."
    )
    return (before, best.image), status, last, gallery


def _caption(c: Any, seed: int) -> str:
    means = " ".join(f"{p[0].upper()} {c.mean[p]:.1f}±{c.std[p]:.1f}" for p in PERSPECTIVES)
    return f"seed {seed + c.index}: {means}"


def randomize_seed() -> int:
    return random.randint(0, MAX_SEED)


@user_errors
def send_to_review(ctx: StudioContext, last: dict | None, request: gr.Request) -> str:
    """Store the last edit (input, instruction, output) as a new triplet for review."""
    user = ctx.access.user(username(request), CAN_REVIEW, "send edits to review")
    if not last:
        raise gr.Error("Run an edit first; there is nothing to send yet.", print_exception=False)
    settings: EditSettings = last["settings"]
    tid = ctx.store.add_triplet(
        load_image(last["original"]),
        load_image(last["edited"]),
        last["instruction"],
        split="studio",
        source="studio-edit",
        meta={"model": ctx.model.name, "settings": settings.to_dict(), "sent_by": user.name},
    )
    return f"Stored as triplet `{tid}` (split “studio”); it is now in the review queue."


def model_note(ctx: StudioContext) -> str:
    """The Edit tab's line about its model (filled on page load, for roles that may edit): a
    folder under the working directory is named relative to it, not by the server's full path."""
    name = ctx.model.name
    folder = Path(name)
    if folder.is_absolute() and folder.is_relative_to(Path.cwd()):
        name = str(folder.relative_to(Path.cwd()))
    return (
        f"Model: `{name}`. It works at **{ctx.model.resolution} px**: larger inputs "
        "are scaled down (long side) before editing."
    )


def build_edit_tab(ctx: StudioContext) -> dict[str, Any]:
    """Build the tab; returns the components ``app.py`` fills on page load."""
    model = gr.Markdown(elem_id="edit-model")
    with gr.Row():
        with gr.Column(scale=1):
            image = uploaded_image(label="Input image", elem_id="edit-input", height=300,
                                   elem_classes=["mrc-pixels"])  # fmt: skip
            instruction = gr.Textbox(
                label="Instruction",
                placeholder="e.g. make the circle blue",
                elem_id="edit-instruction",
            )
            sliders = [
                gr.Slider(
                    0,
                    5,
                    value=5,
                    step=0.5,
                    label=f"{TITLES[p]} reward",
                    info="The score to ask for (5 = best).",
                    elem_id=f"edit-reward-{p}",
                )  # fmt: skip
                for p in PERSPECTIVES
            ]
            with gr.Accordion("Failure texts (optional)", open=False):
                gr.Markdown(
                    "Describe failure points to condition on, per perspective; leave empty "
                    "for none (the paper's inference uses empty texts)."
                )
                texts = [
                    gr.Textbox(label=TITLES[p], lines=1, elem_id=f"edit-text-{p}")
                    for p in PERSPECTIVES
                ]
            with gr.Accordion("Sampling", open=False):
                start = ctx.model.default_settings  # the guidance the model's folder records
                steps = gr.Slider(1, 100, value=start.steps, step=1, label="Steps")
                text_cfg = gr.Slider(
                    1, 15, value=start.guidance_scale, step=0.1, label="Text guidance",
                    info=f"This model's recorded default: {start.guidance_scale:g}.",
                )  # fmt: skip
                image_cfg = gr.Slider(
                    1, 5, value=start.image_guidance_scale, step=0.05,
                    label="Image guidance",
                )  # fmt: skip
                reward_cfg = gr.Slider(
                    0, 5, value=start.reward_guidance_scale, step=0.1,
                    label="Reward guidance", info="1 reproduces the paper; above 1 strengthens "
                    "the rewards (needs a model trained with reward dropout).",
                )  # fmt: skip
                with gr.Row():
                    seed = gr.Number(
                        value=0, label="Seed", precision=0, minimum=0, maximum=MAX_SEED
                    )
                    dice = gr.Button("🎲 Randomise", size="sm", elem_id="edit-randomize")
            with gr.Accordion("Best of N (reward model)", open=False):
                gr.Markdown(
                    "Draw N candidates (seeds seed, seed + 1, ...) and keep the one the learned "
                    "reward model ranks first; every candidate is shown with its predicted "
                    "scores (mean ± std per perspective: F following, P preserving, Q quality)."
                )
                n_best = gr.Slider(2, 8, value=4, step=1, label="Candidates (N)")
                best = gr.Button("Best of N", elem_id="edit-best-of")
            with gr.Row():
                go = gr.Button("Edit", variant="primary", elem_id="edit-run")
                sweep = gr.Button("Reward sweep", elem_id="edit-sweep")
            if ctx.examples:
                gr.Examples(
                    examples=[[path, text] for path, text in ctx.examples],
                    inputs=[image, instruction],
                    label="Examples",
                    examples_per_page=4,
                )
        with gr.Column(scale=1):
            compare = gr.ImageSlider(
                label="Input ↔ edited",
                type="pil",
                format="png",  # lossless: artifacts the reviewer should see are the model's
                elem_id="edit-output",
                max_height=420,
                elem_classes=["mrc-pixels"],
            )
            status = gr.Markdown(elem_id="edit-status")
            to_review = gr.Button("Send to review", elem_id="edit-send")
            review_status = gr.Markdown(elem_id="edit-send-status")
            grid = gr.Image(label="Reward sweep", type="pil", elem_id="edit-grid", interactive=False,
                            format="png")  # fmt: skip
            candidates = gr.Gallery(label="Best of N: candidates, best first", columns=4,
                                    elem_id="edit-candidates", format="png", height="auto")  # fmt: skip
    last = gr.State(None)
    inputs = [image, instruction, *sliders, *texts, steps, text_cfg, image_cfg, reward_cfg, seed]
    checked = dict(show_progress="hidden", api_visibility="private", queue=False)
    go.click(bind(check_edit, ctx), inputs, None, **checked).success(
        bind(run_edit, ctx), inputs, [compare, status, last],
        api_name="edit", concurrency_limit=1, concurrency_id="model",
    )  # fmt: skip
    instruction.submit(bind(check_edit, ctx), inputs, None, **checked).success(
        bind(run_edit, ctx), inputs, [compare, status, last],
        api_name="edit_submit", concurrency_limit=1, concurrency_id="model",
    )  # fmt: skip
    sweep.click(bind(check_edit, ctx), inputs, None, **checked).success(
        bind(run_sweep, ctx), inputs, [grid],
        api_name="sweep", concurrency_limit=1, concurrency_id="model",
    )  # fmt: skip
    best.click(bind(check_edit, ctx), inputs, None, **checked).success(
        bind(run_best_of, ctx), [*inputs, n_best], [compare, status, last, candidates],
        api_name="best_of", concurrency_limit=1, concurrency_id="model",
    )  # fmt: skip
    dice.click(randomize_seed, None, [seed], api_name="randomize_seed", queue=False)
    to_review.click(bind(send_to_review, ctx), [last], [review_status],
                    api_name="send_to_review", show_progress="hidden")  # fmt: skip
    return {"model_note": model}
