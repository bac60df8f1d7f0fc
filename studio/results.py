"""The human-evaluation statistics, as the studio has always imported them.

They live in :mod:`core.stats` (one statistics module below every UI, shared with
``python -m data stats`` and ``python -m train.evaluate``); this module only re-exports them
so that ``from studio.results import ...`` keeps working.
"""

from __future__ import annotations

from core.stats import (
    GOLD_COLUMNS,
    JUDGE_COLUMNS,
    OUTCOMES,
    PREFERENCE_COLUMNS,
    RATER_COLUMNS,
    RATING_COLUMNS,
    ResultsConfig,
    ResultsReport,
    alpha_per_perspective,
    bradley_terry,
    build_report,
    judge_agreement,
    judge_human_agreement,
    krippendorff_alpha,
    rater_agreement,
    score_table,
    score_table_wide,
    win_rates,
)

__all__ = [
    "GOLD_COLUMNS",
    "JUDGE_COLUMNS",
    "OUTCOMES",
    "PREFERENCE_COLUMNS",
    "RATER_COLUMNS",
    "RATING_COLUMNS",
    "ResultsConfig",
    "ResultsReport",
    "alpha_per_perspective",
    "bradley_terry",
    "build_report",
    "judge_agreement",
    "judge_human_agreement",
    "krippendorff_alpha",
    "rater_agreement",
    "score_table",
    "score_table_wide",
    "win_rates",
]
