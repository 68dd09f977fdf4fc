"""Shots: cut times from PySceneDetect's content detector, found during the one decode pass (indexer/frames.py)."""

from __future__ import annotations

from indexer.context import IndexContext, StageOutput, VideoJob
from indexer.frames import ensure_frames

NAME = "shots"
NEEDS = ("probe",)  # stages whose results this one reads; the runner starts it after them


def signature(ctx: IndexContext) -> str:
    o = ctx.options
    return f"v1 fps={o.sample_fps} side={o.sample_side}"


def run(video: VideoJob, ctx: IndexContext) -> StageOutput:
    index = ensure_frames(video, ctx)
    return StageOutput(media_s=video.media().duration, detail={"shots": len(index.cuts) + 1})
