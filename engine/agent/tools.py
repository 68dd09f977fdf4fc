"""The agent's tools: plain typed functions; each one-line docstring is the description the model reads.

Every tool takes the question's `Context` first (hidden from the model) and returns an `Observation`.
`DEFAULT_TOOLS` lists them; `tool_schemas` gives them as the JSON schemas the chat template shows the model
(`describe_tools` is a one-line-per-tool text form for logs); `call_tool` checks and converts the
model's arguments and turns every problem into an error observation rather than an exception.
"""

from __future__ import annotations

import inspect as pyinspect
import json
import logging
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from engine.agent.context import Context, Verdict
from engine.agent.evidence import parse_seconds, snap
from engine.agent.parsing import strip_thinking
from engine.agent.prompts import WATCH_SYSTEM, inspect_prompt, verify_prompt
from storage.errors import SightlineError
from storage.models import MODALITIES

log = logging.getLogger(__name__)

MIN_FPS, MAX_FPS = 2.0, 8.0  # inspect and verify look denser than the 1 fps index, never below 2 fps
SEARCH_K = 8
INSPECT_TOKENS = 200  # a description of a window, not an essay
LINES_PER_RESULT = 40


@dataclass
class Observation:
    """A tool result: the text the model reads, frames to show it, and moments it may now cite."""

    text: str
    clips: list = field(default_factory=list)  # frames the model watched for this result
    moments: list = field(default_factory=list)
    final: dict | None = None  # set by finish: {"answer": str, "evidence": list}
    error: bool = False


class ToolError(Exception):
    """A mistake in a tool call; its message goes back to the model as the observation."""


# --- helpers ---------------------------------------------------------------------------------------------------

def _line(m) -> str:
    text = " ".join((m.text or "").split())
    if len(text) > 200:
        text = text[:197] + "..."
    return (f"[m{m.moment_id}] video {m.video_id} ({Path(str(m.video)).name}) {m.start:.1f}-{m.end:.1f} s "
            f"{m.modality}: {text}")


def _window(ctx: Context, video: int, start: float, end: float):
    """(VideoInfo, start, end) with the window snapped into [0, duration]; ToolError when nothing is left."""
    try:
        info = ctx.video(video)
    except SightlineError as err:
        raise ToolError(err.user_text()) from None
    if ctx.video_id is not None and info.id != ctx.video_id:
        raise ToolError(f"This question is about video {ctx.video_id} only; video {info.id} is out of scope.")
    s, e = snap(start, end, info.duration)
    if e <= s:
        dur = f"{info.duration:.1f} s" if info.duration else "unknown"
        raise ToolError(f"The window {start:.1f}-{end:.1f} s is empty inside video {info.id} (duration {dur}).")
    return info, s, e


def _modality(value: str | None) -> list[str] | None:
    if value in (None, "", "any", "all"):
        return None
    value = {"ocr": "text", "screen_text": "text", "audio": "speech", "transcript": "speech"}.get(value, value)
    if value not in MODALITIES:
        raise ToolError(f"modality must be one of {', '.join(MODALITIES)}; got {value!r}.")
    return [value]


def _clip_for(ctx: Context, video: int, start: float, end: float, fps: float):
    """Frames of a window at >= 2 fps; a window longer than the frame cap allows is shortened (and says so)."""
    fps = min(max(float(fps or MIN_FPS), MIN_FPS), MAX_FPS)
    info, s, e = _window(ctx, video, start, end)
    longest = ctx.budget.inspect_max_frames / fps
    note = ""
    if e - s > longest:
        note = (f" The window was shortened to {longest:.0f} s ({ctx.budget.inspect_max_frames} frames at "
                f"{fps:g} fps); look at the rest with another call.")
        e = round(s + longest, 3)
    clip = ctx.backend.clip(info.id, s, e, fps, ctx.budget.inspect_max_frames)
    return info, s, e, fps, clip, note


def _verdict(reply: str) -> bool | None:
    """YES/NO first word of the verifier's reply -> True/False; None when it said neither."""
    visible, _ = strip_thinking(reply)
    m = re.match(r"\W*(not supported|unsupported|supported|yes|no|true|false|contradicted|refuted)\b",
                 visible.lower())
    if not m:
        return None
    return m.group(1) in ("supported", "yes", "true")


def run_verify(ctx: Context, claim: str, video: int, start: float, end: float) -> tuple[Verdict, str]:
    """Show the model the window (frames at >= 2 fps plus its indexed speech and text) and ask about the claim."""
    if ctx.vlm is None:
        raise ToolError("verify needs a loaded video model.")
    claim = (claim or "").strip()
    if not claim:
        raise ToolError("verify needs a claim: the statement the window should show.")
    info, s, e, fps, clip, note = _clip_for(ctx, video, start, end, MIN_FPS)
    heard = ctx.backend.moments(info.id, s, e, ["speech", "text"])
    ctx.remember_moments(heard)
    messages = [{"role": "system", "content": WATCH_SYSTEM},
                {"role": "user", "content": verify_prompt(claim, info.id, s, e, [_line(m) for m in heard])}]
    reply = ctx.model_call(messages, [clip], max_new_tokens=64)
    said = _verdict(reply)
    verdict = Verdict(info.id, s, e, claim, bool(said), reply.strip(), unclear=said is None)
    ctx.verdicts.append(verdict)
    word = {True: "SUPPORTED", False: "NOT SUPPORTED", None: "UNCLEAR (counted as not supported)"}[said]
    ctx.memory.append(f"verify video {info.id} {s:.1f}-{e:.1f} s \"{claim[:80]}\": {word}")
    return verdict, f"Verify video {info.id} {s:.1f}-{e:.1f} s: {word}. The model said: {reply.strip()[:300]}{note}"


# --- the tools -------------------------------------------------------------------------------------------------

def search(ctx: Context, query: str, modality: str | None = None, video: int | None = None) -> Observation:
    """Find moments where the query is said, written on screen, seen or captioned; optional modality and video."""
    if not str(query).strip():
        raise ToolError("search needs a query: a few words describing the moment.")
    scope = ctx.video_id if ctx.video_id is not None else (ctx.video(video).id if video is not None else None)
    if video is not None and ctx.video_id is not None and ctx.video(video).id != ctx.video_id:
        raise ToolError(f"This question is about video {ctx.video_id} only.")
    try:
        hits = ctx.backend.search(str(query), SEARCH_K, _modality(modality), [scope] if scope is not None else None)
    except SightlineError as err:
        raise ToolError(err.user_text()) from None
    ctx.remember_moments(hits)
    best = f" (best: video {hits[0].video_id} {hits[0].start:.1f}-{hits[0].end:.1f} s)" if hits else ""
    ctx.memory.append(f"search \"{query}\"{' ' + modality if modality else ''}: {len(hits)} moments{best}")
    if not hits:
        return Observation(f"No moments match \"{query}\". Try other words or another modality.")
    return Observation(f"{len(hits)} moments, best first:\n" + "\n".join(_line(h) for h in hits), moments=hits)


def inspect(ctx: Context, video: int, start: float, end: float, fps: float = 2.0) -> Observation:
    """Watch the frames of a window of a video (seconds, at least 2 fps) and get what they show, with times."""
    if ctx.vlm is None:
        raise ToolError("inspect needs a loaded video model.")
    info, s, e, fps, clip, note = _clip_for(ctx, video, start, end, fps)
    n = len(getattr(clip, "timestamps", []) or [])
    # A call of its own, frames first: the conversation stays text and the (system, frames) prefix is the same
    # for every question (and every verify) about this window, so the engine's per-video cache can serve it again.
    messages = [{"role": "system", "content": WATCH_SYSTEM},
                {"role": "user", "content": inspect_prompt(ctx.question, info.id, s, e)}]
    seen = strip_thinking(ctx.model_call(messages, [clip], max_new_tokens=INSPECT_TOKENS))[0].strip()
    ctx.memory.append(f"inspect video {info.id} {s:.1f}-{e:.1f} s ({n} frames)")
    return Observation(f"Watched video {info.id} ({Path(info.path).name}) {s:.1f}-{e:.1f} s, {n} frames at "
                       f"{fps:g} fps.{note} What the frames show: {seen or '(nothing was said)'}\n"
                       "Times seen here are not evidence yet: verify a window before citing it.", clips=[clip])


def _moment_lines(ctx: Context, kind: str, modality: str, video: int, start: float, end: float) -> Observation:
    info, s, e = _window(ctx, video, start, end)
    rows = ctx.backend.moments(info.id, s, e, [modality])
    ctx.remember_moments(rows)
    ctx.memory.append(f"{kind} video {info.id} {s:.1f}-{e:.1f} s: {len(rows)} lines")
    if not rows:
        what = "speech" if modality == "speech" else "on-screen text"
        return Observation(f"No indexed {what} in video {info.id} between {s:.1f} and {e:.1f} s.")
    shown = rows[:LINES_PER_RESULT]
    more = f"\n({len(rows) - len(shown)} more lines; ask for a shorter window)" if len(rows) > len(shown) else ""
    return Observation("\n".join(_line(m) for m in shown) + more, moments=shown)


def transcript(ctx: Context, video: int, start: float, end: float) -> Observation:
    """What is said in a window of a video (seconds), line by line with times."""
    return _moment_lines(ctx, "transcript", "speech", video, start, end)


def screen_text(ctx: Context, video: int, start: float, end: float) -> Observation:
    """On-screen text read in a window of a video (seconds), with the times it is visible."""
    return _moment_lines(ctx, "screen_text", "text", video, start, end)


def verify(ctx: Context, claim: str, video: int, start: float, end: float) -> Observation:
    """Re-watch a window of a video (seconds) and check whether it supports a claim; do this before citing it."""
    _verdict_, text = run_verify(ctx, claim, video, start, end)
    return Observation(text)


def finish(ctx: Context, answer: str, evidence: list | None = None) -> Observation:
    """Give the final answer and its evidence: a list of {"moment": id} or {"video": id, "start": s, "end": s}."""
    if not str(answer).strip():
        raise ToolError("finish needs an answer.")
    items = evidence if isinstance(evidence, list) else ([] if evidence in (None, "") else [evidence])
    return Observation("Finished.", final={"answer": str(answer).strip(), "evidence": items})


DEFAULT_TOOLS = (search, inspect, transcript, screen_text, verify, finish)


# --- describing and calling --------------------------------------------------------------------------------------

def _hints(fn) -> dict:
    return typing.get_type_hints(fn)


def _type_name(tp) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    return {type(None): "null"}.get(tp, getattr(tp, "__name__", str(tp)))


# What each argument means, for the JSON schemas the chat template shows the model.
PARAM_DOCS = {
    "query": "a few words describing the moment",
    "modality": f"only moments of this kind: one of {', '.join(MODALITIES)}",
    "video": "a video id from the library list or a search result",
    "start": "window start, seconds from the start of the video",
    "end": "window end, seconds from the start of the video",
    "fps": f"frames per second to watch, {MIN_FPS:g} to {MAX_FPS:g}",
    "claim": "the statement the window should show",
    "answer": "the final answer, one or two sentences",
    "evidence": "the moments that support the answer",
}
_EVIDENCE_ITEM = {
    "type": "object",
    "description": 'a moment a tool returned, {"moment": 12}, or a window, {"video": 2, "start": 12.0, "end": 15.5}',
    "properties": {"moment": {"type": "integer"}, "video": {"type": "integer"}, "start": {"type": "number"},
                   "end": {"type": "number"}},
}


def _json_type(tp) -> dict:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        tp = next((a for a in typing.get_args(tp) if a is not type(None)), str)
    if tp is list or typing.get_origin(tp) is list:
        return {"type": "array", "items": _EVIDENCE_ITEM}
    return {"type": {str: "string", int: "integer", float: "number", bool: "boolean"}.get(tp, "string")}


def tool_schema(fn) -> dict:
    """One tool as the chat template takes it (OpenAI function format): name, description, JSON-schema parameters."""
    hints = _hints(fn)
    props, required = {}, []
    for p in list(pyinspect.signature(fn).parameters.values())[1:]:
        prop = _json_type(hints.get(p.name, str))
        if p.name in PARAM_DOCS:
            prop["description"] = PARAM_DOCS[p.name]
        if p.name == "modality":
            prop["enum"] = list(MODALITIES)
        if p.default is pyinspect.Parameter.empty:
            required.append(p.name)
        elif p.default is not None:
            prop["default"] = p.default
        props[p.name] = prop
    return {"type": "function", "function": {
        "name": fn.__name__, "description": (fn.__doc__ or "").strip(),
        "parameters": {"type": "object", "properties": props, "required": required}}}


def tool_schemas(tools=DEFAULT_TOOLS) -> list[dict]:
    """The tools as JSON schemas, in order: what `apply_chat_template(..., tools=...)` renders for the model."""
    return [tool_schema(fn) for fn in tools]


def describe_tools(tools=DEFAULT_TOOLS) -> str:
    """One line per tool: name(arg: type = default) - its docstring."""
    lines = []
    for fn in tools:
        hints = _hints(fn)
        params = list(pyinspect.signature(fn).parameters.values())[1:]
        args = []
        for p in params:
            a = f"{p.name}: {_type_name(hints.get(p.name, str))}"
            if p.default is not pyinspect.Parameter.empty:
                a += f" = {json.dumps(p.default)}"
            args.append(a)
        lines.append(f"- {fn.__name__}({', '.join(args)}): {(fn.__doc__ or '').strip()}")
    return "\n".join(lines)


def _convert(ctx: Context, name: str, value, tp):
    """The model's value -> the parameter's type; ToolError naming the argument when it cannot be."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        if value is None or value == "":
            return None
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if tp is float:
        try:
            return parse_seconds(value)
        except ValueError as err:
            raise ToolError(f"{name}: {err}") from None
    if tp is int:  # only video ids are ints: accept 2, "2", "video 2", or a file name
        if isinstance(value, bool):
            raise ToolError(f"{name} must be a video id, got {value!r}")
        if isinstance(value, (int, float)) and float(value).is_integer():
            return int(value)
        text = str(value).strip()
        m = re.fullmatch(r"(?:video\s*)?#?(\d+)", text, re.I)
        if m:
            return int(m.group(1))
        try:
            return ctx.video(text).id
        except SightlineError as err:
            raise ToolError(f"{name}: {err.user_text()}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            return json.dumps(value)
        return str(value)
    if tp is list:
        return value if isinstance(value, list) else [value]
    return value


def call_tool(ctx: Context, name: str, arguments: dict, tools=DEFAULT_TOOLS) -> Observation:
    """Run one tool call from the model; every mistake comes back as an error observation."""
    by_name = {fn.__name__: fn for fn in tools}
    fn = by_name.get(name)
    if fn is None:
        return Observation(f"Error: there is no tool {name!r}. Tools: {', '.join(by_name)}.", error=True)
    hints = _hints(fn)
    params = list(pyinspect.signature(fn).parameters.values())[1:]
    known = {p.name for p in params}
    aliases = {"video_id": "video", "start_time": "start", "end_time": "end", "q": "query", "text": "query"}
    args = {}
    for k, v in (arguments or {}).items():
        k = aliases.get(k, k) if aliases.get(k) in known else k
        args[k] = v
    unknown = sorted(set(args) - known)
    missing = [p.name for p in params if p.default is pyinspect.Parameter.empty and p.name not in args]
    if missing:
        sig = ", ".join(p.name for p in params)
        return Observation(f"Error: {name} needs {', '.join(missing)} (its arguments: {sig}).", error=True)
    try:
        converted = {k: _convert(ctx, k, v, hints.get(k, str)) for k, v in args.items() if k in known}
        obs = fn(ctx, **converted)
    except ToolError as err:
        return Observation(f"Error in {name}: {err}", error=True)
    except SightlineError as err:  # e.g. a video file that went missing: the model can try something else
        return Observation(f"Error in {name}: {err.user_text()}", error=True)
    except Exception as err:  # noqa: BLE001 - a failing tool must not end the question; the log has the trace
        log.exception("agent tool %s failed", name)
        return Observation(f"Error in {name}: the tool failed ({type(err).__name__}: {err}).", error=True)
    if unknown:
        obs.text += f"\n(Ignored unknown argument(s): {', '.join(unknown)}.)"
    return obs


def call_key(name: str, arguments: dict) -> str:
    """A normalised form of a call, to notice when the model repeats itself."""
    return name + json.dumps(arguments or {}, sort_keys=True, default=str).lower()
