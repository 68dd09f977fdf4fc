"""The loop's mechanics end to end on the tiny random Qwen3-VL: real library tools, real frames, real model calls.

The tiny model writes noise, so it never makes a valid call: the loop must still observe (search), spend its
budget on error observations, force an answer, verify what it cites on real frames and cite only valid moments.
"""

from __future__ import annotations

import re

import pytest

from engine.agent import Budget, answer
from engine.agent.library_tools import LibraryTools
from engine.agent.prompts import VERIFY_TASK, WATCH_SYSTEM
from tests.contracts import assert_answer, assert_moment
from tests.library_builder import add_video

pytestmark = pytest.mark.slow


class Recording:
    """Wraps a VideoChat and records each call's clips (the agent only needs .chat)."""

    def __init__(self, chat):
        self.inner, self.calls = chat, []

    def chat(self, messages, clips=(), max_new_tokens=512, tools=None):
        self.calls.append({"messages": [dict(m) for m in messages], "clips": list(clips), "max_new_tokens": max_new_tokens,
                           "tools": tools, "prompt": self.inner.prompt_text(messages, clips, tools)})
        return self.inner.chat(messages, clips=clips, max_new_tokens=max_new_tokens, tools=tools)


@pytest.fixture(scope="module")
def tiny_chat(tmp_path_factory):
    from engine.loading import load_vlm

    return load_vlm("tiny", quantization="bf16", library=tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def bikes_library(library, bikes_mp4):
    """bikes.mp4 (10 s, a TAXI sign) with a few moments written through storage (keyword search only)."""
    video_id, _ = add_video(library, str(bikes_mp4), 10.0, [(1.2, 3.0, "visual", "a taxi sign on a street"),
                                                             (5.5, 7.5, "text", "TAXI"),
                                                             (9.0, 10.0, "caption", "cyclists pass a taxi")],
                            embed=None)
    return library, video_id


def test_tiny_model_loop_calls_tools_respects_budget_and_forces_an_answer(tiny_chat, bikes_library):
    library, video_id = bikes_library
    model = Recording(tiny_chat)
    steps = []
    budget = Budget(max_steps=3, max_new_tokens=24, final_verifications=2, inspect_max_frames=8)
    result = answer("where is the taxi sign?", LibraryTools(library, None), model, on_step=steps.append,
                    budget=budget)

    assert result.mode == "agent"
    # observe first: the question was searched in the library
    assert steps[0].tool == "search" and "[m1]" in steps[0].observation
    # the budget: at most max_steps tool calls (noise turns count), then exactly one forced-answer turn
    turns = [c for c in model.calls if c["messages"][0]["content"] != WATCH_SYSTEM]
    # the first search is the loop's own observation; the model had max_steps - 1 turns, then the forced one
    assert len(turns) == (budget.max_steps - 1) + 1
    # the tools reached the model as JSON schemas in the chat template's tools block, not as prose
    assert all(c["tools"] and "<tools>\n{\"type\": \"function\"" in c["prompt"] for c in turns)
    assert turns[0]["prompt"].endswith("<|im_start|>assistant\n")
    assert "budget for this question is spent" in turns[-1]["messages"][-1]["content"]
    assert any(s.title == "budget spent" for s in steps)
    assert all(c["max_new_tokens"] <= budget.max_new_tokens for c in turns)
    # verify ran on real frames of the cited windows, at >= 2 fps, capped at the frame budget
    checks = [c for c in model.calls if VERIFY_TASK in c["messages"][-1]["content"]]
    assert 1 <= len(checks) <= budget.final_verifications
    for c in checks:
        [clip] = c["clips"]
        assert clip.video_id == video_id and 1 <= len(clip.timestamps) <= budget.inspect_max_frames
        assert clip.frames.ndim == 4 and clip.frames.shape[-1] == 3
        gaps = [b - a for a, b in zip(clip.timestamps, clip.timestamps[1:])]
        assert all(g <= 0.5 + 0.05 for g in gaps), gaps
    # what each verify step said about its window: SUPPORTED, NOT SUPPORTED or UNCLEAR
    said = {}
    for s in steps:
        if s.tool == "verify":
            m = re.match(r"Verify video (\d+) ([\d.]+)-([\d.]+) s: (SUPPORTED|NOT SUPPORTED|UNCLEAR)\b", s.observation)
            assert m, s.observation
            said[(int(m[1]), float(m[2]), float(m[3]))] = m[4]
    assert len(said) == len(checks), said  # one verify step per check, each on its own window
    # every evidence item is a valid moment of that video, verified exactly where verify said SUPPORTED
    assert result.evidence, [s.to_dict() for s in steps]
    assert any((e.video_id, e.start, e.end) in said for e in result.evidence), (result.evidence, said)
    for e in result.evidence:
        assert_moment(e.to_dict(), duration=10.0, evidence=True)
        assert e.video_id == video_id
        assert e.verified == (said.get((e.video_id, e.start, e.end)) == "SUPPORTED"), (e, said)
    assert_answer(result.to_dict(), mode="agent", duration=10.0)


def test_tiny_model_inspect_and_verify_watch_real_frames_of_the_window(tiny_chat, bikes_library):
    from engine.agent.context import Context
    from engine.agent.tools import call_tool

    library, video_id = bikes_library
    model = Recording(tiny_chat)
    ctx = Context("where is the taxi sign?", LibraryTools(library, None), model, Budget(inspect_max_frames=12))
    obs = call_tool(ctx, "inspect", {"video": video_id, "start": 4, "end": 40, "fps": 1})
    assert not obs.error, obs.text
    [clip] = model.calls[-1]["clips"]
    # snapped into the 10 s video, fps raised to 2, shortened to the frame cap; times from the file's PTS
    assert clip.timestamps[0] == pytest.approx(4.0, abs=0.05) and clip.timestamps[-1] <= 10.0
    assert len(clip.timestamps) <= 12 and all(0.45 <= b - a <= 0.55 for a, b in
                                              zip(clip.timestamps, clip.timestamps[1:]))
    assert "Watched video" in obs.text and "What the frames show:" in obs.text
    obs = call_tool(ctx, "verify", {"claim": "a taxi sign is visible", "video": video_id, "start": 5.5, "end": 7.5})
    assert not obs.error and obs.text.startswith(f"Verify video {video_id} 5.5-7.5 s:"), obs.text
    assert ctx.verdicts and ctx.tokens_spent > 0
    # the verifier was also shown what the index heard/read there
    assert "TAXI" in model.calls[-1]["messages"][-1]["content"]
