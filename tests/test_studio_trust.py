"""Results a team can trust (#14 point 4): gold pairs mixed into a campaign, per-rater agreement,
excluded raters, local single-user ratings kept apart, the optional reveal after a vote."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import pytest

from core.store import ConflictError, StoreInputError
from studio.auth import LOCAL_USER, ensure_local_user
from studio.media import NeutralImages
from studio.rating import BlindRating, Evaluation, results
from studio.results import ResultsConfig
from tests.studio_helpers import (
    BAD,
    GOOD,
    SYSTEM_A,
    SYSTEM_B,
    add_gold_pairs,
    build_store,
)

FAST = ResultsConfig(n_bootstrap=50)
THREE = {"following": 3, "preserving": 3, "quality": 3}


@pytest.fixture
def store(tmp_path):
    store = build_store(tmp_path / "trust.db", n_bench=6)
    ensure_local_user(store)
    return store


def _rating(store, tmp_path, **kw) -> BlindRating:
    return BlindRating(store, Evaluation(SYSTEM_A, SYSTEM_B, **kw), NeutralImages(tmp_path / "m"))


def _answer(rating: BlindRating, rater: str, scores_of_a, prefer_a: bool | None = True) -> dict:
    """Rate the rater's current pair, giving system A ``scores_of_a`` (B the opposite)."""
    pair = rating.next(rater)
    with rating.store.db() as db:
        a_side, gold = db.execute(
            "SELECT a_side, gold_id FROM rating_assignments WHERE id = ?", [pair.assignment_id]
        ).fetchone()
    other = BAD if scores_of_a == GOOD else (GOOD if scores_of_a == BAD else THREE)
    left, right = (scores_of_a, other) if a_side == "L" else (other, scores_of_a)
    side = {True: "left" if a_side == "L" else "right", False: "right" if a_side == "L" else "left"}
    rating.submit(rater, pair.assignment_id, left, right, side.get(prefer_a, "tie"))
    return {"gold": gold, "assignment": pair.assignment_id, "pair": pair}


def test_gold_pairs_are_mixed_in_blind_and_scored_per_rater(store, tmp_path):
    gold_ids = add_gold_pairs(store, 2)
    rating = _rating(store, tmp_path, gold_share=0.5, seed=3)
    seen = [_answer(rating, "rita", GOOD) for _ in range(8)]
    golds = [s["gold"] for s in seen if s["gold"] is not None]
    assert sorted(golds) == sorted(gold_ids)  # each gold pair once, between real pairs
    assert seen[-1]["gold"] is None or len(seen) > len(golds)
    done, assigned = rating.counts("rita")
    assert done == assigned == 8  # the rater's progress counts gold pairs like real ones
    assert rating.coverage()["ratings_done"] == 6  # the campaign's coverage does not
    raul = [_answer(rating, "raul", THREE, prefer_a=None)["gold"] for _ in range(8)]
    assert any(raul)  # a tie on every pair, gold ones included
    report = results(store, FAST)
    systems = set(report.scores["system"])
    assert systems == {SYSTEM_A, SYSTEM_B}  # gold pairs never reach the system tables
    raters = report.raters.set_index("rater")
    assert raters.loc["rita", "gold_n"] == 2 and raters.loc["rita", "gold_accuracy"] == 1
    assert raters.loc["rita", "gold_score_mae"] == 0
    assert raters.loc["raul", "score_sd"] == 0 and raters.loc["raul", "modal_share"] == 1
    assert raters.loc["raul", "gold_n"] == sum(g is not None for g in raul)
    assert raters.loc["raul", "gold_accuracy"] == 0  # a tie is wrong on a gold pair
    assert raters.loc["raul", "gold_score_mae"] == 2  # |3 - 5| and |3 - 1|
    assert math.isnan(raters.loc["raul", "mae_vs_others"]) is False


def test_gold_pairs_are_never_shown_once_the_real_work_is_done(store, tmp_path):
    add_gold_pairs(store, 6)
    rating = _rating(store, tmp_path, gold_share=1.0, overlap=1)
    kinds = [_answer(rating, "rita", GOOD)["gold"] is not None for _ in range(12)]
    assert kinds == [True] * 6 + [False] * 6  # share 1: gold first, then only real pairs
    assert rating.next("rita") is None
    with pytest.raises(ValueError, match="gold_share"):
        Evaluation(SYSTEM_A, SYSTEM_B, gold_share=1.5)


def test_an_excluded_rater_leaves_the_tables_and_can_come_back(store, tmp_path):
    rating = _rating(store, tmp_path)
    for _ in range(6):
        _answer(rating, "rita", GOOD)
        _answer(rating, "raul", BAD, prefer_a=False)
    mean_a = lambda report: report.scores.query(  # noqa: E731
        f"system == '{SYSTEM_A}' and perspective == 'following'"
    )["mean"].item()
    assert mean_a(results(store, FAST)) == 3.0
    with pytest.raises(StoreInputError, match="only an active admin"):
        store.exclude_rater("raul", by="rita")
    store.exclude_rater("raul", by="ada", reason="reverses every pair")
    report = results(store, FAST)
    assert mean_a(report) == 5.0 and set(report.ratings["rater"]) == {"rita"}
    raters = report.raters.set_index("rater")
    assert raters.loc["raul", "excluded"] and not raters.loc["rita", "excluded"]
    assert raters.loc["raul", "exclusion_reason"] == "reverses every pair"
    assert raters.loc["raul", "preference_agreement"] == 0  # still measured against rita
    store.include_rater("raul", by="ada")
    assert mean_a(results(store, FAST)) == 3.0


def test_local_mode_ratings_are_kept_apart(store, tmp_path):
    rating = _rating(store, tmp_path)
    for _ in range(3):
        _answer(rating, "rita", GOOD)
        _answer(rating, LOCAL_USER, BAD, prefer_a=False)
    assert {r["rater"]: r["mode"] for r in store.ratings()} == {"rita": "team", LOCAL_USER: "local"}
    report = results(store, FAST)
    assert set(report.ratings["rater"]) == {"rita"} and len(report.preferences) == 3
    assert list(report.local_scores["system"]) == sorted([SYSTEM_A, SYSTEM_B])
    assert report.local_scores.set_index("system").loc[SYSTEM_A, "following"].startswith("1.00")
    assert report.raters.set_index("rater").loc[LOCAL_USER, "mode"] == "local"
    both = results(store, FAST, include_local=True)
    assert set(both.ratings["rater"]) == {"rita", LOCAL_USER}


def test_reveal_names_the_systems_only_when_the_campaign_asks(store, tmp_path):
    rating = _rating(store, tmp_path, reveal=True)
    shown = _answer(rating, "rita", GOOD)
    text = rating.reveal("rita", shown["assignment"])
    assert SYSTEM_A in text and SYSTEM_B in text
    with store.db() as db:
        a_side = db.execute(
            "SELECT a_side FROM rating_assignments WHERE id = ?", [shown["assignment"]]
        ).fetchone()[0]
    left = SYSTEM_A if a_side == "L" else SYSTEM_B
    assert text.startswith(f"Left was **{left}**")
    with pytest.raises(ConflictError, match="not a finished rating of yours"):
        rating.reveal("raul", shown["assignment"])
    add_gold_pairs(store, 1)
    gold = _rating(store, tmp_path, gold_share=1.0)
    answer = _answer(gold, "raul", GOOD)
    assert "check pair" in gold.reveal("raul", answer["assignment"])


def test_shapes_gold_pairs_have_exact_oracle_answers():
    from core.store import Store
    from data.interop import import_shapes_folder
    from data.shapes.synth import SynthConfig, synthesize
    from studio.gold import add_shapes_gold

    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "shapes.db")
        synth = SynthConfig(train=0, bench=1, seed=0, size=32)
        synthesize(Path(tmp) / "shapes", synth, workers=1, progress=False)
        import_shapes_folder(store, Path(tmp) / "shapes", progress=False)
        ids = add_shapes_gold(store)
        assert len(ids) == 7 and add_shapes_gold(store) == ids  # one per item; idempotent
        for gold in store.gold_items():
            item = store.get_triplet(gold["item_id"])
            assert gold["better"] == item["target"]  # the exact target is the known answer
            better = [gold[f"better_{p}"] for p in ("following", "preserving", "quality")]
            worse = [gold[f"worse_{p}"] for p in ("following", "preserving", "quality")]
            assert better == [5.0, 5.0, 5.0] and np.mean(worse) <= 4.0
        store.close()
