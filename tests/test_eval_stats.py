"""Statistics behind the benchmark tables (train.stats) and the report tables
(train.evaluate.tables)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from core.rewards import PERSPECTIVES
from train.evaluate.tables import (
    ReportConfig,
    agreement_table,
    failure_table,
    paired_table,
    summary_table,
)
from train.stats import (
    EMPTY,
    BootstrapConfig,
    bootstrap_ci,
    bootstrap_distribution,
    cohen_kappa,
    compare_paired,
    holm,
    mcnemar_exact,
    paired_bootstrap_diff,
    paired_permutation,
    verdict_agreement,
    wilcoxon_signed_rank,
)

# -- bootstrap ---------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [500, 1000, 5000])
def test_bootstrap_matches_scipy_draw_for_draw(batch):
    x = np.random.default_rng(5).normal(size=57)
    ours = bootstrap_ci(x, np.mean, BootstrapConfig(n_resamples=5000, seed=3, batch=batch))
    ref = sps.bootstrap(
        (x,), np.mean, n_resamples=5000, method="percentile", rng=np.random.default_rng(3)
    )
    assert ours.value == pytest.approx(x.mean(), abs=0)
    assert ours.low == pytest.approx(ref.confidence_interval.low, abs=1e-12)
    assert ours.high == pytest.approx(ref.confidence_interval.high, abs=1e-12)
    assert ours.n == 57


def test_bootstrap_of_an_accuracy_is_binomial():
    """For 0/1 data the bootstrap distribution of the mean is Binomial(n, p_hat) / n."""
    n, k = 200, 120  # p_hat = 0.6
    x = np.array([1.0] * k + [0.0] * (n - k))
    cfg = BootstrapConfig(n_resamples=40_000, seed=11)
    dist = bootstrap_distribution(x, np.mean, cfg)
    p = k / n
    sd = math.sqrt(p * (1 - p) / n)
    assert dist.mean() == pytest.approx(p, abs=4 * sd / math.sqrt(len(dist)))
    assert dist.std() == pytest.approx(sd, rel=0.03)
    ci = bootstrap_ci(x, np.mean, cfg)
    assert abs(ci.low - sps.binom.ppf(0.025, n, p) / n) <= 1 / n
    assert abs(ci.high - sps.binom.ppf(0.975, n, p) / n) <= 1 / n
    # and the normal approximation p +- 1.96 sd is close too
    assert ci.low == pytest.approx(p - 1.96 * sd, abs=1.5 / n)
    assert ci.high == pytest.approx(p + 1.96 * sd, abs=1.5 / n)


def test_bootstrap_is_seeded_and_degenerate_cases_are_exact():
    x = np.random.default_rng(0).random(40)
    a = bootstrap_ci(x, config=BootstrapConfig(n_resamples=1000, seed=1))
    b = bootstrap_ci(x, config=BootstrapConfig(n_resamples=1000, seed=1))
    c = bootstrap_ci(x, config=BootstrapConfig(n_resamples=1000, seed=2))
    assert a == b and (a.low, a.high) != (c.low, c.high)
    const = bootstrap_ci([3.5] * 9)
    assert (const.value, const.low, const.high) == (3.5, 3.5, 3.5)
    assert bootstrap_ci([]) == EMPTY and EMPTY.format() == "n/a"
    assert bootstrap_ci([1.0, 0.0], np.median).value == 0.5


def test_bootstrap_refuses_nan_with_a_sentence():
    with pytest.raises(ValueError, match="non-finite value"):
        bootstrap_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="confidence"):
        BootstrapConfig(confidence=1.5)


def test_estimate_format():
    e = bootstrap_ci([1, 1, 0, 1], config=BootstrapConfig(n_resamples=200))
    assert e.format(scale=100, digits=1, suffix="%").startswith("75.0% [")


# -- paired tests ------------------------------------------------------------------------------


def test_mcnemar_exact_closed_form():
    # 10 items only A got right, 2 only B, 20 both, 8 neither
    a = [1] * 10 + [0] * 2 + [1] * 20 + [0] * 8
    b = [0] * 10 + [1] * 2 + [1] * 20 + [0] * 8
    m = mcnemar_exact(a, b)
    assert (m.a_only, m.b_only) == (10, 2)
    exact = 2 * (math.comb(12, 0) + math.comb(12, 1) + math.comb(12, 2)) / 2**12
    assert m.p_value == pytest.approx(exact, rel=1e-12)
    assert mcnemar_exact([1, 0], [1, 0]).p_value == 1.0
    with pytest.raises(ValueError, match="0/1"):
        mcnemar_exact([0.5], [1])


def test_sign_flip_permutation_is_exact_for_few_items():
    # differences 1, 2, 3: of the 8 sign patterns only +++ and --- reach |mean| >= 2
    assert paired_permutation([0, 0, 0], [1, 2, 3]) == pytest.approx(0.25)
    assert paired_permutation([1, 2], [1, 2]) == 1.0
    d = np.random.default_rng(0).normal(0.3, 1, 30)
    assert wilcoxon_signed_rank(np.zeros(30), d) == pytest.approx(
        sps.wilcoxon(d, zero_method="pratt").pvalue
    )


def test_paired_bootstrap_difference():
    rng = np.random.default_rng(4)
    a = rng.random(100)
    diff, p = paired_bootstrap_diff(a, a + 1.0, config=BootstrapConfig(n_resamples=2000))
    assert (diff.value, diff.low, diff.high) == pytest.approx((1.0, 1.0, 1.0))
    assert p == pytest.approx(2 / 2001)
    same, p_same = paired_bootstrap_diff(a, a)
    assert same.value == 0 and p_same == 1.0
    with pytest.raises(ValueError, match="same length"):
        paired_bootstrap_diff([1, 2], [1])


def test_compare_paired_picks_the_test():
    a = [1] * 30 + [0] * 30
    b = [1] * 45 + [0] * 15
    c = compare_paired(a, b, "binary", BootstrapConfig(n_resamples=1000))
    assert c.test.startswith("McNemar") and c.details["b_only"] == 15 and c.details["a_only"] == 0
    assert c.diff.value == pytest.approx(0.25) and c.diff.low > 0
    s = compare_paired([3.0, 2.0, 4.0], [3.5, 2.5, 4.0], "score", BootstrapConfig(n_resamples=100))
    assert s.test.startswith("paired permutation") and "p_wilcoxon" in s.details


def test_holm_and_kappa():
    assert holm([0.01, 0.04, 0.03, float("nan")])[:3] == pytest.approx([0.03, 0.06, 0.06])
    assert math.isnan(holm([float("nan")])[0])
    assert cohen_kappa([1, 1, 0, 0], [1, 0, 0, 0]) == pytest.approx(0.5)
    assert cohen_kappa(["yes", "no"], ["yes", "no"]) == 1.0
    assert math.isnan(cohen_kappa([1, 1], [1, 1]))


def test_verdict_agreement():
    a = verdict_agreement([1, 1, 0, 0], [1, 0, 0, 0], [5, 4, 1, 0], [5, 2, 1, 0.5])
    assert a["n"] == 4 and a["agreement"].value == 0.75 and a["kappa"] == pytest.approx(0.5)
    assert a["mae"].value == pytest.approx((0 + 2 + 0 + 0.5) / 4) and a["within_1"] == 0.75


# -- report tables -----------------------------------------------------------------------------


def _verdicts(system: str, passed: list[float | None], scores: list[float | None], reason="x"):
    rows = []
    for i, (ok, s) in enumerate(zip(passed, scores)):
        for p in PERSPECTIVES:
            failed = ok is None
            rows.append(
                dict(
                    system=system,
                    item_id=f"i{i}",
                    category="local" if i % 2 else "add",
                    perspective=p,
                    status="failed" if failed else "ok",
                    passed=np.nan if failed else ok,
                    score=np.nan if failed else s,
                    reason_code=reason if failed else "",
                )  # fmt: skip
            )
    return pd.DataFrame(rows)


def test_summary_counts_failures_and_applies_the_policy():
    v = _verdicts("A", [1, 0, None, 1, None], [5, 1, None, 4, None], reason="unparsable")
    cfg = ReportConfig(bootstrap=BootstrapConfig(n_resamples=200))
    t = summary_table(v, ["A"], cfg).set_index("perspective").loc["following"]
    assert (t.n_items, t.n_failed) == (5, 2)
    assert t.acc == pytest.approx(2 / 3) and t.score == pytest.approx(10 / 3)
    worst = ReportConfig(bootstrap=cfg.bootstrap, failure_policy="worst")
    w = summary_table(v, ["A"], worst).set_index("perspective").loc["following"]
    assert w.acc == pytest.approx(2 / 5) and w.score == pytest.approx(10 / 5) and w.n_failed == 2
    f = failure_table(v)
    assert f.to_dict("records") == [{"system": "A", "reason_code": "unparsable", "n_items": 2}]
    by = summary_table(v, ["A"], cfg, by_category=True)
    assert set(by["category"]) == {"add", "local"}
    assert by.groupby("perspective")["n_failed"].sum().tolist() == [2, 2, 2]


def test_paired_table_uses_items_both_systems_have():
    v = pd.concat(
        [
            _verdicts("A", [0, 0, 0, 1, None, 0], [1, 1, 2, 4, None, 0]),
            _verdicts("B", [1, 1, 1, 1, 1, None], [4, 4, 5, 4, 5, None]),
        ]
    )
    t = paired_table(v, "A", "B", ReportConfig(bootstrap=BootstrapConfig(n_resamples=200)))
    row = t[(t.perspective == "following") & (t.metric == "accuracy")].iloc[0]
    assert row.n == 4 and row.value_a == 0.25 and row.value_b == 1.0
    assert row.details.startswith("a_only=0, b_only=3")
    assert list(t["p_holm"] >= t["p_value"]) == [True] * len(t)


def test_bad_verdict_tables_are_refused():
    v = _verdicts("A", [1], [5]).drop(columns="reason_code")
    with pytest.raises(ValueError, match="missing"):
        summary_table(v, ["A"], ReportConfig())
    v = _verdicts("A", [1], [5])
    v.loc[0, "score"] = np.nan
    with pytest.raises(ValueError, match="mark it 'failed'"):
        summary_table(v, ["A"], ReportConfig())


def test_agreement_table_with_ground_truth():
    judge = _verdicts("A", [1, 1, 0, None], [5, 4, 1, None])
    truth = _verdicts("A", [1, 0, 0, 1], [5, 2, 1, 5])
    t = agreement_table(judge, truth, ReportConfig(bootstrap=BootstrapConfig(n_resamples=100)))
    row = t.set_index("perspective").loc["following"]
    assert (row.n, row.n_failed) == (3, 1)
    assert row.agreement == pytest.approx(2 / 3) and row.score_mae == pytest.approx(2 / 3)
