"""Speech phrases: the words Whisper heard, cut into what a person would cite.

Whisper's segments are runs of up to ~30 s of audio, often several sentences ("Ever tried. Ever failed. No
matter. Try again. Fail again. Fail better."). A moment that long sends the player seconds away from the words
that were searched for. So the word timings are kept and the words are cut again: at the end of every sentence
(. ! ?) and at every pause of PAUSE_S or more. A sentence longer than MAX_PHRASE_S is split further, at its
clause marks (, ; :) and its longest pauses, until each part is at most MAX_PHRASE_S or cannot be split without
leaving a fragment shorter than MIN_PART_S. Every phrase keeps its words, so search can point at the first
matched word (storage/search.py `cited_span`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

PAUSE_S = 0.7  # silence between two words that ends a phrase even without punctuation
MAX_PHRASE_S = 6.0  # longer sentences are split at clauses and pauses
MIN_PART_S = 1.0  # no split leaves a part shorter than this
_SENTENCE_END = re.compile(r"[.!?…][\"'”’)\]]*$")
_CLAUSE_END = re.compile(r"[,;:—–][\"'”’)\]]*$")


@dataclass(frozen=True)
class Word:
    start: float  # content seconds
    end: float
    text: str  # as Whisper wrote it, punctuation included, without surrounding spaces


@dataclass
class Phrase:
    start: float
    end: float
    text: str
    words: list[Word] = field(default_factory=list)


def phrase_of(words: Sequence[Word]) -> Phrase:
    return Phrase(words[0].start, max(words[-1].end, words[0].start), " ".join(w.text for w in words),
                  list(words))


def split_phrases(words: Iterable[Word]) -> list[Phrase]:
    """Words in time order -> phrases (sentences and clauses, each at most about MAX_PHRASE_S)."""
    words = [w for w in words if w.text.strip()]
    sentences: list[list[Word]] = []
    current: list[Word] = []
    for w in words:
        if current and w.start - current[-1].end >= PAUSE_S:
            sentences.append(current)
            current = []
        current.append(w)
        if _SENTENCE_END.search(w.text):
            sentences.append(current)
            current = []
    if current:
        sentences.append(current)
    out: list[Phrase] = []
    for sentence in sentences:
        out.extend(phrase_of(part) for part in _split_long(sentence))
    return out


def _split_long(words: list[Word]) -> list[list[Word]]:
    """A sentence longer than MAX_PHRASE_S cut at its best boundary, recursively."""
    if words[-1].end - words[0].start <= MAX_PHRASE_S or len(words) < 2:
        return [words]
    best, best_score = None, 0.0
    for i in range(1, len(words)):  # a cut before words[i]
        left, right = words[i - 1].end - words[0].start, words[-1].end - words[i].start
        if min(left, right) < MIN_PART_S:
            continue
        gap = max(0.0, words[i].start - words[i - 1].end)
        clause = 0.5 if _CLAUSE_END.search(words[i - 1].text) else 0.0
        balance = 1.0 - abs(left - right) / (left + right)  # 1 at the middle: fewer, evener parts
        score = gap + clause + 0.2 * balance
        if best is None or score > best_score:
            best, best_score = i, score
    if best is None:
        return [words]
    return _split_long(words[:best]) + _split_long(words[best:])
