"""Bootstrap intervals: a point estimate with its percentile-bootstrap confidence interval.

:func:`bootstrap_ci` / :func:`bootstrap_distribution` resample benchmark items from a seeded
``numpy.random.Generator`` (same seed, same intervals); :class:`BootstrapConfig` says how,
:class:`Estimate` holds the result. ``train.stats`` re-exports them and adds the paired tests;
the human-evaluation tables (:mod:`core.stats.human_eval`) use them for their intervals.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# -- bootstrap intervals ----------------------------------------------------------------------

Statistic = Callable[..., np.ndarray]  # statistic(x, axis=-1) -> reduced array, like np.mean


@dataclass(frozen=True)
class BootstrapConfig:
    """How every interval in a report is computed."""

    n_resamples: int = 10_000  # bootstrap resamples per interval
    confidence: float = 0.95  # two-sided confidence level
    seed: int = 0  # seed of the numpy Generator; same seed, same intervals
    batch: int = 2_000  # resamples drawn at once (bounds memory: batch x n indices)

    def __post_init__(self) -> None:
        if self.n_resamples < 1:
            raise ValueError(f"n_resamples must be at least 1, got {self.n_resamples}.")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence must be strictly between 0 and 1, got {self.confidence}.")
        if self.batch < 1:
            raise ValueError(f"batch must be at least 1, got {self.batch}.")

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_resamples": self.n_resamples,
            "confidence": self.confidence,
            "seed": self.seed,
            "batch": self.batch,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BootstrapConfig:
        return cls(**d)


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its confidence interval over ``n`` items."""

    value: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def format(self, scale: float = 1.0, digits: int = 2, suffix: str = "") -> str:
        """``"63.0% [59.0, 67.1]"``-style text; ``"n/a"`` when there were no items."""
        if self.n == 0 or math.isnan(self.value):
            return "n/a"
        v, lo, hi = self.value * scale, self.low * scale, self.high * scale
        return f"{v:.{digits}f}{suffix} [{lo:.{digits}f}, {hi:.{digits}f}]"


EMPTY = Estimate(math.nan, math.nan, math.nan, 0)


def _as_1d(values: Sequence[float] | np.ndarray, name: str = "values") -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {x.shape}.")
    if not np.all(np.isfinite(x)):
        bad = int(np.count_nonzero(~np.isfinite(x)))
        raise ValueError(
            f"{name} has {bad} non-finite value(s); decide how failed verdicts count "
            "before computing statistics."
        )
    return x


def bootstrap_distribution(
    values: Sequence[float] | np.ndarray,
    statistic: Statistic = np.mean,
    config: BootstrapConfig | None = None,
) -> np.ndarray:
    """The statistic on ``config.n_resamples`` resamples of ``values`` -> shape (B,)."""
    config = config or BootstrapConfig()
    x = _as_1d(values)
    n = len(x)
    if n == 0:
        raise ValueError("Cannot bootstrap an empty sample.")
    rng = np.random.default_rng(config.seed)
    out = []
    for start in range(0, config.n_resamples, config.batch):
        b = min(config.batch, config.n_resamples - start)
        idx = rng.integers(0, n, (b, n))  # (b, n) item indices
        out.append(np.asarray(statistic(x[idx], axis=-1), dtype=np.float64))  # (b,)
    return np.concatenate(out)


def _interval(dist: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(dist, [alpha, 1.0 - alpha])
    return float(low), float(high)


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    statistic: Statistic = np.mean,
    config: BootstrapConfig | None = None,
) -> Estimate:
    """Percentile-bootstrap confidence interval of ``statistic(values)``.

    :param values: one number per benchmark item (1/0 for yes/no verdicts).
    :param statistic: a reduction taking ``axis=-1``, e.g. ``np.mean`` or ``np.median``.
    :param config: resamples, confidence level and seed.
    :returns: the statistic on the full sample with its interval; :data:`EMPTY` for no items.
    """
    config = config or BootstrapConfig()
    x = _as_1d(values)
    if len(x) == 0:
        return EMPTY
    value = float(statistic(x, axis=-1))
    low, high = _interval(bootstrap_distribution(x, statistic, config), config.confidence)
    return Estimate(value, low, high, len(x))
