"""Captions (optional): a VLM describes each segment; `caption` moments. Off, with a note, when none is handed in.

The captioner is a callable `(frames (T, H, W, 3) uint8, timestamps [s]) -> str`, optionally with
`.many([(frames, timestamps), ...]) -> [str, ...]` for batches (engine/captioner.py's `caption_fn()`), built by
app/services.py; this module never imports a model. Frames come from the frame cache (PTS times).
"""

from __future__ import annotations

import numpy as np

from indexer.context import IndexContext, MomentIn, StageOutput, VideoJob
from indexer.frames import ensure_frames, samples_by_preference, spans
from indexer.thumbnails import best_frame, frame_quality, moment_thumbnail

NAME = "captions"
NEEDS = ("shots",)  # stages whose results this one reads; the runner starts it after them
BATCH = 4
FRAMES_PER_SEGMENT = 8


def signature(ctx: IndexContext) -> str:
    name = getattr(ctx.captioner, "model_name", "on") if ctx.captioner else "off"
    return f"v1 span={ctx.options.visual_span} captioner={name}"


def _segment_frames(index, start: float, end: float) -> tuple[np.ndarray, list[float]]:
    inside = sorted(samples_by_preference(index, start, end), key=lambda s: s.t)
    if len(inside) > FRAMES_PER_SEGMENT:
        picks = np.linspace(0, len(inside) - 1, FRAMES_PER_SEGMENT).round().astype(int)
        inside = [inside[i] for i in picks]
    return np.stack([index.image(s) for s in inside]), [s.t for s in inside]


def run(video: VideoJob, ctx: IndexContext) -> StageOutput:
    info = video.media()
    if ctx.captioner is None:
        return StageOutput(media_s=info.duration, message=ctx.captions_note, status="skipped")
    index = ensure_frames(video, ctx)
    segments = spans(index, info.duration, ctx.options.visual_span)
    moments = []
    for k in range(0, len(segments), BATCH):
        batch = segments[k:k + BATCH]
        inputs = [_segment_frames(index, a, b) for a, b in batch]
        many = getattr(ctx.captioner, "many", None)
        texts = many(inputs) if many else [ctx.captioner(f, t) for f, t in inputs]
        for (start, end), text in zip(batch, texts):
            if not text or not text.strip():
                continue
            chosen = best_frame(samples_by_preference(index, start, end), lambda s: frame_quality(index.image(s)))
            thumb = moment_thumbnail(ctx.library, video.id, index.image(chosen), "caption", chosen.t,
                                     ctx.options.thumb_side)
            moments.append(MomentIn(start, end, "caption", text.strip(), thumb))
    return StageOutput(moments=moments, media_s=info.duration, detail={"captions": len(moments)})
