"""The human-evaluation statistics of studio/results.py, on hand-checkable data."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from studio.results import (
    ResultsConfig,
    bradley_terry,
    build_report,
    judge_agreement,
    krippendorff_alpha,
    score_table,
    score_table_wide,
    win_rates,
)

NAN = float("nan")
# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: 4 coders, 12 units.
CODERS = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, NAN, NAN, NAN],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, NAN, 3],
    [NAN, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, NAN],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, NAN],
]


@pytest.mark.parametrize(
    "level, expected",
    [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849), ("ratio", 0.797)],
)
def test_krippendorff_alpha_matches_the_published_example(level, expected):
    units = [[coder[u] for coder in CODERS] for u in range(12)]
    assert krippendorff_alpha(units, level) == pytest.approx(expected, abs=5e-4)


def test_krippendorff_alpha_edge_cases():
    assert krippendorff_alpha({"a": [3, 3], "b": [4, 4]}) == pytest.approx(1.0)
    assert math.isnan(krippendorff_alpha({"a": [3, 3], "b": [3, 3]}))  # no variation at all
    assert math.isnan(krippendorff_alpha({"a": [3], "b": [4]}))  # nothing pairable
    with pytest.raises(ValueError, match="unknown level"):
        krippendorff_alpha({"a": [1, 2]}, "cosine")


def _ratings(rows):
    return pd.DataFrame(rows, columns=["item_id", "system", "rater", "perspective", "score"])


def test_score_table_averages_raters_first_and_bootstraps_items():
    rows = []
    for item, (x, y) in enumerate([(5, 3), (4, 4), (5, 5), (3, 1)]):
        rows += [(item, "mrc", "r1", "following", x), (item, "mrc", "r2", "following", y)]
    table = score_table(_ratings(rows), ResultsConfig(n_bootstrap=500, seed=1))
    row = table.iloc[0]
    assert row["mean"] == pytest.approx(np.mean([4, 4, 5, 2]))
    assert row["n_items"] == 4 and row["n_ratings"] == 8
    assert 2.0 <= row["ci_low"] <= row["mean"] <= row["ci_high"] <= 5.0
    again = score_table(_ratings(rows), ResultsConfig(n_bootstrap=500, seed=1))
    pd.testing.assert_frame_equal(table, again)  # seeded: reproducible
    wide = score_table_wide(table)
    assert wide.loc[0, "following"].startswith("3.75 [")


def test_score_table_interval_is_the_item_bootstrap_of_train_stats():
    # Independent check of the shared percentile bootstrap (train.stats): the seeded generator
    # draws a (B, I) index matrix; the interval is the 2.5/97.5% quantile of the resampled means.
    rng = np.random.default_rng(0)
    rows = [
        (item, system, rater, "quality", int(rng.integers(0, 6)))
        for item in range(12)
        for system in ("mrc", "base")
        for rater in ("r1", "r2", "r3")
    ]
    config = ResultsConfig(n_bootstrap=300, seed=7)
    table = score_table(_ratings(rows), config).set_index("system")
    for system in ("mrc", "base"):
        per_item = _ratings(rows).query("system == @system").groupby("item_id")["score"].mean()
        x = per_item.to_numpy(dtype=float)
        idx = np.random.default_rng(7).integers(0, len(x), (300, len(x)))  # (B, I)
        low, high = np.quantile(x[idx].mean(axis=1), [0.025, 0.975])
        assert table.loc[system, "ci_low"] == pytest.approx(low, abs=1e-12)
        assert table.loc[system, "ci_high"] == pytest.approx(high, abs=1e-12)
    # Each cell is seeded on its own: dropping a system leaves the other's interval unchanged.
    alone = score_table(_ratings([r for r in rows if r[1] == "mrc"]), config).iloc[0]
    assert (alone["ci_low"], alone["ci_high"]) == tuple(table.loc["mrc", ["ci_low", "ci_high"]])


def _prefs(rows):
    return pd.DataFrame(rows, columns=["item_id", "rater", "system_a", "system_b", "outcome"])


def test_win_rates_count_ties_and_both_bad_as_half():
    prefs = _prefs(
        [
            (1, "r", "x", "y", "a"),
            (2, "r", "x", "y", "a"),
            (3, "r", "x", "y", "tie"),
            (4, "r", "y", "x", "both_bad"),
        ]  # fmt: skip
    )
    table = win_rates(prefs).set_index(["system", "opponent"])
    x = table.loc[("x", "y")]
    assert (x["n"], x["wins"], x["losses"], x["ties"], x["both_bad"]) == (4, 2, 0, 1, 1)
    assert x["win_rate"] == pytest.approx(0.75)
    assert table.loc[("y", "(all)"), "win_rate"] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="unknown preference outcome"):
        win_rates(_prefs([(1, "r", "x", "y", "left")]))


def test_bradley_terry_recovers_the_order_and_is_finite_for_a_clean_sweep():
    rng = np.random.default_rng(0)
    strength = {"good": 4.0, "mid": 1.0, "bad": 0.25}
    rows = []
    names = list(strength)
    for n in range(600):
        a, b = rng.choice(names, size=2, replace=False)
        p_a = strength[a] / (strength[a] + strength[b])
        rows.append((n, "r", a, b, "a" if rng.random() < p_a else "b"))
    table = bradley_terry(_prefs(rows), ResultsConfig(n_bootstrap=400, seed=0))
    assert list(table["system"]) == ["good", "mid", "bad"]
    assert table["rating"].mean() == pytest.approx(1000.0)
    # 400 log10(4) = 241 Elo points between neighbours; the prior shrinks it only slightly.
    gap = table["rating"].iloc[0] - table["rating"].iloc[1]
    assert 180 < gap < 300
    assert (table["ci_low"] <= table["rating"]).all() and (
        table["rating"] <= table["ci_high"]
    ).all()
    sweep = bradley_terry(_prefs([(i, "r", "x", "y", "a") for i in range(5)]))
    assert np.isfinite(sweep["rating"]).all() and sweep.iloc[0]["system"] == "x"


def test_judge_agreement_perfect_and_offset():
    rows, judge = [], []
    for item in range(6):
        for rater in ("r1", "r2"):
            rows.append((item, "s", rater, "quality", item % 6))
        judge.append((item, "s", "quality", item % 6 + 0.5))
    table = judge_agreement(
        _ratings(rows), pd.DataFrame(judge, columns=["item_id", "system", "perspective", "score"])
    )
    q = table.set_index("perspective").loc["quality"]
    assert q["n_outputs"] == 6
    assert q["mae"] == pytest.approx(0.5)
    assert q["pearson"] == pytest.approx(1.0) and q["spearman"] == pytest.approx(1.0)
    assert 0.9 < q["alpha_with_judge"] < 1.0
    assert table.set_index("perspective").loc["following", "n_outputs"] == 0


def test_report_writes_every_table_as_csv(tmp_path):
    ratings = _ratings([(1, "x", "r1", "following", 4), (1, "y", "r1", "following", 2)])
    prefs = _prefs([(1, "r1", "x", "y", "a")])
    paths = build_report(ratings, prefs, config=ResultsConfig(n_bootstrap=50)).write_csv(tmp_path)
    assert sorted(p.name for p in paths) == sorted(
        [
            "human_scores.csv",
            "win_rates.csv",
            "bradley_terry.csv",
            "krippendorff_alpha.csv",
            "judge_vs_human.csv",
            "ratings_raw.csv",
            "preferences_raw.csv",
            "raters.csv",
            "local_mode_scores.csv",
        ]  # fmt: skip
    )
    assert pd.read_csv(tmp_path / "human_scores.csv").shape[0] == 2


# -- one statistics module: core.stats ------------------------------------------------------


def test_every_judge_agreement_is_core_stats_score_agreement():
    import core.stats
    import data.stats
    import studio.results
    import train.stats

    judge, truth = [5, 4, 1, 0, 2.6], [5, 2, 1, 0.5, 3]
    one = core.stats.score_agreement(judge, truth)
    assert one["n"] == 5 and one["mae"] == pytest.approx((0 + 2 + 0 + 0.5 + 0.4) / 5)
    assert one["within_1_points"] == pytest.approx(4 / 5)
    assert data.stats.agreement(judge, truth) == {
        k: one[k] for k in ("n", "mae", "exact", "within1", "qwk")
    }
    verdict = train.stats.verdict_agreement([1, 1, 0, 0, 1], [1, 0, 0, 0, 1], judge, truth)
    assert verdict["spearman"] == pytest.approx(one["spearman"])
    assert verdict["within_1"] == pytest.approx(one["within_1_points"])
    assert studio.results.judge_agreement is core.stats.judge_human_agreement
    assert train.stats.bootstrap_ci is core.stats.bootstrap_ci
    assert data.stats.cohen_kappa is core.stats.cohen_kappa


def test_rater_agreement_finds_the_rater_who_gives_three_to_everything():
    from core.stats import GOLD_COLUMNS, rater_agreement

    rows = []
    truth = {0: 5, 1: 1, 2: 4, 3: 0}
    for item, score in truth.items():
        for p in ("following", "preserving", "quality"):
            rows.append((item, "x", "good1", p, score))
            rows.append((item, "x", "good2", p, score))
            rows.append((item, "x", "lazy", p, 3))
    prefs = _prefs(
        [
            (i, r, "x", "y", "a" if r != "lazy" else "tie")
            for i in range(4)
            for r in ("good1", "good2", "lazy")
        ]  # fmt: skip
    )
    gold = pd.DataFrame(
        [("good1", 1, "a", "a", 0.0), ("lazy", 1, "tie", "a", 2.0), ("lazy", 2, "b", "a", 3.0)],
        columns=list(GOLD_COLUMNS),
    )
    table = rater_agreement(_ratings(rows), prefs, gold).set_index("rater")
    assert table.loc["lazy", "score_sd"] == 0 and table.loc["lazy", "modal_share"] == 1
    assert table.loc["good1", "score_sd"] > 1
    assert table.loc["good1", "mae_vs_others"] == pytest.approx(np.mean([1, 1, 0.5, 1.5]))
    # lazy vs the mean of good1 and good2 (who agree): |3 - truth|
    assert table.loc["lazy", "mae_vs_others"] == pytest.approx(np.mean([2, 2, 1, 3]))
    assert table.loc["good1", "preference_agreement"] == pytest.approx(0.5)
    assert table.loc["lazy", "preference_agreement"] == 0
    assert table.loc["good1", "gold_accuracy"] == 1 and table.loc["lazy", "gold_accuracy"] == 0
    assert table.loc["lazy", "gold_n"] == 2 and table.loc["lazy", "gold_score_mae"] == 2.5
    assert math.isnan(table.loc["good2", "gold_accuracy"])
    assert table.loc["lazy", "outputs_rated"] == 4
