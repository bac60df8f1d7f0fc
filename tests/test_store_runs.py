"""core.store: benchmark runs, outputs, verdicts and blind ratings."""

from __future__ import annotations

import pytest
from PIL import Image

from core.images import ImageError, image_hash
from core.rewards import RewardValidationError
from core.store import (
    ConflictError,
    NotFoundError,
    StoreInputError,
)
from tests._store_helpers import add, counts, img, png

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
