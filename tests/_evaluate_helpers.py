"""Shared helpers of the evaluation tests (test_evaluate*.py): tiny pipelines, a folder
benchmark, a deterministic fake judge and the run settings."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from core.judges.base import Evaluation, Judge, JudgeResult, JudgeSpec, Verdict
from core.store import Store
from train.evaluate.cli import EvalConfig

CATS = ["local", "remove", "add", "local", "remove", "add"]


def tiny_pipelines(tmp_path_factory) -> dict[str, Path]:
    """A tiny MRC pipeline whose reward module is *not* the identity (so rewards change the
    output) and the stock diffusers InstructPix2Pix pipeline on the same weights."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    from core.mrc import MultiRewardCondition
    from core.pipeline import MRCInstructPix2PixPipeline
    from core.tiny import TinyConfig, build_components

    root = tmp_path_factory.mktemp("models")
    cfg = TinyConfig()
    parts = build_components(cfg, seed=0)
    torch.manual_seed(0)
    reward = MultiRewardCondition.from_unet_config(
        parts["unet"].config, cfg.text_dim, identity_init=False
    )
    with torch.no_grad():
        for p in reward.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    MRCInstructPix2PixPipeline(**parts, reward_module=reward).save_pretrained(root / "mrc")
    StableDiffusionInstructPix2PixPipeline(
        **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    ).save_pretrained(root / "ip2p")
    return {"mrc": root / "mrc", "ip2p": root / "ip2p"}


def make_folder_benchmark(root: Path, n: int = 6, fail: tuple[int, ...] = (2,)) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        a = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(a).save(root / f"in{i}.png")
        Image.fromarray(255 - a).save(root / f"gt{i}.png")
        text = f"make the square red {i}" + (" FAIL" if i in fail else "")
        rows.append({"file_name": f"in{i}.png", "instruction": text, "category": CATS[i % 6],
                     "target": f"gt{i}.png", "id": f"item{i}"})  # fmt: skip
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return root


class FakeJudge(Judge):
    """Deterministic verdicts from the edited image's bytes; fails on instructions with FAIL."""

    def __init__(self, model: str = "fake-v1") -> None:
        self.spec = JudgeSpec("fake", model, "v1")
        self.calls = 0

    async def _judge(self, task, item):
        self.calls += 1
        if "FAIL" in item.instruction:
            return JudgeResult.failed(
                task, self.spec, "unparsable", "The reply had no verdict.", "?"
            )
        h = hashlib.sha256(item.edited).digest()
        verdicts = [Verdict(h[k] % 2 == 0, (h[k] % 11) / 2) for k in range(3)]
        return JudgeResult(task, "ok", self.spec, evaluation=Evaluation(*verdicts))


def _config(bench: Path, models: dict[str, Path], out: Path, **kw) -> EvalConfig:
    base = dict(
        benchmark=f"folder:{bench}",
        systems=(f"base={models['ip2p']}", f"mrc={models['mrc']}"),
        out=str(out), sweep="0,5", steps=2, bootstrap=300, progress=False, batch_size=4,
    )  # fmt: skip
    base.update(kw)
    return EvalConfig(**base)


def assert_same_outputs(a: Path, b: Path) -> None:
    """Same systems and items, and the same pictures up to float rounding across batch shapes
    (batched and single convolutions differ in the last bits: at most 1/255 after quantising)."""
    ha, hb = _output_hashes(a), _output_hashes(b)
    assert ha.keys() == hb.keys()
    sa, sb = Store(a), Store(b)
    for key in ha:
        x = np.asarray(sa.image(ha[key]), dtype=int)
        y = np.asarray(sb.image(hb[key]), dtype=int)
        assert np.abs(x - y).max() <= 1, key


def _output_hashes(store_path: Path) -> dict[tuple[str, str], str]:
    store = Store(store_path)
    out = {}
    for run in store.list_runs():
        for o in store.outputs(run["id"]):
            out[(run["settings"]["system"], o["meta"].get("item_id", o["item_id"]))] = o["image"]
    return out


def build_tiny_clip(root: Path, max_positions: int = 128) -> Path:
    """A randomly initialised CLIP with a letter-level tokenizer (32 px images), saved in
    ``root`` as ClipScorer loads it from a folder."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    CLIPTokenizer(vocab=vocab, merges=[]).save_pretrained(root)
    small = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2)
    cfg = CLIPConfig(
        text_config=dict(**small, vocab_size=len(vocab), max_position_embeddings=max_positions,
                         bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(**small, image_size=32, patch_size=8), projection_dim=16,
    )  # fmt: skip
    torch.manual_seed(0)
    CLIPModel(cfg).save_pretrained(root)
    CLIPImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(root)
    return root
