"""A benchmark report as files: Markdown and CSV (the numbers come from train.evaluate.tables).

:func:`write_report` writes, into one folder::

    report.md                     every table below, in the paper's layouts, with intervals
    table1.csv                    accuracy + score per system and perspective (overall)
    table1_by_category.csv        the same per instruction category
    paired.csv                    paired comparisons (Table 4 analogue), overall and per category
    sweep.csv                     reward sweep rows (Table 6 analogue)
    controllability.png           judged vs requested score per perspective
    failures.csv                  failed items per system and reason
    agreement.csv                 judge vs ground-truth verdicts (when ground truth is given)
    table2.csv                    L1 / CLIP-I / CLIP-T / CLIP direction per system, side by side
                                  with intervals (the paper's Table 2; when metrics were computed)
    metrics.csv                   every reference metric per system (long format, with intervals)
    verdicts.csv                  the raw verdict table everything above is computed from
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from core.rewards import PERSPECTIVES
from train.evaluate.image_metrics import METRIC_TITLES, PERCENT_METRICS, TABLE2_METRICS
from train.evaluate.tables import (
    ALL,
    ReportConfig,
    agreement_table,
    controllability_plot,
    default_comparisons,
    failure_table,
    metrics_table,
    paired_table,
    summary_table,
    sweep_groups,
    table2_table,
)

SHORT = {"following": "Following", "preserving": "Preserving", "quality": "Quality"}


def _pct(v: float, lo: float, hi: float, ci: bool = True) -> str:
    if v is None or math.isnan(v):
        return "n/a"
    return f"{100 * v:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]" if ci else f"{100 * v:.1f}%"


def _sc(v: float, lo: float, hi: float, ci: bool = True) -> str:
    if v is None or math.isnan(v):
        return "n/a"
    return f"{v:.2f} [{lo:.2f}, {hi:.2f}]" if ci else f"{v:.2f}"


def _p(p: float) -> str:
    if p is None or math.isnan(p):
        return "n/a"
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _rewards(r: Sequence[float] | None) -> str:
    return "-" if r is None else "/".join(f"{x:g}" for x in r)


# -- sections -------------------------------------------------------------------------------------


def systems_section(systems: Sequence[Mapping[str, Any]]) -> str:
    keys = ["kind", "model", "rewards", "reward_text", "reward_guidance_scale", "num_inference_steps",
            "guidance_scale", "image_guidance_scale", "scheduler", "seed"]  # fmt: skip
    shown = [k for k in keys if any(s.get(k) not in (None, "") for s in systems)]
    rows = []
    for s in systems:
        cells = []
        for k in shown:
            v = s.get(k)
            cells.append(_rewards(v) if k == "rewards" else ("-" if v in (None, "") else v))
        rows.append([f"`{s['name']}`", *cells])
    return md_table(["system", *shown], rows)


def table1_section(summary: pd.DataFrame, systems: Sequence[str], ci: bool = True) -> str:
    header = ["System"]
    for p in PERSPECTIVES:
        header += [f"{SHORT[p]} Acc", f"{SHORT[p]} Score"]
    header += ["items", "failed"]
    rows = []
    for system in systems:
        g = summary[summary["system"] == system].set_index("perspective")
        if g.empty:
            continue
        cells = [f"`{system}`"]
        for p in PERSPECTIVES:
            r = g.loc[p]
            cells += [
                _pct(r.acc, r.acc_low, r.acc_high, ci),
                _sc(r.score, r.score_low, r.score_high, ci),
            ]
        cells += [int(g["n_items"].max()), int(g["n_failed"].max())]
        rows.append(cells)
    return md_table(header, rows)


def by_category_section(by_cat: pd.DataFrame, systems: Sequence[str]) -> str:
    parts = []
    for p in PERSPECTIVES:
        g = by_cat[by_cat["perspective"] == p]
        cats = list(dict.fromkeys(g["category"]))
        rows = []
        for c in cats:
            cells = [c]
            for s in systems:
                r = g[(g["category"] == c) & (g["system"] == s)]
                if r.empty:
                    cells.append("n/a")
                    continue
                r = r.iloc[0]
                failed = f" ({r.n_failed} failed)" if r.n_failed else ""
                cells.append(f"{_pct(r.acc, r.acc_low, r.acc_high)} · {r.score:.2f}{failed}")
            rows.append(cells)
        parts.append(f"**{SHORT[p]}** (accuracy [95% CI] · mean score)\n\n"
                     + md_table(["category", *[f"`{s}`" for s in systems]], rows))  # fmt: skip
    return "\n\n".join(parts)


def paired_section(paired: pd.DataFrame) -> str:
    rows = []
    for r in paired.itertuples():
        is_acc = r.metric == "accuracy"
        fmt = (lambda x: f"{100 * x:.1f}%") if is_acc else (lambda x: f"{x:.2f}")
        scale = 100 if is_acc else 1
        unit = " pt" if is_acc else ""
        diff = (
            "n/a"
            if math.isnan(r.diff)
            else f"{scale * r.diff:+.2f}{unit} [{scale * r.diff_low:+.2f}, {scale * r.diff_high:+.2f}]"
        )
        rows.append([SHORT[r.perspective], r.metric, r.n, fmt(r.value_a), fmt(r.value_b), diff,
                     r.test, _p(r.p_value), _p(r.p_holm)])  # fmt: skip
    return md_table(
        ["perspective", "metric", "n", "A", "B", "B - A [95% CI]", "test", "p", "p (Holm)"], rows
    )


def sweep_section(summary: pd.DataFrame, members: Sequence[Mapping[str, Any]]) -> str:
    header = ["F", "P", "Q", "system"]
    for p in PERSPECTIVES:
        header += [f"{SHORT[p]} Acc", f"{SHORT[p]} Score"]
    rows = []
    for m in sorted(members, key=lambda m: (tuple(m["rewards"]), m["name"])):
        g = summary[summary["system"] == m["name"]].set_index("perspective")
        if g.empty:
            continue
        cells = [f"{x:g}" for x in m["rewards"]] + [f"`{m['name']}`"]
        for p in PERSPECTIVES:
            r = g.loc[p]
            cells += [_pct(r.acc, r.acc_low, r.acc_high), _sc(r.score, r.score_low, r.score_high)]
        rows.append(cells)
    return md_table(header, rows)


def agreement_section(agree: pd.DataFrame) -> str:
    rows = []
    for r in agree.itertuples():
        if not r.n:
            rows.append([SHORT[r.perspective], 0, *["n/a"] * 7, r.n_failed])
            continue
        rows.append([SHORT[r.perspective], r.n, _pct(r.agreement, r.agreement_low, r.agreement_high),
                     f"{r.kappa:.3f}" if not math.isnan(r.kappa) else "n/a",
                     f"{100 * r.judge_yes_rate:.1f}%", f"{100 * r.truth_yes_rate:.1f}%",
                     _sc(r.score_mae, r.score_mae_low, r.score_mae_high), f"{100 * r.within_1:.1f}%",
                     f"{r.spearman:.3f}" if not math.isnan(r.spearman) else "n/a", r.n_failed])  # fmt: skip
    return md_table(["perspective", "n", "yes/no agreement", "Cohen's kappa", "judge yes", "oracle yes",
                     "score MAE", "within 1 point", "Spearman", "not compared"], rows)  # fmt: skip


def _metric_cell(name: str, mean: float, low: float, high: float) -> str:
    """``mean [low, high]``: CLIP metrics as 100 x cosine (1 decimal), PSNR in dB, L1 4 decimals."""
    if mean is None or math.isnan(mean):
        return "n/a"
    k = 100.0 if name in PERCENT_METRICS else 1.0
    d = 1 if name in PERCENT_METRICS or name == "psnr" else 4
    return f"{k * mean:.{d}f} [{k * low:.{d}f}, {k * high:.{d}f}]"


def metrics_section(table: pd.DataFrame, systems: Sequence[str]) -> str:
    names = list(dict.fromkeys(table["metric"]))
    rows = []
    for s in systems:
        g = table[table["system"] == s].set_index("metric")
        if g.empty:
            continue
        cells = [f"`{s}`"]
        for n in names:
            if n not in g.index:
                cells.append("n/a")
                continue
            r = g.loc[n]
            cells.append(_metric_cell(n, r["mean"], r["low"], r["high"]))
        rows.append(cells)
    return md_table(["system", *[METRIC_TITLES.get(n, n) for n in names]], rows)


TABLE2_HEADERS = {
    "l1": "L1 ↓",
    "clip_i": "CLIP-I ↑",
    "clip_t": "CLIP-T ↑",
    "clip_direction": "CLIP direction ↑",
}


def table2_section(table2: pd.DataFrame, names: Sequence[str] = TABLE2_METRICS) -> str:
    """The paper's Table 2 layout from :func:`train.evaluate.tables.table2_table`."""
    rows = []
    for r in table2.to_dict("records"):
        cells = [f"`{r['system']}`"]
        cells += [_metric_cell(n, r[n], r[f"{n}_low"], r[f"{n}_high"]) for n in names]
        cells.append(max(int(r[f"{n}_n"]) for n in names))
        rows.append(cells)
    return md_table(["System", *[TABLE2_HEADERS.get(n, n) for n in names], "items"], rows)


def _table2_missing(table2: pd.DataFrame, names: Sequence[str]) -> str:
    """Why a Table 2 column is n/a, for the columns that are n/a for every system."""
    why = {
        "l1": "needs ground-truth targets",
        "clip_i": "needs ground-truth targets and `--clip`",
        "clip_t": "needs target captions and `--clip`",
        "clip_direction": "needs captions of the input and the target, and `--clip`",
    }
    empty = [n for n in names if table2[n].isna().all()]
    if not empty:
        return ""
    return "n/a: " + "; ".join(f"{TABLE2_HEADERS.get(n, n)} {why.get(n, 'not computed')}"
                               for n in empty) + "."  # fmt: skip


def failures_section(failures: pd.DataFrame) -> str:
    if failures.empty:
        return "No failed verdicts: every output of every system was judged."
    rows = [[f"`{r.system}`", r.reason_code, r.n_items] for r in failures.itertuples()]
    return md_table(["system", "reason", "items"], rows)


# -- the whole report -----------------------------------------------------------------------------


def write_report(
    out_dir: str | Path,
    verdicts: pd.DataFrame,
    systems: Sequence[Mapping[str, Any]],
    config: ReportConfig | None = None,
    *,
    metrics: pd.DataFrame | None = None,
    truth: pd.DataFrame | None = None,
    title: str = "Benchmark report",
    preamble: str = "",
) -> dict[str, Path]:
    """Compute every table and write the report folder (see the module docstring)."""
    config = config or ReportConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = [s["name"] for s in systems]
    files: dict[str, Path] = {}

    def save(df: pd.DataFrame, name: str) -> None:
        files[name] = out / name
        df.to_csv(files[name], index=False)

    save(verdicts, "verdicts.csv")
    summary = summary_table(verdicts, names, config)
    save(summary, "table1.csv")
    md = [f"# {title}", preamble.strip(), "## Systems", systems_section(systems)]
    policy = (
        "averages are over the verdicts that succeeded; failed items are counted in *failed*"
        if config.failure_policy == "exclude"
        else "a failed verdict counts as 'no' with score 0 (a lower bound)"
    )
    b = config.bootstrap
    md += [
        "## Table 1: accuracy and mean score per system",
        f"Judged accuracy (% of items judged *yes*) and mean score (0-5), each with a "
        f"{100 * b.confidence:g}% percentile-bootstrap interval over items ({b.n_resamples} "
        f"resamples, seed {b.seed}). Failure policy `{config.failure_policy}`: {policy}.",
        table1_section(summary, names),
    ]
    if config.per_category and verdicts["category"].notna().any():
        by_cat = summary_table(verdicts, names, config, by_category=True)
        save(by_cat, "table1_by_category.csv")
        md += ["### Per category", by_category_section(by_cat, names)]

    pairs = list(config.comparisons) or default_comparisons(names)
    paired_frames = []
    if pairs:
        md.append("## Paired comparisons (Table 4 analogue)")
        md.append(
            "B against A on the same items: the difference with a paired-bootstrap 95% interval; "
            "accuracies by the exact McNemar test, scores by the sign-flip permutation test; "
            "Holm-adjusted over the six metrics of each comparison."
        )
    for a, bname in pairs:
        p = paired_table(verdicts, a, bname, config)
        paired_frames.append(p)
        md += [
            f"### `{bname}` (B) vs `{a}` (A)",
            table1_section(summary, [a, bname]),
            paired_section(p),
        ]
        if config.per_category and verdicts["category"].notna().any():
            for c in sorted(verdicts["category"].dropna().unique()):
                paired_frames.append(paired_table(verdicts, a, bname, config, category=c))
    if paired_frames:
        save(pd.concat(paired_frames, ignore_index=True), "paired.csv")

    groups = sweep_groups(systems)
    if groups:
        md.append("## Reward sweep (Table 6 analogue)")
        sweep_rows = []
        for group, members in groups.items():
            md += [f"### `{group}`", sweep_section(summary, members)]
            for m in members:
                s = summary[summary["system"] == m["name"]].assign(
                    group=group, req_f=m["rewards"][0], req_p=m["rewards"][1], req_q=m["rewards"][2]
                )
                sweep_rows.append(s)
        save(pd.concat(sweep_rows, ignore_index=True), "sweep.csv")
        png = controllability_plot(summary, systems, out / "controllability.png")
        if png is not None:
            files["controllability.png"] = png
            md += ["### Controllability curve", "![controllability](controllability.png)"]

    if metrics is not None and not metrics.empty:
        mt = metrics_table(metrics, names, config)
        save(mt, "metrics.csv")
        t2 = table2_table(mt, names, TABLE2_METRICS)
        save(t2, "table2.csv")
        md += ["## Table 2: L1, CLIP-I, CLIP-T and CLIP direction per system",
               f"Means over items with a {100 * b.confidence:g}% percentile-bootstrap interval "
               f"({b.n_resamples} resamples, seed {b.seed}). L1: mean absolute difference to the "
               "ground-truth target on [0, 1] pixels (lower is better). CLIP-I: output vs target "
               "image; CLIP-T: output vs caption of the target; CLIP direction: cosine of the "
               "image change (output - input) with the caption change (target caption - input "
               "caption); all 100 x cosine (higher is better).",
               table2_section(t2), _table2_missing(t2, TABLE2_METRICS),
               "### All reference metrics",
               "CLIP similarities are 100 x cosine; L1 on [0, 1] pixels; PSNR in dB.",
               metrics_section(mt, names)]  # fmt: skip

    if truth is not None and not truth.empty:
        agree = agreement_table(verdicts, truth, config)
        save(pd.concat([agree.assign(system=ALL), agreement_table(verdicts, truth, config, True)]),
             "agreement.csv")  # fmt: skip
        md += ["## Judge vs ground truth (Shapes oracle)",
               "How often the judge's yes/no matches the oracle's on the same outputs, and how far "
               "its scores are from the oracle's.", agreement_section(agree)]  # fmt: skip

    failures = failure_table(verdicts)
    save(failures, "failures.csv")
    md += ["## Failures", failures_section(failures)]
    files["report.md"] = out / "report.md"
    files["report.md"].write_text("\n\n".join(x for x in md if x) + "\n", encoding="utf-8")
    return files
