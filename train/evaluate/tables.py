"""The numbers of a benchmark report: the paper's Tables 1, 2, 4 and 6, with intervals and tests
(:mod:`train.evaluate.report` writes them as Markdown + CSV).

Everything here works on plain pandas frames, so a report can be rebuilt from the CSVs of a run
(or from a notebook) without the store, the models or the judge.

``verdicts``  one row per (system, item, perspective)::

    system, item_id, category, perspective, status, passed, score, reason_code

``status`` is ``"ok"`` (``passed`` is 1/0 for the judge's yes/no, ``score`` in [0, 5]) or
``"failed"`` (the judge failed, or the system produced no output; ``reason_code`` says which).

``systems``   one dict per system, in report order: ``name``, ``kind``, ``group`` (systems of one
model at different reward settings share a group), ``rewards`` ([f, p, q] or None),
``reward_guidance_scale`` and any settings to show.

**Failed verdicts are never dropped silently.** Each table row shows how many items failed. With
``failure_policy="exclude"`` (default) averages are over the verdicts that succeeded; with
``"worst"`` a failure counts as "no" with score 0, a lower bound on what the judge would have
said. Paired tests use the items both systems have a value for under the policy.

**Statistics** (see :mod:`train.stats`): 95% percentile-bootstrap intervals over items; paired
comparisons give the difference B - A with a paired bootstrap interval, the exact McNemar test for
accuracies and the sign-flip permutation test for scores, and Holm-adjusted p-values over the six
metrics of one comparison.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from core.rewards import PERSPECTIVES, TITLES
from train.stats import BootstrapConfig, bootstrap_ci, compare_paired, holm, verdict_agreement

VERDICT_COLUMNS = (
    "system",
    "item_id",
    "category",
    "perspective",
    "status",
    "passed",
    "score",
    "reason_code",
)
ALL = "all"  # the category label of rows that pool every category
NO_OUTPUT = "no_output"  # reason code of an item a system did not produce an output for


@dataclass(frozen=True)
class ReportConfig:
    """How the numbers of a report are computed."""

    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)
    failure_policy: Literal["exclude", "worst"] = "exclude"  # what a failed verdict counts as
    comparisons: tuple[tuple[str, str], ...] = ()  # (A, B) pairs; empty: first system vs others
    per_category: bool = True  # also report every table per instruction category

    def __post_init__(self) -> None:
        if self.failure_policy not in ("exclude", "worst"):
            raise ValueError(
                f"failure_policy must be 'exclude' or 'worst', got {self.failure_policy!r}."
            )


def check_verdicts(verdicts: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in VERDICT_COLUMNS if c not in verdicts.columns]
    if missing:
        raise ValueError(
            f"the verdict table needs columns {list(VERDICT_COLUMNS)}; missing {missing}."
        )
    bad = set(verdicts["status"]) - {"ok", "failed"}
    if bad:
        raise ValueError(f"verdict status must be 'ok' or 'failed', found {sorted(bad)}.")
    ok = verdicts[verdicts["status"] == "ok"]
    if ok[["passed", "score"]].isna().any().any():
        raise ValueError("an 'ok' verdict has no passed/score value; mark it 'failed' instead.")
    return verdicts


def apply_policy(verdicts: pd.DataFrame, policy: str) -> pd.DataFrame:
    """Add ``acc_value`` / ``score_value``: the numbers averaged under the failure policy."""
    v = check_verdicts(verdicts).copy()
    failed = v["status"] == "failed"
    fill = 0.0 if policy == "worst" else np.nan
    v["acc_value"] = np.where(failed, fill, v["passed"].astype(float))
    v["score_value"] = np.where(failed, fill, v["score"].astype(float))
    return v


# -- Table 1: accuracy and score per system -----------------------------------------------------


def summary_table(
    verdicts: pd.DataFrame, systems: Sequence[str], config: ReportConfig, by_category: bool = False
) -> pd.DataFrame:
    """One row per (system, category, perspective) with accuracy and mean score and their CIs.

    Columns: system, category, perspective, n_items, n_failed, acc, acc_low, acc_high, score,
    score_low, score_high. ``category`` is :data:`ALL` unless ``by_category``.
    """
    v = apply_policy(verdicts, config.failure_policy)
    if not by_category:
        v = v.assign(category=ALL)
    rows = []
    for (system, category, perspective), g in v.groupby(
        ["system", "category", "perspective"], sort=False, dropna=False
    ):
        acc = bootstrap_ci(g["acc_value"].dropna().to_numpy(), np.mean, config.bootstrap)
        score = bootstrap_ci(g["score_value"].dropna().to_numpy(), np.mean, config.bootstrap)
        rows.append(
            {
                "system": system,
                "category": category if isinstance(category, str) else "(none)",
                "perspective": perspective,
                "n_items": int(g["item_id"].nunique()),
                "n_failed": int((g["status"] == "failed").sum()),
                "acc": acc.value,
                "acc_low": acc.low,
                "acc_high": acc.high,
                "score": score.value,
                "score_low": score.low,
                "score_high": score.high,
            }
        )
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    order = {s: i for i, s in enumerate(systems)}
    out["_s"] = out["system"].map(order)
    out["_p"] = out["perspective"].map({p: i for i, p in enumerate(PERSPECTIVES)})
    return (
        out.sort_values(["_s", "category", "_p"]).drop(columns=["_s", "_p"]).reset_index(drop=True)
    )


def failure_table(verdicts: pd.DataFrame) -> pd.DataFrame:
    """Failed (system, item) pairs counted per reason code: system, reason_code, n_items."""
    f = check_verdicts(verdicts)
    f = f[f["status"] == "failed"]
    if f.empty:
        return pd.DataFrame(columns=["system", "reason_code", "n_items"])
    f = f.assign(reason_code=f["reason_code"].fillna("unknown").replace("", "unknown"))
    return f.groupby(["system", "reason_code"])["item_id"].nunique().rename("n_items").reset_index()


# -- paired comparisons (Table 4 analogue) ------------------------------------------------------


def paired_table(
    verdicts: pd.DataFrame, a: str, b: str, config: ReportConfig, category: str | None = None
) -> pd.DataFrame:
    """System ``b`` against system ``a``, per perspective and metric (accuracy, score).

    Columns: a, b, category, perspective, metric, n, value_a, value_b, diff, diff_low, diff_high,
    test, p_value, p_holm, details.
    """
    v = apply_policy(verdicts, config.failure_policy)
    if category is not None:
        v = v[v["category"] == category]
    rows = []
    for perspective in PERSPECTIVES:
        vp = v[v["perspective"] == perspective]
        for metric, column, kind in (
            ("accuracy", "acc_value", "binary"),
            ("score", "score_value", "score"),
        ):
            wide = vp.pivot_table(index="item_id", columns="system", values=column, aggfunc="first")
            if a not in wide.columns or b not in wide.columns:
                continue
            both = wide[[a, b]].dropna()
            c = compare_paired(both[a].to_numpy(), both[b].to_numpy(), kind, config.bootstrap)
            rows.append(
                {
                    "a": a,
                    "b": b,
                    "category": category or ALL,
                    "perspective": perspective,
                    "metric": metric,
                    "n": c.n,
                    "value_a": c.a,
                    "value_b": c.b,
                    "diff": c.diff.value,
                    "diff_low": c.diff.low,
                    "diff_high": c.diff.high,
                    "test": c.test,
                    "p_value": c.p_value,
                    "details": ", ".join(f"{k}={_num(val)}" for k, val in c.details.items()),
                }
            )
    out = pd.DataFrame(rows)
    if not out.empty:
        out["p_holm"] = holm(out["p_value"].tolist())
    return out


def default_comparisons(systems: Sequence[str]) -> list[tuple[str, str]]:
    """The first system (the reference) against every other system."""
    return [(systems[0], s) for s in systems[1:]]


# -- Table 6: reward sweep and the controllability curve ----------------------------------------


def sweep_groups(systems: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Groups of systems that are one model at two or more reward settings."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for s in systems:
        if s.get("rewards") is not None and s.get("group"):
            groups.setdefault(s["group"], []).append(s)
    return {
        g: members
        for g, members in groups.items()
        if len({tuple(m["rewards"]) for m in members}) >= 2
    }


def controllability_plot(
    summary: pd.DataFrame, systems: Sequence[Mapping[str, Any]], path: str | Path
) -> Path | None:
    """Judged score and accuracy against requested score, per perspective (one PNG).

    Each sweep group is one colour. Solid lines join settings whose three requested scores are
    equal (e.g. 0/0/0, 3/3/3, 5/5/5); dashed lines join settings that vary only the plotted
    perspective while the other two stay at their maximum in the group. Error bars are the 95%
    bootstrap intervals; the dotted diagonal is perfect score control.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sweep_groups(systems)
    if not groups:
        return None
    overall = summary[summary["category"] == ALL].set_index(["system", "perspective"])
    fig, axes = plt.subplots(2, 3, figsize=(12, 7), sharex=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for gi, (group, members) in enumerate(groups.items()):
        colour = colours[gi % len(colours)]
        top = [max(m["rewards"][k] for m in members) for k in range(3)]
        for k, perspective in enumerate(PERSPECTIVES):
            others = [j for j in range(3) if j != k]
            lines = {
                "joint": [m for m in members if len(set(m["rewards"])) == 1],
                f"only {perspective}": [
                    m
                    for m in members
                    if all(m["rewards"][j] == top[j] for j in others) and len(set(m["rewards"])) > 1
                ],
            }
            if lines[f"only {perspective}"]:  # the all-max point belongs to both lines
                lines[f"only {perspective}"] += [m for m in lines["joint"] if m["rewards"] == top]
            for style, (label, ms) in zip(("-", "--"), lines.items()):
                pts = sorted(
                    (m["rewards"][k], overall.loc[(m["name"], perspective)])
                    for m in ms
                    if (m["name"], perspective) in overall.index
                )
                if len(pts) < 2:
                    continue
                x = np.array([p[0] for p in pts])
                for row, (col, lo, hi, scale) in enumerate(
                    (
                        ("score", "score_low", "score_high", 1.0),
                        ("acc", "acc_low", "acc_high", 100.0),
                    )
                ):
                    y = np.array([p[1][col] for p in pts]) * scale
                    err = (
                        np.array([[p[1][col] - p[1][lo], p[1][hi] - p[1][col]] for p in pts]).T
                        * scale
                    )
                    axes[row, k].errorbar(
                        x, y, yerr=err, fmt=style + "o", color=colour, capsize=3,
                        label=f"{group} ({label})",
                    )  # fmt: skip
    for k, perspective in enumerate(PERSPECTIVES):
        axes[0, k].plot([0, 5], [0, 5], ":", color="grey", linewidth=1)
        axes[0, k].set_title(TITLES[perspective])
        axes[0, k].set_ylim(0, 5.2)
        axes[1, k].set_ylim(0, 102)
        axes[1, k].set_xlabel(f"requested {perspective} score")
    axes[0, 0].set_ylabel("judged score (mean, 95% CI)")
    axes[1, 0].set_ylabel("judged accuracy % (95% CI)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    for ax in axes.flat[1:]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="lower center", ncol=min(4, max(1, len(labels))), fontsize=8)
    fig.suptitle("Controllability: judged vs requested reward")
    fig.tight_layout(rect=(0, 0.06, 1, 0.96))
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- judge vs ground truth -----------------------------------------------------------------------


def agreement_table(
    judge: pd.DataFrame, truth: pd.DataFrame, config: ReportConfig, by_system: bool = False
) -> pd.DataFrame:
    """How often the judge's verdicts match ground truth (the Shapes oracle), per perspective.

    Only outputs where both verdicts are ok are compared; ``n_failed`` counts the others.
    """
    keys = ["system", "item_id", "perspective"]
    j, t = check_verdicts(judge), check_verdicts(truth)
    m = j.merge(t, on=keys, suffixes=("_j", "_t"), how="outer")
    m["both_ok"] = (m["status_j"] == "ok") & (m["status_t"] == "ok")
    rows = []
    groups = ["system", "perspective"] if by_system else ["perspective"]
    for key, g in m.groupby(groups, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        ok = g[g["both_ok"]]
        a = verdict_agreement(
            ok["passed_j"].astype(float).to_numpy(),
            ok["passed_t"].astype(float).to_numpy(),
            ok["score_j"].astype(float).to_numpy(),
            ok["score_t"].astype(float).to_numpy(),
            config.bootstrap,
        )
        row = dict(zip(groups, key))
        row["n"] = a["n"]
        row["n_failed"] = int((~g["both_ok"]).sum())
        if a["n"]:
            row.update(
                agreement=a["agreement"].value,
                agreement_low=a["agreement"].low,
                agreement_high=a["agreement"].high,
                kappa=a["kappa"],
                judge_yes_rate=a["judge_yes_rate"],
                truth_yes_rate=a["truth_yes_rate"],
                score_mae=a["mae"].value,
                score_mae_low=a["mae"].low,
                score_mae_high=a["mae"].high,
                within_1=a["within_1"],
                spearman=a["spearman"],
            )
        rows.append(row)
    out = pd.DataFrame(rows)
    if not out.empty:
        out["_p"] = out["perspective"].map({p: i for i, p in enumerate(PERSPECTIVES)})
        out = out.sort_values([*groups[:-1], "_p"]).drop(columns="_p").reset_index(drop=True)
    return out


# -- reference metrics (Table 2 analogue) -------------------------------------------------------


def metrics_table(
    metrics: pd.DataFrame, systems: Sequence[str], config: ReportConfig
) -> pd.DataFrame:
    """Mean of each reference metric per system with its CI.

    ``metrics`` has one row per (system, item_id) and one column per metric (NaN where a metric
    does not apply). Columns out: system, metric, n, mean, low, high.
    """
    names = [c for c in metrics.columns if c not in ("system", "item_id", "category")]
    rows = []
    for system in systems:
        g = metrics[metrics["system"] == system]
        for name in names:
            x = g[name].dropna().to_numpy(dtype=float)
            if len(x) == 0:
                continue
            e = bootstrap_ci(x, np.mean, config.bootstrap)
            rows.append(
                {
                    "system": system,
                    "metric": name,
                    "n": e.n,
                    "mean": e.value,
                    "low": e.low,
                    "high": e.high,
                }
            )
    return pd.DataFrame(rows, columns=["system", "metric", "n", "mean", "low", "high"])


def table2_table(
    metric_summary: pd.DataFrame, systems: Sequence[str], names: Sequence[str]
) -> pd.DataFrame:
    """The paper's Table 2 layout: one row per system, the metrics ``names`` side by side.

    ``metric_summary`` is :func:`metrics_table`'s output (so the intervals are the same numbers).
    Columns out: system, then per metric ``m``: ``m``, ``m_low``, ``m_high``, ``m_n`` (NaN and 0
    where the metric does not apply, e.g. no ``--clip`` or no captions). Systems with no metric at
    all are left out.
    """
    by = metric_summary.set_index(["system", "metric"])
    rows = []
    for system in systems:
        if system not in set(metric_summary["system"]):
            continue
        row: dict[str, Any] = {"system": system}
        for name in names:
            have = (system, name) in by.index
            r = by.loc[(system, name)] if have else None
            row[name] = float(r["mean"]) if have else math.nan
            row[f"{name}_low"] = float(r["low"]) if have else math.nan
            row[f"{name}_high"] = float(r["high"]) if have else math.nan
            row[f"{name}_n"] = int(r["n"]) if have else 0
        rows.append(row)
    columns = ["system"] + [f"{n}{k}" for n in names for k in ("", "_low", "_high", "_n")]
    return pd.DataFrame(rows, columns=columns)


def _num(x: Any) -> str:
    if isinstance(x, float):
        if math.isnan(x):
            return "n/a"
        return f"{x:.3g}"
    return str(x)
