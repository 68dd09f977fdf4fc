"""Probe: duration, frame rate, size, rotation, audio track; a file that cannot be indexed fails here with the reason."""

from __future__ import annotations

from indexer.context import IndexContext, StageOutput, VideoJob

NAME = "probe"
NEEDS = ()  # stages whose results this one reads; the runner starts it after them


def signature(ctx: IndexContext) -> str:
    # v2: content duration and the video's first frame as start_time (indexer.media), rotation recorded
    return "v2"


def run(video: VideoJob, ctx: IndexContext) -> StageOutput:
    info = video.media()
    # width/height are the displayed (upright) size; rotation says how the stored pixels are turned for display
    facts = {"duration": info.duration, "fps": info.fps, "width": info.width, "height": info.height,
             "has_audio": info.has_audio, "start_time": info.start_time, "rotation": info.rotation,
             "size": info.size}
    return StageOutput(media_s=info.duration, video=facts)
