"""The oracle's check that the rest of the scene is recognisable (:mod:`data.shapes.oracle_checks`).

A following verdict needs the scene the instruction did not name to still be there: its objects
(or, for styles, their outlines) seen in place, so that a uniform colour, pure noise, heavy
noise over the input or a shifted or scaled copy cannot pass following
(``python -m data.shapes.degenerate`` measures it). :class:`SceneRecognition` is mixed into
:class:`~data.shapes.oracle_checks.Measurer` and works on its state (the scene, the edit, the
edited image ``E`` and the masks the other checks set).
"""

from __future__ import annotations

import numpy as np

from . import pixel_measures as mz
from .edits import apply_edit, apply_effect, pixel_block
from .scene import object_mask, rgb

# The rest of the scene (following requires it; see Measurer._scene_seen):
ELEMENT_CONTRAST = 40.0  # a kept object stands out from the background by this much (RGB)
SEEN_OK = 0.85  # precision and recall of the pixels that look like it: seen in place
SEEN_LOST = 0.65  # ... at or below this: lost
LIKE_TOL = 60.0  # a pixel this close to an object's colour in E (and closer than 40% of its
# contrast to its surroundings) shows the object
MOVED_COLOUR = 60.0  # a moved object: pixels this close to its colour (at E's blur)


class SceneRecognition:
    """Is the rest of the scene still there? (``Measurer._scene_seen`` and its helpers)."""

    def _scene_seen(self) -> None:
        """Is the rest of the scene still there? Following requires it (see ``_following``).

        The *elements* are what the target keeps of the scene: every object the instruction
        does not name, as the target shows it (recoloured by a global effect, as outlines or
        blocks in a style), at the edited image's sharpness. An element whose surroundings
        match the reference pixel by pixel is seen; otherwise ``_element_placed`` checks,
        free of colour, that what looks like it in E lies where the reference has it, give
        or take ``sc.erode`` px (1 at 32 px, 2 at 64 px). A uniform image, noise, or a
        shifted or zoomed copy loses the elements; a tint, a recolour, blur or a local
        artifact does not. One object moved by more than its diameter to free background
        counts as seen (``_element_moved``; a preserving failure).

        Sets ``scene_seen`` (mean of the elements' 0..1 scores), ``lost`` and ``unclear``
        (names of the objects not or only partly seen) and ``noise_level`` (image-wide noise,
        ``mz.noise_level``).
        """
        cfg, cat = self.cfg, self.edit.category
        self.lost: list[str] = []  # names of the kept objects not seen (score < 0.5)
        self.unclear: list[str] = []  # ... and of those only partly seen
        self.scene_seen = 1.0
        self.noise_level = mz.noise_level(self.E, self.E_m, self.flat_ref)
        self.measures["noise_level"] = self.noise_level
        named = (
            {int(self.edit.params["object"])} if cat in ("local", "remove", "texture") else set()
        )
        kept = [j for j in range(len(self.scene.objects)) if j not in named]
        if not kept or self.noise_level >= cfg.noise_lost:
            return  # nothing to keep, or lost in noise anyway
        # the edit itself is following's business (the edit region, grown by g)
        region_edit = cat in ("local", "remove", "texture", "add")
        self.region = self.allowed if region_edit else np.zeros_like(self.M)
        self.bg_ref = self._target_background()
        d_ref = mz.dist(self.E, self.T_blur)  # how far E is from the reference, per pixel
        elems = []  # (j, masks or None when in place pixel by pixel, score)
        for j in kept:
            box = self._element_box(j)
            d_obj = mz.dist(self.T_blur[box], self.bg_ref)[self.labels[box] == j + 1]
            if (d_obj > ELEMENT_CONTRAST).sum() < 3:
                continue  # not visible in the target: nothing to keep
            tol = min(ELEMENT_CONTRAST, 0.5 * float(d_obj.max()))
            off = (d_ref[box] > tol) & ~self.region[box]
            if off.any():  # more than a few pixels off around it: look closer
                around = mz.dilate(self.labels[box] == j + 1, 3 * self.sc.erode)
                in_place = bool(off[around].mean() <= 0.1)
            else:
                in_place = True
            if in_place:
                elems.append((j, None, 1.0))  # (nearly) every pixel as in the reference
                continue
            masks = self._element_masks(j, box)
            if masks is not None:
                elems.append((j, masks, self._element_placed(masks)))
        if not elems:
            return
        scores = [e[2] for e in elems]
        moved = False
        for k, (j, masks, sc) in enumerate(elems):  # one object moved away: a preserving
            if sc < 1 and not moved and self._element_moved(j, masks[0]):  # failure
                scores[k], moved = 1.0, True
        names = [self.scene.objects[e[0]].name for e in elems]
        for e, sc in zip(elems, scores):
            self.measures[f"seen_{e[0]}"] = sc
        self.scene_seen = float(np.mean(scores))
        order = sorted(zip(scores, names))  # the least seen first
        self.lost = [nm for sc, nm in order if sc < 0.5]
        self.unclear = [nm for sc, nm in order if 0.5 <= sc < 1]
        self.measures["scene_seen"] = self.scene_seen

    def _element_box(self, j: int) -> tuple[slice, slice]:
        """The part of the image that judging object ``j`` needs."""
        obj, n = self.scene.objects[j], self.n
        reach = 1 + (pixel_block(n) // 2 if self.edit.params.get("style") == "pixel art" else 0)
        m = reach + 3 * self.sc.erode + self.sc.median
        y0, y1 = int(obj.y - obj.r) - m, int(np.ceil(obj.y + obj.r)) + m + 1
        x0, x1 = int(obj.x - obj.r) - m, int(np.ceil(obj.x + obj.r)) + m + 1
        return slice(max(0, y0), min(n, y1)), slice(max(0, x0), min(n, x1))

    def _target_background(self) -> np.ndarray:
        """The background colour of the target (float32 RGB)."""
        p, bg = self.edit.params, rgb(self.scene.background)
        if self.edit.category == "background":
            bg = rgb(p["colour"])
        elif self.edit.category == "global":
            bg = apply_effect(bg[None, None], p["effect"])[0, 0]
        elif self.edit.category == "style" and p["style"] in ("sketch", "neon"):
            bg = rgb("white" if p["style"] == "sketch" else "black")
        return bg.astype(np.float32)

    def _element_masks(self, j: int, box: tuple[slice, slice]):
        """Object ``j`` as the reference shows it: (its pixels in the image frame, ``box``, and
        in the box: where it could show in E, its pixels, the background ring just outside
        it; its contrast), or None when it does not stand out in the reference."""
        g, lab_b, t_b, region = self.sc.erode, self.labels[box], self.T_blur[box], self.region[box]
        mine = lab_b == j + 1
        if self.edit.params.get("style") == "pixel art":  # blocks reach beyond the object:
            _, (iy, ix) = mz.ndimage.distance_transform_edt(lab_b == 0, return_indices=True)
            reach = 1 + pixel_block(self.n) // 2  # split by the nearest object
            own = mz.dilate(mine, reach) & (lab_b[iy, ix] == j + 1)
        else:
            own = mz.dilate(mine, 1) & ((lab_b == 0) | mine)
        d_bg = mz.dist(t_b, self.bg_ref)
        elem = (d_bg > ELEMENT_CONTRAST) & own & ~region
        if elem.sum() < 3:
            return None
        c_t = float(np.linalg.norm(np.median(t_b[elem], 0) - self.bg_ref))
        if c_t < ELEMENT_CONTRAST:
            return None
        others = mz.dilate((d_bg > 0.3 * c_t) & ~own, g) | region
        grown = mz.dilate(elem, g)
        near = mz.dilate(grown, 2 * g) & ~others  # where the element could show in E
        inside = near & (d_bg >= 0.6 * c_t)  # clearly the element
        ring = near & ~grown & (d_bg <= 0.3 * c_t) & ~mine  # the background around it
        if inside.sum() < 2 or ring.sum() < 3:
            return None
        bands = self.bands[box]  # brightness bands are quality's: judge the rest
        if (inside & ~bands).sum() >= 2 and (ring & ~bands).sum() >= 3:
            near, inside, ring = near & ~bands, inside & ~bands, ring & ~bands
        full = np.zeros((self.n, self.n), bool)
        full[box] = elem
        return full, box, near, inside, ring, c_t

    def _element_placed(self, masks) -> float:
        """0..1: the element stands where the reference has it, give or take a step.

        With a and r the median colours in E_m of the element's pixels and of the ring just
        outside it, the pixels near it that look like a (closer than ``LIKE_TOL`` and than
        0.4 |a - r|, in E or in E_m) must match the element's pixels up to ``sc.erode`` px
        both ways (precision and recall): 1.0 when both are at least ``SEEN_OK``, 0.0 when
        one is at or below ``SEEN_LOST`` or when a and r hardly differ. Free of colour: a
        recoloured object or a tinted background keeps it; a shifted, resized or vanished
        object does not.
        """
        _, box, near, inside, ring, c_t = masks
        e, e_m, g = self.E[box], self.E_m[box], self.sc.erode
        if inside.sum() < 2 or ring.sum() < 3:
            return 0.0
        a, r = np.median(e_m[inside], 0), np.median(e_m[ring], 0)
        contrast = float(np.linalg.norm(a - r))
        if contrast < min(ELEMENT_CONTRAST, 0.5 * c_t):
            return 0.0  # the element does not stand out at all
        tol = min(LIKE_TOL, 0.4 * contrast)  # (a ghost is not like it)
        like = near & ((mz.dist(e, a) < tol) | (mz.dist(e_m, a) < tol))  # sharp, or denoised
        if not like.any():
            return 0.0
        precision = (like & mz.dilate(inside, g)).sum() / like.sum()
        recall = (inside & mz.dilate(like, g)).sum() / inside.sum()
        acc = float(min(precision, recall))
        return float(np.clip((acc - SEEN_LOST) / (SEEN_OK - SEEN_LOST), 0, 1))

    def _element_moved(self, j: int, elem: np.ndarray) -> bool:
        """Object ``j`` stands whole, in its colour, on free background more than its diameter
        away: the target re-drawn with the object there shows it where E does."""
        obj, g, n, region = self.scene.objects[j], self.sc.erode, self.n, self.region
        colour = np.median(self.T_blur[elem], 0)  # as the reference shows it (objects keep
        bg = self.bg_ref  # their colour when they move)
        tol = min(MOVED_COLOUR, 0.5 * float(np.linalg.norm(colour - bg)))
        like = mz.dist(self.E_m, colour) < tol
        free = (mz.dist(self.T_blur, bg) <= 0.3 * ELEMENT_CONTRAST) & ~region
        placed = like & ~free  # like it where the reference has something (or the edit is)
        like &= free
        like |= mz.ndimage.binary_closing(like, structure=mz.CROSS, iterations=g) & free
        ex, ey = mz.centroid(elem)
        for c in mz.components(like):
            size = c.sum()
            if size < 0.3 * elem.sum():
                break  # largest first
            cx, cy = mz.centroid(c)
            if size > 2 * elem.sum() or np.hypot(cx - ex, cy - ey) < 2 * obj.r:
                continue
            if (mz.dilate(c, 1) & placed).sum() > 0.1 * size:
                continue  # part of something in place (an enlarged or an unremoved object)
            there = obj.replace(x=obj.x + cx - ex, y=obj.y + cy - ey)
            want = object_mask(there, n)  # how the target would show it there
            if self.edit.category == "style":  # outlines, blocks: re-draw the target
                redrawn = apply_edit(self.scene.replace_object(j, there), self.edit).target
                redrawn = mz.median(redrawn.astype(np.float32), self.sc.median)
                want = mz.dilate(want, g) & (mz.dist(redrawn, colour) < tol)
            if (want & c).sum() >= 0.4 * (want | c).sum():
                self.measures["moved_far"] = float(np.hypot(cx - ex, cy - ey))
                return True
        return False
