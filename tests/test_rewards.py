"""The reward schema: validation, views and the RewardEdit-20K round trip."""

import json
import math

import numpy as np
import pytest

from core.rewards import (
    PERSPECTIVES,
    Label,
    Rewards,
    RewardValidationError,
    dump_rewardedit,
    load_rewardedit,
    write_rewardedit,
)


def test_best_is_five_with_empty_texts():
    best = Rewards.best()
    assert best.scores == (5.0, 5.0, 5.0)
    assert best.texts == ("", "", "")
    assert best.joined_text() == "; ; "


def test_order_and_views():
    r = Rewards.from_scores([1, 2.5, np.float32(4)], ["a", "b", "c"])
    assert [name for name, _ in r.items()] == list(PERSPECTIVES)
    assert r.scores == (1.0, 2.5, 4.0)
    assert r["preserving"] == Label(2.5, "b")
    assert r.joined_text() == "a; b; c"
    assert r.replace("quality", score=0).scores == (1.0, 2.5, 0.0)
    assert r.replace("quality", text="blur").quality.text == "blur"


@pytest.mark.parametrize(
    "score, fragment",
    [
        (5.01, "in [0, 5]"),
        (-0.1, "in [0, 5]"),
        (math.nan, "finite"),
        (math.inf, "finite"),
        ("5", "must be a number"),
        (None, "must be a number"),
        (True, "must be a number"),
    ],
)
def test_score_validation(score, fragment):
    with pytest.raises(
        RewardValidationError, match=fragment.replace("[", r"\[").replace("]", r"\]")
    ):
        Label(score)


def test_wrong_counts_and_names():
    with pytest.raises(RewardValidationError, match="expected 3 scores"):
        Rewards.from_scores([5, 5])
    with pytest.raises(RewardValidationError, match="expected 3 failure texts"):
        Rewards.from_scores([5, 5, 5], ["", ""])
    with pytest.raises(RewardValidationError, match="unknown perspective"):
        Rewards.best()["aesthetics"]
    with pytest.raises(RewardValidationError, match="missing perspective 'quality'"):
        Rewards.from_dict({"following": {"score": 5}, "preserving": {"score": 5}})
    with pytest.raises(RewardValidationError, match="unknown perspective"):
        Rewards.from_dict({**Rewards.best().to_dict(), "style": {"score": 1}})
    with pytest.raises(RewardValidationError, match="preserving: missing field 'score'"):
        Rewards.from_dict(
            {"following": {"score": 5}, "preserving": {"text": ""}, "quality": {"score": 5}}
        )
    with pytest.raises(RewardValidationError, match="preserving: score must be in"):
        Rewards.from_scores([5, 7, 5])


def test_dict_round_trip():
    r = Rewards.from_scores([0, 3.25, 5], ["the red circle was not turned blue", "", "blur"])
    assert Rewards.from_dict(r.to_dict()) == r
    assert Rewards.from_dict(json.loads(json.dumps(r.to_dict()))) == r


def _doc():
    return {
        "0001": [
            {"Score": 5, "Negative Prompt": ""},
            {"Score": 3, "Negative Prompt": "the background changed colour"},
            {"Score": 4.5, "Negative Prompt": "slight blur; ghosting at the left edge"},
        ],
        "0002": [
            {"Score": 0, "Negative Prompt": "nothing was removed"},
            {"Score": 5, "Negative Prompt": ""},
            {"Score": 2, "Negative Prompt": "noise blotches"},
        ],
    }


def test_rewardedit_round_trip_exact(tmp_path):
    doc = _doc()
    good, bad = load_rewardedit(doc)
    assert bad == []
    assert good["0001"].scores == (5.0, 3.0, 4.5)
    assert good["0002"].following.text == "nothing was removed"
    assert dump_rewardedit(good) == doc
    # through a file: same bytes out as in (the JSON value, key order and integer-ness kept)
    path = tmp_path / "rewardedit.json"
    path.write_text(json.dumps(doc))
    good2, _ = load_rewardedit(path)
    out = tmp_path / "out.json"
    write_rewardedit(good2, out)
    assert json.loads(out.read_text()) == doc
    assert json.dumps(json.loads(out.read_text())) == json.dumps(doc)


def test_rewardedit_malformed_entries_are_reported_not_dropped():
    doc = _doc()
    doc["bad-range"] = [{"Score": 6, "Negative Prompt": ""}] * 3
    doc["bad-len"] = [{"Score": 5, "Negative Prompt": ""}] * 2
    doc["bad-field"] = [{"score": 5}, {"Score": 5}, {"Score": 5}]
    doc["bad-type"] = "5,5,5"
    doc["no-text"] = [
        {"Score": 5, "Negative Prompt": ""},
        {"Score": 4},
        {"Score": 5, "Negative Prompt": None},
    ]
    good, bad = load_rewardedit(doc)
    assert set(good) == {"0001", "0002"}
    reasons = {m.triplet_id: m.reason for m in bad}
    assert set(reasons) == {"bad-range", "bad-len", "bad-field", "bad-type", "no-text"}
    assert reasons["no-text"] == "preserving: missing field 'Negative Prompt'"
    assert "in [0, 5]" in reasons["bad-range"]
    assert "got 2" in reasons["bad-len"]
    assert "missing field 'Score'" in reasons["bad-field"]
    assert "expected a list" in reasons["bad-type"]
    assert len(good) + len(bad) == len(doc)


def test_rewardedit_unreadable_document(tmp_path):
    with pytest.raises(RewardValidationError, match="not valid JSON"):
        load_rewardedit('{"a": [')
    torn = tmp_path / "torn.json"
    torn.write_text('{"a": [')
    with pytest.raises(RewardValidationError, match=f"{torn} is not valid JSON"):
        load_rewardedit(torn)
    with pytest.raises(RewardValidationError, match="must be an object"):
        load_rewardedit("[1, 2]")
    with pytest.raises(RewardValidationError, match="cannot read"):
        load_rewardedit(tmp_path / "missing.json")
