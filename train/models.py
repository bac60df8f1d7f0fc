"""The models of a run: frozen encoders, the trained UNet (+ reward module), the noise schedule.

Weights come from one of two places (``TrainConfig.model``):

* ``"tiny"``: fresh, seeded, Stable-Diffusion-shaped components from :mod:`core.tiny` (an
  ``AutoencoderKL``, a ``CLIPTextModel`` with its ``CLIPTokenizer``, an InstructPix2Pix
  ``UNet2DConditionModel`` and a scheduler), sized by ``tiny_config``;
* a pipeline folder or hub id, loaded with ``MRCInstructPix2PixPipeline.from_pretrained``: a
  stock InstructPix2Pix folder (``timbrooks/instruct-pix2pix`` layout, e.g. a stage-1 output)
  gets a fresh identity reward module, an MRC folder brings its own.
  A text-to-image Stable Diffusion checkpoint (C-channel UNet) is accepted by stage 1, which
  widens ``conv_in`` to 2C with zero new channels (:func:`train.starting_checkpoint.widen_conv_in`), as diffusers'
  ``train_instruct_pix2pix.py`` does; :func:`~train.starting_checkpoint.check_model_for_stage` reads the component configs
  first and refuses, with the reason, what a stage cannot train.

Stage 1 trains the UNet alone; stage 2 wraps it with the reward module in
:class:`~core.mrc_unet.MRCUNet` and trains both (``trainable="all"``) or the reward module only
(``"reward"``). VAE and text encoder are frozen in both. Stage 0 exists for models built from
scratch (the Shapes demo): it trains only the ``AutoencoderKL`` as an autoencoder, so that the
later stages have a VAE that can actually decode; its output folder is the ``model`` of stage 1/2. The prediction type and an optional beta
schedule override are written into the scheduler config, so the exported pipeline samples with
the same parameterisation it was trained with.

:func:`export_pipeline` writes the result: stage 1 in diffusers' stock
``StableDiffusionInstructPix2PixPipeline`` layout (loadable by diffusers itself, and by
``MRCInstructPix2PixPipeline.from_pretrained`` which adds an identity reward module), stage 2 as
an ``MRCInstructPix2PixPipeline`` folder with its ``reward_module``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDPMScheduler

from core.mrc import MultiRewardCondition
from core.mrc_unet import MRCUNet
from train.starting_checkpoint import check_model_for_stage, widen_conv_in


@dataclass
class Models:
    vae: Any  # AutoencoderKL, frozen
    text_encoder: Any  # CLIPTextModel, frozen
    tokenizer: Any
    unet: Any  # UNet2DConditionModel (trained)
    scheduler: Any  # the inference scheduler saved with the pipeline
    noise_scheduler: DDPMScheduler  # the training forward process (same betas)
    reward_module: MultiRewardCondition | None  # stage 2 only
    source: str  # where the weights came from, for the run report
    changes: tuple[str, ...] = ()  # what was done to the loaded weights (printed, reported)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def native_resolution(self) -> int:
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    def training_resolution(self, requested: int) -> int:
        """``requested`` (0: the UNet's native size), checked against the VAE's factor."""
        resolution = requested or self.native_resolution
        if resolution % self.vae_scale_factor:
            raise ValueError(
                f"resolution {resolution} is not a multiple of the VAE factor "
                f"{self.vae_scale_factor}."
            )
        return resolution

    def reward_text_mode(self, default: str) -> str:
        """The reward module's text mode (an MRC model's own), else ``default``."""
        rm = self.reward_module
        return rm.config.text_mode if rm is not None else default

    def trained_module(self, stage: int) -> torch.nn.Module:
        """What the optimizer sees: the VAE (stage 0), the UNet (stage 1) or MRCUNet."""
        if stage == 0:
            return AutoencoderStep(self.vae)
        if self.reward_module is None:
            return self.unet
        return MRCUNet(self.unet, self.reward_module)

    def encoder_hash(self) -> str:
        """A content hash of the frozen encoders and the tokenizer (part of the cache key)."""
        h = hashlib.sha256(b"mrc-train-encoders-v1")
        for module in (self.vae, self.text_encoder):
            h.update(type(module).__name__.encode())
            for name, t in sorted(module.state_dict().items()):
                h.update(name.encode())
                h.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
                h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        vocab = self.tokenizer.get_vocab()
        h.update(repr(sorted(vocab.items())).encode())
        h.update(repr(self.tokenizer.model_max_length).encode())
        return h.hexdigest()


class AutoencoderStep(torch.nn.Module):
    """Stage 0's trained module: encode, sample with the given noise, decode (one forward, so
    DDP sees it). Returns the reconstruction and the posterior's mean and log-variance."""

    def __init__(self, vae: Any):
        super().__init__()
        self.vae = vae

    def forward(self, pixels: torch.Tensor, eps: torch.Tensor):
        dist = self.vae.encode(pixels).latent_dist
        z = dist.mean + dist.std * eps  # (B, C, h, w)
        return self.vae.decode(z).sample, dist.mean, dist.logvar  # (B, 3, H, W), ...


# -- pixel space through a stock AutoencoderKL ----------------------------------------------------

PIXEL_WIDTH = 12  # VAE channels: per colour [x, -x, +M, -M], 3 GroupNorm groups of 4
_M, _B = 300.0, 20.0  # constant-channel magnitude, SiLU offset (see identity_vae)


def identity_vae(image_size: int) -> AutoencoderKL:
    """A stock ``AutoencoderKL`` whose weights make it the identity map: latents = RGB pixels.

    Pixel-space diffusion through the unchanged Stable Diffusion component types and pipeline.
    One level (downsample 1), 3 latent channels, ``scaling_factor`` 1, residual branches zeroed
    (a ResNet block with a zero ``conv2`` returns its input exactly). What remains is
    ``conv_in -> GroupNorm -> SiLU -> conv_out``, made transparent:

    * ``conv_in`` lifts each colour ``x`` into a group of four channels ``[x, -x, +M, -M]``, so the
      group's mean is exactly 0 and its variance ``(mean(x^2) + M^2) / 2``; a GroupNorm gain of
      ``M / sqrt(2)`` then returns ``x (1 + mean(x^2)/M^2)^(-1/2)``, within ``1/(2 M^2)`` of ``x``;
    * a GroupNorm bias of ``B`` moves ``x`` to where SiLU is the identity up to ``B e^-B``;
    * ``conv_out`` reads ``x + B`` back and subtracts ``B``; the encoder's log-variance is -30.

    Round trips are exact to ~1e-5 (tests check it): far below one 8-bit grey level.
    """
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        block_out_channels=(PIXEL_WIDTH,),
        layers_per_block=1,
        latent_channels=3,
        norm_num_groups=3,
        sample_size=image_size,
        scaling_factor=1.0,
        mid_block_add_attention=False,
    )
    with torch.no_grad():
        for p in vae.parameters():
            p.zero_()
        for m in vae.modules():
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.fill_(1.0)  # zero gains would be fine too; keep norms well-defined
        for coder in (vae.encoder, vae.decoder):
            for c in range(3):
                coder.conv_in.weight[4 * c, c, 1, 1] = 1.0  # centre tap: exact at borders
                coder.conv_in.weight[4 * c + 1, c, 1, 1] = -1.0
                coder.conv_in.bias[4 * c + 2] = _M
                coder.conv_in.bias[4 * c + 3] = -_M
                coder.conv_norm_out.weight[4 * c] = _M / math.sqrt(2.0)
                coder.conv_norm_out.bias[4 * c] = _B
                coder.conv_out.weight[c, 4 * c, 1, 1] = 1.0
                coder.conv_out.bias[c] = -_B
        vae.encoder.conv_out.bias[3:] = -30.0  # log-variance: std = e^-15
        vae.quant_conv.weight[:, :, 0, 0] = torch.eye(6)
        vae.post_quant_conv.weight[:, :, 0, 0] = torch.eye(3)
    return vae.eval()


def tiny_config_from(overrides: dict[str, Any], pixel_space: bool = False):
    from core.tiny import TinyConfig

    kw = {}
    for f in dataclasses.fields(TinyConfig):
        if f.name in overrides:
            v = overrides[f.name]
            kw[f.name] = tuple(v) if isinstance(v, list) else v
    bad = [w for w in kw.get("words", ()) if not isinstance(w, str)]
    if bad:
        raise ValueError(
            f"tiny_config.words must be strings; got {bad!r} (YAML reads unquoted on/no/yes/off "
            "as booleans: quote every word)."
        )
    if pixel_space:
        fixed = {"latent_channels": 3, "vae_channels": (PIXEL_WIDTH,)}
        clash = {k: kw[k] for k in fixed if k in kw and kw[k] != fixed[k]}
        if clash:
            raise ValueError(
                f"pixel_space fixes the VAE ({fixed}); remove {sorted(clash)} from tiny_config."
            )
        kw.update(fixed)
    return TinyConfig(**kw)


def _warn_schedule_changes(model: str, loaded: Any, overrides: dict[str, Any]) -> None:
    """Fine-tuning keeps a pipeline's noise schedule unless told otherwise; say so when told."""
    changed = {k: v for k, v in overrides.items() if loaded.get(k) != v}
    if changed:
        was = {k: loaded.get(k) for k in changed}
        warnings.warn(
            f"{model} was trained with {was}; this run trains it with {changed}. Its outputs "
            "will be wrong until the UNet has re-learned them: drop the flag to keep the "
            "pipeline's own setting.",
            stacklevel=3,
        )


def load_text_tower(folder: str | Path) -> tuple[Any, Any]:
    """The text tower and tokenizer of a ``CLIPModel`` folder (``python -m train.clip``), as a
    stock ``CLIPTextModel`` with exactly the CLIP's text weights."""
    from transformers import CLIPModel, CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"text_encoder {folder} is not a CLIP folder (no config.json); make one with "
            "'python -m train.clip' or point to a folder saved by CLIPModel.save_pretrained."
        )
    clip = CLIPModel.from_pretrained(str(folder))
    text = CLIPTextModel(clip.config.text_config)
    text.load_state_dict(clip.text_model.state_dict())
    return text.eval(), CLIPTokenizer.from_pretrained(str(folder))


def build_models(cfg: Any) -> Models:
    """Load or build the run's models according to ``cfg`` (a TrainConfig)."""
    from core.pipeline import MRCInstructPix2PixPipeline

    changes: list[str] = []
    if cfg.model == "tiny":
        from core.tiny import build_components

        tcfg = tiny_config_from(cfg.tiny_config, cfg.pixel_space)
        parts = build_components(tcfg, seed=cfg.model_seed)
        if cfg.text_encoder:
            parts["text_encoder"], parts["tokenizer"] = load_text_tower(cfg.text_encoder)
            width = parts["text_encoder"].config.hidden_size
            if width != tcfg.text_dim:
                raise ValueError(
                    f"text_encoder {cfg.text_encoder} is {width} wide but tiny_config.text_dim is "
                    f"{tcfg.text_dim}: set text_dim to {width} (the UNet's cross-attention width)."
                )
        if cfg.pixel_space:
            parts["vae"] = identity_vae(tcfg.image_size)
        reward_module = None
        space = "pixel space, " if cfg.pixel_space else ""
        text = f", text encoder {cfg.text_encoder}" if cfg.text_encoder else ""
        source = (
            f"tiny ({space}seed {cfg.model_seed}{text}): "
            f"{dataclasses.asdict(tcfg) | {'words': '...'}}"
        )
    else:
        plan = check_model_for_stage(cfg.model, cfg.stage, cfg.revision)  # before any weights
        hub = {k: v for k, v in (("revision", cfg.revision), ("variant", cfg.variant)) if v}
        pipe = MRCInstructPix2PixPipeline.from_pretrained(cfg.model, **hub)
        if plan == "widen":
            c = pipe.unet.config.in_channels
            widen_conv_in(pipe.unet, 2 * c)
            changes.append(
                f"UNet conv_in widened from {c} to {2 * c} input channels (text-to-image -> "
                f"InstructPix2Pix): channels {c}..{2 * c - 1} (the image latent) start at zero"
            )
        parts = dict(
            vae=pipe.vae,
            text_encoder=pipe.text_encoder,
            tokenizer=pipe.tokenizer,
            unet=pipe.unet,
            scheduler=pipe.scheduler,
        )
        index = MRCInstructPix2PixPipeline.load_config(  # model_index.json
            cfg.model, **({"revision": cfg.revision} if cfg.revision else {})
        )
        has_module = (index.get("reward_module") or [None])[0] is not None
        reward_module = pipe.reward_module if has_module else None
        source = cfg.model + "".join(f" ({k} {v})" for k, v in hub.items())
        source += "".join(f"; {c}" for c in changes)
    if cfg.stage == 2 and reward_module is None:
        torch.manual_seed(cfg.model_seed + 3)
        reward_module = MultiRewardCondition.from_unet_config(
            parts["unet"].config,
            parts["text_encoder"].config.hidden_size,
            text_mode=cfg.reward_text_mode,
        )
    if cfg.stage in (0, 1):
        reward_module = None

    sched = parts["scheduler"]
    overrides: dict[str, Any] = {}
    if cfg.prediction_type:
        overrides["prediction_type"] = cfg.prediction_type
    if cfg.beta_schedule:
        overrides["beta_schedule"] = cfg.beta_schedule
    if cfg.beta_start:
        overrides["beta_start"] = cfg.beta_start
    if cfg.beta_end:
        overrides["beta_end"] = cfg.beta_end
    if cfg.model != "tiny":
        _warn_schedule_changes(cfg.model, sched.config, overrides)
    scheduler = type(sched).from_config(sched.config, **overrides)
    noise_scheduler = DDPMScheduler.from_config(sched.config, **overrides)

    vae, text_encoder = parts["vae"], parts["text_encoder"]
    for frozen in (vae, text_encoder):
        frozen.requires_grad_(False).eval()
    unet = parts["unet"]
    unet.train()
    if cfg.stage == 0:
        unet.requires_grad_(False).eval()
        vae.train()
    if reward_module is not None:
        reward_module.train()
    return Models(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=parts["tokenizer"],
        unet=unet,
        scheduler=scheduler,
        noise_scheduler=noise_scheduler,
        reward_module=reward_module,
        source=source,
        changes=tuple(changes),
    )


def set_trainable(models: Models, stage: int, trainable: str) -> list[torch.nn.Parameter]:
    """Freeze/unfreeze per stage; returns the parameters the optimizer updates."""
    if stage == 0:
        models.vae.requires_grad_(True)
        return list(models.vae.parameters())
    models.unet.requires_grad_(stage == 1 or trainable == "all")
    if models.reward_module is not None:
        models.reward_module.requires_grad_(True)
    params = [p for p in models.unet.parameters() if p.requires_grad]
    if models.reward_module is not None:
        params += list(models.reward_module.parameters())
    return params


def move_frozen(
    modules: list[torch.nn.Module], device: Any, dtype: torch.dtype
) -> list[dict[str, torch.Tensor]]:
    """Move the frozen encoders to ``device`` in ``dtype``; returns copies of their float32
    weights when ``dtype`` is a half precision, for :func:`restore_float32` before export."""
    saved = []
    if dtype != torch.float32:
        saved = [{k: v.detach().cpu().clone() for k, v in m.state_dict().items()} for m in modules]
    for m in modules:  # nn.Module.to: no diffusers dtype warning
        torch.nn.Module.to(m, device=device, dtype=dtype)
    return saved


def restore_float32(modules: list[torch.nn.Module], saved: list[dict[str, torch.Tensor]]) -> None:
    """The exported pipeline holds the frozen encoders' float32 weights unchanged."""
    for m, weights in zip(modules, saved):
        torch.nn.Module.to(m, dtype=torch.float32)
        m.load_state_dict(weights)


@torch.no_grad()
def calibrate_scaling_factor(vae: Any, pixels: torch.Tensor) -> float:
    """SD's recipe: ``scaling_factor = 1 / std`` of the latents of training images, so that the
    scaled latents the UNet denoises have unit variance. Written into the VAE config."""
    was_training = vae.training
    vae.eval()
    z = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mean.float()
    vae.train(was_training)
    factor = float(1.0 / z.std().clamp_min(1e-6))
    vae.register_to_config(scaling_factor=factor)
    return factor


def build_pipeline(models: Models, mrc_unet: MRCUNet | None = None):
    """An ``MRCInstructPix2PixPipeline`` over the run's (live) modules, for validation.

    Pass the trainer's own ``mrc_unet`` wrapper in stage 2: a second wrapper around the same UNet
    would take over its reward hooks (the newest wrapper owns them).
    """
    from core.pipeline import MRCInstructPix2PixPipeline

    pipe = MRCInstructPix2PixPipeline(
        vae=models.vae,
        text_encoder=models.text_encoder,
        tokenizer=models.tokenizer,
        unet=models.unet,
        scheduler=models.scheduler,
        reward_module=models.reward_module,
    )
    if mrc_unet is not None:
        pipe.use_mrc_unet(mrc_unet)  # reuse the training wrapper (see docstring)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def export_pipeline(
    models: Models, path: str | Path, config: Any = None, report: dict | None = None
) -> Path:
    """Save the trained pipeline folder (see module docstring for the two layouts), with the
    run's settings (``training_config.yaml``) and data report (``training_data.json``)."""
    path = Path(path)
    if models.reward_module is None:
        from diffusers import StableDiffusionInstructPix2PixPipeline

        pipe = StableDiffusionInstructPix2PixPipeline(
            vae=models.vae,
            text_encoder=models.text_encoder,
            tokenizer=models.tokenizer,
            unet=models.unet,
            scheduler=models.scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    else:
        pipe = build_pipeline(models)
    pipe.save_pretrained(path)
    if config is not None:
        config.save(path / "training_config.yaml")
    if report is not None:
        (path / "training_data.json").write_text(json.dumps(report, indent=1, default=str))
    return path
