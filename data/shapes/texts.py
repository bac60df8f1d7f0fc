"""Failure texts of the oracle judge: short phrases that name the object, colour or region.

The wording follows the reward texts of RewardEdit-20K ("the red circle was not turned blue",
"the background colour changed", "noise blotches in the top-left"), so a model trained on
oracle labels sees the same kind of text as one trained on GPT-4o labels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from . import pixel_measures as mz
from .edits import POSITION_PHRASES
from .scene import object_mask, region_name

if TYPE_CHECKING:
    from .oracle_checks import Measurer

EFFECT_DONE = {
    "darker": "made darker",
    "brighter": "made brighter",
    "warmer": "given a warmer tone",
    "cooler": "given a cooler tone",
    "grayscale": "turned black and white",
    "invert": "inverted",
}
STYLE_NAME = {
    "sketch": "a pencil sketch",
    "pixel art": "pixel art",
    "neon": "a neon sign style",
    "silhouette": "silhouettes",
}
OPPOSITE_DONE = {"darker": "brighter", "brighter": "darker", "warmer": "cooler", "cooler": "warmer"}


def _degree(done: float, none: str, part: str, rough: str) -> str:
    if done < 0.2:
        return none
    if done < 0.85:
        return part
    return rough


def following(m: Measurer, done: float, alpha: float) -> str:
    """Why the instruction was not (fully) followed."""
    e, p, objs = m.edit, m.edit.params, m.scene.objects
    if e.category == "local":
        obj, want = objs[p["object"]], p["colour"]
        if "colour_seen" in m.facts:
            return f"the {obj.name} was turned {m.facts['colour_seen']} instead of {want}"
        return _degree(
            done,
            f"the {obj.name} was not turned {want}",
            f"only part of the {obj.name} was turned {want}",
            f"the {obj.name} is not clearly {want}",
        )
    if e.category == "remove":
        name = objs[p["object"]].name
        return _degree(
            done,
            f"the {name} was not removed",
            f"the {name} was only partly removed",
            f"traces of the {name} remain",
        )
    if e.category == "add":
        new = e.new_object()
        pos = POSITION_PHRASES[p["position"]][0]
        what = f"{new.colour} {new.shape}"
        if m.facts.get("add") == "missing":
            if "colour_seen" in m.facts:
                return f"a {m.facts['colour_seen']} {new.shape} was added instead of a {new.colour} one"
            return f"no {what} was added {pos}"
        if "shape" in m.facts:
            return f"a {new.colour} {m.facts['shape']} was added instead of a {what}"
        if m.facts.get("add") == "misplaced":
            return f"the {what} was added in the {m.facts['where']} instead of {pos}"
        return f"the {what} {pos} is incomplete"
    if e.category == "texture":
        obj, want = objs[p["object"]], p["colour"]
        pattern = (
            f"{p['direction']} stripes" if p["pattern"] == "stripes" else "a checkerboard pattern"
        )
        if "colour_seen" in m.facts:
            seen = m.facts["colour_seen"]
            return f"the {obj.name} got {seen} instead of {want} {pattern.removeprefix('a ')}"
        return _degree(
            done,
            f"the {obj.name} did not get {want} {pattern}",
            f"only part of the {obj.name} got {want} {pattern}",
            f"the {want} {pattern} on the {obj.name} is irregular",
        )
    if e.category == "background":
        want = p["colour"]
        if "colour_seen" in m.facts:
            return f"the background turned {m.facts['colour_seen']} instead of {want}"
        return _degree(
            done,
            f"the background was not changed to {want}",
            f"only part of the background was turned {want}",
            f"the background is not clearly {want}",
        )
    if e.category == "global":
        eff = p["effect"]
        if alpha < -0.1 and eff in OPPOSITE_DONE:
            return f"the image was made {OPPOSITE_DONE[eff]} instead of {eff}"
        return _degree(
            max(done, 0.0) if alpha > 0.2 else 0.0,
            f"the image was not {EFFECT_DONE[eff]}",
            f"the image was only partly {EFFECT_DONE[eff]}",
            f"the image was not {EFFECT_DONE[eff]} as asked (the colours are off)",
        )
    style = STYLE_NAME[p["style"]]
    return _degree(
        done,
        f"the image was not turned into {style}",
        f"only part of the image was turned into {style}",
        f"the image is a poor rendering of {style}",
    )


def scene_lost(m: Measurer, noise: bool) -> str:
    """Why an edit does not count: the rest of the scene is gone (or drowned in noise)."""
    names = [f"the {name}" for name in (m.lost or m.unclear)[:3]]
    if noise or not names:
        return "the image is lost in noise"
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    verb = "is" if len(names) == 1 else "are"
    return f"{listed} {verb} {'lost' if m.lost else 'distorted'}"


def tint_word(shift: np.ndarray) -> str:
    """A human word for a colour shift vector (R, G, B)."""
    r, g, b = (float(v) for v in shift)
    lum = (r + g + b) / 3
    if abs(lum) > 0.6 * np.linalg.norm(shift) / np.sqrt(3):
        return "it got darker" if lum < 0 else "it got lighter"
    if r - b > 25:
        return "a warm tint"
    if b - r > 25:
        return "a cool tint"
    return "a green tint" if g > 0 else "a purple tint"


def places(comps: list[np.ndarray], n: int, most: int = 2) -> str:
    """'top-left' or 'top-left and centre': where the largest components are."""
    names = list(dict.fromkeys(region_name(*mz.centroid(c), n) for c in comps[:most]))
    return " and ".join(names) if names else "image"


def blend(m: Measurer, mask: np.ndarray) -> str:
    """Name a colour-blend artifact: banding across the image, a ghost of an object, smudges."""
    if mask.sum() >= 0.12 * m.sc.area:
        rows, cols = mask.any(1).mean(), mask.any(0).mean()
        if max(rows, cols) > 0.7:
            return "colour banding across the image"
    comps = mz.components(mask)
    c = comps[0]
    g = np.median(m.E_m[c], axis=0)
    base = np.median(m.T_ref[c], axis=0)
    best, best_res = None, 30.0
    objs = list(m.scene.objects) + ([m.edit.new_object()] if m.edit.category == "add" else [])
    for obj in objs:
        om = m.E_m[mz.erode(object_mask(obj, m.n), 1)]
        if not len(om):
            continue
        col = np.median(om, axis=0)
        v = col - base
        den = float(v @ v)
        if den < 1:
            continue
        a = float((g - base) @ v / den)
        res = float(np.linalg.norm(g - base - a * v))
        if 0.1 <= a <= 0.9 and res < best_res:
            best, best_res = obj, res
    where = region_name(*mz.centroid(c), m.n)
    if best is not None:
        return f"a faint ghost of the {best.name} in the {where}"
    return f"smudges in the {places(comps, m.n)}"
