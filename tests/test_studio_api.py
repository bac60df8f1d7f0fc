"""The studio driven through its public API with gradio_client: edit, review, rating."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
from gradio_client import handle_file
from PIL import Image

from studio.app import create_context
from studio.rating import Evaluation
from tests.studio_helpers import SYSTEM_A, SYSTEM_B, build_store, client, serve, tiny_model

FILTERS = dict(status="to review", category="(any)", judge="(any)", perspective="(any)", lo=0, hi=5)


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    """One app with login (annotators alice and bob, raters rita and raul, admin ada)."""
    store = build_store(tmp_path_factory.mktemp("studio") / "s.db")
    ctx = create_context(
        store, tiny_model(), login_required=True,
        evaluation=Evaluation(SYSTEM_A, SYSTEM_B, overlap=2), lock_seconds=2.0,
    )  # fmt: skip
    with serve(ctx) as url:
        yield store, ctx, url


def _header_id(header: str) -> str:
    """The id of the item on screen (the header line "`<id>` · category ...")."""
    return re.search(r"^`([0-9a-f]+)` ·", header, re.M).group(1)


def test_every_event_has_an_api_name(studio):
    _, _, url = studio
    endpoints = client(url, "ada").view_api(print_info=False, return_format="dict")
    names = set(endpoints["named_endpoints"])
    assert not endpoints["unnamed_endpoints"]
    for name in ("/edit", "/sweep", "/send_to_review", "/review_next", "/review_fix",
                 "/review_accept", "/review_reject", "/review_skip", "/review_forward",
                 "/review_back", "/review_export", "/rate_next", "/rate_submit", "/results"):  # fmt: skip
        assert name in names


def test_edit_sweep_and_send_to_review(studio, tmp_path):
    store, ctx, url = studio
    img = tmp_path / "in.png"
    Image.fromarray(np.full((48, 40, 3), 120, np.uint8)).save(img)
    c = client(url, "alice")
    args = [handle_file(str(img)), "make the circle blue", 5, 5, 5, "", "", "", 2, 7.5, 1.5, 1.0]
    (before, after), status, = c.predict(*args, 7, api_name="/edit")  # fmt: skip
    assert "seed 7" in status
    first = np.asarray(Image.open(after))
    assert first.shape == (32, 26, 3)  # long side capped at the tiny model's 32 px; even sizes
    (_, again), _ = c.predict(*args, 7, api_name="/edit")
    assert np.array_equal(first, np.asarray(Image.open(again)))  # seeded
    (_, other), _ = c.predict(*args, 8, api_name="/edit")
    assert not np.array_equal(first, np.asarray(Image.open(other)))
    grid = Image.open(c.predict(*args, 7, api_name="/sweep"))
    assert grid.width > 3 * 128 and grid.height > 3 * 128  # 3 x 3 cells, enlarged and labelled

    before_count = store.count_triplets(split="studio")
    message = c.predict(api_name="/send_to_review")
    assert "Stored as triplet" in message
    assert store.count_triplets(split="studio") == before_count + 1
    tid = message.split("`")[1]
    assert store.get_triplet(tid)["meta"]["sent_by"] == "alice"
    # An edit without a judge label is the most doubtful item: it comes first in the queue.
    out = c.predict(*FILTERS.values(), api_name="/review_next")
    assert _header_id(out[0]) == tid and "unlabeled" in out[0]
    saved = c.predict(4, 5, 2, "", "", "blotch", "", *FILTERS.values(), api_name="/review_fix")
    assert "Saved" in saved[0]
    label = store.get_label(tid)
    assert label.rewards.scores == (4.0, 5.0, 2.0) and label.rewards.quality.text == "blotch"
    assert (label.status, label.origin, label.updated_by) == ("fixed", "human", "alice")


def test_review_locks_and_a_conflict_between_two_clients(studio):
    store, ctx, url = studio
    alice, bob = client(url, "alice"), client(url, "bob")
    a_item = alice.predict(*FILTERS.values(), api_name="/review_next")
    b_item = bob.predict(*FILTERS.values(), api_name="/review_next")
    tid = _header_id(a_item[0])
    assert _header_id(b_item[0]) != tid  # alice's lock keeps bob off her item
    version = store.get_label(tid).version

    time.sleep(2.2)  # alice's lock (2 s in this app) expires while she is still looking
    opened = bob.predict(tid, api_name="/review_open")
    assert _header_id(opened[0]) == tid
    bob_saved = bob.predict(1, 5, 3, "nothing changed", "", "noise", "bob was here",
                            *FILTERS.values(), api_name="/review_fix")  # fmt: skip
    assert "Saved" in bob_saved[0]

    alice_try = alice.predict(5, 5, 5, "", "", "", "", *FILTERS.values(), api_name="/review_accept")
    assert "Not saved" in alice_try[0] and "bob" in alice_try[0]
    label = store.get_label(tid)
    assert label.rewards.scores == (1.0, 5.0, 3.0) and label.updated_by == "bob"
    assert label.version == version + 1
    history = store.history(tid)
    assert [h["user"] for h in history][-1] == "bob" and history[-1]["note"] == "bob was here"
    assert not any(h["user"] == "alice" for h in history)


def test_review_decisions_progress_and_export(studio):
    store, ctx, url = studio
    alice = client(url, "alice")
    first = alice.predict(*FILTERS.values(), api_name="/review_next")
    tid = _header_id(first[0])
    before = store.get_label(tid)
    out = alice.predict(*first[5:8], *first[8:11], "", *FILTERS.values(), api_name="/review_accept")
    assert "as **accepted**" in out[0]
    assert store.get_label(tid).rewards == before.rewards
    nxt = _header_id(out[0])
    assert nxt != tid
    out = alice.predict(*out[5:8], *out[8:11], "", *FILTERS.values(), api_name="/review_reject")
    assert store.get_label(nxt).status == "rejected"
    summary, table = alice.predict(api_name="/review_progress")
    assert "reviewed" in summary
    rows = {r[0]: r for r in table["data"]}
    assert rows["alice"][1] >= 2
    csv_file, json_file, rewardedit_file = alice.predict(False, api_name="/review_export")
    assert tid in open(rewardedit_file).read()
    text = open(csv_file).read()
    assert tid in text and nxt not in text  # rejected triplets are left out


def test_blind_rating_round_trip_and_results(studio):
    store, ctx, url = studio
    rita, ada = client(url, "rita"), client(url, "ada")
    pair = rita.predict(api_name="/rate_next")
    assignment = store.ratings()  # nothing rated yet
    assert assignment == [] and pair[0].startswith("### turn item")
    out = rita.predict("5", "4", "3", "1", "2", "0", "left", api_name="/rate_submit")
    assert "Rating saved" in out[0]
    (row,) = store.ratings(rater="rita")
    a_left = row["a_side"] == "L"
    left, right = (5.0, 4.0, 3.0), (1.0, 2.0, 0.0)
    stored_a = (row["a_following"], row["a_preserving"], row["a_quality"])
    assert stored_a == (left if a_left else right)
    assert row["preference"] == ("A" if a_left else "B")
    note, scores, wins, bt, alpha, agreement = ada.predict(api_name="/results")
    assert "1 raters" in note
    systems = {r[0] for r in scores["data"]}
    assert systems == {SYSTEM_A, SYSTEM_B}
    with pytest.raises(Exception, match="Give a score"):
        rita.predict(None, "4", "3", "1", "2", "0", None, api_name="/rate_submit")
