"""``python -m data annotate``: label triplets with a judge, resumably, with a cost ledger.

Where triplets come from (they are always added to the store first, so labels attach to them):

* the store itself (default; filter with ``--split`` / ``--source``);
* ``--shapes DIR``: a Shapes folder written by ``python -m data synth``;
* ``--rewardedit FILE.json --images DIR``: the paper's RewardEdit-20K JSON plus an image folder
  (layouts in :mod:`data.interop`).

Which judge: ``--judge openai`` (default; any OpenAI-compatible server: OpenAI, Azure with
``--azure-endpoint``, vLLM or ``python -m data.judge_server`` with ``--base-url``),
``--judge shapes-oracle`` (the exact Shapes oracle, no network) or ``--judge
reward-model:FOLDER`` (a learned reward model, ``python -m train.reward_model``; local, free,
its per-perspective standard deviation stored in each annotation's ``meta["std"]``).

What a run does: plan the jobs whose content key has no result yet (``--only-failed``: those that
failed and never succeeded), judge them with ``--concurrency`` in flight under the rate limits,
store each result as it arrives (ok labels also become the triplet's pending label for review),
and print a summary: done, failed by reason, tokens and cost. ``--dry-run`` only counts and
estimates the cost. ``--batch submit|poll|collect`` uses the OpenAI Batch API instead (half
price, results within 24 h; see :mod:`data.annotate_batch`). Ctrl-C stops cleanly after storing
what has arrived; a re-run continues where it stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from core.judges.base import Judge, Usage, judge_name_type, reward_model_folder
from core.judges.cost import pricing_for
from core.judges.limits import RetryPolicy
from core.judges.openai_judge import OpenAIJudge, OpenAIJudgeConfig
from data.annotate_runner import Plan, make_input, plan, repair_labels, run_jobs

ESTIMATE_SAMPLE = 16  # triplets prepared to estimate a dry run's tokens


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--store", required=True, help="the SQLite store (created if missing)")
    src = ap.add_argument_group("triplets (default: those already in the store)")
    src.add_argument("--shapes", help="import a Shapes folder (python -m data synth) first")
    src.add_argument("--rewardedit", help="import RewardEdit-20K JSON first (needs --images)")
    src.add_argument("--images", help="image folder of --rewardedit (see data/interop.py)")
    src.add_argument("--instructions", help="JSON {triplet_id: instruction} for --rewardedit")
    src.add_argument("--split", help="only triplets of this split (e.g. train, bench)")
    src.add_argument("--source", help="only triplets of this source")
    j = ap.add_argument_group("judge")
    j.add_argument(
        "--judge",
        type=_judge_name,
        default="openai",
        help="openai | shapes-oracle | reward-model:FOLDER (a trained reward model) [openai]",
    )
    j.add_argument("--model", default="gpt-4o", help="model (Azure: deployment) [gpt-4o]")
    j.add_argument(
        "--mode",
        choices=("one", "three"),
        default="one",
        help="one call per triplet (JSON schema) or the paper's three [one]",
    )
    j.add_argument("--sequential", action="store_true", help="mode three: calls one after another")
    j.add_argument("--base-url", help="OpenAI-compatible base URL [$OPENAI_BASE_URL or OpenAI]")
    j.add_argument(
        "--api-key-env",
        default=None,
        help="name of the env variable holding the key [OPENAI_API_KEY]",
    )
    j.add_argument("--azure-endpoint", help="Azure OpenAI endpoint (https://NAME.openai.azure.com)")
    j.add_argument("--azure-api-version", default="2024-10-21")
    j.add_argument("--prompt-version", type=int, help="prompt version [newest]")
    j.add_argument("--no-structured", action="store_true", help="mode one without json_schema")
    j.add_argument("--max-side", type=int, default=512, help="long side of sent images, px [512]")
    j.add_argument("--image-format", choices=("auto", "png", "jpeg"), default="auto")
    j.add_argument("--detail", choices=("auto", "low", "high"), default="auto")
    j.add_argument("--max-tokens", type=int, default=400, help="completion tokens per call")
    r = ap.add_argument_group("running")
    r.add_argument("--task", choices=("annotate", "evaluate"), default="annotate")
    r.add_argument("--concurrency", type=int, default=8, help="requests in flight [8]")
    r.add_argument("--rpm", type=float, help="requests per minute limit")
    r.add_argument("--tpm", type=float, help="tokens per minute limit")
    r.add_argument("--timeout", type=float, default=60.0, help="seconds per request [60]")
    r.add_argument("--max-attempts", type=int, default=6, help="HTTP attempts per call [6]")
    r.add_argument("--reply-attempts", type=int, default=3, help="calls per unusable reply [3]")
    r.add_argument("--backoff", type=float, default=0.5, help="base backoff seconds [0.5]")
    r.add_argument("--max-backoff", type=float, default=30.0)
    r.add_argument("--limit", type=int, help="judge at most this many triplets")
    r.add_argument("--only-failed", action="store_true", help="retry failed triplets only")
    r.add_argument("--dry-run", action="store_true", help="count and estimate cost; call nothing")
    r.add_argument("--price-in", type=float, help="USD per 1M prompt tokens (overrides the table)")
    r.add_argument("--price-out", type=float, help="USD per 1M completion tokens")
    r.add_argument("--no-labels", action="store_true", help="do not create pending review labels")
    r.add_argument("--no-progress", action="store_true")
    r.add_argument("--summary-json", help="also write the summary here")
    r.add_argument("--seed", type=int, help="seed of the backoff jitter")
    b = ap.add_argument_group("OpenAI Batch API (half price, within 24 h)")
    b.add_argument("--batch", choices=("submit", "poll", "collect"))
    b.add_argument("--wait", action="store_true", help="poll/collect: wait until batches end")
    b.add_argument("--poll-every", type=float, default=30.0)
    b.add_argument("--batch-max-lines", type=int, default=50_000)


_judge_name = judge_name_type("openai", "shapes-oracle")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    ap = subparsers.add_parser(
        "annotate",
        help="label triplets with a VLM judge or the Shapes oracle (resumable)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(ap)
    ap.set_defaults(func=run_cli, handler=run_cli)
    return ap


def make_judge(args: argparse.Namespace, store: Any) -> Judge:
    if args.judge == "shapes-oracle":
        from data.shapes_judge import ShapesJudge

        return ShapesJudge(store)
    if (folder := reward_model_folder(args.judge)) is not None:
        from core.judges.reward_model_judge import RewardModelJudge

        try:
            return RewardModelJudge(folder)
        except (ValueError, OSError) as e:
            raise SystemExit(f"error: {e}") from None
    import os

    key = os.environ.get(args.api_key_env) if args.api_key_env else None
    if args.api_key_env and not key:
        raise SystemExit(f"error: the environment variable {args.api_key_env} is not set")
    cfg = OpenAIJudgeConfig(
        model=args.model,
        mode=args.mode,
        base_url=args.base_url,
        api_key=key,
        azure_endpoint=args.azure_endpoint,
        azure_api_version=args.azure_api_version,
        prompt_version=args.prompt_version,
        structured_output=not args.no_structured,
        sequential=args.sequential,
        max_side=args.max_side,
        image_format=args.image_format,
        detail=args.detail,
        max_tokens=args.max_tokens,
        timeout_s=args.timeout,
        max_concurrency=args.concurrency,
        requests_per_minute=args.rpm,
        tokens_per_minute=args.tpm,
        retry=RetryPolicy(args.max_attempts, args.reply_attempts, args.backoff, args.max_backoff),
        seed=args.seed,
    )
    try:
        return OpenAIJudge(cfg)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None


def import_sources(args: argparse.Namespace, store: Any) -> None:
    if args.shapes:
        from data.interop import import_shapes_folder

        n = import_shapes_folder(store, args.shapes, progress=not args.no_progress)
        print(f"imported {n} Shapes triplets from {args.shapes}", file=sys.stderr)
    if args.rewardedit:
        from data.interop import import_rewardedit

        if not args.images:
            raise SystemExit("error: --rewardedit needs --images (the folder with the images)")
        report = import_rewardedit(
            store, args.rewardedit, args.images, instructions=args.instructions, labels=False
        )
        print(report.text(), file=sys.stderr)


def dry_run(args: argparse.Namespace, store: Any, judge: Judge, p: Plan) -> dict[str, Any]:
    sample = p.jobs[:ESTIMATE_SAMPLE]
    per = Usage()
    for job in sample:
        per += judge.estimate(args.task, make_input(store, job))
    n = len(sample) or 1
    scale = len(p.jobs) / n
    est = Usage(*(round(v * scale) for v in per.to_dict().values()))
    out: dict[str, Any] = {
        "to_judge": len(p.jobs),
        "already_done": p.done,
        "failed_before": p.failed_before,
        "without_edited_image": p.no_edited,
        "estimated_usage": est.to_dict(),
    }
    for name, batch in (("cost_usd", False), ("batch_cost_usd", True)):
        pricing = pricing_for(judge.spec.model, args.price_in, args.price_out, batch)
        out[name] = round(pricing.cost(est), 4) if pricing else None
    return out


def run_cli(args: argparse.Namespace) -> int:
    from core.store import Store

    try:
        store = Store(args.store)
        import_sources(args, store)
    except (ValueError, OSError) as e:  # unreadable folder / JSON / images: say so, exit 2
        print(f"error: {e}", file=sys.stderr)
        return 2
    judge = make_judge(args, store)
    if args.batch:
        from data.annotate_batch import batch_command

        return batch_command(args, store, judge)
    p = plan(
        store, judge.spec, args.task, split=args.split, source=args.source,
        only_failed=args.only_failed, limit=args.limit,
    )  # fmt: skip
    if args.dry_run:
        report = dry_run(args, store, judge, p)
        asyncio.run(judge.aclose())
        print(json.dumps(report, indent=2))
        return 0
    repaired = (
        repair_labels(store, judge.spec) if args.task == "annotate" and not args.no_labels else 0
    )
    print(
        f"{p.total} triplets: {p.done} done, {len(p.jobs)} to judge"
        + (f", {p.failed_before} failed before" if p.failed_before else "")
        + (f", {p.no_edited} without an edited image" if p.no_edited else "")
        + (f", {repaired} labels repaired" if repaired else ""),
        file=sys.stderr,
    )
    pricing = pricing_for(judge.spec.model, args.price_in, args.price_out)

    async def go():
        async with judge:
            return await run_jobs(
                store, judge, p.jobs, args.task, concurrency=args.concurrency, pricing=pricing,
                set_labels=not args.no_labels, progress=not args.no_progress, skipped_done=p.done,
            )  # fmt: skip

    try:
        summary = asyncio.run(go())
    except KeyboardInterrupt:
        print(
            "interrupted: every result that arrived is stored; re-run to continue", file=sys.stderr
        )
        return 130
    print(summary.text())
    if args.summary_json:
        Path(args.summary_json).write_text(json.dumps(summary.to_dict(), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m data.annotate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(ap)
    return run_cli(ap.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
