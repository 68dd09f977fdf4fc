"""Phrase-level speech: moments are sentences and clauses with their words, and a hit lands on the cited word.

The unit tests build word lists by hand; the end-to-end ones index a reading spoken by espeak-ng piece by piece
(tests/speech_clips.py), so the true time of every piece's first word is known by construction, and check what
`sightline search` returns against it.
"""

from __future__ import annotations

import json
import sqlite3

import pytest

from indexer.phrases import MAX_PHRASE_S, MIN_PART_S, Word, split_phrases
from storage.search import LEAD_IN_S, cited_span
from tests import speech_clips


def words(spec: str, start: float = 0.0, dur: float = 0.3, gap: float = 0.1) -> list[Word]:
    """'a b c' -> words of `dur` seconds with `gap` between them; '|' in spec is a 1 s pause."""
    out, t = [], start
    for token in spec.split():
        if token == "|":
            t += 1.0
            continue
        out.append(Word(round(t, 3), round(t + dur, 3), token))
        t += dur + gap
    return out


# --- splitting -----------------------------------------------------------------------------------------------


def test_sentences_become_phrases():
    phrases = split_phrases(words("Ever tried. Ever failed. No matter. Try again. Fail again. Fail better."))
    assert [p.text for p in phrases] == ["Ever tried.", "Ever failed.", "No matter.", "Try again.", "Fail again.",
                                         "Fail better."]
    assert phrases[-1].start == phrases[-1].words[0].start
    assert all(p.words for p in phrases)


def test_a_pause_ends_a_phrase_without_punctuation():
    phrases = split_phrases(words("so we went home | and then it rained"))
    assert [p.text for p in phrases] == ["so we went home", "and then it rained"]


def test_a_long_sentence_is_cut_at_its_clause_and_no_part_is_too_short():
    spec = ("when the committee met in the spring it decided after a long debate that went on for hours, that "
            "the budget for the new bridge would be cut in half and the rest spent on schools")
    phrases = split_phrases(words(spec))
    assert len(phrases) >= 2
    assert any(p.text.endswith("hours,") for p in phrases)  # the clause mark is the preferred cut
    for p in phrases:
        assert p.end - p.start <= MAX_PHRASE_S + 1e-6
        assert p.end - p.start >= MIN_PART_S
    assert " ".join(p.text for p in phrases) == spec  # nothing lost or repeated


def test_a_long_sentence_without_marks_is_cut_at_its_pauses():
    ws = words("one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen")
    ws = ws[:7] + [Word(w.start + 0.5, w.end + 0.5, w.text) for w in ws[7:]]  # 0.6 s gap before "eight"
    assert ws[-1].end - ws[0].start > MAX_PHRASE_S
    phrases = split_phrases(ws)
    assert [p.words[0].text for p in phrases] == ["one", "eight"]


def test_one_long_word_run_without_any_pause_stays_whole_when_cuts_would_leave_fragments():
    ws = [Word(0.0, 7.0, "Supercalifragilistic"), Word(7.0, 7.5, "yes.")]
    assert len(split_phrases(ws)) == 1


# --- the cited word ------------------------------------------------------------------------------------------


def _rows(ws: list[Word]) -> list[list]:
    return [[w.start, w.end, w.text] for w in ws]


def test_cited_span_is_the_run_of_query_words_not_the_first_match():
    ws = words("Fail again, fail better.", start=20.0, gap=0.5)
    start, end, cited = cited_span(_rows(ws), "fail better")
    assert cited == "fail better."
    assert start == pytest.approx(ws[2].start - LEAD_IN_S)
    assert end == ws[-1].end


def test_cited_span_lead_in_never_reaches_the_word_before():
    ws = [Word(1.0, 1.9, "said"), Word(2.0, 2.4, "budget")]
    start, _, _ = cited_span(_rows(ws), "budget")
    assert start == 1.9


def test_cited_span_stems_and_ignores_stop_words():
    ws = words("the plan is that we are failing the test", gap=0.5)
    start, _, cited = cited_span(_rows(ws), "the failed")
    assert cited == "failing"
    assert start == pytest.approx(ws[6].start - LEAD_IN_S)
    assert cited_span(_rows(ws), "budget") is None


def test_cited_span_keeps_apostrophes_in_words():
    ws = words("If you're good at something, never do it for free.", gap=0.5)
    start, _, cited = cited_span(_rows(ws), "if you're good at something")
    assert cited == "If you're good at something,"  # "if" is a stop word, but the query starts with it
    assert start == pytest.approx(ws[0].start)  # no lead-in before 0
    _, _, cited = cited_span(_rows(ws), "something never")
    assert cited == "something, never"


# --- end to end on a spoken reading --------------------------------------------------------------------------

PIECES = ["Ever tried.", "Ever failed.", "No matter.", "Try again.", "Fail again.", "Fail better.",
          "The committee met on a cold morning in the spring,", "and after a long debate,",
          "decided that the budget for the bridge would be cut in half."]


@pytest.fixture(scope="module")
def reading(tmp_path_factory, bikes_mp4):
    if not speech_clips.have_espeak():
        pytest.fail("espeak-ng is missing: `make test` installs it (Debian package espeak-ng).")
    folder = tmp_path_factory.mktemp("reading")
    audio, truth = speech_clips.lay_out(PIECES, folder, lead_s=4.0, pauses={6: 1.0})
    clip = speech_clips.mux(bikes_mp4, audio, folder / "reading.mp4")
    return clip, {p.text: p for p in truth}


@pytest.fixture(scope="module")
def reading_library(tmp_path_factory, reading):
    from app.services import Services
    from app.settings import load_settings

    lib = tmp_path_factory.mktemp("reading_lib")
    services = Services(load_settings(library=str(lib)))
    summary = services.index([str(reading[0])])
    assert summary.done, summary.describe()
    services.library.close()
    return lib


def _search(lib, query):
    from app.services import Services
    from app.settings import load_settings

    services = Services(load_settings(library=str(lib)))
    try:
        return services.search(query, k=5, modalities=["speech"])
    finally:
        services.library.close()


@pytest.mark.slow
@pytest.mark.parametrize("query,piece", [
    ("fail better", "Fail better."),
    ("try again", "Try again."),
    ("decided that the budget", "decided that the budget for the bridge would be cut in half."),
    ("after a long debate", "and after a long debate,"),
])
def test_a_phrase_search_lands_on_its_first_word(reading, reading_library, query, piece):
    truth = reading[1][piece]
    hits = _search(reading_library, query)
    assert hits, f"nothing found for {query!r}"
    first = hits[0]
    assert abs(first.start - truth.onset) <= 1.0, (query, first.start, truth.onset, first.text)
    assert first.start <= truth.onset + 0.5  # never after the word has begun in earnest
    assert first.end - first.start <= MAX_PHRASE_S + 1.0


@pytest.mark.slow
def test_speech_moments_are_phrases_with_their_words(reading_library):
    con = sqlite3.connect(reading_library / "library.db")
    rows = con.execute("SELECT start, end, text, words FROM moments WHERE modality='speech' ORDER BY start").fetchall()
    con.close()
    assert len(rows) >= 4  # nine spoken pieces; Whisper joins some at commas (each phrase still <= 6 s)
    for start, end, text, raw in rows:
        ws = json.loads(raw)
        assert ws and ws[0][0] == pytest.approx(start, abs=1e-3)
        assert end - start <= MAX_PHRASE_S + 1.0, text
        assert all(start - 1e-3 <= a <= b <= end + 1e-3 for a, b, _ in ws)


@pytest.mark.slow
def test_evidence_only_answer_quotes_the_phrase_at_its_word(reading, reading_library):
    from app.services import Services
    from app.settings import load_settings

    services = Services(load_settings(library=str(reading_library), vlm_model="none"))
    try:
        result = services.ask('when do they say "fail better"?')
    finally:
        services.library.close()
    truth = reading[1]["Fail better."]
    first = result.evidence[0]
    assert abs(first.start - truth.onset) <= 1.0
    assert "better" in result.answer.lower()
