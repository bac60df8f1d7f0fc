"""How a store talks to SQLite: one connection per thread, reused, and an idle keep-alive.

Connection policy: each *thread* gets one ``sqlite3`` connection per store, opened on its
first call and reused by every later call on that thread (Gradio runs handlers in a pool of
worker threads; a connection shared between threads would need a lock and would serialise
readers). Opening one is not free -- the file is opened, SQLite parses the schema again for
the connection's first statement, four ``PRAGMA`` s run -- and a Review step makes eight store
calls. Each connection sets ``busy_timeout`` (wait for a lock instead of failing at once),
``synchronous=NORMAL`` (safe with WAL: a crash can lose the last transactions but never
corrupts the database) and ``foreign_keys=ON``. WAL mode is a property of the database file
and is switched on once, when the store is opened.

* **Between calls a connection holds nothing**: it is in autocommit mode with no transaction
  and no statement running (the outermost :meth:`StoreBase.db` rolls back what a block left
  open), so the next call reads the newest committed data. A cursor must not outlive the
  block that made it.
* **Nesting.** :meth:`StoreBase.db` and :meth:`StoreBase.transaction` called inside another
  ``db()`` or ``transaction()`` on the same thread use the same connection: a nested ``db()``
  sees the outer transaction's uncommitted writes and neither commits, rolls back nor closes
  anything; a nested ``transaction()`` is a ``SAVEPOINT`` inside the outer transaction (all or
  nothing for its block, rolled back to on error; committed only with the outer one).
* **Errors.** A block that ends with one of the store's own errors (not found, conflict,
  locked, bad input) keeps its connection. Any other exception (an SQLite error, a bug, an
  interrupt) closes the thread's connection after rolling back, so the next call starts
  clean. SQLite's "database is locked" after the busy timeout becomes :class:`StoreBusyError`.
* **Closing.** :meth:`StoreBase.close` closes every thread's connection (idle ones at once, one
  in use when its outermost block ends) and the store refuses calls afterwards with a
  :class:`StoreError`. Connections of threads that have ended are closed when a new thread
  opens one.
* **fork().** SQLite connections must not be used or closed across ``fork()`` (the child shares
  the parent's descriptors and lock bookkeeping). In a child process a store forgets the
  parent's connections -- keeps them referenced, never touching them -- and opens its own.

The store also opens a *keep-alive* connection when it is created and holds it, idle, until
:meth:`StoreBase.close` (or the ``with`` block, or garbage collection). It does no work: it
only keeps the database open, because when the *last* connection to a WAL database closes,
SQLite checkpoints the WAL and deletes it (and the ``-shm`` index), and the next writer has to
recreate and sync both (about 10 ms per write). Thread connections come and go (a thread ends,
an error closes one), the keep-alive stays. It never starts a transaction, so it never holds
back a checkpoint or blocks a writer. A child process has none of its own.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import weakref
from pathlib import Path

from sqlite_utils import Database

from .errors import StoreError

_INHERITED: list[sqlite3.Connection] = []  # a forked child's copies: never used, never closed
_ALL_CONNECTIONS: weakref.WeakSet[Connections] = weakref.WeakSet()


class ThreadConnection:
    """One thread's connection to a store, the ``Database`` around it and how deeply the
    thread's ``db()`` blocks are nested on it."""

    __slots__ = ("conn", "db", "depth", "thread")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.db = Database(conn, execute_plugins=False)  # sets recursive_triggers once
        self.depth = 0
        self.thread = threading.current_thread()


class Connections:
    """The connections of one store: one per thread, plus the keep-alive (module docstring).

    Holds no reference to the store, so the store's finalizer can close it.
    """

    def __init__(self, path: Path, busy_timeout: float) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self.closed = False
        self._pid = os.getpid()
        self._lock = threading.Lock()  # guards closed, _open and every depth
        self._local = threading.local()  # .c: this thread's ThreadConnection
        self._open: list[ThreadConnection] = []
        self._keepalive: sqlite3.Connection | None = None
        _ALL_CONNECTIONS.add(self)

    def _refuse(self) -> StoreError:
        return StoreError(f"the store {self.path} was closed; open a new Store to use it.")

    def connect(self) -> sqlite3.Connection:
        # check_same_thread=False: close() may run on another thread; otherwise a connection
        # is only ever used by the thread that opened it.
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            return conn
        except BaseException:
            conn.close()
            raise

    def enter(self) -> ThreadConnection:
        """This thread's connection, opened if it has none, one level deeper in use."""
        if self._pid != os.getpid():
            self.forget_parent()  # forked without the at-fork hook having run
        c = getattr(self._local, "c", None) or self._open_for_thread()
        with self._lock:
            if self.closed:
                raise self._refuse()
            c.depth += 1
        return c

    def _open_for_thread(self) -> ThreadConnection:
        if self.closed:
            raise self._refuse()
        conn = self.connect()
        try:
            c = ThreadConnection(conn)
        except BaseException:
            conn.close()
            raise
        with self._lock:
            closed = self.closed
            if not closed:
                ended = [o for o in self._open if not o.thread.is_alive()]
                self._open = [o for o in self._open if o not in ended] + [c]
                self._local.c = c
        for o in [c] if closed else ended:
            o.conn.close()  # the connections of threads that have ended (or c, if closed meanwhile)
        if closed:
            raise self._refuse()
        return c

    def exit(self, c: ThreadConnection, keep: bool) -> None:
        """One level out; the outermost leaves no transaction open, and closes the connection
        after an error that is not the store's own (``keep`` False) or once the store is
        closed."""
        try:
            if c.depth == 1 and c.conn.in_transaction:
                c.conn.rollback()  # a block that wrote without committing
        except sqlite3.Error:
            keep = False
            raise
        finally:
            with self._lock:
                c.depth -= 1
                drop = c.depth == 0 and (not keep or self.closed)
                if drop:
                    if c in self._open:
                        self._open.remove(c)
                    self._local.c = None
            if drop:
                c.conn.close()

    def open_keepalive(self) -> None:
        """Open the idle keep-alive (module docstring); after the migrations, so a failed open
        leaves nothing behind."""
        conn = sqlite3.connect(self.path, check_same_thread=False)  # closed from any thread
        conn.execute("PRAGMA journal_mode").fetchall()  # opens the file and maps the WAL index
        self._keepalive = conn

    def close(self) -> None:
        """Close the idle connections and the keep-alive now, the busy ones when their blocks
        end (:meth:`exit`); idempotent."""
        with self._lock:
            self.closed = True
            idle = [c for c in self._open if c.depth == 0]
            self._open = [c for c in self._open if c.depth > 0]
            keepalive, self._keepalive = self._keepalive, None
        for c in idle:
            c.conn.close()
        if keepalive is not None and self._pid == os.getpid():
            keepalive.close()

    def forget_parent(self) -> None:
        """In a forked child: keep the parent's connections referenced, unused and unclosed
        (closing them would release the parent's locks), and start afresh."""
        _INHERITED.extend(c.conn for c in self._open)
        if self._keepalive is not None:
            _INHERITED.append(self._keepalive)
        self._open, self._keepalive = [], None
        self._lock = threading.Lock()  # the parent's may have been held by another thread
        self._local = threading.local()
        self._pid = os.getpid()


def _forget_parent_connections() -> None:
    for connections in list(_ALL_CONNECTIONS):
        connections.forget_parent()


os.register_at_fork(after_in_child=_forget_parent_connections)
