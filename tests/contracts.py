"""Shape checks other tests import: the DESIGN.md moment / evidence item and the `ask --json` answer."""

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


ANSWER_FIELDS = {"answer", "evidence", "mode"}
MODES = ("agent", "evidence-only")


def assert_answer(d: dict, mode: str | None = None, duration: float | None = None) -> list[dict]:
    """Assert `d` is the DESIGN `ask --json` object {"answer": str, "evidence": [moment...], "mode": ...}.

    Exactly those keys, a non-empty answer, a known mode (`mode` if given), every evidence item a moment with
    `verified` (inside `duration` if given). Returns the evidence list, so callers can check its items."""
    assert isinstance(d, dict), f"an answer is a dict, got {type(d).__name__}: {d!r}"
    assert set(d) == ANSWER_FIELDS, f"answer keys should be {sorted(ANSWER_FIELDS)}, got {sorted(d)}: {d!r}"
    assert isinstance(d["answer"], str) and d["answer"].strip(), f"empty or non-text answer: {d!r}"
    assert d["mode"] in MODES, f"mode {d['mode']!r} not one of {MODES}: {d!r}"
    if mode is not None:
        assert d["mode"] == mode, f"expected mode {mode!r}, got {d['mode']!r}: {d!r}"
    assert isinstance(d["evidence"], list), f"evidence should be a list: {d!r}"
    for e in d["evidence"]:
        assert_moment(e, duration=duration, evidence=True)
    return d["evidence"]


def assert_search_output(output: str, durations: dict[str, float] | None = None) -> list[dict]:
    """The moments `search --json` printed (one JSON object a line; other lines, such as log lines, are skipped),
    each checked with assert_moment; with `durations` ({video path: seconds}) each lies inside its video."""
    import json

    hits = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    for hit in hits:
        if durations is not None:
            assert hit.get("video") in durations, f"a moment of an unexpected video: {hit!r}"
        assert_moment(hit, duration=durations[hit["video"]] if durations is not None else None)
    return hits
