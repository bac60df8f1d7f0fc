"""Safe image I/O: the one place images enter MRC Studio.

Every image that reaches the store, a judge or a model goes through :func:`load_image` (a PIL
image handed straight to the pipeline through :func:`to_rgb`, its conversion step), which
turns "whatever the user had" into a plain 8-bit RGB ``PIL.Image`` or raises :class:`ImageError`
with a sentence that says what is wrong with the input. The steps, in order:

1. **Size limits before decoding.** Encoded bytes are capped (``max_bytes``) before they are
   read into memory, and the pixel count announced by the file header is checked against
   ``max_pixels`` *before* the pixel data is decoded, so a 20-kB PNG that claims to be
   50 000 x 50 000 (a decompression bomb) is refused without allocating anything.
2. **Full decode.** ``Image.load()`` decodes everything, so a truncated or corrupt file fails
   here and never later inside a training loop. (We do not set ``LOAD_TRUNCATED_IMAGES``.)
3. **EXIF orientation** is applied (``ImageOps.exif_transpose``): a phone photo stored sideways
   with an orientation tag comes out the way it was shot.
4. **Conversion to RGB**, mode by mode:

   ============================  ============================================================
   mode                          conversion
   ============================  ============================================================
   RGB                           unchanged
   L, 1, RGBX, YCbCr, HSV        ``convert("RGB")`` (1-bit: 0 -> 0, 1 -> 255)
   RGBA, LA, PA, RGBa, La, P     composited on white (transparent pixels become white;
   with transparency             a colour-keyed ``transparency`` entry counts as alpha)
   P                             palette lookup
   CMYK                          through the embedded ICC profile to sRGB when there is a
                                 readable one, else Pillow's plain CMYK -> RGB formula
   I;16, I;16B, I;16L            16-bit: ``round(v * 255 / 65535)`` (0 -> 0, 65535 -> 255)
   I (32-bit integers)           values in [0, 255] are 8-bit (as ``convert("I")`` of an L
                                 image holds them) and kept; else 16-bit, scaled as above;
                                 values outside [0, 65535] are refused
   F (32-bit floats)             values in [0, 1] are scaled by 255; else as ``I`` (rounded)
   ============================  ============================================================

   Other colour profiles (e.g. Display P3) are ignored and RGB values are read as sRGB, as in
   every common training pipeline. The result carries no ``info`` (no EXIF, no ICC profile).

Inputs may be a path, ``bytes``, a binary file-like object, a ``numpy`` array (``uint8``,
``uint16``, ``bool`` or float in [0, 1]; shape ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or
``(H, W, 4)``) or a ``PIL.Image``.

:func:`encode_png` writes canonical PNG bytes (no metadata, fixed settings; deterministic for a
given Pillow/zlib build). :func:`image_hash` identifies an image by its *pixels*: sha256 over
mode, size and raw pixel bytes. We deliberately do not hash the PNG bytes: compressed bytes
depend on the zlib build (Pillow wheels have switched zlib implementations), and the store's
content addresses and triplet ids must be the same on every machine that has the same pixels.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import zlib
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 64_000_000  # 8000 x 8000; below Pillow's own bomb threshold (~89 M)
DEFAULT_MAX_BYTES = 100 * 2**20  # 100 MiB of encoded data
PNG_COMPRESS_LEVEL = 6  # zlib level for canonical PNGs (Pillow's default; fixed for determinism)
HASH_PREFIX = b"mrc-image-v1"  # versioned, so a change of the pixel hash can never collide

ImageSource = (
    str | os.PathLike | bytes | bytearray | memoryview | IO[bytes] | np.ndarray | Image.Image
)

# What Pillow raises while decoding broken data, depending on the format and on where it breaks.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, IndexError)
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N"}


class ImageError(ValueError):
    """An input image cannot be used; the message says why in a full sentence."""


# -- loading ---------------------------------------------------------------------------------


def load_image(
    src: ImageSource,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    name: str | None = None,
) -> Image.Image:
    """Load ``src`` as an 8-bit RGB image, or raise :class:`ImageError`.

    ``name`` is used in error messages (defaults to the path, or a description of the input).
    The returned image is always a new object; the caller's image or array is never modified.
    """
    if max_pixels < 1 or max_bytes < 1:
        raise ValueError("max_pixels and max_bytes must be positive")
    if isinstance(src, Image.Image):
        label = name or "the given PIL image"
        _check_size(src.size, max_pixels, label)
        img = _decode(src, label)
    elif isinstance(src, np.ndarray):
        label = name or f"the given {src.dtype} array of shape {src.shape}"
        return _from_array(src, max_pixels, label)
    else:
        data, label = _read_bytes(src, max_bytes, name)
        if not data:
            raise ImageError(f"{label} is empty (0 bytes); expected an image file.")
        try:
            img = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise ImageError(
                f"{label} is not an image in a format Pillow can read "
                f"({len(data)} bytes starting with {data[:8]!r})."
            ) from None
        except Image.DecompressionBombError as e:
            raise ImageError(
                f"{label} is a possible decompression bomb and was not decoded: {e}"
            ) from None
        except _DECODE_ERRORS as e:
            raise ImageError(f"{label} is corrupt: its header cannot be read ({e}).") from None
        _check_size(img.size, max_pixels, label)
        img = _decode(img, label)
    return to_rgb(img, label)


def _read_bytes(src: Any, max_bytes: int, name: str | None) -> tuple[bytes, str]:
    """The encoded bytes of a path, bytes or file-like input, refusing more than max_bytes."""
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        label = name or f"image file {str(path)!r}"
        try:
            size = path.stat().st_size
            if not path.is_file():
                raise ImageError(f"{label} is not a regular file.")
            if size > max_bytes:
                raise ImageError(
                    f"{label} has {size:,} bytes, more than the limit of {max_bytes:,} bytes."
                )
            return path.read_bytes(), label
        except FileNotFoundError:
            raise ImageError(f"{label} does not exist.") from None
        except OSError as e:
            raise ImageError(f"{label} cannot be read: {e}.") from None
    if isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
        label = name or "the given image bytes"
    elif hasattr(src, "read"):
        label = name or f"image stream {getattr(src, 'name', type(src).__name__)!r}"
        try:
            data = src.read(max_bytes + 1)
        except OSError as e:
            raise ImageError(f"{label} cannot be read: {e}.") from None
        if isinstance(data, str):
            raise ImageError(f"{label} is a text stream; open the file in binary mode ('rb').")
    else:
        raise ImageError(
            f"cannot load an image from a {type(src).__name__}; expected a path, bytes, a "
            "binary file object, a numpy array or a PIL image."
        )
    if len(data) > max_bytes:
        raise ImageError(f"{label} has more than the limit of {max_bytes:,} bytes.")
    return data, label


def _check_size(size: tuple[int, int], max_pixels: int, label: str) -> None:
    w, h = size
    if w <= 0 or h <= 0:
        raise ImageError(f"{label} has zero size ({w} x {h} pixels).")
    if w * h > max_pixels:
        raise ImageError(
            f"{label} is {w} x {h} = {w * h:,} pixels, more than the limit of {max_pixels:,} "
            "pixels (a possible decompression bomb); it was not decoded."
        )


def _decode(img: Image.Image, label: str) -> Image.Image:
    """Decode all pixel data (catching truncation/corruption) and apply EXIF orientation."""
    try:
        img.load()
    except Image.DecompressionBombError as e:
        raise ImageError(
            f"{label} is a possible decompression bomb and was not decoded: {e}"
        ) from None
    except _DECODE_ERRORS as e:
        reason = str(e) or type(e).__name__
        kind = "truncated" if "truncated" in reason.lower() else "corrupt"
        raise ImageError(
            f"{label} is {kind}: its pixel data cannot be decoded ({reason})."
        ) from None
    try:
        return ImageOps.exif_transpose(img)
    except _DECODE_ERRORS as e:
        raise ImageError(f"{label} has an unreadable EXIF orientation tag ({e}).") from None


def to_rgb(img: Image.Image, label: str = "the image") -> Image.Image:
    """Any PIL mode -> a new 8-bit RGB image without ``info``, as in the module docstring's
    table (the one conversion of the project: :func:`load_image` and the pipeline's inputs).

    Raises :class:`ImageError` (a ``ValueError``) naming ``label`` when the values of an
    ``I`` or ``F`` image have no unambiguous 8-bit reading.
    """
    mode = img.mode
    if mode in _SIXTEEN_BIT_MODES:
        out = _gray_to_rgb(_scale16(np.asarray(img)))
    elif mode in ("I", "F"):
        out = _gray_to_rgb(_scale_wide_gray(np.asarray(img), mode, label))
    elif mode in _ALPHA_MODES or "transparency" in img.info:
        out = _on_white(img.convert("RGBA"))
    elif mode == "CMYK":
        out = _cmyk_to_rgb(img)
    else:
        try:
            out = img.convert("RGB")
        except ValueError as e:
            raise ImageError(
                f"{label} has mode {mode!r}, which cannot be converted to RGB ({e})."
            ) from None
    if out is img:  # a fresh object, so callers can never mutate each other's images
        out = img.copy()
    out.info = {}
    return out


def _scale16(a: np.ndarray) -> np.ndarray:
    """uint16-range integers -> uint8 with exact rounding of v * 255 / 65535."""
    return ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _scale_wide_gray(a: np.ndarray, mode: str, label: str) -> np.ndarray:
    """A 32-bit integer (I) or float (F) image -> uint8: floats in [0, 1] are scaled by 255;
    values in [0, 255] are 8-bit already (Pillow's ``convert("I")`` / ``convert("F")`` of an
    8-bit image); values up to 65535 are 16-bit and scaled by 255 / 65535."""
    if not np.all(np.isfinite(a)):
        raise ImageError(f"{label} contains NaN or infinite values.")
    lo, hi = float(a.min()), float(a.max())
    if lo < 0 or hi > 65535:
        kind = "a 32-bit integer" if mode == "I" else "a float"
        raise ImageError(
            f"{label} is {kind} image (mode {mode}) with values in [{lo:g}, {hi:g}]; only 16-bit "
            "(0..65535), 8-bit (0..255) or, for floats, [0, 1] data can be converted to 8 bit "
            "unambiguously; convert it to RGB yourself so that the intended scaling is explicit."
        )
    if mode == "F" and hi <= 1.0:
        return np.rint(a.astype(np.float64) * 255.0).astype(np.uint8)
    if hi <= 255:
        return np.rint(a.astype(np.float64)).astype(np.uint8)
    if mode == "I":
        return _scale16(a)
    return np.rint(a.astype(np.float64) / 257.0).astype(np.uint8)  # 255 / 65535 = 1 / 257


def _scale_float(a: np.ndarray, label: str) -> np.ndarray:
    if not np.all(np.isfinite(a)):
        raise ImageError(f"{label} contains NaN or infinite values.")
    lo, hi = float(a.min()), float(a.max())
    if lo < 0.0 or hi > 1.0:
        raise ImageError(
            f"{label} holds floats in [{lo:g}, {hi:g}]; float images must be in [0, 1]."
        )
    return np.rint(a.astype(np.float64) * 255.0).astype(np.uint8)


def _gray_to_rgb(a: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(a), mode="L").convert("RGB")


def _on_white(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _cmyk_to_rgb(img: Image.Image) -> Image.Image:
    profile = img.info.get("icc_profile")
    if profile:
        from PIL import ImageCms

        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(profile))
            return ImageCms.profileToProfile(
                img, src, ImageCms.createProfile("sRGB"), outputMode="RGB"
            )
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # unreadable profile: use the plain formula below (documented above)
    return img.convert("RGB")


def _from_array(a: np.ndarray, max_pixels: int, label: str) -> Image.Image:
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise ImageError(
            f"{label} is not an image: expected shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) "
            "with channels last."
        )
    _check_size((a.shape[1], a.shape[0]), max_pixels, label)
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif a.dtype == np.uint16:
        a = _scale16(a)
    elif np.issubdtype(a.dtype, np.floating):
        a = _scale_float(a, label)
    elif a.dtype != np.uint8:
        raise ImageError(
            f"{label} has dtype {a.dtype}; use uint8 (0..255), uint16 (0..65535), bool or "
            "float in [0, 1]."
        )
    a = np.ascontiguousarray(a)
    if a.ndim == 2:
        return Image.fromarray(a, mode="L").convert("RGB")
    if a.shape[2] == 4:
        return _on_white(Image.fromarray(a, mode="RGBA"))
    return Image.fromarray(a, mode="RGB")


# -- canonical encoding and hashing ----------------------------------------------------------

_CANONICAL_MODES = ("RGB", "L", "RGBA")


def _canonical(img: Image.Image) -> Image.Image:
    if not isinstance(img, Image.Image):
        raise ImageError(f"expected a PIL image, got {type(img).__name__}; use load_image first.")
    if img.mode not in _CANONICAL_MODES:
        raise ImageError(
            f"canonical images are RGB, L or RGBA, got mode {img.mode!r}; use load_image first."
        )
    if img.width <= 0 or img.height <= 0:
        raise ImageError(f"cannot encode an image of zero size ({img.width} x {img.height}).")
    return img


def encode_png(img: Image.Image) -> bytes:
    """Canonical PNG bytes: pixels only (no EXIF, ICC, text or time chunks), fixed settings."""
    img = _canonical(img)
    bare = Image.frombytes(img.mode, img.size, img.tobytes())  # drops every info entry
    buf = io.BytesIO()
    bare.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False)
    return buf.getvalue()


def image_hash(img: Image.Image) -> str:
    """sha256 (64 hex chars) of the image's mode, size and raw pixels; see the module docstring."""
    img = _canonical(img)
    h = hashlib.sha256(HASH_PREFIX)
    h.update(f" {img.mode} {img.width}x{img.height}\n".encode())
    h.update(img.tobytes())
    return h.hexdigest()


def cap_long_side(
    img: Image.Image, n: int, resample: Image.Resampling = Image.Resampling.LANCZOS
) -> Image.Image:
    """Downscale so the longer side is at most ``n`` pixels, keeping the aspect ratio.

    Images already small enough are returned as they are (the same object).
    """
    if n < 1:
        raise ValueError(f"the long-side cap must be at least 1 pixel, got {n}")
    w, h = img.size
    if max(w, h) <= n:
        return img
    scale = n / max(w, h)
    size = (n, max(1, round(h * scale))) if w >= h else (max(1, round(w * scale)), n)
    return img.resize(size, resample=resample)
