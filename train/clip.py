"""``python -m train.clip``: a small CLIP pretrained on Shapes, the world's "SD text encoder".

Stable Diffusion edits with a *pretrained*, frozen CLIP text encoder; a Shapes model built from
scratch has no such thing, and a randomly initialised text tower hands the UNet random features
of the instruction. This command trains a stock ``transformers.CLIPModel`` (text and vision
towers) contrastively on a Shapes training folder and saves it with its tokenizer and image
processor, so that

* the Shapes demo models use its text tower, frozen (``TrainConfig.text_encoder``), as SD's is;
* Shapes-Edit gets meaningful CLIP-I, CLIP-T and CLIP direction similarity (the paper's Table 2,
  ``python -m train.evaluate --clip``).

Two InfoNCE objectives, summed (``B`` triplets per step, original ``o`` and clean target ``t``):

    captions:    img(o), img(t)  <->  caption(o), caption(t)           (2B x 2B, symmetric)
    directions:  normalise(img(t) - img(o))  <->  text(instruction)    (B x B, symmetric)

The first teaches colours, shapes, places and styles; the second makes the instruction's
embedding point along the edit it asks for (what CLIP direction similarity measures, and what
the UNet's cross-attention has to read). The captions come from :mod:`data.shapes.captions`.

Held-out retrieval on the folder's benchmark split is measured at the end and written to
``clip_report.json``: caption -> target image, target image -> caption, and instruction ->
edit (original, target) pair, top-1 and top-5 among all benchmark items.

    python -m train.clip --data_dir runs/shapes32 --out docs/demo_models/shapes_clip
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

from core.tiny import DEFAULT_WORDS, TinyConfig, build_tokenizer, text_config
from data.shapes.captions import captions_from_meta
from data.shapes.edits import EFFECT_PHRASINGS, PHRASINGS, STYLE_PHRASINGS
from data.shapes.folder import load_split


@dataclass(frozen=True)
class ClipTrainConfig:
    """A Shapes CLIP run. Defaults: the shipped ``docs/demo_models/shapes_clip``."""

    data_dir: str = ""  # Shapes folder from `python -m data synth` (train and bench splits)
    out: str = ""  # output folder: CLIPModel + tokenizer + image processor + clip_report.json
    max_train_samples: int = 30_000  # triplets of the train split used (first N; 0: all)
    seed: int = 0
    steps: int = 1500  # optimizer steps
    batch_size: int = 256  # triplets per step (512 images, 512 captions, 256 instructions)
    learning_rate: float = 1e-3
    warmup_steps: int = 100  # linear warm-up, then cosine decay to 0
    weight_decay: float = 0.1
    text_dim: int = 64  # text width = the UNet's cross-attention width in the demo models
    text_layers: int = 2
    text_heads: int = 4
    text_intermediate: int = 256
    max_length: int = 77  # tokens, as SD's CLIP
    vision_dim: int = 64
    vision_layers: int = 2
    vision_heads: int = 4
    patch_size: int = 4  # 32 px images -> 8 x 8 patches
    projection_dim: int = 64
    threads: int = 0  # torch threads (0: torch's default)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "text_dim", "vision_dim", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}.")
        if self.max_train_samples < 0:
            raise ValueError("--max_train_samples must be >= 0 (0: all).")


# -- vocabulary, model, images ----------------------------------------------------------------


def shapes_vocabulary(texts: list[str]) -> tuple[str, ...]:
    """Every word of Shapes' instructions, captions and failure texts, as single tokens."""
    words = set(DEFAULT_WORDS)
    templates = [
        re.sub(r"\{[a-z_]+\}", " ", p)
        for table in (PHRASINGS, EFFECT_PHRASINGS, STYLE_PHRASINGS)
        for phrasings in table.values()
        for p in phrasings
    ]
    for text in [*texts, *templates]:
        words.update(re.findall(r"[a-z]+", text.lower()))
    return tuple(sorted(words))


def build_clip(cfg: ClipTrainConfig, tokenizer: Any, image_size: int) -> CLIPModel:
    torch.manual_seed(cfg.seed)
    config = CLIPConfig(
        text_config=text_config(
            TinyConfig(
                text_dim=cfg.text_dim,
                text_intermediate=cfg.text_intermediate,
                text_layers=cfg.text_layers,
                text_heads=cfg.text_heads,
                max_length=cfg.max_length,
            ),
            tokenizer,
        ).to_dict(),  # fmt: skip
        vision_config=dict(
            hidden_size=cfg.vision_dim,
            intermediate_size=4 * cfg.vision_dim,
            num_hidden_layers=cfg.vision_layers,
            num_attention_heads=cfg.vision_heads,
            image_size=image_size,
            patch_size=cfg.patch_size,
        ),
        projection_dim=cfg.projection_dim,
    )
    return CLIPModel(config)


def image_processor(image_size: int) -> CLIPImageProcessor:
    """What ``ClipScorer`` and every user of the saved folder apply to images."""
    return CLIPImageProcessor(
        do_resize=True,
        size={"shortest_edge": image_size},
        do_center_crop=True,
        crop_size={"height": image_size, "width": image_size},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )


def to_pixels(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [-1, 1], as :func:`image_processor` does."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return (x - 0.5) / 0.5


# -- data -------------------------------------------------------------------------------------


@dataclass
class PairData:
    original: np.ndarray  # (N, H, W, 3) uint8
    target: np.ndarray  # (N, H, W, 3) uint8, the clean ground truth
    instructions: list[str]
    captions_original: list[str]
    captions_target: list[str]
    categories: list[str]


def load_pairs(folder: str | Path, split: str, limit: int = 0, progress: bool = True) -> PairData:
    items = load_split(folder, split)
    if limit:
        items = items[:limit]
    if not items:
        raise ValueError(f"{folder} has no {split} items to train or test the CLIP on.")
    originals, targets, caps_o, caps_t = [], [], [], []
    for it in tqdm(items, desc=f"loading {split}", disable=not progress, dynamic_ncols=True):
        originals.append(it.load("original"))
        targets.append(it.load("target"))
        co, ct = captions_from_meta(it.meta)
        caps_o.append(co)
        caps_t.append(ct)
    return PairData(
        np.stack(originals),
        np.stack(targets),
        [it.instruction for it in items],
        caps_o,
        caps_t,
        [it.category for it in items],
    )


# -- training ---------------------------------------------------------------------------------


def info_nce(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric contrastive loss of two (N, D) L2-normalised batches matched row by row."""
    logits = scale * a @ b.T  # (N, N)
    labels = torch.arange(a.shape[0])
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


class ClipEmbedder:
    """Tokenise and embed with a :class:`CLIPModel`; image and text embeddings are projected."""

    def __init__(self, model: CLIPModel, tokenizer: Any):
        self.model, self.tokenizer = model, tokenizer

    def texts(self, texts: list[str]) -> torch.Tensor:
        enc = self.tokenizer(
            texts,
            padding=True,  # causal attention: padding never changes the content tokens
            truncation=True,
            max_length=self.tokenizer.model_max_length,
            return_tensors="pt",
        )
        out = self.model.text_model(input_ids=enc.input_ids, attention_mask=enc.attention_mask)
        return self.model.text_projection(out.pooler_output)  # (N, P)

    def images(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.model.vision_model(pixel_values=pixels)
        return self.model.visual_projection(out.pooler_output)  # (N, P)


def clip_losses(emb: ClipEmbedder, data: PairData, idx: np.ndarray) -> dict[str, torch.Tensor]:
    scale = emb.model.logit_scale.exp().clamp(max=100.0)
    b = len(idx)
    pixels = to_pixels(np.concatenate([data.original[idx], data.target[idx]]))  # (2B, 3, H, W)
    img = emb.images(pixels)  # (2B, P)
    captions = [data.captions_original[i] for i in idx] + [data.captions_target[i] for i in idx]
    txt = emb.texts(captions + [data.instructions[i] for i in idx])  # (3B, P)
    caption_loss = info_nce(F.normalize(img, dim=-1), F.normalize(txt[: 2 * b], dim=-1), scale)
    direction = F.normalize(img[b:] - img[:b], dim=-1)  # (B, P)
    direction_loss = info_nce(direction, F.normalize(txt[2 * b :], dim=-1), scale)
    return {"caption": caption_loss, "direction": direction_loss}


def train_clip(cfg: ClipTrainConfig, progress: bool = True) -> dict[str, Any]:
    """Train, evaluate on the bench split and save; returns the report."""
    if not cfg.data_dir or not cfg.out:
        raise ValueError("--data_dir and --out are required.")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    data = load_pairs(cfg.data_dir, "train", cfg.max_train_samples, progress)
    bench = load_pairs(cfg.data_dir, "bench", 0, progress)
    size = int(data.original.shape[1])
    words = shapes_vocabulary(data.instructions + data.captions_original + data.captions_target)
    tiny = TinyConfig(max_length=cfg.max_length, words=words)
    tokenizer = build_tokenizer(tiny, out / "tokenizer_build")
    model = build_clip(cfg, tokenizer, size)
    emb = ClipEmbedder(model, tokenizer)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay
    )

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * t))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    rng = np.random.default_rng(cfg.seed)
    n = len(data.instructions)
    order = rng.permutation(n)
    pos, history = 0, []
    model.train()
    start = time.perf_counter()
    bar = tqdm(range(cfg.steps), desc="clip", disable=not progress, dynamic_ncols=True)
    for step in bar:
        if pos + cfg.batch_size > n:
            order, pos = rng.permutation(n), 0
        idx = order[pos : pos + min(cfg.batch_size, n)]
        pos += len(idx)
        losses = clip_losses(emb, data, idx)
        loss = losses["caption"] + losses["direction"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        record = {"step": step + 1, **{k: round(float(v.detach()), 4) for k, v in losses.items()}}
        history.append(record)
        bar.set_postfix(caption=record["caption"], direction=record["direction"])
    model.eval()
    report = {
        "config": asdict(cfg),
        "train_seconds": round(time.perf_counter() - start, 1),
        "train_triplets": n,
        "parameters": {
            "text": sum(p.numel() for p in model.text_model.parameters()),
            "vision": sum(p.numel() for p in model.vision_model.parameters()),
        },
        "final_loss": history[-1],
        "retrieval_bench": retrieval(emb, bench),
        "retrieval_train_subset": retrieval(emb, _subset(data, 560, cfg.seed)),
    }
    save_clip(model, tokenizer, size, out, report, history)
    return report


def _subset(data: PairData, k: int, seed: int) -> PairData:
    idx = np.random.default_rng(seed + 1).permutation(len(data.instructions))[:k]
    return PairData(
        data.original[idx],
        data.target[idx],
        [data.instructions[i] for i in idx],
        [data.captions_original[i] for i in idx],
        [data.captions_target[i] for i in idx],
        [data.categories[i] for i in idx],
    )


# -- evaluation and saving --------------------------------------------------------------------


@torch.no_grad()
def retrieval(emb: ClipEmbedder, data: PairData) -> dict[str, Any]:
    """Top-1 / top-5 retrieval among all items of ``data`` (chance: 1/N and 5/N)."""
    n = len(data.instructions)
    img_o = torch.cat([emb.images(to_pixels(data.original[s : s + 256])) for s in range(0, n, 256)])
    img_t = torch.cat([emb.images(to_pixels(data.target[s : s + 256])) for s in range(0, n, 256)])
    cap_t = torch.cat([emb.texts(data.captions_target[s : s + 256]) for s in range(0, n, 256)])
    ins = torch.cat([emb.texts(data.instructions[s : s + 256]) for s in range(0, n, 256)])
    direction = F.normalize(img_t - img_o, dim=-1)  # (N, P)
    img_t, cap_t, ins = (F.normalize(x, dim=-1) for x in (img_t, cap_t, ins))

    def topk(sim: torch.Tensor) -> dict[str, float]:
        ranks = (sim > sim.diag()[:, None]).sum(dim=1)  # items scored above the true one
        return {"top1": round(float((ranks < 1).float().mean()), 4),
                "top5": round(float((ranks < 5).float().mean()), 4)}  # fmt: skip

    return {
        "items": n,
        "chance_top1": round(1 / n, 4),
        "caption_to_image": topk(cap_t @ img_t.T),
        "image_to_caption": topk(img_t @ cap_t.T),
        "instruction_to_edit": topk(ins @ direction.T),
    }


def save_clip(
    model: CLIPModel,
    tokenizer: Any,
    image_size: int,
    out: Path,
    report: dict[str, Any],
    history: list[dict[str, Any]],
) -> None:
    """A folder that ``CLIPModel`` / ``AutoTokenizer`` / ``AutoImageProcessor`` load, plus the
    text tower alone under ``text_encoder/`` (what ``TrainConfig.text_encoder`` reads)."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    image_processor(image_size).save_pretrained(out)
    (out / "clip_report.json").write_text(json.dumps(report, indent=1))
    with open(out / "train_log.jsonl", "w", encoding="utf-8") as f:
        for record in history:
            f.write(json.dumps(record) + "\n")
    build = out / "tokenizer_build"
    if build.is_dir():
        for file in build.iterdir():
            file.unlink()
        build.rmdir()


# -- command line -----------------------------------------------------------------------------

HELP = {
    "data_dir": "Shapes folder from 'python -m data synth' (its train and bench splits).",
    "out": "Output folder (CLIPModel, tokenizer, image processor, clip_report.json).",
    "max_train_samples": "Train on the first N triplets of the train split (0: all).",
    "seed": "Seed of the initial weights and of the batch order.",
    "steps": "Optimizer steps.",
    "batch_size": "Triplets per step (2x images and captions, 1x instructions).",
    "learning_rate": "Peak AdamW learning rate.",
    "warmup_steps": "Linear warm-up steps, then cosine decay to zero.",
    "weight_decay": "AdamW weight decay.",
    "text_dim": "Text tower width (= the editing UNet's cross-attention width).",
    "text_layers": "Text tower transformer layers.",
    "text_heads": "Text tower attention heads.",
    "text_intermediate": "Text tower MLP width.",
    "max_length": "Tokenizer and text tower length in tokens (SD: 77).",
    "vision_dim": "Vision tower width.",
    "vision_layers": "Vision tower transformer layers.",
    "vision_heads": "Vision tower attention heads.",
    "patch_size": "Vision patch size in pixels.",
    "projection_dim": "Width of the shared embedding space.",
    "threads": "torch threads (0: torch's default).",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train.clip",
        description="Train a small CLIP (text + vision towers) contrastively on a Shapes folder: "
        "captions <-> images and instructions <-> edit directions. Its text tower is the frozen "
        "text encoder of the Shapes demo models; the whole model scores CLIP-I / CLIP-T / "
        "direction similarity on Shapes-Edit.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for f in fields(ClipTrainConfig):
        required = f.name in ("data_dir", "out")
        parser.add_argument(
            f"--{f.name}",
            type=type(f.default),
            default=None if required else f.default,
            required=required,
            help=HELP[f.name],
        )
    parser.add_argument("--no-progress", action="store_true", help="No progress bars.")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    progress = not args.pop("no_progress")
    try:
        cfg = ClipTrainConfig(**args)
        report = train_clip(cfg, progress)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    r = report["retrieval_bench"]
    print(
        f"saved {cfg.out}: bench retrieval top-1 caption->image {r['caption_to_image']['top1']:.1%}, "
        f"instruction->edit {r['instruction_to_edit']['top1']:.1%} (chance {r['chance_top1']:.2%})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
