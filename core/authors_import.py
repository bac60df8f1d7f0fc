"""Import the authors' released stage-2 UNet (``Gstar666/Reward-InsPix2Pix``) onto ours.

Their UNet is a fork of diffusers' ``UNet2DConditionModel`` with the MRC layers added as
attributes of the UNet itself. Its state dict is therefore the stock UNet's keys plus these:

    add_embedding.linear_{1,2}   768 -> 1280 -> 1280   score MLP into the time embedding
    add_embedding2.linear_{1,2}  768 -> 320 -> 320     score MLP -> score token
    text_linear                  768 -> 320            reward text -> text token
    text_linear2                 768 -> 1280           reward text into the time embedding
    proj_deal.norm               GroupNorm(32, 320)    reward encoder in/out projections
    proj_deal.proj_{in,out}      1x1 conv 320 -> 320
    ca.attention.self.{query,key,value}, ca.attention.output.{dense,LayerNorm},
    ca.hidden_intermediate.dense, ca.output.{dense,LayerNorm}   the BERT cross layer, 8 heads

(``add_time_proj`` is the parameter-free sinusoid.) Our :class:`~core.mrc.MultiRewardCondition`
uses the same names, so the mapping is the identity on these keys: stock keys load into a stock
``UNet2DConditionModel``, MRC keys into the reward module, every key is consumed, none may be
missing, shapes must match. Our ``null_tokens`` / ``null_time`` have no counterpart (the authors
trained without reward dropout); they keep their initial values, so reward guidance != 1 is not
meaningful with these weights.

The authors' evaluation (``eval.py``) encodes the reward text ``"None; None; None"`` for a
request without failure texts, so imports set ``empty_text="None"``: empty texts in our API then
reproduce their inference exactly. Their evaluation uses Euler-Ancestral, 1.5 image guidance.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.model_loading_utils import load_state_dict

from core.mrc import MultiRewardCondition
from core.pipeline import MRCInstructPix2PixPipeline
from core.sampling import make_scheduler

logger = logging.getLogger(__name__)

# Top-level attribute names of the authors' MRC layers inside their UNet.
AUTHORS_MRC_MODULES = ("add_embedding", "add_embedding2", "text_linear", "text_linear2",
                       "proj_deal", "ca")  # fmt: skip
# Parameters that exist only in our module (not in the release).
OURS_ONLY = ("null_tokens", "null_time")
# Their UNet hard-codes the add-embedding; a stock UNet must not build its own from these.
_CONFLICTING_CONFIG = ("addition_embed_type", "addition_time_embed_dim",
                       "projection_class_embeddings_input_dim")  # fmt: skip


@dataclass
class ImportReport:
    """What the import consumed: every key of the authors' state dict lands in ``unet_keys``
    or ``mrc_keys``; ``new_keys`` are ours alone and kept at their initial values."""

    unet_keys: list[str] = field(default_factory=list)
    mrc_keys: list[str] = field(default_factory=list)
    new_keys: list[str] = field(default_factory=list)

    @property
    def consumed(self) -> int:
        return len(self.unet_keys) + len(self.mrc_keys)


def is_mrc_key(key: str) -> bool:
    return key.split(".", 1)[0] in AUTHORS_MRC_MODULES


def split_state_dict(
    state_dict: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The authors' UNet state dict -> (stock UNet keys, MRC keys); names are kept as they are."""
    unet_sd = {k: v for k, v in state_dict.items() if not is_mrc_key(k)}
    mrc_sd = {k: v for k, v in state_dict.items() if is_mrc_key(k)}
    return unet_sd, mrc_sd


def _load_strict(module: torch.nn.Module, sd: Mapping[str, torch.Tensor], what: str,
                 allow_missing: tuple[str, ...] = ()) -> list[str]:  # fmt: skip
    """Load ``sd`` into ``module``; raise ValueError on any missing, unexpected or mis-shaped key."""
    own = module.state_dict()
    unexpected = sorted(set(sd) - set(own))
    missing = sorted(k for k in set(own) - set(sd) if k not in allow_missing)
    shapes = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(sd) & set(own))
        if tuple(sd[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    if unexpected:
        problems.append(
            f"unexpected keys {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}"
        )
    if missing:
        problems.append(f"missing keys {missing[:10]}{' ...' if len(missing) > 10 else ''}")
    if shapes:
        problems.append("shape mismatches " + "; ".join(shapes[:10]))
    if problems:
        raise ValueError(f"The {what} weights do not match the model: " + ", ".join(problems) + ".")
    module.load_state_dict(dict(sd), strict=False)
    return sorted(sd)


def reward_module_from_authors(
    mrc_state_dict: Mapping[str, torch.Tensor], unet_config: Mapping[str, Any], **overrides: Any
) -> tuple[MultiRewardCondition, ImportReport]:
    """Build our reward module for ``unet_config`` and load the authors' MRC keys into it."""
    if "text_linear.weight" not in mrc_state_dict:
        raise ValueError(
            "The state dict has no 'text_linear.weight': it is not an MRC stage-2 UNet "
            "(a stage-1 InstructPix2Pix UNet loads with MRCInstructPix2PixPipeline.from_pretrained)."
        )
    text_dim = int(mrc_state_dict["text_linear.weight"].shape[1])
    kw = dict(num_heads=8, norm_num_groups=32, empty_text="None")  # the release's constants
    kw.update(overrides)
    module = MultiRewardCondition.from_unet_config(unet_config, text_dim, **kw)
    report = ImportReport()
    report.mrc_keys = _load_strict(module, mrc_state_dict, "MRC", allow_missing=OURS_ONLY)
    report.new_keys = list(OURS_ONLY)
    return module.eval(), report


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A UNet folder (single or sharded safetensors/bin) or one weights file -> state dict."""
    path = Path(path)
    if path.is_file():
        return dict(load_state_dict(str(path)))
    if not path.is_dir():
        raise ValueError(f"{path} is neither a weights file nor a folder.")
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
        if (path / name).is_file():
            return dict(load_state_dict(str(path / name)))
    for index in ("diffusion_pytorch_model.safetensors.index.json",
                  "diffusion_pytorch_model.bin.index.json"):  # fmt: skip
        if (path / index).is_file():
            shards = sorted(set(json.loads((path / index).read_text())["weight_map"].values()))
            sd: dict[str, torch.Tensor] = {}
            for shard in shards:
                sd.update(load_state_dict(str(path / shard)))
            return sd
    raise ValueError(f"No diffusion_pytorch_model weights found in {path}.")


def stock_unet_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The authors' UNet config with the keys their fork ignored neutralised for a stock UNet."""
    cfg = {k: v for k, v in config.items() if not k.startswith("_")}
    for key in _CONFLICTING_CONFIG:
        if cfg.get(key) is not None:
            logger.warning("Ignoring %s=%r from the authors' UNet config (their fork hard-codes "
                           "the reward embedding).", key, cfg[key])  # fmt: skip
        cfg[key] = None
    return cfg


def load_authors_unet(
    unet_dir: str | Path,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    torch_dtype: torch.dtype | None = None,
) -> tuple[UNet2DConditionModel, MultiRewardCondition, ImportReport]:
    """The authors' ``unet`` folder (``config.json`` + weights) -> stock UNet + our module.

    ``state_dict`` may be given to skip reading the weights from ``unet_dir``.
    """
    unet_dir = Path(unet_dir)
    config_file = unet_dir / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{config_file} not found: pass the authors' stage-2 'unet' folder.")
    config = stock_unet_config(json.loads(config_file.read_text()))
    sd = dict(state_dict) if state_dict is not None else read_state_dict(unet_dir)
    unet_sd, mrc_sd = split_state_dict(sd)
    unet = UNet2DConditionModel.from_config(config)
    report = ImportReport()
    report.unet_keys = _load_strict(unet, unet_sd, "UNet")
    module, mrc_report = reward_module_from_authors(mrc_sd, unet.config)
    report.mrc_keys, report.new_keys = mrc_report.mrc_keys, mrc_report.new_keys
    if torch_dtype is not None:
        torch.nn.Module.to(unet, dtype=torch_dtype)
        torch.nn.Module.to(module, dtype=torch_dtype)
    logger.info("Imported %d UNet and %d MRC tensors; %s are new (untrained null reward).",
                len(report.unet_keys), len(report.mrc_keys), report.new_keys)  # fmt: skip
    return unet.eval(), module, report


def load_authors_pipeline(path: str | Path, torch_dtype: torch.dtype | None = None):
    """The authors' stage-2 pipeline folder (``vae``, ``text_encoder``, ``tokenizer``, ``unet``,
    optionally ``scheduler``) -> :class:`~core.pipeline.MRCInstructPix2PixPipeline`.

    The scheduler is Euler-Ancestral on the folder's training schedule, as in their evaluation.
    """
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTokenizer

    path = Path(path)
    for sub in ("vae", "text_encoder", "tokenizer", "unet"):
        if not (path / sub).is_dir():
            raise ValueError(f"{path / sub} is missing; pass the authors' stage-2 pipeline folder.")
    unet, module, _ = load_authors_unet(path / "unet", torch_dtype=torch_dtype)
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae", dtype=torch_dtype)
    text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", dtype=torch_dtype)
    tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")
    sched_cfg = path / "scheduler" / "scheduler_config.json"
    config = json.loads(sched_cfg.read_text()) if sched_cfg.is_file() else None
    scheduler = make_scheduler("euler_ancestral", config)
    return MRCInstructPix2PixPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=scheduler, reward_module=module,
    )  # fmt: skip


__all__ = [
    "AUTHORS_MRC_MODULES",
    "ImportReport",
    "is_mrc_key",
    "load_authors_pipeline",
    "load_authors_unet",
    "read_state_dict",
    "reward_module_from_authors",
    "split_state_dict",
    "stock_unet_config",
]
