"""Test helpers for the judge tests: a deterministic answerer and tiny triplet images.

``HashAnswerer`` stands in for a VLM behind the local judge server when a test is about the
protocol (HTTP, retries, parsing, batches) rather than the Shapes oracle: its scores are a pure
function of the edited image's pixels, so a test can compute the expected label itself.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
from PIL import Image

from core.images import image_hash
from core.judges.base import Verdict
from core.rewards import PERSPECTIVES, Label


def expected_scores(edited: Image.Image) -> dict[str, float]:
    h = hashlib.sha256(edited.convert("RGB").tobytes()).digest()
    return {p: (h[i] % 11) / 2 for i, p in enumerate(PERSPECTIVES)}  # 0, 0.5, ..., 5


class HashAnswerer:
    def __init__(self, known_originals: set[str] | None = None) -> None:
        self.known = known_originals  # None: answer for any image

    def item_key(self, instruction, original, edited) -> str:
        return f"{image_hash(original)[:16]}:{image_hash(edited)[:16]}:{instruction}"

    def answer(self, prompt, instruction, original, edited):
        from data.judge_api import UnknownItem

        if self.known is not None and image_hash(original) not in self.known:
            raise UnknownItem("this original image is not in the test set")
        scores = expected_scores(edited)
        out = {}
        for p in prompt.perspectives:
            s = scores[p]
            if prompt.task == "annotate":
                out[p] = Label(s, "" if s == 5 else f"{p} problem in {instruction}")
            else:
                out[p] = Verdict(s >= 3, s)
        return out


def png(seed: int, size: int = 32) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def shapes_items(n: int, size: int = 32, seed: int = 0) -> list[dict]:
    """``n`` noisy Shapes training triplets as ``Store.add_triplets`` items (meta: scene + edit).

    Built from the Shapes building blocks (scene, edit, corruption), cycling through the seven
    categories, so the oracle can judge them and the judge server can recover their ground truth.
    """
    from data.shapes.corrupt import CorruptionConfig, corrupt
    from data.shapes.edits import CATEGORIES, apply_edit, sample_edit
    from data.shapes.scene import SceneConfig, random_scene, render

    rng = np.random.default_rng(seed)
    cfg, ccfg = SceneConfig(size=size), CorruptionConfig()
    items, seen = [], set()
    while len(items) < n:
        scene = random_scene(rng, cfg)
        edit = sample_edit(scene, CATEGORIES[len(items) % len(CATEGORIES)], rng, cfg)
        if edit is None:
            continue
        truth = apply_edit(scene, edit)
        edited = corrupt(scene, edit, rng, ccfg, cfg).edited
        original = render(scene)
        key = (original.tobytes(), edited.tobytes(), edit.instruction)
        if key in seen:
            continue
        seen.add(key)
        items.append(
            {
                "original": original,
                "edited": edited,
                "instruction": edit.instruction,
                "category": edit.category,
                "target": truth.target,
                "mask": truth.mask.astype(np.uint8) * 255,
                "split": "train",
                "source": "shapes-test",
                "meta": {"scene": scene.to_dict(), "edit": edit.to_dict()},
            }
        )
    return items


def judge_servers(default_store=None):
    """A fixture body: yields ``make(store=..., faults=..., **kw)`` that starts local judge
    servers over a Shapes store, and shuts every one down afterwards."""
    from data.judge_faults import FaultConfig
    from data.judge_server import ServerState, start_server
    from data.shapes_judge import ShapesAnswerer

    servers = []

    def make(store=None, faults=None, **kw):
        state = ServerState(
            ShapesAnswerer.from_store(store or default_store), faults or FaultConfig(), **kw
        )
        servers.append(start_server(state))
        return servers[-1]

    yield make
    for srv in servers:
        srv.shutdown()
        srv.server_close()
