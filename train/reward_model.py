"""``python -m train.reward_model``: train the learned edit reward model (core.reward_model).

    python -m train.reward_model --shapes runs/shapes32 --max_train_samples 10000 \\
        --text_encoder docs/demo_models/shapes_clip --output_dir runs/reward_model
    python -m train.reward_model ... --resume_from_checkpoint latest     # continue exactly

Each step draws ``batch_size`` scored triplets (Gaussian NLL on their scores) and ``batch_size``
pairs of edits of the same input (the uncertainty-aware pairwise loss with ties split as in
EditReward); see :mod:`train.reward_data` for where they come from. Runs under ``accelerate``
(CPU, one GPU or ``accelerate launch`` for several), with atomic checkpoints and exact resume
(batches are pure functions of the seed and the step, :mod:`train.data_order`). The output folder:

    config.yaml  data_report.json  bad_data.jsonl  data.pt (the decoded data, reused on resume)
    checkpoint-<step>/  logs/metrics.jsonl  model/ (EditRewardModel.from_pretrained)  eval.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm.auto import tqdm

from core.reward_model import EditRewardModel, gaussian_nll, pairwise_loss
from train.checkpoints import (
    MetricsLog,
    Progress,
    list_checkpoints,
    prune_checkpoints,
    resolve_resume,
    save_checkpoint,
)
from train.data_order import EpochBatchSampler
from train.datasets import BadDataLog
from train.reward_data import RewardData, build_data

# settings that define the trajectory: a resumed run must match the checkpoint's
TRAJECTORY = ("shapes", "store", "store_split", "outputs", "outputs_judge", "max_train_samples", "variants", "tie_threshold",
              "backbone", "text_encoder", "clip", "image_size", "channels", "hidden_dim", "seed",
              "batch_size", "learning_rate", "weight_decay", "warmup_steps", "pair_weight")  # fmt: skip
DATA_FIELDS = ("shapes", "store", "store_split", "outputs", "outputs_judge", "max_train_samples", "variants", "tie_threshold",
               "image_size", "seed", "on_bad_data")  # fmt: skip


@dataclass(frozen=True)
class RewardTrainConfig:
    """One reward-model run. Defaults: the Shapes reward model of docs/reward_model.md."""

    output_dir: str = "runs/reward_model"
    # data
    shapes: str = ""  # Shapes folder (python -m data synth): oracle labels + re-rendered variants
    store: str = ""  # studio database: reviewed labels and side-by-side ratings
    store_split: str = ""  # only store triplets of this split ("" = all)
    outputs: str = ""  # evaluation store(s), comma-separated: outputs labelled by outputs_judge
    outputs_judge: str = "shapes-oracle-v1"  # judge model whose verdicts label those outputs
    max_train_samples: int = 10_000  # Shapes training triplets used (first N; 0 = all)
    variants: int = 2  # extra edits per Shapes input: the target, then noisy ones (0 = no pairs)
    tie_threshold: float = 0.25  # scores this close count as a tie on that perspective
    on_bad_data: str = "stop"  # stop | skip (skipped examples go to bad_data.jsonl)
    # model
    backbone: str = "pair_cnn"  # pair_cnn (Shapes) | clip (a pretrained CLIPModel)
    text_encoder: str = "docs/demo_models/shapes_clip"  # pair_cnn: CLIPModel folder (text tower)
    clip: str = ""  # clip: CLIPModel folder or hub id
    image_size: int = 32  # images are stored and scored at this side (clip: resized again)
    channels: str = "32,64,128"  # pair_cnn conv widths
    hidden_dim: int = 128
    # optimisation
    seed: int = 0
    batch_size: int = 128  # triplets and pairs per step (each)
    max_train_steps: int = 1500
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100  # linear warm-up, then constant (any checkpoint can be the last)
    pair_weight: float = 1.0  # weight of the pairwise loss against the NLL
    max_grad_norm: float = 1.0
    # outputs
    checkpointing_steps: int = 500
    checkpoints_total_limit: int = 2  # 0 keeps all
    resume_from_checkpoint: str = ""  # "" | latest | a checkpoint folder
    eval_items: int = 560  # held-out Shapes benchmark items scored at the end (0 = none)
    eval_variants: int = 3  # edits per held-out item: the target and noisy ones
    threads: int = 0  # torch CPU threads (0: torch's default)

    def __post_init__(self) -> None:
        if not (self.shapes or self.store or self.outputs):
            raise ValueError(
                "give at least one source: --shapes FOLDER, --store DB and/or --outputs DB."
            )
        if self.backbone not in ("pair_cnn", "clip"):
            raise ValueError(f"--backbone must be pair_cnn or clip; got {self.backbone!r}.")
        if self.backbone == "clip" and not self.clip:
            raise ValueError("--backbone clip needs --clip (a CLIPModel folder or hub id).")
        if self.on_bad_data not in ("stop", "skip"):
            raise ValueError(f"--on_bad_data must be stop or skip; got {self.on_bad_data!r}.")
        for name in ("batch_size", "max_train_steps", "image_size", "hidden_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1; got {getattr(self, name)}.")
        if self.variants < 0 or self.tie_threshold < 0:
            raise ValueError("--variants and --tie_threshold must be >= 0.")

    @property
    def channel_list(self) -> tuple[int, ...]:
        return tuple(int(c) for c in self.channels.split(","))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(asdict(self), sort_keys=False), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> RewardTrainConfig:
        return cls(**yaml.safe_load(Path(path).read_text(encoding="utf-8")))


class RewardTrainer:
    """Builds data and model, then ``run_loop`` -> ``run_step`` -> ``forward_backward``."""

    def __init__(self, cfg: RewardTrainConfig, progress: bool = True):
        from accelerate import Accelerator

        self.cfg, self.progress = cfg, progress
        self.out = Path(cfg.output_dir)
        self.accelerator = Accelerator()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)

    # -- set-up -------------------------------------------------------------------------------
    def setup(self) -> None:
        cfg, acc = self.cfg, self.accelerator
        resume = resolve_resume(self.out, cfg.resume_from_checkpoint)
        if resume is None and list_checkpoints(self.out):
            raise ValueError(
                f"{self.out} already holds checkpoints; pass --resume_from_checkpoint latest to "
                "continue that run, or choose another --output_dir."
            )
        if resume is not None:
            self._check_trajectory(RewardTrainConfig.load(resume / "config.yaml"))
        self.out.mkdir(parents=True, exist_ok=True)
        cfg.save(self.out / "config.yaml")
        self.data = self.load_data()
        torch.manual_seed(cfg.seed)
        self.model = self.build_model()
        self.text = self.model.embed_instructions(self.data.instructions)  # (U, D), cached once
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        warmup = max(1, cfg.warmup_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
        self.model, self.optimizer, self.scheduler = acc.prepare(self.model, opt, sched)
        self.state = Progress()
        acc.register_for_checkpointing(self.state)
        if resume is not None:
            acc.load_state(str(resume))
        self.metrics = MetricsLog(self.out / "logs" / "metrics.jsonl",
                                  self.state.global_step if resume is not None else None)  # fmt: skip
        P, r = acc.num_processes, acc.process_index
        self.triplet_sampler = self._sampler(len(self.data), "triplets", P, r)
        self.pair_sampler = self._sampler(len(self.data.pairs), "pairs", P, r)

    def _check_trajectory(self, old: RewardTrainConfig) -> None:
        differ = [k for k in TRAJECTORY if getattr(old, k) != getattr(self.cfg, k)]
        if differ:
            raise ValueError(
                "--resume_from_checkpoint: these settings differ from the checkpoint's and would "
                f"change the run: {', '.join(differ)}. Use the checkpoint's values."
            )

    def _sampler(self, n: int, name: str, P: int, r: int) -> EpochBatchSampler | None:
        if n == 0:
            return None
        batch = min(self.cfg.batch_size, max(1, n // P))
        seed = int(hashlib.sha256(f"{self.cfg.seed}:{name}".encode()).hexdigest()[:8], 16)
        return EpochBatchSampler(n, batch, P, r, seed=seed)

    def load_data(self) -> RewardData:
        """The decoded data, built once per data settings and reused on resume."""
        key = hashlib.sha256(
            json.dumps({k: getattr(self.cfg, k) for k in DATA_FIELDS}).encode()
        ).hexdigest()[:16]
        path = self.out / "data.pt"
        if path.is_file():
            saved = torch.load(path, weights_only=False)
            if saved.get("key") == key:
                return RewardData(**saved["data"])
        log = BadDataLog(self.cfg.on_bad_data)
        t0 = time.perf_counter()
        data = build_data(self.cfg, log, self.progress)
        data.info["seconds"] = round(time.perf_counter() - t0, 1)
        log.write(self.out / "bad_data.jsonl")
        (self.out / "data_report.json").write_text(json.dumps(data.info, indent=1))
        if self.accelerator.is_main_process:
            torch.save({"key": key, "data": vars(data)}, path)
        print(f"data: {json.dumps(data.info)}", file=sys.stderr)
        return data

    def build_model(self) -> EditRewardModel:
        cfg = self.cfg
        if cfg.backbone == "clip":
            return EditRewardModel.from_clip(cfg.clip, hidden_dim=cfg.hidden_dim)
        return EditRewardModel.from_text_tower(
            cfg.text_encoder, image_size=cfg.image_size, channels=cfg.channel_list,
            hidden_dim=cfg.hidden_dim,
        )  # fmt: skip

    # -- the loop -----------------------------------------------------------------------------
    def run_loop(self) -> None:
        cfg = self.cfg
        bar = tqdm(total=cfg.max_train_steps, initial=self.state.global_step, desc="reward model",
                   disable=not self.progress or not self.accelerator.is_main_process)  # fmt: skip
        while self.state.global_step < cfg.max_train_steps:
            t0 = time.perf_counter()
            logs = self.run_step(self.state.global_step)
            self.state.global_step += 1
            step = self.state.global_step
            logs.update(step=step, lr=self.scheduler.get_last_lr()[0],
                        triplets_per_s=round(3 * cfg.batch_size / (time.perf_counter() - t0), 1))  # fmt: skip
            if self.accelerator.is_main_process:
                self.metrics.write(logs)
            bar.update(1)
            bar.set_postfix(loss=f"{logs['loss']:.3f}", refresh=False)
            if step % cfg.checkpointing_steps == 0 or step == cfg.max_train_steps:
                self.save(step)
        bar.close()

    def run_step(self, step: int) -> dict[str, float]:
        self.model.train()
        tri = torch.tensor(self.triplet_sampler.batch(step))  # (B,) triplets
        pairs = torch.tensor(self.pair_sampler.batch(step)) if self.pair_sampler else None
        losses = self.forward_backward(tri, pairs)
        self.optimize()
        return losses

    def predict(self, index: torch.Tensor):
        original, edited = self.data.pixels(index)  # (B, 3, S, S) each
        text = self.text[self.data.triplets[index, 2]]  # (B, D)
        dev = self.accelerator.device
        return self.model(original.to(dev), edited.to(dev), text.to(dev))

    def forward_backward(self, tri: torch.Tensor, pairs: torch.Tensor | None) -> dict:
        """NLL on the triplets' scores plus the pairwise loss on the pairs; one forward pass."""
        dev = self.accelerator.device
        ab = self.data.pairs[pairs] if pairs is not None else torch.empty(0, 2, dtype=torch.long)
        pred = self.predict(torch.cat([tri, ab[:, 0], ab[:, 1]]))  # (B + 2 B', 3)
        b, p = len(tri), len(ab)
        nll = gaussian_nll(pred[:b], self.data.scores[tri].to(dev))
        loss, logs = nll, {"nll": nll.item()}
        if p:
            targets = self.data.pair_targets[pairs].to(dev)  # (B', 4)
            pl = pairwise_loss(pred[b : b + p], pred[b + p :], targets)
            loss = loss + self.cfg.pair_weight * pl
            logs["pair"] = pl.item()
        self.accelerator.backward(loss)
        logs["loss"] = loss.item()
        return logs

    def optimize(self) -> None:
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.accelerator.clip_grad_norm_(params, self.cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def save(self, step: int) -> None:
        save_checkpoint(self.accelerator, self.out, step, self.cfg, {"triplets": len(self.data)})
        if self.accelerator.is_main_process:
            prune_checkpoints(self.out, self.cfg.checkpoints_total_limit)

    # -- the end ------------------------------------------------------------------------------
    def finish(self) -> dict[str, Any]:
        """Save the model (``output_dir/model``) and score the held-out set (``eval.json``)."""
        acc = self.accelerator
        acc.wait_for_everyone()
        model = acc.unwrap_model(self.model).eval()
        report: dict[str, Any] = {"step": self.state.global_step}
        if acc.is_main_process:
            model.save_pretrained(self.out / "model")
            if self.cfg.shapes and self.cfg.eval_items:
                from train.reward_eval import evaluate_model, shapes_heldout

                held = shapes_heldout(self.cfg.shapes, self.cfg.eval_items,
                                      self.cfg.eval_variants, self.cfg.image_size, self.progress)  # fmt: skip
                report["heldout"] = evaluate_model(model, held)
            (self.out / "eval.json").write_text(json.dumps(report, indent=1))
        return report

    def train(self) -> dict[str, Any]:
        self.setup()
        self.run_loop()
        return self.finish()


# -- command line -----------------------------------------------------------------------------

HELP = {
    "output_dir": "Run folder: checkpoints, logs, data cache, model/ and eval.json.",
    "shapes": "Shapes folder (python -m data synth): oracle-labelled triplets and variants.",
    "store": "Studio database: reviewed labels (a correction wins) and side-by-side ratings.",
    "store_split": "Only store triplets of this split ('' = all).",
    "outputs": "Evaluation store (python -m train.evaluate) of model outputs on TRAINING inputs, or "
    "several, comma-separated: each output is a triplet labelled by --outputs_judge's verdicts; "
    "outputs of one input pair up, across stores too.",
    "outputs_judge": "The judge model whose stored verdicts label --outputs.",
    "max_train_samples": "Shapes training triplets used: the first N (0 = all).",
    "variants": "Extra edits per Shapes input for pairs: the target, then noisy ones (0 = none).",
    "tie_threshold": "Two scores at most this far apart are a tie on that perspective.",
    "on_bad_data": "A missing/corrupt image or a bad label: stop the run, or skip and list it.",
    "backbone": "pair_cnn: conv image-pair net + frozen CLIP text; clip: a pretrained CLIPModel.",
    "text_encoder": "pair_cnn: a CLIPModel folder whose frozen text tower embeds instructions.",
    "clip": "clip backbone: a CLIPModel folder or hub id (frozen; heads are trained).",
    "image_size": "Image side in pixels for storage and the pair_cnn backbone.",
    "channels": "pair_cnn conv widths, comma-separated (one stride-2 level each).",
    "hidden_dim": "Width of the MLP before the per-perspective Gaussian heads.",
    "seed": "Seed of the model init and of the data order.",
    "batch_size": "Scored triplets per step, and as many pairs.",
    "max_train_steps": "Optimizer steps.",
    "learning_rate": "AdamW learning rate (constant after warm-up).",
    "weight_decay": "AdamW weight decay.",
    "warmup_steps": "Linear learning-rate warm-up steps.",
    "pair_weight": "Weight of the pairwise loss (the Gaussian NLL has weight 1).",
    "max_grad_norm": "Gradient clipping norm.",
    "checkpointing_steps": "Save a resumable checkpoint every N steps.",
    "checkpoints_total_limit": "Keep at most N checkpoints (0 = all).",
    "resume_from_checkpoint": "'latest' or a checkpoint folder to continue exactly.",
    "eval_items": "Held-out Shapes benchmark items scored at the end (0 = none).",
    "eval_variants": "Edits per held-out item: the target and noisy ones.",
    "threads": "torch CPU threads (0: torch's default).",
}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults after every flag's help; the module docstring as written."""


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m train.reward_model", description=__doc__, formatter_class=_HelpFormatter
    )
    for f in fields(RewardTrainConfig):
        ap.add_argument(f"--{f.name}", type=type(f.default), default=f.default, help=HELP[f.name])
    ap.add_argument("--no-progress", action="store_true", help="No progress bars.")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    progress = not args.pop("no_progress")
    try:
        cfg = RewardTrainConfig(**args)
        report = RewardTrainer(cfg, progress).train()
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
