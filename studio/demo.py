"""The first-run demo: a Shapes store ready for review and blind rating, and the demo model path.

``python app.py`` with no arguments opens :data:`DEFAULT_DB_PATH`; when it holds no triplets
yet, :func:`ensure_demo_store` fills it (a few seconds on a laptop):

* **Review**: :data:`DemoConfig.n_train` noisy Shapes training triplets. Each has the exact
  oracle's label (``kind="oracle"``) and a *demo judge* label: the oracle's scores perturbed
  with seeded noise and some failure texts dropped, standing in for a VLM judge (stored as
  ``judge_model="demo-noisy-judge"`` so it can never be mistaken for a real one). The judge's
  label is what annotators correct; where judge and oracle disagree the item is doubtful and
  comes first in the queue.
* **Human evaluation**: Shapes-Edit benchmark items (``n_bench_scenes`` scenes x 7 categories),
  registered through ``train.evaluate`` like any benchmark run, with two systems:

  - when the shipped demo models exist (:data:`DEFAULT_MODEL_PATH` and
    :data:`DEFAULT_BASELINE_PATH`), their real outputs: the MRC model at rewards 5/5/5 against
    the plain InstructPix2Pix baseline;
  - until then, two clearly labelled *demo systems* made without any model:
    ``demo-ground-truth`` (the exact target) and ``demo-corrupted`` (the target with one seeded
    Shapes corruption). Their ranking is known in advance, which also makes the results view
    easy to sanity-check.

  Every output gets an oracle verdict, so judge-vs-human agreement has data.

Demo users are not created: on localhost the studio runs as the local admin.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from core.judges.base import (
    UNPARSABLE,
    Evaluation,
    Judge,
    JudgeInput,
    JudgeResult,
    JudgeSpec,
    Verdict,
)
from core.rewards import Rewards
from core.store import Store

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
# The one place the demo model paths live (the lead ships the trained Shapes models here).
DEFAULT_MODEL_PATH = REPO / "docs" / "demo_models" / "shapes_mrc"
DEFAULT_REWARD_MODEL_PATH = DEFAULT_MODEL_PATH.parent / "shapes_reward_model"
DEFAULT_BASELINE_PATH = REPO / "docs" / "demo_models" / "shapes_baseline"
DEFAULT_DB_PATH = REPO / ".mrc" / "studio.db"
# The demo models' outputs on the demo benchmark, shipped so that a first start does not spend
# minutes generating them on a CPU: one folder per store run name (which carries the model's
# fingerprint, so a retrained model never reuses another model's outputs), written by
# ``python -m studio.demo cache``.
OUTPUT_CACHE = REPO / "docs" / "demo_models" / "demo_outputs"


@dataclass(frozen=True)
class DemoConfig:
    n_train: int = 120  # noisy training triplets in the review queue
    n_bench_scenes: int = 3  # Shapes-Edit scenes, 7 items each (one per category)
    size: int = 32  # Shapes image size in pixels: the shipped demo models' resolution
    seed: int = 0  # everything in the demo store follows from this seed
    judge_noise: float = 0.35  # chance that the demo judge perturbs a perspective's score


# -- the demo judge ----------------------------------------------------------------------------


class DemoNoisyJudge(Judge):
    """The Shapes oracle with seeded noise: a stand-in for a VLM judge in the demo.

    Per perspective, with probability ``noise`` the score moves by -2, -1, +1 or +2 (clipped
    to [0, 5]); a perturbed 5 loses its failure text, a lowered score keeps the oracle's text
    (possibly none, which the review queue counts as a contradiction). About 3% of calls fail
    as an unparsable reply, to show failure accounting. The noise is a function of the images,
    the instruction and ``seed``, so re-running the demo judge gives the same labels.
    """

    def __init__(self, store: Store, noise: float = 0.35, seed: int = 0) -> None:
        from data.shapes_judge import ShapesJudge

        self.inner = ShapesJudge(store)
        self.noise, self.seed = noise, seed
        doc = json.dumps({"noise": noise, "seed": seed, "oracle": self.inner.spec.digest})
        digest = hashlib.sha256(doc.encode()).hexdigest()[:16]
        self.spec = JudgeSpec("demo-noisy", "demo-noisy-judge", "v1", "one", digest)

    def _rng(self, item: JudgeInput) -> np.random.Generator:
        h = hashlib.sha256(item.edited + item.instruction.encode() + str(self.seed).encode())
        return np.random.default_rng(int.from_bytes(h.digest()[:8], "big"))

    def _move(self, score: float, rng: np.random.Generator) -> float:
        if rng.random() >= self.noise:
            return score
        return float(np.clip(score + rng.choice([-2.0, -1.0, 1.0, 2.0]), 0.0, 5.0))

    async def _judge(self, task: str, item: JudgeInput) -> JudgeResult:
        result = await self.inner.run(task, item)
        if not result.ok:
            return replace(result, judge=self.spec)
        rng = self._rng(item)
        if rng.random() < 0.03:
            return JudgeResult.failed(
                task, self.spec, UNPARSABLE,
                "the demo judge simulated a reply without a readable score.",
                raw="The edit looks mostly fine to me.",
            )  # fmt: skip
        if task == "annotate":
            scores = [self._move(s, rng) for s in result.rewards.scores]
            texts = ["" if s == 5.0 else t for s, t in zip(scores, result.rewards.texts)]
            rewards = Rewards.from_scores(scores, texts)
            return JudgeResult(task, "ok", self.spec, rewards=rewards,
                               raw=json.dumps(rewards.to_dict()))  # fmt: skip
        threshold = self.inner.oracle.config.yes_threshold
        scores = [self._move(s, rng) for s in result.evaluation.scores]
        evaluation = Evaluation(*(Verdict(s >= threshold, s) for s in scores))
        return JudgeResult(task, "ok", self.spec, evaluation=evaluation,
                           raw=json.dumps(evaluation.to_dict()))  # fmt: skip


# -- building the demo store -------------------------------------------------------------------


def _label_training(store: Store, cfg: DemoConfig) -> None:
    """Demo-judge labels (they become the review labels), then the oracle's for reference."""
    from data.annotate_runner import plan, run_jobs
    from data.shapes_judge import ShapesJudge

    for judge, set_labels in ((DemoNoisyJudge(store, cfg.judge_noise, cfg.seed), True),
                              (ShapesJudge(store), False)):  # fmt: skip
        jobs = plan(store, judge.spec, "annotate", split="train").jobs
        if jobs:
            asyncio.run(run_jobs(store, judge, jobs, "annotate", set_labels=set_labels,
                                 progress=False))  # fmt: skip


def _demo_system_folders(store: Store, bench: Any, cfg: DemoConfig) -> list[Any]:
    """The two model-free demo systems as folders of outputs (written once, kept on disk)."""
    from data.shapes.corrupt import CorruptionConfig, corrupt
    from data.shapes.oracle import parse_meta
    from data.shapes.scene import SceneConfig
    from train.evaluate.systems import SystemSpec, safe_name

    root = store.path.parent / f"{store.path.stem}_demo_systems"
    truth, corrupted = root / "demo-ground-truth", root / "demo-corrupted"
    for folder in (truth, corrupted):
        folder.mkdir(parents=True, exist_ok=True)
    noise = CorruptionConfig(p_following=0.5, p_preserving=0.4, p_quality=0.5)
    for n, item in enumerate(bench.items):
        name = f"{safe_name(item.item_id)}.png"
        target = item.load_target()
        if not (truth / name).exists():
            target.save(truth / name)
        if not (corrupted / name).exists():
            scene, edit = parse_meta(dict(item.context))
            rng = np.random.default_rng([cfg.seed, 7, n])
            image = corrupt(scene, edit, rng, noise, SceneConfig(size=scene.size)).edited
            from PIL import Image

            Image.fromarray(image).save(corrupted / name)
    return [SystemSpec("demo-ground-truth", str(truth), kind="folder"),
            SystemSpec("demo-corrupted", str(corrupted), kind="folder")]  # fmt: skip


def _model_systems() -> list[Any] | None:
    """The shipped demo models as systems (at the guidance their folders record), or None while
    they are not installed."""
    from train.evaluate.systems import parse_system

    if not (DEFAULT_MODEL_PATH.is_dir() and DEFAULT_BASELINE_PATH.is_dir()):
        return None
    return [
        parse_system(f"shapes-baseline={DEFAULT_BASELINE_PATH},steps=20"),
        parse_system(f"shapes-mrc={DEFAULT_MODEL_PATH},steps=20"),
    ]


def _cache_folder(run_name: str) -> Path:
    from train.evaluate.systems import safe_name

    return OUTPUT_CACHE / safe_name(run_name)


def _use_cached_outputs(store: Store, run: Any) -> int:
    """Store the shipped outputs of runs that lack them; returns how many were used."""
    used = 0
    for state in run.states.values():
        folder = _cache_folder(state.run_name)
        index = folder / "outputs.json"
        if not index.is_file():
            continue
        cached = json.loads(index.read_text())
        for item_id, tid in run.triplet_of.items():
            entry = cached.get(item_id)
            if item_id in state.outputs or entry is None:
                continue
            store.add_output(state.run_id, tid, folder / entry["file"], seed=entry["seed"],
                             seconds=entry["seconds"], meta={"item_id": item_id, "cached": True})  # fmt: skip
            used += 1
    return used


def write_output_cache(store: Store, cfg: DemoConfig = DemoConfig()) -> list[Path]:
    """Write the model systems' outputs of ``store``'s demo benchmark to :data:`OUTPUT_CACHE`."""
    from train.evaluate.benchmarks import load_benchmark
    from train.evaluate.runner import BenchmarkRun
    from train.evaluate.systems import safe_name

    systems = _model_systems()
    if systems is None:
        raise SystemExit("the demo models are not installed; there is nothing to cache.")
    bench = load_benchmark(f"store:{store.path}?split=bench&source=shapes")
    run = BenchmarkRun(bench, systems, store, batch_size=8, progress=False)
    run.prepare()
    folders = []
    for state in run.states.values():
        folder = _cache_folder(state.run_name)
        folder.mkdir(parents=True, exist_ok=True)
        index = {}
        for item_id, out in state.outputs.items():
            name = f"{safe_name(item_id)}.png"
            store.image(out["image"]).save(folder / name)
            index[item_id] = {"file": name, "seed": out["seed"], "seconds": out["seconds"]}
        (folder / "outputs.json").write_text(json.dumps(index, indent=1, sort_keys=True))
        folders.append(folder)
    return folders


def _benchmark_runs(store: Store, cfg: DemoConfig) -> None:
    """Register the benchmark items and the two systems' runs, with every verdict."""
    from data.shapes_judge import ShapesJudge
    from train.evaluate.benchmarks import load_benchmark
    from train.evaluate.runner import BenchmarkRun

    bench = load_benchmark(f"store:{store.path}?split=bench&source=shapes")
    systems = _model_systems() or _demo_system_folders(store, bench, cfg)
    run = BenchmarkRun(bench, systems, store, batch_size=8, progress=False)
    run.prepare()
    if _use_cached_outputs(store, run):
        run.prepare()  # picks up the outputs just stored
    missing = sum(len(bench.items) - len(s.outputs) for s in run.states.values())
    if missing:
        log.info("Demo set-up: generating %d benchmark outputs with the demo models (a few "
                 "seconds each on a CPU).", missing)  # fmt: skip
    run.generate_all()
    log.info("Demo set-up: judging the benchmark outputs (Shapes oracle and the demo judge).")
    for judge in (ShapesJudge(store), DemoNoisyJudge(store, cfg.judge_noise, cfg.seed)):
        run.judge_all(judge)


def ensure_demo_store(path: str | Path = DEFAULT_DB_PATH, cfg: DemoConfig = DemoConfig()) -> Store:
    """Open the demo store, filling it on first use (see the module docstring).

    Idempotent: an existing demo store only gets what it lacks (e.g. the real-model runs once
    the demo models are installed).
    """
    from data.interop import import_shapes_folder
    from data.shapes.synth import SynthConfig, synthesize

    store = Store(path)
    if store.count_triplets(source="shapes") == 0:
        log.info("Demo set-up: creating the demo store (first start; about a minute).")
        synth = SynthConfig(
            train=cfg.n_train, bench=cfg.n_bench_scenes, seed=cfg.seed, size=cfg.size
        )
        with tempfile.TemporaryDirectory() as tmp:
            synthesize(Path(tmp) / "shapes", synth, workers=1, progress=False)
            import_shapes_folder(store, Path(tmp) / "shapes", progress=False)
        (store.path.parent / f"{store.path.stem}_demo.json").write_text(
            json.dumps({"demo": asdict(cfg)}, indent=1)
        )
    log.info("Demo set-up: labelling the training triplets (Shapes oracle and the demo judge).")
    _label_training(store, cfg)
    log.info("Demo set-up: benchmark runs of the two systems.")
    _benchmark_runs(store, cfg)
    from studio.gold import add_shapes_gold

    add_shapes_gold(store, seed=cfg.seed)  # gold pairs for the rating campaign
    return store


def demo_banner(store: Store, model: Any) -> str:
    """The banner of the demo set-up. Every visitor sees it, raters included, so it names
    neither the benchmark systems nor the Edit tab's model (which may be one of them; the
    Edit tab names it to the roles that may use it), and not the server's paths."""
    counts = store.review_counts(split="train")
    n_train = sum(counts.values())
    n_bench = store.count_triplets(split="bench")
    model_line = "a trained Shapes demo model" if model.trained else "no trained model (see below)"
    return (
        f"**Demo set-up.** Database `{store.path.name}`: {n_train} Shapes training triplets "
        f"labelled by a simulated noisy judge and the exact Shapes oracle ({counts['pending']} "
        f"awaiting review), and {n_bench} Shapes-Edit items edited by two systems for blind "
        f"rating. Edit tab: {model_line}. Use `--db` and `--model` for your own data and model."
    )


# The Edit tab's examples, one per category in this order: whole-image edits first, which the
# shipped Shapes models carry out (so the first example shows what the reward sliders do), then
# the object-level ones they do not do yet (docs/results.md, per-category following).
EXAMPLE_ORDER = ("background", "global", "style", "remove", "local", "add", "texture")


def example_inputs(store: Store, limit: int = 8) -> list[tuple[str, str]]:
    """(input image path, instruction) pairs for the Edit tab: one per category (in
    :data:`EXAMPLE_ORDER`, other categories after), each from a different scene where possible
    (benchmark items first, then any triplet)."""
    with store.db() as db:
        rows = db.execute(
            "SELECT original, instruction, category FROM triplets "
            "ORDER BY split != 'bench', rowid LIMIT 2000"
        ).fetchall()
    by_category: dict[str | None, list[tuple[str, str]]] = {}
    for original, instruction, category in rows:
        by_category.setdefault(category, []).append((original, instruction))
    rank = {c: i for i, c in enumerate(EXAMPLE_ORDER)}
    ordered = sorted(by_category.items(), key=lambda kv: rank.get(kv[0], len(rank)))
    picked, used = [], set()
    for _, options in ordered:
        original, instruction = next((o for o in options if o[0] not in used), options[0])
        used.add(original)
        picked.append((str(store.image_path(original)), instruction))
        if len(picked) == limit:
            break
    return picked


def main(argv: list[str] | None = None) -> int:
    """``python -m studio.demo cache [DB]``: build (or open) a demo store and write the demo
    models' benchmark outputs to :data:`OUTPUT_CACHE`, for the next first start."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m studio.demo", description=main.__doc__)
    ap.add_argument("command", choices=("cache",))
    ap.add_argument("db", nargs="?", help="a demo store to read (default: build one in a "
                    "temporary folder)")  # fmt: skip
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        store = ensure_demo_store(args.db or Path(tmp) / "studio.db")
        for folder in write_output_cache(store):
            print("wrote", folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
