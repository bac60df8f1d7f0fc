"""Starting from any Stable Diffusion checkpoint: what a training stage can start from.

:func:`check_model_for_stage` reads a pipeline's VAE / UNet / text-encoder configs (a local
folder or a hub id, no weights) and refuses, with the reason, a checkpoint the requested stage
cannot train; :func:`widen_conv_in` turns a text-to-image UNet (C input channels) into an
InstructPix2Pix one (2C, the new channels zero), as diffusers' ``train_instruct_pix2pix.py``
does. :func:`train.models.build_models` uses both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def _component_config(model: str, subfolder: str, revision: str = "") -> dict[str, Any] | None:
    """A component's config.json (folder or hub id) without loading weights; None if absent."""
    from diffusers import ConfigMixin

    local = Path(model)
    if local.is_dir():
        path = local / subfolder / "config.json"
        return ConfigMixin._dict_from_json_file(path) if path.is_file() else None

    class _Any(ConfigMixin):
        config_name = "config.json"

    try:
        return _Any.load_config(model, subfolder=subfolder, revision=revision or None)
    except OSError:
        return None


def check_model_for_stage(model: str, stage: int, revision: str = "") -> str:
    """Read ``model``'s VAE / UNet / text-encoder configs (no weights) and refuse, with the
    reason, a checkpoint that the requested stage cannot train. Returns what will happen to the
    UNet's input: ``"ok"``, or ``"widen"`` for a text-to-image UNet (C input channels) that
    stage 1 turns into an InstructPix2Pix UNet (2C), as diffusers' train_instruct_pix2pix.py does.
    """
    if model == "tiny":
        return "ok"
    if not Path(model).exists() and (model.startswith((".", "/", "~")) or model.count("/") > 1):
        raise ValueError(f"model {model!r} is neither a pipeline folder nor a hub id.")
    configs = {
        sub: _component_config(model, sub, revision) for sub in ("vae", "unet", "text_encoder")
    }
    missing = [sub for sub, c in configs.items() if c is None]
    if missing:
        raise ValueError(
            f"model {model!r} cannot be trained: it has no {', '.join(missing)} config "
            "(expected a Stable Diffusion or InstructPix2Pix pipeline folder or hub id with "
            "vae/, unet/ and text_encoder/ subfolders)."
        )
    vae, unet, text = configs["vae"], configs["unet"], configs["text_encoder"]
    c = int(vae.get("latent_channels", 4))
    c_in, c_out = int(unet.get("in_channels", 4)), int(unet.get("out_channels", 4))
    if c_out != c:
        raise ValueError(
            f"model {model!r}: its UNet predicts {c_out} channels but its VAE has {c} latent "
            "channels; these components do not belong together."
        )
    width = text.get("hidden_size") or (text.get("text_config") or {}).get("hidden_size")
    cross = unet.get("cross_attention_dim")
    if width and cross and not isinstance(cross, list) and int(cross) != int(width):
        raise ValueError(
            f"model {model!r}: its UNet attends to {cross}-wide text but its text encoder is "
            f"{width} wide; these components do not belong together."
        )
    if c_in == 2 * c:
        return "ok"
    if c_in == c:
        if stage == 1:
            return "widen"
        if stage == 2:
            raise ValueError(
                f"model {model!r} is a text-to-image model ({c} input channels): it has never "
                "seen an input image, and stage 2 fine-tunes an editing model. Train stage 1 "
                f"first (--stage 1 --model {model} widens its UNet to {2 * c} channels), then "
                "start stage 2 from that run's pipeline/ folder."
            )
        return "ok"  # stage 0 trains the VAE alone; stage 1 widens the UNet later
    raise ValueError(
        f"model {model!r}: its UNet takes {c_in} input channels, but training needs {2 * c} "
        f"(InstructPix2Pix: noisy latent + image latent, {c} each) or {c} (a text-to-image UNet, "
        "widened in stage 1). An inpainting or other special UNet cannot be used."
    )


@torch.no_grad()
def widen_conv_in(unet: Any, in_channels: int) -> Any:
    """Give ``unet`` a ``conv_in`` with ``in_channels`` inputs whose extra channels are zero.

    InstructPix2Pix's initialisation of a text-to-image UNet (diffusers' example does the same):
    the first ``C`` input channels keep their weights and bias, the new ones start at zero, so
    the widened UNet's output equals the original's whatever the image latent holds.
    """
    old = unet.conv_in
    if in_channels <= old.in_channels:
        raise ValueError(
            f"conv_in already takes {old.in_channels} channels; cannot widen to {in_channels}."
        )
    new = torch.nn.Conv2d(
        in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
        device=old.weight.device, dtype=old.weight.dtype,
    )  # fmt: skip
    new.weight.zero_()
    new.weight[:, : old.in_channels].copy_(old.weight)
    new.bias.copy_(old.bias)  # the peer leaves a fresh random bias here; copying keeps outputs
    unet.conv_in = new
    unet.register_to_config(in_channels=in_channels)
    return unet
