"""The reward encoder: one BERT-style cross-attention layer from latent pixels to reward tokens.

Paper eq. 2 and the authors' release. Applied right after the UNet's ``conv_in``, the reward
encoder lets every latent pixel attend to the reward tokens (score token, text token(s)) and
adds the result back as a residual (:func:`reward_encoder_residual`)::

    hidden (B, C0, H, W) --proj_deal.norm (GroupNorm)--> proj_in (1x1) --> x (B, HW, C0)
    x --ca: cross-attention (queries x, keys/values tokens (B, N, C0)), post-LN,
          GELU MLP, post-LN--> proj_out (1x1) --> + hidden

Module and parameter names are the authors' (``proj_deal.{norm,proj_in,proj_out}``,
``ca.attention.self.{query,key,value}``, ``ca.attention.output.{dense,LayerNorm}``,
``ca.hidden_intermediate.dense``, ``ca.output.{dense,LayerNorm}``), so their weights load key
for key; :class:`core.mrc.MultiRewardCondition` holds ``proj_deal`` and ``ca`` at its top level.

**Folded attention.** With N reward tokens and h heads, when N*h <= C0 (always for pooled text:
2*8 = 16) the per-pixel query and output projections are folded into the tiny keys and values
(:meth:`CrossAttention._folded`): O(HW*C0*N*h) instead of O(HW*C0^2), the same function (tested
against the textbook form, values and gradients). The sequence text mode uses PyTorch's SDPA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def reward_encoder_residual(
    proj: RewardProjection, layer: BertCrossLayer, hidden: torch.Tensor, tokens: torch.Tensor
) -> torch.Tensor:
    """hidden (B, C0, H, W), tokens (B, N, C0) -> hidden + proj_out(CA(proj_in(norm(hidden))))."""
    b, c, h, w = hidden.shape
    x = proj.norm(hidden).permute(0, 2, 3, 1).reshape(b, h * w, c)  # (B, HW, C0)
    # The 1x1 convolutions as linear layers on the token layout: no NCHW round trips.
    x = F.linear(x, proj.proj_in.weight.view(c, c), proj.proj_in.bias)
    x = layer(x, tokens.to(x.dtype))  # (B, HW, C0)
    x = F.linear(x, proj.proj_out.weight.view(c, c), proj.proj_out.bias)
    return hidden + x.view(b, h, w, c).permute(0, 3, 1, 2)  # (B, C0, H, W)


def largest_divisor_at_most(n: int, limit: int) -> int:
    """The largest d <= limit dividing n (GroupNorm groups / attention heads for odd widths)."""
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


class RewardProjection(nn.Module):
    """``proj_deal``: GroupNorm + 1x1 conv into token space, and the 1x1 conv back out."""

    def __init__(self, channels: int, groups: int, eps: float):
        super().__init__()
        if channels % groups:
            raise ValueError(
                f"block_channels ({channels}) must be divisible by norm_num_groups ({groups})."
            )
        self.norm = nn.GroupNorm(groups, channels, eps=eps, affine=True)
        self.proj_in = nn.Conv2d(channels, channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)


class BertCrossLayer(nn.Module):
    """One transformer encoder block whose attention is cross-attention (``ca.*`` keys)."""

    def __init__(
        self, dim: int, num_heads: int, hidden: int, eps: float, attn_dropout: float, dropout: float
    ):
        super().__init__()
        self.attention = CrossAttention(dim, num_heads, eps, attn_dropout, dropout)
        self.hidden_intermediate = _Intermediate(dim, hidden)
        self.output = _DenseNorm(hidden, dim, eps, dropout)

    def forward(self, x: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        a = self.attention(x, kv)  # (B, HW, C)
        return self.output(self.hidden_intermediate(a), a)


class CrossAttention(nn.Module):
    """BERT's attention sublayer (``ca.attention``): multi-head cross-attention, then the
    post-norm output (``LayerNorm(dense(context) + x)``)."""

    def __init__(self, dim: int, num_heads: int, eps: float, attn_dropout: float, dropout: float):
        super().__init__()
        self.self = _CrossSelfAttention(dim, num_heads, attn_dropout)
        self.output = _DenseNorm(dim, dim, eps, dropout)

    def forward(self, x: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        """``LayerNorm(dense(attention(x, kv)) + x)``, x (B, HW, C), kv (B, N, C)."""
        h, n, c = self.self.num_heads, kv.shape[1], x.shape[2]
        if n * h <= c:  # few reward tokens: the folded form below does fewer FLOPs
            return self._folded(x, kv)
        return self.output(self.self(x, kv), x)

    def _folded(self, x: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        """The same function with the per-pixel query and output projections folded into the
        (tiny) keys and values: O(HW * C * N * heads) instead of O(HW * C^2).

        score[p, n, h] = (Wq_h x_p + bq_h) . k_nh / sqrt(d)  =  x_p . K'_nh + b'_nh
        dense(ctx)_p   = sum_nh prob[p, n, h] (Wd_h v_nh) + bd  =  prob_p . V'' + bd
        """
        sa, out = self.self, self.output
        b, lq, c = x.shape
        h, n = sa.num_heads, kv.shape[1]
        d = c // h
        k = sa.key(kv).view(b, n, h, d) * d**-0.5  # (B, N, h, d), scaled
        v = sa.value(kv).view(b, n, h, d)
        k_x = torch.einsum("bnhd,hdc->bnhc", k, sa.query.weight.view(h, d, c))  # (B, N, h, C)
        k_b = torch.einsum("bnhd,hd->bnh", k, sa.query.bias.view(h, d))  # (B, N, h)
        v_o = torch.einsum("bnhd,chd->bnhc", v, out.dense.weight.view(c, h, d))  # (B, N, h, C)
        # scores (B, N*h, HW): pixels innermost, so the softmax over N is vectorised over them
        scores = torch.baddbmm(k_b.reshape(b, n * h, 1), k_x.reshape(b, n * h, c), x.mT)
        prob = scores.view(b, n, h * lq).float().softmax(dim=1).to(x.dtype)
        if self.training and sa.dropout:
            prob = F.dropout(prob, sa.dropout)
        prob = prob.view(b, n * h, lq).mT  # (B, HW, N*h)
        attn = torch.baddbmm(out.dense.bias, prob, v_o.reshape(b, n * h, c))  # (B, HW, C)
        return out.LayerNorm(out.dropout(attn) + x)  # (B, HW, C)


class _CrossSelfAttention(nn.Module):
    """Multi-head attention, queries from the latent pixels, keys/values from the reward tokens."""

    def __init__(self, dim: int, num_heads: int, dropout: float):
        super().__init__()
        if dim % num_heads:
            raise ValueError(
                f"block_channels ({dim}) must be divisible by num_heads ({num_heads}); use "
                "MultiRewardCondition.from_unet_config to pick a valid head count."
            )
        self.num_heads, self.dropout = num_heads, dropout
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        """The textbook form: context (B, HW, C) = softmax(q k^T / sqrt(d)) v per head."""
        b, lq, c = x.shape  # x (B, HW, C), kv (B, N, C)
        h = self.num_heads
        q = self.query(x).view(b, lq, h, c // h).transpose(1, 2)  # (B, h, HW, C/h)
        k = self.key(kv).view(b, -1, h, c // h).transpose(1, 2)  # (B, h, N, C/h)
        v = self.value(kv).view(b, -1, h, c // h).transpose(1, 2)
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        return out.transpose(1, 2).reshape(b, lq, c)


class _DenseNorm(nn.Module):
    """``LayerNorm(dropout(dense(x)) + residual)``: BERT's post-norm output sublayer."""

    def __init__(self, dim_in: int, dim: int, eps: float, dropout: float):
        super().__init__()
        self.dense = nn.Linear(dim_in, dim)
        self.LayerNorm = nn.LayerNorm(dim, eps=eps)  # noqa: N815 -- the authors' key name
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class _Intermediate(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.dense = nn.Linear(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))  # exact (erf) GELU, as the authors' BERT layer
