"""Tool-call parsing: what real models write, read into one call or a clear error; never an exception."""

from __future__ import annotations

import pytest

from engine.agent.evidence import parse_seconds, snap
from engine.agent.parsing import parse_turn
from engine.agent.resolve import read_cited

TOOLS = frozenset({"search", "inspect", "transcript", "screen_text", "verify", "finish"})


@pytest.mark.parametrize("text, name, args", [
    ('<tool_call>{"name": "search", "arguments": {"query": "red van"}}</tool_call>', "search", {"query": "red van"}),
    ('I will look.\n<tool_call>\n{"name": "inspect", "arguments": {"video": 2, "start": 1, "end": 5}}\n</tool_call>',
     "inspect", {"video": 2, "start": 1, "end": 5}),
    ('```json\n{"tool": "search", "args": {"query": "taxi"}}\n```', "search", {"query": "taxi"}),
    ("```\n{'name': 'search', 'arguments': {'query': 'taxi', 'video': None,},}\n```", "search",
     {"query": "taxi", "video": None}),
    ('{"name": "transcript", "arguments": "{\\"video\\": 1, \\"start\\": 0, \\"end\\": 9}"}', "transcript",
     {"video": 1, "start": 0, "end": 9}),
    ('{"function": {"name": "search", "arguments": {"query": "x"}}}', "search", {"query": "x"}),
    ('{"search": {"query": "dog"}}', "search", {"query": "dog"}),
    ('{"name": "search", "query": "dog"}', "search", {"query": "dog"}),
    ('<tool_call>{"name": "finish", "arguments": {"answer": "At 5 s.", "evidence": [{"moment": 3}]}}',  # unclosed
     "finish", {"answer": "At 5 s.", "evidence": [{"moment": 3}]}),
    ('search(query="red van", modality="visual")', "search", {"query": "red van", "modality": "visual"}),
    ("<think>maybe {\"name\": \"verify\"}</think>\n<tool_call>{\"name\": \"search\", \"arguments\": {}}</tool_call>",
     "search", {}),
])
def test_calls_are_read(text, name, args):
    parsed = parse_turn(text, TOOLS)
    assert parsed.error is None, parsed.error
    assert parsed.call is not None and parsed.call.name == name and parsed.call.arguments == args


@pytest.mark.parametrize("text, fragment", [
    ('<tool_call>{"name": "search", "arguments": {"query": "x"</tool_call>', "not valid JSON"),
    ('<tool_call>{"arguments": {"query": "x"}}</tool_call>', "no \"name\""),
    ('<tool_call>["just", "a", "list"]</tool_call>', "must be a JSON object"),
    ('<tool_call>{"name": "search", "arguments": [1, 2]}</tool_call>', "must be a JSON object"),
    ('search("red van")', "write arguments by name"),
    ('<tool_call>', "no complete JSON object"),
    ('<tool_call>' + "{" * 5000 + '</tool_call>', "not valid JSON"),
])
def test_broken_calls_give_an_error_not_an_exception(text, fragment):
    parsed = parse_turn(text, TOOLS)
    assert parsed.call is None and fragment in (parsed.error or ""), parsed


def test_plain_text_is_reasoning_without_a_call():
    parsed = parse_turn("The van appears at 12 seconds, I think.", TOOLS)
    assert parsed.call is None and parsed.error is None and "12 seconds" in parsed.reasoning


def test_only_the_first_of_several_calls_is_taken_and_the_rest_counted():
    text = ('<tool_call>{"name": "search", "arguments": {"query": "a"}}</tool_call>'
            '<tool_call>{"name": "search", "arguments": {"query": "b"}}</tool_call>')
    parsed = parse_turn(text, TOOLS)
    assert parsed.call.arguments == {"query": "a"} and parsed.extra_calls == 1


def test_reasoning_keeps_the_text_around_the_call_and_the_thinking():
    parsed = parse_turn('<think>need the sign</think>Checking.<tool_call>{"name": "search", "arguments": '
                        '{"query": "sign"}}</tool_call>', TOOLS)
    assert "need the sign" in parsed.reasoning and "Checking." in parsed.reasoning


@pytest.mark.parametrize("value, seconds", [(12, 12.0), ("12.5", 12.5), ("12.5s", 12.5), ("0:12.5", 12.5),
                                            ("1:02:03.5", 3723.5), ("3 seconds", 3.0)])
def test_times_are_read_in_seconds(value, seconds):
    assert parse_seconds(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["soon", "", None, True, "12:99:xx"])
def test_non_times_are_refused(value):
    with pytest.raises(ValueError):
        parse_seconds(value)


def test_snap_orders_and_clamps_into_the_video():
    assert snap(-3, 5, 10) == (0.0, 5.0)
    assert snap(8, 50, 10) == (8.0, 10.0)
    assert snap(7, 3, 10) == (3.0, 7.0)
    assert snap(12, 15, 10) == (10.0, 10.0)  # empty: callers treat it as nothing left
    assert snap(5, 900, None) == (5.0, 900.0)


@pytest.mark.parametrize("item, expect", [
    ({"moment": 12}, (12, None, None, None)),
    ({"moment_id": "m12"}, (12, None, None, None)),
    ("m7", (7, None, None, None)),
    ("[m7]", (7, None, None, None)),
    ({"video": 2, "start": "0:00:12", "end": 15.5}, (None, 2, 12.0, 15.5)),
    ({"video_id": "video 3", "time": 4}, (None, 3, 4.0, 4.0)),
    ([2, 1, 3], (None, 2, 1.0, 3.0)),
    ("video 2 12.0-15.5 s", (None, 2, 12.0, 15.5)),
])
def test_cited_items_are_read(item, expect):
    c = read_cited(item)
    assert (c.moment_id, c.video_id, c.start, c.end) == expect


@pytest.mark.parametrize("item", [{"video": 2, "start": "later"}, "somewhere", True, {"moment": "none"}, None])
def test_unreadable_cited_items_are_none_or_empty(item):
    c = read_cited(item)
    assert c is None or (c.moment_id is None and c.start is None)
