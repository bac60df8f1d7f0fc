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

The datasets the sampler indexes (:class:`~train.training_data.CachedData`,
:class:`~train.training_data.PixelData`) are in :mod:`train.training_data`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import torch


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
