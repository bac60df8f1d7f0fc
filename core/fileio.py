"""Crash-safe file writes: the project's one atomic ``write_atomic``.

A file that other code (or another process) may read at any moment -- a stored PNG, the batch
state of the annotator, a metrics cache -- must never be seen half written. The recipe:

1. write the bytes to a temporary file in the *same* directory (``os.replace`` is only atomic
   within one file system),
2. ``fsync`` it, so the data is on disk before the rename makes it visible (otherwise a power
   loss right after the rename can leave an empty or truncated file under the final name),
3. ``os.replace`` it over the target: readers see the old file or the whole new one.

On any failure the temporary file is removed and the error propagates; the target is untouched.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomic(path: str | os.PathLike, data: bytes | str, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically (``str`` is encoded as UTF-8).

    ``durable``: fsync the data before the rename, so that it survives a power loss. A cache
    that a new process never trusts (it recomputes what it has not written itself) can skip it:
    readers still see the old file or the whole new one, never a torn one.
    The parent directory must exist. Raises ``TypeError`` for anything but ``bytes``/``str``.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    elif not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"write_atomic needs bytes or str, got {type(data).__name__}.")
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:24]}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
