"""core.store: labels, review, history and locks, including concurrent edits."""

from __future__ import annotations

import math
import sqlite3
import threading
import time

import pytest
from sqlite_utils import Database

from core.rewards import RewardValidationError, load_rewardedit
from core.store import (
    ConflictError,
    LockedError,
    NotFoundError,
    Store,
    StoreInputError,
)
from tests._store_helpers import R, add, counts, labelled

# -- labels, review, history ------------------------------------------------------------------


def test_label_review_flow_history_and_export(store):
    tid = labelled(store)
    label = store.get_label(tid)
    assert (label.version, label.status, label.origin) == (1, "pending", "judge")

    fixed = store.update_label(
        tid,
        R((1, 5, 4), ("the circle stayed red", "", "")),
        user="alice",
        expected_version=1,
        note="judge missed it",
    )
    assert (fixed.version, fixed.status, fixed.origin, fixed.updated_by) == (
        2,
        "fixed",
        "human",
        "alice",
    )
    accepted = store.update_label(tid, None, user="bob", expected_version=2, status="accepted")
    assert (accepted.version, accepted.origin, accepted.rewards) == (3, "human", fixed.rewards)

    with pytest.raises(ConflictError, match=r"changed by bob .*now version 3.*based on version 2"):
        store.update_label(tid, R((5, 5, 5)), user="carol", expected_version=2)

    hist = store.history(tid)
    assert [h["version"] for h in hist] == [1, 2, 3]
    assert [h["action"] for h in hist] == ["create", "edit", "review"]
    assert [h["user"] for h in hist] == ["system", "alice", "bob"]
    assert hist[0]["before"] is None
    assert hist[1]["before"] == hist[0]["after"] and hist[2]["before"] == hist[1]["after"]
    assert hist[1]["after"]["rewards"]["following"] == {
        "score": 1.0,
        "text": "the circle stayed red",
    }
    assert hist[1]["note"] == "judge missed it"

    # A newer judge label never overwrites a human-reviewed one...
    aid2 = store.add_annotation(
        tid, kind="judge", judge_model="gpt-4o", prompt_version="v2", rewards=R((5, 5, 5))
    )
    assert store.set_label_from_annotation(aid2, replace_pending=True).version == 3
    # ...and the human correction is what gets exported, with provenance.
    exported = store.export_labels()[tid]
    assert exported.rewards == fixed.rewards
    assert (exported.origin, exported.status, exported.reviewed_by) == ("human", "accepted", "bob")
    assert (exported.judge_model, exported.prompt_version) == ("gpt-4o", "v1")
    good, bad = load_rewardedit(store.export_rewardedit())
    assert good == {tid: fixed.rewards} and bad == []


def test_reannotation_replaces_only_untouched_pending_labels(store):
    tid = labelled(store)
    aid = store.add_annotation(
        tid, kind="judge", judge_model="gpt-4o", prompt_version="v2", rewards=R((2, 2, 2))
    )
    assert store.set_label_from_annotation(aid).version == 1  # default: keep the existing label
    replaced = store.set_label_from_annotation(aid, replace_pending=True)
    assert (replaced.version, replaced.rewards, replaced.annotation_id) == (2, R((2, 2, 2)), aid)
    assert store.history(tid)[-1]["action"] == "reannotate"
    assert tid in store.export_labels() and store.export_labels(include_unreviewed=False) == {}
    rejected = store.update_label(tid, None, user="ann", expected_version=2, status="rejected")
    assert rejected.status == "rejected" and tid not in store.export_labels()
    assert store.review_counts() == {
        "pending": 0,
        "accepted": 0,
        "fixed": 0,
        "rejected": 1,
        "skipped": 0,
        "unlabeled": 0,
    }


def test_creating_a_label_by_hand(store):
    tid = add(store)
    label = store.update_label(tid, R((4, 5, 5)), user="ann", expected_version=0)
    assert (label.version, label.status, label.origin, label.annotation_id) == (
        1,
        "fixed",
        "human",
        None,
    )
    with pytest.raises(ConflictError, match="now version 1"):
        store.update_label(tid, R((4, 5, 5)), user="bob", expected_version=0)
    with pytest.raises(NotFoundError, match="pass expected_version=0"):
        store.update_label(add(store, 9), R((1, 1, 1)), user="x", expected_version=3)
    with pytest.raises(NotFoundError, match="no triplet"):
        store.update_label("missing", R((1, 1, 1)), user="x", expected_version=0)


def test_bad_label_edits_leave_the_store_intact(store):
    tid = labelled(store)
    before = counts(store)
    for bad in (
        {"following": 5.5, "preserving": 5, "quality": 5},
        {"following": float("nan"), "preserving": 5, "quality": 5},
        {"following": 5, "preserving": 5},
        {"following": 5, "preserving": 5, "quality": 5, "style": 3},
    ):
        with pytest.raises(RewardValidationError):
            store.update_label(tid, bad, user="ann", expected_version=1)
    with pytest.raises(StoreInputError, match="status"):
        store.update_label(tid, None, user="ann", expected_version=1, status="done")
    with pytest.raises(StoreInputError, match="user"):
        store.update_label(tid, None, user="", expected_version=1)
    assert counts(store) == before and store.get_label(tid).version == 1


def test_seconds_per_item_are_kept_in_the_history(store):
    tid = labelled(store)
    store.update_label(tid, R((1, 5, 4)), user="ann", expected_version=1, seconds=12.5)
    store.update_label(tid, None, user="bob", expected_version=2, status="accepted", seconds=0)
    store.update_label(tid, None, user="cy", expected_version=3, status="skipped")
    fresh = add(store, 5)
    store.update_label(fresh, R((2, 2, 2)), user="ann", expected_version=0, seconds=3)
    assert [h["seconds"] for h in store.history(tid)] == [None, 12.5, 0.0, None]
    assert store.history(fresh)[0]["seconds"] == 3.0
    before = counts(store)
    for bad in (-1, -0.001, math.nan, math.inf, True, "12", [3]):
        with pytest.raises(StoreInputError, match="seconds"):
            store.update_label(tid, R((0, 0, 0)), user="ann", expected_version=4, seconds=bad)
    assert counts(store) == before and store.get_label(tid).version == 4
    with store.db() as db, pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        db.execute(  # the schema refuses it too
            "INSERT INTO label_history (triplet_id, version, user, at, action, after, seconds) "
            "VALUES (?, 99, 'x', 'now', 'edit', '{}', -5)",
            [tid],
        )


def test_the_seconds_migration_upgrades_a_database_with_history(tmp_path):
    path = tmp_path / "v3.db"
    with Store(path) as store:
        tid = labelled(store)
        store.update_label(tid, R((1, 1, 1)), user="ann", expected_version=1)
    old = Database(path)  # roll the file back to the schema of the third release
    old.execute("ALTER TABLE label_history DROP COLUMN seconds")
    old.execute("DELETE FROM _sqlite_migrations WHERE name = '0004_label_seconds'")
    old.conn.commit()
    assert "seconds" not in old["label_history"].columns_dict
    old.close()
    store = Store(path)
    assert store.migrations[-1] == "0004_label_seconds"
    assert [h["seconds"] for h in store.history(tid)] == [None, None]  # old rows: not measured
    store.update_label(tid, None, user="bob", expected_version=2, status="accepted", seconds=7)
    assert [h["user"] for h in store.history(tid)] == ["system", "ann", "bob"]
    assert store.history(tid)[-1]["seconds"] == 7.0


def test_history_is_append_only(store):
    tid = labelled(store)
    with store.db() as db:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute("UPDATE label_history SET user = 'mallory' WHERE triplet_id = ?", [tid])
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute("DELETE FROM label_history")
    assert store.history(tid)[0]["user"] == "system"


def test_eight_threads_editing_one_label_lose_no_update(store):
    tid = labelled(store)
    n_threads, edits_each = 8, 5
    barrier = threading.Barrier(n_threads)
    conflicts, errors = [0] * n_threads, []

    def worker(i: int) -> None:
        try:
            barrier.wait()
            for k in range(edits_each):
                while True:
                    label = store.get_label(tid)
                    new = label.rewards.replace(
                        "following",
                        score=(i + k) % 6,
                        text=label.rewards.following.text + f"|{i}.{k}",
                    )
                    try:
                        store.update_label(
                            tid, new, user=f"user{i}", expected_version=label.version
                        )
                        break
                    except ConflictError:
                        conflicts[i] += 1
        except Exception as e:  # collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    writes = n_threads * edits_each
    final = store.get_label(tid)
    assert final.version == 1 + writes
    tokens = final.rewards.following.text.split("|")[1:]
    assert sorted(tokens) == sorted(f"{i}.{k}" for i in range(n_threads) for k in range(edits_each))
    hist = store.history(tid)
    assert [h["version"] for h in hist] == list(range(1, writes + 2))
    for prev, cur in zip(hist, hist[1:]):
        assert cur["before"] == prev["after"]  # an unbroken chain: nothing overwritten unseen
    assert hist[-1]["after"]["rewards"] == final.rewards.to_dict()
    for i in range(n_threads):  # each user's edits appear in their own order
        own = [h for h in hist if h["user"] == f"user{i}"]
        assert [h["after"]["rewards"]["following"]["text"].rsplit("|", 1)[1] for h in own] == [
            f"{i}.{k}" for k in range(edits_each)
        ]


# -- locks ------------------------------------------------------------------------------------


def test_locks(store):
    tid = labelled(store)
    held = store.acquire_lock(tid, "alice", seconds=60)
    assert held.locked_by == "alice" and held.locked_against("bob")
    assert store.acquire_lock(tid, "alice").locked_by == "alice"  # renewing is fine
    with pytest.raises(LockedError, match="locked by alice"):
        store.acquire_lock(tid, "bob")
    with pytest.raises(LockedError, match="locked by alice"):
        store.update_label(tid, R((1, 1, 1)), user="bob", expected_version=1)
    assert store.get_label(tid).version == 1
    saved = store.update_label(tid, R((2, 2, 2)), user="alice", expected_version=1)
    assert saved.version == 2 and saved.locked_by is None  # saving releases the lock
    store.acquire_lock(tid, "alice", seconds=0.05)
    time.sleep(0.1)
    assert store.acquire_lock(tid, "bob").locked_by == "bob"  # expired locks are ignored
    assert not store.release_lock(tid, "alice")
    assert store.release_lock(tid, "bob")
    with pytest.raises(NotFoundError):
        store.acquire_lock(add(store, 7), "bob")


def test_next_for_review_hands_out_distinct_items(store):
    ids = [labelled(store, seed) for seed in range(3)]
    a = store.next_for_review("alice")
    b = store.next_for_review("bob")
    assert a.triplet_id == ids[0] and b.triplet_id == ids[1]
    assert store.next_for_review("alice").triplet_id == ids[0]  # resumes her own item
    store.update_label(a.triplet_id, None, user="alice", expected_version=1, status="accepted")
    assert store.next_for_review("alice").triplet_id == ids[2]
    assert store.next_for_review("carol") is None
