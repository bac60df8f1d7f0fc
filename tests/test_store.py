"""core.store: connections, migrations, triplets, images, annotations, users."""

from __future__ import annotations

import gc
import threading

import numpy as np
import pytest
from PIL import Image
from sqlite_utils import Database

from core.images import ImageError
from core.rewards import RewardValidationError
from core.store import (
    MIGRATIONS,
    ConflictError,
    NotFoundError,
    Store,
    StoreError,
    StoreInputError,
    annotation_key,
    triplet_id,
)
from tests._store_helpers import R, add, counts, img, labelled, png

# -- connections, WAL, migrations -------------------------------------------------------------


def test_wal_and_the_pragmas_on_each_threads_connection(store):
    def settings():
        with store.db() as db:
            return (
                db.journal_mode,
                db.execute("PRAGMA foreign_keys").fetchone()[0],
                db.execute("PRAGMA synchronous").fetchone()[0],
                db.execute("PRAGMA busy_timeout").fetchone()[0],
            )

    expected = ("wal", 1, 1, 30_000)  # synchronous 1 = NORMAL
    assert settings() == expected
    seen = []
    thread = threading.Thread(target=lambda: seen.append(settings()))
    thread.start()
    thread.join()
    assert seen == [expected]  # a thread's own connection is set up the same way


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
        "0005_campaign_trust",
    ]
    assert store.get_user("ann")["role"] == "annotator"  # old data kept
    with pytest.raises(StoreError, match="password hash of user 'ann' is unreadable"):
        store.verify_password("ann", "anything")
    assert store.create_run("r1", "mrc") == 1  # new tables usable
    again = Store(path)
    assert again.migrations == store.migrations
    with again.db() as db:
        assert db["_sqlite_migrations"].count == 5


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
        assert db["_sqlite_migrations"].count == 5


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
