"""Serve images to the browser under neutral names.

Gradio copies every file a handler returns into its cache and keeps the file's *name*
(``<cache>/<hash>/<name>``), and that name reaches the page and the API response. Store paths
and benchmark output paths can carry a system or model name, so the studio never hands Gradio
one of those paths. :class:`NeutralImages` re-encodes each image (which also drops EXIF / PNG
text chunks that could name the producer) into a private temporary folder under a random
``uuid4`` name and returns that path instead.

The folder is created with ``tempfile.mkdtemp`` (mode 0700) and removed at exit; nothing in
it outlives the process. Gradio copies a returned file into its own cache while it answers
the request, so only the most recent ``keep`` files are kept (a long-running studio does not
fill the disk).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import threading
import uuid
from collections import deque
from pathlib import Path

import numpy as np
from PIL import Image

from core.images import encode_png, load_image


class NeutralImages:
    """Writes images as ``<tmp>/<uuid4>.png`` with no metadata; see the module docstring."""

    def __init__(self, root: str | Path | None = None, keep: int = 5000) -> None:
        self.keep = keep  # files kept; older ones were served long ago
        self._recent: deque[Path] = deque()
        self._lock = threading.Lock()
        if root is None:
            self.root = Path(tempfile.mkdtemp(prefix="mrc-studio-media-"))
            atexit.register(shutil.rmtree, self.root, True)
        else:
            self.root = Path(root)
            self.root.mkdir(parents=True, exist_ok=True)

    def put(self, image: Image.Image | np.ndarray | bytes | str | Path) -> str:
        """Return the path of a metadata-free PNG copy of ``image`` under a random name."""
        pixels = load_image(image)
        path = self.root / f"{uuid.uuid4().hex}.png"
        path.write_bytes(encode_png(pixels))
        with self._lock:
            self._recent.append(path)
            while len(self._recent) > self.keep:
                self._recent.popleft().unlink(missing_ok=True)
        return str(path)
