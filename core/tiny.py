"""Tiny, offline, Stable-Diffusion-shaped components: tests, benchmarks and the Shapes demo.

Everything here is built from code, never downloaded: a byte-level BPE ``CLIPTokenizer`` made from
a generated ``vocab.json`` / ``merges.txt`` (whole words of a given list become single tokens),
a ``CLIPTextModel``, an ``AutoencoderKL`` and an InstructPix2Pix ``UNet2DConditionModel``
(latent + image latent = 2x latent channels in), each with seeded weights. The same classes as
SD 1.5, so the pipeline, trainer and studio code paths are the real ones.

    cfg = TinyConfig()                       # 32 px images, 16x16 latents, ~1 M parameters
    parts = build_components(cfg, seed=0)    # vae, text_encoder, tokenizer, unet, scheduler
    pipe = MRCInstructPix2PixPipeline(**parts)
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

# Words that become single tokens by default: instruction and failure-text vocabulary.
DEFAULT_WORDS: tuple[str, ...] = tuple(
    """a an the of to and in on into with is are not no none make turn change add remove replace
    put give let it them this that color colour background foreground image picture photo object
    red green blue yellow purple orange pink white black gray grey brown cyan magenta
    circle square triangle star rectangle shape shapes small large big left right top bottom
    center middle instruction executed poorly partially unchanged changed unintended change
    detail details preserved lost noise noisy blurry blur artifacts artifact distorted lighting
    shadow quality low high edit edited wrong missing extra""".split()
)


@dataclass(frozen=True)
class TinyConfig:
    """Sizes of the tiny components (defaults: the fast test configuration)."""

    image_size: int = 32  # pixel size the UNet's sample_size is derived from
    vae_channels: tuple[int, ...] = (32, 64)  # AutoencoderKL block widths; factor 2**(n-1)
    latent_channels: int = 4  # as SD
    unet_channels: tuple[int, ...] = (32, 64)  # UNet block widths (C0 = first)
    unet_layers_per_block: int = 1
    # which UNet levels have cross-attention (others are plain ResNet blocks)
    unet_cross_attention: tuple[bool, ...] = (False, True)
    attention_head_dim: int = 8  # diffusers' name; the number of heads for SD-style UNets
    text_dim: int = 32  # CLIP hidden size = cross-attention width = reward text width
    text_layers: int = 2
    text_heads: int = 4
    text_intermediate: int = 64
    max_length: int = 77  # tokenizer.model_max_length, as SD
    words: tuple[str, ...] = field(default=DEFAULT_WORDS)  # single-token words

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae_channels) - 1)


def _groups(channels: Iterable[int], limit: int = 32) -> int:
    """Largest GroupNorm group count <= limit dividing every width."""
    g = 0
    for c in channels:
        g = math.gcd(g, c)
    return max(d for d in range(1, min(g, limit) + 1) if g % d == 0)


# -- tokenizer ---------------------------------------------------------------------------------


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP's reversible byte -> printable unicode table (the BPE base alphabet)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def write_tokenizer_files(directory: str | Path, words: Iterable[str] = DEFAULT_WORDS) -> Path:
    """Write ``vocab.json`` and ``merges.txt`` of a CLIP-style byte-level BPE.

    The vocabulary is the 256 byte symbols, each also with the end-of-word marker ``</w>``, the
    merges that assemble every word of ``words`` left to right, and the two special tokens. Any
    text tokenises (unknown words fall back to smaller pieces, down to bytes).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    table = _bytes_to_unicode()
    symbols = list(table.values())
    vocab: dict[str, int] = {}
    for s in symbols + [s + "</w>" for s in symbols]:
        vocab[s] = len(vocab)
    merges: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for word in words:
        word = word.strip().lower()
        if not word or any(ch.isspace() for ch in word):
            raise ValueError(f"tokenizer words must be single non-empty words, got {word!r}.")
        chars = [table[b] for b in word.encode("utf-8")]
        parts = chars[:-1] + [chars[-1] + "</w>"]
        current = parts[0]
        for nxt in parts[1:]:
            pair = (current, nxt)
            if pair not in seen:
                seen.add(pair)
                merges.append(pair)
            current += nxt
            vocab.setdefault(current, len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (directory / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory


def build_tokenizer(cfg: TinyConfig = TinyConfig(), directory: str | Path | None = None):
    """A ``CLIPTokenizer`` from generated files (in ``directory``, or a temporary folder)."""
    if directory is None:
        with tempfile.TemporaryDirectory() as tmp:
            return build_tokenizer(cfg, tmp)
    write_tokenizer_files(directory, cfg.words)
    return CLIPTokenizer.from_pretrained(str(directory), model_max_length=cfg.max_length)


# -- models ------------------------------------------------------------------------------------


def text_config(cfg: TinyConfig, tokenizer: Any) -> CLIPTextConfig:
    """The CLIP text tower of ``cfg`` over ``tokenizer`` (also the Shapes CLIP's, train.clip)."""
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.text_dim,
        intermediate_size=cfg.text_intermediate,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        max_position_embeddings=cfg.max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,  # pooled output = hidden state at the first EOS
        pad_token_id=tokenizer.pad_token_id,
    )


def build_text_encoder(cfg: TinyConfig, tokenizer: Any, seed: int = 0) -> CLIPTextModel:
    torch.manual_seed(seed)
    return CLIPTextModel(text_config(cfg, tokenizer)).eval()


def build_vae(cfg: TinyConfig, seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    n = len(cfg.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=cfg.vae_channels,
        latent_channels=cfg.latent_channels,
        norm_num_groups=_groups(cfg.vae_channels),
        sample_size=cfg.image_size,
    ).eval()


def unet_config(cfg: TinyConfig) -> dict[str, Any]:
    """The InstructPix2Pix UNet config: 2x latent channels in (noisy latent + image latent)."""
    if len(cfg.unet_cross_attention) != len(cfg.unet_channels):
        raise ValueError("unet_cross_attention needs one flag per UNet level.")
    down = tuple("CrossAttnDownBlock2D" if x else "DownBlock2D" for x in cfg.unet_cross_attention)
    up = tuple(
        "CrossAttnUpBlock2D" if x else "UpBlock2D" for x in reversed(cfg.unet_cross_attention)
    )
    return dict(
        sample_size=cfg.image_size // cfg.vae_scale_factor,
        in_channels=2 * cfg.latent_channels,
        out_channels=cfg.latent_channels,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=cfg.unet_channels,
        layers_per_block=cfg.unet_layers_per_block,
        cross_attention_dim=cfg.text_dim,
        attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=_groups(cfg.unet_channels),
    )


def build_unet(cfg: TinyConfig, seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(**unet_config(cfg)).eval()


def build_components(
    cfg: TinyConfig = TinyConfig(),
    seed: int = 0,
    scheduler: str = "euler_ancestral",
    tokenizer_dir: str | Path | None = None,
) -> dict[str, Any]:
    """``vae``, ``text_encoder``, ``tokenizer``, ``unet``, ``scheduler`` with seeded weights:
    the components of both :class:`~core.pipeline.MRCInstructPix2PixPipeline` and diffusers'
    ``StableDiffusionInstructPix2PixPipeline`` (pass ``safety_checker=None`` there)."""
    from core.sampling import make_scheduler  # the one scheduler table

    tokenizer = build_tokenizer(cfg, tokenizer_dir)
    return dict(
        vae=build_vae(cfg, seed),
        text_encoder=build_text_encoder(cfg, tokenizer, seed + 1),
        tokenizer=tokenizer,
        unet=build_unet(cfg, seed + 2),
        scheduler=make_scheduler(scheduler),
    )


__all__ = [
    "DEFAULT_WORDS",
    "TinyConfig",
    "build_components",
    "build_text_encoder",
    "build_tokenizer",
    "build_unet",
    "build_vae",
    "text_config",
    "unet_config",
    "write_tokenizer_files",
]
