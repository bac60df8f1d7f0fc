"""Reference-based image metrics: L1, CLIP-I, CLIP-T, CLIP direction (the paper's Table 2), PSNR.

The VLM judge answers "was the edit right?"; these metrics answer "how close is the output to a
reference?" and need no judge. They are the metrics of the MagicBrush benchmark, which the paper
reports in Table 2 (as percentages: 100 x cosine).

* **CLIP-I** -- cosine similarity between the CLIP image embeddings of the output and the
  ground-truth target image. Where a benchmark has no target (Real-Edit), ``clip_i_input``
  compares the output with the *input* image instead: a preservation proxy, not Table 2's metric,
  and reported under its own name.
* **CLIP-T** -- cosine similarity between the CLIP embedding of the output image and a text: the
  caption of the desired output when the benchmark has one (MagicBrush's "output caption"), else
  the instruction itself (reported as ``clip_t_instruction``, a weaker, differently-scaled signal).
* **CLIP direction** -- does the image change the way the captions change?
  ``cos(E_img(output) - E_img(input), E_txt(target caption) - E_txt(source caption))`` with
  L2-normalised embeddings, differences taken, then the cosine (InstructPix2Pix's
  ``sim_direction``; the "CLIP directional similarity" of StyleGAN-NADA). It needs the captions of
  both the input and the desired output; an output identical to its input (or two identical
  captions) has no direction and scores 0, as ``torch.nn.functional.cosine_similarity`` gives.
* **L1** -- mean absolute difference between output and target over all pixels and RGB channels,
  with pixel values in [0, 1]. The output is resized to the target's size (bicubic) first.
* **PSNR** -- ``10 log10(1 / MSE)`` in dB on the same [0, 1] pixels; identical images (MSE = 0)
  are capped at :data:`PSNR_CAP_DB` so that averages stay finite.

CLIP runs through ``transformers.CLIPModel`` loaded from a local folder or a hub id (offline
machines need a local folder; the tests save a tiny, randomly initialised CLIP). Embeddings are
L2-normalised; images go through the model's own image processor (``preprocessor_config.json``),
texts through its tokenizer, truncated to the text model's maximum length.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from core.images import image_hash

PSNR_CAP_DB = 100.0  # PSNR of identical images; a finite stand-in for +inf


# -- pixel metrics ------------------------------------------------------------------------------


def _pixels(img: Image.Image, size: tuple[int, int] | None = None) -> np.ndarray:
    """RGB pixels in [0, 1] as float64 (H, W, 3), optionally resized (bicubic) to ``size``."""
    if not isinstance(img, Image.Image):
        raise TypeError(f"expected a PIL image, got {type(img).__name__}")
    img = img.convert("RGB")
    if size is not None and img.size != size:
        img = img.resize(size, Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.float64) / 255.0


def l1_distance(output: Image.Image, target: Image.Image) -> float:
    """Mean |output - target| over pixels and channels, values in [0, 1] (output resized)."""
    return float(np.mean(np.abs(_pixels(output, target.size) - _pixels(target))))


def psnr(output: Image.Image, target: Image.Image, cap_db: float = PSNR_CAP_DB) -> float:
    """Peak signal-to-noise ratio in dB for [0, 1] pixels, capped at ``cap_db`` (output resized)."""
    mse = float(np.mean((_pixels(output, target.size) - _pixels(target)) ** 2))
    if mse == 0.0:
        return cap_db
    return min(cap_db, 10.0 * math.log10(1.0 / mse))


# -- CLIP ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipConfig:
    """Which CLIP to use and how to run it."""

    model: str  # local folder (CLIPModel + tokenizer + image processor) or a hub id
    device: str = "cpu"  # "cpu", "cuda", "cuda:1", ...
    batch_size: int = 32  # images or texts per forward pass


class ClipScorer:
    """CLIP image and text embeddings and the CLIP-I / CLIP-T similarities built on them."""

    def __init__(self, config: ClipConfig) -> None:
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        if config.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {config.batch_size}.")
        self.config = config
        where = config.model
        local = Path(where).expanduser()
        if local.exists() and not (local / "config.json").is_file():
            raise FileNotFoundError(
                f"{local} has no config.json; a CLIP folder needs the files written by "
                "CLIPModel.save_pretrained plus the tokenizer and image processor."
            )
        try:
            self.model = CLIPModel.from_pretrained(str(local) if local.exists() else where)
            self.tokenizer = AutoTokenizer.from_pretrained(str(local) if local.exists() else where)
            self.processor = AutoImageProcessor.from_pretrained(
                str(local) if local.exists() else where
            )
        except OSError as e:
            raise OSError(
                f"Cannot load the CLIP model {where!r}: {e}. Pass a local folder that holds the "
                "model, its tokenizer and its image processor; a hub id needs network access "
                "(HF_HUB_OFFLINE must be unset)."
            ) from e
        self.model.to(config.device).eval()
        text_cfg = self.model.config.text_config
        self.max_length = min(
            int(self.tokenizer.model_max_length), text_cfg.max_position_embeddings
        )

    @property
    def name(self) -> str:
        return self.config.model

    @torch.no_grad()
    def image_embeddings(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """L2-normalised image embeddings, (N, D) float32 on the CPU."""
        out = []
        for start in range(0, len(images), self.config.batch_size):
            batch = [im.convert("RGB") for im in images[start : start + self.config.batch_size]]
            pixels = self.processor(images=batch, return_tensors="pt").pixel_values  # (B, 3, H, W)
            feats = self.model.get_image_features(pixel_values=pixels.to(self.config.device))
            out.append(_normalise(feats.pooler_output))  # (B, D)
        if not out:
            return torch.zeros(0, self.model.config.projection_dim)
        return torch.cat(out)

    @torch.no_grad()
    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings, (N, D) float32 on the CPU."""
        out = []
        for start in range(0, len(texts), self.config.batch_size):
            enc = self.tokenizer(
                list(texts[start : start + self.config.batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.config.device)
            feats = self.model.get_text_features(
                input_ids=enc["input_ids"], attention_mask=enc.get("attention_mask")
            )
            out.append(_normalise(feats.pooler_output))  # (B, D)
        if not out:
            return torch.zeros(0, self.model.config.projection_dim)
        return torch.cat(out)

    def clip_i(
        self, images: Sequence[Image.Image], references: Sequence[Image.Image]
    ) -> np.ndarray:
        """Cosine similarity of each image with its reference image, shape (N,)."""
        if len(images) != len(references):
            raise ValueError(f"got {len(images)} images but {len(references)} reference images.")
        a, b = self.image_embeddings(images), self.image_embeddings(references)
        return (a * b).sum(dim=-1).numpy().astype(np.float64)

    def clip_t(self, images: Sequence[Image.Image], texts: Sequence[str]) -> np.ndarray:
        """Cosine similarity of each image with its text, shape (N,)."""
        if len(images) != len(texts):
            raise ValueError(f"got {len(images)} images but {len(texts)} texts.")
        a, b = self.image_embeddings(images), self.text_embeddings(texts)
        return (a * b).sum(dim=-1).numpy().astype(np.float64)

    def clip_direction(
        self,
        outputs: Sequence[Image.Image],
        inputs: Sequence[Image.Image],
        target_captions: Sequence[str],
        source_captions: Sequence[str],
    ) -> np.ndarray:
        """CLIP direction similarity of each (output, input) pair with its (target, source)
        caption pair, shape (N,); see :func:`direction_similarity`."""
        n = {len(outputs), len(inputs), len(target_captions), len(source_captions)}
        if len(n) != 1:
            raise ValueError(
                f"got {len(outputs)} outputs, {len(inputs)} inputs, {len(target_captions)} target "
                f"captions and {len(source_captions)} source captions; they must pair up."
            )
        return direction_similarity(
            self.image_embeddings(outputs),
            self.image_embeddings(inputs),
            self.text_embeddings(target_captions),
            self.text_embeddings(source_captions),
        )


DIRECTION_EPS = 1e-8  # the eps of torch.nn.functional.cosine_similarity


def direction_similarity(
    output_emb: torch.Tensor | np.ndarray,
    input_emb: torch.Tensor | np.ndarray,
    target_text_emb: torch.Tensor | np.ndarray,
    source_text_emb: torch.Tensor | np.ndarray,
) -> np.ndarray:
    """``cos(output - input, target_text - source_text)`` row by row, in float64, shape (N,).

    The embeddings are expected L2-normalised (as :class:`ClipScorer` returns them); the
    differences are *not* normalised before the cosine, which normalises them. A zero difference
    (output equal to input, or equal captions) gives 0: the denominator is clamped at
    :data:`DIRECTION_EPS`, as in ``torch.nn.functional.cosine_similarity``.
    """

    def rows(x: torch.Tensor | np.ndarray) -> np.ndarray:
        a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        a = a.astype(np.float64)
        return a[None] if a.ndim == 1 else a

    di = rows(output_emb) - rows(input_emb)
    dt = rows(target_text_emb) - rows(source_text_emb)
    norms = np.linalg.norm(di, axis=-1) * np.linalg.norm(dt, axis=-1)
    return (di * dt).sum(axis=-1) / np.maximum(norms, DIRECTION_EPS)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=-1).cpu()


# -- metrics of many outputs ---------------------------------------------------------------------


@dataclass(frozen=True)
class MetricInput:
    """One output with what it is compared against."""

    output: Image.Image
    source: Image.Image
    instruction: str
    target: Image.Image | None = None  # ground-truth edited image, when the benchmark has one
    target_caption: str | None = None  # caption of the desired output, when known
    source_caption: str | None = None  # caption of the input image, when known


def compute_metrics(
    inputs: Sequence[MetricInput], clip: ClipScorer | None = None
) -> list[dict[str, float]]:
    """Every metric that applies, per output (a key is absent when it does not apply).

    ``l1`` / ``psnr`` / ``clip_i`` need a target; ``clip_t`` needs a target caption;
    ``clip_direction`` needs both the target and the source caption; ``l1_input`` always
    applies; ``clip_i_input`` and ``clip_t_instruction`` apply whenever a CLIP model is given. CLIP runs batched; identical images and texts are embedded once.
    """
    rows: list[dict[str, float]] = []
    for x in inputs:
        m = {"l1_input": l1_distance(x.output, x.source)}
        if x.target is not None:
            m["l1"] = l1_distance(x.output, x.target)
            m["psnr"] = psnr(x.output, x.target)
        rows.append(m)
    if clip is None or not inputs:
        return rows

    image_index: dict[str, int] = {}  # pixel hash -> row in the embedding matrix
    images: list[Image.Image] = []

    def slot(img: Image.Image) -> int:
        key = image_hash(img.convert("RGB"))  # CLIP sees RGB: equal RGB pixels embed once
        if key not in image_index:
            image_index[key] = len(images)
            images.append(img)
        return image_index[key]

    text_index: dict[str, int] = {}

    def tslot(text: str) -> int:
        return text_index.setdefault(text, len(text_index))

    refs = [
        (
            slot(x.output),
            slot(x.source),
            None if x.target is None else slot(x.target),
            tslot(x.instruction),
            tslot(x.target_caption) if x.target_caption else None,
            tslot(x.source_caption) if x.source_caption else None,
        )
        for x in inputs
    ]
    emb = clip.image_embeddings(images)  # (U, D)
    temb = clip.text_embeddings(list(text_index))  # (T, D)
    for m, (o, s, t, ti, tc, sc) in zip(rows, refs):
        m["clip_i_input"] = float(emb[o] @ emb[s])
        m["clip_t_instruction"] = float(emb[o] @ temb[ti])
        if t is not None:
            m["clip_i"] = float(emb[o] @ emb[t])
        if tc is not None:
            m["clip_t"] = float(emb[o] @ temb[tc])
        if tc is not None and sc is not None:
            m["clip_direction"] = float(direction_similarity(emb[o], emb[s], temb[tc], temb[sc])[0])
    return rows


METRIC_TITLES: dict[str, str] = {
    "clip_i": "CLIP-I (output vs target)",
    "clip_t": "CLIP-T (output vs target caption)",
    "clip_direction": "CLIP direction (image change vs caption change)",
    "clip_i_input": "CLIP-I (output vs input)",
    "clip_t_instruction": "CLIP-T (output vs instruction)",
    "l1": "L1 to target",
    "psnr": "PSNR to target (dB)",
    "l1_input": "L1 to input",
}
PERCENT_METRICS = (  # shown as 100 x cos
    "clip_i",
    "clip_t",
    "clip_direction",
    "clip_i_input",
    "clip_t_instruction",
)
TABLE2_METRICS = ("l1", "clip_i", "clip_t", "clip_direction")  # the paper's Table 2 metrics
