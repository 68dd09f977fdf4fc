"""Answers without a model: the best moments for the question, their text, and why no model is loaded."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from engine.agent.context import AgentResult, Step, ToolBackend
from engine.agent.evidence import Evidence
from storage.search import fuse
from storage.timefmt import format_time

K = 5
HOW_TO_LOAD = ("To load one, set SIGHTLINE_VLM_MODEL to a model name or a local folder with its weights: "
               "internvideo3 (the default 'auto' on a CUDA GPU), qwen3-vl-8b, qwen3-vl-4b or qwen3-vl-2b "
               "(the small ones also run on a CPU, slowly).")

# Question words that say what kind of answer is wanted but not what to look for.
_LEAD_IN = re.compile(
    r"^\s*(?:(?:when|where|at what (?:time|point)|what time|in which video|which video|how|what|who|why|does|do|did|"
    r"is|are|was|were|can you|could you|please|tell me|show me|find)\b\s*)+"
    r"(?:(?:do|does|did|is|are|was|were|they|he|she|someone|somebody|anyone|it|we|you|people|the speaker|"
    r"say|says|said|mention|mentions|mentioned|talk about|talks about|appear|appears|show|shows|shown|written|"
    r"read|on screen|the|a|an|that|words?|phrase)\b\s*)*",
    re.I,
)


def core_query(question: str) -> str:
    """The words to search for: quoted text if any, else the question without its lead-in ("when do they say")."""
    quoted = re.findall(r"[\"“']([^\"”']{3,})[\"”']", question)
    if quoted:
        return " ".join(quoted)
    core = _LEAD_IN.sub("", question).strip(" ?.!")
    return core if len(core) >= 3 else question


def best_moments(question: str, tools: ToolBackend, video_id: int | None, k: int = K) -> list:
    """Search for the question and for its core words; fuse the two lists by rank."""
    scope = [video_id] if video_id is not None else None
    queries = [question]
    core = core_query(question)
    if core.lower() != question.lower():
        queries.insert(0, core)
    hits: dict[int, object] = {}
    rankings: dict[str, list[int]] = {}
    for q in queries:
        found = tools.search(q, max(k, 10), None, scope)
        for h in found:
            hits.setdefault(h.moment_id, h)
        rankings[q] = [h.moment_id for h in found]
    first_seen = {m: i for i, m in enumerate(hits)}
    # equal scores keep the order the moments were first found in: the core words' search comes first
    fused = sorted(fuse(rankings), key=lambda t: (-t[1], first_seen[t[0]]))
    return [hits[m] for m, _, _ in fused[:k]]


def evidence_only(question: str, tools: ToolBackend, video_id: int | None, reason: str,
                  on_step: Callable[[Step], None] | None = None, loaded: bool = False) -> AgentResult:
    """The evidence-only answer: moments with their text, and a plain sentence on loading a model."""
    if video_id is not None:
        video_id = tools.video(video_id).id
    steps: list[Step] = []
    moments = best_moments(question, tools, video_id)
    durations = {}
    for m in moments:
        if m.video_id not in durations:
            durations[m.video_id] = tools.video(int(m.video_id)).duration
    evidence = [Evidence.from_moment(m, verified=False, duration=durations[m.video_id]) for m in moments]
    step = Step(1, "tool", f"search: {question}", "search", {"query": question},
                observation=f"{len(evidence)} moments found")
    steps.append(step)
    if on_step:
        on_step(step)
    if evidence:
        listed = "; ".join(f"{Path(e.video).name} at {format_time(e.start)} ({e.modality}): \"{_short(e.text)}\""
                           for e in evidence[:3])
        body = f"The moments that best match the question, best first: {listed}."
    else:
        body = "No indexed moment matches the question."
    why = re.sub(r"^No answering model( is loaded)?:\s*", "", (reason or "").strip())
    if loaded:
        text = f"Evidence-only answer: the answering model failed on this question. {body} Why: {why}"
    else:
        text = f"Evidence-only answer: no answering model is loaded. {body}"
        text += f" Why: {why}" if why else ""
        if "SIGHTLINE_VLM_MODEL" not in why:  # the reason's own hint may already say how
            text += f" {HOW_TO_LOAD}"
    final = Step(2, "answer", "answer", observation=text)
    steps.append(final)
    if on_step:
        on_step(final)
    return AgentResult(text, evidence, "evidence-only", steps, reason)


def _short(text: str, n: int = 80) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= n else text[: n - 3] + "..."
