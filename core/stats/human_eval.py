"""The human evaluation's frames and settings, its score table (paper Table 3) and the
preference statistics (win rates, Bradley-Terry).

Every statistic of a human evaluation takes long pandas frames, one row per observation:

  ``ratings``      item_id, system, rater, perspective, score      one 0-5 score of one output
  ``preferences``  item_id, rater, system_a, system_b, outcome      outcome in OUTCOMES
  ``judge``        item_id, system, perspective, score              the automatic judge's score
  ``gold``         rater, gold_id, outcome, expected, score_error   answers to gold pairs

The reliability tables (Krippendorff's alpha, judge vs humans, per rater) are in
:mod:`core.stats.reliability`, the whole report in :mod:`core.stats.report`.

Design choices (each is documented in docs/studio.md):

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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from core.rewards import PERSPECTIVES
from core.stats.intervals import BootstrapConfig, bootstrap_ci, bootstrap_distribution

# -- the frames and the report's settings ---------------------------------------------------

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
