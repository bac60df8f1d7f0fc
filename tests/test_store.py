"""core.store: round trips, idempotency, concurrency, bad inputs, migrations, users, runs."""

from __future__ import annotations

import gc
import io
import math
import sqlite3
import threading
import time

import numpy as np
import pytest
from PIL import Image
from sqlite_utils import Database

from core.images import ImageError, image_hash
from core.rewards import Rewards, RewardValidationError, load_rewardedit
from core.store import (
    MIGRATIONS,
    TABLES,
    ConflictError,
    LockedError,
    NotFoundError,
    Store,
    StoreError,
    StoreInputError,
    annotation_key,
    triplet_id,
)

R = Rewards.from_scores


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "studio.db")


def img(seed: int, size: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img(seed)).save(buf, "PNG")
    return buf.getvalue()


def add(store: Store, seed: int = 0, instruction: str = "make the circle blue", **kw) -> str:
    return store.add_triplet(img(seed), img(seed + 1000), instruction, **kw)


def counts(store: Store) -> dict[str, int]:
    return {t: store.count(t) for t in TABLES}


def labelled(store: Store, seed: int = 0) -> str:
    tid = add(store, seed)
    aid = store.add_annotation(
        tid, kind="judge", judge_model="gpt-4o", prompt_version="v1", rewards=R((3, 5, 4))
    )
    store.set_label_from_annotation(aid)
    return tid


# -- connections, WAL, migrations -------------------------------------------------------------


def test_wal_and_a_new_connection_per_call(store):
    with store.db() as db:
        assert db.journal_mode == "wal"
        assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        conn = db.conn
    with pytest.raises(sqlite3.ProgrammingError):
        conn.execute("SELECT 1")  # closed when the call ended
    with store.db() as db:
        assert db.conn is not conn


def test_migrations_upgrade_an_older_database_and_reopening_is_fine(tmp_path):
    path = tmp_path / "old.db"
    old = Database(path)
    MIGRATIONS.apply(old, stop_before="0002_benchmark")  # a database from the first release
    old.execute(
        "INSERT INTO users (name, role, password_hash, created_at) "
        "VALUES ('ann', 'annotator', 'x', '2024-01-01')"
    )
    assert "runs" not in old.table_names()
    old.close()
    store = Store(path)
    assert store.migrations == [
        "0001_core",
        "0002_benchmark",
        "0003_ratings",
        "0004_label_seconds",
    ]
    assert store.get_user("ann")["role"] == "annotator"  # old data kept
    with pytest.raises(StoreError, match="password hash of user 'ann' is unreadable"):
        store.verify_password("ann", "anything")
    assert store.create_run("r1", "mrc") == 1  # new tables usable
    again = Store(path)
    assert again.migrations == store.migrations
    with again.db() as db:
        assert db["_sqlite_migrations"].count == 4


def test_the_keepalive_keeps_the_wal_until_the_store_is_closed(tmp_path):
    path = tmp_path / "k.db"
    wal, shm = tmp_path / "k.db-wal", tmp_path / "k.db-shm"
    with Store(path) as store:
        tid = labelled(store)
        # Without the idle connection, closing the call's connection would have
        # checkpointed and deleted the WAL after every call.
        assert wal.exists() and shm.exists()
        store.update_label(tid, R((1, 2, 3)), user="ann", expected_version=1)
        assert wal.exists()
        assert not store.closed
    assert store.closed and not wal.exists() and not shm.exists()  # the last one out cleans up
    with pytest.raises(StoreError, match="was closed"):
        store.get_label(tid)
    store.close()  # idempotent
    again = Store(path)
    assert again.get_label(tid).version == 2  # everything was checkpointed into the file
    finalizer = again._finalizer
    del again
    gc.collect()
    assert not finalizer.alive and not wal.exists()  # an unreferenced store closes itself


def test_concurrent_opening_migrates_once(tmp_path):
    path, errors = tmp_path / "fresh.db", []

    def open_it():
        try:
            Store(path)
        except Exception as e:  # collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with Store(path).db() as db:
        assert db["_sqlite_migrations"].count == 4


# -- triplets and images ----------------------------------------------------------------------


def test_triplet_round_trip_and_image_layout(store, tmp_path):
    mask = np.zeros((16, 16), bool)
    mask[4:8, 4:8] = True
    tid = store.add_triplet(
        png(1),
        img(2),
        "turn the red square green",
        category="local",
        target=Image.fromarray(img(3)),
        mask=mask,
        split="benchmark",
        source="shapes",
        external_id="000017",
        meta={"seed": 7, "objects": ["square"]},
    )
    t = store.get_triplet(tid)
    assert t["instruction"] == "turn the red square green"
    assert (t["category"], t["split"], t["source"], t["external_id"]) == (
        "local",
        "benchmark",
        "shapes",
        "000017",
    )
    assert t["meta"] == {"seed": 7, "objects": ["square"]}
    assert tid == triplet_id(t["original"], t["edited"], "turn the red square green")
    for field, expected in (("original", img(1)), ("edited", img(2)), ("target", img(3))):
        h = t[field]
        path = tmp_path / "studio_images" / h[:2] / f"{h}.png"
        assert store.image_path(h) == path and path.is_file()
        np.testing.assert_array_equal(np.asarray(store.image(h)), expected)
    stored_mask = store.image(t["mask"])
    assert stored_mask.mode == "L"
    np.testing.assert_array_equal(np.asarray(stored_mask) > 0, mask)
    assert not list((tmp_path / "studio_images").rglob("*.tmp"))


def test_adding_twice_is_idempotent(store):
    first = add(store, 0, category="local")
    before = counts(store)
    assert add(store, 0, category="other") == first  # first write wins, nothing added
    assert counts(store) == before
    assert store.get_triplet(first)["category"] == "local"
    ids = store.add_triplets(
        [
            {"original": img(0), "edited": img(1000), "instruction": "make the circle blue"},
            {"original": img(5), "edited": img(6), "instruction": "x"},
            {"original": img(5), "edited": img(6), "instruction": "x"},
        ],
        progress=False,
    )
    assert ids[0] == first and ids[1] == ids[2]
    assert store.count("triplets") == 2
    assert add(store, 0, instruction="make the circle red") != first  # instruction counts


def test_bad_images_leave_the_store_intact(store):
    add(store, 0)
    before = counts(store)
    good = png(1)
    bad_inputs = {
        "corrupt": good[:60] + bytes(b ^ 0xFF for b in good[60:120]) + good[120:],
        "truncated": good[: len(good) // 2],
        "zero-byte": b"",
        "not an image": b"hello",
        "zero-size": np.zeros((0, 4, 3), np.uint8),
    }
    for kind, bad in bad_inputs.items():
        items = [
            {"original": img(10), "edited": img(11), "instruction": "fine"},
            {"original": img(12), "edited": bad, "instruction": f"bad {kind}"},
        ]
        with pytest.raises(ImageError, match="item 1: edited image"):
            store.add_triplets(items, progress=False)
        assert counts(store) == before, kind
    with pytest.raises(ImageError, match="more than the limit"):
        store.add_triplet(img(1), np.zeros((9000, 9000), bool), "huge")
    with pytest.raises(ImageError, match="greyscale"):
        store.add_triplet(img(1), img(2), "x", mask=img(3))
    with pytest.raises(StoreInputError, match="instruction"):
        store.add_triplet(img(1), img(2), "   ")
    with pytest.raises(StoreInputError, match="unknown triplet field"):
        store.add_triplets([{"original": img(1), "instruction": "x", "edtied": img(2)}])
    assert counts(store) == before


def test_list_and_count_triplets(store):
    a = add(store, 0, split="train", category="local")
    b = add(store, 1, split="train", category="remove")
    c = add(store, 2, split="benchmark", category="local")
    aid = store.add_annotation(a, kind="oracle", judge_model="oracle-v1", rewards=R((5, 5, 5)))
    store.set_label_from_annotation(aid)
    assert [t["id"] for t in store.list_triplets()] == [a, b, c]
    assert [t["id"] for t in store.list_triplets(split="train", category="local")] == [a]
    assert [t["id"] for t in store.list_triplets(labeled=False)] == [b, c]
    assert store.list_triplets(status="pending")[0]["review_status"] == "pending"
    assert [t["id"] for t in store.list_triplets(limit=1, offset=1)] == [b]
    assert store.count_triplets(split="train") == 2
    with pytest.raises(StoreInputError, match="review status"):
        store.list_triplets(status="done")


# -- annotations ------------------------------------------------------------------------------


def test_annotations_are_idempotent_and_failures_are_kept(store):
    tid = add(store)
    kw = dict(kind="judge", judge_model="gpt-4o", prompt_version="v1")
    first = store.add_annotation(tid, rewards=R((3, 5, 4), ("the circle is purple", "", "")), **kw)
    assert store.add_annotation(tid, rewards=R((1, 1, 1)), **kw) == first  # no-op
    assert store.get_annotation(first)["rewards"] == R((3, 5, 4), ("the circle is purple", "", ""))
    assert store.find_annotation(annotation_key(tid, **kw)) == first
    other = store.add_annotation(tid, rewards=R((2, 5, 4)), **{**kw, "prompt_version": "v2"})
    assert other != first

    failed = dict(kind="judge", judge_model="gpt-4o", prompt_version="v3", status="failed")
    f1 = store.add_annotation(tid, raw="I cannot see", failure_reason="no JSON in reply", **failed)
    f2 = store.add_annotation(tid, raw="timeout", failure_reason="timed out", **failed)
    assert f1 != f2
    row = store.get_annotation(f1)
    assert (row["status"], row["rewards"], row["raw"]) == ("failed", None, "I cannot see")
    assert store.find_annotation(annotation_key(tid, **{**kw, "prompt_version": "v3"})) is None
    ok = store.add_annotation(tid, rewards=R((4, 4, 4)), **{**kw, "prompt_version": "v3"})
    assert store.find_annotation(annotation_key(tid, **{**kw, "prompt_version": "v3"})) == ok
    assert len(store.annotations(tid, prompt_version="v3")) == 3
    with pytest.raises(StoreInputError, match="failed judge call"):
        store.set_label_from_annotation(f1)
    assert store.get_label(tid) is None


def test_bad_annotations_leave_the_store_intact(store):
    tid = add(store)
    before = counts(store)
    base = dict(kind="judge", judge_model="gpt-4o", prompt_version="v1")
    with pytest.raises(RewardValidationError, match=r"must be in \[0, 5\]"):
        store.add_annotation(tid, rewards={"following": 7, "preserving": 5, "quality": 5}, **base)
    with pytest.raises(RewardValidationError, match="unknown perspective"):
        store.add_annotation(
            tid, rewards={"following": 5, "preserving": 5, "quality": 5, "beauty": 1}, **base
        )
    with pytest.raises(StoreInputError, match="failure_reason"):
        store.add_annotation(tid, status="failed", raw="x", **base)
    with pytest.raises(StoreInputError, match="prompt_version"):
        store.add_annotation(tid, kind="judge", judge_model="gpt-4o", rewards=R((5, 5, 5)))
    with pytest.raises(NotFoundError, match="no triplet"):
        store.add_annotation("nope", rewards=R((5, 5, 5)), **base)
    items = [
        {"triplet_id": tid, "rewards": R((5, 5, 5)), **base},
        {"triplet_id": tid, "rewards": {"following": 5, "preserving": -1, "quality": 5}, **base},
    ]
    with pytest.raises(RewardValidationError, match="annotation 1: preserving"):
        store.add_annotations(items)
    assert counts(store) == before


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


# -- users ------------------------------------------------------------------------------------


def test_users_and_passwords(store):
    user = store.add_user("ann", "annotator", "correct horse")
    assert user == {
        "name": "ann",
        "role": "annotator",
        "active": True,
        "created_at": user["created_at"],
    }
    assert store.verify_password("ann", "correct horse")
    assert not store.verify_password("ann", "wrong horse!")
    assert not store.verify_password("nobody", "correct horse")
    with store.db() as db:
        stored = db.execute("SELECT password_hash FROM users WHERE name = 'ann'").fetchone()[0]
    assert stored.startswith("scrypt$") and "correct horse" not in stored
    store.add_user("bob", "rater", "correct horse")
    with store.db() as db:
        hashes = {r[0] for r in db.execute("SELECT password_hash FROM users")}
    assert len(hashes) == 2  # per-user salt
    store.set_password("ann", "battery staple")
    assert store.verify_password("ann", "battery staple") and not store.verify_password(
        "ann", "correct horse"
    )
    store.set_active("ann", False)
    assert not store.verify_password("ann", "battery staple")
    store.set_role("bob", "admin")
    assert [u["name"] for u in store.list_users(role="admin")] == ["bob"]
    before = counts(store)
    with pytest.raises(ConflictError, match="already exists"):
        store.add_user("ann", "admin", "whatever123")
    with pytest.raises(StoreInputError, match="role"):
        store.add_user("eve", "superuser", "whatever123")
    with pytest.raises(StoreInputError, match="at least 8"):
        store.add_user("eve", "rater", "short")
    with pytest.raises(NotFoundError):
        store.set_role("nobody", "rater")
    assert counts(store) == before


# -- benchmark runs, outputs, verdicts, ratings -----------------------------------------------


def verdict(following=5, preserving=5, quality=5, yes=True):
    return {
        "following": {"yes": yes, "score": following, "text": "" if yes else "not done"},
        "preserving": {"yes": True, "score": preserving},
        "quality": {"yes": True, "score": quality},
    }


def test_runs_outputs_and_verdicts(store):
    item = add(store, 0, split="benchmark")
    run = store.create_run("mrc-s64", "mrc", settings={"steps": 20, "cfg": 7.5}, seed=3)
    assert store.create_run("mrc-s64", "mrc", settings={"cfg": 7.5, "steps": 20}, seed=3) == run
    with pytest.raises(ConflictError, match="already exists"):
        store.create_run("mrc-s64", "mrc", settings={"steps": 50}, seed=3)
    assert store.get_run("mrc-s64")["settings"] == {"cfg": 7.5, "steps": 20}

    out = store.add_output(run, item, img(50), seconds=1.5)
    assert store.add_output(run, item, img(50)) == out  # same image again: no-op
    with pytest.raises(ConflictError, match="different output"):
        store.add_output(run, item, img(51))
    second_seed = store.add_output(run, item, img(51), seed=4)
    rows = store.outputs(run)
    assert [(r["id"], r["seed"]) for r in rows] == [(out, 3), (second_seed, 4)]
    assert rows[0]["image"] == image_hash(Image.fromarray(img(50)))
    assert store.list_runs()[0]["n_outputs"] == 2

    v = store.add_verdict(
        out, judge_model="gpt-4o", prompt_version="eval-v1", verdict=verdict(2, yes=False)
    )
    assert (
        store.add_verdict(out, judge_model="gpt-4o", prompt_version="eval-v1", verdict=verdict())
        == v
    )
    store.add_verdict(
        out,
        judge_model="gpt-4o",
        prompt_version="eval-v1",
        status="failed",
        failure_reason="refused",
        raw="no",
    )
    got = store.verdicts(run_id=run)
    assert [g["status"] for g in got] == ["ok", "failed"]
    assert got[0]["verdict"]["following"] == {"yes": False, "score": 2.0, "text": "not done"}
    assert got[0]["item_id"] == item and got[1]["verdict"] is None

    before = counts(store)
    with pytest.raises(RewardValidationError, match=r"in \[0, 5\]"):
        store.add_verdict(out, judge_model="j", prompt_version="p", verdict=verdict(quality=6))
    with pytest.raises(RewardValidationError, match="unknown perspective"):
        store.add_verdict(
            out, judge_model="j", prompt_version="p", verdict={**verdict(), "style": {}}
        )
    with pytest.raises(RewardValidationError, match="'yes'"):
        store.add_verdict(
            out, judge_model="j", prompt_version="p", verdict={**verdict(), "quality": {"score": 3}}
        )
    with pytest.raises(ImageError, match="truncated"):
        store.add_output(run, item, png(3)[:100], seed=9)
    with pytest.raises(NotFoundError, match="triplet"):
        store.add_output(run, "missing", img(52))
    assert counts(store) == before


def test_blind_ratings(store):
    item = add(store, 0, split="benchmark")
    ra, rb = store.create_run("a", "mrc"), store.create_run("b", "ip2p")
    oa, ob = store.add_output(ra, item, img(60)), store.add_output(rb, item, img(61))
    store.add_user("rita", "rater", "rating pass")
    pair = {"item_id": item, "system_a": "a", "output_a": oa, "system_b": "b", "output_b": ob}
    single = {"item_id": item, "system_a": "a", "output_a": oa}
    ids = store.assign_ratings("rita", [pair, single], seed=1)
    assert store.assign_ratings("rita", [pair], seed=1) == ids[:1]  # idempotent
    nxt = store.next_assignment("rita")
    assert nxt["id"] == ids[0] and nxt["a_side"] in ("L", "R")
    expected_left = oa if nxt["a_side"] == "L" else ob
    assert (nxt["left_output"], {nxt["left_output"], nxt["right_output"]}) == (
        expected_left,
        {oa, ob},
    )

    before = counts(store)
    with pytest.raises(RewardValidationError, match=r"in \[0, 5\]"):
        store.add_rating(ids[0], rater="rita", scores_a={"following": 9})
    with pytest.raises(RewardValidationError, match="unknown perspective"):
        store.add_rating(ids[0], rater="rita", scores_a={"beauty": 3})
    with pytest.raises(StoreInputError, match="preference"):
        store.add_rating(ids[0], rater="rita", preference="left")
    with pytest.raises(StoreInputError, match="belongs to 'rita'"):
        store.add_rating(ids[0], rater="mallory", preference="A")
    with pytest.raises(StoreInputError, match="single output"):
        store.add_rating(ids[1], rater="rita", preference="A")
    assert counts(store) == before

    scores_a = {"following": 4, "preserving": 5, "quality": 3}
    store.add_rating(
        ids[0],
        rater="rita",
        scores_a=scores_a,
        scores_b={"following": 1},
        preference="A",
        seconds=12.5,
    )
    with pytest.raises(ConflictError, match="already done"):
        store.add_rating(ids[0], rater="rita", preference="B")
    assert store.next_assignment("rita")["id"] == ids[1]
    store.skip_assignment(ids[1], "rita")
    assert store.next_assignment("rita") is None
    (row,) = store.ratings(rater="rita")
    assert (row["system_a"], row["system_b"], row["preference"], row["seconds"]) == (
        "a",
        "b",
        "A",
        12.5,
    )
    assert (row["a_following"], row["a_quality"], row["b_following"], row["b_quality"]) == (
        4,
        3,
        1,
        None,
    )
    with pytest.raises(NotFoundError, match="user"):
        store.assign_ratings("ghost", [single])
