"""``python -m train.filter_or_condition``: filter the data by reward, or condition on it?

The MRC paper keeps every triplet and conditions the model on its reward labels; EditReward
scores the data with a learned reward model and trains on the top slice. This command trains
both, and their combinations, from the same stage-1 model, data pool, seed, batches and steps,
at one or more label-noise levels, evaluates every arm on Shapes-Edit with the exact oracle,
and writes a Table 4-style report::

    python -m train.filter_or_condition --plan train/configs/filter_or_condition.yaml
    python -m train.filter_or_condition --plan ... --noise default --max_train_steps 600  # smaller
    python -m train.filter_or_condition --plan ... --report-only    # tables from what is there

The plan (YAML) names the shared stage-1 pipeline, the reward model, the data pool of each
noise level (synthesised when missing), the arms -- each a trainer config plus overrides -- and
the evaluation. Every arm trains with ``--resume_from_checkpoint latest`` and the evaluation
keeps every output in a store, so the same command after a kill (or after the session ends)
continues where it stopped; a finished arm is skipped. Arms:

========================  ============================================================
``baseline``              stage-2 fine-tuning without rewards on all the data
``filter``                the same on the reward model's top ``keep`` (EditReward)
``filter-oracle``         the same on the labels' top ``keep`` (the ceiling of filtering)
``condition``             MRC on all the data with the oracle's labels (the paper)
``condition-local``       MRC on all the data with the reward model's labels
``both``                  MRC on the reward model's top ``keep``
``filter-keepAofB``       more fractions for the accuracy-vs-data-kept plot
``<best>+best-of-N``      the best arm, keeping the reward model's favourite of N samples
========================  ============================================================

Outputs under ``output_dir``: ``<noise>/<arm>/`` (the training run, ``cost.json`` with its
CPU seconds), ``<noise>/eval/`` (the evaluation: store, tables, gallery) and ``report.md`` with
``fraction_kept.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import pandas as pd

from core.rewards import PERSPECTIVES
from train.config import TrainConfig, read_yaml

REWARD_MODEL = "reward_model"  # in an arm's data_filter / relabel_with: the plan's reward model
EVAL_DIR = "eval"


# -- the plan ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Arm:
    name: str
    config: str  # a trainer config YAML (the baseline's or the MRC model's)
    overrides: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_filter(self) -> bool:
        return bool(self.overrides.get("data_filter"))


@dataclass(frozen=True)
class Plan:
    output_dir: Path
    stage1: str  # the shared stage-1 pipeline every arm starts from
    reward_model: str
    arms: tuple[Arm, ...]
    noise: Mapping[str, Mapping[str, Any]]  # level -> {data_dir, synth: {...}}
    keep: float = 1 / 3
    max_train_steps: int | None = None  # None: each config's own
    overrides: Mapping[str, Any] = field(default_factory=dict)  # applied to every arm
    evaluation: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], origin: str = "the plan") -> Plan:
        known = {"output_dir", "stage1", "reward_model", "arms", "noise", "keep",
                 "max_train_steps", "overrides", "evaluation"}  # fmt: skip
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{origin} has unknown key(s) {unknown}; known: {sorted(known)}.")
        for key in ("output_dir", "stage1", "reward_model", "arms", "noise"):
            if not d.get(key):
                raise ValueError(f"{origin} needs {key!r}.")
        keep = float(Fraction(str(d.get("keep", "1/3"))))
        arms = []
        for name, spec in d["arms"].items():
            spec = dict(spec or {})
            if "config" not in spec:
                raise ValueError(f"{origin}: arm {name!r} needs 'config' (a trainer YAML).")
            config = spec.pop("config")
            if "data_filter_keep" in spec:
                spec["data_filter_keep"] = float(Fraction(str(spec["data_filter_keep"])))
            elif spec.get("data_filter"):
                spec["data_filter_keep"] = keep
            arms.append(Arm(str(name), str(config), spec))
        return cls(
            output_dir=Path(d["output_dir"]), stage1=str(d["stage1"]),
            reward_model=str(d["reward_model"]), arms=tuple(arms), noise=dict(d["noise"]),
            keep=keep, max_train_steps=d.get("max_train_steps"),
            overrides=dict(d.get("overrides") or {}), evaluation=dict(d.get("evaluation") or {}),
        )  # fmt: skip

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        return cls.from_dict(read_yaml(path), origin=str(path))

    def arm_config(self, arm: Arm, noise: str) -> TrainConfig:
        """The trainer config of ``arm`` at noise level ``noise``."""
        values = dict(read_yaml(arm.config))
        values.update(self.overrides)
        for key, value in arm.overrides.items():
            values[key] = self.reward_model if value == REWARD_MODEL else value
        values.update(
            model=self.stage1,
            data_dir=str(self.noise[noise]["data_dir"]),
            output_dir=str(self.output_dir / noise / arm.name),
            resume_from_checkpoint="latest",
        )
        if self.max_train_steps:
            values["max_train_steps"] = int(self.max_train_steps)
        return TrainConfig.from_dict(values, origin=f"arm {arm.name!r}")


# -- training ---------------------------------------------------------------------------------


def ensure_pool(plan: Plan, noise: str, progress: bool = True) -> Path:
    """The data pool of a noise level; synthesised from its ``synth`` settings when missing
    (``p_scale`` multiplies the synthesiser's default corruption probabilities)."""
    spec = plan.noise[noise]
    folder = Path(spec["data_dir"])
    if (folder / "info.json").is_file():
        return folder
    if "synth" not in spec:
        raise ValueError(
            f"noise level {noise!r}: {folder} is not a Shapes folder and the plan gives no "
            "'synth' settings to make it (python -m data synth)."
        )
    from data.shapes import SynthConfig, synthesize
    from data.shapes.corrupt import CorruptionConfig

    s = dict(spec["synth"])
    scale = float(s.pop("p_scale", 1.0))
    base = CorruptionConfig()
    corruption = CorruptionConfig(
        p_following=min(1.0, base.p_following * scale),
        p_preserving=min(1.0, base.p_preserving * scale),
        p_quality=min(1.0, base.p_quality * scale),
    )
    synthesize(folder, SynthConfig(corruption=corruption, **s), workers=1, progress=progress)
    return folder


def _finished(cfg: TrainConfig) -> bool:
    saved = cfg.run_dir / "pipeline" / "training_config.yaml"
    if not saved.is_file():
        return False
    return TrainConfig.load(saved).max_train_steps == cfg.max_train_steps


def train_arm(plan: Plan, arm: Arm, noise: str) -> Path:
    """Train (or continue, or skip when finished) one arm; returns its pipeline folder and
    adds the wall seconds spent to ``cost.json``."""
    from train.loop import train

    cfg = plan.arm_config(arm, noise)
    if _finished(cfg):
        return cfg.run_dir / "pipeline"
    t0 = time.perf_counter()
    path = train(cfg)
    cost_file = cfg.run_dir / "cost.json"
    cost = json.loads(cost_file.read_text()) if cost_file.is_file() else {"seconds": 0.0}
    cost["seconds"] = round(cost["seconds"] + time.perf_counter() - t0, 1)
    cost["threads"] = _threads()
    cost["max_train_steps"] = cfg.max_train_steps
    cost_file.write_text(json.dumps(cost, indent=1))
    return path


def _threads() -> int:
    import torch

    return torch.get_num_threads()


# -- evaluation -------------------------------------------------------------------------------


def evaluate_level(plan: Plan, noise: str, progress: bool = True, report_only: bool = False):
    """Evaluate every trained arm of a level with the oracle, then the best arm with best-of-N.
    Returns the evaluation folder."""
    from train.evaluate.cli import EvalConfig, run_evaluation

    ev = dict(plan.evaluation)
    best_of = int(ev.pop("best_of", 4))
    out = plan.output_dir / noise / EVAL_DIR
    pipelines = {a.name: plan.output_dir / noise / a.name / "pipeline" for a in plan.arms}
    trained = {n: p for n, p in pipelines.items() if (p / "model_index.json").is_file()}
    if not trained:
        raise ValueError(f"noise level {noise!r}: no arm has a trained pipeline yet.")
    systems = [f"{n}={p}" for n, p in trained.items()]
    compare = _comparisons(list(trained))
    base = dict(benchmark=ev.pop("benchmark", "shapes?size=32"), out=str(out), judge="oracle",
                progress=progress, report_only=report_only, **ev)  # fmt: skip
    run_evaluation(EvalConfig(systems=tuple(systems), compare=compare, **base))
    if best_of > 1:
        best = best_arm(out / "report" / "table1.csv", list(trained))
        systems.append(f"{best}+best-of-{best_of}={trained[best]},best_of={best_of},"
                       f"reward_model={plan.reward_model}")  # fmt: skip
        compare = _comparisons(list(trained) + [f"{best}+best-of-{best_of}"], best=best)
        run_evaluation(EvalConfig(systems=tuple(systems), compare=compare, **base))
    return out


def _comparisons(names: Sequence[str], best: str | None = None) -> tuple[str, ...]:
    """Paired tests of every arm against the baseline (arm 1) and the condition arm (arm 3),
    and of best-of-N against its arm."""
    pairs = []
    for ref in ("baseline", "condition"):
        if ref in names:
            pairs += [f"{ref}:{n}" for n in names if n != ref and not n.endswith("-" + ref)]
    if best is not None:
        pairs.append(f"{best}:{names[-1]}")
    return tuple(dict.fromkeys(pairs))


def best_arm(table1: Path, arms: Sequence[str]) -> str:
    """The arm with the highest mean accuracy over the three perspectives."""
    t = pd.read_csv(table1)
    t = t[(t.category == "all") & t.system.isin(arms)]
    return str(t.groupby("system").acc.mean().idxmax())


# -- the report -------------------------------------------------------------------------------


def _fraction(arm: Arm, keep: float) -> float | None:
    if arm.name == "baseline":
        return 1.0
    if arm.is_filter and arm.overrides.get("data_filter") == REWARD_MODEL:
        if "relabel_with" in arm.overrides or not arm.config.endswith("baseline.yaml"):
            return None
        return float(arm.overrides.get("data_filter_keep", keep))
    return None


def arm_facts(plan: Plan, noise: str) -> pd.DataFrame:
    """Per arm: training data used, judge calls its labels needed, CPU seconds."""
    rows = []
    for arm in plan.arms:
        run = plan.output_dir / noise / arm.name
        report = run / "data_report.json"
        if not report.is_file():
            continue
        data = json.loads(report.read_text())
        cfg = plan.arm_config(arm, noise)
        reads_labels = cfg.stage == 2 and not cfg.relabel_with
        ranks_by_labels = cfg.data_filter == "labels"
        used = int(data["used"])
        scored = int(data.get("data_filter", {}).get("scored", used))
        calls = scored if ranks_by_labels else used if reads_labels else 0
        cost = json.loads((run / "cost.json").read_text()) if (run / "cost.json").is_file() else {}
        rows.append({
            "arm": arm.name, "stage": cfg.stage, "examples": used, "judge_calls": calls,
            "filter": cfg.data_filter or "", "keep": cfg.data_filter_keep if cfg.data_filter else 1.0,
            "labels": "reward model" if cfg.relabel_with else ("oracle" if reads_labels else "none"),
            "steps": cfg.max_train_steps,
            "cpu_hours": round(cost.get("seconds", 0.0) * cost.get("threads", 1) / 3600, 2),
        })  # fmt: skip
    return pd.DataFrame(rows)


def plot_fraction_kept(plan: Plan, levels: Sequence[str], path: Path) -> Path | None:
    """Accuracy against the fraction of data kept by the reward-model filter (all = baseline),
    one panel per perspective, one line per noise level; the oracle filter as a marker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), sharey=True)
    drawn = False
    for level in levels:
        table = plan.output_dir / level / EVAL_DIR / "report" / "table1.csv"
        if not table.is_file():
            continue
        t = pd.read_csv(table)
        t = t[t.category == "all"]
        points = [(f, a.name) for a in plan.arms if (f := _fraction(a, plan.keep)) is not None]
        points.sort()
        for ax, p in zip(axes, PERSPECTIVES):
            tp = t[t.perspective == p].set_index("system")
            xs = [f for f, n in points if n in tp.index]
            ys = [100 * tp.loc[n, "acc"] for f, n in points if n in tp.index]
            if xs:
                drawn = True
                ax.plot(xs, ys, "o-", label=f"filter by reward model ({level} noise)")
            if "filter-oracle" in tp.index:
                ax.plot([plan.keep], [100 * tp.loc["filter-oracle", "acc"]], "*", ms=12,
                        label=f"filter by oracle ({level})")  # fmt: skip
            if "condition" in tp.index:
                ax.axhline(100 * tp.loc["condition", "acc"], ls="--", lw=1,
                           color=ax.lines[-1].get_color() if ax.lines else None,
                           label=f"condition, all data ({level})")  # fmt: skip
            ax.set_title(p)
            ax.set_xscale("log")
            ax.set_xticks([1 / 6, 1 / 3, 2 / 3, 1], ["1/6", "1/3", "2/3", "all"])
            ax.set_xlabel("fraction of the training data kept")
    if not drawn:
        plt.close(fig)
        return None
    axes[0].set_ylabel("accuracy on Shapes-Edit (%)")
    axes[-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _cell(t: pd.DataFrame, system: str, perspective: str) -> str:
    r = t[(t.system == system) & (t.perspective == perspective)]
    if r.empty:
        return ""
    r = r.iloc[0]
    return (f"{100 * r.acc:.1f} [{100 * r.acc_low:.1f}, {100 * r.acc_high:.1f}] / "
            f"{r.score:.2f}")  # fmt: skip


def level_section(plan: Plan, level: str) -> list[str]:
    ev = plan.output_dir / level / EVAL_DIR / "report"
    lines = [f"## Noise level: {level}", ""]
    facts = arm_facts(plan, level)
    if not (ev / "table1.csv").is_file():
        return lines + ["(not evaluated yet)", ""]
    t = pd.read_csv(ev / "table1.csv")
    overall = t[t.category == "all"]
    systems = list(dict.fromkeys(overall.system))
    lines += ["Accuracy % [95 % CI] / mean score (0-5), oracle verdicts on Shapes-Edit:", "",
              "| arm | " + " | ".join(PERSPECTIVES) + " |", "|---|---|---|---|"]  # fmt: skip
    for s in systems:
        lines.append(f"| {s} | " + " | ".join(_cell(overall, s, p) for p in PERSPECTIVES) + " |")
    paired = ev / "paired.csv"
    if paired.is_file():
        pr = pd.read_csv(paired)
        pr = pr[(pr.category == "all") & (pr.metric == "accuracy")]
        lines += ["", "Paired accuracy differences (B - A, points [95 % CI], Holm-adjusted p):",
                  "", "| A | B | " + " | ".join(PERSPECTIVES) + " |", "|---|---|---|---|---|"]  # fmt: skip
        for (a, b), g in pr.groupby(["a", "b"], sort=False):
            cells = []
            for p in PERSPECTIVES:
                r = g[g.perspective == p]
                if r.empty:
                    cells.append("")
                    continue
                r = r.iloc[0]
                cells.append(f"{100 * r['diff']:+.1f} [{100 * r.diff_low:+.1f}, "
                             f"{100 * r.diff_high:+.1f}], p={r.p_holm:.2g}")  # fmt: skip
            lines.append(f"| {a} | {b} | " + " | ".join(cells) + " |")
    by_cat = t[(t.category != "all") & (t.perspective == "following")]
    if not by_cat.empty:
        cats = list(dict.fromkeys(by_cat.category))
        lines += ["", "Following accuracy % per category:", "",
                  "| arm | " + " | ".join(cats) + " |", "|---|" + "---|" * len(cats)]  # fmt: skip
        for s in systems:
            row = by_cat[by_cat.system == s].set_index("category")
            lines.append(f"| {s} | " + " | ".join(
                f"{100 * row.loc[c, 'acc']:.0f}" if c in row.index else "" for c in cats) + " |")  # fmt: skip
    if not facts.empty:
        lines += ["", "Cost (CPU-hours = wall hours x threads; judge calls = labels the arm's "
                  "training read from a judge, zero for the local arms):", "",
                  facts.to_markdown(index=False)]  # fmt: skip
    gallery = ev / "gallery.png"
    if gallery.is_file():
        lines += ["", f"Gallery (same items across arms): `{gallery}`"]
    return lines + [""]


def write_report(plan: Plan, levels: Sequence[str]) -> Path:
    plan.output_dir.mkdir(parents=True, exist_ok=True)
    lines = ["# Filter or condition?", "",
             f"Stage 1: `{plan.stage1}`; reward model: `{plan.reward_model}`; filter keeps "
             f"{plan.keep:.3g} of the pool by default.", ""]  # fmt: skip
    plot = plot_fraction_kept(plan, levels, plan.output_dir / "fraction_kept.png")
    if plot is not None:
        lines += ["![accuracy against the fraction kept](fraction_kept.png)", ""]
    for level in levels:
        lines += level_section(plan, level)
    path = plan.output_dir / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


# -- the command ------------------------------------------------------------------------------


def run(plan: Plan, levels: Sequence[str], arms: Sequence[str] | None = None, *,
        train: bool = True, evaluate: bool = True, report_only: bool = False,
        progress: bool = True) -> Path:  # fmt: skip
    """Train the arms, evaluate them and write the report (see the module docstring)."""
    for level in levels:
        if level not in plan.noise:
            raise ValueError(f"unknown noise level {level!r}; the plan has {sorted(plan.noise)}.")
    selected = [a for a in plan.arms if arms is None or a.name in arms]
    if arms is not None and len(selected) != len(set(arms)):
        missing = sorted(set(arms) - {a.name for a in plan.arms})
        raise ValueError(f"unknown arm(s) {missing}; the plan has {[a.name for a in plan.arms]}.")
    for level in levels:
        if train and not report_only:
            ensure_pool(plan, level, progress)
            for arm in selected:
                print(f"[{level}] arm {arm.name}", flush=True)
                train_arm(plan, arm, level)
        if evaluate or report_only:
            evaluate_level(plan, level, progress, report_only)
    return write_report(plan, levels)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train.filter_or_condition", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("--plan", default="train/configs/filter_or_condition.yaml",
                   help="the plan YAML (default: %(default)s)")  # fmt: skip
    p.add_argument("--noise", default="",
                   help="comma-separated noise levels to run (default: all of the plan's)")  # fmt: skip
    p.add_argument("--arms", default="", help="comma-separated arms to train (default: all)")
    p.add_argument("--max_train_steps", type=int, default=0,
                   help="steps per arm, overriding the plan (0: the plan's)")  # fmt: skip
    p.add_argument("--per-category", type=int, default=0,
                   help="Shapes-Edit items per category (0: the plan's; 80 = all 560)")  # fmt: skip
    p.add_argument("--output_dir", default="", help="overrides the plan's output_dir")
    p.add_argument("--train-only", action="store_true", help="train the arms, do not evaluate")
    p.add_argument("--eval-only", action="store_true", help="evaluate what is trained")
    p.add_argument("--report-only", action="store_true",
                   help="rebuild tables and report from the stores; generate nothing")  # fmt: skip
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    raw = dict(read_yaml(args.plan))
    if args.output_dir:
        raw["output_dir"] = args.output_dir
    if args.max_train_steps:
        raw["max_train_steps"] = args.max_train_steps
    if args.per_category:
        raw["evaluation"] = {**(raw.get("evaluation") or {}), "per_category": args.per_category}
    plan = Plan.from_dict(raw, origin=args.plan)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
        os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    levels = [x for x in args.noise.split(",") if x] or list(plan.noise)
    arms = [x for x in args.arms.split(",") if x] or None
    path = run(plan, levels, arms, train=not args.eval_only, evaluate=not args.train_only,
               report_only=args.report_only)  # fmt: skip
    print(f"Report: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
