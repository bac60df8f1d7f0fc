"""The seven Real-Edit instruction categories on Shapes: sampling, phrasing and ground truth.

An :class:`Edit` is pure data: a category, its parameters and the instruction text. The
ground truth is computed, never stored by hand: :func:`apply_edit` renders the target image
and the edit-region mask from the scene and the edit.

==========  =====================================  ===========================================
category    parameters                             target / edit region
==========  =====================================  ===========================================
local       object index, new colour               object recoloured / the object
remove      object index                           object gone / the object
add         new object, position word              object drawn / the new object
texture     object, pattern, direction, colour,    pattern painted on the object / the object
            period, phase
background  new colour                             background recoloured / background pixels
global      effect (darker, brighter, warmer,      a per-pixel colour map / the whole image
            cooler, grayscale, invert)
style       sketch, pixel art, neon, silhouette    a re-drawing of the scene / the whole image
==========  =====================================  ===========================================

Every sampled edit changes the image visibly: a style must move >= 2% of the pixels by more
than 60 (RGB distance), a global effect >= 25% (so "warmer" is not drawn for a yellow picture
nor "black and white" for a grey one).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from scipy import ndimage

from .scene import (
    PALETTE,
    POSITIONS,
    Obj,
    Scene,
    SceneConfig,
    label_map,
    object_mask,
    random_object,
    render,
    rgb,
)

# Real-Edit's instruction categories, in the order of the paper's Fig. 7. Shapes-Edit mirrors
# them; train.evaluate.benchmark_items reads Real-Edit with this same tuple.
CATEGORIES: tuple[str, ...] = (
    "local",
    "remove",
    "add",
    "texture",
    "background",
    "global",
    "style",
)
GLOBAL_EFFECTS: tuple[str, ...] = ("darker", "brighter", "warmer", "cooler", "grayscale", "invert")
STYLES: tuple[str, ...] = ("sketch", "pixel art", "neon", "silhouette")
PATTERNS: tuple[str, ...] = ("stripes", "checks")
DIRECTIONS: tuple[str, ...] = ("horizontal", "vertical", "diagonal")
OPPOSITE_EFFECT = {
    "darker": "brighter",
    "brighter": "darker",
    "warmer": "cooler",
    "cooler": "warmer",
    "grayscale": "invert",
    "invert": "grayscale",
}

# -- phrasings ------------------------------------------------------------------------------
# {obj} = "red circle", {colour} = colour name, {shape}, {pos} = a position phrase.
PHRASINGS: dict[str, tuple[str, ...]] = {
    "local": (
        "make the {obj} {colour}",
        "turn the {obj} {colour}",
        "change the colour of the {obj} to {colour}",
        "paint the {obj} {colour}",
        "recolor the {obj} {colour}",
        "the {obj} should be {colour}",
    ),
    "remove": (
        "remove the {obj}",
        "delete the {obj}",
        "take away the {obj}",
        "get rid of the {obj}",
        "erase the {obj}",
        "make the {obj} disappear",
    ),
    "add": (
        "add a {colour} {shape} {pos}",
        "put a {colour} {shape} {pos}",
        "place a {colour} {shape} {pos}",
        "draw a {colour} {shape} {pos}",
        "insert a {colour} {shape} {pos}",
    ),
    "stripes": (
        "add {colour} {direction} stripes to the {obj}",
        "give the {obj} {colour} {direction} stripes",
        "paint {direction} {colour} stripes on the {obj}",
        "make the {obj} striped with {direction} {colour} lines",
    ),
    "checks": (
        "cover the {obj} with a {colour} checkerboard pattern",
        "make the {obj} checkered in {colour}",
        "put a {colour} check pattern on the {obj}",
        "give the {obj} a {colour} chequered texture",
    ),
    "background": (
        "change the background to {colour}",
        "make the background {colour}",
        "turn the background {colour}",
        "paint the background {colour}",
        "use a {colour} background",
        "set the background color to {colour}",
    ),
}
EFFECT_PHRASINGS: dict[str, tuple[str, ...]] = {
    "darker": (
        "make it darker",
        "darken the image",
        "make the picture darker",
        "lower the brightness",
    ),
    "brighter": (
        "make it brighter",
        "brighten the image",
        "increase the brightness",
        "make the picture lighter",
    ),
    "warmer": (
        "make it warmer",
        "give the image a warm tone",
        "add a warm orange tint",
        "make the colours warmer",
    ),
    "cooler": (
        "make it cooler",
        "give the image a cool blue tone",
        "add a cold tint",
        "make the colours cooler",
    ),
    "grayscale": (
        "make it black and white",
        "convert the image to grayscale",
        "remove all colour",
        "make it grey-scale",
    ),
    "invert": (
        "invert the colours",
        "make it a colour negative",
        "invert the image",
        "turn it into a negative",
    ),
}
STYLE_PHRASINGS: dict[str, tuple[str, ...]] = {
    "sketch": (
        "turn it into a pencil sketch",
        "make it look like a sketch",
        "draw it as a line sketch on white paper",
    ),
    "pixel art": (
        "make it pixel art",
        "render it as 8-bit pixel art",
        "pixelate the picture",
        "turn it into blocky pixel art",
    ),
    "neon": (
        "make it neon",
        "make the shapes glow like neon signs on a black background",
        "give it a neon sign style",
    ),
    "silhouette": (
        "turn the shapes into silhouettes",
        "make the shapes black silhouettes",
        "show the shapes as dark silhouettes",
    ),
}
POSITION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("on the left", "on the left side", "at the left"),
    "right": ("on the right", "on the right side", "at the right"),
    "top": ("at the top", "near the top", "at the top of the picture"),
    "bottom": ("at the bottom", "near the bottom", "at the bottom of the picture"),
    "centre": ("in the centre", "in the middle", "in the center"),
    "top-left": ("in the top-left corner", "at the top left", "in the upper left"),
    "top-right": ("in the top-right corner", "at the top right", "in the upper right"),
    "bottom-left": ("in the bottom-left corner", "at the bottom left", "in the lower left"),
    "bottom-right": ("in the bottom-right corner", "at the bottom right", "in the lower right"),
}


@dataclass(frozen=True)
class Edit:
    """One instruction: its category, the parameters that define the ground truth, the text."""

    category: str
    params: dict[str, Any] = field(default_factory=dict)
    instruction: str = ""

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES:
            raise ValueError(
                f"unknown edit category {self.category!r}; choose from {', '.join(CATEGORIES)}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "category": self.category,
            "params": dict(self.params),
            "instruction": self.instruction,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Edit:
        try:
            return cls(d["category"], dict(d["params"]), d.get("instruction", ""))
        except (KeyError, TypeError) as e:
            raise ValueError(f"malformed edit description {d!r}: {e}") from None

    def new_object(self) -> Obj:
        """The object an ``add`` edit draws."""
        return Obj(**self.params["object"])


@dataclass(frozen=True)
class EditResult:
    target: np.ndarray  # (H, W, 3) uint8 ground-truth edited image
    mask: np.ndarray  # (H, W) bool, the pixels the instruction is allowed to change


# -- colour maps and styles -----------------------------------------------------------------


def apply_effect(img: np.ndarray, effect: str, strength: float = 1.0) -> np.ndarray:
    """A global colour map on a (H, W, 3) uint8 image; ``strength`` 0.5 = half-way."""
    x = img.astype(np.float32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    if effect == "darker":
        y = x * 0.5
    elif effect == "brighter":
        y = 255 - (255 - x) * 0.45
    elif effect == "warmer":
        y = np.stack([r * 0.8 + 70, g * 0.85 + 20, b * 0.5], axis=-1)
    elif effect == "cooler":
        y = np.stack([r * 0.5, g * 0.85 + 20, b * 0.8 + 70], axis=-1)
    elif effect == "grayscale":
        lum = 0.299 * r + 0.587 * g + 0.114 * b
        y = np.repeat(lum[..., None], 3, axis=-1)
    elif effect == "invert":
        y = 255 - x
    else:
        raise ValueError(
            f"unknown global effect {effect!r}; choose from {', '.join(GLOBAL_EFFECTS)}"
        )
    y = x + strength * (y - x)
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


def line_width(size: int) -> int:
    """Outline width for sketch/neon styles: thick enough to survive a 64-px model."""
    return max(2, round(size / 22))


def _outline(mask: np.ndarray, width: int) -> np.ndarray:
    inner = ndimage.binary_erosion(mask, iterations=width, border_value=0)
    return mask & ~inner


def apply_style(scene: Scene, style: str, img: np.ndarray | None = None) -> np.ndarray:
    """Re-draw ``scene`` in ``style``; ``img`` (its rendering, possibly decorated) for pixel art."""
    size, w = scene.size, line_width(scene.size)
    if style == "sketch":
        out = np.empty((size, size, 3), np.uint8)
        out[:] = rgb("white")
        for obj in scene.objects:
            out[_outline(object_mask(obj, size), w)] = rgb("black")
        return out
    if style == "neon":
        out = np.empty((size, size, 3), np.uint8)
        out[:] = rgb("black")
        for obj in scene.objects:
            colour = "white" if obj.colour in ("black", "brown") else obj.colour
            out[_outline(object_mask(obj, size), w)] = rgb(colour)
        return out
    if style == "silhouette":
        out = render(scene) if img is None else img.copy()
        out[label_map(scene) > 0] = rgb("black")
        return out
    if style == "pixel art":
        src = render(scene) if img is None else img
        return blockify(src, pixel_block(size))
    raise ValueError(f"unknown style {style!r}; choose from {', '.join(STYLES)}")


def blockify(img: np.ndarray, b: int) -> np.ndarray:
    """Each b x b block takes the colour covering most of it (ties: the smaller RGB code)."""
    h, w, _ = img.shape
    n_y, n_x = h // b, w // b
    code = (img[..., 0].astype(np.int64) << 16) | (img[..., 1].astype(np.int64) << 8) | img[..., 2]
    ys, xs = np.mgrid[0:h, 0:w]
    block = (np.minimum(ys // b, n_y - 1) * n_x + np.minimum(xs // b, n_x - 1)).astype(np.int64)
    keys, counts = np.unique(block.ravel() << 24 | code.ravel(), return_counts=True)
    blk = keys >> 24
    order = np.lexsort((-counts, blk))  # by block, then most frequent first
    first = order[np.r_[True, blk[order][1:] != blk[order][:-1]]]
    winner = np.empty(n_y * n_x, dtype=np.int64)
    winner[blk[first]] = keys[first] & 0xFFFFFF
    c = winner[block]
    return np.stack([(c >> 16) & 255, (c >> 8) & 255, c & 255], axis=-1).astype(np.uint8)


def pixel_block(size: int) -> int:
    return max(4, size // 8)


def texture_mask(size: int, params: dict[str, Any]) -> np.ndarray:
    """(H, W) bool: where the pattern's second colour goes (before clipping to the object)."""
    period = int(params["period"])
    half = period // 2
    px, py = params.get("phase", (0, 0))
    ys, xs = _grid(size)
    if params["pattern"] == "stripes":
        d = params["direction"]
        coord = {"horizontal": ys + py, "vertical": xs + px, "diagonal": xs + ys + px}[d]
        return (coord % period) < half
    return (((xs + px) // half) + ((ys + py) // half)) % 2 == 0


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:size, 0:size]
    ys.flags.writeable = xs.flags.writeable = False
    return ys, xs


def texture_period(size: int) -> int:
    return max(4, 2 * round(size / 16))


# -- ground truth ---------------------------------------------------------------------------


def apply_edit(scene: Scene, edit: Edit) -> EditResult:
    """Render the ground-truth target of ``edit`` on ``scene`` and its edit-region mask."""
    p, size = edit.params, scene.size
    if edit.category == "local":
        i = p["object"]
        target = render(scene.replace_object(i, scene.objects[i].replace(colour=p["colour"])))
        return EditResult(target, object_mask(scene.objects[i], size).copy())
    if edit.category == "remove":
        i = p["object"]
        return EditResult(
            render(scene.replace_object(i, None)), object_mask(scene.objects[i], size).copy()
        )
    if edit.category == "add":
        new = edit.new_object()
        return EditResult(render(scene.with_object(new)), object_mask(new, size).copy())
    if edit.category == "texture":
        i = p["object"]
        target = render(scene)
        mask = object_mask(scene.objects[i], size).copy()
        target[mask & texture_mask(size, p)] = rgb(p["colour"])
        return EditResult(target, mask)
    if edit.category == "background":
        labels = label_map(scene)
        return EditResult(render(scene.with_background(p["colour"])), labels == 0)
    full = np.ones((size, size), dtype=bool)
    if edit.category == "global":
        return EditResult(apply_effect(render(scene), p["effect"]), full)
    return EditResult(apply_style(scene, p["style"]), full)


def change_fraction(original: np.ndarray, target: np.ndarray, threshold: float = 60.0) -> float:
    """Fraction of pixels whose colour moves by more than ``threshold`` (RGB distance)."""
    d = np.linalg.norm(original.astype(np.float32) - target.astype(np.float32), axis=-1)
    return float((d > threshold).mean())


# -- sampling -------------------------------------------------------------------------------


def _pick(rng: np.random.Generator, seq: tuple[str, ...] | list[str]) -> str:
    return str(seq[int(rng.integers(len(seq)))])


def _free_colours(scene: Scene, exclude: set[str], cfg: SceneConfig) -> list[str]:
    return [c for c in cfg.colours if c not in exclude and c != scene.background]


def sample_edit(
    scene: Scene,
    category: str,
    rng: np.random.Generator,
    cfg: SceneConfig,
    min_change: float = 0.02,
    min_global_change: float = 0.25,
) -> Edit | None:
    """A random edit of ``category`` that is possible on ``scene``, or None if there is none."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown edit category {category!r}; choose from {', '.join(CATEGORIES)}")
    objs = scene.objects
    names = {o.name for o in objs}
    if category in ("local", "remove", "texture") and not objs:
        return None
    if category == "local":
        i = int(rng.integers(len(objs)))
        o = objs[i]
        options = [
            c for c in _free_colours(scene, {o.colour}, cfg) if f"{c} {o.shape}" not in names
        ]
        if not options:
            return None
        colour = _pick(rng, options)
        text = _pick(rng, PHRASINGS["local"]).format(obj=o.name, colour=colour)
        return Edit("local", {"object": i, "colour": colour}, text)
    if category == "remove":
        i = int(rng.integers(len(objs)))
        text = _pick(rng, PHRASINGS["remove"]).format(obj=objs[i].name)
        return Edit("remove", {"object": i}, text)
    if category == "add":
        order = list(POSITIONS)
        rng.shuffle(order)
        for pos in order:
            new = random_object(rng, cfg, objs, scene.background, zone=pos, tries=60)
            if new is not None:
                text = _articles(
                    _pick(rng, PHRASINGS["add"]).format(
                        colour=new.colour, shape=new.shape, pos=_pick(rng, POSITION_PHRASES[pos])
                    )
                )
                obj = {"shape": new.shape, "colour": new.colour, "x": new.x, "y": new.y, "r": new.r}
                return Edit("add", {"object": obj, "position": pos}, text)
        return None
    if category == "texture":
        i = int(rng.integers(len(objs)))
        o = objs[i]
        colour = _pick(rng, _free_colours(scene, {o.colour}, cfg))
        pattern = _pick(rng, PATTERNS)
        period = texture_period(scene.size)
        params: dict[str, Any] = {
            "object": i,
            "pattern": pattern,
            "direction": _pick(rng, DIRECTIONS) if pattern == "stripes" else None,
            "colour": colour,
            "period": period,
            "phase": [int(rng.integers(period)), int(rng.integers(period))],
        }
        fmt = {"obj": o.name, "colour": colour, "direction": params["direction"]}
        text = _articles(_pick(rng, PHRASINGS[pattern]).format(**fmt))
        return Edit("texture", params, text)
    if category == "background":
        options = _free_colours(scene, {o.colour for o in objs}, cfg)
        if not options:
            return None
        colour = _pick(rng, options)
        text = _pick(rng, PHRASINGS["background"]).format(colour=colour)
        return Edit("background", {"colour": colour}, text)
    # global and style: keep only the variants that visibly change this scene
    original = render(scene)
    choices = list(GLOBAL_EFFECTS if category == "global" else STYLES)
    rng.shuffle(choices)
    for choice in choices:
        key = "effect" if category == "global" else "style"
        phrasings = EFFECT_PHRASINGS if category == "global" else STYLE_PHRASINGS
        edit = Edit(category, {key: choice}, _pick(rng, phrasings[choice]))
        if choice == "silhouette" and _too_dark(scene.background):
            continue
        need = min_global_change if category == "global" else min_change
        if change_fraction(original, apply_edit(scene, edit).target) >= need:
            return edit
    return None


def _articles(text: str) -> str:
    """'a orange star' -> 'an orange star'."""
    return re.sub(r"\ba (?=[aeiou])", "an ", text)


def _too_dark(colour: str) -> bool:
    return float(np.linalg.norm(np.subtract(PALETTE[colour], PALETTE["black"]))) < 150
