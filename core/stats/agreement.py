"""Agreement of two lists of labels or 0-5 scores: kappa and the one judge agreement.

* **Kappa** -- :func:`cohen_kappa` (plain, linear or quadratic weights) and
  :func:`quadratic_weighted_kappa` over the integer classes 0..5.
* **Judge agreement** -- :func:`score_agreement`: how close one set of 0-5 scores (a judge's) is
  to a reference (the Shapes oracle, or the mean of human raters): MAE, exact and within-one
  agreement of the rounded scores, within one point, quadratic-weighted kappa, Pearson and
  Spearman. ``data.stats`` (judge vs oracle), ``train.stats.verdict_agreement`` (verdicts vs
  ground truth) and :func:`core.stats.judge_human_agreement` (judge vs humans) all call it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

# -- kappa --------------------------------------------------------------------------------------

CLASSES = 6  # integer scores 0..5


def to_class(scores: Sequence[float]) -> np.ndarray:
    """Scores in [0, 5] -> integers 0..5, rounding half up (4.5 -> 5)."""
    return np.floor(np.asarray(scores, dtype=float) + 0.5).astype(int).clip(0, CLASSES - 1)


def cohen_kappa(
    a: Sequence[Any],
    b: Sequence[Any],
    *,
    weights: str | None = None,
    labels: Sequence[Any] | None = None,
) -> float:
    """Cohen's kappa of two raters' labels, ``1 - sum(w * observed) / sum(w * expected)``.

    :param weights: ``None`` (every disagreement counts 1: the plain kappa), ``"linear"`` or
        ``"quadratic"`` (disagreement ``|i - j| / (k - 1)``, squared for quadratic, between the
        positions ``i``, ``j`` of the two labels in ``labels``).
    :param labels: the ordered categories; default the labels present, sorted (as text). Weighted
        kappa needs the full scale here, e.g. ``range(6)`` for 0..5 scores.
    :returns: NaN for no items, or when chance agreement is already perfect (no rater varies),
        since kappa is then undefined rather than 1.

    The one kappa of the project: the judge-vs-oracle tables of ``python -m data stats``
    (quadratic, over integer scores) and of ``python -m train.evaluate`` (plain, yes/no verdicts)
    both call it.
    """
    if len(a) != len(b):
        raise ValueError(f"Both raters need one label per item; got {len(a)} and {len(b)}.")
    if weights not in (None, "linear", "quadratic"):
        raise ValueError(f"weights must be None, 'linear' or 'quadratic', got {weights!r}.")
    if len(a) == 0:
        return math.nan
    cats = list(labels) if labels is not None else sorted(set(a) | set(b), key=str)
    index = {lab: i for i, lab in enumerate(cats)}
    unknown = (set(a) | set(b)) - set(index)
    if unknown:
        raise ValueError(f"labels {sorted(unknown, key=str)} are not in the given labels {cats}.")
    k = len(cats)
    observed = np.zeros((k, k))
    np.add.at(observed, ([index[u] for u in a], [index[v] for v in b]), 1.0)
    observed /= observed.sum()
    expected = np.outer(observed.sum(1), observed.sum(0))
    i, j = np.indices((k, k))
    if weights is None:
        w = (i != j).astype(float)
    else:
        w = np.abs(i - j) / max(k - 1, 1)
        if weights == "quadratic":
            w = w**2
    denom = float((w * expected).sum())
    if denom <= 1e-12:
        return math.nan
    return float(1.0 - (w * observed).sum() / denom)


def quadratic_weighted_kappa(a: Sequence[float], b: Sequence[float]) -> float:
    """Cohen's kappa with quadratic weights over classes 0..5 (scores rounded half up); NaN
    when undefined."""
    x, y = to_class(a), to_class(b)
    if len(x) != len(y) or len(x) == 0:
        raise ValueError("kappa needs two equally long, non-empty score lists")
    return cohen_kappa(x.tolist(), y.tolist(), weights="quadratic", labels=range(CLASSES))


# -- judge agreement: the one comparison of two score lists ---------------------------------


def _correlation(x: np.ndarray, y: np.ndarray, kind: str) -> float:
    """Pearson or Spearman; NaN unless there are two or more pairs and both sides vary."""
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    fit = stats.pearsonr if kind == "pearson" else stats.spearmanr
    return float(fit(x, y).statistic)


def score_agreement(judge: Sequence[float], reference: Sequence[float]) -> dict[str, Any]:
    """How close ``judge``'s 0-5 scores are to ``reference``'s, item by item.

    :returns: ``n``; ``mae``; ``exact`` and ``within1`` (shares of equal / at most one class
        apart after rounding half up to 0..5); ``within_1_points`` (share with
        ``|judge - reference| <= 1`` on the raw scores); ``qwk`` (quadratic-weighted kappa over
        0..5); ``pearson`` and ``spearman`` (NaN unless both sides vary). For no items every
        value but ``n`` is NaN.
    """
    a, b = np.asarray(judge, dtype=float), np.asarray(reference, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(
            f"judge and reference need one score per item each; got shapes {a.shape} and {b.shape}."
        )
    keys = ("mae", "exact", "within1", "within_1_points", "qwk", "pearson", "spearman")
    if a.size == 0:
        return {"n": 0, **{k: math.nan for k in keys}}
    ca, cb = to_class(a), to_class(b)
    err = np.abs(a - b)
    return {
        "n": int(a.size),
        "mae": float(err.mean()),
        "exact": float((ca == cb).mean()),
        "within1": float((np.abs(ca - cb) <= 1).mean()),
        "within_1_points": float(np.mean(err <= 1.0)),
        "qwk": quadratic_weighted_kappa(a, b),
        "pearson": _correlation(a, b, "pearson"),
        "spearman": _correlation(a, b, "spearman"),
    }
