"""Noise injection for the training split, mimicking InstructPix2Pix's noisy ground truth.

The paper found that most InstructPix2Pix training triplets fall short on at least one of the
three perspectives. Here each training triplet draws, independently per perspective, whether its
"edited" image is spoiled in that respect, and how:

=============  ==================  ===========================================================
perspective    type                what the edited image shows
=============  ==================  ===========================================================
following      unchanged           the original image (instruction ignored)
following      wrong_object        the edit done to another object (add: a different shape)
following      wrong_colour        another colour (global: the opposite effect; style: another)
following      partial             the edit on half of what it changes (global: 25-45% strength)
preserving     object_changed      an object the instruction did not name is recoloured
preserving     object_moved        an object the instruction did not name is moved
preserving     background_tint     the background (not named) is tinted off its colour
quality        noise_blotches      2-4 blotches of strong colour noise
quality        blur                Gaussian blur over the whole image
quality        banding             bands of shifted brightness across the image
quality        ghosting            a faint, semi-transparent copy of an object beside it
=============  ==================  ===========================================================

``wrong_object`` also changes an object that was not named, so it damages preserving too
(``damages``; not for *add*, where it is a different shape). A type is only applied where it
is *visible* and damages only its own perspectives (no blur on an image without edges, no
"another object" in a one-object scene, no ghost without room, no move of an object the target
does not show); a drawn type that does not apply falls back to another type of the same
perspective, and when none applies that perspective stays clean. Preserving corruptions are
applied to the scene before the edit, following corruptions to the edit, quality corruptions
to the final pixels, so all three compose.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from .edits import OPPOSITE_EFFECT, STYLES, Edit, apply_edit, apply_effect, line_width
from .pixel_measures import object_contrast, sharpness, unique_colours
from .scene import (
    PALETTE,
    PALETTE_ARRAY,
    SHAPES,
    Obj,
    Scene,
    SceneConfig,
    fits,
    object_mask,
    render,
    rgb,
)

FOLLOWING_TYPES = ("unchanged", "wrong_object", "wrong_colour", "partial")
PRESERVING_TYPES = ("object_changed", "object_moved", "background_tint")
QUALITY_TYPES = ("noise_blotches", "blur", "banding", "ghosting")
CORRUPTION_TYPES = FOLLOWING_TYPES + PRESERVING_TYPES + QUALITY_TYPES
DAMAGES: dict[str, tuple[str, ...]] = {
    **{t: ("following",) for t in FOLLOWING_TYPES},
    "wrong_object": ("following", "preserving"),
    **{t: ("preserving",) for t in PRESERVING_TYPES},
    **{t: ("quality",) for t in QUALITY_TYPES},
}


def damages(corruption: str, category: str) -> tuple[str, ...]:
    """The perspectives a corruption type spoils for an edit category."""
    if corruption == "wrong_object" and category == "add":
        return ("following",)  # a different shape in the right place changes nothing else
    return DAMAGES[corruption]


@dataclass(frozen=True)
class CorruptionConfig:
    """Rates of the injected noise. Defaults leave ~37% of triplets clean (paper: < 50%)."""

    p_following: float = 0.30  # chance that the edit is not (fully) carried out
    p_preserving: float = 0.25  # chance that something the instruction did not name changes
    p_quality: float = 0.30  # chance of an image artifact
    # relative weights of the types within a perspective (missing or 0 = never drawn)
    weights: dict[str, float] = field(default_factory=lambda: dict.fromkeys(CORRUPTION_TYPES, 1.0))

    def __post_init__(self) -> None:
        for name in ("p_following", "p_preserving", "p_quality"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {v}")
        unknown = set(self.weights) - set(CORRUPTION_TYPES)
        if unknown:
            raise ValueError(
                f"unknown corruption type(s) {sorted(unknown)}; known: {', '.join(CORRUPTION_TYPES)}"
            )
        if any(w < 0 for w in self.weights.values()):
            raise ValueError("corruption weights must be >= 0")

    @property
    def clean_fraction(self) -> float:
        """Expected fraction of triplets drawn without any corruption (upper bound)."""
        return (1 - self.p_following) * (1 - self.p_preserving) * (1 - self.p_quality)


@dataclass
class Corrupted:
    edited: np.ndarray  # (H, W, 3) uint8
    corruptions: list[dict[str, Any]]  # [{"type": ..., "perspective": ..., params...}]


# -- helpers --------------------------------------------------------------------------------


def _edited_indices(edit: Edit) -> set[int]:
    if edit.category in ("local", "remove", "texture"):
        return {int(edit.params["object"])}
    return set()


def _choose(rng: np.random.Generator, options: list[Any]) -> Any:
    return options[int(rng.integers(len(options)))]


def _colour_options(exclude: set[str]) -> list[str]:
    return [c for c in PALETTE if c not in exclude]


def _all_objects(scene: Scene, edit: Edit) -> list[Obj]:
    objs = list(scene.objects)
    if edit.category == "add":
        objs.append(edit.new_object())
    return objs


def _half_plane(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A half-plane through the centroid of ``mask`` at a random angle."""
    ys, xs = np.nonzero(mask)
    cy, cx = ys.mean(), xs.mean()
    a = rng.uniform(0, 2 * np.pi)
    gy, gx = np.mgrid[0 : mask.shape[0], 0 : mask.shape[1]]
    return (gx - cx) * np.cos(a) + (gy - cy) * np.sin(a) > 0


def shift_mask(m: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``m`` moved by (dy, dx) pixels; what leaves the image is dropped (no wrap-around)."""
    out = np.zeros_like(m)
    h, w = m.shape
    if abs(dy) >= h or abs(dx) >= w:
        return out
    src = m[max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)]
    out[max(0, dy) : max(0, dy) + src.shape[0], max(0, dx) : max(0, dx) + src.shape[1]] = src
    return out


# -- preserving (scene level, before the edit) ---------------------------------------------


def _object_changed(scene: Scene, edit: Edit, rng: np.random.Generator):
    if edit.category in ("global", "style"):
        return None
    cand = [j for j in range(len(scene.objects)) if j not in _edited_indices(edit)]
    if not cand:
        return None
    j = _choose(rng, cand)
    o = scene.objects[j]
    bgs = {scene.background}
    if edit.category == "background":
        bgs.add(edit.params["colour"])
    exclude = {o.colour} | bgs
    if edit.category in ("local", "texture"):
        exclude.add(edit.params["colour"])
    if edit.category == "add":
        exclude.add(edit.params["object"]["colour"])
    colour = _choose(rng, _colour_options(exclude))
    return scene.replace_object(j, o.replace(colour=colour)), {"object": j, "colour": colour}


def _contrast(scene: Scene, img: np.ndarray, j: int) -> float:
    m = object_mask(scene.objects[j], scene.size)
    c = object_contrast([img.astype(np.float32)], m, line_width(scene.size))
    return 0.0 if c is None else c[0]


def _visible(scene: Scene, j: int, img: np.ndarray, *refs: np.ndarray) -> bool:
    """Object j stands out in ``img`` (contrast >= 40, and >= 60% of its least one in refs)."""
    c = _contrast(scene, img, j)
    return c >= 40 and all(c >= 0.6 * _contrast(scene, r, j) for r in refs)


def _object_moved(scene: Scene, edit: Edit, rng: np.random.Generator, cfg: SceneConfig):
    cand = [j for j in range(len(scene.objects)) if j not in _edited_indices(edit)]
    if edit.category in ("global", "style"):  # a move must be visible in the target
        target, original = apply_edit(scene, edit).target, render(scene)
        cand = [j for j in cand if _visible(scene, j, target) and _visible(scene, j, original)]
    rng.shuffle(cand)
    for j in cand:
        o = scene.objects[j]
        others = [q for k, q in enumerate(_all_objects(scene, edit)) if k != j]
        for _ in range(80):
            x = float(round(rng.uniform(o.r + 1, scene.size - o.r - 1), 2))
            y = float(round(rng.uniform(o.r + 1, scene.size - o.r - 1), 2))
            moved = o.replace(x=x, y=y)
            far = np.hypot(x - o.x, y - o.y) >= 2 * o.r + cfg.gap_px
            if far and fits(others, moved, scene.size, cfg.gap_px):
                return scene.replace_object(j, moved), {"object": j, "to": [x, y]}
    return None


def _tint(img: np.ndarray, background: str, rng: np.random.Generator):
    base = rgb(background).astype(np.float32)
    where = np.all(img == rgb(background), axis=-1)
    if where.sum() < 0.05 * where.size:
        return None
    for _ in range(50):
        v = rng.normal(size=3)
        v = v / np.linalg.norm(v) * rng.uniform(60, 85)
        new = np.clip(np.rint(base + v), 0, 255)
        shift = np.linalg.norm(new - base)
        nearest = np.linalg.norm(PALETTE_ARRAY - new, axis=1)
        nearest[list(PALETTE).index(background)] = np.inf
        if shift >= 50 and nearest.min() >= 45:  # a tint, not a different palette colour
            out = img.copy()
            out[where] = new.astype(np.uint8)
            return out, {"tint": [int(c) for c in new - base]}
    return None


# -- following (the edit itself) ------------------------------------------------------------


def _wrong_object(scene: Scene, edit: Edit, rng: np.random.Generator):
    p = edit.params
    if edit.category == "add":
        new = edit.new_object()
        m = object_mask(new, scene.size)
        unlike = []
        for s in SHAPES:  # a clearly different shape (a square for a diamond is too alike)
            o = object_mask(new.replace(shape=s), scene.size)
            if (o & m).sum() < 0.6 * (o | m).sum():
                unlike.append(s)
        if not unlike:  # at small sizes a tiny object looks alike in every shape: not applicable
            return None
        shape = _choose(rng, unlike)
        obj = {**p["object"], "shape": shape}
        return Edit("add", {**p, "object": obj}), {"shape": shape}
    if edit.category not in ("local", "remove", "texture"):
        return None
    i = int(p["object"])
    cand = [j for j in range(len(scene.objects)) if j != i]
    if edit.category == "local":
        cand = [j for j in cand if scene.objects[j].colour != p["colour"]]
    if edit.category == "texture":
        cand = [j for j in cand if scene.objects[j].colour != p["colour"]]
    if not cand:
        return None
    j = _choose(rng, cand)
    return Edit(edit.category, {**p, "object": j}), {"object": j}


def _wrong_colour(scene: Scene, edit: Edit, rng: np.random.Generator):
    p = edit.params
    if edit.category == "global":
        other = Edit("global", {"effect": OPPOSITE_EFFECT[p["effect"]]})
        img, original = apply_edit(scene, other).target, render(scene)
        target = apply_edit(scene, edit).target
        lowest = [
            min(_contrast(scene, original, j), _contrast(scene, target, j))
            for j in range(len(scene.objects))
        ]
        if not all(_contrast(scene, img, j) >= 0.6 * c for j, c in enumerate(lowest)):
            return None  # the opposite effect would also hide objects (a preserving failure)
        return other, {"effect": other.params["effect"]}
    if edit.category == "style":
        # another line style (pixel art can wipe out small objects, silhouettes need contrast)
        options = [s for s in STYLES if s != p["style"] and s not in ("silhouette", "pixel art")]
        style = _choose(rng, options)
        return Edit("style", {"style": style}), {"style": style}
    if edit.category == "remove":
        return None
    exclude = {p.get("colour"), scene.background}
    if edit.category in ("local", "texture"):
        exclude.add(scene.objects[int(p["object"])].colour)
    if edit.category == "background":
        exclude |= {o.colour for o in scene.objects}
    if edit.category == "add":
        exclude.add(p["object"]["colour"])
    colour = _choose(rng, _colour_options(exclude))
    if edit.category == "add":
        return Edit("add", {**p, "object": {**p["object"], "colour": colour}}), {"colour": colour}
    return Edit(edit.category, {**p, "colour": colour}), {"colour": colour}


def _partial(scene: Scene, edit: Edit, rng: np.random.Generator):
    original = render(scene)
    if edit.category == "global" and edit.params["effect"] != "invert":  # half-inverted = grey
        strength = float(round(rng.uniform(0.25, 0.45), 2))
        return apply_effect(original, edit.params["effect"], strength), {"strength": strength}
    res = apply_edit(scene, edit)
    changed = res.mask & np.any(res.target != original, axis=-1)
    half = _half_plane(changed, rng) & res.mask
    share = float((half & changed).sum() / changed.sum())
    return np.where(half[..., None], res.target, original), {"fraction": round(share, 3)}


# -- quality (pixels) -----------------------------------------------------------------------


def _noise_blotches(img: np.ndarray, rng: np.random.Generator):
    size = img.shape[0]
    out = img.astype(np.float32)
    ys, xs = np.mgrid[0:size, 0:size]
    blobs = []
    for _ in range(int(rng.integers(2, 5))):
        r = rng.uniform(0.06, 0.10) * size
        cx, cy = rng.uniform(r, size - r, size=2)
        m = (xs + 0.5 - cx) ** 2 + (ys + 0.5 - cy) ** 2 <= r * r
        sigma = rng.uniform(45, 70)
        out[m] += rng.normal(0, sigma, size=(int(m.sum()), 3))
        blobs.append([round(float(cx), 1), round(float(cy), 1), round(float(r), 1)])
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), {"blobs": blobs}


def _blur(img: np.ndarray, rng: np.random.Generator):
    if sharpness(img.astype(np.float32))[1] < 12:  # too few edges for blur to show
        return None
    sigma = float(round(rng.uniform(1.0, 1.6) * max(0.75, img.shape[0] / 64), 2))
    out = ndimage.gaussian_filter(img.astype(np.float32), sigma=(sigma, sigma, 0), mode="nearest")
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), {"sigma": sigma}


def _banding(img: np.ndarray, rng: np.random.Generator):
    size = img.shape[0]
    period = max(6, 2 * round(rng.uniform(3, 5) * size / 64))
    amp = float(rng.uniform(35, 50))
    vertical = bool(rng.integers(2))
    coord = np.arange(size)[None, :] if vertical else np.arange(size)[:, None]
    band = ((coord + int(rng.integers(period))) % period) < period // 3  # a third of each period
    x = img.astype(np.float32)
    lum = x.mean(-1, keepdims=True)
    sign = np.where(lum > 128, -1.0, 1.0)  # bright pixels get darker bands, dark ones lighter
    out = x + band[..., None] * sign * amp
    params = {"period": period, "amplitude": round(amp, 1), "vertical": vertical}
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), params


def _ghosting(img, scene, edit, allowed, rng):
    size = img.shape[0]
    objs = _all_objects(scene, edit)
    if edit.category == "remove":
        objs = [o for k, o in enumerate(objs) if k != int(edit.params["object"])]
    if not objs:
        return None
    codes, counts = unique_colours(img, return_counts=True)
    bg = codes[np.argmax(counts)].astype(np.float32)
    free = np.all(img == bg.astype(np.uint8), axis=-1)
    free = ndimage.binary_erosion(free, iterations=2, border_value=0) & ~allowed
    order = list(range(len(objs)))
    rng.shuffle(order)
    for k in order:
        o = objs[k]
        m = object_mask(o, size)
        colour = np.median(img[m].astype(np.float32), axis=0)
        contrast = float(np.linalg.norm(colour - bg))
        if contrast < 90:
            continue
        for _ in range(30):
            ang, dist = rng.uniform(0, 2 * np.pi), rng.uniform(1.2, 2.2) * o.r
            dx, dy = round(dist * np.cos(ang)), round(dist * np.sin(ang))
            moved = shift_mask(m, int(dy), int(dx))
            dest = moved & free
            if dest.sum() < 0.6 * m.sum():
                continue
            alpha = _ghost_alpha(colour, bg, contrast, img)
            if alpha is None:
                break
            out = img.astype(np.float32)
            out[dest] = (1 - alpha) * out[dest] + alpha * colour
            params = {"object": o.name, "offset": [int(dx), int(dy)], "alpha": round(alpha, 2)}
            return np.clip(np.rint(out), 0, 255).astype(np.uint8), params
    return None


def _ghost_alpha(colour, bg, contrast, img) -> float | None:
    """The faintest visible blend that is no colour of the image or palette (so: a ghost)."""
    known = np.concatenate([PALETTE_ARRAY, unique_colours(img).astype(np.float32)])
    for alpha in np.linspace(max(0.3, 80 / contrast), 0.48, 6):
        c = (1 - alpha) * bg + alpha * colour
        if np.linalg.norm(known - c, axis=1).min() >= 55:
            return float(alpha)
    return None


# -- the sampler ----------------------------------------------------------------------------


def corrupt(
    scene: Scene,
    edit: Edit,
    rng: np.random.Generator,
    ccfg: CorruptionConfig,
    scfg: SceneConfig,
    force: dict[str, str | None] | None = None,
) -> Corrupted:
    """Draw the noise of one training triplet and return its edited image.

    ``force`` maps a perspective to a type (or None for clean) to bypass the random draw; tests
    and the figure script use it. A forced type that does not apply raises ``ValueError``.
    """
    records: list[dict[str, Any]] = []
    force = force or {}
    chosen = {
        persp: (force[persp] if persp in force else _draw(rng, ccfg, persp, p))
        for persp, p in (
            ("preserving", ccfg.p_preserving),
            ("following", ccfg.p_following),
            ("quality", ccfg.p_quality),
        )
    }
    s2 = scene
    for t in _candidates(chosen["preserving"], PRESERVING_TYPES, ccfg, rng, "preserving" in force):
        if t == "background_tint":
            if edit.category in ("background", "global", "style"):
                continue
            records.append({"type": t})  # applied to the pixels below
            break
        got = (
            _object_changed(scene, edit, rng)
            if t == "object_changed"
            else _object_moved(scene, edit, rng, scfg)
        )
        if got is not None:
            s2, params = got
            records.append({"type": t, **params})
            break
    else:
        _require(force, "preserving")

    img = None
    for t in _candidates(chosen["following"], FOLLOWING_TYPES, ccfg, rng, "following" in force):
        if t == "unchanged":
            img, params = render(s2), {}
        elif t == "partial":
            img, params = _partial(s2, edit, rng)
        else:
            got = (
                _wrong_object(s2, edit, rng)
                if t == "wrong_object"
                else _wrong_colour(s2, edit, rng)
            )
            if got is None:
                continue
            img, params = apply_edit(s2, got[0]).target, got[1]
        records.append({"type": t, **params})
        break
    else:
        _require(force, "following")
    if img is None:
        img = apply_edit(s2, edit).target

    if records and records[0]["type"] == "background_tint":
        got = _tint(img, scene.background, rng)
        if got is None:
            records.pop(0)
            _require(force, "preserving")
        else:
            img, params = got
            records[0].update(params)

    if chosen["quality"] is not None:
        res = apply_edit(scene, edit)
        full = edit.category in ("background", "global", "style")
        allowed = (
            np.zeros_like(res.mask) if full else ndimage.binary_dilation(res.mask, iterations=3)
        )
        for t in _candidates(chosen["quality"], QUALITY_TYPES, ccfg, rng, "quality" in force):
            if t == "ghosting":
                got = _ghosting(img, s2, edit, allowed, rng)
            else:
                got = {"noise_blotches": _noise_blotches, "blur": _blur, "banding": _banding}[t](
                    img, rng
                )
            if got is not None:
                img, params = got
                records.append({"type": t, **params})
                break
        else:
            _require(force, "quality")
    for r in records:
        r["perspective"] = next(
            p for p in ("following", "preserving", "quality") if r["type"] in _TYPES[p]
        )
    return Corrupted(img, records)


_TYPES = {"following": FOLLOWING_TYPES, "preserving": PRESERVING_TYPES, "quality": QUALITY_TYPES}


def _draw(rng: np.random.Generator, ccfg: CorruptionConfig, persp: str, p: float) -> str | None:
    u = rng.random()
    if u >= p:
        return None
    types = [t for t in _TYPES[persp] if ccfg.weights.get(t, 0) > 0]
    if not types:
        return None
    w = np.array([ccfg.weights[t] for t in types], dtype=np.float64)
    return types[int(rng.choice(len(types), p=w / w.sum()))]


def _candidates(first: str | None, types, ccfg, rng, forced: bool) -> list[str]:
    """The drawn type first, then (unless forced) the other enabled types as fallbacks."""
    if first is None:
        return []
    if first not in types:
        raise ValueError(f"unknown corruption type {first!r}; choose from {', '.join(types)}")
    if forced:
        return [first]
    rest = [t for t in types if t != first and ccfg.weights.get(t, 0) > 0]
    rng.shuffle(rest)
    return [first, *rest]


def _require(force: dict[str, str | None], persp: str) -> None:
    if force.get(persp) is not None:
        raise ValueError(f"corruption {force[persp]!r} does not apply to this triplet")
