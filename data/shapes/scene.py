"""The Shapes world: a flat background and 1-4 non-overlapping flat shapes, rendered exactly.

A :class:`Scene` is pure data (JSON-serialisable): an image size, a background colour name and a
list of :class:`Obj` (shape, colour name, centre, radius). :func:`render` turns it into a
``uint8`` array of shape (H, W, 3) with hard edges and no anti-aliasing, so every pixel has an
exact palette colour and the oracle judge can reason about pixels exactly.

Design notes

* Colours are *named* (``PALETTE``): instructions, failure texts and meta all use the names.
  Any two palette colours are at least ~95 apart in RGB (Euclidean), so a recolour is never
  subtle and "which colour is this?" has a clear answer even for noisy model outputs.
* Each shape fits inside the circle of radius ``r`` around its centre; two objects never
  come closer than ``r_i + r_j + gap``, so masks never touch and every object keeps a core.
* Masks are computed with vectorised numpy on the object's bounding box (pixel centres at
  ``x + 0.5``), which makes a 64x64 scene render in well under a millisecond.
* Position words (``left``, ``top-right``, ``centre``, ...) are defined once here and shared by
  the generator (strict zones, so the ground truth is unambiguous) and the oracle (loose zones,
  so a model that puts an object slightly off still counts as "on the left").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

# Named colours. Chosen pairwise >= ~95 apart in RGB so that colours never blur into each other.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 130, 20),
    "yellow": (245, 225, 50),
    "green": (40, 170, 60),
    "cyan": (40, 200, 210),
    "blue": (30, 90, 230),
    "purple": (140, 50, 200),
    "pink": (240, 120, 190),
    "brown": (120, 70, 30),
    "black": (25, 25, 25),
    "white": (245, 245, 245),
    "grey": (128, 128, 128),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
PALETTE_ARRAY = np.array([PALETTE[c] for c in COLOURS], dtype=np.float32)  # (K, 3)

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond")

# Position words: strict zones (generator) and loose zones (oracle), as fractions of the size.
# Each zone is (x_min, x_max, y_min, y_max) for the object's centre.
POSITIONS: tuple[str, ...] = (
    "left",
    "right",
    "top",
    "bottom",
    "centre",
    "top-left",
    "top-right",
    "bottom-left",
    "bottom-right",
)
_LO, _HI = 1 / 3, 2 / 3
STRICT_ZONES: dict[str, tuple[float, float, float, float]] = {
    "left": (0, _LO, 0, 1),
    "right": (_HI, 1, 0, 1),
    "top": (0, 1, 0, _LO),
    "bottom": (0, 1, _HI, 1),
    "centre": (0.38, 0.62, 0.38, 0.62),
    "top-left": (0, _LO, 0, _LO),
    "top-right": (_HI, 1, 0, _LO),
    "bottom-left": (0, _LO, _HI, 1),
    "bottom-right": (_HI, 1, _HI, 1),
}
_LLO, _LHI = 0.45, 0.55  # loose: anything clearly on that side of the middle
LOOSE_ZONES: dict[str, tuple[float, float, float, float]] = {
    "left": (0, _LLO, 0, 1),
    "right": (_LHI, 1, 0, 1),
    "top": (0, 1, 0, _LLO),
    "bottom": (0, 1, _LHI, 1),
    "centre": (0.28, 0.72, 0.28, 0.72),
    "top-left": (0, _LLO, 0, _LLO),
    "top-right": (_LHI, 1, 0, _LLO),
    "bottom-left": (0, _LLO, _LHI, 1),
    "bottom-right": (_LHI, 1, _LHI, 1),
}

MIN_SIZE, MAX_SIZE = 32, 256


@dataclass(frozen=True)
class SceneConfig:
    """How random scenes are drawn. Radii are fractions of the image size."""

    size: int = 64  # image side in pixels (square images), 32..256
    min_objects: int = 1  # objects per scene, inclusive range
    max_objects: int = 4
    min_radius: float = 0.10  # object radius range (64 px -> 6.4 .. 10.9 px)
    max_radius: float = 0.17
    gap: float = 0.04  # minimum free space between two objects' bounding circles
    shapes: tuple[str, ...] = SHAPES
    colours: tuple[str, ...] = COLOURS

    def __post_init__(self) -> None:
        check_size(self.size)
        if not 1 <= self.min_objects <= self.max_objects <= 6:
            raise ValueError(
                f"need 1 <= min_objects <= max_objects <= 6, got {self.min_objects}..{self.max_objects}"
            )
        if not 0.05 <= self.min_radius <= self.max_radius <= 0.25:
            raise ValueError(
                f"radii must satisfy 0.05 <= min_radius <= max_radius <= 0.25 (fractions of the "
                f"size), got {self.min_radius}..{self.max_radius}"
            )
        unknown = [s for s in self.shapes if s not in SHAPES]
        if unknown or not self.shapes:
            raise ValueError(f"unknown shapes {unknown}; choose from {', '.join(SHAPES)}")
        unknown = [c for c in self.colours if c not in PALETTE]
        if unknown or len(self.colours) < 3:
            raise ValueError(
                f"colours must be at least 3 palette names; unknown: {unknown}; "
                f"palette: {', '.join(COLOURS)}"
            )

    @property
    def gap_px(self) -> float:
        return max(2.0, self.gap * self.size)


def check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise ValueError(f"image size must be an integer, got {size!r}")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"image size must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {size}")
    return int(size)


@dataclass(frozen=True)
class Obj:
    """One flat shape. ``x, y`` is the centre in pixels (0 = left/top edge), ``r`` the radius."""

    shape: str
    colour: str
    x: float
    y: float
    r: float

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; choose from {', '.join(SHAPES)}")
        if self.colour not in PALETTE:
            raise ValueError(f"unknown colour {self.colour!r}; choose from {', '.join(COLOURS)}")
        if not self.r > 0:
            raise ValueError(f"object radius must be positive, got {self.r}")

    @property
    def name(self) -> str:
        """How instructions and failure texts refer to the object: ``"red circle"``."""
        return f"{self.colour} {self.shape}"

    def replace(self, **kw: Any) -> Obj:
        return Obj(**{**asdict(self), **kw})


@dataclass(frozen=True)
class Scene:
    size: int
    background: str
    objects: tuple[Obj, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        check_size(self.size)
        if self.background not in PALETTE:
            raise ValueError(f"unknown background colour {self.background!r}")
        object.__setattr__(self, "objects", tuple(self.objects))

    def to_dict(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "background": self.background,
            "objects": [asdict(o) for o in self.objects],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scene:
        try:
            objs = tuple(Obj(**o) for o in d["objects"])
            return cls(int(d["size"]), d["background"], objs)
        except (KeyError, TypeError) as e:
            raise ValueError(f"malformed scene description {d!r}: {e}") from None

    def replace_object(self, i: int, obj: Obj | None) -> Scene:
        """A copy with object ``i`` replaced (or removed when ``obj`` is None)."""
        objs = list(self.objects)
        if obj is None:
            del objs[i]
        else:
            objs[i] = obj
        return Scene(self.size, self.background, tuple(objs))

    def with_object(self, obj: Obj) -> Scene:
        return Scene(self.size, self.background, (*self.objects, obj))

    def with_background(self, colour: str) -> Scene:
        return Scene(self.size, colour, self.objects)


# -- masks and rendering --------------------------------------------------------------------


def _star_vertices(r: float, inner: float = 0.5, points: int = 5) -> np.ndarray:
    ang = -np.pi / 2 + np.arange(2 * points) * np.pi / points
    rad = np.where(np.arange(2 * points) % 2 == 0, r, r * inner)
    return np.stack([rad * np.cos(ang), rad * np.sin(ang)], axis=1)  # (2P, 2)


def _triangle_vertices(r: float) -> np.ndarray:
    # Equilateral, pointing up, circumradius r, shifted down so its bounding box is centred.
    ang = -np.pi / 2 + np.arange(3) * 2 * np.pi / 3
    v = np.stack([r * np.cos(ang), r * np.sin(ang)], axis=1)
    return v + np.array([0.0, r * 0.25])


def _inside_polygon(dx: np.ndarray, dy: np.ndarray, verts: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test, vectorised over the grid (dx, dy)."""
    inside = np.zeros(dx.shape, dtype=bool)
    n = len(verts)
    for k in range(n):
        x1, y1 = verts[k]
        x2, y2 = verts[(k + 1) % n]
        if y1 == y2:
            continue
        crosses = (y1 > dy) != (y2 > dy)
        x_at = x1 + (dy - y1) * (x2 - x1) / (y2 - y1)
        inside ^= crosses & (dx < x_at)
    return inside


def shape_mask_local(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Boolean mask of ``shape`` with radius ``r`` at offsets (dx, dy) from its centre."""
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        h = 0.78 * r
        return (np.abs(dx) <= h) & (np.abs(dy) <= h)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= r
    if shape == "triangle":
        return _inside_polygon(dx, dy, _triangle_vertices(r))
    if shape == "star":
        return _inside_polygon(dx, dy, _star_vertices(r))
    raise ValueError(f"unknown shape {shape!r}")


@lru_cache(maxsize=4096)
def object_mask(obj: Obj, size: int) -> np.ndarray:
    """(size, size) bool mask of one object; only its bounding box is evaluated.

    Cached (objects are immutable); the returned array is read-only, copy it to modify it.
    """
    mask = np.zeros((size, size), dtype=bool)
    x0, x1 = max(0, int(np.floor(obj.x - obj.r)) - 1), min(size, int(np.ceil(obj.x + obj.r)) + 2)
    y0, y1 = max(0, int(np.floor(obj.y - obj.r)) - 1), min(size, int(np.ceil(obj.y + obj.r)) + 2)
    if x0 >= x1 or y0 >= y1:
        mask.flags.writeable = False
        return mask
    dx = (np.arange(x0, x1, dtype=np.float64) + 0.5 - obj.x)[None, :]
    dy = (np.arange(y0, y1, dtype=np.float64) + 0.5 - obj.y)[:, None]
    dx, dy = np.broadcast_arrays(dx, dy)
    mask[y0:y1, x0:x1] = shape_mask_local(obj.shape, dx, dy, obj.r)
    mask.flags.writeable = False
    return mask


def label_map(scene: Scene) -> np.ndarray:
    """(H, W) int array: 0 for background, i + 1 where object i is drawn (later objects on top)."""
    labels = np.zeros((scene.size, scene.size), dtype=np.int16)
    for i, obj in enumerate(scene.objects):
        labels[object_mask(obj, scene.size)] = i + 1
    return labels


def rgb(colour: str) -> np.ndarray:
    return np.array(PALETTE[colour], dtype=np.uint8)


def render(scene: Scene) -> np.ndarray:
    """The scene as a (H, W, 3) uint8 image with hard edges."""
    img = np.empty((scene.size, scene.size, 3), dtype=np.uint8)
    img[:] = rgb(scene.background)
    for obj in scene.objects:
        img[object_mask(obj, scene.size)] = rgb(obj.colour)
    return img


# -- positions ------------------------------------------------------------------------------


def in_zone(x: float, y: float, size: int, position: str, loose: bool = False) -> bool:
    zones = LOOSE_ZONES if loose else STRICT_ZONES
    if position not in zones:
        raise ValueError(f"unknown position {position!r}; choose from {', '.join(POSITIONS)}")
    x0, x1, y0, y1 = zones[position]
    return x0 * size <= x <= x1 * size and y0 * size <= y <= y1 * size


def region_name(x: float, y: float, size: int) -> str:
    """The 3x3-grid name of a point, used in failure texts: ``"top-left"``, ``"centre"``..."""
    col = min(2, int(3 * x / size))
    row = min(2, int(3 * y / size))
    vert = ("top", "", "bottom")[row]
    horiz = ("left", "", "right")[col]
    if vert and horiz:
        return f"{vert}-{horiz}"
    return vert or horiz or "centre"


# -- random scenes --------------------------------------------------------------------------


def fits(scene_objects: tuple[Obj, ...] | list[Obj], cand: Obj, size: int, gap: float) -> bool:
    """True when ``cand`` lies inside the image and keeps ``gap`` from every object."""
    if cand.x - cand.r < 1 or cand.y - cand.r < 1:
        return False
    if cand.x + cand.r > size - 1 or cand.y + cand.r > size - 1:
        return False
    for o in scene_objects:
        if np.hypot(o.x - cand.x, o.y - cand.y) < o.r + cand.r + gap:
            return False
    return True


def random_radius(rng: np.random.Generator, cfg: SceneConfig) -> float:
    return float(round(rng.uniform(cfg.min_radius, cfg.max_radius) * cfg.size, 2))


def random_scene(rng: np.random.Generator, cfg: SceneConfig, tries: int = 200) -> Scene:
    """A background and ``min_objects..max_objects`` objects placed without overlap.

    Objects that cannot be placed after ``tries`` attempts are skipped, but never below
    ``min_objects`` (the scene is then drawn again). Names ("red circle") are unique.
    """
    for _ in range(50):
        background = str(rng.choice(cfg.colours))
        n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
        objs: list[Obj] = []
        for _ in range(n):
            obj = random_object(rng, cfg, objs, background, tries=tries)
            if obj is not None:
                objs.append(obj)
        if len(objs) >= cfg.min_objects:
            return Scene(cfg.size, background, tuple(objs))
    raise RuntimeError(f"could not place {cfg.min_objects} objects in a {cfg.size}px scene")


def random_object(
    rng: np.random.Generator,
    cfg: SceneConfig,
    existing: list[Obj] | tuple[Obj, ...],
    background: str,
    zone: str | None = None,
    tries: int = 200,
    shape: str | None = None,
    colour: str | None = None,
) -> Obj | None:
    """A new object that fits among ``existing`` (optionally with its centre in ``zone``)."""
    names = {o.name for o in existing}
    size = cfg.size
    for _ in range(tries):
        sh = shape or str(rng.choice(cfg.shapes))
        col = colour or str(rng.choice([c for c in cfg.colours if c != background]))
        if f"{col} {sh}" in names or col == background:
            if shape is not None and colour is not None:
                return None
            continue
        r = random_radius(rng, cfg)
        if zone is None:
            x0, x1, y0, y1 = 0.0, 1.0, 0.0, 1.0
        else:
            x0, x1, y0, y1 = STRICT_ZONES[zone]
        lo_x, hi_x = max(x0 * size, r + 1), min(x1 * size, size - r - 1)
        lo_y, hi_y = max(y0 * size, r + 1), min(y1 * size, size - r - 1)
        if lo_x > hi_x or lo_y > hi_y:
            continue
        x = float(round(rng.uniform(lo_x, hi_x), 2))
        y = float(round(rng.uniform(lo_y, hi_y), 2))
        cand = Obj(sh, col, x, y, r)
        if fits(existing, cand, size, cfg.gap_px):
            return cand
    return None
