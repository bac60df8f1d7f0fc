"""Serve images to the browser: store files as they are, blind copies under neutral names,
and cached difference views.

Gradio copies every file a handler returns into its cache (hashing it first) unless the
file lies under a *static* path, and the file's name reaches the page and the API response.
The studio avoids both the copy and any telling name:

* **Store images** (``<db>_images/ab/<hash>.png``) are already canonical PNGs (written by
  :func:`core.images.encode_png`: no metadata) named by their pixel hash, which says
  nothing about who made them. :func:`serve_statically` makes the store's image folder
  static, so Gradio hands them out from where they are (still behind login: the file route
  checks the session) instead of hashing and copying each one on every response.
* **Blind copies** (:class:`NeutralImages`) give a store image a fresh random ``uuid4`` name
  in a private temporary folder for the blind rating tab, so the same output never shows
  the same name twice and no path can be correlated with a system.
  :meth:`NeutralImages.blind` serves the images of one blind pair as *indistinguishable
  files*: fresh copies (never hard links, which would carry the store file's modification
  time into ``Last-Modified`` and the ``ETag``, and so the order in which the systems were
  run), padded to one common byte size with a private PNG chunk that decoders skip, and
  stamped with one fixed modification time. The HTTP headers of the images of a pair are
  therefore identical, and the pixels are untouched (no decoding, no re-encoding).
* **Difference views** (:class:`DifferenceImages`): ``|edited - original| x 3`` is computed
  once per pair of image hashes, written as PNG and reused (bounded, least recently used
  first out) instead of being recomputed and re-encoded on every request.

The temporary folders are created with ``tempfile.mkdtemp`` (mode 0700) and removed at exit;
nothing in them outlives the process. Each keeps only its most recent ``keep`` files, so a
long-running studio does not fill the disk; a page that still shows an evicted image after
thousands of newer ones would need to reload it.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import tempfile
import threading
import uuid
import zlib
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from pathlib import Path
from urllib.parse import quote

import gradio as gr
from PIL import Image, ImageChops

from core.fileio import write_atomic
from core.images import encode_png


def serve_statically(folders: Iterable[str | Path]) -> None:
    """Let Gradio serve files under ``folders`` in place, without copying them to its cache.

    Gradio keeps this list for the whole process (``gr.set_static_paths``); files are still
    served only to logged-in users when the studio has login.
    """
    gr.set_static_paths([Path(f) for f in folders])


def _private_folder(root: str | Path | None, prefix: str) -> Path:
    if root is None:
        folder = Path(tempfile.mkdtemp(prefix=prefix))
        atexit.register(shutil.rmtree, folder, True)
        return folder
    folder = Path(root)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class NeutralImages:
    """Store images as ``<tmp>/<uuid4>.png``, a fresh name each time (module docstring)."""

    def __init__(self, root: str | Path | None = None, keep: int = 5000) -> None:
        self.keep = keep  # files kept; older ones were served long ago
        self._recent: deque[Path] = deque()
        self._lock = threading.Lock()
        self.root = _private_folder(root, "mrc-studio-media-")

    def _track(self, path: Path) -> str:
        with self._lock:
            self._recent.append(path)
            while len(self._recent) > self.keep:
                self._recent.popleft().unlink(missing_ok=True)
        return str(path)

    def blind(self, store_files: Sequence[str | Path]) -> list[str]:
        """Serve store PNGs that must not be told apart (the input and the two outputs of a
        blind pair): each gets a fresh random name, all get the same byte size and the same
        modification time (module docstring). Returns the new paths, in order."""
        data = []
        for f in store_files:
            try:
                data.append(Path(f).read_bytes())
            except FileNotFoundError:
                raise FileNotFoundError(f"the store's image file {f} is missing.") from None
        # Round the common size up, so it does not even say which of the two is larger.
        size = -(-max(len(d) + PAD_OVERHEAD for d in data) // SIZE_STEP) * SIZE_STEP
        paths = []
        for d in data:
            path = self.root / f"{uuid.uuid4().hex}.png"
            path.write_bytes(pad_png(d, size))  # a fresh name: nobody reads it yet
            os.utime(path, (FIXED_MTIME, FIXED_MTIME))
            paths.append(self._track(path))
        return paths


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PAD_CHUNK = b"mrPd"  # ancillary (lower-case 1st letter), private (2nd): decoders skip it
PAD_OVERHEAD = 12  # a chunk's length, type and CRC fields
SIZE_STEP = 1024  # blind files are padded to a multiple of this many bytes
FIXED_MTIME = 1_000_000_000  # 2001-09-09: the Last-Modified of every blind file


def pad_png(data: bytes, size: int) -> bytes:
    """``data`` (a PNG file) grown to exactly ``size`` bytes by a private chunk of zeros
    inserted before IEND; the image itself is unchanged."""
    iend = data.rfind(b"IEND") - 4  # the IEND chunk starts with its 4-byte length
    if not data.startswith(PNG_SIGNATURE) or iend < len(PNG_SIGNATURE):
        raise ValueError("pad_png expects a complete PNG file.")
    fill = size - len(data) - PAD_OVERHEAD
    if fill < 0:
        raise ValueError(f"a PNG of {len(data)} bytes cannot be padded to {size} bytes.")
    body = PAD_CHUNK + bytes(fill)
    chunk = fill.to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")
    return data[:iend] + chunk + data[iend:]


_TIMES_3 = [min(255, 3 * v) for v in range(256)] * 3  # per-band lookup table: clip(3 v, 255)


def difference(original: Image.Image, edited: Image.Image) -> Image.Image:
    """clip(3 |edited - original|, 0, 255) per pixel and channel: where the edit changed the
    image. (Pillow's C loops; about twice as fast as the same in numpy int16 at 512 px.)"""
    original = original.convert("RGB")
    edited = edited.convert("RGB")
    if edited.size != original.size:
        edited = edited.resize(original.size, Image.Resampling.BILINEAR)
    return ImageChops.difference(edited, original).point(_TIMES_3)


class DifferenceImages:
    """Difference views of store image pairs, computed once and kept as PNG files.

    ``path(original, edited)`` takes two store image *files*; they are content-addressed, so
    the pair of paths identifies the result, which is named by a hash of the pair.
    Thread-safe: two requests for the same pair may both compute it, and the atomic write
    makes that harmless.
    """

    def __init__(self, root: str | Path | None = None, keep: int = 2000) -> None:
        self.keep = keep  # files kept, least recently used evicted first
        self.root = _private_folder(root, "mrc-studio-diff-")
        self._used: OrderedDict[str, Path] = OrderedDict()
        self._lock = threading.Lock()

    def path(self, original: str | Path, edited: str | Path) -> str:
        original, edited = Path(original), Path(edited)
        key = hashlib.sha256(f"{original.resolve()}\0{edited.resolve()}".encode()).hexdigest()
        key = key[:32]
        target = self.root / f"{key}.png"
        with self._lock:
            if key in self._used and target.exists():
                self._used.move_to_end(key)
                return str(target)
        with Image.open(original) as a, Image.open(edited) as b:
            data = encode_png(difference(a, b))
        # No fsync (~16 ms on a loaded disk, on the annotator's wait): only this process's
        # record in ``_used`` makes a file trusted, and a new process recomputes.
        write_atomic(target, data, durable=False)
        with self._lock:
            self._used[key] = target
            self._used.move_to_end(key)
            while len(self._used) > self.keep:
                self._used.popitem(last=False)[1].unlink(missing_ok=True)
        return str(target)


# -- prefetching the next item's images (Review tab) ----------------------------------------------

# Runs once when the component mounts; `watch` calls back whenever an event sets the value: the
# "file=..." tails of the next item's image URLs. Their head is taken from an image on screen
# (the same root Gradio gives its own <img> tags), so the browser caches exactly the URLs the
# next item will use. The loads start once the images on screen have loaded (they must not
# compete with them), and the Image objects are kept: Chromium's memory cache keeps a
# decoded image only while something holds it, and an <img> given the same URL in the same
# page then shows it without another request.
PREFETCH_JS = """
const held = new Map();  // URL -> Image, for the URLs of the latest list only
watch("value", () => {
  const files = props.value;
  if (!Array.isArray(files) || !files.length) return;
  const src = [...document.querySelectorAll(SHOWN)].map((img) => img.src)
    .find((s) => s.includes("/gradio_api/file="));
  if (!src) return;
  const root = src.slice(0, src.indexOf("/gradio_api/file=") + "/gradio_api/".length);
  const loaded = (img) => img.complete ? Promise.resolve() : new Promise((done) => {
    img.addEventListener("load", done, {once: true});
    img.addEventListener("error", done, {once: true});
    setTimeout(done, 2000);
  });
  // After a frame (the new item's <img> tags have their URLs), once they have loaded.
  requestAnimationFrame(() => Promise.all(
    [...document.querySelectorAll(SHOWN)].map(loaded)
  ).then(() => {
    const urls = files.map((file) => root + file);
    for (const url of [...held.keys()]) if (!urls.includes(url)) held.delete(url);
    for (const url of urls) {
      if (held.has(url)) continue;  // loaded for an earlier list
      const img = new Image();
      img.decoding = "async";
      img.src = url;
      held.set(url, img);
    }
  }));
});
"""

PREFETCH_API_INFO = {
    "type": "array",
    "items": {"type": "string"},
    "description": "the next item's image files (the tails of their /gradio_api/file= URLs), "
    "which the page loads in the background",
}


def prefetch_box(elem_id: str, shown: Sequence[str]) -> gr.HTML:
    """An output that makes the page load images in the background; it renders nothing.

    Its value is a list of :func:`file_url_tail` strings (or ``None``). ``shown`` are the
    elem_ids of the image components on screen: the prefetch waits for their images and
    takes the URLs' root from them. (A ``gr.HTML`` like :func:`studio.notice.notice_box`.)
    """
    selector = ", ".join(f"#{e} img" for e in shown)
    js = PREFETCH_JS.replace("SHOWN", repr(selector))
    box = gr.HTML(None, html_template="", js_on_load=js, elem_id=elem_id)
    box.api_info = lambda: PREFETCH_API_INFO  # type: ignore[method-assign]
    return box


def file_url_tail(path: str | Path) -> str:
    """``file=<path>``, quoted as Gradio quotes the paths of the files it serves."""
    return "file=" + quote(str(path), safe="/")
