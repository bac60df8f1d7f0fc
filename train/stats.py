"""Statistics for benchmark tables: bootstrap confidence intervals and paired tests.

Every number in an evaluation table is an average over benchmark items (560 on Real-Edit and
Shapes-Edit), so it comes with sampling noise. This module puts an interval around each number and
a p-value on each difference between two systems, with nothing but numpy and scipy.

* :func:`bootstrap_ci` -- (from :mod:`core.stats`, re-exported) percentile bootstrap over items,
  drawn from a seeded ``numpy.random.Generator``: ``rng.integers(0, n, (B, n))`` row by row, then the ``alpha/2`` and
  ``1 - alpha/2`` quantiles (linear interpolation) of the statistic. This is exactly what
  ``scipy.stats.bootstrap(method="percentile")`` computes for the same generator, which the tests
  check draw for draw. For a yes/no accuracy the bootstrap distribution of the mean is
  ``Binomial(n, p_hat) / n``, the closed form the tests also check.
* :func:`paired_bootstrap_diff` -- the same, resampling items jointly for two systems, giving an
  interval for the difference ``b - a`` that respects the pairing (same items, same seeds).
* :func:`mcnemar_exact` -- the exact McNemar test for paired yes/no verdicts: only items where the
  systems disagree carry information; under the null hypothesis each such item is a fair coin.
* :func:`paired_permutation` -- a sign-flip permutation test on the mean paired score difference
  (exact when there are few enough non-zero differences), and :func:`wilcoxon_signed_rank`
  as the rank-based alternative.
* :func:`compare_paired` -- one call that picks the right test for an accuracy or a score.
* :func:`holm` -- Holm's step-down correction when a table reports several p-values at once.
* :func:`verdict_agreement` -- how often a judge agrees with ground truth (Cohen's kappa and the
  score comparison :func:`core.stats.score_agreement`, the project's one judge agreement).

Conventions: inputs are 1-D sequences of finite numbers (yes/no as 1/0); a NaN is an error here,
because the caller (the report) must decide what a failed verdict means before averaging.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy import stats as sps

from core.stats import (  # noqa: F401 (the project's one bootstrap and kappa, re-exported)
    EMPTY,
    BootstrapConfig,
    Estimate,
    Statistic,
    _as_1d,
    _interval,
    bootstrap_ci,
    bootstrap_distribution,
    cohen_kappa,
    score_agreement,
)


def _paired(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    x, y = _as_1d(a, "a"), _as_1d(b, "b")
    if len(x) != len(y):
        raise ValueError(
            f"Paired samples must have the same length (one value per shared item); "
            f"got {len(x)} and {len(y)}."
        )
    return x, y


def paired_bootstrap_diff(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    statistic: Statistic = np.mean,
    config: BootstrapConfig | None = None,
) -> tuple[Estimate, float]:
    """Interval for ``statistic(b) - statistic(a)`` resampling items jointly, and a p-value.

    The p-value is the two-sided bootstrap p-value of "no difference": twice the smaller tail
    of the centred bootstrap distribution beyond the observed difference, ``(k + 1) / (B + 1)``
    so that it is never exactly zero, capped at 1.
    """
    config = config or BootstrapConfig()
    x, y = _paired(a, b)
    n = len(x)
    if n == 0:
        return EMPTY, math.nan
    observed = float(statistic(y, axis=-1) - statistic(x, axis=-1))
    rng = np.random.default_rng(config.seed)
    dist = []
    for start in range(0, config.n_resamples, config.batch):
        k = min(config.batch, config.n_resamples - start)
        idx = rng.integers(0, n, (k, n))  # (k, n): the same items for both systems
        dist.append(statistic(y[idx], axis=-1) - statistic(x[idx], axis=-1))
    d = np.concatenate(dist).astype(np.float64)  # (B,)
    low, high = _interval(d, config.confidence)
    # Shift the distribution to the null (mean 0); count resamples at least as extreme as the
    # observed difference, with the (k + 1) / (B + 1) convention so p is never exactly 0.
    centred = d - d.mean()
    k = min(np.sum(centred >= abs(observed)), np.sum(centred <= -abs(observed)))
    p = min(1.0, 2.0 * (float(k) + 1.0) / (len(d) + 1.0)) if observed != 0 else 1.0
    return Estimate(observed, low, high, n), p


# -- paired significance tests ----------------------------------------------------------------


@dataclass(frozen=True)
class McNemar:
    """Exact McNemar test: ``a_only`` items only A got right, ``b_only`` only B."""

    a_only: int
    b_only: int
    p_value: float


def mcnemar_exact(a_yes: Sequence[float], b_yes: Sequence[float]) -> McNemar:
    """Two-sided exact McNemar test on paired yes/no verdicts (1 = yes, 0 = no)."""
    x, y = _paired(a_yes, b_yes)
    for name, v in (("a_yes", x), ("b_yes", y)):
        if not np.all((v == 0) | (v == 1)):
            raise ValueError(f"{name} must contain only 0/1 (no/yes) values.")
    a_only = int(np.sum((x == 1) & (y == 0)))
    b_only = int(np.sum((x == 0) & (y == 1)))
    discordant = a_only + b_only
    p = 1.0 if discordant == 0 else float(sps.binomtest(b_only, discordant, 0.5).pvalue)
    return McNemar(a_only, b_only, p)


def paired_permutation(
    a: Sequence[float], b: Sequence[float], config: BootstrapConfig | None = None
) -> float:
    """Two-sided sign-flip permutation p-value for the mean of ``b - a``.

    Exact (all 2^m sign patterns of the m non-zero differences) when ``2^m <= n_resamples``,
    Monte Carlo with the seeded generator otherwise.
    """
    config = config or BootstrapConfig()
    x, y = _paired(a, b)
    d = y - x
    if len(d) == 0:
        return math.nan
    if not np.any(d != 0) or len(d) == 1:  # one pair: both signs are equally extreme
        return 1.0
    res = sps.permutation_test(
        (d,),
        lambda s, axis=-1: np.mean(s, axis=axis),
        permutation_type="samples",
        n_resamples=config.n_resamples,
        alternative="two-sided",
        vectorized=True,
        batch=config.batch,
        rng=np.random.default_rng(config.seed),
    )
    return float(res.pvalue)


def wilcoxon_signed_rank(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value of ``b - a`` (Pratt's handling of zero differences)."""
    x, y = _paired(a, b)
    d = y - x
    if len(d) == 0:
        return math.nan
    if np.count_nonzero(d) < 2:  # fewer than two ranks: no evidence either way
        return 1.0
    return float(sps.wilcoxon(d, zero_method="pratt", alternative="two-sided").pvalue)


@dataclass(frozen=True)
class PairedComparison:
    """System B against system A on the items both have a valid verdict for."""

    kind: Literal["binary", "score"]
    n: int  # items in the comparison
    a: float  # A's mean on those items
    b: float  # B's mean on those items
    diff: Estimate  # b - a with its paired bootstrap interval
    test: str  # name of the test behind p_value
    p_value: float
    details: dict[str, float] = field(default_factory=dict)  # secondary statistics


def compare_paired(
    a: Sequence[float],
    b: Sequence[float],
    kind: Literal["binary", "score"],
    config: BootstrapConfig | None = None,
) -> PairedComparison:
    """Compare two systems item by item.

    ``binary`` (accuracies): exact McNemar; details give the discordant counts.
    ``score`` (0-5 scores): sign-flip permutation test on the mean difference; details give
    the Wilcoxon signed-rank p-value and the bootstrap p-value.
    """
    config = config or BootstrapConfig()
    x, y = _paired(a, b)
    if kind not in ("binary", "score"):
        raise ValueError(f"kind must be 'binary' or 'score', got {kind!r}.")
    test = "McNemar (exact)" if kind == "binary" else "paired permutation (sign-flip)"
    if len(x) == 0:
        return PairedComparison(kind, 0, math.nan, math.nan, EMPTY, test, math.nan)
    diff, p_boot = paired_bootstrap_diff(x, y, np.mean, config)
    if kind == "binary":
        m = mcnemar_exact(x, y)
        p, details = m.p_value, {"a_only": m.a_only, "b_only": m.b_only}
    else:
        p, details = paired_permutation(x, y, config), {"p_wilcoxon": wilcoxon_signed_rank(x, y)}
    details["p_bootstrap"] = p_boot
    return PairedComparison(kind, len(x), float(x.mean()), float(y.mean()), diff, test, p, details)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given; NaN stays NaN)."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = len(ok)
    running = 0.0
    for rank, i in enumerate(ok[np.argsort(p[ok], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return [float(v) for v in out]


# -- agreement --------------------------------------------------------------------------------


def verdict_agreement(
    judge_yes: Sequence[float],
    truth_yes: Sequence[float],
    judge_score: Sequence[float],
    truth_score: Sequence[float],
    config: BootstrapConfig | None = None,
) -> dict[str, Any]:
    """How well a judge's evaluate-mode verdicts match ground truth (e.g. the Shapes oracle).

    Returns ``n``, ``agreement`` (share of equal yes/no, with CI), ``kappa`` (Cohen's, yes/no),
    ``judge_yes_rate`` / ``truth_yes_rate``, score ``mae`` (with CI), ``within_1`` (share of
    scores within 1 point) and ``spearman`` (rank correlation of the scores).
    """
    jy, ty = _paired(judge_yes, truth_yes)
    js, ts = _paired(judge_score, truth_score)
    if len(jy) != len(js):
        raise ValueError("Verdicts and scores must describe the same items.")
    n = len(jy)
    if n == 0:
        return {"n": 0}
    scores = score_agreement(js, ts)
    return {
        "n": n,
        "agreement": bootstrap_ci((jy == ty).astype(float), np.mean, config),
        "kappa": cohen_kappa(jy.tolist(), ty.tolist()),
        "judge_yes_rate": float(jy.mean()),
        "truth_yes_rate": float(ty.mean()),
        "mae": bootstrap_ci(np.abs(js - ts), np.mean, config),
        "within_1": scores["within_1_points"],
        "spearman": scores["spearman"],
    }
