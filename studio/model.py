"""The editing model behind the Edit tab: loaded once, used by one request at a time.

:func:`load_edit_model` resolves what ``--model`` names:

* a local folder or hub id of an MRC pipeline or a stock InstructPix2Pix pipeline (the
  pipeline's ``from_pretrained`` adds a fresh identity MRC module to a stock one);
* nothing: the shipped Shapes demo model at :data:`studio.demo.DEFAULT_MODEL_PATH` when that
  folder exists, else tiny randomly initialised components from :mod:`core.tiny` so the
  studio still starts, with a banner that says no trained model is installed.

A learned reward model (``--reward-model``; the shipped Shapes one with the demo model) lets the
Edit tab draw N candidates and keep the one it ranks first (:meth:`EditModel.best_of`).

On a GPU the model runs in fp16, else fp32 on the CPU. Gradio serialises calls to it
(``concurrency_id="model"``, limit 1), so :class:`EditModel` itself needs no lock.

Inputs are resized so that the long side is at most the model's native resolution (the UNet
``sample_size`` times the VAE factor: 512 px for SD 1.5), rounded down to a multiple of the
VAE factor; a 4000 px phone photo therefore costs what a 512 px one does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw, ImageFont

from core.images import load_image
from core.pipeline import MRCInstructPix2PixPipeline, image_grid
from core.rewards import PERSPECTIVES, TITLES, Rewards

log = logging.getLogger(__name__)
Progress = Callable[[int, int], None]  # (step done, total steps)


@dataclass(frozen=True)
class EditSettings:
    """One edit request. Defaults follow the paper's inference (eval.py)."""

    # The requested scores and failure texts ("" means none); the paper asks for 5/5/5.
    rewards: Rewards = field(default_factory=Rewards.best)
    steps: int = 30  # Euler-Ancestral steps, as the authors' eval.py
    # Text / image guidance (InstructPix2Pix); None: the model's recorded defaults
    # (EditModel.default_settings; 7.5 / 1.5 unless its folder records measured ones).
    guidance_scale: float | None = None
    image_guidance_scale: float | None = None
    reward_guidance_scale: float = 1.0  # 1 = the paper; > 1 pushes away from the null reward
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Flat and JSON-ready, as stored with an edit sent to review."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "rewards"}
        return {"rewards": list(self.rewards.scores), "reward_text": list(self.rewards.texts), **d}


@dataclass
class EditModel:
    pipeline: MRCInstructPix2PixPipeline
    name: str  # what was loaded (path or hub id), shown in the banner and stored with edits
    trained: bool  # False for the randomly initialised fallback
    device: torch.device
    reward_model: Any = None  # a core.reward_model.EditRewardModel for best-of-N, or None
    reward_model_name: str = ""

    @property
    def resolution(self) -> int:
        """The model's native image size in pixels."""
        unet, factor = self.pipeline.unet.config, self.pipeline.vae_scale_factor
        size = unet.sample_size
        size = size[0] if isinstance(size, (list, tuple)) else size
        return int(size) * factor

    @property
    def default_settings(self) -> EditSettings:
        """The paper's settings with the guidance this model's folder records (model_index.json):
        what the Edit tab's sliders start at."""
        cfg = self.pipeline.config
        return EditSettings(
            guidance_scale=float(cfg.default_guidance_scale),
            image_guidance_scale=float(cfg.default_image_guidance_scale),
        )

    def _prepare(self, image: Any) -> Image.Image:
        img = load_image(image)
        factor, limit = self.pipeline.vae_scale_factor, self.resolution
        scale = min(1.0, limit / max(img.size))
        w = max(factor, int(img.width * scale) // factor * factor)
        h = max(factor, int(img.height * scale) // factor * factor)
        return img if (w, h) == img.size else img.resize((w, h), Image.Resampling.LANCZOS)

    def _call(
        self,
        image: Image.Image,
        instructions: list[str],
        rewards: list[Rewards],
        settings: EditSettings,
        progress: Progress | None,
        seeds: Sequence[int] | None = None,
    ) -> list[Image.Image]:
        n = len(instructions)
        # By default the same noise for every image: only the reward differs across a sweep.
        seeds = seeds if seeds is not None else [int(settings.seed)] * n
        generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]

        def on_step(pipe: Any, step: int, timestep: Any, kwargs: dict) -> dict:
            if progress is not None:
                progress(step + 1, settings.steps)
            return kwargs

        out = self.pipeline(
            prompt=instructions,
            image=image,
            rewards=rewards,
            num_inference_steps=int(settings.steps),
            guidance_scale=settings.guidance_scale,  # None: the pipeline's recorded default
            image_guidance_scale=settings.image_guidance_scale,
            reward_guidance_scale=float(settings.reward_guidance_scale),
            generator=generators,
            callback_on_step_end=on_step,
        )
        return list(out.images)

    def edit(
        self,
        image: Any,
        instruction: str,
        settings: EditSettings = EditSettings(),
        progress: Progress | None = None,
    ) -> tuple[Image.Image, Image.Image]:
        """(the input as the model saw it, the edited image)."""
        img = self._prepare(image)
        edited = self._call(img, [instruction], [settings.rewards], settings, progress)[0]
        return img, edited

    def best_of(
        self,
        image: Any,
        instruction: str,
        settings: EditSettings = EditSettings(),
        n: int = 4,
        progress: Progress | None = None,
    ) -> tuple[Image.Image, list[Any]]:
        """Draw ``n`` candidates (seeds ``seed``, ``seed + 1``, ...: the first is the plain
        edit's) and rank them with the reward model: (the input as seen, candidates best first,
        each a :class:`core.best_of_n.RankedCandidate` whose ``index`` is its seed offset)."""
        from core.best_of_n import rank_candidates

        if self.reward_model is None:
            raise ValueError(
                "best-of-N needs a reward model; start the studio with --reward-model FOLDER "
                "(python -m train.reward_model)."
            )
        if not 1 <= n <= 16:
            raise ValueError(f"best-of-N takes 1 to 16 candidates; got {n}.")
        img = self._prepare(image)
        seeds = [int(settings.seed) + k for k in range(n)]
        drawn = self._call(
            img, [instruction] * n, [settings.rewards] * n, settings, progress, seeds
        )
        return img, rank_candidates(self.reward_model, img, instruction, drawn)

    def sweep(
        self,
        image: Any,
        instruction: str,
        settings: EditSettings = EditSettings(),
        levels: Sequence[float] = (0.0, 2.5, 5.0),
        progress: Progress | None = None,
    ) -> Image.Image:
        """A labelled grid: one row per perspective, one column per score level.

        In row ``p`` only perspective ``p`` takes each level; the other two keep the
        requested values. Every cell uses the same seed, so differences come from the reward.
        """
        img = self._prepare(image)
        rewards = [
            settings.rewards.replace(p, score=float(x)) for p in PERSPECTIVES for x in levels
        ]
        images = self._call(img, [instruction] * len(rewards), rewards, settings, progress)
        return label_grid(images, [TITLES[p] for p in PERSPECTIVES], [f"{x:g}" for x in levels])


def label_grid(images: list[Image.Image], rows: list[str], cols: list[str]) -> Image.Image:
    """``image_grid`` with row titles on the left and column titles on top."""
    w, h = images[0].size
    if max(w, h) < 128:  # tiny demo images: enlarge (nearest, no smoothing) so they are visible
        scale = -(-128 // max(w, h))
        images = [im.resize((w * scale, h * scale), Image.Resampling.NEAREST) for im in images]
        w, h = images[0].size
    grid = image_grid(images, len(cols))
    margin_left, margin_top = 150, 24
    out = Image.new("RGB", (grid.width + margin_left, grid.height + margin_top), "white")
    out.paste(grid, (margin_left, margin_top))
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default(size=13)
    for j, title in enumerate(cols):
        draw.text((margin_left + j * w + w // 2, 4), f"score {title}", fill="black", font=font,
                  anchor="ma")  # fmt: skip
    for i, title in enumerate(rows):
        draw.text((6, margin_top + i * h + h // 2), title, fill="black", font=font, anchor="lm")
    return out


def pick_device(device: str | None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_edit_model(
    model: str | Path | None, device: str | None = None, reward_model: str | Path | None = None
) -> EditModel:
    """Load ``model`` (see module docstring); None means the demo model or the fallback.
    ``reward_model``: a reward model folder for best-of-N (None: the shipped Shapes reward
    model with the demo model, none otherwise)."""
    from studio.demo import DEFAULT_MODEL_PATH, DEFAULT_REWARD_MODEL_PATH

    dev = pick_device(device)
    dtype = torch.float16 if dev.type == "cuda" else torch.float32
    source = str(model) if model else None
    if source is None and Path(DEFAULT_MODEL_PATH).is_dir():
        source = str(DEFAULT_MODEL_PATH)
    if source is None:
        from core.tiny import TinyConfig, build_components

        log.warning("No trained model is installed; using randomly initialised tiny components.")
        pipe = MRCInstructPix2PixPipeline(**build_components(TinyConfig(), seed=0))
        trained, name = False, "untrained tiny model (random weights)"
    else:
        if Path(source).exists() and not Path(source).is_dir():
            raise ValueError(f"--model {source!r} is a file; pass a pipeline folder or a hub id.")
        pipe = MRCInstructPix2PixPipeline.from_pretrained(source, dtype=dtype)
        trained, name = True, source
    pipe = pipe.to(dev) if pipe.dtype == dtype else pipe.to(dev, dtype)
    pipe.set_progress_bar_config(disable=True)
    rm_source = str(reward_model) if reward_model else None
    if rm_source is None and source == str(DEFAULT_MODEL_PATH):
        rm_source = (
            str(DEFAULT_REWARD_MODEL_PATH) if Path(DEFAULT_REWARD_MODEL_PATH).is_dir() else None
        )
    rm = None
    if rm_source is not None:
        from core.reward_model import EditRewardModel

        if not Path(rm_source).is_dir():
            raise ValueError(f"--reward-model {rm_source!r} is not a reward model folder.")
        rm = EditRewardModel.from_pretrained(rm_source).to(dev).eval()
    return EditModel(pipeline=pipe, name=name, trained=trained, device=dev, reward_model=rm,
                     reward_model_name=rm_source or "")  # fmt: skip
