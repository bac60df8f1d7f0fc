"""core.images: every bad image kind gets a clear ImageError; every mode becomes correct RGB."""

from __future__ import annotations

import hashlib
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from core.images import ImageError, cap_long_side, encode_png, image_hash, load_image, to_rgb
from core.pipeline_inputs import normalize_images


def _encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _noise(h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny valid 1x1 PNG whose IHDR is patched to announce width x height (CRC fixed)."""
    data = bytearray(_encode(Image.new("L", (1, 1))))
    ihdr = 8  # after the signature: length(4) type(4) data(13) crc(4)
    data[ihdr + 8 : ihdr + 16] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr + 4 : ihdr + 21])) & 0xFFFFFFFF
    data[ihdr + 21 : ihdr + 25] = struct.pack(">I", crc)
    return bytes(data)


# -- every input kind -------------------------------------------------------------------------


def test_all_input_kinds_give_the_same_rgb_pixels(tmp_path):
    arr = _noise()
    png = _encode(Image.fromarray(arr))
    path = tmp_path / "x.png"
    path.write_bytes(png)
    sources = [arr, Image.fromarray(arr), png, bytearray(png), io.BytesIO(png), path, str(path)]
    for src in sources:
        img = load_image(src)
        assert img.mode == "RGB" and img.size == (32, 24)
        np.testing.assert_array_equal(np.asarray(img), arr)


def test_inputs_are_not_mutated_and_results_are_fresh_objects():
    arr = _noise()
    before = arr.copy()
    src = Image.fromarray(arr)
    out = load_image(src)
    assert out is not src
    out.putpixel((0, 0), (1, 2, 3))
    np.testing.assert_array_equal(arr, before)
    assert src.getpixel((0, 0)) == tuple(before[0, 0])


# -- bad inputs -------------------------------------------------------------------------------


def test_zero_byte_inputs(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    for src in (b"", io.BytesIO(b""), empty):
        with pytest.raises(ImageError, match=r"empty \(0 bytes\)"):
            load_image(src)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP", "TIFF"])
def test_truncated_images(fmt):
    data = _encode(Image.fromarray(_noise(64, 64)), fmt)
    with pytest.raises(ImageError, match="truncated|corrupt"):
        load_image(data[: len(data) // 2])


def test_corrupt_png_pixel_data_is_detected():
    data = bytearray(_encode(Image.fromarray(_noise(64, 64))))
    idat = data.index(b"IDAT")
    for i in range(idat + 20, idat + 60):
        data[i] ^= 0xFF
    with pytest.raises(ImageError, match="corrupt"):
        load_image(bytes(data))


def test_not_an_image():
    with pytest.raises(ImageError, match="not an image"):
        load_image(b"this is a text file, not a picture")
    with pytest.raises(ImageError, match="cannot load an image from a int"):
        load_image(42)  # type: ignore[arg-type]
    with pytest.raises(ImageError, match="binary mode"):
        load_image(io.StringIO("abc"))


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="does not exist"):
        load_image(tmp_path / "nope.png")


def test_decompression_bomb_is_refused_without_decoding(monkeypatch):
    def forbidden(self):
        raise AssertionError("the pixel data must not be decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", forbidden)
    # Above our limit but below Pillow's own: our header check refuses it.
    with pytest.raises(ImageError, match=r"5000 x 5000 = 25,000,000 pixels.*not decoded"):
        load_image(_png_claiming(5000, 5000), max_pixels=1_000_000)
    # Far above Pillow's limit: Pillow refuses at open, reported as an ImageError too.
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(_png_claiming(100_000, 100_000))


def test_pixel_and_byte_limits():
    data = _encode(Image.fromarray(_noise(64, 64)))
    with pytest.raises(ImageError, match="more than the limit of 1,000 pixels"):
        load_image(data, max_pixels=1000)
    with pytest.raises(ImageError, match="more than the limit of 100 bytes"):
        load_image(data, max_bytes=100)
    with pytest.raises(ImageError, match="more than the limit of 100 bytes"):
        load_image(io.BytesIO(data), max_bytes=100)
    with pytest.raises(ImageError, match="more than the limit"):
        load_image(np.zeros((100, 100, 3), np.uint8), max_pixels=9999)


def test_zero_size_images():
    with pytest.raises(ImageError, match="zero size"):
        load_image(np.zeros((0, 5, 3), np.uint8))
    with pytest.raises(ImageError, match="zero size"):
        load_image(Image.new("RGB", (0, 3)))


def test_bad_arrays():
    with pytest.raises(ImageError, match="channels last"):
        load_image(np.zeros((3, 8, 8), np.uint8))  # channels first
    with pytest.raises(ImageError, match="dtype int32"):
        load_image(np.zeros((4, 4), np.int32))
    with pytest.raises(ImageError, match=r"must be in \[0, 1\]"):
        load_image(np.full((4, 4), 2.0))
    with pytest.raises(ImageError, match="NaN"):
        load_image(np.full((4, 4), np.nan))


# -- mode conversion --------------------------------------------------------------------------


def test_cmyk_becomes_rgb():
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # no cyan, full magenta+yellow = red
    assert load_image(_encode(cmyk, "TIFF")).getpixel((0, 0)) == (255, 0, 0)
    r, g, b = load_image(_encode(cmyk, "JPEG", quality=100)).getpixel((4, 4))
    assert r > 240 and g < 15 and b < 15


def test_alpha_is_composited_on_white():
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 0)  # transparent red -> white
    rgba[0, 1] = (255, 0, 0, 255)  # opaque red stays red
    rgba[0, 2] = (0, 0, 0, 128)  # half-transparent black -> mid grey
    img = load_image(_encode(Image.fromarray(rgba, "RGBA")))
    assert img.mode == "RGB"
    assert img.getpixel((0, 0)) == (255, 255, 255)
    assert img.getpixel((1, 0)) == (255, 0, 0)
    assert img.getpixel((2, 0)) == (127, 127, 127)
    np.testing.assert_array_equal(np.asarray(load_image(rgba)), np.asarray(img))
    la = Image.new("LA", (2, 2), (0, 0))
    assert load_image(_encode(la)).getpixel((0, 0)) == (255, 255, 255)


def test_palette_transparency_and_colour_key():
    p = Image.new("P", (2, 2), 1)
    p.putpalette([10, 20, 30, 200, 0, 0])
    assert load_image(_encode(p)).getpixel((0, 0)) == (200, 0, 0)
    p.info["transparency"] = 1
    assert load_image(_encode(p)).getpixel((0, 0)) == (255, 255, 255)
    rgb = Image.new("RGB", (2, 2), (1, 2, 3))
    assert load_image(_encode(rgb, transparency=(1, 2, 3))).getpixel((0, 0)) == (255, 255, 255)


def test_sixteen_bit_is_scaled_not_clipped():
    values = np.array([[0, 65535, 128 * 257, 1000, 32767]], dtype=np.uint16)
    expected = [0, 255, 128, 4, 127]  # round(v * 255 / 65535)
    png = _encode(Image.fromarray(values))
    assert Image.open(io.BytesIO(png)).mode == "I;16"
    for src in (png, values, _encode(Image.fromarray(values), "TIFF")):
        img = load_image(src)
        assert img.mode == "RGB"
        assert [img.getpixel((i, 0))[0] for i in range(5)] == expected
    i32 = Image.fromarray(np.array([[70000]], dtype=np.int32), mode="I")
    with pytest.raises(ImageError, match="only 16-bit"):
        load_image(i32)


def test_one_bit_grey_and_float_modes():
    assert load_image(_encode(Image.new("1", (2, 2), 1))).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(Image.new("L", (2, 2), 77)).getpixel((1, 1)) == (77, 77, 77)
    f = Image.fromarray(np.full((2, 2), 0.5, np.float32))
    assert load_image(f).getpixel((0, 0)) == (128, 128, 128)
    assert load_image(np.ones((2, 2), bool)).getpixel((0, 0)) == (255, 255, 255)


def _grey(values: list[float], mode: str) -> Image.Image:
    dtype = {"I": np.int32, "F": np.float32, "I;16": np.uint16}[mode]
    return Image.fromarray(np.array([values], dtype=dtype), mode=mode)


def _cmyk_with_profile() -> Image.Image:
    from PIL import ImageCms

    img = Image.new("CMYK", (2, 1), (0, 255, 255, 0))
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    img.info["icc_profile"] = profile  # not a CMYK profile: unreadable for CMYK -> formula
    return img


def _palette_with_key() -> Image.Image:
    p = Image.new("P", (2, 1), 1)
    p.putpalette([10, 20, 30, 200, 0, 0])
    p.info["transparency"] = 1
    return p


# mode -> (image, the red channel of its pixels after conversion)
MODE_CASES = {
    "RGB": (Image.new("RGB", (2, 1), (9, 8, 7)), [9, 9]),
    "RGB colour key": (Image.new("RGB", (2, 1), (1, 2, 3)), [255, 255]),  # info set below
    "RGBA": (Image.new("RGBA", (2, 1), (0, 0, 0, 0)), [255, 255]),
    "LA": (Image.new("LA", (2, 1), (0, 255)), [0, 0]),
    "L": (Image.new("L", (2, 1), 77), [77, 77]),
    "1": (Image.new("1", (2, 1), 1), [255, 255]),
    "P": (Image.new("P", (2, 1), 0), [0, 0]),
    "P transparency": (_palette_with_key(), [255, 255]),
    "CMYK": (Image.new("CMYK", (2, 1), (0, 255, 255, 0)), [255, 255]),
    "CMYK unreadable profile": (_cmyk_with_profile(), [255, 255]),
    "YCbCr": (Image.new("RGB", (2, 1), (200, 200, 200)).convert("YCbCr"), [200, 200]),
    "I;16": (_grey([0, 65535], "I;16"), [0, 255]),
    "I 8-bit values": (_grey([0, 200], "I"), [0, 200]),
    "I 16-bit values": (_grey([128 * 257, 65535], "I"), [128, 255]),
    "F in [0, 1]": (_grey([0.5, 1.0], "F"), [128, 255]),
    "F 8-bit values": (_grey([77.0, 200.4], "F"), [77, 200]),
    "F 16-bit values": (_grey([257.0, 65535.0], "F"), [1, 255]),
}
MODE_CASES["RGB colour key"][0].info["transparency"] = (1, 2, 3)


@pytest.mark.parametrize("case", list(MODE_CASES))
def test_one_rgb_conversion_for_loading_and_the_pipeline(case):
    """load_image and the pipeline's inputs convert every mode the same way (core.images.to_rgb)."""
    img, red = MODE_CASES[case]
    loaded = load_image(img)
    piped = normalize_images(img, 1, 1)[0][0]
    for out in (to_rgb(img), loaded, piped):
        assert out.mode == "RGB" and out.size == img.size and out is not img and not out.info
        assert [out.getpixel((x, 0))[0] for x in range(2)] == red, case
    assert np.array_equal(np.asarray(loaded), np.asarray(piped))


@pytest.mark.parametrize(
    "img",
    [_grey([-1, 5], "I"), _grey([0, 70000], "I"), _grey([0.0, 70000.0], "F"),
     _grey([-0.5, 0.5], "F"), _grey([0.0, float("nan")], "F")],
)  # fmt: skip
def test_ambiguous_wide_grey_values_are_refused_everywhere(img):
    with pytest.raises(ImageError, match="NaN|only 16-bit"):
        load_image(img)
    with pytest.raises(ValueError, match=r"image\[0\] .*(NaN|only 16-bit)"):
        normalize_images(img, 1, 1)


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (20, 0, 40, 20))  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    out = load_image(_encode(img, "JPEG", exif=exif.tobytes(), quality=95))
    assert out.size == (20, 40)
    r, _, b = out.getpixel((10, 3))
    assert r > 200 and b < 50  # the red half is now on top
    r, _, b = out.getpixel((10, 36))
    assert b > 200 and r < 50
    assert "exif" not in out.info


# -- canonical encoding, hashing, resizing ----------------------------------------------------


def test_encode_png_is_canonical_and_lossless():
    img = Image.fromarray(_noise())
    tagged = img.copy()
    tagged.info["dpi"] = (300, 300)
    data = encode_png(img)
    assert encode_png(img) == data
    assert encode_png(tagged) == data  # metadata never reaches the bytes
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), np.asarray(img))
    with pytest.raises(ImageError, match="canonical images"):
        encode_png(Image.new("CMYK", (2, 2)))


def test_image_hash_identifies_pixels():
    arr = _noise(seed=3)
    via_png = load_image(_encode(Image.fromarray(arr)))
    via_bmp = load_image(_encode(Image.fromarray(arr), "BMP"))
    assert image_hash(via_png) == image_hash(via_bmp)
    changed = arr.copy()
    changed[0, 0, 0] ^= 1
    assert image_hash(Image.fromarray(changed)) != image_hash(via_png)
    grey = Image.new("L", (2, 2), 0)
    assert image_hash(grey) != image_hash(grey.convert("RGB"))
    # The definition is pinned: content addresses must not change between versions.
    expected = hashlib.sha256(b"mrc-image-v1 RGB 2x1\n" + b"\xff\x00\x00" * 2).hexdigest()
    assert image_hash(Image.new("RGB", (2, 1), (255, 0, 0))) == expected


def test_cap_long_side():
    img = Image.new("RGB", (100, 50))
    assert cap_long_side(img, 40).size == (40, 20)
    assert cap_long_side(Image.new("RGB", (30, 99)), 33).size == (10, 33)
    assert cap_long_side(img, 100) is img
    with pytest.raises(ValueError, match="at least 1"):
        cap_long_side(img, 0)
