"""Probe: duration, frame rate, size, audio track; a file that cannot be indexed fails here with the reason."""

from __future__ import annotations

from indexer.context import IndexContext, StageOutput, VideoJob

NAME = "probe"
NEEDS = ()  # stages whose results this one reads; the runner starts it after them


def signature(ctx: IndexContext) -> str:
    return "v1"


def run(video: VideoJob, ctx: IndexContext) -> StageOutput:
    info = video.media()
    facts = {"duration": info.duration, "fps": info.fps, "width": info.width, "height": info.height,
             "has_audio": info.has_audio, "start_time": info.start_time, "size": info.size}
    return StageOutput(media_s=info.duration, video=facts)
