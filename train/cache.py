"""Frozen-encoder outputs, computed once: the training cache.

VAE and text encoder are frozen in both stages, so everything they produce for an example is the
same at every step. diffusers' InstructPix2Pix example and the authors' script recompute it anyway:
two VAE encodes and one or two text encodes per example per step. Here it is computed once per
(model, data) and read back from disk:

    <cache_dir>/<key>/meta.json             ids, shapes, dtype, bad examples found while building
                      original.npy          (N, C, h, w)  VAE latent mode of the original (c_I)
                      edited_mean.npy       (N, C, h, w)  VAE posterior of the edited image:
                      edited_std.npy        (N, C, h, w)  the trainer samples mean + std * eps
                      text.npy              (U, L, D)     embeddings of the U distinct instructions;
                      text_index.npy        (N,)          row 0 is the empty prompt (text dropout)
                      reward_text.npy       (V, D) or (V, L, D)   distinct joined failure texts
                      reward_text_index.npy (N,)
                      reward_text_subset_index.npy (N, 8)  per-perspective text dropout only:
                                          row m = the join with perspective k's text kept
                                          where bit k of m is set, the others emptied
                      scores.npy            (N, 3)        reward scores (following, preserving, quality)
                      *_hflip.npy           (N, C, h, w)  random_flip: the three latent arrays of
                                                          the horizontally flipped images

Nothing is approximated: the edited latent stays a *sample* of the VAE posterior, drawn from the
same seeded generator as the uncached path, so cached and uncached runs follow the same loss
curve (the tests check this). The key is a sha256 of the encoder weights + tokenizer
(:meth:`Models.encoder_hash`), every example's fingerprint (id, instruction, labels, image file
size and mtime), the resolution and the storage dtype: change any of them and a new cache is
built. A cache is written under a temporary name and renamed when complete, so an interrupted
build is never mistaken for a finished one. Arrays are memory-mapped, so a cache larger than RAM
works. Distinct instructions are embedded once (Shapes has a few hundred phrasings for 60 k
triplets), which is where most of the text-encoder time goes.

Augmentation keeps the cache exact: with ``random_flip`` the flipped view of each example is
encoded too (a VAE is not flip-equivariant in general, so flipping latents would be an
approximation), and ``gather`` reads each example's row from the view the sampler chose.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.text_encoding import encode_reward_text, encode_text, join_reward_texts
from train.datasets import BadDataLog, BadItem, EditExample, scan

CACHE_VERSION = 1
ENCODE_BATCH = 32  # examples per VAE / text-encoder call while building
LATENT_ARRAYS = ("original", "edited_mean", "edited_std")
TEXT_SUBSETS = 8  # per-perspective text dropout: every keep/drop combination of 3 texts


class FrozenEncoders:
    """The frozen VAE + text encoder: pixels -> latent posterior, texts -> embeddings.

    Used by the cache builder and by the uncached (recompute every step) training path, so
    both produce identical tensors.
    """

    def __init__(
        self, models: Any, reward_text_mode: str, device: torch.device, dtype: torch.dtype
    ):
        self.vae, self.text_encoder, self.tokenizer = (
            models.vae,
            models.text_encoder,
            models.tokenizer,
        )
        self.device, self.dtype = device, dtype
        self.reward_text_mode = reward_text_mode
        rm = models.reward_module
        self.empty_text = rm.config.empty_text if rm is not None else ""

    @torch.no_grad()
    def images(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) in [-1, 1] -> posterior mean and std, (B, C, h, w) float32 each."""
        dist = self.vae.encode(pixels.to(self.device, self.dtype)).latent_dist
        return dist.mean.float(), dist.std.float()

    @torch.no_grad()
    def texts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Instructions -> (B, L, D) last hidden states, tokenised as the pipeline does."""
        out = encode_text(prompts, self.tokenizer, self.text_encoder, self.device)
        return out.last_hidden_state.float()

    @torch.no_grad()
    def reward_texts(self, joined: Sequence[str]) -> torch.Tensor:
        """Joined failure texts -> (B, D) pooled or (B, L, D) sequence embeddings."""
        return encode_reward_text(
            list(joined), self.tokenizer, self.text_encoder, self.reward_text_mode
        ).float()

    def join(self, ex: EditExample) -> str:
        return join_reward_texts(ex.rewards, self.empty_text)

    def subset_joins(self, ex: EditExample) -> list[str]:
        """The 8 joins of ``ex``'s failure texts with some emptied: entry m keeps perspective
        k's text where bit k of m is set (m = 7: all kept, :meth:`join`; m = 0: none)."""
        texts = ex.rewards.texts
        return [
            join_reward_texts(
                [t if m >> k & 1 else "" for k, t in enumerate(texts)], self.empty_text
            )
            for m in range(TEXT_SUBSETS)
        ]


def cache_key(
    encoder_hash: str,
    examples: Sequence[EditExample],
    resolution: int,
    dtype: str,
    with_rewards: bool,
    reward_text_mode: str,
    encoder_dtype: str,
    flip: bool = False,
    text_subsets: bool = False,
) -> str:
    h = hashlib.sha256(f"mrc-train-cache-v{CACHE_VERSION}".encode())
    settings = [encoder_hash, resolution, dtype, with_rewards, reward_text_mode, encoder_dtype]
    if flip:  # appended only when on, so the keys of existing caches are unchanged
        settings.append("hflip")
    if text_subsets:
        settings.append("reward-text-subsets")
    h.update(json.dumps(settings).encode())
    for ex in examples:
        h.update(ex.fingerprint().encode())
        h.update(b"\0")
    return h.hexdigest()[:24]


class TrainCache:
    """A finished cache, memory-mapped; ``gather(indices)`` returns one batch of tensors."""

    def __init__(self, path: Path):
        self.path = path
        self.meta = json.loads((path / "meta.json").read_text())
        self.ids: list[str] = self.meta["ids"]
        load = lambda name: np.load(path / f"{name}.npy", mmap_mode="r")  # noqa: E731
        self.original = load("original")
        self.edited_mean = load("edited_mean")
        self.edited_std = load("edited_std")
        self.flipped = None
        if "hflip" in self.meta.get("views", ()):
            self.flipped = {n: load(f"{n}_hflip") for n in LATENT_ARRAYS}
        # Distinct embeddings are few: keep them in memory as tensors.
        self.text = torch.from_numpy(np.array(load("text"), dtype=np.float32))
        self.text_index = np.array(load("text_index"))
        self.with_rewards = bool(self.meta["with_rewards"])
        if self.with_rewards:
            self.reward_text = torch.from_numpy(np.array(load("reward_text"), dtype=np.float32))
            self.reward_text_index = np.array(load("reward_text_index"))
            self.subset_index = None
            if self.meta.get("reward_text_subsets"):
                self.subset_index = np.array(load("reward_text_subset_index"))
            self.scores = torch.from_numpy(np.array(load("scores"), dtype=np.float32))

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def bad(self) -> list[BadItem]:
        return [BadItem(**b) for b in self.meta["bad"]]

    @property
    def null_text(self) -> torch.Tensor:
        return self.text[0]  # (L, D): the empty prompt

    def gather(
        self, indices: Sequence[int], flips: Sequence[bool] | None = None
    ) -> dict[str, torch.Tensor]:
        """One batch; ``flips[j]`` reads example ``indices[j]`` from the flipped view."""
        idx = np.asarray(indices, dtype=np.int64)
        if flips is not None and any(flips) and self.flipped is None:
            raise ValueError(
                f"The cache {self.path} holds no flipped views; it was built without random_flip."
            )
        f = np.asarray(flips, dtype=bool) if flips is not None else np.zeros(len(idx), bool)

        def t(name: str) -> torch.Tensor:
            rows = np.asarray(getattr(self, name)[idx], dtype=np.float32)  # (B, C, h, w)
            if f.any():
                rows[f] = self.flipped[name][idx[f]]
            return torch.from_numpy(rows)

        batch = {
            "original_latents": t("original"),  # (B, C, h, w)
            "edited_mean": t("edited_mean"),
            "edited_std": t("edited_std"),
            "text_embeds": self.text[torch.from_numpy(self.text_index[idx].astype(np.int64))],
        }
        if self.with_rewards:
            j = torch.from_numpy(self.reward_text_index[idx].astype(np.int64))
            batch["reward_text_embeds"] = self.reward_text[j]  # (B, D) / (B, L, D)
            if self.subset_index is not None:
                m = torch.from_numpy(self.subset_index[idx].astype(np.int64))  # (B, 8)
                batch["reward_text_subsets"] = self.reward_text[m]  # (B, 8, D) / (B, 8, L, D)
            batch["scores"] = self.scores[torch.from_numpy(idx)]  # (B, 3)
        return batch


def build_or_load(
    cache_root: Path,
    key: str,
    examples: Sequence[EditExample],
    encoders: FrozenEncoders,
    resolution: int,
    dtype: str,
    with_rewards: bool,
    log: BadDataLog,
    progress: bool = True,
    flip: bool = False,
    text_subsets: bool = False,
) -> TrainCache:
    """The cache for ``key``: loaded when complete on disk, else built (bad examples go to
    ``log``, whose policy may stop the build). A cache hit re-reports the bad examples found
    while it was built, so a second run is never quieter than the first."""
    final = cache_root / key
    if (final / "meta.json").exists():
        cache = TrainCache(final)
        log.extend(cache.bad)
        return cache
    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = cache_root / f"{key}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        _build(tmp, key, examples, encoders, resolution, dtype, with_rewards, log, progress, flip,
               text_subsets)  # fmt: skip
        if (final / "meta.json").exists():  # another process finished first: keep theirs
            shutil.rmtree(tmp)
        else:
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return TrainCache(final)


def _build(
    out: Path,
    key: str,
    examples: Sequence[EditExample],
    enc: FrozenEncoders,
    resolution: int,
    dtype: str,
    with_rewards: bool,
    log: BadDataLog,
    progress: bool,
    flip: bool = False,
    text_subsets: bool = False,
) -> None:
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    first_bad = len(log.items)
    np_dtype = np.dtype(dtype)
    n_max = len(examples)
    arrays: dict[str, np.ndarray] = {}
    ids: list[str] = []
    kept: list[EditExample] = []
    pending: list[tuple[EditExample, torch.Tensor, torch.Tensor]] = []
    views = ("", "_hflip") if flip else ("",)
    bar = tqdm(total=n_max, desc="caching latents", disable=not progress, unit="ex")

    def flush() -> None:
        if not pending:
            return
        pix_o = torch.stack([p[1] for p in pending])  # (b, 3, H, W)
        pix_e = torch.stack([p[2] for p in pending])
        s, e = len(ids), len(ids) + len(pending)
        for suffix in views:
            if suffix:  # the flipped view: flip the pixels, encode them (exact)
                pix_o, pix_e = pix_o.flip(-1), pix_e.flip(-1)
            mean_o, _ = enc.images(pix_o)
            mean_e, std_e = enc.images(pix_e)
            if f"original{suffix}" not in arrays:  # shapes are known after the first batch
                shape = (n_max, *mean_o.shape[1:])
                for name in LATENT_ARRAYS:
                    arrays[name + suffix] = np.lib.format.open_memmap(
                        out / f"{name}{suffix}.npy", mode="w+", dtype=np_dtype, shape=shape
                    )
            arrays[f"original{suffix}"][s:e] = mean_o.cpu().numpy()
            arrays[f"edited_mean{suffix}"][s:e] = mean_e.cpu().numpy()
            arrays[f"edited_std{suffix}"][s:e] = std_e.cpu().numpy()
        for ex, _, _ in pending:
            ids.append(ex.id)
            kept.append(ex)
        pending.clear()

    for item in scan(examples, log, resolution, progress=False):
        pending.append(item)
        if len(pending) == ENCODE_BATCH:
            flush()
            bar.update(len(ids) + len(log.items) - first_bad - bar.n)  # examples done so far
    flush()
    bar.update(n_max - bar.n)
    bar.close()
    n = len(ids)
    if n == 0:
        raise ValueError("No usable training examples: every example was reported as bad.")
    # Trim the pre-sized memmaps to the examples that survived.
    for name, arr in arrays.items():
        arr.flush()
        del arr
        full = np.load(out / f"{name}.npy", mmap_mode="r")
        if full.shape[0] != n:
            np.save(out / f"{name}.tmp.npy", np.ascontiguousarray(full[:n]))
            del full
            os.replace(out / f"{name}.tmp.npy", out / f"{name}.npy")
    arrays.clear()

    # Distinct instructions (row 0: the empty prompt used by text dropout).
    texts = list(dict.fromkeys(["", *(ex.instruction for ex in kept)]))
    index = {t: i for i, t in enumerate(texts)}
    _save_embeddings(out / "text.npy", texts, enc.texts, np_dtype)
    np.save(out / "text_index.npy", np.array([index[ex.instruction] for ex in kept], np.int32))
    if with_rewards:
        joined = [enc.join(ex) for ex in kept]
        subsets = [enc.subset_joins(ex) for ex in kept] if text_subsets else []
        distinct = list(dict.fromkeys([*joined, *(t for row in subsets for t in row)]))
        rindex = {t: i for i, t in enumerate(distinct)}
        _save_embeddings(out / "reward_text.npy", distinct, enc.reward_texts, np_dtype)
        np.save(out / "reward_text_index.npy", np.array([rindex[t] for t in joined], np.int32))
        if text_subsets:
            rows = [[rindex[t] for t in row] for row in subsets]
            np.save(out / "reward_text_subset_index.npy", np.array(rows, np.int32))
        np.save(out / "scores.npy", np.array([ex.rewards.scores for ex in kept], np.float32))
    meta = {
        "version": CACHE_VERSION,
        "key": key,
        "n": n,
        "ids": ids,
        "bad": [b.to_dict() for b in log.items[first_bad:]],
        "resolution": resolution,
        "dtype": dtype,
        "with_rewards": with_rewards,
        **({"views": ["identity", "hflip"]} if flip else {}),
        **({"reward_text_subsets": True} if with_rewards and text_subsets else {}),
        "distinct_instructions": len(texts) - 1,
        "build_seconds": round(time.perf_counter() - t0, 2),
    }
    (out / "meta.json").write_text(json.dumps(meta))


def _save_embeddings(path: Path, texts: list[str], fn: Any, dtype: np.dtype) -> None:
    parts = [fn(texts[i : i + 256]).cpu().numpy() for i in range(0, len(texts), 256)]
    np.save(path, np.concatenate(parts).astype(dtype))
