"""Test doubles for the agent: an in-memory tool backend and a scripted model that returns given turns.

STYLE rule 13: the loop's control flow is tested on a scripted fake; numerics belong to the tiny real model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from engine.agent.context import VideoInfo
from engine.agent.prompts import INSPECT_TASK, VERIFY_TASK, WATCH_SYSTEM
from engine.video_inputs import Clip
from storage.errors import SightlineError
from storage.search import MomentHit


class FakeBackend:
    """Videos and moments held in lists; search is a word-overlap ranking (the real one is tested elsewhere).

    Its methods are engine.agent.context.ToolBackend's with the same parameters (tests/test_doubles.py checks)."""

    def __init__(self, videos: dict[int, tuple[str, float]], moments: list[tuple[int, float, float, str, str]]):
        self._videos = {vid: VideoInfo(vid, path, dur) for vid, (path, dur) in videos.items()}
        self._moments = [MomentHit(i + 1, vid, self._videos[vid].path, s, e, mod, text, 0.0)
                         for i, (vid, s, e, mod, text) in enumerate(moments)]
        self.clips: list[tuple[int, float, float, float]] = []
        self.frame_side = 4  # pixels; raise it to make clips cost visual tokens
        self.searches: list[tuple[str, list | None]] = []

    def videos(self):
        return list(self._videos.values())

    def video(self, ref):
        if isinstance(ref, int) or str(ref).isdigit():
            if int(ref) in self._videos:
                return self._videos[int(ref)]
        for v in self._videos.values():
            if str(ref) in (v.path, v.path.rsplit("/", 1)[-1]):
                return v
        raise SightlineError(f"No video {ref!r} in this library.", hint="Known videos: " +
                             ", ".join(str(i) for i in self._videos))

    def search(self, query, k=8, modalities=None, video_ids=None):
        self.searches.append((query, list(video_ids) if video_ids else None))
        words = set(re.findall(r"\w+", query.lower()))
        scored = []
        for m in self._moments:
            if modalities and m.modality not in modalities or video_ids and m.video_id not in video_ids:
                continue
            n = len(words & set(re.findall(r"\w+", m.text.lower())))
            if n:
                scored.append((n, m))
        scored.sort(key=lambda t: (-t[0], t[1].moment_id))
        out = []
        for n, m in scored[:k]:
            hit = MomentHit(**{**m.__dict__, "score": round(n / max(len(words), 1), 4), "sources": {}})
            out.append(hit)
        return out

    def moments(self, video_id, start, end, modalities=None):
        return [m for m in self._moments if m.video_id == video_id and m.start <= end and m.end >= start
                and (not modalities or m.modality in modalities)]

    def clip(self, video_id, start, end, fps, max_frames):
        self.clips.append((video_id, start, end, fps))
        n = min(max_frames, max(1, int(round((end - start) * fps))))
        ts = [start + i / fps for i in range(n)]
        frames = np.zeros((n, self.frame_side, self.frame_side, 3), np.uint8)
        return Clip(video_id, self._videos[video_id].path, frames, ts, start=start, end=end,
                    duration=self._videos[video_id].duration)


@dataclass
class ScriptedChat:
    """A model that replays given assistant turns; verify calls get `verdicts` in order (default 'NO'),
    inspect calls get `descriptions` in order. `chat` takes VideoChat.chat's parameters (tests/test_doubles.py)."""

    turns: list[str]
    verdicts: list[str] = field(default_factory=list)
    descriptions: list[str] = field(default_factory=list)
    calls: list[dict] = field(default_factory=list)  # every chat call: messages, clips, kind
    name: str = "scripted"

    def chat(self, messages, clips=(), max_new_tokens=512, tools=None):
        kind = "turn"
        if messages[0]["content"] == WATCH_SYSTEM:
            kind = "verify" if VERIFY_TASK in messages[-1]["content"] else "inspect"
            assert kind == "verify" or INSPECT_TASK in messages[-1]["content"], messages[-1]["content"]
        self.calls.append({"kind": kind, "messages": [dict(m) for m in messages], "clips": list(clips),
                           "tools": list(tools or [])})
        if kind == "verify":
            return self.verdicts.pop(0) if self.verdicts else "NO, nothing like that is shown."
        if kind == "inspect":
            return self.descriptions.pop(0) if self.descriptions else "A street; nothing else of note."
        return self.turns.pop(0) if self.turns else "I have nothing more to add."

    def verify_calls(self) -> list[dict]:
        return [c for c in self.calls if c["kind"] == "verify"]


def call(name: str, **arguments) -> str:
    """One assistant turn that makes a Qwen-style tool call."""
    import json

    return f"Let me check.\n<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


def two_video_backend() -> FakeBackend:
    """Two videos that both mention a red van, at different times; only video 2 has the dagger line."""
    return FakeBackend(
        {1: ("/media/street.mp4", 60.0), 2: ("/media/talk.mp4", 30.0)},
        [
            (1, 10.0, 14.0, "speech", "look at that red van parked outside"),
            (1, 40.0, 42.0, "text", "EXIT"),
            (2, 5.0, 8.0, "speech", "I sleep with a dagger"),
            (2, 20.0, 24.0, "text", "RED VAN RENTALS"),
            (2, 26.0, 29.5, "speech", "you understand"),
        ],
    )
