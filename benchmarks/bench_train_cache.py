"""Training throughput: the cached trainer vs recomputing the frozen encoders every step.

Three loops train the same model (same weights, data, batch size, seed) in the same process:

1. ``python -m train`` with the cache (VAE latents and text embeddings precomputed once);
2. ``python -m train --no-cache`` (images decoded and encoded inside every step);
3. a straightforward loop written like diffusers' ``train_instruct_pix2pix.py`` and the authors'
   script: a DataLoader of PIL images -> tensors, then per step ``vae.encode`` of both images,
   the text encoder on the tokenised instructions, the UNet, backward and AdamW.

It prints steady-state samples/s of each (median over the timed steps after a warm-up), the
speed-up of (1) over (3), and the one-off cost of building the cache. The default model is
Stable-Diffusion-proportioned but tiny: 64 px images, an AutoencoderKL with 4 levels (downsample
8, 4 latent channels), a CLIP text encoder (77 tokens), and an 8-input-channel InstructPix2Pix
UNet with SD's block layout (cross-attention in the first three levels, two layers per block).

    OMP_NUM_THREADS=1 python benchmarks/bench_train_cache.py             # ~3 minutes here
    python benchmarks/bench_train_cache.py --steps 40 --batch 16 --examples 512
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.checkpoints import read_metrics  # noqa: E402
from train.config import TrainConfig  # noqa: E402
from train.datasets import load_pair  # noqa: E402
from train.loop import train  # noqa: E402
from train.models import build_models, set_trainable  # noqa: E402
from train.sources import load_source  # noqa: E402

SD_PROPORTIONED = dict(
    image_size=64,
    vae_channels=[32, 64, 128, 128],  # SD: 128-256-512-512, downsample 8
    latent_channels=4,
    unet_channels=[32, 64, 128, 128],  # SD: 320-640-1280-1280
    unet_layers_per_block=2,
    unet_cross_attention=[True, True, True, False],  # as SD's down blocks
    attention_head_dim=8,
    text_dim=64,
    text_layers=4,
    text_heads=4,
    text_intermediate=256,
    max_length=77,
)
COLOURS = [(220, 30, 30), (30, 30, 220), (30, 200, 30), (230, 220, 40), (200, 60, 200)]
WORDS = ["red", "blue", "green", "yellow", "purple"]


def make_data(root: Path, n: int, size: int, seed: int = 0) -> None:
    """n recolour edits (PNG files) in the RewardEdit layout, with random reward labels."""
    rng = np.random.default_rng(seed)
    labels = {}
    for i in range(n):
        d = root / f"{i // 100:04d}"
        d.mkdir(parents=True, exist_ok=True)
        a, b = rng.choice(len(COLOURS), 2, replace=False)
        img = np.zeros((size, size, 3), np.uint8) + rng.integers(0, 255, 3).astype(np.uint8)
        edit = img.copy()
        s = size // 4
        x, y = rng.integers(0, size - s, 2)
        img[y : y + s, x : x + s] = COLOURS[a]
        edit[y : y + s, x : x + s] = COLOURS[b]
        Image.fromarray(img).save(d / f"{i}_0.png")
        Image.fromarray(edit).save(d / f"{i}_1.png")
        (d / f"prompt_{i}.json").write_text(
            json.dumps({"edit": f"turn the {WORDS[a]} square {WORDS[b]}"})
        )
        scores = [float(x) for x in rng.integers(0, 6, 3)]
        labels[f"{d.name}/{i}"] = [{"Score": s_, "Negative Prompt": ""} for s_ in scores]
    (root / "labels.json").write_text(json.dumps(labels))


def naive_loop(cfg: TrainConfig, steps: int) -> list[float]:
    """diffusers-example-style training: recompute VAE latents and text embeddings every step."""
    torch.manual_seed(cfg.seed)
    models = build_models(cfg)
    params = set_trainable(models, cfg.stage, cfg.trainable)
    unet = models.trained_module(cfg.stage)
    # The trainer's optimizer (fused AdamW), so that the comparison isolates the encoders.
    optimizer = torch.optim.AdamW(
        params, lr=cfg.learning_rate, weight_decay=cfg.adam_weight_decay, fused=True
    )
    examples, _ = load_source(cfg).examples, None
    res = models.native_resolution

    class Pairs(torch.utils.data.Dataset):
        def __len__(self):
            return len(examples)

        def __getitem__(self, i):
            o, e = load_pair(examples[i], res)
            ex = examples[i]
            return (
                o,
                e,
                ex.instruction,
                torch.tensor(ex.rewards.scores),
                "; ".join(ex.rewards.texts),
            )

    loader = torch.utils.data.DataLoader(
        Pairs(), batch_size=cfg.train_batch_size, shuffle=True, drop_last=True
    )
    scale, sched = models.vae.config.scaling_factor, models.noise_scheduler
    times: list[float] = []
    it = iter(loader)
    for _ in range(steps):
        t0 = time.perf_counter()
        try:
            o, e, prompts, scores, rtexts = next(it)
        except StopIteration:
            it = iter(loader)
            o, e, prompts, scores, rtexts = next(it)
        with torch.no_grad():
            latents = models.vae.encode(e).latent_dist.sample() * scale
            original = models.vae.encode(o).latent_dist.mode()
            tok = lambda t: models.tokenizer(  # noqa: E731
                list(t), padding="max_length", max_length=models.tokenizer.model_max_length,
                truncation=True, return_tensors="pt",
            ).input_ids  # fmt: skip
            text = models.text_encoder(tok(prompts))[0]
            reward_text = models.text_encoder(tok(rtexts)).pooler_output
        noise = torch.randn_like(latents)
        t = torch.randint(0, sched.config.num_train_timesteps, (latents.shape[0],))
        noisy = sched.add_noise(latents, noise, t)
        inp = torch.cat([noisy, original], dim=1)
        if cfg.stage == 2:
            pred = unet(inp, t, text, scores=scores, reward_text_embeds=reward_text).sample
        else:
            pred = unet(inp, t, text).sample
        loss = F.mse_loss(pred.float(), noise.float())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return [cfg.train_batch_size / s for s in times]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--steps", type=int, default=15, help="optimizer steps per loop and round")
    ap.add_argument("--warmup", type=int, default=3, help="first steps of each run left out")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of the three loops")
    ap.add_argument("--batch", type=int, default=16, help="examples per step")
    ap.add_argument("--examples", type=int, default=512, help="training examples generated")
    ap.add_argument("--stage", type=int, default=2, choices=(1, 2))
    ap.add_argument("--tiny_config", type=json.loads, default=SD_PROPORTIONED)
    args = ap.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "data"
        make_data(data, args.examples, args.tiny_config["image_size"])
        base = dict(
            data="rewardedit", data_dir=str(data), rewards_json=str(data / "labels.json"),
            original_pattern="{id}_0.png", edited_pattern="{id}_1.png",
            prompt_pattern="{dir}/prompt_{name}.json", stage=args.stage,
            tiny_config=args.tiny_config, train_batch_size=args.batch,
            max_train_steps=args.steps, checkpointing_steps=0, report_to="none",
            cache_dir=str(tmp / "cache"),
        )  # fmt: skip
        cfg = TrainConfig.from_dict(base | {"output_dir": str(tmp / "x")})
        models = build_models(cfg)
        n_params = sum(p.numel() for p in models.unet.parameters())
        print(
            f"model: UNet {n_params / 1e6:.2f} M params, VAE "
            f"{sum(p.numel() for p in models.vae.parameters()) / 1e6:.2f} M, text encoder "
            f"{sum(p.numel() for p in models.text_encoder.parameters()) / 1e6:.2f} M; "
            f"{args.tiny_config['image_size']} px -> {models.unet.config.sample_size} px latents; "
            f"batch {args.batch}, {torch.get_num_threads()} thread(s)"
        )
        del models
        train(TrainConfig.from_dict(base | {"output_dir": str(tmp / "warm"), "max_train_steps": 1}))
        meta = json.loads(next((tmp / "cache").glob("*/meta.json")).read_text())
        build = meta["build_seconds"]
        # Rounds alternate the loops, so a load change on a shared machine hits all of them.
        results: dict[str, list[float]] = {}
        for r in range(args.rounds):
            for name, extra in (("trainer, cached", {}), ("trainer, --no-cache", {"cache": False})):
                out = tmp / f"{r}-{'cached' if not extra else 'nocache'}"
                train(TrainConfig.from_dict(base | extra | {"output_dir": str(out)}))
                sps = [m["samples_per_s"] for m in read_metrics(out)]
                results.setdefault(name, []).extend(sps[args.warmup :])
            sps = naive_loop(cfg, args.steps)
            results.setdefault("straightforward loop", []).extend(sps[args.warmup :])
    print(f"\n{'loop':<24} {'samples/s':>10} {'(p25-p75)':>14}")
    med = {}
    for name, sps in results.items():
        med[name] = statistics.median(sps)
        q = statistics.quantiles(sps, n=4)
        print(f"{name:<24} {med[name]:>10.1f} {f'({q[0]:.1f}-{q[2]:.1f})':>14}")
    base_sps = med["straightforward loop"]
    print(f"\ncache speed-up vs the straightforward loop: {med['trainer, cached'] / base_sps:.2f}x")
    print(
        f"cache speed-up vs --no-cache:              {med['trainer, cached'] / med['trainer, --no-cache']:.2f}x"
    )
    per_step = args.batch / med["straightforward loop"] - args.batch / med["trainer, cached"]
    print(
        f"building the cache of {args.examples} examples took {build:.1f} s: repaid after "
        f"{build / per_step:.0f} steps ({build / per_step * args.batch / args.examples:.1f} epochs)"
    )


if __name__ == "__main__":
    main()
