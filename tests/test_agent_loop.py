"""The agent loop's exact behaviour, driven by a scripted model (tests/agent_doubles.py)."""

from __future__ import annotations

import json

import pytest

from engine.agent import Budget, answer
from storage.errors import SightlineError
from tests.agent_doubles import ScriptedChat, call, two_video_backend
from tests.contracts import assert_answer


def _run(turns, verdicts=(), video_id=None, **kw):
    backend = two_video_backend()
    model = ScriptedChat(list(turns), list(verdicts))
    steps = []
    result = answer("when do they say dagger", backend, model, video_id=video_id, on_step=steps.append, **kw)
    assert result.mode == "agent", result.answer  # a crash inside the loop would show as evidence-only
    return result, model, backend, steps


def test_a_timestamp_no_tool_returned_is_dropped_when_verify_says_no():
    result, model, _, steps = _run(
        [call("finish", answer="They say it at 50 s.", evidence=[{"video": 2, "start": 15, "end": 18}])],
        verdicts=["NO, nobody speaks here."])
    # the invented window was re-watched (verify ran on exactly that window) and then dropped
    check = model.verify_calls()[0]
    assert check["clips"][0].timestamps[0] == pytest.approx(15.0)
    assert any(s.title == "evidence dropped" and "15.0-18.0" in s.observation for s in steps)
    # it was the only item cited, and nothing unverified that no tool returned is shown: no evidence is left,
    # and the time the answer states went with it
    assert result.evidence == [], result.evidence
    assert result.answer == "They say it at [unverified time removed]."


def test_a_timestamp_no_tool_returned_is_kept_only_as_verified_window():
    result, model, _, _ = _run(
        [call("finish", answer="The dagger line.", evidence=[{"video": 2, "start": 15, "end": 18}])],
        verdicts=["YES, the text reads DAGGER."])
    [ev] = result.evidence
    assert (ev.video_id, ev.start, ev.end, ev.verified, ev.moment_id) == (2, 15.0, 18.0, True, None)
    assert len(model.verify_calls()) == 1


def test_a_timestamp_outside_the_video_is_snapped_into_its_duration():
    result, _, backend, _ = _run(
        [call("finish", answer="Near the end.", evidence=[{"video": 2, "start": 28, "end": 95}])],
        verdicts=["YES"])
    [ev] = result.evidence
    assert (ev.video_id, ev.start, ev.end, ev.verified, ev.moment_id) == (2, 28.0, 30.0, True, None)
    # the clip that was verified was also inside the video (30 s long): the snapped window, once
    assert [(vid, s, e) for vid, s, e, _fps in backend.clips] == [(2, 28.0, 30.0)]


def test_verify_runs_before_an_item_is_marked_verified():
    result, model, _, steps = _run(
        [call("search", query="dagger"),
         call("verify", claim="someone says I sleep with a dagger", video=2, start=5, end=8),
         call("finish", answer="At 5 s in talk.mp4.", evidence=[{"moment": 3}])],
        verdicts=["YES, the transcript has it."])
    [ev] = result.evidence
    assert ev.verified and ev.moment_id == 3 and (ev.start, ev.end) == (5.0, 8.0)
    titles = [s.title for s in steps]
    assert titles.index("verify: someone says I sleep with a dagger (video 2 5-8 s)") < titles.index("finish")
    # the verifier saw frames of that window at >= 2 fps, and the indexed speech there
    [check] = model.verify_calls()
    ts = check["clips"][0].timestamps
    assert ts[0] == pytest.approx(5.0) and ts[1] - ts[0] <= 0.5
    assert "I sleep with a dagger" in check["messages"][-1]["content"]


def test_a_cited_moment_is_not_verified_when_verify_says_no_and_is_dropped():
    result, model, _, _ = _run(
        [call("finish", answer="At 5 s.", evidence=[{"moment": 3}])], verdicts=["NO", "NO"])
    first = model.verify_calls()[0]["clips"][0]
    assert (first.video_id, first.timestamps[0]) == (2, 5.0)
    assert result.evidence == [], result.evidence  # m3 was all it cited: nothing is left, verified or not
    # and the time the answer states is no longer backed by anything: it was checked again, then removed
    assert result.answer == "At [unverified time removed]."


def test_times_written_in_the_answer_are_covered_verified_or_removed():
    turns = [call("finish", answer="She says it at 0:05.5, again at 27 s and once more at 14 seconds.",
                  evidence=[{"moment": 3}])]
    result, model, _, steps = _run(turns, verdicts=["YES", "YES", "NO"])
    # 0:05.5 lies in the cited moment (5-8 s); 27 s was re-watched (25-29 s) and confirmed; 14 s was refuted
    assert result.answer == "She says it at 0:05.5, again at 27 s and once more at [unverified time removed]."
    windows = [(c["clips"][0].timestamps[0], c["clips"][0].timestamps[-1]) for c in model.verify_calls()]
    assert windows[1][0] == pytest.approx(25.0) and windows[2][0] == pytest.approx(12.0)
    assert [(e.start, e.end, e.verified) for e in result.evidence] == [(5.0, 8.0, True), (25.0, 29.0, True)]
    assert any(s.title == "time removed from the answer" and "14 seconds" in s.observation for s in steps)


def test_answer_times_are_removed_when_the_video_is_ambiguous():
    turns = [call("search", query="red van"),
             call("finish", answer="The red van shows up at 33 s.", evidence=[{"moment": 1}, {"moment": 4}])]
    result, model, _, _ = _run(turns, verdicts=["YES", "YES"])
    assert {e.video_id for e in result.evidence} == {1, 2}
    assert result.answer == "The red van shows up at [unverified time removed]."
    assert len(model.verify_calls()) == 2  # the two cited moments; no guess at which video 33 s belongs to


def test_unclear_verifier_reply_never_marks_verified():
    result, _, _, _ = _run([call("finish", answer="At 5 s.", evidence=[{"moment": 3}])],
                           verdicts=["Hmm, hard to say."])
    [ev] = result.evidence  # a tool returned it, so it may stay, but not as verified
    assert ev.moment_id == 3 and ev.verified is False


def test_malformed_calls_get_an_error_observation_and_the_loop_recovers():
    turns = [
        "<tool_call>{\"name\": \"search\", \"arguments\": {\"query\": \"dagger\"</tool_call>",  # broken JSON
        "<tool_call>{\"name\": \"teleport\", \"arguments\": {}}</tool_call>",  # unknown tool
        "<tool_call>{\"name\": \"inspect\", \"arguments\": {\"start\": 1}}</tool_call>",  # missing arguments
        "<tool_call>{\"name\": \"transcript\", \"arguments\": {\"video\": 2, \"start\": \"soon\", \"end\": 9}}"
        "</tool_call>",  # a time that is not a time
        "I think the answer is near the start.",  # no call at all
        "```json\n{'name': 'transcript', 'arguments': {'video': 'talk.mp4', 'start': '0:00:04', 'end': 9,}}\n```",
        call("finish", answer="At 5 s.", evidence=["m3"]),
    ]
    result, model, _, steps = _run(turns, verdicts=["YES"], max_steps=10)
    errors = [s for s in steps if s.kind == "error"]
    assert len(errors) == 5, [(s.title, s.observation) for s in steps]
    assert "not valid JSON" in errors[0].observation
    assert "no tool 'teleport'" in errors[1].observation
    assert "needs video, end" in errors[2].observation
    assert "'soon' is not a time" in errors[3].observation
    assert "no tool call" in errors[4].observation.lower()
    # each error went back to the model as the next observation
    turn_calls = [c for c in model.calls if c["kind"] == "turn"]
    assert "not valid JSON" in turn_calls[1]["messages"][-1]["content"]
    # the repaired single-quoted, trailing-comma fenced call ran, with the file name and clock time understood
    ran = [s for s in steps if s.tool == "transcript" and s.kind == "tool"]
    assert ran and "I sleep with a dagger" in ran[0].observation
    assert result.evidence[0].moment_id == 3 and result.evidence[0].verified


def test_cross_video_answer_cites_the_video_it_names():
    # both videos mention a red van; the model cites video 2's on-screen text by video and time
    turns = [call("search", query="red van"),
             call("finish", answer="The sign RED VAN RENTALS in talk.mp4.",
                  evidence=[{"video": 2, "start": 21, "end": 22}])]
    result, _, _, _ = _run(turns, verdicts=["YES"])
    [ev] = result.evidence
    assert (ev.video_id, ev.video, ev.moment_id, ev.modality) == (2, "/media/talk.mp4", 4, "text")
    assert (ev.start, ev.end) == (20.0, 24.0)  # the moment's own times, not the model's


def test_a_moment_id_that_contradicts_its_video_is_not_trusted():
    # m1 is video 1's red van line; the model pairs it with video 2 and a time where video 2 has nothing
    turns = [call("search", query="red van"),
             call("finish", answer="Red van.", evidence=[{"moment": 1, "video": 2, "start": 10, "end": 14}])]
    result, model, _, steps = _run(turns, verdicts=["NO"])
    # not shown as video 1's moment, nor as an unverified video 2 window: the window was checked on video 2
    assert model.verify_calls()[0]["clips"][0].video_id == 2
    assert not [e for e in result.evidence if e.moment_id == 1 or (e.video_id == 2 and e.start == 10.0)]
    assert any("video 2 10.0-14.0 s (no tool returned it" in s.observation for s in steps)


def test_scoped_question_searches_and_cites_only_that_video():
    turns = [call("search", query="red van"),
             call("inspect", video=1, start=10, end=14),
             call("finish", answer="x", evidence=[{"moment": 1}, {"moment": 4}])]
    result, _, backend, steps = _run(turns, verdicts=["YES", "YES"], video_id=2)
    assert backend.searches == [("when do they say dagger", [2]), ("red van", [2])]  # the loop's own, then the model's
    assert any(s.kind == "error" and "video 2 only" in s.observation for s in steps)
    assert [e.video_id for e in result.evidence] == [2]


def test_step_budget_is_respected_and_the_answer_is_forced():
    turns = [call("search", query=f"word{i}") for i in range(20)]
    result, model, _, steps = _run(turns, max_steps=4)
    tool_steps = [s for s in steps if s.kind in ("tool", "error") and s.tool != "verify"]
    assert len(tool_steps) == 4  # the first observation + 3 model calls
    assert any(s.title == "budget spent" for s in steps)
    forced = [c for c in model.calls if c["kind"] == "turn"][-1]
    assert "budget for this question is spent" in forced["messages"][-1]["content"]
    assert result.mode == "agent" and result.answer


def test_forced_finish_uses_the_finish_call_the_model_then_makes():
    turns = [call("search", query="a"), call("search", query="b"),
             call("finish", answer="Forced: at 5 s.", evidence=[{"moment": 3}])]
    result, _, _, steps = _run(turns, verdicts=["YES"], max_steps=3)
    assert result.answer == "Forced: at 5 s."
    assert [e.moment_id for e in result.evidence] == [3] and result.evidence[0].verified


def test_context_token_budget_elides_old_results_then_forces_the_answer():
    turns = [call("transcript", video=2, start=0, end=30 - i) for i in range(25)]
    result, model, _, steps = _run(turns, budget=Budget(max_steps=20, max_context_tokens=2000))
    assert any(s.title == "context budget spent" for s in steps), [s.title for s in steps]
    turn_calls = [c for c in model.calls if c["kind"] == "turn"]
    sizes = [sum(len(m["content"]) // 4 + 1 for m in c["messages"]) for c in turn_calls]
    # the tools' JSON schemas, which the template shows on every turn, count against the budget too
    tools_block = len(json.dumps(turn_calls[0]["tools"])) // 4
    assert tools_block > 500
    assert max(sizes[:-1]) + tools_block <= 2000, sizes  # every turn fit (the forced-answer turn adds the nudge)
    assert len(turn_calls) > 4  # old results were elided so the loop could go on past what fits unelided
    assert any("elided" in m["content"] for m in turn_calls[-1]["messages"])
    assert "ran out of steps" in result.answer  # the model never called finish


def test_frames_count_against_the_token_budget():
    backend = two_video_backend()
    backend.frame_side = 640  # 32 frames at 640x640: 16 pairs x (20 x 20 + 9) = 6544 visual tokens
    model = ScriptedChat([call("inspect", video=1, start=0, end=16), call("finish", answer="x", evidence=[])])
    steps = []
    answer("red van", backend, model, on_step=steps.append, budget=Budget(max_total_tokens=6000))
    assert any(s.title == "token budget spent" for s in steps), [s.title for s in steps]
    turns = [c for c in model.calls if c["kind"] == "turn"]
    assert len(turns) == 2  # the turn that asked for inspect, then the forced answer: no turn in between
    assert "budget for this question is spent" in turns[-1]["messages"][-1]["content"]


def test_repeated_call_is_answered_from_memory_not_rerun():
    turns = [call("search", query="dagger"), call("search", query="dagger"),
             call("finish", answer="5 s", evidence=[{"moment": 3}])]
    _result, _, backend, steps = _run(turns, verdicts=["YES"])
    assert sum(1 for q, _ in backend.searches if q == "dagger") == 1
    assert any("already made this call" in s.observation for s in steps)


def test_inspect_has_the_model_watch_the_window_at_two_fps_or_more():
    turns = [call("inspect", video=1, start=10, end=60, fps=0.5), call("search", query="red van"),
             call("finish", answer="x", evidence=[{"moment": 1}])]
    backend = two_video_backend()
    model = ScriptedChat(turns, ["YES"], ["At 12.0 s a red van drives past."])
    steps = []
    answer("when is the red van seen", backend, model, on_step=steps.append)
    [watch] = [c for c in model.calls if c["kind"] == "inspect"]
    [clip] = watch["clips"]
    assert clip.video_id == 1 and clip.timestamps[0] == pytest.approx(10.0)
    assert clip.timestamps[1] - clip.timestamps[0] == pytest.approx(0.5)  # fps raised to 2
    assert clip.timestamps[-1] <= 10.0 + 16.0  # shortened to the frame cap, and it says so
    assert "when is the red van seen" in watch["messages"][-1]["content"]  # it looks with the question in mind
    inspect_step = next(s for s in steps if s.tool == "inspect")
    assert "shortened" in inspect_step.observation and "At 12.0 s a red van" in inspect_step.observation
    # what the model saw enters the evolving context; the reasoning turns themselves stay text
    turn_calls = [c for c in model.calls if c["kind"] == "turn"]
    assert "At 12.0 s a red van" in turn_calls[1]["messages"][-1]["content"]
    assert all(c["clips"] == [] for c in turn_calls)


def test_memory_of_checked_things_travels_with_each_observation():
    turns = [call("search", query="dagger"), call("transcript", video=2, start=0, end=10),
             call("finish", answer="x", evidence=[{"moment": 3}])]
    _result, model, _, _ = _run(turns, verdicts=["YES"])
    last = [c for c in model.calls if c["kind"] == "turn"][-1]["messages"][-1]["content"]
    assert "Already checked:" in last and 'search "dagger"' in last and "transcript video 2 0.0-10.0 s" in last


def test_thinking_and_free_text_answers_are_cleaned():
    turns = ["<think>I should search.</think>Maybe " + call("search", query="dagger"),
             "<think>done</think><tool_call>{\"name\": \"finish\", \"arguments\": "
             "\"{\\\"answer\\\": \\\"At 5 s.\\\", \\\"evidence\\\": [{\\\"moment\\\": 3}]}\"}</tool_call>"]
    result, _, _, steps = _run(turns, verdicts=["YES"])
    assert result.answer == "At 5 s." and result.evidence[0].moment_id == 3
    assert "I should search." in steps[1].reasoning


def test_empty_long_and_unknown_scope_questions_are_clear_errors():
    backend = two_video_backend()
    model = ScriptedChat([])
    with pytest.raises(SightlineError, match="empty"):
        answer("   ", backend, model)
    with pytest.raises(SightlineError, match="characters long"):
        answer("why " * 1000, backend, model)
    with pytest.raises(SightlineError, match="No video"):
        answer("what?", backend, model, video_id=9)


def test_to_dict_is_the_design_ask_shape():
    result, _, _, _ = _run([call("finish", answer="At 5 s.", evidence=[{"moment": 3}])], verdicts=["YES"])
    [e] = assert_answer(result.to_dict(), mode="agent", duration=30.0)
    assert (e["video_id"], e["video"], e["start"], e["end"], e["modality"], e["verified"]) == \
        (2, "/media/talk.mp4", 5.0, 8.0, "speech", True)


def test_inspect_then_verify_of_a_window_share_the_cacheable_prefix():
    # same system prompt, same frames first, the task only after them: the engine can reuse the window's cache
    turns = [call("inspect", video=2, start=5, end=8),
             call("verify", claim="she says she sleeps with a dagger", video=2, start=5, end=8),
             call("finish", answer="The dagger line.", evidence=[{"moment": 3}])]
    result, model, _, _ = _run(turns, verdicts=["YES"])
    watched = [c for c in model.calls if c["kind"] in ("inspect", "verify")]
    assert [c["kind"] for c in watched] == ["inspect", "verify"]
    assert watched[0]["messages"][0] == watched[1]["messages"][0]
    assert watched[0]["clips"][0].timestamps == watched[1]["clips"][0].timestamps
    assert result.evidence[0].verified and len(model.verify_calls()) == 1  # no second check of a verified moment
