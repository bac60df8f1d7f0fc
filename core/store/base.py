"""Connections, transactions, migrations and the content-addressed image files.

Connections (one per thread, reused, plus an idle keep-alive): :mod:`core.store.connections`.

Writes run in :meth:`StoreBase.transaction`, which starts with ``BEGIN IMMEDIATE``: the write
lock is taken up front, so reads made inside the transaction cannot go stale before the
write (no read-then-upgrade deadlocks, no ``SQLITE_BUSY_SNAPSHOT``), and either everything in
the block is committed or nothing is.

Image files are written before the rows that reference them, each atomically
(:func:`core.fileio.write_atomic`: temporary file in the same directory, fsync, then
``os.replace``). A failure between the two can leave an
unreferenced file behind -- harmless, since the name is the content hash -- but never a row
that points at a missing or half-written file.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from PIL import Image
from sqlite_utils import Database

from core.fileio import write_atomic
from core.images import ImageError, encode_png, image_hash, load_image
from core.rewards import PERSPECTIVES, Label, Rewards, RewardValidationError

from .connections import Connections
from .errors import NotFoundError, StoreBusyError, StoreError, StoreInputError
from .schema import MIGRATIONS, TABLES


def now() -> str:
    """The current UTC time as ISO-8601 with microseconds (sorts correctly as text)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def dumps(value: Any, what: str = "meta") -> str:
    """Canonical JSON (sorted keys) for JSON columns; clear error for unserialisable values."""
    if value is None:
        value = {}
    try:
        return json.dumps(value, sort_keys=True, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise StoreInputError(f"{what} must be JSON-serialisable: {e}.") from None


def require_text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise StoreInputError(f"{what} must be a non-empty string, got {value!r}.")
    return value


def require_choice(value: Any, choices: tuple[str, ...], what: str) -> str:
    if value not in choices:
        raise StoreInputError(f"{what} must be one of {', '.join(choices)}; got {value!r}.")
    return value


def as_rewards(value: Any) -> Rewards:
    """A :class:`Rewards` from a Rewards, or a mapping perspective -> Label | {score, text} | score.

    Unknown or missing perspectives and out-of-range scores raise RewardValidationError.
    """
    if isinstance(value, Rewards):
        return value
    if not isinstance(value, Mapping):
        raise RewardValidationError(
            "rewards must be a Rewards or a mapping of perspective -> score, "
            f"got {type(value).__name__}"
        )
    normal: dict[str, Any] = {}
    for name, item in value.items():
        if isinstance(item, Label):
            item = item.to_dict()
        elif not isinstance(item, Mapping):
            item = {"score": item, "text": ""}
        normal[name] = item
    return Rewards.from_dict(normal)


def rewards_columns(rewards: Rewards, prefix: str = "") -> dict[str, Any]:
    cols: dict[str, Any] = {}
    for name, label in rewards.items():
        cols[f"{prefix}{name}"] = label.score
        cols[f"{prefix}{name}_text"] = label.text
    return cols


def rewards_from_row(row: Mapping[str, Any], prefix: str = "") -> Rewards | None:
    if row.get(f"{prefix}{PERSPECTIVES[0]}") is None:
        return None
    return Rewards.from_scores(
        [row[f"{prefix}{p}"] for p in PERSPECTIVES],
        [row.get(f"{prefix}{p}_text") or "" for p in PERSPECTIVES],
    )


@dataclass(frozen=True)
class Blob:
    """A validated image ready to be stored: its content hash, size and the decoded pixels."""

    hash: str
    mode: str
    width: int
    height: int
    image: Image.Image

    def row(self, nbytes: int, created_at: str) -> dict[str, Any]:
        return {
            "hash": self.hash,
            "mode": self.mode,
            "width": self.width,
            "height": self.height,
            "bytes": nbytes,
            "created_at": created_at,
        }


class StoreBase:
    """Opening, migrating, transactions and image files (module docstring); the connections
    are :class:`core.store.connections.Connections`."""

    def __init__(self, path: str | os.PathLike, *, busy_timeout: float = 30.0) -> None:
        if str(path) == ":memory:":
            raise StoreInputError(
                "the store needs a file path (images are kept in a folder beside the database)."
            )
        self.path = Path(path).expanduser().resolve()
        self.images_dir = self.path.parent / f"{self.path.stem}_images"
        self.busy_timeout = float(busy_timeout)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._connections = Connections(self.path, self.busy_timeout)
        self._finalizer = weakref.finalize(self, self._connections.close)
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise
        self._connections.open_keepalive()

    # -- lifetime ----------------------------------------------------------------------------
    def close(self) -> None:
        """Close every thread's connection and the keep-alive; the store cannot be used
        afterwards (calls raise :class:`StoreError`).

        Idempotent, and safe from any thread: a connection that another thread is using is
        closed when its block ends. Closing the last connection lets SQLite checkpoint the
        WAL into the database file and delete it. Stores are also context managers (``with
        Store(p) as s:``), and an unreferenced store closes itself when it is garbage
        collected.
        """
        self._finalizer()

    @property
    def closed(self) -> bool:
        return self._connections.closed

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- connections -------------------------------------------------------------------------
    @contextlib.contextmanager
    def db(self) -> Iterator[Database]:
        """A ``sqlite_utils.Database`` on this thread's connection (core.store.connections: reused,
        nestable). SQLite's "database is locked" after the busy timeout becomes
        :class:`StoreBusyError`."""
        try:
            conn = self._connections.enter()
        except sqlite3.OperationalError as e:
            self._raise_if_busy(e)
            raise
        keep = False
        try:
            yield conn.db
            keep = True
        except StoreError:
            keep = True  # the store's own refusals leave the connection clean
            raise
        except sqlite3.OperationalError as e:
            self._raise_if_busy(e)
            raise
        finally:
            self._connections.exit(conn, keep)

    def _raise_if_busy(self, e: sqlite3.OperationalError) -> None:
        """Raise a StoreBusyError with advice when ``e`` is SQLite's lock timeout."""
        if "locked" not in str(e) and "busy" not in str(e):
            return
        raise StoreBusyError(
            f"the store {self.path} stayed locked by another writer for {self.busy_timeout:g} s "
            "(another studio, an annotate or import run, or a long export?); nothing was "
            "written. Retry when it is done, or open the store with a longer busy_timeout."
        ) from e

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Database]:
        """A write transaction (``BEGIN IMMEDIATE``): commit on success, roll back on error.

        Inside another transaction on the same thread it is a savepoint instead: its block is
        undone on error, and what it wrote is committed (or not) with the outer transaction.
        """
        with self.db() as db:
            conn = db.conn
            if conn.in_transaction:
                conn.execute("SAVEPOINT store_nested")
                try:
                    yield db
                except BaseException:
                    if conn.in_transaction:  # SQLite may already have rolled everything back
                        conn.execute("ROLLBACK TO store_nested")
                        conn.execute("RELEASE store_nested")
                    raise
                conn.execute("RELEASE store_nested")
                return
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                conn.rollback()
                raise
            conn.commit()

    def _migrate(self) -> None:
        """WAL mode and the migrations, on a connection of their own that is closed after, so
        that nothing of a concurrent opening (the rollback-journal file before WAL is on)
        lingers in the thread's reused connection."""
        try:
            conn = self._connections.connect()
        except sqlite3.OperationalError as e:
            self._raise_if_busy(e)
            raise
        try:
            db = Database(conn, execute_plugins=False)
            if db.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
                raise OSError(f"cannot switch {self.path} to WAL mode (is it on a network drive?)")
            conn.execute("BEGIN IMMEDIATE")
            try:
                MIGRATIONS.apply(db)
            except BaseException:
                conn.rollback()
                raise
            conn.commit()
        except sqlite3.OperationalError as e:
            self._raise_if_busy(e)
            raise
        finally:
            conn.close()

    @property
    def migrations(self) -> list[str]:
        """Names of the applied migrations, oldest first (the schema version is the last)."""
        with self.db() as db:
            return [m.name for m in MIGRATIONS.applied(db)]

    def count(self, table: str) -> int:
        """Number of rows in one of the store's tables."""
        require_choice(table, TABLES, "table")
        with self.db() as db:
            return db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]

    # -- images ------------------------------------------------------------------------------
    def image_path(self, h: str) -> Path:
        """Where the PNG with hash ``h`` lives (whether or not it exists)."""
        if not isinstance(h, str) or len(h) != 64 or not all(c in "0123456789abcdef" for c in h):
            raise StoreInputError(f"{h!r} is not an image hash (64 lowercase hex characters).")
        return self.images_dir / h[:2] / f"{h}.png"

    def image(self, h: str) -> Image.Image:
        """The stored image with hash ``h`` (mode RGB, or L for masks)."""
        path = self.image_path(h)
        with self.db() as db:
            known = db.execute("SELECT 1 FROM images WHERE hash = ?", [h]).fetchone()
        if not known:
            raise NotFoundError(f"no image with hash {h} is stored.")
        try:
            with Image.open(path) as img:
                img.load()
                return img.copy()
        except FileNotFoundError:
            raise NotFoundError(
                f"image {h} is registered but its file {path} is missing."
            ) from None

    def put_image(self, src: Any, *, mask: bool = False) -> str:
        """Store one image (any input :func:`core.images.load_image` accepts); return its hash."""
        blob = prepare_blob(src, mask=mask, name="the image")
        row = self._write_blob(blob, now())
        with self.transaction() as db:
            insert_image_rows(db, [row])
        return blob.hash

    def _write_blob(self, blob: Blob, created_at: str) -> dict[str, Any]:
        """Write the PNG file if it is not there yet (atomically); return the images row."""
        path = self.image_path(blob.hash)
        with contextlib.suppress(FileNotFoundError):
            return blob.row(path.stat().st_size, created_at)
        data = encode_png(blob.image)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data)
        return blob.row(len(data), created_at)


# -- per-thread connections ------------------------------------------------------------------
def prepare_blob(src: Any, *, mask: bool, name: str) -> Blob:
    """Load and validate an image (or mask, stored as 8-bit grey) without touching the store."""
    img = load_image(src, name=name)
    if mask:
        r, g, b = img.split()
        if r.tobytes() != g.tobytes() or r.tobytes() != b.tobytes():
            raise ImageError(f"{name} must be greyscale (a mask), but it has coloured pixels.")
        img = r
    return Blob(image_hash(img), img.mode, img.width, img.height, img)


def insert_image_rows(db: Database, rows: list[dict[str, Any]]) -> None:
    db.conn.executemany(
        "INSERT INTO images (hash, mode, width, height, bytes, created_at) "
        "VALUES (:hash, :mode, :width, :height, :bytes, :created_at) "
        "ON CONFLICT(hash) DO NOTHING",
        rows,
    )


def fetch_one(db: Database, sql: str, params: list | tuple = ()) -> dict[str, Any] | None:
    rows = list(db.query(sql, params))
    return rows[0] if rows else None


def require_row(db: Database, table: str, key: str, value: Any, what: str) -> dict[str, Any]:
    row = fetch_one(db, f"SELECT * FROM {table} WHERE {key} = ?", [value])
    if row is None:
        raise NotFoundError(f"no {what} with {key} {value!r} exists.")
    return row
