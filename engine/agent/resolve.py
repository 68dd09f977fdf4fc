"""The model's cited evidence -> Evidence items it is allowed to show.

Each cited item is matched to a moment a tool returned (by id, or by video and overlapping time) or to a
window `verify` confirmed. Anything else is a timestamp no tool returned: it is verified now (while the
budget lasts) or dropped. Cited moments that were not verified yet are re-checked the same way; one the
verifier refutes is dropped. `verified` is true only where a verify call said YES.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from engine.agent.context import Context
from engine.agent.evidence import Evidence, overlap, parse_seconds, snap
from engine.agent.tools import ToolError, run_verify
from storage.errors import SightlineError


@dataclass
class Cited:
    """One evidence item as the model wrote it, read into numbers."""

    moment_id: int | None = None
    video_id: int | None = None
    start: float | None = None
    end: float | None = None


def read_cited(item) -> Cited | None:
    """{"moment": 12} / {"video": 2, "start": .., "end": ..} / "m12" / [2, 12.0, 15.5] -> Cited; None if unreadable."""
    try:
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            return Cited(moment_id=int(item))
        if isinstance(item, str):
            m = re.fullmatch(r"\s*\[?m(\d+)\]?\s*", item)
            if m:
                return Cited(moment_id=int(m.group(1)))
            m = re.fullmatch(r"\s*video\s*(\d+)\D+?([\d:.]+)\s*(?:-|to|–)\s*([\d:.]+)\s*s?\s*", item, re.I)
            if m:
                return Cited(None, int(m.group(1)), parse_seconds(m.group(2)), parse_seconds(m.group(3)))
            return None
        if isinstance(item, (list, tuple)) and len(item) == 3:
            return Cited(None, int(item[0]), parse_seconds(item[1]), parse_seconds(item[2]))
        if not isinstance(item, dict):
            return None
        mid = next((item[k] for k in ("moment", "moment_id", "id") if item.get(k) is not None), None)
        if isinstance(mid, str):
            mid = re.sub(r"\D", "", mid) or None
        vid = next((item[k] for k in ("video", "video_id") if item.get(k) is not None), None)
        if isinstance(vid, str):
            vid = re.sub(r"\D", "", vid) or None
        start = item.get("start", item.get("time", item.get("timestamp")))
        end = item.get("end", start)
        return Cited(int(mid) if mid is not None else None, int(vid) if vid is not None else None,
                     parse_seconds(start) if start is not None else None,
                     parse_seconds(end) if end is not None else None)
    except (TypeError, ValueError):
        return None


def _best_seen(ctx: Context, video_id: int, start: float, end: float):
    """The seen moment of this video that overlaps the window most, or None."""
    best, best_overlap = None, 0.0
    for m in ctx.seen.values():
        if int(m.video_id) != video_id:
            continue
        o = overlap(m.start, m.end, start, end)
        if o > best_overlap:
            best, best_overlap = m, o
    return best


def _duration(ctx: Context, video_id: int) -> float | None:
    try:
        return ctx.video(video_id).duration
    except SightlineError:
        return None


def _check(ctx: Context, claim: str, video_id: int, start: float, end: float) -> bool | None:
    """Verify a window now if the budget allows; True/False as verify said, None when it could not run."""
    if ctx.vlm is None or ctx.checks_left <= 0:
        return None
    ctx.checks_left -= 1
    try:
        verdict, text = run_verify(ctx, claim, video_id, start, end)
    except (ToolError, SightlineError) as err:
        text = err.user_text() if isinstance(err, SightlineError) else str(err)
        ctx.emit("error", f"verify: video {video_id} {start:.1f}-{end:.1f} s", "verify", observation=text)
        return None
    ctx.emit("tool", f"verify: video {video_id} {verdict.start:.1f}-{verdict.end:.1f} s", "verify",
             {"claim": claim, "video": video_id, "start": start, "end": end}, observation=text)
    return None if verdict.unclear else verdict.supported


def resolve_evidence(ctx: Context, answer: str, cited: list) -> list[Evidence]:
    """Turn the model's cited items into Evidence, verifying or dropping what no tool returned."""
    out: list[Evidence] = []
    keys: set[tuple] = set()
    dropped: list[str] = []

    def add(ev: Evidence) -> None:
        key = (ev.video_id, ev.moment_id) if ev.moment_id is not None else (ev.video_id, ev.start, ev.end)
        if key not in keys:
            keys.add(key)
            out.append(ev)

    for raw in cited:
        c = read_cited(raw)
        if c is None:
            dropped.append(f"{str(raw)[:60]} (unreadable)")
            continue
        moment = ctx.seen.get(c.moment_id) if c.moment_id is not None else None
        if moment is not None and c.video_id is not None and int(moment.video_id) != c.video_id:
            moment = None  # the id and the video disagree: trust neither, go by video and time
        if moment is None and c.video_id is not None and c.start is not None:
            try:
                duration = ctx.video(c.video_id).duration
            except SightlineError:
                dropped.append(f"video {c.video_id} (not in the library)")
                continue
            if ctx.video_id is not None and c.video_id != ctx.video_id:
                dropped.append(f"video {c.video_id} (outside the question's video)")
                continue
            s, e = snap(c.start, c.end if c.end is not None else c.start, duration)
            moment = _best_seen(ctx, c.video_id, s, e)
            if moment is None:
                verdict = ctx.supported_verdict(c.video_id, s, e)
                if verdict is None and not ctx.refuted(c.video_id, s, e):
                    said = _check(ctx, answer, c.video_id, s, e)
                    verdict = ctx.supported_verdict(c.video_id, s, e) if said else None
                if verdict is None:
                    dropped.append(f"video {c.video_id} {s:.1f}-{e:.1f} s (no tool returned it and it was not verified)")
                    continue
                vs, ve = snap(verdict.start, verdict.end, duration)
                path = ctx.video(c.video_id).path
                add(Evidence(c.video_id, path, vs, ve, "visual", verdict.claim, 1.0, True))
                continue
        if moment is None:
            dropped.append(f"{str(raw)[:60]} (no such moment among the tool results)")
            continue
        vid, duration = int(moment.video_id), _duration(ctx, int(moment.video_id))
        if ctx.video_id is not None and vid != ctx.video_id:
            dropped.append(f"[m{moment.moment_id}] (outside the question's video)")
            continue
        verified = ctx.supported_verdict(vid, moment.start, moment.end) is not None
        if not verified and ctx.refuted(vid, moment.start, moment.end):
            dropped.append(f"[m{moment.moment_id}] (verify said the window does not support it)")
            continue
        if not verified:
            said = _check(ctx, answer, vid, moment.start, moment.end)
            if said is False:
                dropped.append(f"[m{moment.moment_id}] (verify said the window does not support it)")
                continue
            verified = bool(said)
        add(Evidence.from_moment(moment, verified=verified, duration=duration))
    if dropped:
        ctx.emit("note", "evidence dropped", observation="Dropped: " + "; ".join(dropped))
    return out


def fallback_evidence(ctx: Context, answer: str, k: int = 3) -> list[Evidence]:
    """When the answer cites nothing usable: the best moments tools returned, checked like cited ones."""
    ranked = sorted(ctx.seen.values(), key=lambda m: -(m.score or 0.0))
    if ctx.video_id is not None:
        ranked = [m for m in ranked if int(m.video_id) == ctx.video_id]
    return resolve_evidence(ctx, answer, [{"moment": m.moment_id} for m in ranked[:k]])


# "1:02:03.5", "0:45", "45.5 s", "45 seconds", "45s", "45 sec" -- times written in an answer's text.
_TIME_IN_TEXT = re.compile(
    r"(?<![\w.:])(?:(\d+:)?\d{1,2}:\d{2}(?:\.\d+)?|\d+(?:\.\d+)?\s?(?:s|sec|secs|seconds?)\b)(?![\w:])", re.I)
REMOVED = "[unverified time removed]"


def check_answer_times(ctx: Context, answer: str, evidence: list[Evidence]) -> tuple[str, list[Evidence]]:
    """Times written in the answer must lie in (or within 1 s of) an evidence window, or be verified now;
    a time that is neither is removed from the text, so no unverified timestamp is shown."""
    videos = {e.video_id for e in evidence} or {int(m.video_id) for m in ctx.seen.values()}
    if ctx.video_id is not None:
        videos = {ctx.video_id}
    out, evidence = [], list(evidence)
    pos = 0
    for m in _TIME_IN_TEXT.finditer(answer):
        try:
            t = parse_seconds(m.group(0).strip())
        except ValueError:
            continue
        if any(e.start - 1.0 <= t <= e.end + 1.0 for e in evidence):
            continue
        kept = False
        if len(videos) == 1:  # only then is it clear which video the time belongs to
            vid = next(iter(videos))
            s, e = snap(t - 2.0, t + 2.0, _duration(ctx, vid))
            if e > s and _check(ctx, answer, vid, s, e):
                verdict = ctx.supported_verdict(vid, s, e)
                evidence.append(Evidence(vid, ctx.video(vid).path, verdict.start, verdict.end, "visual",
                                         verdict.claim, 1.0, True))
                kept = True
        if not kept:
            out.append(answer[pos:m.start()] + REMOVED)
            pos = m.end()
            ctx.emit("note", "time removed from the answer",
                     observation=f"\"{m.group(0)}\" lies in no evidence window and was not verified.")
    return "".join(out) + answer[pos:], evidence
