"""Evidence items and the rules that keep them honest.

An evidence item is a moment some tool returned (search, transcript, screen_text) or a window that `verify`
confirmed. Its times come from the index or the verified window, snapped into [0, duration]; what the model
wrote is only used to find which of those it means.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass


@dataclass
class Evidence:
    """A moment as DESIGN.md defines it, plus `verified` (true only after `verify` said the window supports it)."""

    video_id: int
    video: str  # path
    start: float
    end: float
    modality: str  # speech | text | visual | caption
    text: str
    score: float
    verified: bool = False
    moment_id: int | None = None  # None for a verified window that is not an indexed moment
    thumbnail: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_moment(cls, m, verified: bool = False, duration: float | None = None) -> Evidence:
        start, end = snap(m.start, m.end, duration)
        return cls(int(m.video_id), str(m.video), start, end, m.modality, m.text or "", float(m.score or 0.0),
                   verified, getattr(m, "moment_id", None), getattr(m, "thumbnail", None))


def snap(start: float, end: float, duration: float | None) -> tuple[float, float]:
    """(start, end) ordered and clamped into [0, duration] (duration None: only the lower bound)."""
    start, end = float(start), float(end)
    if end < start:
        start, end = end, start
    start = max(0.0, start)
    end = max(0.0, end)
    if duration is not None and duration > 0:
        start, end = min(start, duration), min(end, duration)
    return round(start, 3), round(end, 3)


_CLOCK = re.compile(r"^\s*(?:(\d+):)?(\d{1,2}):(\d{1,2}(?:\.\d+)?)\s*$")


def parse_seconds(value: object) -> float:
    """12.5, "12.5", "12.5s", "0:12.5", "1:02:03.5" -> seconds; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a time")
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip().lower().removesuffix("seconds").removesuffix("sec").removesuffix("s").strip()
    m = _CLOCK.match(text)
    if m:
        return int(m.group(1) or 0) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{value!r} is not a time in seconds") from None


def overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    """Length of the intersection of [a0, a1] and [b0, b1]; a point inside a span counts as a tiny overlap."""
    inter = min(a1, b1) - max(a0, b0)
    if inter > 0:
        return inter
    if inter == 0 and (a0 == a1 or b0 == b1) and max(a0, b0) <= min(a1, b1):
        return 1e-6
    return 0.0


def iou(a0: float, a1: float, b0: float, b1: float) -> float:
    """Temporal intersection over union; 0 for disjoint or empty spans."""
    inter = max(0.0, min(a1, b1) - max(a0, b0))
    union = max(a1, b1) - min(a0, b0)
    return inter / union if union > 0 else 0.0
