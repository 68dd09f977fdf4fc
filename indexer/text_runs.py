"""On-screen text over time: per-frame OCR reads merged into one run per text while it stays on screen.

`merge_text_runs` turns "text seen at these sample times" into `TextRun`s, tolerating OCR jitter between frames
("THANKS FOR WATCHING" vs "THANKS FOR WATCHNG") and cards that animate in word by word. The reads come from
indexer/models/ocr.py; the screen_text stage (indexer/stages/screen_text.py) turns the runs into moments.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from difflib import SequenceMatcher

SIMILAR = 0.8  # SequenceMatcher ratio above which two normalised reads are the same text
MIN_CONTAINED = 4  # shortest read that may merge into a longer one by containment


@dataclass(frozen=True)
class TextRun:
    start: float  # first sample time the text was seen
    end: float  # last sample time seen + step (the caller caps it at the video's duration)
    text: str


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
