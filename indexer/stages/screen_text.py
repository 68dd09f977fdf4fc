"""On-screen text: RapidOCR on shot keyframes and every `ocr_interval` seconds where the frame changed.

OCR costs ~0.1-0.5 s a frame while decoding costs milliseconds, so a frame is read only when it differs from
the last frame read (mean absolute difference of 64x36 grayscale copies). When a new text shows up, the
samples between the two reads are checked too, so the moment starts within one sample step of the text's
first appearance. Consecutive sightings of the same text merge into one `text` moment.
"""

from __future__ import annotations

import re

import numpy as np

from indexer.context import IndexContext, MomentIn, StageOutput, VideoJob
from indexer.frames import FrameIndex, ensure_frames, small_gray
from indexer.thumbnails import moment_thumbnail

NAME = "screen_text"
LANE = "frames"
CHANGE = 0.8  # mean abs difference (0-255) on 64x36 gray above which a frame is read again (a title card
# fading in on a dark frame moves it by ~1.5; sensor noise stays well under this after the area average)
MIN_CONFIDENCE = 0.6


def signature(ctx: IndexContext) -> str:
    return f"v1 interval={ctx.options.ocr_interval} fps={ctx.options.sample_fps}"


def _norm(text: str) -> str:
    return re.sub(r"[^0-9a-z]+", "", text.lower())


def run(video: VideoJob, ctx: IndexContext) -> StageOutput:
    from indexer.ocr import merge_text_runs

    info = video.media()
    index = ensure_frames(video, ctx)
    reader = ctx.ocr.get()
    step = ctx.options.ocr_interval
    reads = {"n": 0}

    def read(sample) -> list[str]:
        reads["n"] += 1
        return [t.strip() for t, conf in reader.read(index.image(sample)) if conf >= MIN_CONFIDENCE and t.strip()]

    observations: dict[float, list[str]] = {}
    samples = index.samples
    last_gray, last_texts, last_read = None, [], -1
    last_t = -1e9
    for i, sample in enumerate(samples):
        if not (sample.key or sample.t - last_t >= step - 1e-6):
            continue
        image = index.image(sample)
        gray = small_gray(image)
        changed = last_gray is None or float(np.abs(gray - last_gray).mean()) > CHANGE
        texts = read(sample) if changed else list(last_texts)
        if changed:
            new = {_norm(t) for t in texts} - {_norm(t) for t in last_texts}
            if new and i - last_read > 1:
                # Unread samples since the last read: find how far back the new text goes.
                observations.update(_back_fill(samples[last_read + 1:i], new, read))
            last_gray, last_read = gray, i
        observations[sample.t] = texts
        last_texts, last_t = texts, sample.t
    observations = sorted(observations.items())
    moments = []
    for run_ in merge_text_runs(observations, step):
        start, end = run_.start, min(run_.end, info.duration)
        sample = min((s for s in samples if s.t >= start - 1e-6), key=lambda s: s.t, default=samples[-1])
        thumb = moment_thumbnail(ctx.library, video.id, index.image(sample), "text", start, ctx.options.thumb_side)
        moments.append(MomentIn(start, max(end, start), "text", run_.text, thumb))
    return StageOutput(moments=moments, media_s=info.duration,
                       detail={"ocr_frames": reads["n"], "samples": len(samples), "moments": len(moments)})


def _back_fill(between, new: set[str], read) -> list[tuple[float, list[str]]]:
    """Read the samples before a read that found new text, latest first, while the new text is still there."""
    found = []
    for sample in reversed(between):
        texts = read(sample)
        if not ({_norm(t) for t in texts} & new):
            break
        found.append((sample.t, texts))
    return found  # (t, texts) pairs; they replace the reused reads at those times
