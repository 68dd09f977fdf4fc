"""On-screen text: RapidOCR on shot keyframes and every `ocr_interval` seconds where the frame changed.

OCR costs ~0.5 s a frame while decoding costs milliseconds, so a frame is looked at only when it differs from
the last frame looked at (mean absolute difference of 64x36 grayscale copies), and read in full only when text
detection alone on a small copy (`ocr_gate_side` px, ~0.05 s) finds text there. When a new text shows up, the
samples between the two reads are checked too, so the moment starts within one sample step of the text's
first appearance; when a text leaves, the skipped samples are read forward, so it ends at the first sample
without it (exact to one sample at both ends). Consecutive sightings of the same text merge into one `text` moment.

It follows the decode pass (`indexer.frames.follow`): each sample is read as soon as it is cached, so OCR runs
beside the decoding instead of after it.
"""

from __future__ import annotations

import re

import numpy as np

from indexer.context import IndexContext, MomentIn, StageOutput, VideoJob
from indexer.frames import follow, small_gray
from indexer.thumbnails import moment_thumbnail

NAME = "screen_text"
NEEDS = ("probe",)  # stages whose results this one reads; the runner starts it after them
FOLLOWS = ("shots",)  # stages whose output it reads while they run; the runner starts it once they started
CHANGE = 0.8  # mean abs difference (0-255) on 64x36 gray above which a frame is read again (a title card
# fading in on a dark frame moves it by ~1.5; sensor noise stays well under this after the area average)
MIN_CONFIDENCE = 0.6


def signature(ctx: IndexContext) -> str:
    o = ctx.options
    return f"v2 exact-ends interval={o.ocr_interval} fps={o.sample_fps} gate={o.ocr_gate_side}"


def _norm(text: str) -> str:
    return re.sub(r"[^0-9a-z]+", "", text.lower())


def run(video: VideoJob, ctx: IndexContext) -> StageOutput:
    from indexer.text_runs import merge_text_runs

    info = video.media()
    frames = follow(video, ctx)  # samples as the decode pass writes them
    reader = ctx.ocr.get()
    step = ctx.options.ocr_interval

    gate = ctx.options.ocr_gate_side
    reads = {"n": 0, "gated": 0}

    seen: dict[float, list[str]] = {}  # what each read sample showed: back and forward fills share reads

    def read(sample, image=None) -> list[str]:
        if sample.t in seen:
            return seen[sample.t]
        if image is None:  # the main loop hands in the frame it decoded already (a JPEG read is ~4 ms)
            image = frames.image(sample)
        if gate and not _has_text(reader, image, gate):
            reads["gated"] += 1
            texts = []
        else:
            reads["n"] += 1
            texts = [t.strip() for t, conf in reader.read(image) if conf >= MIN_CONFIDENCE and t.strip()]
        seen[sample.t] = texts
        return texts

    observations: dict[float, list[str]] = {}
    samples = []  # those seen so far
    last_gray, last_texts, last_read = None, [], -1
    last_t = -1e9
    for i, sample in enumerate(frames):
        samples.append(sample)
        if not (sample.key or sample.t - last_t >= step - 1e-6):
            continue
        image = frames.image(sample)
        gray = small_gray(image)
        changed = last_gray is None or float(np.abs(gray - last_gray).mean()) > CHANGE
        texts = read(sample, image) if changed else list(last_texts)
        if changed:
            now, before = {_norm(t) for t in texts}, {_norm(t) for t in last_texts}
            between = samples[last_read + 1:i]  # unread samples since the last read
            if before - now and between:
                # A text is gone: find how long it stayed, so its moment ends at the first sample without it.
                observations.update(_fill(between, before - now, read))
            if now - before and between:
                # A new text: find how far back it goes, so its moment starts at its first sample.
                observations.update(_fill(between[::-1], now - before, read))
            last_gray, last_read = gray, i
        observations[sample.t] = texts
        last_texts, last_t = texts, sample.t
    observations = sorted(observations.items())
    moments = []
    for run_ in merge_text_runs(observations, step):
        start, end = run_.start, min(run_.end, info.duration)
        sample = min((s for s in samples if s.t >= start - 1e-6), key=lambda s: s.t, default=samples[-1])
        thumb = moment_thumbnail(ctx.library, video.id, frames.image(sample), "text", start, ctx.options.thumb_side)
        moments.append(MomentIn(start, max(end, start), "text", run_.text, thumb))
    detail = {"ocr_frames": reads["n"], "gated_frames": reads["gated"], "samples": len(samples),
              "moments": len(moments)}
    return StageOutput(moments=moments, media_s=info.duration, detail=detail)


def _has_text(reader, image: np.ndarray, side: int) -> bool:
    """Text detection alone on a copy `side` px long: the cheap question before the costly full read."""
    import cv2

    h, w = image.shape[:2]
    scale = side / max(h, w)
    if scale < 1.0:
        image = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    engine = reader.engine
    try:
        saved = {k: getattr(engine, k) for k in ("use_det", "use_cls", "use_rec")}
    except AttributeError:  # not RapidOCR's engine: no detection-only call, so read every changed frame
        return True
    try:
        result = engine(np.ascontiguousarray(image[:, :, ::-1]), use_det=True, use_cls=False, use_rec=False)
    finally:
        engine.update_params(**saved)  # RapidOCR keeps call flags on the engine; put the reader's back
    boxes = getattr(result, "boxes", None)
    return boxes is not None and len(boxes) > 0


def _fill(samples, wanted: set[str], read) -> list[tuple[float, list[str]]]:
    """Read `samples` in the order given while one of the `wanted` texts is still there, and the first one
    without it (which ends, or starts, the text's run exactly)."""
    found = []
    for sample in samples:
        texts = read(sample)
        found.append((sample.t, texts))
        if not ({_norm(t) for t in texts} & wanted):
            break
    return found  # (t, texts) pairs; they replace the reused reads at those times
