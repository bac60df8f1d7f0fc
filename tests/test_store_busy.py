"""Lock contention: a store held by another writer past the busy timeout raises the store's own
error with advice -- when opening (migrations take a write lock) and when writing -- and loses
nothing once the lock is released."""

from __future__ import annotations

import sqlite3

import pytest

from core.store import Store, StoreBusyError
from tests._store_helpers import add


def test_a_held_write_lock_gives_a_clear_error_and_loses_nothing(tmp_path):
    path = tmp_path / "s.db"
    store = Store(path, busy_timeout=0.2)
    add(store, seed=1)
    holder = sqlite3.connect(path)
    holder.execute("BEGIN IMMEDIATE")  # another process writing
    try:
        with pytest.raises(StoreBusyError, match=r"stayed locked by another writer for 0.2 s"):
            add(store, seed=2)
        with pytest.raises(StoreBusyError, match="Retry when it is done"):
            Store(path, busy_timeout=0.2)  # opening applies migrations in a write transaction
        assert store.count("triplets") == 1  # reads still work under a write lock (WAL)
    finally:
        holder.rollback()
        holder.close()
    add(store, seed=2)
    assert store.count("triplets") == 2
