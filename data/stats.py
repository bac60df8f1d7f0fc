"""``python -m data stats``: what the labels look like, and how far to trust a judge.

* **Score distribution** per perspective (the paper's Fig. 3): the share of triplets at each
  score, scores rounded half up to an integer 0..5, with the share below 5 in each title (the
  paper reports > 50% below 5 on InstructPix2Pix). Written as ``score_distribution.png``.
* **Word cloud** of the failure texts per perspective (Fig. 4), common English stop words and
  the perspective-neutral words "image", "edited", "original" removed:
  ``wordcloud.png``.
* **Judge agreement with the Shapes oracle**: for every triplet that has an ok annotation of the
  judge and of the oracle, per perspective, the mean absolute error of the scores, the exact and
  within-one agreement of the integer-rounded scores, and Cohen's quadratic-weighted kappa over
  the six classes 0..5 (1 = perfect agreement, 0 = chance; undefined -- shown as n/a -- when
  neither rater varies). Written as ``agreement.json`` and ``agreement.md``.

Labels come from the store's label rows (what training uses, human corrections included) or,
with ``--judge-model``/``--prompt-version``, from one judge's annotations.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.rewards import PERSPECTIVES, TITLES
from core.stats import (  # the one kappa and judge agreement, re-exported for their old callers
    CLASSES,
    cohen_kappa,  # noqa: F401
    quadratic_weighted_kappa,  # noqa: F401
    score_agreement,
    to_class,
)

EXTRA_STOPWORDS = {"image", "edited", "original", "s", "instruction", "one", "also"}


def agreement(judge: Sequence[float], truth: Sequence[float]) -> dict[str, Any]:
    """MAE, exact and within-one agreement, quadratic-weighted kappa of one perspective
    (:func:`core.stats.score_agreement`, the project's one judge agreement)."""
    if len(judge) == 0 or len(judge) != len(truth):
        raise ValueError("agreement needs two equally long, non-empty score lists")
    scores = score_agreement(judge, truth)
    return {k: scores[k] for k in ("n", "mae", "exact", "within1", "qwk")}


# -- reading labels --------------------------------------------------------------------------


def label_frame(
    store: Any,
    *,
    split: str | None = None,
    judge_model: str | None = None,
    prompt_version: str | None = None,
    kind: str | None = None,
):
    """A DataFrame (triplet_id, <p>, <p>_text) of label rows, or of one judge's annotations."""
    import pandas as pd

    cols = [c for p in PERSPECTIVES for c in (p, f"{p}_text")]
    sel = ", ".join(f"x.{c}" for c in cols)
    if judge_model is None and prompt_version is None and kind is None:
        sql = f"SELECT x.triplet_id, {sel} FROM labels x JOIN triplets t ON t.id = x.triplet_id WHERE x.status != 'rejected'"
        params: list[Any] = []
    else:
        # the newest ok annotation per triplet of this judge
        sql = (
            f"SELECT x.triplet_id, {sel} FROM annotations x JOIN triplets t ON t.id = x.triplet_id "
            "WHERE x.status = 'ok' AND x.task = 'annotate' AND x.id IN (SELECT max(id) FROM "
            "annotations WHERE status = 'ok' AND task = 'annotate'"
        )
        params = []
        for col, value in (
            ("judge_model", judge_model),
            ("prompt_version", prompt_version),
            ("kind", kind),
        ):
            if value is not None:
                sql += f" AND {col} = ?"
                params.append(value)
        sql += " GROUP BY triplet_id)"
    if split is not None:
        sql += " AND t.split = ?"
        params.append(split)
    with store.db() as db:
        rows = db.execute(sql, params).fetchall()
    return pd.DataFrame(rows, columns=["triplet_id", *cols])


def judge_agreement(
    store: Any, judge_model: str, prompt_version: str | None, *, split: str | None = None
) -> dict[str, Any]:
    """Agreement of one judge's annotations with the oracle's, per perspective."""
    judge = label_frame(
        store, split=split, judge_model=judge_model, prompt_version=prompt_version, kind="judge"
    )
    oracle = label_frame(store, split=split, kind="oracle")
    both = judge.merge(oracle, on="triplet_id", suffixes=("_judge", "_oracle"))
    out: dict[str, Any] = {
        "judge_model": judge_model,
        "prompt_version": prompt_version,
        "n": len(both),
    }
    if both.empty:
        out["error"] = "no triplet has an ok annotation of both this judge and the Shapes oracle"
        return out
    for p in PERSPECTIVES:
        out[p] = agreement(both[f"{p}_judge"].to_numpy(), both[f"{p}_oracle"].to_numpy())
    return out


# -- plots -----------------------------------------------------------------------------------


def plot_score_distribution(frame, path: str | Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), sharey=True)
    n = len(frame)
    for ax, p in zip(axes, PERSPECTIVES):
        classes = to_class(frame[p].to_numpy()) if n else np.array([], dtype=int)
        share = np.bincount(classes, minlength=CLASSES) / max(n, 1) * 100
        bars = ax.bar(
            range(CLASSES),
            share,
            color=["#c0392b", "#e67e22", "#f1c40f", "#95a5a6", "#5dade2", "#27ae60"],
        )
        for bar, v in zip(bars, share):
            if v > 0:
                ax.text(
                    bar.get_x() + bar.get_width() / 2, v + 0.5, f"{v:.1f}%", ha="center", fontsize=8
                )
        below = 100 - share[-1] if n else 0.0
        ax.set_title(f"{TITLES[p]}\n{below:.1f}% below 5", fontsize=10)
        ax.set_xticks(range(CLASSES))
        ax.set_xlabel("score")
    axes[0].set_ylabel("% of triplets")
    fig.suptitle(title or f"Reward score distribution ({n} triplets)", fontsize=11)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_word_clouds(frame, path: str | Path, seed: int = 0) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from wordcloud import STOPWORDS, WordCloud

    stop = set(STOPWORDS) | EXTRA_STOPWORDS
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, p in zip(axes, PERSPECTIVES):
        texts = (
            " ".join(t for t in frame[f"{p}_text"].fillna("") if t.strip()) if len(frame) else ""
        )
        words = [w for w in texts.lower().split() if w.strip(".,;:!?\"'()") not in stop]
        ax.axis("off")
        ax.set_title(TITLES[p], fontsize=11)
        if not words:
            ax.text(
                0.5, 0.5, "no failure texts", ha="center", va="center", fontsize=12, color="grey"
            )
            continue
        cloud = WordCloud(width=600, height=400, background_color="white", stopwords=stop,
                          random_state=seed, collocations=False).generate(texts)  # fmt: skip
        ax.imshow(cloud.to_array(), interpolation="bilinear")
    fig.suptitle("Most frequent words of the failure texts", fontsize=11)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def agreement_markdown(results: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| judge | prompts | perspective | n | MAE | exact | within 1 | QWK |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(
                f"| {r['judge_model']} | {r['prompt_version']} | - | 0 | {r['error']} | | | |"
            )
            continue
        for p in PERSPECTIVES:
            a = r[p]
            qwk = "n/a" if math.isnan(a["qwk"]) else f"{a['qwk']:.3f}"
            lines.append(
                f"| {r['judge_model']} | {r['prompt_version']} | {p} | {a['n']} | {a['mae']:.3f} | "
                f"{a['exact']:.1%} | {a['within1']:.1%} | {qwk} |"
            )
    return "\n".join(lines) + "\n"


# -- CLI -------------------------------------------------------------------------------------


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    ap = subparsers.add_parser("stats", help="score distribution, word clouds, judge agreement",
                               description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--store", required=True)
    ap.add_argument("--out", required=True, help="folder for the PNGs and agreement tables")
    ap.add_argument("--split", help="only triplets of this split")
    ap.add_argument("--judge-model", help="plot this judge's annotations instead of the labels")
    ap.add_argument(
        "--prompt-version", help="with --judge-model: this prompt version (e.g. v1-one)"
    )
    ap.add_argument(
        "--no-agreement", action="store_true", help="skip the agreement with the oracle"
    )
    ap.set_defaults(func=run_cli, handler=run_cli)
    return ap


def run_cli(args: argparse.Namespace) -> int:
    from core.store import Store

    store = Store(args.store)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.judge_model:
        frame = label_frame(
            store,
            split=args.split,
            judge_model=args.judge_model,
            prompt_version=args.prompt_version,
            kind="judge",
        )
        title = f"{args.judge_model} {args.prompt_version or ''}".strip()
    else:
        frame = label_frame(store, split=args.split)
        title = "labels"
    if frame.empty:
        print(f"no labels found in {args.store} for these filters; nothing to plot")
        return 1
    n = len(frame)
    print(
        "wrote",
        plot_score_distribution(
            frame,
            out / "score_distribution.png",
            f"Reward score distribution: {title} ({n} triplets)",
        ),
    )
    print("wrote", plot_word_clouds(frame, out / "wordcloud.png"))
    if not args.no_agreement:
        with store.db() as db:
            pairs = db.execute(
                "SELECT DISTINCT judge_model, prompt_version FROM annotations "
                "WHERE kind = 'judge' AND status = 'ok' AND task = 'annotate' ORDER BY 1, 2"
            ).fetchall()
            has_oracle = db.execute(
                "SELECT 1 FROM annotations WHERE kind = 'oracle' AND status = 'ok' LIMIT 1"
            ).fetchone()
        if args.judge_model:
            pairs = [
                (m, v)
                for m, v in pairs
                if m == args.judge_model and args.prompt_version in (None, v)
            ]
        if has_oracle and pairs:
            results = [judge_agreement(store, m, v, split=args.split) for m, v in pairs]
            (out / "agreement.json").write_text(json.dumps(results, indent=1))
            (out / "agreement.md").write_text(agreement_markdown(results))
            print(agreement_markdown(results))
        else:
            print(
                "no judge agreement: the store needs ok annotations of a judge and of the Shapes oracle"
            )
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m data.stats ...`` (the same as ``python -m data stats ...``)."""
    ap = argparse.ArgumentParser(prog="python -m data.stats")
    add_parser(ap.add_subparsers(dest="command"))
    return run_cli(ap.parse_args(["stats", *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":
    raise SystemExit(main())
