"""Training data of the reward model: scored triplets and preference pairs, held in memory.

Sources (any combination):

* **a Shapes folder** (``python -m data synth``): every training triplet with the oracle's label.
  The split has one edited image per input, so for pairs of edits of the same input each input
  also gets ``variants`` re-rendered edits: the ground-truth target and noisy edits drawn by
  :func:`data.shapes.corrupt` from a seeded generator, all labelled by the oracle.
* **the store**: labelled triplets through ``Store.export_labels`` (a reviewer's correction wins
  over the judge's label; rejected triplets are left out), and the rating tab's side-by-side
  ratings: each rated output is a triplet scored by the rater, and a pair of outputs gives a
  preference per perspective from the two scores plus an overall one from the rater's choice.

Triplets whose input (original image, instruction) has several scored edits give pairs on every
perspective: A better, B better, or a tie when the scores differ by at most ``tie_threshold``.

Everything is decoded once, checked under the trainer's bad-data policy (a missing or corrupt
image, a score outside [0, 5]: reported with the triplet id and the reason, see
:mod:`train.datasets`) and kept as uint8 tensors: images are deduplicated, instructions are
indices into the list of distinct instructions (whose frozen text embeddings the trainer
computes once).
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from core.rewards import PERSPECTIVES
from train.datasets import BadDataLog, scan

PREFERENCE_TARGET = {"A": 1.0, "B": 0.0, "tie": 0.5}  # the rater's overall choice; both_bad: none


@dataclass
class RewardData:
    """Scored triplets and pairs. Images (M, 3, S, S) uint8; triplets index into them."""

    images: torch.Tensor  # (M, 3, S, S) uint8
    instructions: list[str]  # U distinct instructions
    triplets: torch.Tensor  # (T, 3) long: original image, edited image, instruction
    scores: torch.Tensor  # (T, 3) float; NaN where the source gave no score
    ids: list[str]  # (T,) triplet ids, for reports
    pairs: torch.Tensor  # (P, 2) long: triplet A, triplet B
    pair_targets: torch.Tensor  # (P, 4) float: 1 A better, 0 B better, 0.5 tie, NaN unknown
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def pixels(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Original and edited pixels (B, 3, S, S) in [-1, 1] of triplets ``index``."""
        t = self.triplets[index]
        to_float = lambda x: x.float() / 127.5 - 1.0  # noqa: E731
        return to_float(self.images[t[:, 0]]), to_float(self.images[t[:, 1]])


class DataBuilder:
    """Collects triplets (deduplicating images and instructions) and pairs."""

    def __init__(self, size: int, tie_threshold: float):
        self.size, self.tie_threshold = size, tie_threshold
        self.images: list[np.ndarray] = []
        self.image_index: dict[str, int] = {}
        self.instructions: list[str] = []
        self.instruction_index: dict[str, int] = {}
        self.triplets: list[tuple[int, int, int]] = []
        self.scores: list[list[float]] = []
        self.ids: list[str] = []
        self.pairs: list[tuple[int, int]] = []
        self.pair_targets: list[list[float]] = []
        self.groups: dict[tuple[int, int], list[int]] = defaultdict(list)

    def image(self, pixels: Any) -> int:
        """Index of an image given as (H, W, 3) uint8 or a (3, S, S) tensor in [-1, 1]."""
        if isinstance(pixels, torch.Tensor):
            arr = ((pixels.clamp(-1, 1) + 1) * 127.5).round().byte().numpy()  # (3, S, S)
        else:
            arr = np.ascontiguousarray(np.asarray(pixels, dtype=np.uint8).transpose(2, 0, 1))
        if arr.shape != (3, self.size, self.size):
            from core.reward_model import to_tensor

            arr = ((to_tensor(torch.from_numpy(arr)[None].float() / 127.5 - 1, self.size)[0] + 1)
                   * 127.5).round().clamp(0, 255).byte().numpy()  # fmt: skip
        key = hashlib.sha1(arr.tobytes()).hexdigest()
        if key not in self.image_index:
            self.image_index[key] = len(self.images)
            self.images.append(arr)
        return self.image_index[key]

    def triplet(
        self,
        tid: str,
        original: Any,
        edited: Any,
        instruction: str,
        scores: Any,
        group: bool = True,
    ) -> int:
        """Add one triplet; ``scores``: three floats (NaN: unknown) or None. With ``group``, it is
        paired with the other scored edits of its input (:meth:`pairs_from_scores`)."""
        o, e = self.image(original), self.image(edited)
        if instruction not in self.instruction_index:
            self.instruction_index[instruction] = len(self.instructions)
            self.instructions.append(instruction)
        u = self.instruction_index[instruction]
        self.triplets.append((o, e, u))
        self.scores.append([float("nan")] * 3 if scores is None else [float(s) for s in scores])
        self.ids.append(tid)
        if group:
            self.groups[(o, u)].append(len(self.ids) - 1)
        return len(self.ids) - 1

    def pair(self, a: int, b: int, targets: list[float]) -> None:
        if any(t == t for t in targets):  # at least one known (NaN != NaN)
            self.pairs.append((a, b))
            self.pair_targets.append(targets)

    def score_target(self, sa: float, sb: float) -> float:
        if sa != sa or sb != sb:
            return float("nan")
        if abs(sa - sb) <= self.tie_threshold:
            return 0.5
        return 1.0 if sa > sb else 0.0

    def pairs_from_scores(self) -> int:
        """Every two scored edits of one input (same original and instruction) form a pair; an
        edited image that occurs twice in a group (a clean edit is the target) counts once."""
        n = 0
        for members in self.groups.values():
            first: dict[int, int] = {}
            for t in members:
                first.setdefault(self.triplets[t][1], t)
            distinct = list(first.values())
            for i, a in enumerate(distinct):
                for b in distinct[i + 1 :]:
                    sa, sb = self.scores[a], self.scores[b]
                    self.pair(a, b, [self.score_target(x, y) for x, y in zip(sa, sb)] + [np.nan])
                    n += 1
        return n

    def build(self, info: dict[str, Any]) -> RewardData:
        if not self.ids:
            raise ValueError("the reward model's sources gave no usable triplets.")
        pairs = torch.tensor(self.pairs, dtype=torch.long).reshape(-1, 2)
        return RewardData(
            images=torch.from_numpy(np.stack(self.images)),
            instructions=self.instructions,
            triplets=torch.tensor(self.triplets, dtype=torch.long),
            scores=torch.tensor(self.scores, dtype=torch.float32),
            ids=self.ids,
            pairs=pairs,
            pair_targets=torch.tensor(self.pair_targets, dtype=torch.float32).reshape(-1, 4),
            info=info,
        )


# -- sources ------------------------------------------------------------------------------------


def _scanned(cfg: Any, log: BadDataLog, progress: bool, labelled_only: bool = False):
    """Examples of a train.sources source, decoded under the bad-data policy."""
    from train.sources import load_source

    data = load_source(cfg)
    log.extend(data.bad)
    examples = data.examples
    if labelled_only:  # unlabelled triplets (e.g. benchmark items without an edit) are not data
        data.info["unlabelled_left_out"] = sum(ex.rewards is None for ex in examples)
        examples = [ex for ex in examples if ex.rewards is not None]
    return list(scan(examples, log, cfg.resolution, progress)), data.info


def add_shapes(b: DataBuilder, folder: str, cfg: Any, log: BadDataLog, progress: bool) -> dict:
    """The Shapes training split with oracle labels, plus ``cfg.variants`` edits per input."""
    src = SimpleNamespace(data="shapes", data_dir=folder, split="train", resolution=b.size,
                          max_train_samples=cfg.max_train_samples, on_bad_data=cfg.on_bad_data)  # fmt: skip
    examples, info = _scanned(src, log, progress)
    for ex, original, edited in examples:
        scores = ex.rewards.scores if ex.rewards is not None else None
        b.triplet(ex.id, original, edited, ex.instruction, scores)
    if cfg.variants:
        info["variants"] = add_shapes_variants(b, folder, examples, cfg, progress)
    info["triplets"] = len(examples)
    return info


def shapes_variants(meta: dict, index: int, count: int, seed: int) -> list[tuple[np.ndarray, str]]:
    """``count`` further edits of one Shapes input: the ground-truth target first, then noisy
    edits drawn from ``default_rng([seed, 7, index, k])`` (every perspective corrupted at 0.5)."""
    from data.shapes import CorruptionConfig, SceneConfig, apply_edit, corrupt, parse_meta

    scene, edit = parse_meta(meta)
    out = [(apply_edit(scene, edit).target, "target")]
    ccfg = CorruptionConfig(p_following=0.5, p_preserving=0.5, p_quality=0.5)
    for k in range(1, count):
        rng = np.random.default_rng([seed, 7, index, k])
        noisy = corrupt(scene, edit, rng, ccfg, SceneConfig(size=scene.size))
        out.append((noisy.edited, "+".join(c["type"] for c in noisy.corruptions) or "clean"))
    return out


def manifest_meta(folder: str, ids: set[str]) -> dict[str, dict]:
    """The ``meta`` of the given training ids, read from the manifest (stops once all are found;
    ``load_split`` would resolve every image path of the whole split)."""
    found: dict[str, dict] = {}
    with open(Path(folder) / "train" / "manifest.jsonl", encoding="utf-8") as f:
        for line in f:
            if len(found) == len(ids):
                break
            rec = json.loads(line)
            if rec["id"] in ids:
                found[rec["id"]] = rec["meta"]
    return found


def add_shapes_variants(b: DataBuilder, folder: str, examples: list, cfg: Any, progress: bool):
    from data.shapes import ShapesOracle

    metas = manifest_meta(folder, {ex.id for ex, _, _ in examples})
    oracle = ShapesOracle()
    n = 0
    for ex, original, _ in tqdm(
        examples, desc="shapes variants", disable=not progress, leave=False
    ):
        meta = metas[ex.id]
        o = ((original.permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy()
        index = int(ex.id.rsplit("-", 1)[-1])
        for k, (img, kind) in enumerate(shapes_variants(meta, index, cfg.variants, cfg.seed)):
            label = oracle.annotate(o, ex.instruction, img, meta=meta)
            b.triplet(f"{ex.id}/v{k}:{kind}", original, img, ex.instruction, label.scores)
            n += 1
    return n


def add_store(b: DataBuilder, db: str, cfg: Any, log: BadDataLog, progress: bool) -> dict:
    """Reviewed labels (a human correction wins) and the rating tab's ratings of a store."""
    from core.store import Store

    src = SimpleNamespace(data="store", data_dir=db, split=cfg.store_split, resolution=b.size,
                          max_train_samples=0, on_bad_data=cfg.on_bad_data)  # fmt: skip
    examples, info = _scanned(src, log, progress, labelled_only=True)
    for ex, original, edited in examples:
        b.triplet(ex.id, original, edited, ex.instruction, ex.rewards.scores)
    info["labelled"] = len(examples)
    info.update(add_ratings(b, Store(Path(db))))
    return info


def add_ratings(b: DataBuilder, store: Any) -> dict[str, int]:
    """The rating tab's side-by-side ratings of ``store``: each rated output is a triplet scored
    by its rater (unrated perspectives unknown), and the two outputs of a rating form a pair with
    a per-perspective preference from the two scores and the rater's overall choice."""
    from core.images import load_image

    rated, preferences = 0, 0
    for r in store.ratings():
        item = store.get_triplet(r["item_id"])
        original = np.asarray(load_image(store.image_path(item["original"])))
        idx = []
        for side in ("a", "b"):
            out_id = r[f"output_{side}"]
            if out_id is None:
                continue
            with store.db() as conn:
                h = conn.execute("SELECT image FROM run_outputs WHERE id = ?", [out_id]).fetchone()
            edited = np.asarray(load_image(store.image_path(h[0])))
            scores = [r[f"{side}_{p}"] for p in PERSPECTIVES]
            scores = [float("nan") if s is None else s for s in scores]
            # rater scores pair only within their own rating (raters' scales differ)
            idx.append(b.triplet(f"rating-{r['id']}-{side}", original, edited,
                                 item["instruction"], scores, group=False))  # fmt: skip
            rated += 1
        if len(idx) == 2:
            sa, sb = b.scores[idx[0]], b.scores[idx[1]]
            per = [b.score_target(x, y) for x, y in zip(sa, sb)]
            overall = PREFERENCE_TARGET.get(r["preference"] or "", float("nan"))
            b.pair(idx[0], idx[1], [*per, overall])
            preferences += overall == overall
    return {"rated_outputs": rated, "overall_preferences": preferences}


def add_outputs(
    b: DataBuilder,
    db: str,
    truth_judge: str,
    systems: list[str] | None = None,
    id_prefix: str = "",
) -> dict[str, Any]:
    """Every output of a ``python -m train.evaluate`` store (optionally only ``systems``) as a
    triplet scored by ``truth_judge``'s verdicts (e.g. the Shapes oracle's model name). Outputs
    of different systems for one item are edits of one input, so they pair up. This is how a
    reward model learns the defects of the editing models it will judge (EditReward's lesson):
    evaluate the models on *training* inputs, never on the benchmark the reward model is
    measured on. ``id_prefix`` keeps ids unique when several stores share system names."""
    from core.store import Store

    store = Store(db)
    n, by_system = 0, {}
    for run in store.list_runs():
        system = (run.get("settings") or {}).get("system")
        if systems is not None and system not in systems:
            continue
        verdicts = {
            v["output_id"]: v
            for v in store.verdicts(run_id=run["id"], judge_model=truth_judge, status="ok")
        }
        for o in store.outputs(run["id"]):
            v = verdicts.get(o["id"])
            if v is None:
                continue
            t = store.get_triplet(o["item_id"])
            item = t["external_id"] or o["item_id"]  # external ids are optional in a store
            scores = [v["verdict"][p]["score"] for p in PERSPECTIVES]
            b.triplet(f"{id_prefix}{system}/{item}", store.image(t["original"]),
                      store.image(o["image"]), t["instruction"], scores)  # fmt: skip
            by_system[system] = by_system.get(system, 0) + 1
            n += 1
    if not n:
        raise ValueError(
            f"{db} has no outputs with verdicts of {truth_judge!r}"
            + (f" for the systems {systems}" if systems else "")
            + "; run python -m train.evaluate with that judge on it first."
        )
    return {"store": db, "judge": truth_judge, "outputs": n, "by_system": by_system}


def output_stores(outputs: str) -> list[str]:
    """``--outputs``: one evaluation store or several, comma-separated (outputs of one input in
    different stores pair up too)."""
    return [db.strip() for db in outputs.split(",") if db.strip()]


def build_data(cfg: Any, log: BadDataLog, progress: bool = True) -> RewardData:
    """All sources of a :class:`train.reward_model.RewardTrainConfig`."""
    b = DataBuilder(cfg.image_size, cfg.tie_threshold)
    info: dict[str, Any] = {}
    if cfg.shapes:
        info["shapes"] = add_shapes(b, cfg.shapes, cfg, log, progress)
    if cfg.store:
        info["store"] = add_store(b, cfg.store, cfg, log, progress)
    stores = output_stores(cfg.outputs)
    if stores:
        info["outputs"] = [
            add_outputs(b, db, cfg.outputs_judge, id_prefix=f"{i}:" if len(stores) > 1 else "")
            for i, db in enumerate(stores)
        ]
    n_rated = len(b.pairs)
    info["pairs"] = {"from_ratings": n_rated, "from_scores": b.pairs_from_scores()}
    data = b.build(info)
    t = data.pair_targets[:, :3]
    info["pairs"]["ties"] = int((t == 0.5).sum())
    info["pairs"]["decided"] = int(((t == 0) | (t == 1)).sum())
    info.update(triplets=len(data), images=len(data.images), instructions=len(data.instructions),
                bad=log.counts())  # fmt: skip
    return data
