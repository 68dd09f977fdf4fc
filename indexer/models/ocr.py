"""On-screen text: RapidOCR (PP-OCRv6 models inside the rapidocr wheel) and merging per-frame reads into runs.

`load_ocr()` gives an `OcrReader`; `.read(rgb)` returns (text, confidence) lines above a confidence floor.
Frames are downscaled to `max_side` pixels (long side) first: detection cost grows with the pixel count, and
captions and cards stay readable well below 720p. Measured CPU seconds per 1280x720 frame, one thread:
native 0.85, 960 px 0.43, 640 px 0.26, 480 px 0.20 (480 px loses 12 px captions).
`merge_text_runs` turns "text seen at these sample times" into one run per text while it stays on screen,
tolerating OCR jitter between frames ("THANKS FOR WATCHING" vs "THANKS FOR WATCHNG").
"""

from __future__ import annotations

import itertools
import logging
import re
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from typing import Any

import numpy as np

from storage.errors import SightlineError
from storage.once import OnceCache

# 640 px reads captions down to ~10 px cap height in a 720p frame (tests/test_models_ocr.py) at about 0.6x the
# CPU time of 960 px and 0.3x of full 720p; raise it (960, or None for native) for small scene text.
DEFAULT_MAX_SIDE = 640
DEFAULT_MIN_CONFIDENCE = 0.6
SIMILAR = 0.8  # SequenceMatcher ratio above which two normalised reads are the same text
MIN_CONTAINED = 4  # shortest read that may merge into a longer one by containment

# Loaded RapidOCR engines by (max_side, threads, use_cls); a failed start is not kept.
_engines: OnceCache = OnceCache()


@dataclass(frozen=True)
class TextRun:
    start: float  # first sample time the text was seen
    end: float  # last sample time seen + step (the caller caps it at the video's duration)
    text: str


@dataclass
class OcrReader:
    """A loaded RapidOCR engine; `read(rgb)` -> [(text, confidence)] in reading order."""

    engine: Any = field(repr=False)
    max_side: int | None = DEFAULT_MAX_SIDE
    min_confidence: float = DEFAULT_MIN_CONFIDENCE

    def read(self, image: np.ndarray) -> list[tuple[str, float]]:
        import cv2

        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"OcrReader.read wants an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}")
        h, w = image.shape[:2]
        if self.max_side and max(h, w) > self.max_side:
            scale = self.max_side / max(h, w)
            image = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        bgr = np.ascontiguousarray(image[:, :, ::-1])  # RapidOCR treats arrays as OpenCV BGR
        result = self.engine(bgr)
        if not result.txts:
            return []
        out = []
        for text, score in zip(result.txts, result.scores):
            text = " ".join(text.split())
            # Lone characters ("0", "J") are mostly detector noise on textures and edges.
            if score >= self.min_confidence and sum(ch.isalnum() for ch in text) >= 2:
                out.append((text, float(score)))
        return out


def load_ocr(
    max_side: int | None = DEFAULT_MAX_SIDE,
    min_confidence: float = DEFAULT_MIN_CONFIDENCE,
    threads: int = 1,
    use_cls: bool = False,
) -> OcrReader:
    """RapidOCR with the wheel's models, quiet logs, `threads` ONNX threads; the engine is cached per process.

    use_cls (the 180-degree text classifier) is off by default: upside-down text is rare in video and it costs time.
    """
    engine = _engines.get((max_side, threads, use_cls), lambda: _load_engine(max_side, threads, use_cls))
    return OcrReader(engine=engine, max_side=max_side, min_confidence=min_confidence)


def _load_engine(max_side: int | None, threads: int, use_cls: bool):
    try:
        from rapidocr import RapidOCR
    except ImportError as err:
        raise SightlineError(
            "On-screen text reading needs rapidocr.", hint="Install it with `pip install rapidocr onnxruntime`."
        ) from err
    params: dict[str, Any] = {
        "Global.log_level": "error",
        "Global.use_cls": use_cls,
        "EngineConfig.onnxruntime.intra_op_num_threads": threads,
        "EngineConfig.onnxruntime.inter_op_num_threads": 1,
    }
    if max_side:
        # RapidOCR's default ("min" 736) scales a small side UP to 736 px; cap the long side instead so the
        # detector runs at the size we chose.
        params["Det.limit_type"] = "max"
        params["Det.limit_side_len"] = max_side
    try:
        engine = RapidOCR(params=params)
    except Exception as err:  # noqa: BLE001 - missing model files, broken onnxruntime
        raise SightlineError(
            f"The OCR engine could not start: {err}",
            hint="Reinstall it with `pip install --force-reinstall rapidocr==3.10.0` (its models ship in the wheel).",
        ) from err
    logging.getLogger("RapidOCR").setLevel(logging.ERROR)
    return engine


# --- merging reads across frames -------------------------------------------------------------------------------

_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)
_DIGITS = re.compile(r"\d+")


def normalise_text(text: str) -> str:
    """Case, punctuation and spacing folded away: the key two reads of one caption share."""
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def similarity(a: str, b: str) -> float:
    """0..1 for two normalised reads; numbers must agree exactly (a clock or a score that changes is new text).

    A read that is (nearly) contained in the other counts as the same text: cards and captions animate in word
    by word, so "waiching" at 2.0 s and "thanks for watching" at 2.3 s are one card (gradio's a.mp4 does this).
    """
    if a == b:
        return 1.0
    if not (a and b) or _DIGITS.findall(a) != _DIGITS.findall(b):
        return 0.0
    ratio = SequenceMatcher(None, a, b, autojunk=False).ratio()
    short, long_ = sorted((a, b), key=len)
    if ratio < SIMILAR and len(short) >= MIN_CONTAINED:
        ratio = max(ratio, _containment(short, long_))
    return ratio


def _containment(short: str, long_: str) -> float:
    """Share of `short` found in `long_` within one stretch about as long as `short` (scattered letters don't count)."""
    blocks = [b for b in SequenceMatcher(None, short, long_, autojunk=False).get_matching_blocks() if b.size]
    if not blocks:
        return 0.0
    span = blocks[-1].b + blocks[-1].size - blocks[0].b
    if span > 1.15 * len(short) + 1:  # room for a character or two of jitter, not for a spread-out match
        return 0.0
    return sum(b.size for b in blocks) / len(short)


def same_text(a: str, b: str) -> bool:
    """True when two normalised reads are one text up to OCR jitter."""
    return similarity(a, b) >= SIMILAR


@dataclass
class _Run:
    key: str
    start: float
    last: float
    order: int  # creation order: runs starting together keep their reading order
    variants: dict[str, int] = field(default_factory=dict)
    end: float | None = None  # time of the first sample without the text, once there is one

    def text(self) -> str:
        # The read seen most often; on ties the longest (OCR jitter tends to drop characters).
        return max(self.variants.items(), key=lambda kv: (kv[1], len(kv[0])))[0]


def merge_text_runs(observations: list[tuple[float, list[str]]], step: float) -> list[TextRun]:
    """One run per text that appears in consecutive samples; a sample without it ends the run.

    observations: (sample time, texts read then) for every sample taken, including ones that read nothing;
    step: the sampling interval. A run ends at the first sample without its text (a shot's keyframe just after
    a cut counts: the text does not spill into the next shot), at most `step` after the last time it was seen;
    a run still open at the last sample ends `step` after it.
    """
    open_runs: list[_Run] = []
    done: list[_Run] = []
    counter = itertools.count()
    for time, texts in sorted(observations, key=lambda o: o[0]):
        still_open: list[_Run] = []
        for raw in texts:
            raw = " ".join(str(raw).split())
            key = normalise_text(raw)
            if not key:
                continue
            # Already counted at this sample (the same text twice on screen): one run.
            twin = next((r for r in still_open if same_text(r.key, key)), None)
            if twin is not None:
                twin.variants[raw] = twin.variants.get(raw, 0) + 1
                continue
            match = _best_match(open_runs, key)
            if match is None:
                match = _Run(key=key, start=time, last=time, order=next(counter))
            else:
                open_runs.remove(match)
                if len(key) > len(match.key):
                    match.key = key  # a card animating in: compare later reads with the fullest one
            match.last = time
            match.variants[raw] = match.variants.get(raw, 0) + 1
            still_open.append(match)
        for run in open_runs:  # not seen at this sample: the text left the screen by now
            run.end = min(time, run.last + step)
        done.extend(open_runs)
        open_runs = still_open
    done.extend(open_runs)
    done.sort(key=lambda r: (r.start, r.order))
    return [TextRun(start=r.start, end=r.end if r.end is not None else r.last + step, text=r.text())
            for r in done]


def _best_match(runs: list[_Run], key: str) -> _Run | None:
    best, best_ratio = None, 0.0
    for run in runs:
        ratio = similarity(run.key, key)
        if ratio >= SIMILAR and ratio > best_ratio:
            best, best_ratio = run, ratio
    return best
