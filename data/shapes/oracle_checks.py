"""The oracle's checks of one edited image, perspective by perspective (:mod:`data.shapes.oracle`).

Order matters: quality runs first and marks artifact pixels (noise, bands, blends); preserving
then checks what the instruction did not name, ignoring artifacts, and marks the pixels its
failures explain (a moved object, a tint); following finally measures the edit on the pixels
left, at the edited image's own sharpness. So each defect costs points in one perspective only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from core.rewards import PERSPECTIVES

from . import pixel_measures as mz
from . import texts
from .edits import Edit, line_width, pixel_block, texture_mask
from .oracle_scene import SceneRecognition
from .scene import SHAPES, Scene, in_zone, label_map, object_mask, region_name, render, rgb

if TYPE_CHECKING:
    from .oracle import OracleConfig

MAX_TEXTS = 4  # failure points named per perspective (the reward texts stay short)


@dataclass
class Finding:
    """One failure point: its perspective, the score points it costs, and the text."""

    perspective: str
    cost: float
    text: str


def round_score(x: float, step: float) -> float:
    """Round to a multiple of ``step`` within [0, 5]."""
    return float(np.clip(np.floor(x / step + 0.5) * step, 0.0, 5.0).round(6))


class Measurer(SceneRecognition):
    """One measurement; holds the images and the intermediate views."""

    def __init__(
        self,
        cfg: OracleConfig,
        scene: Scene,
        edit: Edit,
        original: np.ndarray,
        edited: np.ndarray,
        target: np.ndarray,
        mask: np.ndarray,
        native: int,
    ):
        # images: float32 (H, W, 3) in [0, 255]; mask: (H, W) bool
        self.cfg, self.scene, self.edit = cfg, scene, edit
        self.n = scene.size
        self.sc = mz.Scale(self.n)
        self.O, self.E, self.T, self.M = original, edited, target, mask
        self.native = native  # side of the edited image as given (before resizing)
        self.E_m = mz.median(edited, self.sc.median)
        self.bands = mz.band_lines(edited, target)  # brightness bands (needed before alignment)
        self.T_ref, self.M_ref = target, mask  # the reference, once aligned (add, texture)
        self.blob: np.ndarray | None = None  # where an added object was found
        self.facts: dict[str, Any] = {}
        self.findings: list[Finding] = []
        self.measures: dict[str, float] = {}
        self.excluded = np.zeros_like(mask)  # pixels explained by a preserving failure
        self.artifacts = np.zeros_like(mask)  # pixels explained by an image artifact
        self.tint = np.zeros(3, np.float32)  # background colour shift found by preserving
        self.blur_sigma = 0.0  # blur of the edited image relative to the target, in pixels
        objs = list(scene.objects) + ([edit.new_object()] if edit.category == "add" else [])
        areas = [object_mask(o, self.n).sum() for o in objs]
        self.ref_area = max(float(np.mean(areas)) if areas else 0.0, 0.015 * self.sc.area)
        self.known = mz.distinct_colours(original.astype(np.uint8), target.astype(np.uint8))

    def run(self) -> tuple[list[float], list[str], list[Finding], dict[str, float]]:
        """Scores and texts per perspective (in PERSPECTIVES order), findings, raw measures."""
        if self.edit.category == "add":
            self._align_add()
        elif self.edit.category == "texture":
            self._align_texture()
        # Each pixel's fault is counted once: artifacts first, then preservation failures; the
        # following measure skips the pixels either of them already explains.
        self._quality()
        self._preserving()
        follow = self._following()
        cfg = self.cfg
        pres = 5 - sum(f.cost for f in self.findings if f.perspective == "preserving")
        qual = 5 - sum(f.cost for f in self.findings if f.perspective == "quality")
        scores = [round_score(s, cfg.score_step) for s in (follow, pres, qual)]
        text = []
        for p, s in zip(PERSPECTIVES, scores):
            fs = sorted((f for f in self.findings if f.perspective == p), key=lambda f: -f.cost)
            worst = list(dict.fromkeys(f.text for f in fs))[:MAX_TEXTS]  # the costliest first
            text.append("; ".join(worst) if s < 5 else "")
        return scores, text, self.findings, self.measures

    def _add(self, perspective: str, cost: float, text: str) -> None:
        if cost > 1e-3:
            self.findings.append(Finding(perspective, float(cost), text))

    # -- alignment ------------------------------------------------------------------------
    def _align_add(self) -> None:
        new = self.edit.new_object()
        col = rgb(new.colour).astype(np.float32)
        d_orig = mz.dist(self.O, col)

        def near(img: np.ndarray) -> np.ndarray:
            # clearly the new colour: much nearer to it than the original pixel was (no ghost)
            d_new = mz.dist(img, col)
            return (d_new < 50) & (d_new < 0.5 * d_orig) & (d_orig >= 60)

        cand = near(self.E_m)  # robust to noise, for finding the object...
        exact = near(self.E)  # ...whose own pixels keep its thin tips (a median rounds them)
        gt_area = self.M.sum()
        # Group pieces split by thin artifacts (bands, noise) with a closing; keep the pixels.
        closed = mz.ndimage.binary_closing(cand, structure=mz.EIGHT, iterations=2)
        comps = [c for c in mz.components(closed | cand) if (c & cand).sum() >= 0.3 * gt_area]
        if not comps:
            self.facts["add"] = "missing"
            return
        pos = self.edit.params["position"]

        def rank(c: np.ndarray) -> tuple:
            # the object on the ground truth, else one of a plausible size, in the named zone
            iou = (c & self.M).sum() / max(1, (c | self.M).sum())
            return (
                iou >= 0.5,
                c.sum() <= 3 * gt_area,
                in_zone(*mz.centroid(c), self.n, pos, loose=True),
                -abs(np.log(c.sum() / gt_area)),
            )

        grouped = max(comps, key=rank)
        b = mz.ndimage.binary_fill_holes((mz.dilate(grouped, 2) & exact) | (grouped & self.bands))
        if b.sum() < 0.3 * gt_area:  # the raw pixels are too noisy: keep the robust view
            b = mz.ndimage.binary_fill_holes(grouped & cand)
        self.blob = b
        cx, cy = mz.centroid(b)
        ious, placed_as = {}, {}
        for shape in SHAPES:  # each shape, scaled to the blob's area, on the blob's centroid
            base = object_mask(new.replace(shape=shape), self.n)
            r = new.r * float(np.sqrt(b.sum() / max(1, base.sum())))
            gx, gy = mz.centroid(object_mask(new.replace(shape=shape, r=r), self.n))
            placed_as[shape] = new.replace(shape=shape, r=r, x=new.x + cx - gx, y=new.y + cy - gy)
            tm = object_mask(placed_as[shape], self.n)
            ious[shape] = (tm & b).sum() / max(1, (tm | b).sum())
        self.measures["add_shape_iou"] = float(ious[new.shape])
        best = max(ious, key=ious.get)
        if ious[new.shape] < 0.8 and best != new.shape and ious[best] > ious[new.shape] + 0.1:
            self.facts["shape"] = best
        gx, gy = mz.centroid(self.M)
        placed = new.replace(x=new.x + cx - gx, y=new.y + cy - gy)  # the requested size
        iou_gt = (b & self.M).sum() / max(1, (b | self.M).sum())
        self.measures["add_iou"] = float(iou_gt)
        if iou_gt >= 0.4:
            return
        if in_zone(cx, cy, self.n, self.edit.params["position"], loose=True):
            self.T_ref = render(self.scene.with_object(placed)).astype(np.float32)
            self.M_ref = object_mask(placed, self.n)
        else:
            self.facts["add"] = "misplaced"
            self.facts["where"] = region_name(cx, cy, self.n)

    def _align_texture(self) -> None:
        p = self.edit.params
        period = int(p["period"])
        phase0 = tuple(p.get("phase", (0, 0)))
        if p["pattern"] == "checks":
            phases = [(a, b) for a in range(period) for b in range(period)]
        else:
            phases = [(k, k) for k in range(period)]
        phases = [phase0] + [ph for ph in phases if ph != phase0]
        d_obj = mz.dist(self.E, self.O)[self.M]
        d_col = mz.dist(self.E, rgb(p["colour"]).astype(np.float32))[self.M]
        best, best_err = phase0, np.inf
        for ph in phases:
            tm = texture_mask(self.n, {**p, "phase": ph})[self.M]
            err = float(np.where(tm, d_col, d_obj).sum())
            if err < best_err - 1e-6:
                best, best_err = ph, err
        if best != phase0:
            t = self.T.copy()
            t[self.M] = self.O[self.M]
            t[texture_mask(self.n, {**p, "phase": best}) & self.M] = rgb(p["colour"])
            self.T_ref = t

    # -- following ------------------------------------------------------------------------
    def _following(self) -> float:
        cfg, sig = self.cfg, self.sc.sigma
        orig, targ = self.O, self.T_ref
        if self.tint.any():  # judge the edit in the frame of the (already penalised) tint
            bg = rgb(self.scene.background).astype(np.float32)
            tinted = np.clip(orig + self.tint, 0, 255)
            orig = np.where(np.all(orig == bg, -1)[..., None], tinted, orig)
            targ = np.where(
                np.all(targ == bg, -1)[..., None], np.clip(targ + self.tint, 0, 255), targ
            )
        # Judge the edit at the edited image's own sharpness: blur is quality's business.
        sig_ref = float(np.hypot(sig, self.blur_sigma))
        E_s = mz.smooth(self.E, sig)
        O_s, T_s = mz.smooth(orig, sig_ref), mz.smooth(targ, sig_ref)
        region = mz.dilate(self.M_ref, int(np.ceil(2 * sig))) & ~self.excluded & ~self.artifacts
        f = mz.completion(E_s, O_s, T_s, region, cfg.tol)
        if self.facts.get("add") == "misplaced":
            f = 0.0
        elif "shape" in self.facts:  # a different shape was drawn: at best half followed
            f = min(f, cfg.follow_zero + 0.5 * (cfg.follow_full - cfg.follow_zero))
        seen = self._wrong_colour()
        if seen is not None:  # another colour than the one asked for: at best 2 of 5
            self.facts["colour_seen"] = seen
            f = min(f, cfg.follow_zero + 0.4 * (cfg.follow_full - cfg.follow_zero))
        self.measures["completion"] = f
        score = 5 * float(
            np.clip((f - cfg.follow_zero) / (cfg.follow_full - cfg.follow_zero), 0, 1)
        )
        if round_score(score, cfg.score_step) < 5:
            d_e, d_o = mz.dist(E_s, T_s), mz.dist(O_s, T_s)
            need = region & (d_o > 2 * cfg.tol)
            done = float((d_e[need] < 0.5 * d_o[need]).mean()) if need.any() else 1.0
            self.measures["done"] = done
            alpha = mz.projection(E_s, O_s, T_s, region)
            self._add("following", 5 - score, texts.following(self, done, alpha))
        # An edit only counts where the rest of the scene is still there: nothing when half
        # of the kept objects are lost or the image is lost in noise.
        if score <= 0:
            return score  # nothing left to cap
        self._scene_seen()
        seen = (self.scene_seen - cfg.scene_lost) / (cfg.scene_ok - cfg.scene_lost)
        seen = float(np.clip(seen, 0, 1))
        clean = (cfg.noise_lost - self.noise_level) / (cfg.noise_lost - cfg.noise_ok)
        clean = float(np.clip(clean, 0, 1))
        cap = 5 * min(seen, clean)
        self.measures["scene_cap"] = cap
        if cap < score:
            self._add("following", score - cap, texts.scene_lost(self, noise=clean <= seen))
            score = cap
        return score

    def _wrong_colour(self) -> str | None:
        """The colour shown instead of the one the instruction asked for, if clearly another."""
        cat, p = self.edit.category, self.edit.params
        if cat not in ("local", "background", "texture", "add"):
            return None
        want = self.edit.new_object().colour if cat == "add" else p["colour"]
        want_rgb = rgb(want).astype(np.float32)
        if cat == "add":
            if self.facts.get("add") != "missing":
                return None  # the blob found is the asked colour by construction
            where = mz.erode(self.M, 1)
        elif cat == "texture":
            where = mz.erode(self.M_ref, 1) & (mz.dist(self.T_ref, want_rgb) < 1)
        else:
            where = mz.erode(self.M_ref, 1 if cat == "local" else self.sc.erode)
        where = where & ~self.artifacts & ~self.excluded
        if where.sum() < 3:
            return None
        # compare at the edited image's sharpness (a blurred stripe is a mix, not a new colour)
        # (thin stripes do not survive a median: smooth everything a little more instead)
        sig = (
            float(np.hypot(self.blur_sigma, self.sc.sigma)) if cat == "texture" else self.blur_sigma
        )
        T_b, O_b = (mz.smooth(x, sig) if sig > 0 else x for x in (self.T_ref, self.O))
        e = mz.smooth(self.E, self.sc.sigma)[where] if cat == "texture" else self.E_m[where]
        other = (mz.dist(e, T_b[where]) > 45) & (mz.dist(e, O_b[where]) > 45)
        self.measures["other_colour"] = float(other.mean())
        if other.mean() < 0.5:  # mostly the asked colour or unchanged: completion decides
            return None
        name, d = mz.nearest_colour(np.median(e[other], axis=0))
        return name if d < 60 else "a different colour"

    # -- preserving -----------------------------------------------------------------------
    def _preserving(self) -> None:
        cfg, e = self.cfg, self.sc.erode
        whole = self.edit.category in ("global", "style")
        allowed = np.zeros_like(self.M) if whole else self.M | self.M_ref
        if self.blob is not None:
            allowed = allowed | self.blob
        allowed = allowed if whole else mz.dilate(allowed, e)
        self.allowed = allowed  # the edit's own pixels (the scene check skips them too)
        self.labels = label_map(self.scene)
        sig = self.blur_sigma  # compare at the edited image's sharpness (blur is quality's)
        self.T_blur = mz.smooth(self.T_ref, sig) if sig > 0 else self.T_ref
        if whole:
            gone = self._objects_visible()
        else:
            gone = self._objects_kept(allowed)
            if self.edit.category != "background":
                self._background_tint(allowed)
        blobs = self._appeared(allowed)
        # An object that vanished and a shape of its colour that appeared = one move.
        for j, u in gone:
            obj = self.scene.objects[j]
            own = self.labels == j + 1
            self.excluded |= mz.dilate(own, pixel_block(self.n) if whole else e)
            expect = np.median(self.T[own], axis=0)  # its colour after the edit
            match = next(
                (k for k, b in enumerate(blobs) if np.linalg.norm(b[4] - expect) < 60), None
            )
            if match is None:
                self._add("preserving", cfg.change_cost * u, f"the {obj.name} disappeared")
            else:
                _, where, ub, _, _ = blobs.pop(match)
                cost = cfg.change_cost * max(u, ub)
                self._add("preserving", cost, f"the {obj.name} moved to the {where}")
        for colour, where, ub, _, _ in blobs:
            self._add(
                "preserving", cfg.change_cost * ub, f"a {colour} shape appeared in the {where}"
            )

    def _objects_kept(self, allowed: np.ndarray) -> list[tuple[int, float]]:
        """Region edits: every unnamed object keeps its colour (median over its core)."""
        cfg, gone = self.cfg, []
        cat = self.edit.category
        named = (
            {int(self.edit.params["object"])} if cat in ("local", "remove", "texture") else set()
        )
        bg = self.edit.params["colour"] if cat == "background" else self.scene.background
        for j, obj in enumerate(self.scene.objects):
            if j in named:
                continue
            core = mz.erode(self.labels == j + 1, self.sc.erode) & ~allowed & ~self.artifacts
            if core.sum() < 2:
                continue
            # soft share of the core that changed colour: 0 within shift_tol, 1 beyond shift_full
            d = mz.dist(self.E_m[core], self.T_blur[core])
            u = float(np.clip((d - cfg.shift_tol) / (cfg.shift_full - cfg.shift_tol), 0, 1).mean())
            self.measures[f"changed_{j}"] = u
            if u < 0.05:
                continue
            seen = np.median(self.E_m[core], axis=0)
            looks, d = mz.nearest_colour(seen)
            if looks == bg and d < 60 and u >= 0.6:
                gone.append((j, u))
            elif u < 0.6:
                self.excluded |= self.labels == j + 1
                self._add("preserving", cfg.change_cost * u, f"part of the {obj.name} changed")
            else:
                self.excluded |= self.labels == j + 1
                now = f"it looks {looks} now" if d < 60 else "it looks different now"
                self._add(
                    "preserving", cfg.change_cost * u, f"the {obj.name} changed colour ({now})"
                )
        return gone

    def _objects_visible(self) -> list[tuple[int, float]]:
        """Global/style edits: each object still stands out from its surroundings."""
        cfg, gone, w = self.cfg, [], line_width(self.n)
        sig = self.blur_sigma  # a blurred outline is fainter: compare at the same blur
        o_blur = mz.smooth(self.O, sig) if sig > 0 else self.O
        for j, _obj in enumerate(self.scene.objects):
            m = self.labels == j + 1
            c = mz.object_contrast([self.T_blur, o_blur, self.E], m, w)
            if c is None or min(c[0], c[1]) < 40:  # not visible in the target: nothing to keep
                continue
            c_t, c_o, c_e = c
            kept = c_e / min(c_t, c_o)
            self.measures[f"contrast_{j}"] = kept
            u = float(np.clip((cfg.retain_ok - kept) / (cfg.retain_ok - cfg.retain_lost), 0, 1))
            if u > 0:
                gone.append((j, u))
        return gone

    def _background_tint(self, allowed: np.ndarray) -> None:
        cfg = self.cfg
        core = mz.erode(self.labels == 0, self.sc.erode) & ~allowed & ~self.artifacts
        if core.sum() < 0.05 * self.sc.area:
            return
        t = mz.region_shift(self.E_m, self.O, core)
        shift = float(np.linalg.norm(t))
        self.measures["background_shift"] = shift
        u = float(np.clip((shift - cfg.shift_tol) / (cfg.tint_full - cfg.shift_tol), 0, 1))
        if u > 0:
            self.tint = t.astype(np.float32)
            looks, d = mz.nearest_colour(rgb(self.scene.background) + t)
            what = f"it turned {looks}" if d < 45 else texts.tint_word(t)
            bg = self.scene.background
            self._add(
                "preserving", cfg.change_cost * u, f"the {bg} background changed colour ({what})"
            )

    def _deviations(self, skip: np.ndarray | None = None) -> None:
        """Split what deviates inside the target's flat regions into shapes and artifacts.

        A deviating pixel differs from the original and from the target, and from its own
        region's overall shift (so a uniformly recoloured region does not count). Its connected
        component is a *shape* when it is mostly a clean colour (of the scene or the palette)
        and at least a few pixels thick, else an *artifact* (a blend: ghost, band, smudge).
        """
        if hasattr(self, "shapes"):
            return
        cfg = self.cfg
        seg, k = mz.segments(self.T_ref.astype(np.uint8))
        w = 2 * self.sc.erode + 1
        lo = mz.ndimage.minimum_filter(seg, size=w, mode="nearest")
        hi = mz.ndimage.maximum_filter(seg, size=w, mode="nearest")
        cores = np.where(lo == hi, seg, 0)
        res = mz.segment_residual(self.E_m, self.T_ref, cores, k)
        changed = (mz.dist(self.E_m, self.O) > cfg.deviate_tol) & (
            mz.dist(self.E_m, self.T_ref) > cfg.deviate_tol
        )
        dev = (res > cfg.deviate_tol) & changed & (cores > 0)
        if skip is not None:
            dev &= ~skip
        solid = mz.distance_to_set(self.E_m, self.known, dev) < cfg.solid_tol
        self.shapes: list[np.ndarray] = []
        self.blends = np.zeros_like(dev)
        for c in mz.components(dev):
            ys, xs = np.nonzero(c)
            extent = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
            # a band or streak: thinner than the smallest object yet longer than the largest
            band = len(ys) / extent < 0.055 * self.n and extent > 0.4 * self.n
            if solid[c].mean() >= 0.5 and not band:
                self.shapes.append(c)
            else:
                self.blends |= c

    def _appeared(
        self, allowed: np.ndarray
    ) -> list[tuple[str, str, float, np.ndarray, np.ndarray]]:
        """Solid shapes on the original background, unlike both the target and the original."""
        self._deviations()
        free = mz.erode(self.labels == 0, self.sc.erode) & ~allowed
        out = []
        for c in self.shapes:
            c = c & free
            u = float(c.sum()) / self.ref_area
            if u < self.cfg.min_blob:
                continue
            self.excluded |= mz.dilate(c, 1 + self.sc.erode)
            seen = np.median(self.E_m[c], axis=0)
            colour, _ = mz.nearest_colour(seen)
            out.append((colour, region_name(*mz.centroid(c), self.n), min(u, 1.5), c, seen))
        return out

    # -- quality --------------------------------------------------------------------------
    def _quality(self) -> None:
        cfg, k = self.cfg, self.sc.median
        # 1. bands: rows or columns whose brightness is offset, alternating with clean ones
        bands = self.bands
        u = float(bands.sum()) / self.ref_area
        self.measures["banding"] = u
        if u >= cfg.min_artifact:
            self._add("quality", cfg.artifact_cost * u, "colour banding across the image")
        # 2. noise: what the median filter removes, where the scene is flat
        hf = mz.dist(self.E, self.E_m)
        g = np.zeros(hf.shape, bool)
        g[:, 1:] |= mz.dist(self.E_m[:, 1:], self.E_m[:, :-1]) > 80
        g[1:, :] |= mz.dist(self.E_m[1:, :], self.E_m[:-1, :]) > 80
        self.flat_ref = mz.flat_mask(self.T_ref, k)  # also used by the scene check
        flat = self.flat_ref & mz.flat_mask(self.O, k) & ~mz.dilate(g, 2)
        noisy = (hf > cfg.noise_tol) & flat & ~bands
        u = float(noisy.sum()) / self.ref_area
        self.measures["noise"] = u
        if u >= cfg.min_artifact:
            where = texts.places(mz.components(mz.dilate(noisy, 1)), self.n)
            self._add("quality", cfg.artifact_cost * u, f"noise blotches in the {where}")
        # 3. blends: colours of no object, or thin streaks, inside regions that should be flat
        self._deviations(skip=bands)
        u = float(self.blends.sum()) / self.ref_area
        self.measures["blend"] = u
        if u >= cfg.min_artifact:
            self._add("quality", cfg.artifact_cost * u, texts.blend(self, self.blends))
        self.artifacts = mz.dilate(noisy | self.blends, 1) | bands
        # 4. blur: steepness of edges relative to the target's
        s_e, n_e = mz.sharpness(self.E)
        # hard-edged targets score ~1, so a sharp edited image needs no comparison
        s_t, n_t = (1.0, n_e) if s_e >= 0.95 else mz.sharpness(self.T_ref)
        if n_e >= 6 and n_t >= 6:
            ratio = s_e / max(s_t, 1e-6)
            self.blur_sigma = mz.blur_sigma(ratio)  # following/preserving compare at this blur
            if self.native < self.n:  # only blur beyond what the lower resolution explains
                t = self.T_ref.astype(np.uint8)
                s_lo, _ = mz.sharpness(
                    mz.resize(mz.resize(t, self.native), self.n).astype(np.float32)
                )
                ratio = min(1.0, s_e / max(s_lo, 1e-6))
            self.measures["sharpness"] = ratio
            b = float(np.clip((cfg.blur_free - ratio) / (cfg.blur_free - cfg.blur_full), 0, 1))
            self._add(
                "quality",
                cfg.blur_cost * b,
                "the image is blurry" if b > 0.5 else "the image is slightly blurry",
            )
