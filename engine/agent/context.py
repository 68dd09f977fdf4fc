"""The one evolving context of a question: messages, the moments tools returned, verdicts, memory and budget.

Everything the loop and the tools share lives here, so one object says what the agent has seen and checked;
`AgentResult` is what a question ends with, from the loop or from the evidence-only answer.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from engine.agent.evidence import Evidence, overlap
from engine.defaults import DEFAULT_AGENT_STEPS


@dataclass(frozen=True)
class VideoInfo:
    id: int
    path: str
    duration: float | None  # seconds; None when unknown


class ToolBackend(Protocol):
    """What the app hands the agent: read access to the library and frames of a window. No SQL in the agent."""

    def videos(self) -> list[VideoInfo]: ...

    def video(self, ref: int | str) -> VideoInfo: ...  # raises SightlineError naming the known videos

    def search(self, query: str, k: int = 8, modalities: Sequence[str] | None = None,
               video_ids: Sequence[int] | None = None) -> list: ...  # MomentHit-like, best first

    def moments(self, video_id: int, start: float, end: float,
                modalities: Sequence[str] | None = None) -> list: ...  # MomentHit-like, by start time

    def clip(self, video_id: int, start: float, end: float, fps: float, max_frames: int) -> Any: ...  # a Clip


@dataclass(frozen=True)
class Budget:
    """How far one question may go before the agent must answer."""

    max_steps: int = DEFAULT_AGENT_STEPS  # tool calls the model may make (malformed turns count too)
    max_context_tokens: int = 24_000  # estimated size of the evolving context; old results are elided first
    max_total_tokens: int = 200_000  # estimated tokens read and written by all model calls (frames included)
    max_new_tokens: int = 512  # per model turn
    final_verifications: int = 3  # windows the agent re-checks itself at the end before citing them
    inspect_max_frames: int = 32  # frames per inspect/verify window (>= 2 fps, so windows are <= 16 s at 2 fps)


@dataclass
class Verdict:
    video_id: int
    start: float
    end: float
    claim: str
    supported: bool
    reply: str
    unclear: bool = False  # the model said neither yes nor no: not verified, not refuted either


@dataclass
class Step:
    """One streamed step: a tool call and its result, an error, or the answer. `title` is the chat title."""

    index: int
    kind: str  # "tool" | "error" | "answer" | "note"
    title: str  # e.g. "search: red van"
    tool: str | None = None
    arguments: dict = field(default_factory=dict)
    reasoning: str = ""
    observation: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class AgentResult:
    """What answering a question gives: the answer, its evidence, the mode and the steps that led there."""

    answer: str
    evidence: list[Evidence]
    mode: str  # "agent" | "evidence-only"
    steps: list[Step] = field(default_factory=list)
    reason: str = ""  # evidence-only: why no model is loaded

    def to_dict(self) -> dict:
        """DESIGN.md's `ask --json` object."""
        return {"answer": self.answer, "evidence": [e.to_dict() for e in self.evidence], "mode": self.mode}


def estimate_tokens(text: str) -> int:
    """About 4 characters per token for English and JSON; enough to keep a budget, not to bill by."""
    return len(text) // 4 + 1


def clip_tokens(clip) -> int:
    """Qwen3-VL's count for a clip: one token per 32x32 pixels per frame pair, plus ~9 text tokens per pair."""
    frames = getattr(clip, "frames", None)
    if frames is None or getattr(frames, "ndim", 0) != 4:
        return 0
    t, h, w = frames.shape[:3]
    pairs = (t + 1) // 2
    return pairs * (max(h // 32, 1) * max(w // 32, 1) + 9)


@dataclass
class Context:
    question: str
    backend: ToolBackend
    vlm: Any  # a VideoChat (engine/chat.py) or anything with .chat(messages, clips, max_new_tokens)
    budget: Budget
    video_id: int | None = None  # the question's scope; None = the whole library
    on_step: Callable[[Step], None] | None = None
    messages: list[dict] = field(default_factory=list)
    memory: list[str] = field(default_factory=list)  # one line per thing already checked
    seen: dict[int, Any] = field(default_factory=dict)  # moment id -> the moment a tool returned
    verdicts: list[Verdict] = field(default_factory=list)
    done_calls: dict[str, str] = field(default_factory=dict)  # normalised call -> its memory line
    steps: list[Step] = field(default_factory=list)
    tool_calls: int = 0
    model_turns: int = 0
    checks_left: int = 0  # verify calls the agent may still make itself while resolving the answer's evidence
    tokens_spent: int = 0  # estimated, over every model call of this question (text, frames and replies)
    overhead_tokens: int = 0  # estimated prompt text the template adds to every reasoning turn (the tools block)
    _videos: dict[int, VideoInfo] = field(default_factory=dict)

    # --- videos -------------------------------------------------------------------------------------------

    def video(self, ref: int | str) -> VideoInfo:
        if isinstance(ref, int) and ref in self._videos:
            return self._videos[ref]
        info = self.backend.video(ref)
        self._videos[info.id] = info
        return info

    # --- what tools returned ------------------------------------------------------------------------------

    def remember_moments(self, moments: list) -> None:
        for m in moments:
            if getattr(m, "moment_id", None) is not None:
                self.seen.setdefault(int(m.moment_id), m)

    def supported_verdict(self, video_id: int, start: float, end: float) -> Verdict | None:
        """A verdict that confirmed a window overlapping this one in the same video, if any."""
        for v in self.verdicts:
            if v.supported and v.video_id == video_id and overlap(v.start, v.end, start, end) > 0:
                return v
        return None

    def refuted(self, video_id: int, start: float, end: float) -> bool:
        """True when verify looked at an overlapping window and said no (and nothing there said yes)."""
        if self.supported_verdict(video_id, start, end):
            return False
        return any(not v.supported and not v.unclear and v.video_id == video_id and overlap(v.start, v.end, start, end) > 0
                   for v in self.verdicts)

    # --- streaming ----------------------------------------------------------------------------------------

    def emit(self, kind: str, title: str, tool: str | None = None, arguments: dict | None = None,
             reasoning: str = "", observation: str = "") -> Step:
        step = Step(len(self.steps) + 1, kind, title, tool, dict(arguments or {}), reasoning, observation)
        self.steps.append(step)
        if self.on_step is not None:
            self.on_step(step)
        return step

    def context_tokens(self) -> int:
        """Estimated tokens of the evolving context (the next reasoning turn's prompt)."""
        return self.overhead_tokens + sum(estimate_tokens(m["content"]) for m in self.messages)

    def model_call(self, messages: list[dict], clips: Sequence = (), max_new_tokens: int = 512,
                   tools: Sequence[dict] | None = None, tools_text: str = "") -> str:
        """One call of the model, counted against the question's token budget; `tools` (JSON schemas) go to the
        chat template, which shows them to the model in its own format. A chat object without tool support gets
        `tools_text` (the same tools, one line each) in the system prompt instead."""
        extra = {}
        if tools and _takes_tools(self.vlm):
            extra["tools"] = list(tools)
        elif tools:  # a chat object without tool support: the tools in the system prompt, as text
            messages = [dict(m) for m in messages]
            block = "Tools (call them as <tool_call>{\"name\": ..., \"arguments\": {...}}</tool_call>):\n" + \
                tools_text
            if messages and messages[0]["role"] == "system":
                messages[0]["content"] += "\n\n" + block
            else:
                messages.insert(0, {"role": "system", "content": block})
            messages = [m if m["role"] != "tool" else {"role": "user", "content": m["content"]} for m in messages]
        reply = self.vlm.chat(messages, clips=list(clips), max_new_tokens=max_new_tokens, **extra)
        self.model_turns += 1
        self.tokens_spent += (sum(estimate_tokens(m["content"]) for m in messages)
                              + sum(clip_tokens(c) for c in clips) + estimate_tokens(reply)
                              + (estimate_tokens(json.dumps(list(tools))) if tools else 0))
        return reply


def _takes_tools(vlm) -> bool:
    """True when vlm.chat accepts tools= (VideoChat does; a bare .chat(messages, clips, max_new_tokens) does not)."""
    import inspect

    try:
        params = inspect.signature(vlm.chat).parameters
    except (TypeError, ValueError):
        return False
    return "tools" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
