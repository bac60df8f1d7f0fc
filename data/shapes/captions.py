"""Captions of Shapes images: what a scene shows, before and after an edit.

The Shapes CLIP (``python -m train.clip``) learns from them, and CLIP-T / CLIP direction
similarity on Shapes-Edit compare outputs with them (the paper's Table 2 needs a caption of the
desired output). A caption names every object with its colour, shape and 3x3 region, then the
background, and for whole-image edits what was done to the picture::

    scene_caption(scene)          -> "a red circle at the top-left and a blue star at the centre
                                      on a green background"
    target_caption(scene, edit)   -> "a pencil sketch of a red circle at the top-left and ..."

Objects are listed left to right, then top to bottom, so the same scene always reads the same.
"""

from __future__ import annotations

from typing import Any

from .edits import Edit
from .scene import Obj, Scene, region_name

EFFECT_WORDS = {
    "darker": "a darker picture of",
    "brighter": "a brighter picture of",
    "warmer": "a warmer picture of",
    "cooler": "a cooler picture of",
    "grayscale": "a black and white picture of",
    "invert": "a negative picture of",
}
STYLE_WORDS = {
    "sketch": "a pencil sketch of",
    "pixel art": "a pixel art picture of",
    "neon": "a neon sign of",
    "silhouette": "silhouettes of",
}


def _object_phrase(obj: Obj, size: int, texture: str = "") -> str:
    where = region_name(obj.x, obj.y, size)
    return f"a {obj.colour} {obj.shape}{texture} at the {where}"


def scene_caption(scene: Scene, textures: dict[int, str] | None = None) -> str:
    """What ``render(scene)`` shows, in one sentence."""
    textures = textures or {}
    order = sorted(
        range(len(scene.objects)), key=lambda i: (scene.objects[i].x, scene.objects[i].y)
    )
    phrases = [_object_phrase(scene.objects[i], scene.size, textures.get(i, "")) for i in order]
    if not phrases:
        return f"an empty {scene.background} background"
    listed = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return f"{listed} on a {scene.background} background"


def target_caption(scene: Scene, edit: Edit) -> str:
    """What the ground-truth result of ``edit`` on ``scene`` shows."""
    p = edit.params
    if edit.category == "local":
        i = p["object"]
        return scene_caption(scene.replace_object(i, scene.objects[i].replace(colour=p["colour"])))
    if edit.category == "remove":
        return scene_caption(scene.replace_object(p["object"], None))
    if edit.category == "add":
        return scene_caption(scene.with_object(edit.new_object()))
    if edit.category == "texture":
        pattern = "checks" if p["pattern"] == "checks" else f"{p['direction']} stripes"
        return scene_caption(scene, {p["object"]: f" with {p['colour']} {pattern}"})
    if edit.category == "background":
        return scene_caption(scene.with_background(p["colour"]))
    if edit.category == "global":
        return f"{EFFECT_WORDS[p['effect']]} {scene_caption(scene)}"
    return f"{STYLE_WORDS[p['style']]} {scene_caption(scene)}"


def captions_from_meta(meta: dict[str, Any]) -> tuple[str, str]:
    """(caption of the original, caption of the target) from a manifest line's ``meta``."""
    scene = Scene.from_dict(meta["scene"])
    edit = Edit.from_dict(meta["edit"])
    return scene_caption(scene), target_caption(scene, edit)


__all__ = ["captions_from_meta", "scene_caption", "target_caption"]
