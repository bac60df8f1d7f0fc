"""Pixel measurements behind the oracle judge (no scoring, no text: see ``oracle.py``).

All functions take float32 images of shape (H, W, 3) with values in [0, 255] and boolean masks
of shape (H, W). Three filtered views of an image are used, each for what it is good at:

* ``smooth``  (Gaussian, sigma = size/64 px): averages zero-mean noise away while keeping the
  amount of colour change; used for *how much of the edit was done*.
* ``median``  (k x k, k = 5 at 64 px): removes noise and thin artifacts yet keeps flat regions
  and straight edges exactly; used for *which colour is where*.
* the raw image minus its median: the high-frequency residual, i.e. *noise*.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter
from scipy import ndimage

from .scene import COLOURS, PALETTE_ARRAY

EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Scale:
    """Filter sizes for an image side of ``size`` pixels (all tuned at 64 px)."""

    size: int

    @property
    def s(self) -> float:
        return self.size / 64

    @property
    def sigma(self) -> float:
        return max(0.5, self.s)

    @property
    def median(self) -> int:
        return 2 * max(1, round(2 * self.s)) + 1

    @property
    def erode(self) -> int:
        return max(1, round(2 * self.s))

    @property
    def area(self) -> float:
        """Pixels per unit area (a 64 px image has 4096)."""
        return self.size * self.size


def resize(img: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a uint8 image to size x size (the oracle's only resampling)."""
    if img.shape[:2] == (size, size):
        return img
    return np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BILINEAR))


def smooth(img: np.ndarray, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter(img, sigma=(sigma, sigma, 0), mode="nearest", truncate=3.0)


def median(img: np.ndarray, k: int) -> np.ndarray:
    """k x k median per channel (edges replicated) of an image with integer values 0..255."""
    u8 = np.clip(img, 0, 255).astype(np.uint8)
    out = Image.fromarray(u8).filter(ImageFilter.MedianFilter(k))  # C, ~2x scipy's speed
    return np.asarray(out, dtype=np.float32)


def dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel Euclidean RGB distance, shape (H, W)."""
    d = a - b
    return np.sqrt(np.einsum("...c,...c->...", d, d))


CROSS = ndimage.generate_binary_structure(2, 1)  # 4-neighbourhood: n steps = a diamond


def erode(mask: np.ndarray, n: int) -> np.ndarray:
    """``n`` steps of 4-neighbour erosion (outside the image counts as empty).

    Same result as ``ndimage.binary_erosion(mask, CROSS, iterations=n, border_value=0)``, in
    numpy slices: several times faster on the small masks the oracle uses.
    """
    out = np.asarray(mask, bool)
    for _ in range(max(0, n)):
        new = out.copy()
        new[0, :] = new[-1, :] = False
        new[:, 0] = new[:, -1] = False
        new[1:] &= out[:-1]
        new[:-1] &= out[1:]
        new[:, 1:] &= out[:, :-1]
        new[:, :-1] &= out[:, 1:]
        out = new
    return out


def dilate(mask: np.ndarray, n: int) -> np.ndarray:
    """``n`` steps of 4-neighbour dilation (a diamond of radius n); same result as
    ``ndimage.binary_dilation(mask, CROSS, iterations=n)``, in numpy slices."""
    out = np.asarray(mask, bool)
    for _ in range(max(0, n)):
        new = out.copy()
        new[1:] |= out[:-1]
        new[:-1] |= out[1:]
        new[:, 1:] |= out[:, :-1]
        new[:, :-1] |= out[:, 1:]
        out = new
    return out


def nearest_colour(c: np.ndarray) -> tuple[str, float]:
    """The palette name nearest to an RGB vector, and its distance."""
    d = np.linalg.norm(PALETTE_ARRAY - np.asarray(c, np.float32), axis=1)
    k = int(np.argmin(d))
    return COLOURS[k], float(d[k])


def colour_code(img: np.ndarray) -> np.ndarray:
    """(...,) int64 code of each RGB triple of a uint8 image (sorting codes is fast)."""
    img = img.astype(np.int64)
    return (img[..., 0] << 16) | (img[..., 1] << 8) | img[..., 2]


def unique_colours(img: np.ndarray, return_counts: bool = False):
    """The distinct colours of a uint8 image as (K, 3) uint8 (and their pixel counts)."""
    codes, counts = np.unique(colour_code(img).ravel(), return_counts=True)
    cols = np.stack([(codes >> 16) & 255, (codes >> 8) & 255, codes & 255], axis=-1).astype(
        np.uint8
    )
    return (cols, counts) if return_counts else cols


def distinct_colours(*imgs: np.ndarray) -> np.ndarray:
    """(K, 3) float32: the palette plus every colour that occurs in the given uint8 images."""
    cols = [PALETTE_ARRAY] + [unique_colours(img).astype(np.float32) for img in imgs]
    return np.concatenate(cols)


def distance_to_set(img: np.ndarray, colours: np.ndarray, where: np.ndarray) -> np.ndarray:
    """(H, W): distance of each pixel in ``where`` to the nearest colour in ``colours`` (else inf)."""
    out = np.full(img.shape[:2], np.inf, dtype=np.float32)
    px = img[where]
    if len(px) and len(colours):
        d2 = ((px[:, None, :] - colours[None, :, :]) ** 2).sum(-1)
        out[where] = np.sqrt(d2.min(axis=1))
    return out


def flat_mask(img: np.ndarray, k: int) -> np.ndarray:
    """Pixels whose k x k neighbourhood has a single colour in ``img`` (exact images only)."""
    code = colour_code(img)
    lo = ndimage.minimum_filter(code, size=k, mode="nearest")
    hi = ndimage.maximum_filter(code, size=k, mode="nearest")
    return lo == hi


def segments(img: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected regions of identical colour (4-connected). Returns (labels (H, W), count)."""
    code = colour_code(img)
    labels = np.zeros(img.shape[:2], dtype=np.int32)
    n = 0
    for c in np.unique(code):
        lab, k = ndimage.label(code == c)
        labels[lab > 0] = lab[lab > 0] + n
        n += k
    return labels, n


def components(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected components of ``mask``, largest first, as boolean masks."""
    lab, n = ndimage.label(mask, structure=EIGHT)
    if n == 0:
        return []
    sizes = np.bincount(lab.ravel())[1:]
    return [lab == (k + 1) for k in np.argsort(-sizes, kind="stable")]


def centroid(mask: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    return float(xs.mean()) + 0.5, float(ys.mean()) + 0.5


def completion(
    edited_s: np.ndarray,
    original_s: np.ndarray,
    target_s: np.ndarray,
    region: np.ndarray,
    tol: float,
) -> float:
    """How much of the required change happened, in [0, 1] (1 = the edited image is the target).

    ``1 - sum(max(|E - T| - tol, 0)) / sum(max(|O - T| - tol, 0))`` over ``region``: the share of
    the colour change from the original to the target that is still missing or wrong. Pixels
    that should stay put but moved count against it too. ``tol`` forgives small colour errors.
    """
    d_e = np.maximum(dist(edited_s, target_s)[region] - tol, 0).sum()
    d_o = np.maximum(dist(original_s, target_s)[region] - tol, 0).sum()
    if d_o <= 1e-6:  # nothing left to judge (e.g. all of it explained by other failures)
        return 1.0
    return float(np.clip(1 - d_e / d_o, 0.0, 1.0))


def projection(
    edited_s: np.ndarray, original_s: np.ndarray, target_s: np.ndarray, region: np.ndarray
) -> float:
    """Least-squares ``a`` in ``E - O = a (T - O)`` over ``region``: < 0 = the opposite change."""
    want = (target_s - original_s)[region]
    got = (edited_s - original_s)[region]
    den = float((want * want).sum())
    return float((got * want).sum() / den) if den > 0 else 0.0


def sharpness(img: np.ndarray, min_contrast: float = 25.0) -> tuple[float, int]:
    """Mean steepness of the strong edges of ``img`` and the number of edge samples.

    At each strong edge (contrast >= ``min_contrast`` across 6 pixels, per channel and axis)
    the largest one-pixel step is divided by the contrast: 1.0 for a hard edge, about 0.4 after
    a Gaussian blur of sigma 1 px, independent of the colours involved.
    """
    ratios = []
    for axis in (0, 1):
        x = np.moveaxis(img, axis, 1)  # differences along axis 1 now
        if x.shape[1] < 7:
            continue
        d = x[:, 1:] - x[:, :-1]  # d[:, k] = x[k+1] - x[k]
        a = np.abs(d)
        peak = ndimage.maximum_filter1d(a, size=5, axis=1, mode="constant")
        dk, ak, pk = d[:, 2:-2], a[:, 2:-2], peak[:, 2:-2]
        contrast = x[:, 5:] - x[:, :-5]  # x[k+3] - x[k-2] for k = 2 .. W-4
        sel = (np.abs(contrast) >= min_contrast) & (ak >= pk) & (np.sign(dk) == np.sign(contrast))
        ratios.append(np.minimum(ak[sel] / np.abs(contrast[sel]), 1.0))
    r = np.concatenate(ratios) if ratios else np.zeros(0)
    return (float(r.mean()) if len(r) else 1.0), int(len(r))


def region_shift(edited_m: np.ndarray, reference: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Median colour shift (3,) of ``edited_m`` against ``reference`` over ``where``."""
    if not where.any():
        return np.zeros(3, np.float32)
    return np.median(edited_m[where] - reference[where], axis=0)


def segment_residual(
    edited_m: np.ndarray,
    target: np.ndarray,
    cores: np.ndarray,
    n: int,
    intact_tol: float = 40.0,
    intact_share: float = 0.3,
) -> np.ndarray:
    """(H, W): |E - T - shift_of_its_segment| inside segment cores (labels 1..n), else 0.

    Removing each segment's own median shift means a uniformly recoloured region (a tint, a
    weaker or stronger global effect) leaves no residual: what remains is *structure inside a
    region that should be flat*: stray shapes, ghosts, bands, smudges.
    """
    out = np.zeros(edited_m.shape[:2], np.float32)
    diff = edited_m - target
    idx = cores > 0
    if not idx.any():
        return out
    lab = cores[idx]
    d = diff[idx]
    err = np.sqrt(np.einsum("pc,pc->p", d, d))
    # A region that still largely shows its target colour is intact (its deviations are
    # local); otherwise it was recoloured as a whole and its median shift is taken out.
    size = np.bincount(lab, minlength=n + 1)
    good = np.bincount(lab, weights=err < intact_tol, minlength=n + 1)
    shifts = np.zeros((n + 1, 3), np.float32)
    for k in np.nonzero((size > 0) & (good < intact_share * size))[0]:
        shifts[k] = np.median(d[lab == k], axis=0)
    out[idx] = dist(d, shifts[lab])
    return out


_BLUR_TABLE: tuple[np.ndarray, np.ndarray] | None = None


def blur_sigma(ratio: float) -> float:
    """The Gaussian blur (px) that lowers :func:`sharpness` of hard edges to ``ratio``."""
    global _BLUR_TABLE
    if _BLUR_TABLE is None:
        step = np.zeros((24, 24, 3), np.float32)
        step[:, 12:] = 200.0
        sigmas = np.linspace(0.0, 4.0, 41)
        ratios = np.array([sharpness(smooth(step, s) if s > 0 else step)[0] for s in sigmas])
        _BLUR_TABLE = (ratios[::-1], sigmas[::-1])  # ascending ratios for np.interp
    if ratio >= 0.9:
        return 0.0
    return float(np.interp(ratio, *_BLUR_TABLE))


def band_lines(edited: np.ndarray, target: np.ndarray, min_offset: float = 15.0) -> np.ndarray:
    """(H, W) mask of rows/columns that form brightness bands against the target.

    Per line, the median absolute luminance difference to the target; banding = at least three
    short runs of offset lines (each at most 15% of the image, together >= 10% of the lines)
    repeating at a regular period. A half-done edit gives one long or ragged run instead, and
    a local change moves no line's median.
    """
    lum_d = np.abs((edited - target) @ np.array([0.299, 0.587, 0.114], np.float32))
    out = np.zeros(lum_d.shape, bool)
    for axis in (0, 1):  # axis 0: rows (median over x), axis 1: columns
        prof = np.median(lum_d, axis=1 - axis)
        on = prof > min_offset
        n = len(on)
        edges = np.diff(np.r_[0, on.astype(np.int8), 0])
        starts, ends = np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0]
        short = [(a, b) for a, b in zip(starts, ends) if b - a <= 0.15 * n]
        if len(short) < 3 or sum(b - a for a, b in short) < 0.1 * n:
            continue
        period = np.diff([a for a, _ in short])
        if period.max() > 0.25 * n or period.std() > 0.2 * period.mean():
            continue  # not a regular pattern of stripes (e.g. a half-done edit's ragged edge)
        for a, b in short:
            if axis == 0:
                out[a:b, :] = True
            else:
                out[:, a:b] = True
    return out


def noise_level(
    edited: np.ndarray, edited_m: np.ndarray, flat: np.ndarray, tol: float = 60.0
) -> float:
    """Image-wide noise: the share of channel values more than ``tol`` off the median view.

    Counted on ``flat`` (where the reference is flat), and only in the direction away from
    the nearer end of the 0..255 range (then doubled), so that clipping does not hide noise on
    saturated colours: Gaussian noise of sigma 30 gives ~0.05, 45 ~0.17, 60 ~0.3, 80 ~0.4,
    uniform noise ~0.55 (Shapes-Edit targets, 32 and 64 px).
    """
    count = int(np.count_nonzero(flat))
    if not count:
        return 0.0
    off = np.where(edited_m > 127.5, edited_m - edited, edited - edited_m) > tol
    return float(2 * np.count_nonzero(off & flat[..., None]) / (3 * count))


def object_contrast(imgs: list[np.ndarray], mask: np.ndarray, width: int) -> list[float] | None:
    """How much an object stands out in each image: the median colour of its rim (``width`` px
    inside the mask) against the median of a ring just outside it. None if either is empty."""
    band = mask & ~erode(mask, width)
    ring = dilate(mask, width + 1) & ~dilate(mask, 1)
    if not band.any() or not ring.any():
        return None
    return [float(np.linalg.norm(np.median(x[band], 0) - np.median(x[ring], 0))) for x in imgs]
