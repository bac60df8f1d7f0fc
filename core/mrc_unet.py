"""A stock diffusers ``UNet2DConditionModel`` conditioned on rewards, by hooks, not by a copy.

The authors forked diffusers' UNet file to add the reward path; we keep the stock class (stock
state-dict keys, every diffusers feature: attention processors, LoRA, gradient checkpointing,
``from_pretrained``) and inject the reward at the two places the method needs:

    sample --conv_in--> h --(hook) h + reward_encoder(h, tokens)--> down blocks ...
    timestep --time_proj--> time_embedding --(hook) emb + time_emb--> every ResNet block

Both hooks are ordinary ``register_forward_hook``s on ``unet.conv_in`` and
``unet.time_embedding``. :meth:`MRCUNet.forward` takes the reward raw, as the UNet's other
conditions (scores and the failure texts' embeddings), has the reward module
(:class:`~core.mrc.MultiRewardCondition`) turn it into a :class:`~core.mrc.RewardCondition`, and
sets that in a :class:`contextvars.ContextVar` for exactly the duration of the UNet call, where
the hooks read it. Outside such a call the hooks do nothing, so ``unet`` used directly
stays the stock model; the context variable makes concurrent calls from several threads safe and
keeps the wrapper picklable/deep-copyable (EMA copies, DDP).

Gradient checkpointing: ``mrc_unet.enable_gradient_checkpointing()`` (or the UNet's own) turns on
diffusers' block checkpointing and also checkpoints the reward encoder. Checkpoint the
:class:`MRCUNet` as a whole if you wrap it externally, never the inner ``unet`` alone: a
recomputation outside :meth:`MRCUNet.forward` would not see the reward.
"""

from __future__ import annotations

import contextvars
import weakref
from typing import Any

import torch
import torch.utils.checkpoint
from diffusers import UNet2DConditionModel
from torch import nn

from core.mrc import MultiRewardCondition, RewardCondition

# (wrapper, condition) of the MRCUNet call in progress in this thread / task, if any.
_ACTIVE: contextvars.ContextVar[tuple[MRCUNet, RewardCondition] | None] = contextvars.ContextVar(
    "mrc_active_reward", default=None
)


# The wrapper whose hooks a UNet carries (the newest one around it), held weakly both ways so
# neither the UNet nor the wrapper is kept alive by the registry.
_OWNERS: weakref.WeakKeyDictionary[UNet2DConditionModel, weakref.ref[MRCUNet]] = (
    weakref.WeakKeyDictionary()
)


def _owner(unet: UNet2DConditionModel) -> MRCUNet | None:
    ref = _OWNERS.get(unet)
    return ref() if ref is not None else None


def check_compatible(unet: UNet2DConditionModel, reward_module: MultiRewardCondition) -> None:
    """Raise ValueError when the module's widths do not fit the UNet's."""
    c0 = unet.conv_in.out_channels
    t = unet.time_embedding.linear_2.out_features
    cfg = reward_module.config
    if cfg.block_channels != c0 or cfg.time_embed_dim != t:
        raise ValueError(
            f"The reward module was built for block width {cfg.block_channels} and time-embedding "
            f"width {cfg.time_embed_dim}, but the UNet has {c0} and {t}. Build it with "
            "MultiRewardCondition.from_unet_config(unet.config, text_embed_dim)."
        )


class MRCUNet(nn.Module):
    """``unet`` + ``reward_module``; ``forward`` is the stock UNet forward plus the reward.

    Holds both as submodules, so ``parameters()`` / ``state_dict()`` cover everything a stage-2
    trainer optimises (keys ``unet.*`` are the stock UNet's, ``reward_module.*`` the MRC's).
    """

    def __init__(self, unet: UNet2DConditionModel, reward_module: MultiRewardCondition):
        super().__init__()
        check_compatible(unet, reward_module)
        self.unet = unet
        self.reward_module = reward_module
        previous = _owner(unet)
        if previous is not None:  # re-wrapping: the newest wrapper owns the hooks
            previous.detach_hooks()
        self._hook_handles = (
            unet.conv_in.register_forward_hook(self._conv_in_hook),
            unet.time_embedding.register_forward_hook(self._time_embedding_hook),
        )
        _OWNERS[unet] = weakref.ref(self)

    def __setstate__(self, state: dict) -> None:
        # A deep copy (EMA, DDP) or an unpickled wrapper: its UNet copy carries hooks bound to
        # this copy, so this copy owns them.
        super().__setstate__(state)
        if self._hook_handles:
            _OWNERS[self.unet] = weakref.ref(self)

    # -- hooks -------------------------------------------------------------------------------
    def _active_condition(self) -> RewardCondition | None:
        active = _ACTIVE.get()
        if active is None or active[0] is not self:
            return None
        return active[1]

    def _time_embedding_hook(self, module: nn.Module, args: Any, emb: torch.Tensor) -> Any:
        cond = self._active_condition()
        if cond is None:
            return None  # not inside MRCUNet.forward: stock behaviour
        return emb + cond.time_emb.to(emb.dtype)  # (B, T)

    def _conv_in_hook(self, module: nn.Module, args: Any, hidden: torch.Tensor) -> Any:
        cond = self._active_condition()
        if cond is None:
            return None
        tokens = cond.tokens
        encoder = self.reward_module.reward_encoder
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(encoder, hidden, tokens, use_reentrant=False)
        return encoder(hidden, tokens)  # (B, C0, H, W)

    @property
    def gradient_checkpointing(self) -> bool:
        return bool(
            self.reward_module.gradient_checkpointing or self.unet.is_gradient_checkpointing
        )

    def enable_gradient_checkpointing(self) -> None:
        self.unet.enable_gradient_checkpointing()
        self.reward_module.enable_gradient_checkpointing()

    def disable_gradient_checkpointing(self) -> None:
        self.unet.disable_gradient_checkpointing()
        self.reward_module.disable_gradient_checkpointing()

    @property
    def is_attached(self) -> bool:
        """Whether this wrapper's hooks are the ones installed on ``unet``."""
        return _owner(self.unet) is self

    def detach_hooks(self) -> None:
        """Remove the hooks; ``unet`` is then a plain stock UNet again."""
        if self.is_attached:
            for handle in self._hook_handles:
                handle.remove()
            self._hook_handles = ()
            del _OWNERS[self.unet]

    # -- forward -----------------------------------------------------------------------------
    @property
    def config(self) -> Any:
        return self.unet.config

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def device(self) -> torch.device:
        return self.unet.device

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        *,
        scores: torch.Tensor | None = None,
        reward_text_embeds: torch.Tensor | None = None,
        drop_mask: torch.Tensor | None = None,
        return_dict: bool = True,
        **unet_kwargs: Any,
    ) -> Any:
        """The stock UNet forward with the reward injected.

        The reward arrives raw, as the UNet's other conditions do (as SDXL's UNet takes its
        ``added_cond_kwargs``): ``scores`` (B, 3) in [0, 5] and ``reward_text_embeds`` (B, D) or
        (B, L, D), the frozen text encoder's embedding of the joined failure texts; the reward
        module turns them into a :class:`~core.mrc.RewardCondition` inside this call.
        ``drop_mask`` (B,) puts the learned null reward in a row's place (reward dropout in
        training, the null branch of reward guidance). A reward of batch 1 is broadcast to the
        sample batch. Other keyword arguments go to the UNet unchanged.
        """
        if scores is None or reward_text_embeds is None:
            raise ValueError(
                "MRCUNet needs the reward: pass `scores=` (B, 3) and `reward_text_embeds=`."
            )
        b = sample.shape[0]
        if scores.ndim == 2 and scores.shape[0] == 1 and b != 1:
            scores = scores.expand(b, -1)
        if scores.ndim == 2 and scores.shape[0] != b:
            raise ValueError(f"The reward has batch {scores.shape[0]} but the sample has {b}.")
        reward = self.reward_module(scores, reward_text_embeds, drop_mask)
        if not self.is_attached:
            raise RuntimeError(
                "This MRCUNet's hooks were removed (detach_hooks, or another MRCUNet wrapped the "
                "same UNet); create a new MRCUNet."
            )
        token = _ACTIVE.set((self, reward))
        try:
            return self.unet(
                sample, timestep, encoder_hidden_states, return_dict=return_dict, **unet_kwargs
            )
        finally:
            _ACTIVE.reset(token)


__all__ = ["MRCUNet", "check_compatible"]
