"""The review queue's doubt order counts a reward-model judge's own uncertainty: of two
triplets with the same judge scores, the one the reward model is less sure about comes first;
and the review sliders hold judge scores exactly."""

from __future__ import annotations

from core.review_doubt import MachineLabel, ReviewFilter, doubt_of
from core.review_queue import ReviewQueue
from core.store import Store
from tests._store_helpers import R, add
from tests.studio_helpers import build_store, tiny_model


def test_doubt_adds_the_largest_predicted_std():
    plain = MachineLabel((4.0, 5.0, 3.0), ("x", "", "y"))
    unsure = MachineLabel((4.0, 5.0, 3.0), ("x", "", "y"), std=(0.4, 1.7, 0.9))
    assert doubt_of([unsure]) == doubt_of([plain]) + 1.7


def test_queue_puts_the_reward_models_doubtful_items_first(tmp_path):
    store = Store(tmp_path / "s.db")
    ids = [add(store, seed=i) for i in range(3)]
    stds = [{"following": 0.2, "preserving": 0.3, "quality": 0.1},
            {"following": 0.4, "preserving": 2.1, "quality": 0.5},
            None]  # fmt: skip
    store.add_annotations(
        {"triplet_id": tid, "kind": "judge", "rewards": R((4, 5, 5), ("instruction half done", "", "")),
         "judge_model": "reward-model:rm", "prompt_version": "n/a",
         "meta": {"std": std} if std else {}}
        for tid, std in zip(ids, stds)
    )  # fmt: skip
    queue = ReviewQueue(store)
    assert queue.next_item("alice").triplet_id == ids[1]
    # 2.1 and 0.3 above the same judge-only doubt of the triplet without a std
    assert abs(queue.doubt(ids[1]) - queue.doubt(ids[2]) - 2.1) < 1e-9
    assert abs(queue.doubt(ids[0]) - queue.doubt(ids[2]) - 0.3) < 1e-9


def test_upcoming_lists_what_next_item_would_give_without_taking_it(tmp_path):
    store = Store(tmp_path / "s.db")
    ids = [add(store, seed=i) for i in range(4)]
    stds = [0.1, 2.0, 1.0, 0.5]  # doubt order: ids[1], ids[2], ids[3], ids[0]
    store.add_annotations(
        {"triplet_id": tid, "kind": "judge", "rewards": R((4, 5, 5), ("", "", "")),
         "judge_model": "reward-model:rm", "prompt_version": "n/a",
         "meta": {"std": {"following": s, "preserving": 0.0, "quality": 0.0}}}
        for tid, s in zip(ids, stds)
    )  # fmt: skip
    queue = ReviewQueue(store)
    held = queue.next_item("alice")
    assert held.triplet_id == ids[1]
    ahead = queue.upcoming("alice", ReviewFilter(), held.triplet_id, limit=2)
    assert ahead == [ids[2], ids[3]]
    # Nothing was taken: bob gets the first of them, and alice no longer sees it ahead.
    assert queue.next_item("bob").triplet_id == ids[2]
    assert queue.upcoming("alice", ReviewFilter(), held.triplet_id, limit=5) == [ids[3], ids[0]]
    assert queue.upcoming("alice", ReviewFilter(), ids[0], limit=5) == []


def test_review_sliders_hold_judge_scores_exactly(tmp_path):
    """A judge's 2.6 must sit on the review slider, not between two 0.5 steps."""
    from studio.app import build_demo, create_context

    ctx = create_context(build_store(tmp_path / "s.db"), tiny_model(), login_required=False)
    config = build_demo(ctx).get_config_file()
    steps = {c["props"].get("elem_id"): c["props"].get("step") for c in config["components"]}
    assert all(steps[f"review-score-{p}"] == 0.1 for p in ("following", "preserving", "quality"))
