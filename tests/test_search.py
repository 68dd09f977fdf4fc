"""storage.search: fusion, filters, overlap merging, bounded keyword search, errors (fake embedder: fast)."""

from __future__ import annotations

import numpy as np
import pytest

import storage.search as search_mod
import storage.vectors as vectors
from storage import Library, SightlineError
from storage.search import fuse, keyword_ranking, merge_overlapping, search
from tests.contracts import assert_moment
from tests.library_builder import add_video, fake_embed


@pytest.fixture
def lib(tmp_path):
    lib = Library.open(tmp_path / "lib")
    (tmp_path / "lib" / "thumbnails" / "000001").mkdir(parents=True)
    (tmp_path / "lib" / "thumbnails" / "000001" / "a.jpg").write_bytes(b"\xff\xd8jpeg")
    add_video(lib, "/videos/street.mp4", 30.0, [
        (0.0, 4.0, "speech", "the red car stops at the bridge"),
        (5.0, 8.0, "text", "THANKS FOR WATCHING", "thumbnails/000001/a.jpg"),
        (6.0, 9.0, "text", "Thanks for watching!"),  # the same card seen by a second stage
        (6.5, 7.5, "text", "subscribe"),  # another text on the same screen
        (20.0, 24.0, "speech", "a dog runs along the river"),
    ])
    add_video(lib, "/videos/park.mp4", 60.0, [
        (1.0, 3.0, "speech", "thanks for watching the park video"),
        (10.0, 12.0, "caption", "a red kite over the park"),
    ])
    yield lib
    lib.close()


def test_hits_follow_the_moment_contract_with_absolute_thumbnails(lib):
    hits = search(lib, "thanks for watching", fake_embed, k=10)
    durations = {"/videos/street.mp4": 30.0, "/videos/park.mp4": 60.0}
    for h in hits:
        assert_moment(h.to_dict(), duration=durations[h.video])
    card = next(h for h in hits if h.modality == "text")
    assert card.thumbnail and card.thumbnail.startswith(str(lib.folder)) and card.thumbnail.endswith("a.jpg")
    assert "verified" not in card.to_dict()


def test_scores_are_normalised_rrf(lib):
    hits = search(lib, "red car bridge", fake_embed, k=10)
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True) and all(0 < s <= 1 for s in scores)
    assert hits[0].text.startswith("the red car") and hits[0].score == 1.0  # first in both retrievers
    assert hits[0].sources["keyword"] == 1 and hits[0].sources["text"] == 1


def test_fuse_scale_and_order():
    fused = fuse({"a": [(1, 9.0), (2, 5.0)], "b": [2, 1, 3]})
    assert [m for m, _, _ in fused] == [1, 2, 3]  # 1 and 2 tie on rank sums; ties break by id
    assert fused[0][1] == pytest.approx((1 / 61 + 1 / 62) / (2 / 61))
    assert fused[2][1] == pytest.approx((1 / 63) / (2 / 61))
    assert fused[0][2] == {"a": 1, "a_score": 9.0, "b": 2}
    assert fuse({"a": [7]})[0][1] == 1.0


def test_overlapping_hits_of_one_video_and_modality_are_merged(lib):
    hits = search(lib, "thanks for watching", fake_embed, k=10)
    street_text = [h for h in hits if h.video == "/videos/street.mp4" and h.modality == "text"]
    assert len(street_text) == 1, [h.to_dict() for h in hits]
    card = street_text[0]
    assert (card.start, card.end) == (5.0, 9.0)  # same text: the union of both sightings
    assert len(card.sources["merged"]) >= 1
    # the park video's speech is a different video: kept
    assert any(h.video == "/videos/park.mp4" and h.modality == "speech" for h in hits)


def test_merge_rules():
    from storage.search import MomentHit

    def hit(i, video, start, end, modality="text", text="x"):
        return MomentHit(i, video, f"/v{video}", start, end, modality, text, 1.0 - i / 10)

    merged = merge_overlapping([
        hit(1, 1, 5, 8, text="Exit"), hit(2, 1, 8.2, 9, text="EXIT"),  # same text across a small gap: joined
        hit(3, 1, 6, 7, text="other"),  # overlaps, other text: folded in, span kept
        hit(4, 1, 6, 7, modality="speech"),  # other modality: kept
        hit(5, 2, 5, 8, text="Exit"),  # other video: kept
        hit(6, 1, 20, 21, text="Exit"),  # far away: kept
    ])
    assert [h.moment_id for h in merged] == [1, 4, 5, 6]
    assert (merged[0].start, merged[0].end) == (5, 9) and merged[0].sources["merged"] == [2, 3]


def test_filters_by_modality_and_video(lib):
    street = lib.video_by_ref("street.mp4").id
    hits = search(lib, "red", fake_embed, k=10, modalities=["caption"])
    assert [h.text for h in hits] == ["a red kite over the park"]
    hits = search(lib, "thanks for watching", fake_embed, k=10, video_ids=[street])
    assert hits and all(h.video_id == street for h in hits)
    hits = search(lib, "red", fake_embed, k=10, modalities=["speech", "caption"], video_ids=[street])
    assert hits and all(h.video_id == street and h.modality == "speech" for h in hits)


def test_filters_stay_exact_on_a_big_ivf_library(tmp_path, monkeypatch):
    """A filtered video whose moments are far from the query still returns k of its own moments."""
    monkeypatch.setattr(vectors, "EXACT_LIMIT", 200)
    monkeypatch.setattr(vectors, "IVF_NPROBE", 1)
    monkeypatch.setattr(search_mod, "MIN_TEXT_SIMILARITY", -1.0)  # every vector counts: this tests the filter
    lib = Library.open(tmp_path / "lib")
    try:
        rng = np.random.default_rng(0)
        words = "red car bridge river dog train station crowd music".split()
        for v in range(6):
            add_video(lib, f"/videos/v{v}.mp4", 1000.0, [
                (2.0 * j, 2.0 * j + 1, "speech", " ".join(rng.choice(words, 3)) + f" n{j}") for j in range(150)])
        lonely, _ = add_video(lib, "/videos/quiet.mp4", 100.0, [
            (2.0 * j, 2.0 * j + 1, "text", f"zzz{j} qqq{j}") for j in range(12)])
        assert vectors.is_ivf(lib.vectors("text").index)
        hits = search(lib, "red car bridge", fake_embed, k=5, video_ids=[lonely])
        assert len(hits) == 5 and all(h.video_id == lonely for h in hits)
        hits = search(lib, "red car bridge", fake_embed, k=5, modalities=["text"])
        assert len(hits) == 5 and all(h.modality == "text" for h in hits)
    finally:
        lib.close()


def test_keyword_search_is_bounded_for_common_words(lib, monkeypatch):
    monkeypatch.setattr(search_mod, "FTS_TERM_CAP", 2)  # "the" (4 moments) is now a common word
    ranked = keyword_ranking(lib, "the river", 10)
    with lib.read() as s:
        texts = dict(s.execute(search_mod.select(search_mod.Moment.id, search_mod.Moment.text)).all())
    assert [texts[i] for i, _ in ranked] == ["a dog runs along the river"]  # ranked on the rare word only
    ranked = keyword_ranking(lib, "the", 3)  # only common words: the newest matches, unranked
    the_ids = sorted((i for i, t in texts.items() if "the" in t.lower().split()), reverse=True)
    assert ranked == [(i, None) for i in the_ids[:3]]
    subset = np.asarray(the_ids[:2])  # compact ids: the FTS5 scan is narrowed to their range
    assert [i for i, _ in keyword_ranking(lib, "the", 10, subset=subset)] == the_ids[:2]
    subset = np.asarray([the_ids[0], the_ids[-1]])  # spread ids: matches are checked against a bitmap
    assert [i for i, _ in keyword_ranking(lib, "the", 10, subset=subset)] == [the_ids[0], the_ids[-1]]
    ranked = keyword_ranking(lib, "the river", 10, subset=np.asarray([the_ids[-1]]))  # the rare word is elsewhere
    assert ranked == []
    assert keyword_ranking(lib, "nothingmatches", 10) == []
    assert keyword_ranking(lib, '"; DROP TABLE moments; --', 10) == []  # words are quoted for FTS5


def test_porter_stemming_matches_word_forms(lib):
    ranked = keyword_ranking(lib, "stopping", 5)
    assert len(ranked) == 1  # "stops" and "stopping" share the stem


@pytest.mark.parametrize("query,kwargs,message", [
    ("", {}, "empty"),
    ("   ", {}, "empty"),
    ("x" * 3000, {}, "limit is"),
    ("car", {"modalities": ["smell"]}, "Unknown modality"),
    ("car", {"k": 0}, "k must be"),
])
def test_bad_requests_are_clear_errors(lib, query, kwargs, message):
    with pytest.raises(SightlineError, match=message):
        search(lib, query, fake_embed, **kwargs)


def test_search_without_an_embedder_is_keyword_only(lib):
    hits = search(lib, "dog", None)
    assert [h.text for h in hits] == ["a dog runs along the river"] and hits[0].score == 1.0


def test_deleted_moments_do_not_come_back(lib):
    from sqlalchemy import delete

    from storage.models import Moment

    hits = search(lib, "kite", fake_embed)
    gone = hits[0].moment_id
    lib.write(lambda s: s.execute(delete(Moment).where(Moment.id == gone)))  # FAISS not told (a crash)
    assert gone not in [h.moment_id for h in search(lib, "kite", fake_embed)]
