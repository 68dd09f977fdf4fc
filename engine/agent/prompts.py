"""The words the agent says to the model: system prompt, the question turn, nudges and the verifier's prompt."""

from __future__ import annotations

from pathlib import Path

# The tools themselves reach the model as JSON schemas through the chat template (its "# Tools" block and the
# <tool_call> format it was trained on); tool results come back as role "tool" messages (<tool_response>).
SYSTEM = """You are Sightline, a careful video analyst. You answer questions about a library of indexed videos.
You work in turns: think briefly, then make exactly one tool call; its result comes back as a tool response.

Rules:
- Times are seconds from the start of a video. Moments are listed like "[m12] video 2 (talk.mp4) 12.0-15.5 s speech: ...".
- Cite only moments a tool showed you, as {"moment": 12} or {"video": 2, "start": 12.0, "end": 15.5}.
- Call verify on a window before you rely on it; an unverified guess at a time is dropped from the answer.
- Do not repeat a call you already made; the memory in each result lists what was already checked.
- When you know the answer, call finish:
<tool_call>
{"name": "finish", "arguments": {"answer": "one or two sentences", "evidence": [{"moment": 12}]}}
</tool_call>"""

FORCE_FINISH = ("Your budget for this question is spent. Do not call any other tool. Call finish now with your best "
                "answer and the moments (from the results above) that support it.")

NO_CALL = ("Your message had no tool call. Make exactly one call in <tool_call> tags, or call finish if you know "
           "the answer.")

# One system prompt for both ways of watching a window (inspect, verify), with the frames first and the task
# after them: the (system, frames) prefix is then the same whatever is asked about that window, so the engine's
# per-video cache can serve a window that was already watched.
WATCH_SYSTEM = ("You watch video for an analyst. You are shown frames of one window of a video, each with its time "
                "in seconds, then a task about them. Be brief and factual.")
VERIFY_TASK = "Does this window support the claim? Answer YES or NO first, then one short sentence saying why."
INSPECT_TASK = ("What in these frames matters for it? Say what is seen (people, objects, actions, on-screen text) "
                "and at what times, in seconds.")


def videos_block(videos: list, scope: int | None, limit: int = 20) -> str:
    """The library overview in the first user turn (at most `limit` videos named)."""
    def line(v) -> str:
        dur = f"{v.duration:.1f} s" if v.duration else "duration unknown"
        return f"- video {v.id}: {Path(v.path).name} ({dur})"

    if scope is not None:
        v = next((v for v in videos if v.id == scope), None)
        return "The question is about this video only:\n" + (line(v) if v else f"- video {scope}")
    shown = [line(v) for v in videos[:limit]]
    more = f"\n... and {len(videos) - limit} more videos (use search to find them)" if len(videos) > limit else ""
    return f"The library holds {len(videos)} videos:\n" + "\n".join(shown) + more


def question_turn(question: str, videos: str, first_results: str) -> str:
    return (f"Question: {question}\n\n{videos}\n\nA first search for the question found:\n{first_results}\n\n"
            "Decide what to check next and make one tool call.")


def inspect_prompt(question: str, video_id: int, start: float, end: float) -> str:
    return (f"Video {video_id}, {start:.1f}-{end:.1f} seconds: the frames are shown above.\n"
            f"The question being answered: {question}\n{INSPECT_TASK}")


def verify_prompt(claim: str, video_id: int, start: float, end: float, lines: list[str]) -> str:
    heard = "\n".join(lines) if lines else "(nothing indexed in this window)"
    return (f"Video {video_id}, {start:.1f}-{end:.1f} seconds: the frames are shown above.\n"
            f"Indexed speech and on-screen text in this window:\n{heard}\n\n"
            f"Claim: {claim}\n{VERIFY_TASK}")


def with_memory(text: str, memory: list[str], steps_left: int) -> str:
    """An observation followed by the short memory of what was already checked."""
    recent = memory[-12:]
    mem = "\n".join(f"- {m}" for m in recent) if recent else "- nothing yet"
    return f"{text}\n\nAlready checked:\n{mem}\n({steps_left} tool calls left)"
