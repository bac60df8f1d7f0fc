"""A learned edit reward model: (original, instruction, edited) -> a Gaussian score per perspective.

After EditReward (Wu et al., 2025): for each perspective of :data:`core.rewards.PERSPECTIVES`
(following, preserving, quality) the model predicts a Gaussian ``N(mean, var)`` over the 0-5
score a judge would give, the variance standing for how unsure the label is. It is trained
(``python -m train.reward_model``) with

* a Gaussian negative log-likelihood on absolute scores (:func:`gaussian_nll`), and
* an uncertainty-aware pairwise loss on two edits of the same input (:func:`pairwise_loss`):
  ``P(A > B) = Phi((mean_A - mean_B) / sqrt(var_A + var_B))``, the Thurstone form of EditReward's
  sampled Bradley-Terry loss, with EditReward's *tie disentanglement*: a tie on a perspective
  counts as the two opposite preferences A > B and B > A at half weight each, i.e. a target
  of 0.5 in the binary cross-entropy of that perspective.

Two backbones, the same heads:

``pair_cnn`` (Shapes): original and edited stacked on channels with their difference,
    ``[o, e, e - o]`` (9 channels), through a small conv net whose every level is modulated
    (FiLM) by a frozen CLIP text embedding of the instruction; the text tower comes from a
    ``transformers.CLIPModel`` folder (the shipped Shapes CLIP) and instruction embeddings are
    cached, so training and scoring pay for the text tower once per distinct instruction.
``clip`` (real photos): a frozen pretrained ``transformers.CLIPModel`` (folder or hub id)
    gives image features of both images and the text feature; an MLP reads
    ``[img_o, img_e, img_e - img_o, txt, (img_e - img_o) * txt]``.

Saved and loaded like every diffusers component (``save_pretrained`` / ``from_pretrained``,
config registered); the tokenizer is saved in the ``tokenizer/`` subfolder.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from PIL import Image
from torch import nn

from core.rewards import MAX_SCORE, MIN_SCORE, PERSPECTIVES

BACKBONES = ("pair_cnn", "clip")
OVERALL = len(PERSPECTIVES)  # pair-target column of the overall preference (mean of the three)


@dataclass(frozen=True)
class RewardPrediction:
    """Per-perspective Gaussians: ``mean`` (B, 3) on the 0-5 scale (``forward`` leaves it
    unclipped for training; :meth:`EditRewardModel.predict` clips it to [0, 5]) and ``logvar``."""

    mean: torch.Tensor
    logvar: torch.Tensor

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)  # (B, 3)

    def __getitem__(self, index: Any) -> RewardPrediction:
        return RewardPrediction(self.mean[index], self.logvar[index])


AGGREGATES = ("mean", "min", *PERSPECTIVES)


def aggregate(pred: RewardPrediction, by: str = "mean") -> torch.Tensor:
    """One score (B,) per triplet for ranking: the mean of the three perspectives' means, their
    minimum (an edit is as good as its weakest side), or one perspective's mean."""
    if by == "mean":
        return pred.mean.mean(1)
    if by == "min":
        return pred.mean.amin(1)
    if by in PERSPECTIVES:
        return pred.mean[:, PERSPECTIVES.index(by)]
    raise ValueError(f"by must be one of {', '.join(AGGREGATES)}; got {by!r}.")


# -- losses (pure functions) ------------------------------------------------------------------


def gaussian_nll(pred: RewardPrediction, target: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """Mean Gaussian negative log-likelihood of ``target`` (B, 3); NaN targets are ignored.

    ``beta`` > 0 weights each term by ``var ** beta`` (without gradient): the beta-NLL of
    Seitzer et al. (2022). Plain NLL (``beta=0``) lets a shrinking variance scale the mean's
    gradient up and stalls the fit of hard examples; ``beta=0.5`` keeps both in balance."""
    known = ~torch.isnan(target)
    if not known.any():
        return pred.mean.sum() * 0.0
    t = torch.where(known, target, pred.mean.detach())
    nll = 0.5 * (pred.logvar + (t - pred.mean) ** 2 / pred.logvar.exp() + math.log(2 * math.pi))
    if beta:
        nll = nll * (beta * pred.logvar.detach()).exp()
    return nll[known].mean()


def _with_overall(pred: RewardPrediction) -> tuple[torch.Tensor, torch.Tensor]:
    """Means and variances (B, 4): the three perspectives plus their average (independent)."""
    var = pred.logvar.exp()
    mean = torch.cat([pred.mean, pred.mean.mean(1, keepdim=True)], 1)  # (B, 4)
    var = torch.cat([var, var.sum(1, keepdim=True) / OVERALL**2], 1)  # (B, 4)
    return mean, var


def preference_z(a: RewardPrediction, b: RewardPrediction) -> torch.Tensor:
    """``(mean_A - mean_B) / sqrt(var_A + var_B)`` (B, 4); P(A > B) = Phi(z). Column 3: overall."""
    mean_a, var_a = _with_overall(a)
    mean_b, var_b = _with_overall(b)
    return (mean_a - mean_b) / torch.sqrt(var_a + var_b)


def pairwise_loss(a: RewardPrediction, b: RewardPrediction, target: torch.Tensor) -> torch.Tensor:
    """Uncertainty-aware pairwise loss; ``target`` (B, 4): 1 (A better), 0 (B better), 0.5 (tie),
    NaN (no preference on that perspective). A tie's 0.5 target is EditReward's tie
    disentanglement: ``-0.5 log P(A>B) - 0.5 log P(B>A)``, the two opposite pairs at half weight."""
    known = ~torch.isnan(target)
    z = preference_z(a, b)
    if not known.any():
        return z.sum() * 0.0
    y = torch.where(known, target, torch.zeros_like(target))
    bce = -(y * torch.special.log_ndtr(z) + (1 - y) * torch.special.log_ndtr(-z))
    return bce[known].mean()


def split_ties(pairs: torch.Tensor, target: torch.Tensor, dim: int) -> tuple[torch.Tensor, ...]:
    """EditReward's explicit form, for one perspective ``dim``: every pair (a, b) becomes
    (winner, loser) pairs with weights; a tie becomes (a, b) and (b, a) at weight 0.5 each.
    Returns ``(winners, losers, weights)``. :func:`pairwise_loss` computes the same loss
    without the duplication (a test checks that they agree)."""
    t = target[:, dim]
    keep = ~torch.isnan(t)
    a, b, t = pairs[keep, 0], pairs[keep, 1], t[keep]
    tie = t == 0.5
    winners = torch.cat([torch.where(t >= 0.5, a, b), b[tie]])
    losers = torch.cat([torch.where(t >= 0.5, b, a), a[tie]])
    weights = torch.cat([torch.where(tie, 0.5, 1.0), torch.full((int(tie.sum()),), 0.5)])
    return winners, losers, weights


# -- images ------------------------------------------------------------------------------------


def to_tensor(images: Any, size: int) -> torch.Tensor:
    """Images -> (B, 3, size, size) float32 in [-1, 1]. Accepts a (B, 3, H, W) tensor in [-1, 1],
    a (B, H, W, 3) uint8 array, or a sequence of PIL images / (H, W, 3) uint8 arrays."""
    if isinstance(images, torch.Tensor):
        x = images.float()
        if x.ndim == 3:
            x = x[None]
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
        return x
    if isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)
    out = []
    for i, im in enumerate(images):
        if im is None:
            raise ValueError(f"image {i} is missing (None); every triplet needs both images.")
        if not isinstance(im, Image.Image):
            im = Image.fromarray(np.asarray(im, dtype=np.uint8))
        im = im.convert("RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.BILINEAR)
        out.append(torch.from_numpy(np.asarray(im, dtype=np.float32) / 127.5 - 1.0))
    return torch.stack(out).permute(0, 3, 1, 2).contiguous()  # (B, 3, S, S)


# -- the model ---------------------------------------------------------------------------------


class PairLevel(nn.Module):
    """One conv level: stride-2 conv, FiLM by the text embedding, a residual 3x3 conv."""

    def __init__(self, c_in: int, c_out: int, text_dim: int):
        super().__init__()
        self.down = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)
        self.norm = nn.GroupNorm(min(8, c_out), c_out)
        self.film = nn.Linear(text_dim, 2 * c_out)
        self.conv = nn.Conv2d(c_out, c_out, 3, padding=1)

    def forward(self, h: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.down(h))  # (B, C, H/2, W/2)
        gamma, beta = self.film(text)[:, :, None, None].chunk(2, dim=1)  # (B, C, 1, 1) each
        h = F.silu(h * (1 + gamma) + beta)
        return h + F.silu(self.conv(h))


class EditRewardModel(ModelMixin, ConfigMixin):
    """(original, instruction, edited) -> per perspective a Gaussian (mean, log-variance)."""

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        backbone: str = "pair_cnn",
        image_size: int = 32,  # pair_cnn: images are resized to this; clip: the CLIP's own
        channels: Sequence[int] = (32, 64, 128),  # pair_cnn conv widths, one stride-2 level each
        hidden_dim: int = 128,  # width of the MLP before the heads
        text_config: dict | None = None,  # pair_cnn: the frozen CLIPTextConfig
        clip_config: dict | None = None,  # clip: the frozen CLIPConfig
        image_mean: Sequence[float] = (0.5, 0.5, 0.5),  # clip: the CLIP's pixel normalisation
        image_std: Sequence[float] = (0.5, 0.5, 0.5),
        min_logvar: float = -6.0,  # sigma >= 0.05: labels are rounded to 0.1
        max_logvar: float = 3.0,  # sigma <= 4.5: no score is further off than the scale
    ):
        super().__init__()
        from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel

        if backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}; got {backbone!r}.")
        if backbone == "pair_cnn":
            if text_config is None:
                raise ValueError("backbone 'pair_cnn' needs text_config (a CLIPTextConfig dict).")
            self.text_model = CLIPTextModel(CLIPTextConfig(**text_config)).requires_grad_(False)
            text_dim = self.text_model.config.hidden_size
            widths = [9, *channels]
            self.levels = nn.ModuleList(
                PairLevel(widths[i], widths[i + 1], text_dim) for i in range(len(channels))
            )
            features = 2 * channels[-1] + text_dim  # avg + max pooled image features, text
        else:
            if clip_config is None:
                raise ValueError("backbone 'clip' needs clip_config (a CLIPConfig dict).")
            self.clip = CLIPModel(CLIPConfig(**clip_config)).requires_grad_(False)
            text_dim = self.clip.config.projection_dim
            features = 5 * text_dim
        self.mlp = nn.Sequential(nn.Linear(features, hidden_dim), nn.SiLU())
        self.heads = nn.ModuleDict({p: nn.Linear(hidden_dim, 2) for p in PERSPECTIVES})
        self.tokenizer: Any = None  # set by from_folder / from_pretrained
        self._text_cache: dict[str, torch.Tensor] = {}

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_text_tower(cls, folder: str | Path, **kwargs: Any) -> EditRewardModel:
        """A fresh ``pair_cnn`` model whose frozen text tower is the one of a CLIPModel folder."""
        from transformers import CLIPModel, CLIPTokenizer

        clip = CLIPModel.from_pretrained(str(folder))
        model = cls(backbone="pair_cnn", text_config=clip.config.text_config.to_dict(), **kwargs)
        model.text_model.load_state_dict(clip.text_model.state_dict())
        model.tokenizer = CLIPTokenizer.from_pretrained(str(folder))
        return model

    @classmethod
    def from_clip(cls, name_or_path: str, **kwargs: Any) -> EditRewardModel:
        """A fresh ``clip`` model: new heads on a frozen pretrained CLIPModel (folder or hub id)."""
        from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

        clip = CLIPModel.from_pretrained(name_or_path)
        proc = CLIPImageProcessor.from_pretrained(name_or_path)
        model = cls(
            backbone="clip", clip_config=clip.config.to_dict(),
            image_size=clip.config.vision_config.image_size,
            image_mean=tuple(proc.image_mean), image_std=tuple(proc.image_std), **kwargs,
        )  # fmt: skip
        model.clip.load_state_dict(clip.state_dict())
        model.tokenizer = CLIPTokenizer.from_pretrained(name_or_path)
        return model

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> None:
        super().save_pretrained(save_directory, **kwargs)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(Path(save_directory) / "tokenizer"))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs: Any):
        from transformers import CLIPTokenizer

        model = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        model.tokenizer = CLIPTokenizer.from_pretrained(
            str(pretrained_model_name_or_path), subfolder="tokenizer"
        )
        return model.eval()

    # -- text ---------------------------------------------------------------------------------
    @torch.no_grad()
    def embed_instructions(self, instructions: Sequence[str]) -> torch.Tensor:
        """Frozen text embeddings (B, D) of the instructions, cached per distinct instruction."""
        if self.tokenizer is None:
            raise ValueError(
                "this reward model has no tokenizer; build it with from_text_tower / from_clip "
                "or load it with from_pretrained."
            )
        missing = sorted({s for s in instructions if s not in self._text_cache})
        for i in range(0, len(missing), 256):
            chunk = missing[i : i + 256]
            tokens = self.tokenizer(
                chunk, padding="max_length", truncation=True, return_tensors="pt",
                max_length=self.tokenizer.model_max_length,
            )  # fmt: skip
            tokens = {k: v.to(self.device) for k, v in tokens.items()}
            if self.config.backbone == "pair_cnn":
                emb = self.text_model(**tokens).pooler_output  # (b, D)
            else:
                emb = self.clip.get_text_features(**tokens)  # (b, D)
                emb = getattr(emb, "pooler_output", emb)
            for s, e in zip(chunk, emb.float().cpu()):
                self._text_cache[s] = e
        return torch.stack([self._text_cache[s] for s in instructions]).to(self.device)

    # -- forward ------------------------------------------------------------------------------
    def check_inputs(self, original: torch.Tensor, edited: torch.Tensor, text: torch.Tensor):
        if original.ndim != 4 or original.shape[1] != 3 or original.shape != edited.shape:
            raise ValueError(
                "original and edited must be (B, 3, H, W) tensors of the same shape; got "
                f"{tuple(original.shape)} and {tuple(edited.shape)}."
            )
        if text.ndim != 2 or text.shape[0] != original.shape[0]:
            raise ValueError(
                f"text embeddings must be (B, D) with B = {original.shape[0]}; got {tuple(text.shape)}."
            )

    def forward(
        self, original: torch.Tensor, edited: torch.Tensor, text: torch.Tensor
    ) -> RewardPrediction:
        """``original``, ``edited``: (B, 3, H, W) in [-1, 1]; ``text``: (B, D) from
        :meth:`embed_instructions`. Returns the per-perspective Gaussians."""
        # 1. check inputs
        self.check_inputs(original, edited, text)
        # 2. backbone features
        if self.config.backbone == "pair_cnn":
            size = self.config.image_size
            o, e = to_tensor(original, size), to_tensor(edited, size)  # (B, 3, S, S)
            h = torch.cat([o, e, e - o], dim=1)  # (B, 9, S, S)
            for level in self.levels:
                h = level(h, text)  # (B, C_i, S / 2^i, S / 2^i)
            feats = torch.cat([h.mean((2, 3)), h.amax((2, 3)), text], dim=1)  # (B, 2C + D)
        else:
            img_o, img_e = self._clip_images(original), self._clip_images(edited)  # (B, D)
            delta = img_e - img_o
            feats = torch.cat([img_o, img_e, delta, text, delta * text], dim=1)  # (B, 5D)
        # 3. heads: a (mean, logvar) pair per perspective
        h = self.mlp(feats)  # (B, hidden)
        raw = torch.stack([self.heads[p](h) for p in PERSPECTIVES], dim=1)  # (B, 3, 2)
        # the mean is linear (no saturation while training); predict() clips it to [0, 5]
        mean = MAX_SCORE / 2 + raw[..., 0]  # (B, 3)
        lo, hi = self.config.min_logvar, self.config.max_logvar
        logvar = lo + (hi - lo) * torch.sigmoid(raw[..., 1])  # (B, 3)
        return RewardPrediction(mean, logvar)

    def _clip_images(self, pixels: torch.Tensor) -> torch.Tensor:
        x = to_tensor(pixels, self.config.image_size) * 0.5 + 0.5  # (B, 3, S, S) in [0, 1]
        mean = torch.tensor(self.config.image_mean, device=x.device)[None, :, None, None]
        std = torch.tensor(self.config.image_std, device=x.device)[None, :, None, None]
        out = self.clip.get_image_features(pixel_values=(x - mean) / std)  # (B, D)
        return getattr(out, "pooler_output", out)

    # -- scoring ------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(
        self,
        originals: Any,
        instructions: Sequence[str],
        editeds: Any,
        batch_size: int = 256,
    ) -> RewardPrediction:
        """Score triplets given as PIL images, uint8 arrays or [-1, 1] tensors (see
        :func:`to_tensor`); returns the Gaussians on the CPU, in input order."""
        n = len(instructions)
        if len(originals) != n or len(editeds) != n:
            raise ValueError(
                f"got {len(originals)} originals, {n} instructions and {len(editeds)} edited "
                "images; they must match one to one."
            )
        for i, s in enumerate(instructions):
            if not isinstance(s, str) or not s.strip():
                raise ValueError(f"instruction {i} is empty; every triplet needs an instruction.")
        size = self.config.image_size
        means, logvars = [], []
        for i in range(0, n, batch_size):
            o = to_tensor(originals[i : i + batch_size], size).to(self.device)
            e = to_tensor(editeds[i : i + batch_size], size).to(self.device)
            pred = self(o, e, self.embed_instructions(instructions[i : i + batch_size]))
            means.append(pred.mean.float().clamp(MIN_SCORE, MAX_SCORE).cpu())
            logvars.append(pred.logvar.float().cpu())
        return RewardPrediction(torch.cat(means), torch.cat(logvars))
