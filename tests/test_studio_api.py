"""The studio driven through its public API with gradio_client: edit, review, rating."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from studio.app import create_context
from studio.media import DifferenceImages, difference, file_url_tail
from studio.rating import Evaluation
from studio.review_handlers import PREFETCH_ITEMS
from tests import studio_helpers as helpers
from tests.studio_helpers import SYSTEM_A, SYSTEM_B, build_store, client, serve, tiny_model

FILTERS = dict(status="to review", category="(any)", judge="(any)", perspective="(any)", lo=0, hi=5)


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    """One app with login (annotators alice and bob, raters rita and raul, admin ada)."""
    store = build_store(tmp_path_factory.mktemp("studio") / "s.db")
    ctx = create_context(
        store, tiny_model(), login_required=True,
        evaluation=Evaluation(SYSTEM_A, SYSTEM_B, overlap=2), lock_seconds=60.0,
    )  # fmt: skip
    with serve(ctx) as url:
        yield store, ctx, url


def _refusal(out: tuple) -> str:
    """The message of a refused Review step: its last output (the notice, shown as a toast in
    the page); every other output comes back untouched (gr.skip())."""
    *rest, notice = out
    # (a gr.HTML's skip carries its own "__type__" among its props as well)
    assert notice and all(o["__type__"] == "update" for o in rest), out
    return notice["message"]


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


def test_review_steps_name_the_next_items_images_to_load_ahead(studio):
    """A step that shows an item also names the images of the items after it (the output
    before the notice), for the page to load in the background; the first three are those
    of the item that *Next →* shows (issue 14, point 6)."""
    store, ctx, url = studio
    alice = client(url, "alice")
    first = alice.predict(*FILTERS.values(), api_name="/review_next")
    ahead = first[-2]
    assert len(ahead) % 3 == 0 and 3 <= len(ahead) <= 3 * PREFETCH_ITEMS
    nxt = alice.predict(*FILTERS.values(), api_name="/review_forward")
    t = store.get_triplet(_header_id(nxt[0]))
    original, edited = store.image_path(t["original"]), store.image_path(t["edited"])
    diff = ctx.differences.path(original, edited)
    assert ahead[:3] == [file_url_tail(p) for p in (original, edited, diff)]
    for tid in (_header_id(first[0]), t["id"]):  # leave the queue as the other tests expect
        store.release_lock(tid, "alice", force=True)


def test_guidance_sliders_start_at_the_models_recorded_default(studio):
    _, ctx, url = studio
    endpoint = client(url, "ada").view_api(print_info=False, return_format="dict")
    params = {p["label"]: p for p in endpoint["named_endpoints"]["/edit"]["parameters"]}
    start = ctx.model.default_settings
    cfg = ctx.model.pipeline.config
    assert (start.guidance_scale, start.image_guidance_scale) == (
        cfg.default_guidance_scale, cfg.default_image_guidance_scale
    )  # fmt: skip
    assert params["Text guidance"]["parameter_default"] == start.guidance_scale
    assert params["Image guidance"]["parameter_default"] == start.image_guidance_scale


def test_edit_sweep_and_send_to_review(studio, tmp_path):
    store, ctx, url = studio
    img = tmp_path / "in.png"
    Image.fromarray(np.full((48, 40, 3), 120, np.uint8)).save(img)
    c = client(url, "alice")
    args = [handle_file(str(img)), "make the circle blue", 5, 5, 5, "", "", "", 2, 7.5, 1.5, 1.0]
    (before, after), status, = c.predict(*args, 7, api_name="/edit")  # fmt: skip
    assert "seed 7" in status
    first = np.asarray(Image.open(after))
    # The model edits at its 32 px (long side; even sizes), and the comparison shows the
    # original beside the result enlarged to the original's size.
    assert "input was edited at 26×32" in status and "works at 32 px" in status
    assert first.shape == (48, 40, 3) and np.asarray(Image.open(before)).shape == (48, 40, 3)
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

    # alice's lock expires while she is still looking (shortened here, not waited for: on a
    # loaded machine a short lock could expire before bob's first call already)
    store.acquire_lock(tid, "alice", seconds=0.05)
    time.sleep(0.1)
    opened = bob.predict(tid, api_name="/review_open")
    assert _header_id(opened[0]) == tid
    bob_saved = bob.predict(1, 5, 3, "nothing changed", "", "noise", "bob was here",
                            *FILTERS.values(), api_name="/review_fix")  # fmt: skip
    assert "Saved" in bob_saved[0]

    mine = (4, 4, 2, "", "", "blurry")
    alice_try = alice.predict(*mine, "", *FILTERS.values(), api_name="/review_fix")
    assert "Not saved" in alice_try[0] and "bob" in alice_try[0]
    assert alice_try[-1] is None  # a conflict is no refusal: the notice stays empty
    # The conflict view shows theirs and mine, side by side (before the images to load ahead,
    # none here, and the notice).
    theirs_and_mine, ahead = alice_try[-3:-1]
    assert ahead == []
    assert f"Theirs: version {version + 1}, bob" in theirs_and_mine
    assert "**1** · nothing changed" in theirs_and_mine and "**2** · blurry" in theirs_and_mine
    label = store.get_label(tid)
    assert label.rewards.scores == (1.0, 5.0, 3.0) and label.updated_by == "bob"
    assert label.version == version + 1
    history = store.history(tid)
    assert [h["user"] for h in history][-1] == "bob" and history[-1]["note"] == "bob was here"
    assert not any(h["user"] == "alice" for h in history)

    # Alice applies her values on top of bob's version: nothing of either is lost.
    applied = alice.predict(*mine, "", *FILTERS.values(), api_name="/review_apply_mine")
    assert f"Saved your values over theirs: `{tid}` as **fixed**" in applied[0]
    label = store.get_label(tid)
    assert label.rewards.scores == (4.0, 4.0, 2.0) and label.version == version + 2
    assert [h["user"] for h in store.history(tid)][-2:] == ["bob", "alice"]
    again = alice.predict(*mine, "", *FILTERS.values(), api_name="/review_apply_mine")
    assert "no conflict" in _refusal(again)  # nothing left to resolve, nothing saved
    assert store.get_label(tid).version == version + 2


def test_a_refused_open_keeps_the_item_held(studio):
    store, ctx, url = studio
    alice, bob = client(url, "alice"), client(url, "bob")
    held = _header_id(alice.predict(*FILTERS.values(), api_name="/review_next")[0])
    taken = _header_id(bob.predict(*FILTERS.values(), api_name="/review_next")[0])
    assert "bob" in _refusal(alice.predict(taken, api_name="/review_open"))
    assert store.get_label(held).locked_by == "alice"  # alice still holds her item
    assert store.get_label(taken).locked_by == "bob"
    bad = alice.predict("to review", "(any)", "(any)", "(any)", 4, 2, api_name="/review_forward")
    assert "score range" in _refusal(bad)  # a bad filter: nothing released
    assert store.get_label(held).locked_by == "alice"
    # No item open: the decision is refused and nothing is saved.
    stranger = client(url, "ada")
    saved_before = store.review_counts()
    nothing = stranger.predict(5, 5, 5, "", "", "", "", *FILTERS.values(),
                               api_name="/review_accept")  # fmt: skip
    assert "No item is open" in _refusal(nothing)
    assert store.review_counts() == saved_before
    for c in (alice, bob):
        c.predict(*FILTERS.values(), api_name="/review_forward")


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
    note, scores, wins, bt, alpha, agreement, raters, local, _ = ada.predict(api_name="/results")
    assert note.startswith("1 rater, ")
    systems = {r[0] for r in scores["data"]}
    assert systems == {SYSTEM_A, SYSTEM_B}
    with pytest.raises(Exception, match="Give a score"):
        rita.predict(None, "4", "3", "1", "2", "0", None, api_name="/rate_submit")


def test_time_per_item_is_measured_on_the_server(studio):
    store, ctx, url = studio
    store.add_user("tess", "annotator", helpers.PASSWORD)
    tess = client(url, "tess")
    params = tess.view_api(print_info=False, return_format="dict")["named_endpoints"]
    for name in ("/review_fix", "/review_accept", "/review_skip"):
        sent = {p["parameter_name"] for p in params[name]["parameters"]}
        assert not sent & {"seconds", "held_since", "shown_at", "state"}  # nothing to forge
    t0 = time.monotonic()
    first = tess.predict(*FILTERS.values(), api_name="/review_next")
    time.sleep(0.5)  # the annotator looks at the item
    t1 = time.monotonic()  # the accept also locks and shows the next item
    out = tess.predict(*first[5:8], *first[8:11], "", *FILTERS.values(), api_name="/review_accept")
    held_first = time.monotonic() - t0
    time.sleep(0.2)
    tess.predict(*out[5:8], *out[8:11], "", *FILTERS.values(), api_name="/review_skip")
    held_second = time.monotonic() - t1
    times = []
    for item, bounds in ((first, (0.5, held_first)), (out, (0.2, held_second))):
        (row,) = [h for h in store.history(_header_id(item[0])) if h["user"] == "tess"]
        assert bounds[0] <= row["seconds"] <= bounds[1]  # from the lock to the save
        times.append(row["seconds"])
    _, table = tess.predict(api_name="/review_progress")
    rows = {r[0]: r for r in table["data"]}
    assert rows["tess"][1] == 2 and rows["tess"][5] == 1  # saved, skipped
    assert rows["tess"][6] == round((times[0] + times[1]) / 2, 1)  # the median of two


def test_review_images_are_served_in_place_and_the_difference_is_cached(studio):
    store, ctx, url = studio
    ada = client(url, "ada")
    raw = Client(url, auth=("ada", helpers.PASSWORD), verbose=False, download_files=False)
    tid = helpers.triplet_ids(store)[-1]
    store.release_lock(tid, "ada", force=True)  # an earlier test's annotator may hold it
    triplet = store.get_triplet(tid)
    views = [raw.predict(tid, api_name="/review_open") for _ in range(2)]
    for out in views:
        original, edited, diff = out[1:4]
        assert original["path"] == str(store.image_path(triplet["original"]))  # not copied
        assert edited["path"] == str(store.image_path(triplet["edited"]))
        assert Path(diff["path"]).parent == ctx.media.root / "difference"
    assert views[0][3]["path"] == views[1][3]["path"]  # computed once, then reused
    downloaded = ada.predict(tid, api_name="/review_open")[3]
    a = np.asarray(store.image(triplet["original"]), np.int16)
    b = np.asarray(store.image(triplet["edited"]), np.int16)
    expected = np.clip(np.abs(b - a) * 3, 0, 255).astype(np.uint8)
    assert np.array_equal(np.asarray(Image.open(downloaded).convert("RGB")), expected)
    ada.predict(*FILTERS.values(), api_name="/review_forward")  # release the item


def test_difference_images_evict_the_least_recently_used(tmp_path):
    store = build_store(tmp_path / "d.db", n_train=3, n_bench=0)
    files = [store.image_path(t[k]) for t in store.list_triplets() for k in ("original", "edited")]
    cache = DifferenceImages(tmp_path / "diff", keep=2)
    first = cache.path(files[0], files[1])
    second = cache.path(files[2], files[3])
    assert cache.path(files[0], files[1]) == first  # a hit makes it the most recent
    cache.path(files[4], files[5])
    assert Path(first).exists() and not Path(second).exists()
    assert len(list((tmp_path / "diff").glob("*.png"))) == 2
    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 256, (2, 9, 7, 3), dtype=np.uint8)
    expected = np.clip(np.abs(b.astype(np.int16) - a) * 3, 0, 255).astype(np.uint8)
    got = difference(Image.fromarray(a), Image.fromarray(b))
    assert np.array_equal(np.asarray(got), expected)


def test_reveal_and_rater_exclusion_through_the_api(studio):
    store, ctx, url = studio
    rita, ada, alice = client(url, "rita"), client(url, "ada"), client(url, "alice")
    before = ctx.rating.evaluation
    status = ada.predict(SYSTEM_A, SYSTEM_B, 2, 0, True, api_name="/rate_configure")
    assert "are revealed after each vote" in status
    try:
        rita.predict(api_name="/rate_next")
        out = rita.predict("5", "4", "3", "1", "2", "0", "left", api_name="/rate_submit")
        assert "Rating saved. Left was **secret-system-" in out[0]
        with pytest.raises(Exception, match="may not see or configure results"):
            alice.predict("rita", "", api_name="/results_exclude")
        note, *_tables, raters, _local, _choices = ada.predict(
            "rita", "always left", api_name="/results_exclude"
        )
        assert "Excluded from these tables: rita" in note
        row = [r for r in raters["data"] if r[0] == "rita"][0]
        assert row[2] is True and row[-1] == "always left"
        note = ada.predict("rita", "", api_name="/results_include")[0]
        assert "Excluded" not in note
        assert [r["action"] for r in store.exclusion_log()] == ["exclude", "include"]
    finally:
        ada.predict(before.system_a, before.system_b, before.overlap, 0, False,
                    api_name="/rate_configure")  # fmt: skip


def test_uploads_go_through_the_projects_image_loader(studio, tmp_path):
    store, ctx, url = studio
    c = client(url, "alice")
    args = ["make the circle blue", 5, 5, 5, "", "", "", 1, 7.5, 1.5, 1.0, 0]
    grey16 = tmp_path / "grey16.png"
    Image.fromarray(np.full((16, 16), 32768, np.uint16)).save(grey16)  # mid-grey, 16 bit
    assert Image.open(grey16).mode.startswith("I")
    (before, _), _ = c.predict(handle_file(str(grey16)), *args, api_name="/edit")
    seen = np.asarray(Image.open(before))
    assert seen.shape == (16, 16, 3) and abs(int(seen.mean()) - 128) <= 1  # not clipped white
    good = tmp_path / "good.png"
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(good)
    bad = {
        "empty.png": (b"", "is empty (0 bytes)"),
        "truncated.png": (good.read_bytes()[:40], "the uploaded image"),
        "drawing.svg": (b'<svg xmlns="http://www.w3.org/2000/svg"/>', "not an image"),
    }
    for name, (data, message) in bad.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(Exception, match=re.escape(message)) as caught:
            c.predict(handle_file(str(path)), *args, api_name="/edit")
        assert "Could not preprocess" not in str(caught.value)
        assert "the uploaded image" in str(caught.value)
    huge = tmp_path / "huge.png"
    Image.new("L", (12_000, 12_000)).save(huge)  # 144 megapixels, a few KB of PNG
    with pytest.raises(Exception, match="the uploaded image") as caught:
        c.predict(handle_file(str(huge)), *args, api_name="/edit")
    assert "pixels" in str(caught.value) or "bomb" in str(caught.value)
