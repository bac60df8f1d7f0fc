"""The whole human-evaluation report: :func:`build_report` turns the ratings, preferences,
judge scores and gold answers into every table (:class:`ResultsReport`), ready to show in the
studio or write as CSVs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from core.rewards import PERSPECTIVES
from core.stats.human_eval import (
    JUDGE_COLUMNS,
    PREFERENCE_COLUMNS,
    RATING_COLUMNS,
    ResultsConfig,
    bradley_terry,
    score_table,
    score_table_wide,
    win_rates,
)
from core.stats.reliability import (
    RATER_COLUMNS,
    alpha_per_perspective,
    judge_agreement,
    rater_agreement,
)

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
