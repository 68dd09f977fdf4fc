"""Shape checks other tests import: the DESIGN.md moment / evidence item."""

from __future__ import annotations

import math

MODALITIES = ("speech", "text", "visual", "caption")
MOMENT_FIELDS = {"video_id": int, "video": str, "start": (int, float), "end": (int, float), "modality": str,
                 "text": str, "score": (int, float)}


def assert_moment(d: dict, duration: float | None = None, evidence: bool = False) -> None:
    """Assert `d` is a DESIGN moment: its fields and types, a known modality, 0 <= start <= end <= duration.

    `evidence=True` also requires `verified` (bool), as in `ask --json` answers."""
    assert isinstance(d, dict), f"a moment is a dict, got {type(d).__name__}: {d!r}"
    for name, kind in MOMENT_FIELDS.items():
        assert name in d, f"moment lacks {name!r}: {d!r}"
        assert isinstance(d[name], kind) and not isinstance(d[name], bool), \
            f"moment {name!r} should be {kind}, got {type(d[name]).__name__}: {d!r}"
    assert d["modality"] in MODALITIES, f"modality {d['modality']!r} not one of {MODALITIES}: {d!r}"
    start, end = float(d["start"]), float(d["end"])
    assert math.isfinite(start) and math.isfinite(end), f"non-finite times: {d!r}"
    assert 0 <= start <= end, f"expected 0 <= start <= end, got start={start} end={end}: {d!r}"
    if duration is not None:
        assert end <= duration + 1e-6, f"end {end} is past the video's duration {duration}: {d!r}"
    assert math.isfinite(float(d["score"])), f"non-finite score: {d!r}"
    if evidence or "verified" in d:
        assert isinstance(d.get("verified"), bool), f"'verified' should be a bool: {d!r}"
