"""Speech: the packaged Whisper tiny.en on real speech (gradio's cate_blanch.mp3), times checked against the audio."""

from __future__ import annotations

import time

import numpy as np
import pytest

from storage.errors import SightlineError
from tests.conftest import gradio_media

SR = 16000
LEAD = 2.5  # seconds of silence put before the speech
OFFSET = 100.0  # where the array starts in its (imaginary) video


def energy_onsets(audio: np.ndarray, frame: float = 0.01, rise: float = 0.2, gap: float = 0.5) -> list[float]:
    """Times where speech starts: a 10 ms frame's RMS rises above `rise` x the clip's loudest frame after at least
    `gap` seconds below it. The clip's hiss sits near 0.02 RMS and the voice peaks near 0.3, so 20 % of the peak
    separates them cleanly (the onsets printed by a failing assertion show what was found)."""
    n = int(SR * frame)
    rms = np.sqrt((audio[: len(audio) // n * n].reshape(-1, n) ** 2).mean(axis=1))
    loud = rms > rise * rms.max()
    onsets, quiet_since = [], 0
    for i, is_loud in enumerate(loud):
        if is_loud:
            if (i - quiet_since) * frame >= gap or not onsets:
                onsets.append(round(i * frame, 2))
            quiet_since = i + 1
    return onsets


@pytest.fixture(scope="session")
def speech_audio() -> np.ndarray:
    from faster_whisper import decode_audio

    return decode_audio(str(gradio_media("audio", "cate_blanch.mp3")), sampling_rate=SR)


@pytest.fixture(scope="session")
def transcriber():
    from indexer.models.speech import load_transcriber

    return load_transcriber("tiny.en", cpu_threads=2)


@pytest.fixture(scope="session")
def transcript(transcriber, speech_audio):
    audio = np.concatenate([np.zeros(int(LEAD * SR), np.float32), speech_audio, np.zeros(2 * SR, np.float32)])
    t0 = time.perf_counter()
    segments = transcriber.transcribe(audio, offset=OFFSET)
    seconds = time.perf_counter() - t0
    print(f"tiny.en: {len(audio) / SR:.1f} s audio in {seconds:.2f} s (realtime x{len(audio) / SR / seconds:.1f})")
    return audio, segments


def test_the_energy_onset_helper_finds_the_first_word(speech_audio):
    onsets = energy_onsets(speech_audio)
    # Listening and the waveform agree: hiss from 0.03 s, "I" from about 0.48 s, "If you..." after a pause.
    assert 0.3 < onsets[0] < 0.7, onsets
    assert len(onsets) >= 2, onsets


@pytest.mark.slow
def test_whisper_reads_the_words(transcript, transcriber):
    _audio, segments = transcript
    text = " ".join(s.text for s in segments).lower()
    assert "dagger" in text and "touch me" in text, text
    assert transcriber.language == "en"


@pytest.mark.slow
def test_segment_starts_are_within_half_a_second_of_speech_onsets(transcript, speech_audio):
    audio, segments = transcript
    onsets = [OFFSET + LEAD + t for t in energy_onsets(speech_audio)]
    first = segments[0]
    assert abs(first.start - onsets[0]) <= 0.5, (first, onsets)
    # The second sentence starts after a pause; word timestamps put it there (segment timestamps alone were ~0.7 s early).
    second = next(s for s in segments if s.text.lower().startswith("if you"))
    nearest = min(onsets, key=lambda o: abs(o - second.start))
    assert abs(second.start - nearest) <= 0.5, (second, onsets)
    for s in segments:
        assert OFFSET <= s.start <= s.end <= OFFSET + len(audio) / SR, s
    assert [s.start for s in segments] == sorted(s.start for s in segments)


@pytest.mark.slow
def test_silence_gives_no_segments_quickly(transcriber):
    t0 = time.perf_counter()
    assert transcriber.transcribe(np.zeros(30 * SR, np.float32), offset=5.0) == []
    assert time.perf_counter() - t0 < 5.0, "VAD should skip 30 s of silence without decoding"
    assert transcriber.transcribe(np.zeros(100, np.float32)) == []


def test_a_model_that_is_not_offline_says_how_to_get_it():
    from indexer.models.speech import load_transcriber

    with pytest.raises(SightlineError) as err:
        load_transcriber("large-v3")
    text = err.value.user_text()
    assert "'large-v3' is not available offline" in text
    assert "SIGHTLINE_WHISPER_MODEL" in text and "tiny.en" in text


def test_a_folder_that_is_not_a_whisper_model_is_named(tmp_path):
    from indexer.models.speech import load_transcriber

    with pytest.raises(SightlineError, match="no model.bin"):
        load_transcriber(str(tmp_path))
    with pytest.raises(SightlineError, match="does not exist"):
        load_transcriber(str(tmp_path / "missing"))
