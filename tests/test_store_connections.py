"""core.store's connections: one per thread, reused by every call on it, nested blocks on the
same connection (a nested transaction is a savepoint), closed from any thread, never shared
with a forked child (the policy is in core/store/base.py's docstring)."""

from __future__ import annotations

import os
import sqlite3
import threading

import pytest

from core.store import NotFoundError, Store, StoreError
from tests._store_helpers import R, add, labelled


def _in_thread(fn):
    """Run ``fn`` on a new thread; return its result (or raise its exception)."""
    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:  # handed to the caller below
            out["error"] = e

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def _conn(store: Store) -> sqlite3.Connection:
    with store.db() as db:
        return db.conn


def _instructions(store: Store) -> list[str]:
    with store.db() as db:
        return [r[0] for r in db.execute("SELECT instruction FROM triplets ORDER BY rowid")]


# -- one connection per thread ----------------------------------------------------------------


def test_calls_on_one_thread_reuse_its_connection(store):
    first = _conn(store)
    tid = labelled(store)  # several calls, reads and writes
    store.update_label(tid, R((1, 2, 3)), user="ann", expected_version=1)
    assert _conn(store) is first
    assert not first.in_transaction  # nothing is left open between calls
    assert len(store._connections._open) == 1


def test_each_thread_has_its_own_connection(store):
    mine = _conn(store)
    theirs = _in_thread(lambda: _conn(store))
    assert theirs is not mine
    assert len(store._connections._open) == 2


def test_a_reused_connection_reads_what_others_committed_since(store, tmp_path):
    add(store, 0, "first")
    with store.db() as db:
        db.execute("SELECT instruction FROM triplets")  # a cursor left unread, then dropped
    other = Store(tmp_path / "studio.db")  # another process's writes, in effect
    _in_thread(lambda: add(other, 1, "second"))
    assert _instructions(store) == ["first", "second"]


def test_a_block_that_wrote_without_committing_is_rolled_back(store):
    conn = _conn(store)
    with store.db() as db:
        db.conn.execute("INSERT INTO users (name, role, password_hash, created_at) "
                        "VALUES ('eve', 'annotator', 'x', 'now')")  # fmt: skip
        assert db.conn.in_transaction  # Python's sqlite3 began one implicitly
    assert not conn.in_transaction and store.get_user("eve") is None
    assert _conn(store) is conn


# -- nesting ----------------------------------------------------------------------------------


def test_a_nested_db_sees_the_outer_transaction_and_leaves_it_open(store):
    with store.transaction() as outer:
        add(store, 0, "inside")  # a nested transaction (savepoint) on the same connection
        with store.db() as inner:
            assert inner.conn is outer.conn
            assert [r[0] for r in inner.execute("SELECT instruction FROM triplets")] == ["inside"]
        assert outer.conn.in_transaction  # the nested block neither committed nor rolled back
        assert _in_thread(lambda: _instructions(store)) == []  # not committed yet
        outer.execute("INSERT INTO users (name, role, password_hash, created_at) "
                      "VALUES ('eve', 'annotator', 'x', 'now')")  # fmt: skip
    assert _in_thread(lambda: _instructions(store)) == ["inside"]
    assert store.get_user("eve")["role"] == "annotator"


def test_a_failed_nested_transaction_undoes_only_its_own_block(store):
    with store.transaction():
        add(store, 0, "kept")
        with pytest.raises(ZeroDivisionError):
            with store.transaction():
                add(store, 1, "undone")
                raise ZeroDivisionError
        with pytest.raises(NotFoundError):
            store.get_triplet("0" * 16)  # the store's own error inside: nothing undone
        add(store, 2, "also kept")
    assert _instructions(store) == ["kept", "also kept"]


def test_a_failed_outer_transaction_undoes_its_nested_ones(store):
    with pytest.raises(RuntimeError, match="outer"):
        with store.transaction():
            add(store, 0, "nested, committed only with the outer one")
            raise RuntimeError("outer")
    assert _instructions(store) == []
    add(store, 1, "later")  # and the thread's connection works afterwards
    assert _instructions(store) == ["later"]


def test_errors_other_than_the_stores_close_the_threads_connection(store):
    conn = _conn(store)
    with pytest.raises(NotFoundError):
        store.get_triplet("0" * 16)
    assert _conn(store) is conn  # the store's own refusals keep it
    with pytest.raises(sqlite3.OperationalError):
        with store.db() as db:
            db.execute("SELECT * FROM no_such_table")
    assert _conn(store) is not conn and len(store._connections._open) == 1
    with pytest.raises(sqlite3.ProgrammingError):
        conn.execute("SELECT 1")  # closed
    assert _instructions(store) == []


# -- closing ----------------------------------------------------------------------------------


def test_close_from_another_thread_closes_every_threads_connection(tmp_path):
    path = tmp_path / "c.db"
    store = Store(path)
    tid = labelled(store)
    mine = _conn(store)
    inside, release = threading.Event(), threading.Event()
    busy: dict = {}

    def hold_a_block_open():
        with store.db() as db:
            busy["conn"] = db.conn
            inside.set()
            release.wait(10)
            busy["read"] = db.execute("SELECT count(*) FROM triplets").fetchone()[0]
        with pytest.raises(StoreError, match="was closed"):
            store.get_label(tid)

    worker = threading.Thread(target=hold_a_block_open)
    worker.start()
    assert inside.wait(10)
    _in_thread(store.close)  # closed by a third thread
    assert store.closed
    with pytest.raises(sqlite3.ProgrammingError):
        mine.execute("SELECT 1")  # the idle connection is closed at once
    busy["conn"].execute("SELECT 1")  # the busy one only when its block ends
    release.set()
    worker.join()
    assert busy["read"] == 1
    with pytest.raises(sqlite3.ProgrammingError):
        busy["conn"].execute("SELECT 1")
    assert store._connections._open == []
    for call in (lambda: store.get_label(tid), store.db().__enter__, lambda: add(store, 5)):
        with pytest.raises(StoreError, match="was closed"):
            call()
    assert not (tmp_path / "c.db-wal").exists()  # the last connection out checkpointed


def test_connections_of_ended_threads_are_closed_when_a_new_one_opens(store):
    _conn(store)  # this thread's
    ended = [_in_thread(lambda: _conn(store)) for _ in range(3)]
    assert len(store._connections._open) == 1 + 1  # this thread's and the last ended one's
    for conn in ended[:2]:
        with pytest.raises(sqlite3.ProgrammingError):
            conn.execute("SELECT 1")


# -- threads and processes --------------------------------------------------------------------


def test_several_threads_writing_at_once_lose_nothing(store):
    n_threads, each = 6, 8
    barrier = threading.Barrier(n_threads)
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            barrier.wait()
            for k in range(each):
                tid = add(store, 100 * i + k, f"thread {i} item {k}")
                assert store.get_triplet(tid)["instruction"] == f"thread {i} item {k}"
        except BaseException as e:  # asserted below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(_instructions(store)) == sorted(
        f"thread {i} item {k}" for i in range(n_threads) for k in range(each)
    )
    assert all(not c.conn.in_transaction for c in store._connections._open)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_opens_its_own_connections_and_leaves_the_parents_alone(tmp_path):
    path = tmp_path / "f.db"
    store = Store(path)
    tid = labelled(store)
    parent_conn = _conn(store)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what it saw through the pipe, then leave at once
        status = "ok"
        try:
            child_conn = _conn(store)
            assert child_conn is not parent_conn
            assert store._connections._open[0].conn is child_conn
            store.update_label(tid, R((2, 2, 2)), user="child", expected_version=1)
            store.close()
        except BaseException as e:
            status = f"{type(e).__name__}: {e}"
        os.write(write, status.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        reported = f.read()
    os.waitpid(pid, 0)
    assert reported == "ok"
    assert (tmp_path / "f.db-wal").exists()  # the child's close left the parent's WAL alone
    assert _conn(store) is parent_conn  # and the parent's connection still works
    assert store.get_label(tid).updated_by == "child"
    store.update_label(tid, R((3, 3, 3)), user="parent", expected_version=2)
    assert [h["user"] for h in store.history(tid)][-2:] == ["child", "parent"]
