"""``python -m train.evaluate.text_probe``: does a model read its instructions, per category?

Accuracy says *that* a model fails an edit category; this probe says whether it even reads the
instruction there. For each benchmark item with a ground-truth target, it measures the model's
denoising loss on the target (the training objective: epsilon or v, as the model's scheduler
says) at a few fixed noise levels with fixed noise, conditioned on

* ``true``: the item's own instruction;
* ``other``: the instruction of the next item of the same category (same kind of edit, other
  object, colour or place);
* ``empty``: the empty prompt.

``gain = loss(other) - loss(true)`` is what the words of the instruction are worth to the model
beyond its category; ``loss(empty) - loss(other)`` is what knowing the category is worth. A model
that reads "make the orange star yellow" as "recolour something" has gain ~0 while its empty
loss is clearly higher. MRC models are conditioned on the requested scores with empty failure
texts (what the studio's sliders send; default 5/5/5).

    python -m train.evaluate.text_probe --system mrc=docs/demo_models/shapes_mrc \\
        --system baseline=docs/demo_models/shapes_baseline --out runs/text_probe

The benchmark defaults to validation scenes (``shapes?size=32&seed=11``), not the Shapes-Edit
benchmark: the probe steers research choices, and those must not be tuned on the benchmark.
Writes ``text_probe.json``, ``text_probe.md`` and ``text_probe.png`` (gain per category).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DDPMScheduler

from core.rewards import Rewards
from core.text_encoding import encode_text
from train.evaluate.benchmark_items import BenchmarkItem
from train.evaluate.benchmarks import load_benchmark
from train.evaluate.generate import load_pipeline
from train.evaluate.systems import SystemSpec, parse_system

DEFAULT_BENCHMARK = "shapes?size=32&seed=11"
DEFAULT_TIMESTEPS = (100, 300, 500, 700, 900)
CONDITIONS = ("true", "other", "empty")


@dataclass(frozen=True)
class CategoryProbe:
    """Mean per-item losses of one category under the three instructions."""

    category: str
    items: int
    loss: dict[str, float]  # condition -> mean loss
    gain: float  # mean of loss(other) - loss(true)
    gain_ci: tuple[float, float]  # 95 % percentile bootstrap over items
    reads: float  # fraction of items with loss(other) > loss(true)

    def to_dict(self) -> dict[str, Any]:
        return {
            "category": self.category,
            "items": self.items,
            "loss": {k: round(v, 5) for k, v in self.loss.items()},
            "gain": round(self.gain, 5),
            "gain_ci": [round(x, 5) for x in self.gain_ci],
            "reads": round(self.reads, 3),
        }


def _bootstrap_ci(x: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), (n, len(x)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def group_items(items: Sequence[BenchmarkItem], per_category: int) -> dict[str, list]:
    """The first ``per_category`` items with a target of each category (at least 2 each: the
    ``other`` instruction comes from the next item of the same category)."""
    groups: dict[str, list[BenchmarkItem]] = {}
    for it in items:
        if it.target is None or it.category is None:
            continue
        g = groups.setdefault(it.category, [])
        if len(g) < per_category:
            g.append(it)
    if not groups:
        raise ValueError("The benchmark has no items with a category and a ground-truth target.")
    small = sorted(c for c, g in groups.items() if len(g) < 2)
    if small:
        raise ValueError(f"Categories with fewer than 2 items cannot swap instructions: {small}.")
    return groups


class LossProbe:
    """The denoising loss of one pipeline's UNet on (source, instruction) -> target."""

    def __init__(self, spec: SystemSpec, pipe: Any):
        self.spec, self.pipe = spec, pipe
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.prediction_type = self.noise_scheduler.config.prediction_type

    @torch.no_grad()
    def latents(self, images: list[Any]) -> torch.Tensor:
        pipe = self.pipe
        pixels = pipe.image_processor.preprocess(images).to(pipe.device, pipe.unet.dtype)
        return pipe.vae.encode(pixels).latent_dist.mode()

    @torch.no_grad()
    def pair_latents(self, items: list[BenchmarkItem]) -> tuple[torch.Tensor, torch.Tensor]:
        """(source latents, scaled target latents) of ``items``: read and encoded once."""
        source = self.latents([it.load_image().convert("RGB") for it in items])
        target = self.latents([it.load_target().convert("RGB") for it in items])
        return source, target * self.pipe.vae.config.scaling_factor

    @torch.no_grad()
    def losses(
        self,
        source: torch.Tensor,
        target: torch.Tensor,
        prompts: list[str],
        timesteps: Sequence[int],
        seed: int,
    ) -> torch.Tensor:
        """(items,) mean loss over ``timesteps``; the noise depends only on ``seed``."""
        pipe = self.pipe
        hidden = encode_text(prompts, pipe.tokenizer, pipe.text_encoder, pipe.device)
        hidden = hidden.last_hidden_state.to(pipe.unet.dtype)
        reward = self.reward(len(prompts), target.device)
        g = torch.Generator().manual_seed(seed)
        total = torch.zeros(len(prompts))
        for t in timesteps:
            noise = torch.randn(target.shape, generator=g).to(target)
            tt = torch.full((len(prompts),), int(t), device=target.device, dtype=torch.long)
            noisy = self.noise_scheduler.add_noise(target, noise, tt)
            model_input = torch.cat([noisy, source], dim=1)
            if reward is None:
                pred = pipe.unet(model_input, tt, encoder_hidden_states=hidden).sample
            else:
                scores, reward_text = reward
                pred = pipe.mrc_unet(
                    model_input, tt, encoder_hidden_states=hidden, scores=scores,
                    reward_text_embeds=reward_text,
                ).sample  # fmt: skip
            if self.prediction_type == "epsilon":
                want = noise
            else:
                want = self.noise_scheduler.get_velocity(target, noise, tt)
            total += ((pred.float() - want.float()) ** 2).mean(dim=(1, 2, 3)).cpu()
        return total / len(timesteps)

    def reward(self, n: int, device: torch.device) -> Any:
        """An MRC system's requested rewards for ``n`` items as the UNet takes them (scores,
        reward-text embeddings), or None for InstructPix2Pix."""
        if self.spec.kind != "mrc":
            return None
        request = Rewards.from_scores(self.spec.rewards, self.spec.reward_text)
        return self.pipe.reward_inputs([request] * n, device)


def probe_system(
    spec: SystemSpec,
    groups: dict[str, list[BenchmarkItem]],
    timesteps: Sequence[int] = DEFAULT_TIMESTEPS,
    seed: int = 0,
    pipe: Any = None,
) -> list[CategoryProbe]:
    """One :class:`CategoryProbe` per category, in the order of ``groups``."""
    probe = LossProbe(spec, pipe if pipe is not None else load_pipeline(spec))
    out = []
    for category, items in groups.items():
        own = [it.instruction for it in items]
        prompts = {"true": own, "other": own[1:] + own[:1], "empty": [""] * len(items)}
        source, target = probe.pair_latents(items)
        loss = {
            c: probe.losses(source, target, prompts[c], timesteps, seed).numpy() for c in CONDITIONS
        }
        gain = loss["other"] - loss["true"]
        out.append(
            CategoryProbe(
                category=category,
                items=len(items),
                loss={c: float(v.mean()) for c, v in loss.items()},
                gain=float(gain.mean()),
                gain_ci=_bootstrap_ci(gain),
                reads=float((gain > 0).mean()),
            )
        )
    return out


def markdown(results: dict[str, list[CategoryProbe]]) -> str:
    lines = [
        "| system | category | items | loss true | loss other | loss empty "
        "| gain (other - true) [95 % CI] | items with gain > 0 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, rows in results.items():
        for r in rows:
            lo, hi = r.gain_ci
            lines.append(
                f"| `{name}` | {r.category} | {r.items} | {r.loss['true']:.4f} "
                f"| {r.loss['other']:.4f} | {r.loss['empty']:.4f} "
                f"| {r.gain:+.4f} [{lo:+.4f}, {hi:+.4f}] | {r.reads:.0%} |"
            )
    return "\n".join(lines) + "\n"


def plot(results: dict[str, list[CategoryProbe]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    categories = [r.category for r in next(iter(results.values()))]
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(categories), 3.4))
    width = 0.8 / len(results)
    for k, (name, rows) in enumerate(results.items()):
        by = {r.category: r for r in rows}
        x = np.arange(len(categories)) + (k - (len(results) - 1) / 2) * width
        gains = [by[c].gain for c in categories]
        errs = np.array([[by[c].gain - by[c].gain_ci[0], by[c].gain_ci[1] - by[c].gain]
                         for c in categories]).T  # fmt: skip
        ax.bar(x, gains, width, yerr=errs, capsize=2, label=name)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_yscale("symlog", linthresh=1e-3)  # object-level gains are ~100x smaller
    ax.set_xticks(np.arange(len(categories)), categories)
    ax.set_ylabel("loss(other instruction) - loss(own)")
    ax.set_title("What the instruction's words are worth, per category")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train.evaluate.text_probe",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--system",
        action="append",
        required=True,
        metavar="NAME=PATH[,key=value...]",
        help="a pipeline folder, as in python -m train.evaluate (MRC: rewards=F/P/Q and "
        "reward_text=a;b;c are used; sampling keys are ignored); repeat to compare",
    )
    p.add_argument(
        "--benchmark",
        default=DEFAULT_BENCHMARK,
        help="benchmark spec with ground-truth targets (validation scenes by default)",
    )
    p.add_argument("--per-category", type=int, default=16, help="items per category")
    p.add_argument(
        "--timesteps",
        default=",".join(map(str, DEFAULT_TIMESTEPS)),
        help="noise levels (training timesteps), comma-separated",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the fixed noise")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's)")
    p.add_argument("--out", type=Path, default=None, help="folder for json, md and png")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.per_category < 2:
        print("error: --per-category must be at least 2.", file=sys.stderr)
        return 2
    try:
        timesteps = [int(t) for t in args.timesteps.split(",") if t.strip()]
        specs = [parse_system(s) for s in args.system]
        if any(s.kind == "folder" for s in specs):
            raise ValueError("the probe needs pipeline folders, not folders of outputs.")
        groups = group_items(load_benchmark(args.benchmark).items, args.per_category)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {}
    for spec in specs:
        print(f"probing {spec.name} ({spec.path}) on {sum(map(len, groups.values()))} items",
              flush=True)  # fmt: skip
        results[spec.name] = probe_system(spec, groups, timesteps, args.seed)
    table = markdown(results)
    print(table)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        record = {
            "benchmark": args.benchmark,
            "timesteps": timesteps,
            "seed": args.seed,
            "systems": {s.name: s.describe() for s in specs},
            "results": {k: [r.to_dict() for r in v] for k, v in results.items()},
        }
        (args.out / "text_probe.json").write_text(json.dumps(record, indent=1))
        (args.out / "text_probe.md").write_text(table)
        plot(results, args.out / "text_probe.png")
        print(f"wrote {args.out}/text_probe.{{json,md,png}}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
