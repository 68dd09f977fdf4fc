"""On-screen text: RapidOCR (PP-OCRv6 models inside the rapidocr wheel) behind a reader with a confidence floor.

`load_ocr()` gives an `OcrReader`; `.read(rgb)` returns (text, confidence) lines above a confidence floor.
Frames are downscaled to `max_side` pixels (long side) first: detection cost grows with the pixel count, and
captions and cards stay readable well below 720p. Measured CPU seconds per 1280x720 frame, one thread:
native 0.85, 960 px 0.43, 640 px 0.26, 480 px 0.20 (480 px loses 12 px captions). Merging the reads of many
frames into runs is indexer/text_runs.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from storage.errors import SightlineError
from storage.once import OnceCache

# 640 px reads captions down to ~10 px cap height in a 720p frame (tests/test_models_ocr.py) at about 0.6x the
# CPU time of 960 px and 0.3x of full 720p; raise it (960, or None for native) for small scene text.
DEFAULT_MAX_SIDE = 640
DEFAULT_MIN_CONFIDENCE = 0.6

# Loaded RapidOCR engines by (max_side, threads, use_cls); a failed start is not kept.
_engines: OnceCache = OnceCache()


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
