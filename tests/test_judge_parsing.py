"""Parsing of judge replies: tolerant of real model output, never guessing a value."""

from __future__ import annotations

import pytest

from core.judges.base import OUT_OF_RANGE, UNPARSABLE, Verdict
from core.judges.parsing import (
    ReplyError,
    find_objects,
    parse_annotation,
    parse_evaluation,
    parse_score,
    parse_yes_no,
)
from core.judges.prompts import (
    PromptError,
    identify,
    load_prompt_set,
    parse_prompt_file,
    response_schema,
)
from core.rewards import Label

ALL3 = (
    '{"following": {"score": 2, "failure_points": "the red circle was not turned blue"},'
    ' "preserving": {"score": 4.5, "failure_points": ""},'
    ' "quality": {"score": 5, "failure_points": []}}'
)


@pytest.mark.parametrize(
    "reply",
    [
        '{"score": 3, "failure_points": "the star is green, not blue"}',
        "{'score': 3, 'failure_points': 'the star is green, not blue'}",
        '```json\n{"score": 3.0, "failure_points": "the star is green, not blue"}\n```',
        "Sure! Here is my assessment:\n```python\n{'Score': '3', 'Failure Points': "
        "'the star is green, not blue'}\n```\nLet me know if you need more.",
        'The edit is partial. {"score": "3/5", "failure_points": ["the star is green, not blue"]}',
        '{"Instruction Following Score": 3, "failure_points": "the star is green, not blue"}',
        '{"following": {"score": 3, "failure_points": "the star is green, not blue"}}',
    ],
)
def test_single_perspective_annotation_variants(reply):
    got = parse_annotation(reply, ("following",))
    assert got == {"following": Label(3.0, "the star is green, not blue")}


def test_all_three_and_list_texts():
    got = parse_annotation(ALL3)
    assert got["following"] == Label(2, "the red circle was not turned blue")
    assert got["preserving"] == Label(4.5, "")
    assert got["quality"] == Label(5, "")
    aliases = ALL3.replace('"following"', '"Instruction Following"').replace(
        '"quality"', '"generation_quality"'
    )
    assert parse_annotation(aliases) == got
    two = parse_annotation('{"score": 1, "failure_points": ["a", " b ", ""]}', ("quality",))
    assert two["quality"].text == "a; b"


@pytest.mark.parametrize(
    "reply, passed, score",
    [
        ("{'following': 'yes', 'score': 4.5}", True, 4.5),
        ('{"following": "No.", "score": 1}', False, 1.0),
        ('{"verdict": true, "score": "5"}', True, 5.0),
        ('Answer: {"Instruction_Following": "YES, it was done", "score": 4}', True, 4.0),
        ('{"following": {"verdict": "no", "score": 0}}', False, 0.0),
    ],
)
def test_evaluation_variants(reply, passed, score):
    assert parse_evaluation(reply, ("following",)) == {"following": Verdict(passed, score)}


@pytest.mark.parametrize(
    "reply, code",
    [
        ("", UNPARSABLE),
        ("The instruction was followed well, I would give it a 4.", UNPARSABLE),
        ('{"score": 4', UNPARSABLE),  # truncated
        ('{"failure_points": "x"}', UNPARSABLE),  # no score
        ('{"score": 4}', UNPARSABLE),  # no failure text: not guessed as empty
        ('{"score": "four", "failure_points": ""}', UNPARSABLE),
        ('{"score": true, "failure_points": ""}', UNPARSABLE),
        ('{"score": 7, "failure_points": ""}', OUT_OF_RANGE),
        ('{"score": -1, "failure_points": ""}', OUT_OF_RANGE),
        ('{"score": NaN, "failure_points": ""}', OUT_OF_RANGE),
        ('{"score": "6/5", "failure_points": ""}', OUT_OF_RANGE),
        ('{"score": 5.5, "failure_points": ""}', OUT_OF_RANGE),
        ('{"score": 2, "failure_points": "' + "x" * 2001 + '"}', OUT_OF_RANGE),
        ('{"score": 2, "failure_points": {"a": 1}}', UNPARSABLE),
        ('{"score": 2, "rating": 3, "failure_points": ""}', UNPARSABLE),  # two scores
        ('{"score": [2], "failure_points": ""}', UNPARSABLE),  # a list, not a number
        # two different answers in one reply are ambiguous
        (
            '{"score": 2, "failure_points": ""} or maybe {"score": 3, "failure_points": ""}',
            UNPARSABLE,
        ),
    ],
)
def test_bad_annotation_replies(reply, code):
    with pytest.raises(ReplyError) as e:
        parse_annotation(reply, ("following",))
    assert e.value.code == code
    assert str(e.value)  # a sentence, not an empty error


def test_repeated_identical_answer_is_fine_and_out_of_range_wins():
    one = '{"score": 2, "failure_points": "x"}'
    assert parse_annotation(f"{one}\nFinal: {one}", ("quality",))["quality"] == Label(2, "x")
    with pytest.raises(ReplyError) as e:
        parse_annotation('{"score": "bad"} {"score": 9, "failure_points": ""}', ("quality",))
    assert e.value.code == OUT_OF_RANGE


@pytest.mark.parametrize(
    "reply",
    [
        "{'following': 'maybe', 'score': 3}",
        "{'following': 1, 'score': 3}",
        "{'following': 'yes', 'score': 11}",
    ],
)
def test_bad_evaluation_replies(reply):
    with pytest.raises(ReplyError) as e:
        parse_evaluation(reply, ("following",))
    assert e.value.code == OUT_OF_RANGE


def test_missing_perspective_in_one_call_reply():
    with pytest.raises(ReplyError, match="quality"):
        parse_annotation(ALL3.split(', "quality"')[0] + "}")


def test_value_helpers():
    assert parse_score(4) == 4.0 and parse_score("4.5") == 4.5 and parse_score("3 out of 5") == 3.0
    assert parse_yes_no("Yes.") is True and parse_yes_no("FALSE") is False
    for bad in (None, [], "high"):
        with pytest.raises(ReplyError):
            parse_score(bad)
    with pytest.raises(ValueError):
        parse_annotation("{}", ("nonsense",))


def test_find_objects_respects_quotes_and_nesting():
    text = 'pre {"a": "}{", "b": {"c": 1}} mid {\'d\': "it\'s"} post {unclosed'
    assert find_objects(text) == ['{"a": "}{", "b": {"c": 1}}', "{'d': \"it's\"}"]


# -- prompts -------------------------------------------------------------------------------


def test_prompt_sets_render_and_identify():
    for mode in ("one", "three"):
        ps = load_prompt_set(mode)
        assert ps.label == "v1" and len(ps.digest) == 16
        for task in ("annotate", "evaluate"):
            prompts = ps.for_task(task)
            assert len(prompts) == (1 if mode == "one" else 3)
            for p in prompts:
                instruction = 'turn the "red" circle {blue}\nplease'
                system, user = p.render(instruction)
                assert instruction in user and "{instruction}" not in user and system
                found, got = identify(user)
                assert (found.name, found.version, got) == (p.name, 1, instruction)
    assert load_prompt_set("one").digest != load_prompt_set("three").digest
    assert identify("some other prompt") is None


def test_prompt_file_errors(tmp_path):
    with pytest.raises(PromptError, match="exactly once"):
        parse_prompt_file("[system]\nS\n[user]\nno placeholder", "annotate_all", 1)
    with pytest.raises(PromptError, match=r"\[system\]"):
        parse_prompt_file("just text {instruction}", "annotate_all", 1)
    with pytest.raises(PromptError, match="no complete prompt set"):
        load_prompt_set("one", directory=tmp_path)
    with pytest.raises(ValueError, match="mode"):
        load_prompt_set("two")


def test_response_schema_is_strict_and_matches_the_parser():
    schema = response_schema("annotate")
    assert schema["json_schema"]["strict"] is True
    props = schema["json_schema"]["schema"]["properties"]
    assert set(props) == {"following", "preserving", "quality"}
    assert props["quality"]["properties"]["score"] == {"type": "number", "minimum": 0, "maximum": 5}
    ev = response_schema("evaluate")["json_schema"]["schema"]["properties"]["following"]
    assert ev["properties"]["verdict"]["enum"] == ["yes", "no"]
