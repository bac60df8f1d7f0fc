"""The project's statistics, below every UI and command line: one module, plain numbers in.

Studio, ``python -m data stats`` and ``python -m train.evaluate`` all import from here, so each
statistic exists once (docs/studio.md, "Results a team can trust"; issue #15):

* **Bootstrap intervals** -- :func:`bootstrap_ci` / :func:`bootstrap_distribution`, percentile
  bootstrap over items from a seeded ``numpy.random.Generator`` (``train.stats`` re-exports them
  and adds the paired tests).
* **Kappa** -- :func:`cohen_kappa` (plain, linear or quadratic weights) and
  :func:`quadratic_weighted_kappa` over the integer classes 0..5.
* **Judge agreement** -- :func:`score_agreement`: how close one set of 0-5 scores (a judge's) is
  to a reference (the Shapes oracle, or the mean of human raters): MAE, exact and within-one
  agreement of the rounded scores, within one point, quadratic-weighted kappa, Pearson and
  Spearman. ``data.stats`` (judge vs oracle), ``train.stats.verdict_agreement`` (verdicts vs
  ground truth) and :func:`judge_human_agreement` (judge vs humans) all call it.
* **Human evaluation** -- on long pandas frames, one row per observation:

  ``ratings``      item_id, system, rater, perspective, score      one 0-5 score of one output
  ``preferences``  item_id, rater, system_a, system_b, outcome      outcome in OUTCOMES
  ``judge``        item_id, system, perspective, score              the automatic judge's score
  ``gold``         rater, gold_id, outcome, expected, score_error   answers to gold pairs

  the human-score table (paper Table 3), win rates, Bradley-Terry, Krippendorff's alpha,
  judge-vs-human agreement and per-rater agreement (with gold answers and with other raters).

Design choices of the human-evaluation statistics (each is documented in docs/studio.md):

* The human-score table (the paper's Table 3) averages each output's ratings over raters
  first, then over benchmark items, and its interval (95% by default) is a *cluster*
  bootstrap over items: the ratings of one item by k raters are not independent observations,
  so resampling single ratings would give intervals that are too narrow. Each cell and the
  Bradley-Terry table are seeded with ``ResultsConfig.seed`` (so a cell's interval does not
  depend on the other cells).
* Ties and "both bad" count half a win to each side, as in Chatbot Arena / GenAI-Arena.
* The Bradley-Terry fit is the minorisation-maximisation algorithm of Hunter (2004) with a
  weak prior (one virtual tie between every pair of systems), which keeps ratings finite when
  a system wins or loses everything and ties otherwise unconnected systems together. Ratings
  are on the Elo scale (400 log10 strength, mean 1000) with a bootstrap interval.
* Krippendorff's alpha is computed from the coincidence matrix (Krippendorff 2011,
  "Computing Krippendorff's Alpha-Reliability") for nominal, ordinal, interval and ratio data;
  scores 0-5 use the interval metric by default. Units with a single rating are not pairable
  and are left out, as the definition prescribes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from core.rewards import PERSPECTIVES

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


# -- human evaluation -------------------------------------------------------------------------

OUTCOMES: tuple[str, ...] = ("a", "b", "tie", "both_bad")
RATING_COLUMNS = ("item_id", "system", "rater", "perspective", "score")
PREFERENCE_COLUMNS = ("item_id", "rater", "system_a", "system_b", "outcome")
JUDGE_COLUMNS = ("item_id", "system", "perspective", "score")


@dataclass(frozen=True)
class ResultsConfig:
    n_bootstrap: int = 2000  # resamples for the score-table and Bradley-Terry intervals
    seed: int = 0  # bootstrap seed, so that a report is reproducible
    bt_prior: float = 1.0  # virtual ties between every pair of systems in the Bradley-Terry fit
    alpha_level: str = "interval"  # Krippendorff metric for 0-5 scores
    confidence: float = 0.95  # two-sided level of every bootstrap interval

    def bootstrap(self, n_resamples: int | None = None) -> BootstrapConfig:
        """The :class:`BootstrapConfig` behind this report's intervals."""
        return BootstrapConfig(
            n_resamples=self.n_bootstrap if n_resamples is None else n_resamples,
            confidence=self.confidence,
            seed=self.seed,
        )


def _require(frame: pd.DataFrame, columns: Sequence[str], name: str) -> pd.DataFrame:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"the {name} table needs the columns {list(columns)}; missing {missing}")
    return frame


# -- human-score table (paper Table 3) -----------------------------------------------------


def score_table(ratings: pd.DataFrame, config: ResultsConfig = ResultsConfig()) -> pd.DataFrame:
    """Mean human score per system and perspective with a cluster-bootstrap interval.

    Returns one row per (system, perspective): ``mean, ci_low, ci_high, n_items, n_ratings``.
    The interval (``config.confidence``, 95% by default) is NaN when fewer than two items
    were rated.
    """
    _require(ratings, RATING_COLUMNS, "ratings")
    rows = []
    boot = config.bootstrap()
    for (system, perspective), group in ratings.groupby(["system", "perspective"], sort=True):
        # Cluster bootstrap: resample items, each carrying the mean of its raters.
        per_item = group.groupby("item_id")["score"].mean().to_numpy(dtype=float)  # (I,)
        mean = float(per_item.mean())
        low = high = float("nan")
        if len(per_item) >= 2:
            estimate = bootstrap_ci(per_item, np.mean, boot)
            low, high = estimate.low, estimate.high
        rows.append(
            {
                "system": system,
                "perspective": perspective,
                "mean": mean,
                "ci_low": low,
                "ci_high": high,
                "n_items": len(per_item),
                "n_ratings": len(group),
            }
        )
    return pd.DataFrame(
        rows, columns=["system", "perspective", "mean", "ci_low", "ci_high", "n_items", "n_ratings"]
    )


def score_table_wide(table: pd.DataFrame) -> pd.DataFrame:
    """Table 3 layout: one row per system, one "mean [low, high]" cell per perspective."""
    if table.empty:
        return pd.DataFrame(columns=["system", *PERSPECTIVES])

    def cell(row: pd.Series) -> str:
        if np.isnan(row["ci_low"]):
            return f"{row['mean']:.2f} (n={row['n_items']})"
        return f"{row['mean']:.2f} [{row['ci_low']:.2f}, {row['ci_high']:.2f}]"

    wide = table.assign(cell=table.apply(cell, axis=1)).pivot(
        index="system", columns="perspective", values="cell"
    )
    wide = wide.reindex(columns=[p for p in PERSPECTIVES if p in wide.columns])
    return wide.reset_index().rename_axis(columns=None)


# -- preferences: win rates and Bradley-Terry ----------------------------------------------


def _pairwise_counts(prefs: pd.DataFrame) -> pd.DataFrame:
    """One row per (system, opponent) seen from the system's side."""
    _require(prefs, PREFERENCE_COLUMNS, "preferences")
    bad = sorted(set(prefs["outcome"]) - set(OUTCOMES))
    if bad:
        raise ValueError(f"unknown preference outcome(s) {bad}; expected one of {OUTCOMES}")
    a_side = pd.DataFrame(
        {
            "system": prefs["system_a"],
            "opponent": prefs["system_b"],
            "win": prefs["outcome"] == "a",
            "loss": prefs["outcome"] == "b",
            "tie": prefs["outcome"] == "tie",
            "both_bad": prefs["outcome"] == "both_bad",
        }
    )
    b_side = pd.DataFrame(
        {
            "system": prefs["system_b"],
            "opponent": prefs["system_a"],
            "win": prefs["outcome"] == "b",
            "loss": prefs["outcome"] == "a",
            "tie": prefs["outcome"] == "tie",
            "both_bad": prefs["outcome"] == "both_bad",
        }
    )
    return pd.concat([a_side, b_side], ignore_index=True)


def win_rates(prefs: pd.DataFrame) -> pd.DataFrame:
    """Wins, losses, ties and "both bad" per system against each opponent and overall.

    ``win_rate`` counts ties and "both bad" as half a win; ``opponent == "(all)"`` rows
    aggregate over every opponent.
    """
    cols = ["system", "opponent", "n", "wins", "losses", "ties", "both_bad", "win_rate"]
    if prefs.empty:
        return pd.DataFrame(columns=cols)
    sides = _pairwise_counts(prefs)
    out = []
    for keys, group in [
        *sides.groupby(["system", "opponent"], sort=True),
        *((k, g) for k, g in sides.assign(opponent="(all)").groupby(["system", "opponent"])),
    ]:
        n = len(group)
        wins, losses = int(group["win"].sum()), int(group["loss"].sum())
        ties, both_bad = int(group["tie"].sum()), int(group["both_bad"].sum())
        out.append(
            {
                "system": keys[0],
                "opponent": keys[1],
                "n": n,
                "wins": wins,
                "losses": losses,
                "ties": ties,
                "both_bad": both_bad,
                "win_rate": (wins + 0.5 * (ties + both_bad)) / n,
            }
        )
    return pd.DataFrame(out, columns=cols)


def _bt_strengths(
    systems: Sequence[str], a_idx: np.ndarray, b_idx: np.ndarray, score_a: np.ndarray, prior: float
) -> np.ndarray:
    """Hunter's MM updates. ``score_a`` is 1 (a won), 0 (b won) or 0.5 (tie) per comparison."""
    k = len(systems)
    wins = np.zeros(k)
    games = np.zeros((k, k))  # games[i, j]: comparisons between i and j (symmetric)
    np.add.at(wins, a_idx, score_a)
    np.add.at(wins, b_idx, 1.0 - score_a)
    np.add.at(games, (a_idx, b_idx), 1.0)
    np.add.at(games, (b_idx, a_idx), 1.0)
    if k > 1 and prior > 0:  # one virtual tie between every pair
        off_diagonal = 1.0 - np.eye(k)
        games += prior * off_diagonal
        wins += prior * 0.5 * (k - 1)
    strength = np.ones(k)
    for _ in range(1000):
        denom = (games / (strength[:, None] + strength[None, :])).sum(axis=1)
        new = np.where(denom > 0, wins / np.maximum(denom, 1e-300), strength)
        new = new / np.exp(np.mean(np.log(np.maximum(new, 1e-300))))  # geometric mean 1
        if np.max(np.abs(new - strength)) < 1e-10:
            strength = new
            break
        strength = new
    return strength


def bradley_terry(prefs: pd.DataFrame, config: ResultsConfig = ResultsConfig()) -> pd.DataFrame:
    """Bradley-Terry ratings (Elo scale, mean 1000) with a bootstrap interval and rank.

    The interval resamples comparisons (rows of ``prefs``) with
    :func:`bootstrap_distribution` and refits the model on each resample.
    """
    cols = ["rank", "system", "rating", "ci_low", "ci_high", "n"]
    if prefs.empty:
        return pd.DataFrame(columns=cols)
    _pairwise_counts(prefs)  # validates columns and outcomes
    systems = sorted(set(prefs["system_a"]) | set(prefs["system_b"]))
    index = {s: i for i, s in enumerate(systems)}
    a_idx = prefs["system_a"].map(index).to_numpy()
    b_idx = prefs["system_b"].map(index).to_numpy()
    score_a = prefs["outcome"].map({"a": 1.0, "b": 0.0, "tie": 0.5, "both_bad": 0.5}).to_numpy()

    def elo(strength: np.ndarray) -> np.ndarray:
        return 1000.0 + 400.0 * np.log10(strength)

    point = elo(_bt_strengths(systems, a_idx, b_idx, score_a, config.bt_prior))

    def refit(rows: np.ndarray, axis: int = -1) -> np.ndarray:
        """(b, n) resampled comparison numbers -> (b, k) Elo ratings, one full fit per row."""
        picks = np.moveaxis(rows, axis, -1).astype(np.intp)
        return np.stack(
            [
                elo(_bt_strengths(systems, a_idx[p], b_idx[p], score_a[p], config.bt_prior))
                for p in picks
            ]
        )

    # The bootstrap resamples the comparison numbers 0..n-1 (exact as floats) and the statistic
    # refits on the picked comparisons. It returns one rating per system, so the distribution
    # is (n_boot, k) and the percentile interval is taken per system (column).
    n_boot = max(1, config.n_bootstrap // 10)  # each resample is a full fit; 200 is plenty
    boot = config.bootstrap(n_boot)
    boots = bootstrap_distribution(np.arange(len(prefs), dtype=float), refit, boot)  # (B, k)
    tail = (1.0 - boot.confidence) / 2.0
    low, high = np.quantile(boots, [tail, 1.0 - tail], axis=0)  # (k,) each
    counts = _pairwise_counts(prefs).groupby("system").size()
    table = pd.DataFrame(
        {
            "system": systems,
            "rating": point,
            "ci_low": low,
            "ci_high": high,
            "n": [int(counts.get(s, 0)) for s in systems],
        }
    ).sort_values("rating", ascending=False, kind="stable")
    table.insert(0, "rank", range(1, len(table) + 1))
    return table.reset_index(drop=True)[cols]


# -- Krippendorff's alpha -------------------------------------------------------------------


def krippendorff_alpha(
    units: Mapping[Hashable, Sequence[float]] | Iterable[Sequence[float]], level: str = "interval"
) -> float:
    """Krippendorff's alpha from the values each unit received (any number of coders).

    ``units`` maps a unit to its values (missing values simply absent; NaN is dropped).
    ``level`` is "nominal", "ordinal", "interval" or "ratio". Returns NaN when fewer than two
    units have two or more values, or when all pairable values are identical (no variation,
    so reliability is undefined rather than perfect).
    """
    values_per_unit = units.values() if isinstance(units, Mapping) else units
    pairable = []
    for values in values_per_unit:
        kept = [float(v) for v in values if v is not None and not np.isnan(float(v))]
        if len(kept) >= 2:
            pairable.append(kept)
    if len(pairable) < 1:
        return float("nan")
    categories = np.array(sorted({v for vals in pairable for v in vals}))
    if len(categories) < 2:
        return float("nan")
    pos = {v: i for i, v in enumerate(categories)}
    c = len(categories)
    coincidence = np.zeros((c, c))  # o_ck in Krippendorff's notation
    for vals in pairable:
        counts = np.zeros(c)
        for v in vals:
            counts[pos[v]] += 1
        pairs = np.outer(counts, counts) - np.diag(counts)  # ordered pairs of different coders
        coincidence += pairs / (len(vals) - 1)
    n_c = coincidence.sum(axis=1)  # (c,)
    n = n_c.sum()
    delta2 = _distance_matrix(categories, n_c, level)  # (c, c)
    observed = (coincidence * delta2).sum() / n
    expected = (np.outer(n_c, n_c) * delta2).sum() / (n * (n - 1))
    if expected == 0:
        return float("nan")
    return float(1.0 - observed / expected)


def _distance_matrix(categories: np.ndarray, n_c: np.ndarray, level: str) -> np.ndarray:
    diff = categories[:, None] - categories[None, :]
    if level == "nominal":
        return (diff != 0).astype(float)
    if level == "interval":
        return diff**2
    if level == "ratio":
        total = categories[:, None] + categories[None, :]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total == 0, 0.0, (diff / total) ** 2)
    if level == "ordinal":
        cumulative = np.cumsum(n_c)
        # delta_ck = (sum_{g=c..k} n_g - (n_c + n_k) / 2)^2 for the ranks between c and k
        lo = np.minimum.outer(np.arange(len(n_c)), np.arange(len(n_c)))
        hi = np.maximum.outer(np.arange(len(n_c)), np.arange(len(n_c)))
        between = cumulative[hi] - np.where(lo > 0, cumulative[lo - 1], 0.0)
        return (between - (n_c[lo] + n_c[hi]) / 2.0) ** 2
    raise ValueError(f"unknown level {level!r}; expected nominal, ordinal, interval or ratio")


def alpha_per_perspective(
    ratings: pd.DataFrame, config: ResultsConfig = ResultsConfig()
) -> pd.DataFrame:
    """Inter-rater alpha per perspective; a unit is one output (item, system)."""
    _require(ratings, RATING_COLUMNS, "ratings")
    rows = []
    for perspective in PERSPECTIVES:
        sub = ratings[ratings["perspective"] == perspective]
        units = sub.groupby(["item_id", "system"])["score"].apply(list)
        rows.append(
            {
                "perspective": perspective,
                "alpha": krippendorff_alpha(units.to_dict(), config.alpha_level),
                "units_with_2plus": int((units.apply(len) >= 2).sum()),
                "raters": int(sub["rater"].nunique()),
            }
        )
    return pd.DataFrame(rows, columns=["perspective", "alpha", "units_with_2plus", "raters"])


# -- judge versus humans --------------------------------------------------------------------


def judge_human_agreement(
    ratings: pd.DataFrame, judge: pd.DataFrame, config: ResultsConfig = ResultsConfig()
) -> pd.DataFrame:
    """How well the judge's scores match the humans' on the same outputs, per perspective.

    ``mae``, ``pearson`` and ``spearman`` come from :func:`score_agreement` of the judge with
    the mean human score of each output (correlations need three or more outputs);
    ``alpha_with_judge`` treats the judge as one more coder beside the humans.
    """
    _require(ratings, RATING_COLUMNS, "ratings")
    _require(judge, JUDGE_COLUMNS, "judge")
    cols = ["perspective", "n_outputs", "mae", "pearson", "spearman", "alpha_with_judge"]
    rows = []
    keys = ["item_id", "system", "perspective"]
    human = ratings.groupby(keys)["score"].mean().rename("human").reset_index()
    joined = human.merge(judge[keys + ["score"]].rename(columns={"score": "judge"}), on=keys)
    for perspective in PERSPECTIVES:
        sub = joined[joined["perspective"] == perspective]
        agree = score_agreement(sub["judge"].to_numpy(), sub["human"].to_numpy())
        few = len(sub) < 3  # a correlation of two points says nothing
        units: dict[tuple, list[float]] = {}
        rated = ratings[ratings["perspective"] == perspective]
        for (item, system), group in rated.groupby(["item_id", "system"]):
            units[(item, system)] = list(group["score"])
        for row in judge[judge["perspective"] == perspective].itertuples():
            if (row.item_id, row.system) in units:
                units[(row.item_id, row.system)].append(row.score)
        rows.append(
            {
                "perspective": perspective,
                "n_outputs": agree["n"],
                "mae": agree["mae"],
                "pearson": math.nan if few else agree["pearson"],
                "spearman": math.nan if few else agree["spearman"],
                "alpha_with_judge": krippendorff_alpha(units, config.alpha_level),
            }
        )
    return pd.DataFrame(rows, columns=cols)


judge_agreement = judge_human_agreement  # the name studio.results has always exported


# -- per-rater agreement: with gold answers and with the other raters -----------------------

GOLD_COLUMNS = ("rater", "gold_id", "outcome", "expected", "score_error")
RATER_COLUMNS = (
    "rater",
    "outputs_rated",
    "gold_n",
    "gold_accuracy",
    "gold_score_mae",
    "mae_vs_others",
    "preference_agreement",
    "score_sd",
    "modal_share",
)


def _mae_vs_others(ratings: pd.DataFrame) -> dict[str, float]:
    """Per rater: mean |own score - mean of the other raters' scores| on shared outputs."""
    keys = ["item_id", "system", "perspective"]
    grouped = ratings.groupby(keys)["score"]
    total, count = grouped.transform("sum"), grouped.transform("count")
    shared = count >= 2
    others = (total[shared] - ratings["score"][shared]) / (count[shared] - 1)
    diff = (ratings["score"][shared] - others).abs()
    return diff.groupby(ratings["rater"][shared]).mean().to_dict()


def _preference_agreement(prefs: pd.DataFrame) -> dict[str, float]:
    """Per rater: share of (own, other rater) pairs on the same comparison with equal outcomes."""
    agree: dict[str, list[float]] = {}
    for _, group in prefs.groupby(["item_id", "system_a", "system_b"]):
        if group["rater"].nunique() < 2:
            continue
        for rater, outcome in zip(group["rater"], group["outcome"]):
            others = group.loc[group["rater"] != rater, "outcome"]
            agree.setdefault(rater, []).extend((others == outcome).astype(float))
    return {rater: float(np.mean(v)) for rater, v in agree.items()}


def rater_agreement(
    ratings: pd.DataFrame, preferences: pd.DataFrame, gold: pd.DataFrame | None = None
) -> pd.DataFrame:
    """One row per rater: how far to trust them.

    * ``gold_accuracy``: share of gold pairs answered with the known preference (a tie or "both
      bad" on a gold pair is wrong: gold pairs have a clear answer); ``gold_score_mae``: mean
      absolute error of their scores on gold pairs against the known scores.
    * ``mae_vs_others``: mean absolute difference between their score of an output and the mean
      of the other raters' scores of it; ``preference_agreement``: share of equal preferences
      with every other rater of the same pair.
    * ``score_sd`` and ``modal_share`` (share of their most frequent score): a rater who gives
      the same score to everything has ``score_sd`` 0 and ``modal_share`` 1.

    NaN where there is nothing to compare (no gold answer, no shared output).
    """
    _require(ratings, RATING_COLUMNS, "ratings")
    _require(preferences, PREFERENCE_COLUMNS, "preferences")
    gold = gold if gold is not None else pd.DataFrame(columns=GOLD_COLUMNS)
    _require(gold, GOLD_COLUMNS, "gold")
    raters = sorted(set(ratings["rater"]) | set(preferences["rater"]) | set(gold["rater"]))
    mae_others, pref_agree = _mae_vs_others(ratings), _preference_agreement(preferences)
    rows = []
    for rater in raters:
        own = ratings.loc[ratings["rater"] == rater, "score"].astype(float)
        answers = gold[gold["rater"] == rater]
        errors = answers["score_error"].astype(float).dropna()
        rows.append(
            {
                "rater": rater,
                "outputs_rated": int(len(own) // len(PERSPECTIVES)),
                "gold_n": len(answers),
                "gold_accuracy": float((answers["outcome"] == answers["expected"]).mean())
                if len(answers)
                else math.nan,
                "gold_score_mae": float(errors.mean()) if len(errors) else math.nan,
                "mae_vs_others": float(mae_others.get(rater, math.nan)),
                "preference_agreement": float(pref_agree.get(rater, math.nan)),
                "score_sd": float(own.std(ddof=0)) if len(own) else math.nan,
                "modal_share": float(own.value_counts(normalize=True).iloc[0])
                if len(own)
                else math.nan,
            }
        )
    return pd.DataFrame(rows, columns=list(RATER_COLUMNS))


# -- the whole report -----------------------------------------------------------------------


@dataclass
class ResultsReport:
    """All result tables of one human evaluation, ready to show or export."""

    scores: pd.DataFrame
    scores_wide: pd.DataFrame
    win_rates: pd.DataFrame
    bradley_terry: pd.DataFrame
    alpha: pd.DataFrame
    judge_agreement: pd.DataFrame
    ratings: pd.DataFrame = field(repr=False)
    preferences: pd.DataFrame = field(repr=False)
    # Per rater (team and local mode, excluded raters flagged): see rater_agreement.
    raters: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=RATER_COLUMNS))
    # Table 3 over the ratings made in local single-user mode, kept out of the tables above.
    local_scores: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=["system", *PERSPECTIVES])
    )

    def tables(self) -> dict[str, pd.DataFrame]:
        return {
            "human_scores": self.scores,
            "win_rates": self.win_rates,
            "bradley_terry": self.bradley_terry,
            "krippendorff_alpha": self.alpha,
            "judge_vs_human": self.judge_agreement,
            "raters": self.raters,
            "local_mode_scores": self.local_scores,
            "ratings_raw": self.ratings,
            "preferences_raw": self.preferences,
        }

    def write_csv(self, folder: str | Path) -> list[Path]:
        """One CSV per table; returns their paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, table in self.tables().items():
            path = folder / f"{name}.csv"
            table.to_csv(path, index=False)
            paths.append(path)
        return paths


def build_report(
    ratings: pd.DataFrame,
    preferences: pd.DataFrame,
    judge: pd.DataFrame | None = None,
    config: ResultsConfig = ResultsConfig(),
    gold: pd.DataFrame | None = None,
) -> ResultsReport:
    """Every table from the three frames (and the raters' gold answers, if any)."""
    ratings = ratings if not ratings.empty else pd.DataFrame(columns=RATING_COLUMNS)
    preferences = preferences if not preferences.empty else pd.DataFrame(columns=PREFERENCE_COLUMNS)
    judge = judge if judge is not None and not judge.empty else pd.DataFrame(columns=JUDGE_COLUMNS)
    scores = score_table(ratings, config)
    return ResultsReport(
        scores=scores,
        scores_wide=score_table_wide(scores),
        win_rates=win_rates(preferences),
        bradley_terry=bradley_terry(preferences, config),
        alpha=alpha_per_perspective(ratings, config),
        judge_agreement=judge_agreement(ratings, judge, config),
        ratings=ratings,
        preferences=preferences,
        raters=rater_agreement(ratings, preferences, gold),
    )
