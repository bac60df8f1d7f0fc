"""Data order and randomness as pure functions of (seed, process, step): exact resumption.

A resumed run must see the same batches and draw the same noise as an uninterrupted one. Rather
than pickling iterator and generator states, everything random is *derived*:

* **data order** -- epoch ``e`` is ``randperm(N)`` from a generator seeded by ``(seed, e)``; the
  ``k``-th micro-batch of the run is a fixed slice of it, per process (process ``r`` of ``P``
  takes slice ``k * P + r`` of the global order). :class:`EpochBatchSampler` starts at any ``k``,
  so resuming at optimizer step ``s`` simply starts at ``k = s * grad_accum``: no batches are
  replayed or skipped and no state is stored. Each epoch drops its last incomplete global batch.
* **augmentation** -- with ``random_flip``, example ``i`` is flipped in epoch ``e`` when the
  ``i``-th draw of a generator seeded by ``(seed, "flip", e)`` is below 0.5: a fresh coin per
  example and epoch, independent of the process count, and known before the batch is read (the
  cache serves the flipped view; the uncached path flips the pixels before encoding them). The
  sampler then yields ``(index, flipped)`` pairs instead of indices.
* **per-step draws** (timesteps, noise, the VAE posterior sample, dropout masks) come from a
  fresh ``torch.Generator`` seeded by :func:`stream_seed` ``(seed, process, k)``. They are drawn
  on the CPU, so a run is reproducible across devices too.

The datasets here are what the DataLoader indexes: :class:`CachedData` gathers a batch of cached
tensors in one call; :class:`PixelData` (the uncached path) decodes images and returns pixels and
strings for the frozen encoders to process inside the loop.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from train.cache import TrainCache
from train.datasets import EditExample, load_pair


def stream_seed(seed: int, *parts: Any) -> int:
    """A 63-bit seed from ``seed`` and a path of parts, e.g. (seed, "step", rank, k)."""
    text = ":".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def step_generator(seed: int, process: int, micro_step: int) -> torch.Generator:
    return torch.Generator().manual_seed(stream_seed(seed, "step", process, micro_step))


class EpochBatchSampler(torch.utils.data.Sampler):
    """Yields this process's index lists for micro-batches ``start, start + 1, ...`` forever."""

    def __init__(
        self,
        n: int,
        batch_size: int,
        num_processes: int = 1,
        process_index: int = 0,
        seed: int = 0,
        start: int = 0,
        flip: bool = False,
    ):
        if n < batch_size * num_processes:
            raise ValueError(
                f"There are {n} training examples, fewer than one global batch "
                f"({batch_size} per process x {num_processes} processes); lower train_batch_size."
            )
        self.n, self.batch_size = n, batch_size
        self.num_processes, self.process_index = num_processes, process_index
        self.seed, self.start, self.flip = seed, start, flip
        self.batches_per_epoch = n // (batch_size * num_processes)
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)
        self._flips = torch.empty(0, dtype=torch.bool)

    def epoch_of(self, k: int) -> int:
        return k // self.batches_per_epoch

    def permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(stream_seed(self.seed, "data", epoch))
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=g)
            if self.flip:
                g = torch.Generator().manual_seed(stream_seed(self.seed, "flip", epoch))
                self._flips = torch.rand(self.n, generator=g) < 0.5  # (N,) per example
        return self._perm

    def batch(self, k: int) -> list[int] | list[tuple[int, bool]]:
        epoch, b = divmod(k, self.batches_per_epoch)
        s = (b * self.num_processes + self.process_index) * self.batch_size
        indices = self.permutation(epoch)[s : s + self.batch_size]
        if self.flip:
            return list(zip(indices.tolist(), self._flips[indices].tolist()))
        return indices.tolist()

    def __iter__(self) -> Iterator[list[int]]:
        k = self.start
        while True:
            yield self.batch(k)
            k += 1


def identity_collate(batch: Any) -> Any:
    return batch


def split_items(items: Sequence[Any]) -> tuple[list[int], list[bool] | None]:
    """Sampler items -> (indices, flips or None): plain indices, or (index, flipped) pairs."""
    if items and isinstance(items[0], tuple):
        return [int(i) for i, _ in items], [bool(f) for _, f in items]
    return [int(i) for i in items], None


class CachedData(torch.utils.data.Dataset):
    """The cache as a dataset; ``__getitems__`` gathers a whole batch (DataLoader fast path)."""

    def __init__(self, cache: TrainCache):
        self.cache = cache

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.cache.gather([i]).items()}

    def __getitems__(self, items: Sequence[Any]) -> dict[str, torch.Tensor]:
        indices, flips = split_items(items)
        return self.cache.gather(indices, flips)


class PixelData(torch.utils.data.Dataset):
    """Examples decoded on the fly: pixels, instructions, joined reward texts and scores."""

    def __init__(
        self, examples: Sequence[EditExample], resolution: int, reward_texts: list[str] | None
    ):
        self.examples, self.resolution, self.reward_texts = list(examples), resolution, reward_texts

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.__getitems__([i])

    def __getitems__(self, items: Sequence[Any]) -> dict[str, Any]:
        indices, flips = split_items(items)
        pairs = [load_pair(self.examples[i], self.resolution) for i in indices]
        original = torch.stack([p[0] for p in pairs])  # (B, 3, H, W)
        edited = torch.stack([p[1] for p in pairs])
        if flips is not None and any(flips):
            f = torch.tensor(flips)
            original[f], edited[f] = original[f].flip(-1), edited[f].flip(-1)
        batch: dict[str, Any] = {
            "original_pixels": original,
            "edited_pixels": edited,
            "prompts": [self.examples[i].instruction for i in indices],
        }
        if self.reward_texts is not None:
            batch["reward_texts"] = [self.reward_texts[i] for i in indices]
            batch["scores"] = torch.tensor(
                [self.examples[i].rewards.scores for i in indices], dtype=torch.float32
            )  # (B, 3)
        return batch
