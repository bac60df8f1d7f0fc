"""The Multi-Reward Condition (MRC) module: rewards -> time-embedding term + reward tokens.

Paper §4.2-4.3 and the authors' release (``bytedance/Multi-Reward-Editing``). A reward is three
scores in [0, 5] (following, preserving, quality) and three failure texts. The module turns it
into two things the UNet consumes:

    scores (B, 3) --sinusoid 256 each--> (B, 768) --+--> add_embedding  (MLP) --> (B, T) --+
                                                    +--> add_embedding2 (MLP) --> (B, C0)  |  score token
    "t_f; t_p; t_q" --frozen text encoder--> (B, D) +--> text_linear2          --> (B, T) -+-> time term
                                                    +--> text_linear           --> (B, C0)    text token

* the **time term** (B, T) is added to the UNet's time embedding, so every ResNet block of the
  UNet sees the reward ("add the reward condition after each block", eq. 3);
* the **reward tokens** (B, 2, C0) = [score token, text token] are the keys/values of the
  *reward encoder* (eq. 2): one BERT-style cross-attention layer right after ``conv_in`` whose
  queries are the latent pixels, added back onto the latent as a residual.

C0 (the UNet's first block width), T (its time-embedding width) and D (the text encoder's) come
from configs (:meth:`MultiRewardCondition.from_unet_config`). At SD 1.5 sizes (320 / 1280 / 768)
the parameters are the authors' (same names and shapes): their UNet imports key for key
(``core.authors_import``). Two additions over the release:

* **Identity initialisation.** ``add_embedding.linear_2``, ``text_linear2`` and
  ``proj_deal.proj_out`` start at zero (ControlNet's "zero convolution"), so a freshly added
  module leaves a pretrained InstructPix2Pix UNet's output exactly unchanged.
* **A learned null reward** (``null_tokens`` (2, C0), ``null_time`` (T)) replaces the reward's
  tokens and time term where ``drop_mask`` is set: with reward dropout in training, it makes
  classifier-free guidance over rewards possible (``reward_guidance_scale`` in the pipeline).

The reward text embedding is an input, not computed inside: the text encoder is the pipeline's
frozen one, and a trainer can precompute and cache :func:`~core.text_encoding.encode_reward_text`
outputs. The reward encoder's BERT layer is :mod:`core.reward_encoder`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from core.reward_encoder import (
    BertCrossLayer,
    RewardProjection,
    largest_divisor_at_most,
    reward_encoder_residual,
)
from core.text_encoding import TEXT_MODES, TEXT_SEPARATOR, encode_reward_text, join_reward_texts


class MultiRewardCondition(ModelMixin, ConfigMixin):
    """Rewards -> :class:`RewardCondition`, plus the reward encoder applied after ``conv_in``.

    Submodule names are the authors' (``add_embedding``, ``add_embedding2``, ``text_linear``,
    ``text_linear2``, ``proj_deal``, ``ca``); ``null_tokens`` / ``null_time`` are ours.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        block_channels: int = 320,  # C0: width of the UNet's first block (conv_in output)
        time_embed_dim: int = 1280,  # T: width of the UNet's time embedding
        text_embed_dim: int = 768,  # D: width of the frozen text encoder's output
        num_scores: int = 3,  # following, preserving, quality
        score_embed_dim: int = 256,  # sinusoid width per score (authors: 256 -> 768 total)
        flip_sin_to_cos: bool = True,  # sinusoid layout, taken from the UNet config
        freq_shift: float = 0.0,  # sinusoid frequency shift, taken from the UNet config
        num_heads: int = 8,  # reward-encoder attention heads (authors: 8)
        intermediate_size: int | None = None,  # reward-encoder MLP width; None -> C0 (authors)
        norm_num_groups: int = 32,  # GroupNorm groups of proj_deal.norm (authors: 32)
        norm_eps: float = 1e-6,  # GroupNorm eps (authors: 1e-6)
        layer_norm_eps: float = 1e-12,  # BERT LayerNorm eps (authors: 1e-12)
        attention_dropout: float = 0.0,  # authors trained with 0.1; 0 keeps inference exact
        hidden_dropout: float = 0.0,  # authors trained with 0.1
        text_mode: str = "pooled",  # "pooled": one text token; "sequence": one per text token
        empty_text: str = "",  # stands in for an empty failure text ("None" for authors' weights)
        identity_init: bool = True,  # zero the output layers so a fresh module changes nothing
    ):
        super().__init__()
        if text_mode not in TEXT_MODES:
            raise ValueError(f"text_mode must be one of {TEXT_MODES}, got {text_mode!r}.")
        c0, t, d = block_channels, time_embed_dim, text_embed_dim
        s = num_scores * score_embed_dim
        self.add_time_proj = Timesteps(score_embed_dim, flip_sin_to_cos, freq_shift)  # no params
        self.add_embedding = TimestepEmbedding(s, t)  # 768 -> T -> T, into the time embedding
        self.add_embedding2 = TimestepEmbedding(s, c0)  # 768 -> C0 -> C0, the score token
        self.text_linear = nn.Linear(d, c0)  # the text token
        self.text_linear2 = nn.Linear(d, t)  # into the time embedding
        self.proj_deal = RewardProjection(c0, norm_num_groups, norm_eps)
        dropout = (attention_dropout, hidden_dropout)
        self.ca = BertCrossLayer(c0, num_heads, intermediate_size or c0, layer_norm_eps, *dropout)
        # The learned null reward: replaces [score token, text token(s)] and the time term.
        self.null_tokens = nn.Parameter(torch.randn(2, c0) * 0.02)
        self.null_time = nn.Parameter(torch.zeros(t))
        self.gradient_checkpointing = False
        if identity_init:
            self.zero_output_layers()

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_unet_config(
        cls, unet_config: Mapping[str, Any], text_embed_dim: int, **overrides: Any
    ) -> MultiRewardCondition:
        """Sizes from a ``UNet2DConditionModel`` config (a dict or ``unet.config``)."""
        c0 = int(unet_config["block_out_channels"][0])
        kind = unet_config.get("time_embedding_type", "positional")
        t = unet_config.get("time_embedding_dim") or c0 * (2 if kind == "fourier" else 4)
        kw: dict[str, Any] = dict(
            block_channels=c0,
            time_embed_dim=int(t),
            text_embed_dim=int(text_embed_dim),
            flip_sin_to_cos=bool(unet_config.get("flip_sin_to_cos", True)),
            freq_shift=float(unet_config.get("freq_shift", 0)),
            num_heads=largest_divisor_at_most(c0, 8),
            norm_num_groups=largest_divisor_at_most(c0, 32),
        )
        return cls(**(kw | overrides))

    @torch.no_grad()
    def zero_output_layers(self) -> None:
        """Zero the layers whose outputs reach the UNet, making the module an exact identity."""
        for layer in (self.add_embedding.linear_2, self.text_linear2, self.proj_deal.proj_out):
            layer.weight.zero_()
            layer.bias.zero_()
        self.null_time.zero_()

    # -- rewards -> condition ----------------------------------------------------------------
    def encode_scores(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """scores (B, 3) -> (time term (B, T), score token (B, C0))."""
        b = scores.shape[0]
        emb = self.add_time_proj(scores.reshape(-1))  # (B*3, 256) float32, raw scores
        emb = emb.reshape(b, -1).to(self.add_embedding.linear_1.weight.dtype)  # (B, 768)
        return self.add_embedding(emb), self.add_embedding2(emb)

    def forward(
        self,
        scores: torch.Tensor,
        text_embeds: torch.Tensor,
        drop_mask: torch.Tensor | None = None,
    ) -> RewardCondition:
        """Rewards -> :class:`RewardCondition`.

        scores: (B, 3) in [0, 5], raw values (they enter the sinusoid like timesteps).
        text_embeds: (B, D) pooled or (B, L, D) sequence embedding of the joined failure texts
            (:func:`encode_reward_text`); a batch of 1 is broadcast.
        drop_mask: optional (B,) bool; True puts the learned null reward in that sample's place
            (reward dropout in training, the null branch of reward guidance).
        """
        n = self.config.num_scores
        if scores.ndim != 2 or scores.shape[1] != n:
            raise ValueError(f"scores must have shape (batch, {n}), got {tuple(scores.shape)}.")
        b = scores.shape[0]
        want_ndim = 2 if self.config.text_mode == "pooled" else 3
        if text_embeds.ndim != want_ndim or text_embeds.shape[-1] != self.config.text_embed_dim:
            raise ValueError(
                f"text_embeds must have {want_ndim} dims ending in {self.config.text_embed_dim} for "
                f"text_mode={self.config.text_mode!r}, got {tuple(text_embeds.shape)}."
            )
        if text_embeds.shape[0] not in (1, b):
            raise ValueError(
                f"text_embeds has batch {text_embeds.shape[0]} but scores have batch {b}."
            )
        text_embeds = text_embeds.to(self.text_linear.weight.dtype)
        score_time, score_token = self.encode_scores(scores)  # (B, T), (B, C0)
        if text_embeds.ndim == 2:
            text_time = self.text_linear2(text_embeds)  # (B, T)
            text_tokens = self.text_linear(text_embeds)[:, None]  # (B, 1, C0)
        else:  # sequence: one token per text position, the time term from their mean
            text_time = self.text_linear2(text_embeds.mean(dim=1))  # (B, T)
            text_tokens = self.text_linear(text_embeds)  # (B, L, C0)
        time_emb = score_time + text_time
        tokens = torch.cat([score_token[:, None], text_tokens.expand(b, -1, -1)], dim=1)
        if drop_mask is not None:
            time_emb, tokens = self._apply_null(time_emb, tokens, drop_mask)
        return RewardCondition(time_emb, tokens)

    def _apply_null(
        self, time_emb: torch.Tensor, tokens: torch.Tensor, drop_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b = time_emb.shape[0]
        if drop_mask.shape != (b,):
            raise ValueError(f"drop_mask must have shape ({b},), got {tuple(drop_mask.shape)}.")
        m = drop_mask.to(device=time_emb.device, dtype=torch.bool)
        null_tokens = self._null_tokens(tokens.shape[1], time_emb.dtype)  # (N, C0)
        # torch.where keeps every parameter in the graph (DDP sees no unused parameters).
        time_emb = torch.where(m[:, None], self.null_time.to(time_emb.dtype), time_emb)
        tokens = torch.where(m[:, None, None], null_tokens, tokens)
        return time_emb, tokens

    def _null_tokens(self, n: int, dtype: torch.dtype) -> torch.Tensor:
        # [null score token, null text token repeated for every text position]
        nt = self.null_tokens.to(dtype)
        return torch.cat([nt[:1], nt[1:].expand(n - 1, -1)])  # (N, C0)

    # -- the reward encoder (applied to the conv_in output) -----------------------------------
    def reward_encoder(self, hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """hidden (B, C0, H, W), tokens (B, N, C0) -> hidden + proj_out(CA(proj_in(norm(hidden))))."""
        return reward_encoder_residual(self.proj_deal, self.ca, hidden, tokens)


@dataclass
class RewardCondition:
    """What the UNet's hooks inject (:mod:`core.mrc_unet`): ``time_emb`` (B, T) is added to the
    time embedding, ``tokens`` (B, N, C0) are the keys/values of the reward encoder (N = 2 for
    pooled reward text)."""

    time_emb: torch.Tensor  # (B, T)
    tokens: torch.Tensor  # (B, N, C0)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = [  # the reward encoder's layers and the reward-text functions are re-exported
    "BertCrossLayer",
    "MultiRewardCondition",
    "RewardCondition",
    "RewardProjection",
    "TEXT_MODES",
    "TEXT_SEPARATOR",
    "count_parameters",
    "encode_reward_text",
    "join_reward_texts",
    "largest_divisor_at_most",
]
