"""The oracle judge: scores ANY edited image of a Shapes triplet by measuring pixels.

The oracle never looks at which corruption was injected: it compares the edited image E with
the ground-truth target T, the original O and the edit-region mask M (all re-derivable from
the triplet's meta), so it judges model outputs (blurry, noisy, low-resolution) the same way
it judges the synthetic training data. Every number is documented in ``docs/shapes.md``.

* **following** = how much of the required change happened inside the edit region:
  ``completion`` (see ``pixel_measures.completion``) on Gaussian-smoothed images, mapped linearly to
  [0, 5] (>= ``follow_full`` gives 5). Before measuring, the reference is *aligned* where the
  instruction leaves freedom: an added object may sit anywhere in the named zone, and a
  stripe/check pattern may have any phase. An edit only counts where the rest of the scene is
  still recognisable: the objects the instruction did not name must stand where the target has
  them (colour-free; ``Measurer._scene_seen``) and the image must not be drowned in noise, so a
  uniform image, noise or a shifted or zoomed copy never passes (``scene_*``, ``noise_*``).
* **preserving** = 5 minus ``change_cost`` per object-sized unexplained change outside the edit
  region: an unnamed object whose colour shifted or that vanished, a background tint, or a
  solid shape that appeared. For global and style edits (whose region is everything) it checks
  that every object is still visible where it was and that no shape appeared.
* **quality** = 5 minus costs for artifact energy: colour noise (high-frequency residual),
  blends that belong to no colour of the scene inside regions that should be flat (ghosts,
  banding, smudges), and blur (edge steepness relative to the target).

:meth:`ShapesOracle.annotate` returns :class:`core.rewards.Rewards` with failure texts that name
the object, colour or region; :meth:`ShapesOracle.evaluate` gives the Real-Edit protocol's
(yes/no, score) per perspective.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from core.rewards import PERSPECTIVES, Rewards

from . import pixel_measures as mz
from .edits import Edit, apply_edit
from .oracle_checks import Finding, Measurer
from .scene import Scene


@dataclass(frozen=True)
class OracleConfig:
    """Tolerances (RGB distances, 0..441) and costs (score points). Tuned at 64 px."""

    tol: float = 30.0  # following: per-pixel colour error forgiven (model imprecision)
    follow_full: float = 0.85  # completion at or above which following scores 5
    follow_zero: float = 0.10  # completion at or below which following scores 0
    scene_ok: float = 0.75  # following: share of kept objects seen in place for no cap...
    scene_lost: float = 0.5  # ... at or below which the scene is lost (following 0)
    noise_ok: float = 0.20  # following: image-wide noise (pixel_measures.noise_level) forgiven
    noise_lost: float = 0.30  # ... at or above which the scene is lost in noise (following 0)
    shift_tol: float = 30.0  # preserving: mean colour shift of an unnamed object forgiven
    shift_full: float = 90.0  # ... a shift this large counts as one whole changed object
    tint_full: float = 70.0  # background shift that counts as one whole change
    deviate_tol: float = 40.0  # a (median-filtered) pixel this far off counts as changed
    solid_tol: float = 40.0  # this close to a colour of the scene/palette = a solid shape
    min_blob: float = 0.12  # changes smaller than this many object areas are ignored
    retain_ok: float = 0.5  # global/style: object contrast kept above this share = present
    retain_lost: float = 0.15  # ... at or below this share = gone
    change_cost: float = 3.0  # preserving points per object-sized change
    noise_tol: float = 40.0  # quality: high-frequency residual per pixel counted as noise
    min_artifact: float = 0.05  # artifact areas below this many object areas are ignored
    artifact_cost: float = 3.0  # quality points per object-sized noisy or blended area
    blur_free: float = 0.85  # edge steepness (edited / target) above which blur costs nothing
    blur_full: float = 0.35  # ... at or below which the full blur cost applies
    blur_cost: float = 3.0  # quality points at full blur
    yes_threshold: float = 4.0  # evaluate(): a perspective is "yes" when its score >= this
    score_step: float = 0.1  # scores are rounded to multiples of this (1.0 = integers)

    def __post_init__(self) -> None:
        if not 0 <= self.follow_zero < self.follow_full <= 1:
            raise ValueError("need 0 <= follow_zero < follow_full <= 1")
        if not 0 <= self.scene_lost < self.scene_ok <= 1:
            raise ValueError("need 0 <= scene_lost < scene_ok <= 1")
        if not 0 <= self.noise_ok < self.noise_lost:
            raise ValueError("need 0 <= noise_ok < noise_lost")
        if not 0 <= self.yes_threshold <= 5:
            raise ValueError(f"yes_threshold must be in [0, 5], got {self.yes_threshold}")
        if not 0 < self.score_step <= 5:
            raise ValueError(f"score_step must be in (0, 5], got {self.score_step}")


@dataclass
class OracleReport:
    """Everything the oracle measured for one edited image."""

    rewards: Rewards
    findings: list[Finding] = field(default_factory=list)
    measures: dict[str, float] = field(default_factory=dict)  # raw numbers, for inspection

    def to_dict(self) -> dict[str, Any]:
        return {
            "rewards": self.rewards.to_dict(),
            "findings": [asdict(f) for f in self.findings],
            "measures": self.measures,
        }


def parse_meta(meta: dict[str, Any]) -> tuple[Scene, Edit]:
    """``{"scene": Scene.to_dict(), "edit": Edit.to_dict(), ...}`` -> (Scene, Edit)."""
    if not isinstance(meta, dict) or "scene" not in meta or "edit" not in meta:
        raise ValueError(
            "the oracle needs the triplet's meta: a dict with 'scene' and 'edit' "
            f"(as written by data.shapes.synth), got {type(meta).__name__}"
        )
    return Scene.from_dict(meta["scene"]), Edit.from_dict(meta["edit"])


def load_rgb(img: Any, name: str) -> np.ndarray:
    """A PIL image, path, bytes or array as a (H, W, 3) uint8 array (clear errors otherwise)."""
    if (
        isinstance(img, np.ndarray)
        and img.dtype == np.uint8
        and img.ndim == 3
        and img.shape[2] == 3
    ):
        return img
    from core.images import load_image  # any mode, EXIF, 16-bit, bombs... with clear errors

    return np.asarray(load_image(img, name=name))


def load_mask(mask: Any) -> np.ndarray:
    """An edit-region mask (bool/uint8 array, PIL image or path; 255 or True = inside) as bool."""
    if isinstance(mask, np.ndarray):
        m = mask[..., 0] if mask.ndim == 3 else mask
        if m.dtype == np.uint8:  # 0/255 images, or 0/1 arrays
            return m > (127 if m.max() > 1 else 0)
        return m.astype(bool)
    from core.images import load_image

    return np.asarray(load_image(mask, name="mask").convert("L")) > 127


def as_rgb(img: Any, name: str, size: int) -> np.ndarray:
    """Load ``img`` as float32 (size, size, 3); it must already have the triplet's size."""
    arr = load_rgb(img, name)
    if arr.shape[:2] != (size, size):
        raise ValueError(
            f"the {name} image is {arr.shape[1]}x{arr.shape[0]} but the triplet is "
            f"{size}x{size}; pass the triplet's own {name} image"
        )
    return arr.astype(np.float32)


class ShapesOracle:
    """Exact judge for the Shapes domain. Stateless apart from its config; thread-safe."""

    name = "shapes-oracle"
    version = "1"

    def __init__(self, config: OracleConfig | None = None, fast_exact: bool = True):
        self.config = config or OracleConfig()
        self.fast_exact = fast_exact  # the exact target scores 5/5/5 without measuring

    # -- public API -----------------------------------------------------------------------
    def annotate(self, original, instruction, edited, target=None, mask=None, meta=None) -> Rewards:
        """Training labels: a score in [0, 5] and a failure text per perspective."""
        return self.measure(original, edited, meta, target, mask).rewards

    def evaluate(
        self, original, instruction, edited, target=None, mask=None, meta=None
    ) -> dict[str, tuple[bool, float]]:
        """Benchmark verdicts: ``{perspective: (yes, score)}``; yes when score >= yes_threshold."""
        r = self.measure(original, edited, meta, target, mask).rewards
        return {p: (r[p].score >= self.config.yes_threshold, r[p].score) for p in PERSPECTIVES}

    def measure(self, original, edited, meta, target=None, mask=None) -> OracleReport:
        """Measure one edited image; ``target``/``mask`` are rendered from ``meta`` if omitted."""
        if meta is None:
            raise ValueError("the oracle needs the triplet's meta (scene and edit)")
        scene, edit = parse_meta(meta)
        n = scene.size
        if target is None or mask is None:
            res = apply_edit(scene, edit)
            target = res.target if target is None else target
            mask = res.mask if mask is None else mask
        m = load_mask(mask)
        if m.shape != (n, n):
            raise ValueError(f"the mask is {m.shape[1]}x{m.shape[0]}, the triplet is {n}x{n}")
        # An edited image of another size (a model working at 32 px) is resized to the triplet;
        # its sharpness is then judged against the target passed through the same resizing.
        e = load_rgb(edited, "edited")
        if e.ndim != 3 or min(e.shape[:2]) < 8:
            raise ValueError(f"the edited image is too small to judge ({e.shape[1]}x{e.shape[0]})")
        native = min(e.shape[:2])
        orig, targ = as_rgb(original, "original", n), as_rgb(target, "target", n)
        if self.fast_exact and e.shape[:2] == (n, n) and np.array_equal(e, targ):
            # The measurements below are all zero for the exact target (tested); skip them.
            return OracleReport(Rewards.best(), [], {"exact": 1.0})
        E = mz.resize(e, n).astype(np.float32)
        scores, texts, findings, measures = Measurer(
            self.config, scene, edit, orig, E, targ, m, native
        ).run()
        return OracleReport(Rewards.from_scores(scores, texts), findings, measures)
