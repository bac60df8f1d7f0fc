"""How far to trust the ratings: Krippendorff's alpha, the judge versus the humans, and
per-rater agreement (with gold answers and with the other raters).

Krippendorff's alpha is computed from the coincidence matrix (Krippendorff 2011, "Computing
Krippendorff's Alpha-Reliability") for nominal, ordinal, interval and ratio data; scores 0-5
use the interval metric by default. Units with a single rating are not pairable and are left
out, as the definition prescribes. The frames are those of :mod:`core.stats.human_eval`.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from core.rewards import PERSPECTIVES
from core.stats.agreement import score_agreement
from core.stats.human_eval import (
    JUDGE_COLUMNS,
    PREFERENCE_COLUMNS,
    RATING_COLUMNS,
    ResultsConfig,
    _require,
)

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
