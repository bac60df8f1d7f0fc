"""How well a reward model agrees with exact labels: held-out Shapes edits and the metrics.

:func:`shapes_heldout` builds a set the model never trained on: the Shapes *benchmark* scenes
(drawn from another seed stream than the training split), each item with ``variants`` edits --
the ground-truth target and noisy edits from :func:`data.shapes.corrupt` -- labelled by the
oracle. :func:`reward_metrics` compares predictions with the labels, per perspective:

* ``accuracy``: the yes/no verdict (score >= 4, the oracle's ``yes_threshold``) agrees;
* ``mae`` and ``spearman`` of the predicted mean against the label;
* ``pair_accuracy``: on two edits of the same item whose labels differ by >= 1 point, the one
  with the higher label has the higher predicted mean (the issue's target: >= 90%);
* ``coverage_1sigma`` / ``coverage_2sigma``: the share of labels inside mean +- 1 / 2 predicted
  standard deviations (68% / 95% for calibrated variances).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr
from tqdm.auto import tqdm

from core.reward_model import EditRewardModel, RewardPrediction
from core.rewards import PERSPECTIVES
from train.reward_data import DataBuilder, RewardData, add_outputs, add_ratings, shapes_variants

YES = 4.0  # the oracle's yes threshold
PAIR_GAP = 1.0  # pairs whose labels differ by at least this much


def shapes_heldout(
    folder: str, items: int, variants: int, size: int, progress: bool = True, seed: int = 1
) -> RewardData:
    """``variants`` oracle-labelled edits of each of the first ``items`` benchmark items."""
    from data.shapes import ShapesOracle, load_split

    oracle = ShapesOracle()
    b = DataBuilder(size, tie_threshold=0.0)
    bench = load_split(folder, "bench")[:items]
    for n, it in enumerate(tqdm(bench, desc="held-out edits", disable=not progress, leave=False)):
        original = it.load("original")
        for k, (img, kind) in enumerate(shapes_variants(it.meta, n, variants, seed)):
            label = oracle.annotate(original, it.instruction, img, meta=it.meta)
            b.triplet(f"{it.id}/v{k}:{kind}", original, img, it.instruction, label.scores)
    b.pairs_from_scores()
    return b.build({"source": "shapes-bench", "folder": folder, "items": len(bench)})


@torch.no_grad()
def predict_data(model: EditRewardModel, data: RewardData, batch_size: int = 512):
    """Predictions for every triplet of ``data``, and the triplets scored per second."""
    text = model.embed_instructions(data.instructions)
    means, logvars = [], []
    t0 = time.perf_counter()
    for i in range(0, len(data), batch_size):
        index = torch.arange(i, min(i + batch_size, len(data)))
        o, e = data.pixels(index)
        pred = model(o.to(model.device), e.to(model.device), text[data.triplets[index, 2]])
        means.append(pred.mean.cpu())
        logvars.append(pred.logvar.cpu())
    seconds = time.perf_counter() - t0
    return RewardPrediction(torch.cat(means), torch.cat(logvars)), len(data) / seconds


def reward_metrics(pred: RewardPrediction, data: RewardData) -> dict[str, dict[str, float]]:
    """Per-perspective agreement of ``pred`` with ``data.scores`` (see the module docstring)."""
    mean, std = pred.mean.numpy(), pred.std.numpy()
    truth = data.scores.numpy()
    out = {}
    for j, p in enumerate(PERSPECTIVES):
        t, m, s = truth[:, j], mean[:, j], std[:, j]
        ok = ~np.isnan(t)
        t, m, s = t[ok], m[ok], s[ok]
        err = np.abs(m - t)
        out[p] = {
            "n": int(ok.sum()),
            "accuracy": float(np.mean((m >= YES) == (t >= YES))),
            "mae": float(err.mean()),
            "coverage_1sigma": float(np.mean(err <= s)),
            "coverage_2sigma": float(np.mean(err <= 2 * s)),
            "mean_std": float(s.mean()),
            **rank_metrics(mean[:, j], truth[:, j], data.pairs.numpy()),
        }
    return out


def rank_metrics(score: np.ndarray, truth: np.ndarray, pairs: np.ndarray) -> dict[str, float]:
    """The scale-free figures of one perspective: Spearman of ``score`` against ``truth`` and
    the pair accuracy (the better-labelled edit of a pair scores higher; NaN labels skipped)."""
    ok = ~np.isnan(truth)
    t, m = truth[ok], score[ok]
    res: dict[str, float] = {
        "spearman": float(spearmanr(m, t).statistic) if len(t) and np.ptp(t) > 0 else float("nan")
    }
    if len(pairs):
        ta, tb = truth[pairs[:, 0]], truth[pairs[:, 1]]
        gap = np.abs(ta - tb) >= PAIR_GAP  # False where a label is NaN
        ma, mb = score[pairs[:, 0]], score[pairs[:, 1]]
        right = np.sign(ma - mb) == np.sign(ta - tb)
        res["pairs"] = int(gap.sum())
        res["pair_accuracy"] = float(right[gap].mean()) if gap.any() else float("nan")
    return res


# -- a CLIP-score baseline --------------------------------------------------------------------

CLIP_BASELINE = {
    "following": "cos(normalise(img(edited) - img(original)), text(instruction))",
    "preserving": "cos(img(original), img(edited))",
}


def clip_baseline(scorer: Any, data: RewardData, batch_size: int = 512) -> dict[str, np.ndarray]:
    """What CLIP alone says about each triplet, without a target (as a judge sees it): the
    direction score for following and the image similarity for preserving. CLIP has no
    perspective for generation quality, so the baseline gives none. ``scorer`` is a
    :class:`train.evaluate.image_metrics.ClipScorer`."""
    from PIL import Image

    def embed(images: torch.Tensor) -> torch.Tensor:
        pil = [Image.fromarray(x.permute(1, 2, 0).numpy()) for x in images]
        return scorer.image_embeddings(pil)

    t = data.triplets
    originals, edits = [], []
    for i in range(0, len(data), batch_size):
        rows = t[i : i + batch_size]
        originals.append(embed(data.images[rows[:, 0]]))
        edits.append(embed(data.images[rows[:, 1]]))
    o, e = torch.cat(originals), torch.cat(edits)
    text = scorer.text_embeddings(data.instructions)[t[:, 2]]
    direction = torch.nn.functional.normalize(e - o, dim=-1, eps=1e-8)
    return {
        "following": (direction * text).sum(-1).numpy().astype(np.float64),
        "preserving": (o * e).sum(-1).numpy().astype(np.float64),
    }


def clip_baseline_metrics(scorer: Any, data: RewardData) -> dict[str, dict[str, float]]:
    scores = clip_baseline(scorer, data)
    truth, pairs = data.scores.numpy(), data.pairs.numpy()
    return {
        p: {"n": int((~np.isnan(truth[:, j])).sum()), **rank_metrics(scores[p], truth[:, j], pairs)}
        for j, p in enumerate(PERSPECTIVES)
        if p in scores
    }


def evaluate_model(model: EditRewardModel, data: RewardData) -> dict[str, Any]:
    pred, rate = predict_data(model, data)
    return {
        "triplets": len(data),
        "triplets_per_s": round(rate, 1),
        "threads": torch.get_num_threads(),
        "perspectives": reward_metrics(pred, data),
    }


# -- on a benchmark run's model outputs -------------------------------------------------------


def store_outputs(store_path: str, truth_judge: str, systems: list[str] | None = None,
                  size: int = 32) -> RewardData:  # fmt: skip
    """Every output of a ``python -m train.evaluate`` store (optionally only ``systems``) with
    the verdict scores of ``truth_judge`` as labels, paired by item (:func:`add_outputs`)."""
    b = DataBuilder(size, tie_threshold=0.0)
    info = add_outputs(b, store_path, truth_judge, systems)
    b.pairs_from_scores()
    return b.build({"source": "store-outputs", **info})


def store_ratings(store_path: str, size: int = 32) -> RewardData:
    """The rating tab's ratings of a store as scored triplets and rated pairs (:func:`add_ratings`)."""
    from core.store import Store

    b = DataBuilder(size, tie_threshold=0.0)
    info = add_ratings(b, Store(store_path))
    if not info["rated_outputs"]:
        raise ValueError(f"{store_path} holds no side-by-side ratings yet.")
    return b.build({"source": "store-ratings", "store": store_path, **info})


def rating_agreement(pred: RewardPrediction, data: RewardData) -> dict[str, Any]:
    """Agreement with raters: per perspective, Spearman of the predicted mean against the
    raters' scores and the share of rated pairs (different scores) ordered as the rater did;
    overall, the share of A-or-B choices (ties and "both bad" left out) where the output with
    the higher mean predicted score over the three perspectives is the chosen one."""
    mean = pred.mean.numpy()
    truth, pairs = data.scores.numpy(), data.pairs.numpy()
    out: dict[str, Any] = {
        p: {
            "n": int((~np.isnan(truth[:, j])).sum()),
            **rank_metrics(mean[:, j], truth[:, j], pairs),
        }
        for j, p in enumerate(PERSPECTIVES)
    }
    choice = data.pair_targets[:, 3].numpy()
    decided = (choice == 0) | (choice == 1)
    overall = mean.mean(axis=1)
    a_higher = overall[pairs[:, 0]] > overall[pairs[:, 1]]
    out["overall_choice"] = {
        "choices": int(decided.sum()),
        "accuracy": float((a_higher[decided] == (choice[decided] == 1)).mean())
        if decided.any()
        else float("nan"),
    }
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m train.reward_eval``: a reward model against exact labels of model outputs
    (``--store``) and against raters (``--ratings``)."""
    import argparse
    import json

    ap = argparse.ArgumentParser(prog="python -m train.reward_eval", description=main.__doc__)
    ap.add_argument("--model", required=True, help="a reward model folder")
    ap.add_argument(
        "--store",
        default="",
        help="a python -m train.evaluate store (store.db): its outputs against --truth's verdicts",
    )
    ap.add_argument(
        "--ratings",
        default="",
        help="a studio store: agreement with its raters' side-by-side scores and choices",
    )
    ap.add_argument("--truth", default="shapes-oracle-v1", help="the judge model of the labels")
    ap.add_argument("--systems", default="", help="comma-separated systems (default: all)")
    ap.add_argument(
        "--clip",
        default="",
        help="also score a CLIP-score baseline with this "
        "CLIP folder (following: direction score; preserving: image similarity)",
    )
    ap.add_argument("--out", default="", help="write the figures as JSON here")
    args = ap.parse_args(argv)
    if not (args.store or args.ratings):
        ap.error("give --store (model outputs) and/or --ratings (a studio store with ratings).")
    model = EditRewardModel.from_pretrained(args.model).eval()
    result: dict[str, Any] = {}
    if args.ratings:
        rated = store_ratings(args.ratings, model.config.image_size)
        result["ratings"] = {
            **rated.info,
            "agreement": rating_agreement(predict_data(model, rated)[0], rated),
        }
    if args.store:
        systems = [s for s in args.systems.split(",") if s] or None
        data = store_outputs(args.store, args.truth, systems, model.config.image_size)
        result.update(outputs=len(data), pairs=len(data.pairs), **evaluate_model(model, data))
        if args.clip:
            from train.evaluate.image_metrics import ClipConfig, ClipScorer

            scorer = ClipScorer(ClipConfig(model=args.clip))
            result["clip_baseline"] = {
                "definition": CLIP_BASELINE,
                "perspectives": clip_baseline_metrics(scorer, data),
            }
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
