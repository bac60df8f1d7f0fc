"""The project's statistics, below every UI and command line: plain numbers in.

Studio, ``python -m data stats`` and ``python -m train.evaluate`` all import from here, so each
statistic exists once (docs/studio.md, "Results a team can trust"; issue #15). One module per
concept, each importing only those above it:

* :mod:`core.stats.intervals` -- percentile bootstrap over items (``bootstrap_ci``,
  ``BootstrapConfig``, ``Estimate``).
* :mod:`core.stats.agreement` -- ``cohen_kappa``, ``quadratic_weighted_kappa`` and
  ``score_agreement``, the one judge agreement.
* :mod:`core.stats.human_eval` -- the human evaluation's frames and ``ResultsConfig``, the
  score table (paper Table 3), win rates, Bradley-Terry.
* :mod:`core.stats.reliability` -- Krippendorff's alpha, judge vs humans, per-rater agreement.
* :mod:`core.stats.report` -- ``ResultsReport`` and ``build_report``: every table at once.

This package re-exports every name, so ``from core.stats import ...`` works as before.
"""

from __future__ import annotations

from core.stats.agreement import (
    CLASSES,
    cohen_kappa,
    quadratic_weighted_kappa,
    score_agreement,
    to_class,
)
from core.stats.human_eval import (
    JUDGE_COLUMNS,
    OUTCOMES,
    PREFERENCE_COLUMNS,
    RATING_COLUMNS,
    ResultsConfig,
    bradley_terry,
    score_table,
    score_table_wide,
    win_rates,
)
from core.stats.intervals import (  # noqa: F401 (_as_1d and _interval: train.stats uses them)
    EMPTY,
    BootstrapConfig,
    Estimate,
    Statistic,
    _as_1d,
    _interval,
    bootstrap_ci,
    bootstrap_distribution,
)
from core.stats.reliability import (
    GOLD_COLUMNS,
    RATER_COLUMNS,
    alpha_per_perspective,
    judge_agreement,
    judge_human_agreement,
    krippendorff_alpha,
    rater_agreement,
)
from core.stats.report import ResultsReport, build_report

__all__ = [
    "CLASSES",
    "EMPTY",
    "GOLD_COLUMNS",
    "JUDGE_COLUMNS",
    "OUTCOMES",
    "PREFERENCE_COLUMNS",
    "RATER_COLUMNS",
    "RATING_COLUMNS",
    "BootstrapConfig",
    "Estimate",
    "ResultsConfig",
    "ResultsReport",
    "Statistic",
    "alpha_per_perspective",
    "bootstrap_ci",
    "bootstrap_distribution",
    "bradley_terry",
    "build_report",
    "cohen_kappa",
    "judge_agreement",
    "judge_human_agreement",
    "krippendorff_alpha",
    "quadratic_weighted_kappa",
    "rater_agreement",
    "score_agreement",
    "score_table",
    "score_table_wide",
    "to_class",
    "win_rates",
]
