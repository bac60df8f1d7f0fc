"""``python -m train.evaluate``: benchmark systems, judge every output, write tables and galleries.

One command produces everything of the paper's evaluation for any set of systems::

    python -m train.evaluate --benchmark "shapes?size=32" \\
        --system baseline=docs/demo_models/shapes_baseline \\
        --system mrc=docs/demo_models/shapes_mrc \\
        --sweep 0,3,5 --judge oracle --out runs/shapes_eval

Table 1 (every system), Table 4 (paired comparisons: the first system against each other one),
Table 6 and the controllability curve (the sweep), reference metrics (L1/PSNR, CLIP-I/CLIP-T
with ``--clip``), judge-vs-oracle agreement (Shapes with a non-oracle judge) and the galleries
land in ``--out``; the store (``--out/store.db`` unless ``--store``) keeps every output and
verdict, so the same command after a kill only does what is left. ``--report-only`` rebuilds
the report from the store without generating or judging anything.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from core.judges.base import Judge, judge_name_type, reward_model_folder
from train.evaluate.benchmarks import load_benchmark
from train.evaluate.gallery import pick_items, write_html, write_png
from train.evaluate.metrics_stage import compute_run_metrics
from train.evaluate.report import table1_section, write_report
from train.evaluate.runner import BenchmarkRun
from train.evaluate.systems import expand_sweep, parse_rewards, parse_sweep, parse_system
from train.evaluate.tables import ReportConfig
from train.stats import BootstrapConfig


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation run (saved as ``run.json`` beside the report)."""

    benchmark: str  # shapes | shapes:DIR | real-edit:DIR|ID | folder:DIR | store:DB[?split=..]
    systems: tuple[str, ...]  # NAME=PATH[,key=value...] each
    out: str  # output folder (report, galleries, run.json, default store)
    store: str | None = None  # SQLite store; default OUT/store.db
    sweep: str | None = None  # reward settings for every MRC system, e.g. "0,3,5"
    limit: int | None = None  # first N items (after per_category)
    per_category: int | None = None  # at most N items per category
    categories: tuple[str, ...] = ()  # only these categories
    category_by_position: bool = False  # Real-Edit: category from the entry's position
    # generation defaults (a system's own key=value wins)
    rewards: str = "5/5/5"
    reward_text: str = ";;"
    reward_guidance: float = 1.0
    steps: int = 20
    guidance: float | None = None  # None: the model folder's recorded default, else 7.5
    image_guidance: float | None = None  # None: the folder's recorded default, else 1.5
    scheduler: str | None = None
    resolution: int | None = None
    seed: int = 0
    batch_size: int = 8
    device: str = "cpu"
    dtype: str = "float32"
    threads: int | None = None  # torch CPU threads
    # judging
    judge: str = "oracle"  # oracle | openai | reward-model:FOLDER
    judge_model: str = "gpt-4o"
    judge_mode: str = "one"
    judge_base_url: str | None = None
    prompt_version: int | None = None
    concurrency: int = 8
    retry_failed: bool = False
    truth: str = "auto"  # auto | oracle | none: ground-truth verdicts for judge agreement
    # report
    failure_policy: str = "exclude"
    compare: tuple[str, ...] = ()  # A:B pairs
    bootstrap: int = 10_000
    confidence: float = 0.95
    stats_seed: int = 0
    clip: str | None = None  # CLIP model folder or hub id for CLIP-I / CLIP-T
    gallery_items: int = 21
    report_only: bool = False
    progress: bool = True


_judge_name = judge_name_type("oracle", "openai")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m train.evaluate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = EvalConfig(benchmark="", systems=(), out="")
    b = ap.add_argument_group("benchmark")
    b.add_argument("--benchmark", required=True,
                   help="shapes (generated Shapes-Edit; options as shapes?size=32&scenes=4&seed=0, "
                        "size 32 for the demo models) | shapes:DIR | real-edit:DIR_OR_HUB_ID | "
                        "folder:DIR | store:DB[?split=S&source=S]")  # fmt: skip
    b.add_argument("--limit", type=int, help="only the first N items")
    b.add_argument("--per-category", type=int, help="at most N items per category")
    b.add_argument("--categories", default="", help="comma-separated categories to keep")
    b.add_argument("--category-by-position", action="store_true",
                   help="Real-Edit: take a category missing from the text from its list position")  # fmt: skip
    s = ap.add_argument_group("systems")
    s.add_argument("--system", action="append", required=True, metavar="NAME=PATH[,key=value...]",
                   help="a system to evaluate (repeat); keys: kind, rewards, reward_text, reward_guidance, "
                        "steps, guidance, image_guidance, scheduler, resolution, seed, best_of, reward_model (best-of-N)")  # fmt: skip
    s.add_argument("--sweep", help="reward settings for every MRC system: 0,3,5 or 0/0/0,5/5/0")
    s.add_argument("--rewards", default=d.rewards, help=f"default MRC rewards F/P/Q [{d.rewards}]")
    s.add_argument(
        "--reward-text", default=d.reward_text, help="default failure texts 'f;p;q' [none]"
    )
    s.add_argument("--reward-guidance", type=float, default=d.reward_guidance,
                   help=f"reward guidance scale; 1 = the paper [{d.reward_guidance}]")  # fmt: skip
    s.add_argument("--steps", type=int, default=d.steps, help=f"denoising steps [{d.steps}]")
    s.add_argument("--guidance", type=float, default=d.guidance,
                   help="text guidance [the model's recorded default (model_index.json), else 7.5]")  # fmt: skip
    s.add_argument("--image-guidance", type=float, default=d.image_guidance,
                   help="image guidance [the model's recorded default, else 1.5]")  # fmt: skip
    s.add_argument("--scheduler", help="euler | euler_ancestral | ddim | dpm [the pipeline's]")
    s.add_argument("--resolution", type=int, help="resize inputs to this short side [as given]")
    s.add_argument("--seed", type=int, default=d.seed, help=f"base seed of every item [{d.seed}]")
    s.add_argument(
        "--batch-size", type=int, default=d.batch_size, help=f"images per batch [{d.batch_size}]"
    )
    s.add_argument("--device", default=d.device, help=f"torch device [{d.device}]")
    s.add_argument("--dtype", default=d.dtype, choices=("float32", "float16", "bfloat16"),
                   help=f"weights and activations of the model systems; float16/bfloat16 halve "
                        f"memory on a GPU, CPUs want float32 [{d.dtype}]")  # fmt: skip
    s.add_argument("--threads", type=int, help="torch CPU threads [torch's default]")
    j = ap.add_argument_group("judge")
    j.add_argument("--judge", default=d.judge, type=_judge_name,
                   help="oracle: the exact Shapes judge; openai: any OpenAI-compatible VLM; "
                        "reward-model:FOLDER: a trained reward model (local, free) [oracle]")  # fmt: skip
    j.add_argument("--judge-model", default=d.judge_model, help=f"VLM model [{d.judge_model}]")
    j.add_argument("--judge-mode", default=d.judge_mode, choices=("one", "three"),
                   help="one call per output, or the paper's three [one]")  # fmt: skip
    j.add_argument("--judge-base-url", help="OpenAI-compatible base URL [$OPENAI_BASE_URL]")
    j.add_argument("--prompt-version", type=int, help="judge prompt version [newest]")
    j.add_argument(
        "--concurrency", type=int, default=d.concurrency, help="judgements in flight [8]"
    )
    j.add_argument("--retry-failed", action="store_true", help="judge failed verdicts again")
    j.add_argument("--truth", default=d.truth, choices=("auto", "oracle", "none"),
                   help="also run the Shapes oracle to measure the judge's agreement [auto: "
                        "Shapes items, from shapes or store, with a non-oracle judge]")  # fmt: skip
    r = ap.add_argument_group("report")
    r.add_argument("--out", required=True, help="output folder")
    r.add_argument("--store", help="SQLite store [OUT/store.db]")
    r.add_argument("--failure-policy", default=d.failure_policy, choices=("exclude", "worst"),
                   help="failed verdicts: excluded from averages, or counted as no/0 [exclude]")  # fmt: skip
    r.add_argument("--compare", action="append", default=[], metavar="A:B",
                   help="paired comparison B vs A (repeat) [first system vs each other]")  # fmt: skip
    r.add_argument("--bootstrap", type=int, default=d.bootstrap, help="bootstrap resamples [10000]")
    r.add_argument("--confidence", type=float, default=d.confidence, help="interval level [0.95]")
    r.add_argument("--stats-seed", type=int, default=d.stats_seed, help="bootstrap seed [0]")
    r.add_argument("--clip", help="CLIP model (folder or hub id) for CLIP-I / CLIP-T")
    r.add_argument("--gallery-items", type=int, default=d.gallery_items, help="gallery rows [21]")
    r.add_argument("--report-only", action="store_true", help="no generation or judging")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    return ap


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    return EvalConfig(
        benchmark=args.benchmark, systems=tuple(args.system), out=args.out, store=args.store,
        sweep=args.sweep, limit=args.limit, per_category=args.per_category,
        categories=tuple(c for c in args.categories.split(",") if c.strip()),
        category_by_position=args.category_by_position, rewards=args.rewards,
        reward_text=args.reward_text, reward_guidance=args.reward_guidance, steps=args.steps,
        guidance=args.guidance, image_guidance=args.image_guidance, scheduler=args.scheduler,
        resolution=args.resolution, seed=args.seed, batch_size=args.batch_size, device=args.device,
        dtype=args.dtype, threads=args.threads, judge=args.judge, judge_model=args.judge_model,
        judge_mode=args.judge_mode, judge_base_url=args.judge_base_url,
        prompt_version=args.prompt_version, concurrency=args.concurrency,
        retry_failed=args.retry_failed, truth=args.truth, failure_policy=args.failure_policy,
        compare=tuple(args.compare), bootstrap=args.bootstrap, confidence=args.confidence,
        stats_seed=args.stats_seed, clip=args.clip, gallery_items=args.gallery_items,
        report_only=args.report_only, progress=not args.no_progress,
    )  # fmt: skip


def make_judge(cfg: EvalConfig, store: Any) -> Judge:
    """The judge named by the config (``oracle`` needs the Shapes ground truth in the store)."""
    if cfg.judge == "oracle":
        from data.shapes_judge import ShapesJudge

        return ShapesJudge(store)
    if (folder := reward_model_folder(cfg.judge)) is not None:
        from core.judges.reward_model_judge import RewardModelJudge

        return RewardModelJudge(folder, device=cfg.device)
    from core.judges.openai_judge import OpenAIJudge, OpenAIJudgeConfig

    return OpenAIJudge(
        OpenAIJudgeConfig(
            model=cfg.judge_model,
            mode=cfg.judge_mode,
            base_url=cfg.judge_base_url,
            prompt_version=cfg.prompt_version,
            max_concurrency=cfg.concurrency,
        )  # fmt: skip
    )


def _systems(cfg: EvalConfig):
    text = tuple(t.strip() for t in cfg.reward_text.split(";"))
    if len(text) != 3:
        raise ValueError(f"--reward-text {cfg.reward_text!r} needs three texts separated by ';'.")
    defaults = dict(
        rewards=parse_rewards(cfg.rewards), reward_text=text,
        reward_guidance_scale=cfg.reward_guidance, num_inference_steps=cfg.steps,
        guidance_scale=cfg.guidance, image_guidance_scale=cfg.image_guidance,
        scheduler=cfg.scheduler, resolution=cfg.resolution, seed=cfg.seed,
    )  # fmt: skip
    systems = [parse_system(s, defaults) for s in cfg.systems]
    return expand_sweep(systems, parse_sweep(cfg.sweep) if cfg.sweep else None)


def run_evaluation(
    cfg: EvalConfig, judge: Judge | None = None, truth_judge: Judge | None = None
) -> dict[str, Any]:
    """Run everything the config asks for; returns the ``run.json`` content.

    ``judge`` / ``truth_judge`` override the judges the config names (tests, custom backends).
    """
    from core.store import Store

    t0 = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    bench = load_benchmark(cfg.benchmark, category_by_position=cfg.category_by_position)
    bench = bench.select(cfg.limit, cfg.per_category, list(cfg.categories) or None)
    systems = _systems(cfg)
    lacking = [i.item_id for i in bench.items if not {"scene", "edit"} <= set(i.context)]
    if (cfg.judge == "oracle" and judge is None) or cfg.truth == "oracle":
        if lacking:
            raise ValueError(
                f"The Shapes oracle needs each item's scene and edit; {len(lacking)} item(s) of "
                f"{bench.name!r} have none (e.g. {lacking[0]!r}). Use --judge openai (a VLM) for "
                "benchmarks outside the Shapes domain."
            )
    store = Store(cfg.store or out / "store.db")
    run = BenchmarkRun(bench, systems, store, batch_size=cfg.batch_size, device=cfg.device,
                       dtype=cfg.dtype, progress=cfg.progress)  # fmt: skip
    run.prepare()
    if not cfg.report_only:
        run.generate_all()
    judge = judge or make_judge(cfg, store)
    judging = {}
    if not cfg.report_only:
        judging["judge"] = run.judge_all(
            judge, concurrency=cfg.concurrency, retry_failed=cfg.retry_failed, close=True
        )
    use_truth = cfg.truth == "oracle" or (  # auto: every item carries the Shapes ground truth
        cfg.truth == "auto" and not lacking and judge.spec.kind != "shapes-oracle"
    )
    truth = None
    if use_truth or truth_judge is not None:
        truth_judge = truth_judge or make_judge(
            EvalConfig(**{**asdict(cfg), "judge": "oracle"}), store
        )
        if not cfg.report_only:
            judging["truth"] = run.judge_all(truth_judge, concurrency=cfg.concurrency, close=True)
        truth = run.verdict_frame(truth_judge.spec)
    verdicts = run.verdict_frame(judge.spec)
    metrics = compute_run_metrics(run, out / "metrics_cache.json", cfg.clip, cfg.device)
    names = [s.name for s in systems]
    compare = tuple(tuple(c.split(":", 1)) for c in cfg.compare)
    for a, b in compare:
        if a not in names or b not in names:
            raise ValueError(f"--compare {a}:{b} names an unknown system; systems: {names}.")
    rcfg = ReportConfig(
        bootstrap=BootstrapConfig(cfg.bootstrap, cfg.confidence, cfg.stats_seed),
        failure_policy=cfg.failure_policy, comparisons=compare,
    )  # fmt: skip
    items = pick_items(bench.items, cfg.gallery_items)
    outputs = {(s, i.item_id): run.output_path(s, i.item_id) for s in names for i in items}
    report_dir = out / "report"
    report_dir.mkdir(exist_ok=True)
    write_png(report_dir / "gallery.png", items[: min(len(items), 8)], names, outputs, verdicts)
    html = write_html(
        out / "gallery", items, names, outputs, verdicts, f"{bench.name}: {judge.spec.name}"
    )
    preamble = _preamble(cfg, bench, judge, run, judging)
    files = write_report(report_dir, verdicts, [s.describe() for s in systems], rcfg, metrics=metrics,
                         truth=truth, title=f"{bench.name}: benchmark report", preamble=preamble)  # fmt: skip
    info = {
        "config": asdict(cfg),
        "benchmark": {
            "name": bench.name,
            "source": bench.source,
            "items": len(bench),
            "fingerprint": bench.fingerprint(),
            "notes": bench.notes,
        },  # fmt: skip
        "judge": judge.spec.to_dict(),
        "systems": run.counts(),
        "judging": {k: v.to_dict() for k, v in judging.items()},
        "files": {k: str(v) for k, v in files.items()} | {"gallery": str(html)},
        "seconds": round(time.perf_counter() - t0, 1),
        "versions": _versions(),
    }
    (out / "run.json").write_text(json.dumps(info, indent=1, default=str), encoding="utf-8")
    return info


def _preamble(cfg: EvalConfig, bench, judge: Judge, run: BenchmarkRun, judging: dict) -> str:
    lines = [
        f"Benchmark **{bench.name}** ({len(bench)} items, fingerprint `{bench.fingerprint()}`, "
        f"source `{bench.source}`); judge `{judge.spec.name}` (prompts {judge.spec.prompt_version}, "
        f"mode {judge.spec.mode}).",
    ]
    lines += [f"- note: {n}" for n in bench.notes]
    for c in run.counts():
        lines.append(
            f"- `{c['system']}`: {c['outputs']} outputs ({c['generated_now']} new, {c['reused']} "
            f"reused from the store, {c['missing']} missing), store run `{c['run']}`"
        )
    for role, s in judging.items():
        failed = sum(s.failed.values())
        reasons = ", ".join(f"{n} {code}" for code, n in s.failed.most_common())
        lines.append(
            f"- {'verdicts' if role == 'judge' else 'ground truth'} ({s.judge['kind']}:"
            f"{s.judge['model']}): {s.planned} outputs judged now ({s.ok} ok, {failed} failed"
            f"{': ' + reasons if reasons else ''}); {s.reused_ok} ok verdicts reused, "
            f"{s.reused_failed} earlier failures kept (--retry-failed judges them again)"
        )
    lines.append(
        "\nGallery: [`../gallery/index.html`](../gallery/index.html)\n\n![gallery](gallery.png)"
    )
    return "\n".join(lines)


def _versions() -> dict[str, str]:
    import diffusers
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "diffusers": diffusers.__version__, "transformers": transformers.__version__}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        info = run_evaluation(config_from_args(args))
    except (ValueError, OSError, LookupError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    summary = pd.read_csv(out / "report" / "table1.csv")
    names = [s["system"] for s in info["systems"]]
    print(table1_section(summary, names))
    print(f"\nreport: {out / 'report' / 'report.md'}\ngallery: {out / 'gallery' / 'index.html'}")
    print(f"{info['seconds']} s")
    return 0
