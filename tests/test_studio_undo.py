"""Undo of a reviewer's last decision, their recent decisions and the queue table."""

from __future__ import annotations

import numpy as np
import pytest

from core.store import ConflictError, StoreInputError
from studio.app import create_context
from studio.rating import Evaluation
from tests.studio_helpers import (
    SYSTEM_A,
    SYSTEM_B,
    build_store,
    client,
    serve,
    tiny_model,
    triplet_ids,
)

FILTERS = ("to review", "(any)", "(any)", "(any)", 0, 5)


def test_undo_restores_the_label_before_the_decision(tmp_path):
    store = build_store(tmp_path / "u.db", n_bench=0)
    first, second = triplet_ids(store)[:2]
    before = store.get_label(first)
    store.update_label(first, {"following": 1, "preserving": 2, "quality": 3}, user="alice",
                       expected_version=before.version, note="too strict")  # fmt: skip
    store.update_label(second, None, user="alice", expected_version=1, status="rejected")
    recent = store.recent_decisions("alice")
    assert [(d["triplet_id"], d["status"]) for d in recent] == [
        (second, "rejected"),
        (first, "fixed"),
    ]
    with pytest.raises(ConflictError, match="made by alice, not bob"):
        store.undo_label(second, user="bob", version=2)
    undone = store.undo_label(second, user="alice", version=2)
    assert (undone.status, undone.version) == ("pending", 3)
    # The undo and the undone change leave the list; the earlier decision is next.
    assert [d["triplet_id"] for d in store.recent_decisions("alice")] == [first]
    restored = store.undo_label(first, user="alice", version=before.version + 1)
    assert restored.rewards == before.rewards and restored.origin == before.origin
    assert restored.note == before.note and restored.status == before.status
    history = store.history(first)
    assert history[-1]["note"] == f"undo of version {before.version + 1}"
    assert history[-1]["before"]["rewards"]["following"]["score"] == 1.0  # nothing is lost
    with pytest.raises(ConflictError, match="now version"):  # it moved on: stale undo
        store.undo_label(first, user="alice", version=before.version + 1)
    assert store.recent_decisions("alice") == []


def test_a_first_label_cannot_be_undone(tmp_path):
    store = build_store(tmp_path / "f.db", n_train=1, n_bench=0)
    tid = store.add_triplet(np.zeros((8, 8, 3), np.uint8), np.ones((8, 8, 3), np.uint8),
                            "make it grey", split="studio")  # fmt: skip
    store.update_label(tid, {"following": 2, "preserving": 2, "quality": 2}, user="alice",
                       expected_version=0)  # fmt: skip
    with pytest.raises(StoreInputError, match="no earlier label"):
        store.undo_label(tid, user="alice", version=1)


def test_undo_recent_and_table_through_the_api(tmp_path):
    store = build_store(tmp_path / "api.db")
    ctx = create_context(store, tiny_model(), login_required=True,
                         evaluation=Evaluation(SYSTEM_A, SYSTEM_B))  # fmt: skip
    with serve(ctx) as url:
        alice = client(url, "alice")
        *untouched, notice = alice.predict(api_name="/review_undo")  # refused: a notice
        assert "no decision to undo" in notice["message"]
        assert all(o["__type__"] == "update" for o in untouched)
        item = alice.predict(*FILTERS, api_name="/review_next")
        tid = item[0].split("`")[1]
        loaded = store.get_label(tid)
        alice.predict(0, 0, 0, "", "", "", "", *FILTERS, api_name="/review_reject")
        assert store.get_label(tid).status == "rejected"
        table = alice.predict(api_name="/review_recent")
        assert [r[0] for r in table["data"]] == [tid]
        out = alice.predict(api_name="/review_undo")
        assert f"Undid your last decision on `{tid}`" in out[0]
        label = store.get_label(tid)
        assert (label.status, label.rewards) == (loaded.status, loaded.rewards)
        assert label.locked_by == "alice"  # open again, for her
        assert out[-2]["data"] == [] and out[-1] is None  # nothing left to undo; no refusal
        queue = alice.predict(*FILTERS, api_name="/review_table")
        rows = {r[0]: r for r in queue["data"]}
        assert rows[tid][2] == "pending" and rows[tid][4] == "alice"
        assert len(rows) == len(triplet_ids(store))
