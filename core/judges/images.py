"""Image preparation for VLM judges: decode once, normalise, encode once per triplet.

Every image goes through :func:`core.images.load_image` (size limits before decoding, full decode
so truncation is caught, EXIF orientation, any mode to 8-bit RGB; a clear
:class:`core.images.ImageError` otherwise), then

* the long side is capped at ``max_side`` (default 512 px, Lanczos; never upscaled);
* it is encoded as PNG (lossless) or JPEG. ``"auto"`` keeps lossless sources lossless (PNG,
  WebP, BMP, TIFF, ...) and re-encodes JPEG sources as JPEG, so synthetic images keep their exact
  pixels -- the local judge server recognises Shapes images by their pixel hash -- while photos
  do not balloon into large PNGs.

The result is computed once per triplet and reused by every call: three-call mode sends the same
bytes three times, one-call mode once.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from core.images import ImageError, cap_long_side, encode_png, load_image

FORMATS = ("auto", "png", "jpeg")
ImagePrepError = ImageError  # the one error type for unusable images


@dataclass(frozen=True)
class PreparedImage:
    data: bytes  # the encoded bytes that are sent
    mime: str  # "image/png" or "image/jpeg"
    width: int
    height: int

    @property
    def data_url(self) -> str:
        return f"data:{self.mime};base64," + base64.b64encode(self.data).decode("ascii")

    @property
    def wire_bytes(self) -> int:
        """Bytes on the wire: the base64 length of the payload."""
        return 4 * ((len(self.data) + 2) // 3)


def _source_format(data: bytes) -> str:
    try:
        with Image.open(io.BytesIO(data)) as img:
            return (img.format or "").upper()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return ""  # load_image reports the real problem


def prepare_image(
    data: bytes, max_side: int = 512, fmt: str = "auto", jpeg_quality: int = 90, what: str = "image"
) -> PreparedImage:
    """Decode, orient, convert, downscale and re-encode one image (see the module docstring)."""
    if fmt not in FORMATS:
        raise ValueError(f"image format must be one of {FORMATS}, got {fmt!r}")
    if max_side < 16:
        raise ValueError(f"max_side must be at least 16 px, got {max_side}")
    img = cap_long_side(load_image(data, name=f"the {what}"), max_side)
    if fmt == "auto":
        fmt = "jpeg" if _source_format(data) in ("JPEG", "MPO") else "png"
    if fmt == "png":
        return PreparedImage(encode_png(img), "image/png", img.width, img.height)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=jpeg_quality)
    return PreparedImage(buf.getvalue(), "image/jpeg", img.width, img.height)


def image_tokens(width: int, height: int, detail: str = "auto") -> int:
    """OpenAI's published image token count for GPT-4o-class models (85 + 170 per 512 px tile).

    ``low`` detail is a flat 85; ``high``/``auto`` scale to fit 2048x2048, then the short side to
    768, and count 512-px tiles. Used to estimate tokens before a call (rate limits, --dry-run);
    the ledger itself uses the server's reported ``usage``.
    """
    if detail == "low":
        return 85
    w, h = float(width), float(height)
    if max(w, h) > 2048:
        s = 2048 / max(w, h)
        w, h = w * s, h * s
    if min(w, h) > 768:
        s = 768 / min(w, h)
        w, h = w * s, h * s
    return 85 + 170 * math.ceil(w / 512) * math.ceil(h / 512)
