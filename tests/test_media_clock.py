"""One clock and upright frames for every file (issue 9, item 3), on variants made the way users' files are made.

Every variant of tests/media_variants.py (MPEG-TS start ~1.4 s, MP4/MKV with a start offset, a -copyts remux, an
MP4 edit list, a delayed audio track, variable frame rate, rotations 90/180/270, AVI) against the plain MP4 it was
made from: the indexer's cached samples and `sample_clip` (decord and PyAV) return the same pictures as the
source at the same content times, the end card is read by RapidOCR upright at the same time, the speech lands at
the same time, and no variant is refused as truncated. The ground truth for times is ffprobe's own frame list.
"""

from __future__ import annotations

import shutil
import subprocess
from difflib import SequenceMatcher
from pathlib import Path

import numpy as np
import pytest

from tests.media_variants import VARIANTS, Variant, make_all

pytestmark = [pytest.mark.slow,  # builds 11 variants with ffmpeg (~12 s) before the first test
              pytest.mark.skipif(shutil.which("ffprobe") is None, reason="needs ffmpeg/ffprobe (the Makefile installs it)")]

KINDS = ("source", *VARIANTS)
SAMPLE_FPS = 2.0
SAMPLE_SIDE = 640
CARD = "THANKS FOR WATCHING"
WINDOW = (2.0, 4.0)  # the card is on screen: content seconds of the source
CHANGED = 40  # a pixel whose largest channel differs by more than this (0-255) shows something else
# Share of changed pixels (at 160x90) under which two frames show the same picture. The same frame measures
# 0.00-0.05% (JPEG, mpeg4 re-encode); the card turned 180 degrees measures ~3%, a sideways frame cannot match.
SAME_PICTURE = 0.005


@pytest.fixture(scope="session")
def made(tmp_path_factory) -> tuple[Path, dict[str, Variant]]:
    return make_all(tmp_path_factory.mktemp("media_variants"))


def variant(made, kind: str) -> Variant:
    src, variants = made
    return Variant(src, "source") if kind == "source" else variants[kind]


def small(image: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.resize(image, (160, 90), interpolation=cv2.INTER_AREA).astype(np.int16)


def changed_share(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, f"shapes differ: {a.shape} vs {b.shape} (a frame left sideways?)"
    return float((np.abs(a - b).max(axis=2) > CHANGED).mean())


@pytest.fixture(scope="session")
def source_frames(made) -> dict[float, np.ndarray]:
    """Every frame of the plain MP4 (it starts at PTS 0, no rotation), 160x90, by content time."""
    import av

    with av.open(str(made[0])) as c:
        return {float(f.time): small(f.to_ndarray(format="rgb24")) for f in c.decode(video=0)}


def source_at(frames: dict[float, np.ndarray], t: float) -> np.ndarray:
    near = min(frames, key=lambda s: abs(s - t))
    assert abs(near - t) < 1e-3, f"the source has no frame at {t:.4f} s (nearest {near:.4f} s)"
    return frames[near]


def ffprobe_pts(path: Path) -> np.ndarray:
    """PTS of every frame ffprobe decodes and shows (an edit list's lead-in is not shown): the ground truth."""
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "frame=pts_time",
                          "-of", "csv=p=0", str(path)], capture_output=True, text=True, check=True).stdout
    return np.array(sorted(float(x.strip(",")) for x in out.split() if x.strip(",") not in ("", "N/A")))


def ffprobe_content_pts(path: Path) -> np.ndarray:
    pts = ffprobe_pts(path)
    return pts - pts[0]


@pytest.fixture(scope="session")
def scanned(made, tmp_path_factory):
    """kind -> (MediaInfo, FrameIndex): probe + the indexer's decode pass, once per kind."""
    from indexer.frames import scan
    from indexer.media import probe

    root = tmp_path_factory.mktemp("clock_frames")
    done: dict[str, tuple] = {}

    def get(kind: str):
        if kind not in done:
            info = probe(variant(made, kind).path)
            done[kind] = info, scan(info, root / kind, SAMPLE_FPS, SAMPLE_SIDE)
        return done[kind]

    return get


# --- the clock ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_indexer_and_engine_read_one_clock(made, kind, monkeypatch):
    import indexer.media as media
    from engine.video_inputs import video_clock
    from indexer.media import probe

    v = variant(made, kind)
    info, clock = probe(v.path), video_clock(v.path)
    which = shutil.which
    monkeypatch.setattr(media.shutil, "which", lambda name: None if name == "ffprobe" else which(name))
    by_pyav = probe(v.path)  # where no ffprobe is installed
    monkeypatch.undo()
    for fact in ("start_time", "duration", "video_duration", "audio_start", "rotation", "width", "height"):
        assert getattr(by_pyav, fact) == pytest.approx(getattr(info, fact), abs=1e-3), fact
    plain = probe(made[0])
    assert info.start_time == pytest.approx(ffprobe_pts(v.path)[0], abs=1e-5), "start_time: the first frame shown"
    assert clock.start == pytest.approx(info.start_time, abs=1e-6)
    assert info.rotation == clock.rotation == v.rotation
    assert (info.width, info.height) == (clock.width, clock.height) == (640, 360)  # displayed, upright
    assert info.video_duration == pytest.approx(plain.video_duration + v.video_shift, abs=0.05)
    assert clock.duration == pytest.approx(info.video_duration, abs=0.02)
    audio_late = v.audio_shift - v.video_shift  # the source's audio and video both start at 0
    assert info.video_duration - 1e-6 <= info.duration <= info.video_duration + audio_late + 0.1
    assert info.audio_start == pytest.approx(audio_late, abs=0.05)  # AAC priming: ~-0.023 s in MPEG-TS


# --- (a) + (d): the same pictures at the same times, nothing refused as truncated ------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_indexer_samples_and_sample_clip_show_the_same_frames(made, scanned, source_frames, kind):
    import engine.video_inputs as vi
    from indexer.media import iter_frames

    v = variant(made, kind)
    info, index = scanned(kind)  # (d) a start offset is not a truncation: scan() raised nothing
    assert index.last_t >= info.video_duration - 0.1, (index.last_t, info.video_duration)
    truth = ffprobe_content_pts(v.path)

    def check(t: float, image: np.ndarray, who: str) -> None:
        assert np.abs(truth - t).min() < 1e-3, f"{who}: {t:.4f} s is not a frame's content time"
        share = changed_share(small(image), source_at(source_frames, t - v.video_shift))
        assert share < SAME_PICTURE, f"{who} at {t:.3f} s: {share:.1%} of the picture differs from the source"

    for s in index.samples:
        check(s.t, index.image(s), "cached sample")
    for backend in ("auto", "pyav"):
        frames = list(iter_frames(info, SAMPLE_FPS, SAMPLE_SIDE, backend=backend))
        assert frames and frames[0].t == pytest.approx(0.0, abs=1e-3)
        for f in frames[::3]:
            check(f.t, f.image, f"iter_frames[{backend}]")

    lo, hi = WINDOW[0] + v.video_shift, WINDOW[1] + v.video_shift
    in_window = [s.t for s in index.samples if lo - 1e-6 <= s.t < hi - 1e-6]
    for sampler in (vi._sample_decord, vi._sample_pyav):
        name = sampler.__name__[8:]
        if name == "decord" and kind in ("mpegts", "mp4_editlist"):
            with pytest.raises(RuntimeError):  # decord mis-reads these; sample_clip goes to PyAV
                sampler(str(v.path), lo, hi, SAMPLE_FPS, 64, 640 * 360, 10**9)
            continue
        frames, stamps, *_ = sampler(str(v.path), lo, hi, SAMPLE_FPS, 64, 640 * 360, 10**9)
        assert frames.shape[1:3] == (352, 640), f"{name}: {frames.shape} is not the upright 16:9 picture"
        for f, t in zip(frames, stamps):
            check(t, f, f"sample_clip[{name}]")
        if kind != "vfr":  # constant rate: the frame on screen at each step is the sample taken at that step ...
            # ... or, where that is a frame nothing refers to (a B-frame, which the decode pass skips:
            # indexer.media.SKIP_NONREF_BELOW_FPS), the sample is the next reference frame, a few frames later
            lags = [min((s - t for s in in_window if s >= t - 1e-6), default=9.0) for t in stamps]
            assert len(stamps) == len(in_window) and all(-1e-6 <= lag < 0.1 for lag in lags), (
                f"{name}: clip {stamps} vs samples {in_window}")
    clip = vi.sample_clip(v.path, lo, hi, fps=SAMPLE_FPS, max_pixels=640 * 360)
    assert clip.meta["backend"] == ("pyav" if kind in ("mpegts", "mp4_editlist") else "decord")
    assert 0.0 <= clip.timestamps[0] and clip.timestamps[-1] <= clip.duration


# --- (b) on-screen text, read upright at the same time -------------------------------------------------------


def reads_card(reader, image: np.ndarray) -> bool:
    text = " ".join(t for t, _ in reader.read(image)).upper()
    return SequenceMatcher(None, text, CARD).ratio() >= 0.8  # "THANKS FOK WATCHING" while the letters move in


def first_card_sample(reader, index, around: float) -> float:
    """The first cached sample within a second of `around` whose OCR reads the card (the one before must not)."""
    samples = [s for s in index.samples if around - 1.0 - 1e-6 <= s.t <= around + 1.0 + 1e-6]
    for i, s in enumerate(samples):
        if reads_card(reader, index.image(s)):
            assert i > 0, f"the card is read already at {s.t:.3f} s, a second before {around:.3f} s"
            return s.t
    raise AssertionError(f"the card is not read between {around - 1:.3f} and {around + 1:.3f} s: "
                         f"{[s.t for s in samples]}")


@pytest.fixture(scope="session")
def ocr():
    from indexer.models.ocr import load_ocr

    return load_ocr()


@pytest.fixture(scope="session")
def card_in_source(scanned, ocr) -> float:
    return first_card_sample(ocr, scanned("source")[1], 2.0)


@pytest.mark.parametrize("kind", VARIANTS)
def test_on_screen_text_is_read_upright_at_the_same_time(made, scanned, ocr, card_in_source, kind):
    v = variant(made, kind)
    expected = card_in_source + v.video_shift
    got = first_card_sample(ocr, scanned(kind)[1], expected)
    assert abs(got - expected) <= 1 / SAMPLE_FPS + 1e-3, f"card read from {got:.3f} s, expected {expected:.3f} s"


# --- (c) speech at the same time ----------------------------------------------------------------------------------


def speech_onset(info) -> float:
    """Content time where the speech starts: the first 10 ms whose RMS passes a tenth of the loudest."""
    from indexer.audio import SAMPLE_RATE, load_audio

    offset, audio = load_audio(info)
    w = SAMPLE_RATE // 100
    rms = np.sqrt((audio[: len(audio) // w * w].reshape(-1, w) ** 2).mean(axis=1))
    return offset + int(np.argmax(rms > 0.1 * rms.max())) * w / SAMPLE_RATE


@pytest.fixture(scope="session")
def speech_in_source(made) -> float:
    from indexer.media import probe
    from tests.media_variants import SPEECH_AT

    onset = speech_onset(probe(made[0]))
    assert onset == pytest.approx(SPEECH_AT, abs=0.2)  # heath_ledger.mp3 opens with ~40 ms of quiet
    return onset


@pytest.mark.parametrize("kind", VARIANTS)
def test_speech_lands_at_the_same_time(made, speech_in_source, kind):
    from indexer.audio import iter_audio
    from indexer.media import probe

    v = variant(made, kind)
    info = probe(v.path)
    assert speech_onset(info) == pytest.approx(speech_in_source + v.audio_shift, abs=0.1)
    assert next(iter_audio(info))[0] >= 0.0  # nothing before the first frame (AAC priming in MPEG-TS is cut)


# --- end to end: a rotated phone clip and an MPEG-TS capture index on the plain MP4's clock ----------------------


@pytest.fixture(scope="session")
def indexed(made, tmp_path_factory) -> Path:
    from click.testing import CliRunner

    from app.cli import cli

    lib = tmp_path_factory.mktemp("clock_lib") / "lib"
    paths = [str(variant(made, k).path) for k in ("rot90", "mpegts")]
    result = CliRunner().invoke(cli, ["--library", str(lib), "index", *paths], catch_exceptions=False)
    assert result.exit_code == 0 and "0 failed" in result.output, result.output
    return lib


def test_a_rotated_clip_is_indexed_upright_on_the_same_clock(indexed, ocr, card_in_source, speech_in_source):
    import sqlite3

    import cv2

    from indexer.context import IndexOptions

    db = sqlite3.connect(indexed / "library.db")
    videos = {Path(p).stem: (vid, w, h, rot) for vid, p, w, h, rot in
              db.execute("SELECT id, path, width, height, rotation FROM videos")}
    assert {k: v[1:] for k, v in videos.items()} == {"rot90": (640, 360, 90), "mpegts": (640, 360, 0)}
    first = {}
    for kind, (vid, *_) in videos.items():
        rows = db.execute("SELECT modality, start, thumbnail FROM moments WHERE video_id = ? "
                          "AND modality IN ('text', 'speech') ORDER BY start DESC", (vid,)).fetchall()
        first[kind] = {mod: (start, thumb) for mod, start, thumb in rows}  # the earliest of each
    db.close()
    step = 1 / IndexOptions().sample_fps
    for kind in ("rot90", "mpegts"):
        assert first[kind]["text"][0] == pytest.approx(card_in_source, abs=step + 1e-3), kind
        # the first word's start (Whisper) vs the sound's onset: the same within a few tenths
        assert first[kind]["speech"][0] == pytest.approx(speech_in_source, abs=0.5), kind
    assert first["rot90"]["speech"][0] == pytest.approx(first["mpegts"]["speech"][0], abs=0.1)
    for mod in ("text", "speech"):
        thumb = cv2.cvtColor(cv2.imread(str(indexed / first["rot90"][mod][1])), cv2.COLOR_BGR2RGB)
        assert thumb.shape[1] > thumb.shape[0], f"{mod} thumbnail {thumb.shape} is not landscape"
        if mod == "speech":  # the card is fully on screen by then (the text moment's frame may be mid-animation)
            big = cv2.resize(thumb, (640, 360), interpolation=cv2.INTER_CUBIC)
            assert reads_card(ocr, big), ocr.read(big)
