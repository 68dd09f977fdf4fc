"""Video windows -> frames with PTS timestamps -> model inputs through the real Qwen3-VL processor.

`sample_clip` decodes a window of a file at a given fps (decord, PyAV as fallback), with every frame's time taken
from the stream's PTS as content time (0 is the first frame a player shows; `VideoClock`), frames upright as a
player shows them, the window snapped into [0, duration], and a per-frame and total pixel budget plus a frame
cap so a long window cannot run the GPU out of memory. `build_inputs` hands the frames to `Qwen3VLProcessor`
(do_sample_frames=False) with metadata that makes the processor's `<t seconds>` stamps equal the mean PTS of each
frame pair. The processor computes stamps as frames_indices / fps; we pass fps = 1e6 and the PTS in microseconds
as the "indices", so variable-frame-rate files get true times, not index/average-fps guesses.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

from storage.errors import SightlineError

FACTOR = 32  # Qwen3-VL: patch 16 x spatial merge 2 -> one LLM token per 32x32 pixels per frame pair
TEMPORAL_PATCH = 2
STAMP_FPS = 1_000_000.0  # "fps" handed to the processor: frames_indices are PTS in microseconds

DEFAULT_FPS = 2.0
DEFAULT_MAX_FRAMES = 128
DEFAULT_MAX_PIXELS = 256 * 32 * 32  # per frame: 256 tokens per frame pair (InternVideo3's eval setting)
DEFAULT_TOTAL_PIXELS = 16384 * 32 * 32 * 2  # all frames: about 16K video tokens
MIN_FRAME_PIXELS = 4 * 32 * 32  # below 64x64 a frame says nothing; fewer frames instead


@dataclass
class Clip:
    """Frames of one window of one video, upright; timestamps are content seconds, from PTS."""

    video_id: int | None
    path: str
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    timestamps: list[float]
    start: float = 0.0  # the window actually sampled, after snapping into [0, duration]
    end: float = 0.0
    duration: float = 0.0  # content seconds of the whole video stream
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        assert self.frames.ndim == 4 and self.frames.shape[-1] == 3, f"frames must be (T,H,W,3), got {self.frames.shape}"
        assert len(self.timestamps) == len(self.frames), (
            f"frames {len(self.frames)} vs timestamps {len(self.timestamps)}"
        )


def frame_size(height: int, width: int, max_pixels: int, factor: int = FACTOR) -> tuple[int, int]:
    """(h, w), multiples of factor, aspect kept, h*w <= max_pixels (and never below one factor square)."""
    scale = min(1.0, math.sqrt(max_pixels / float(height * width)))
    h = max(factor, int(height * scale // factor) * factor)
    w = max(factor, int(width * scale // factor) * factor)
    while h * w > max_pixels and (h > factor or w > factor):
        if h >= w:
            h -= factor
        else:
            w -= factor
    return h, w


def plan_sampling(
    start: float, end: float, duration: float, fps: float, max_frames: int, max_pixels: int, total_pixels: int
) -> tuple[float, float, np.ndarray, int]:
    """(start, end) snapped into [0, duration], target times, and the per-frame pixel budget."""
    if fps <= 0:
        raise SightlineError(f"fps must be positive, got {fps}.", hint="Use e.g. fps=2.")
    start = min(max(0.0, float(start)), duration)
    end = min(max(start, float(end)), duration)
    cap = max(1, min(max_frames, total_pixels // MIN_FRAME_PIXELS))
    n = max(1, int(math.ceil((end - start) * fps - 1e-9)))
    if n > cap:
        n = cap
        step = (end - start) / n
    else:
        step = 1.0 / fps
    times = start + step * np.arange(n)
    per_frame = int(min(max_pixels, total_pixels // n))
    return start, end, times, per_frame


def _pick(starts: np.ndarray, times: np.ndarray) -> list[int]:
    """Index of the frame on screen at each time (last frame whose PTS <= t), without repeats."""
    idx = np.clip(np.searchsorted(starts, times + 1e-6, side="right") - 1, 0, len(starts) - 1)
    out: list[int] = []
    for i in idx.tolist():
        if not out or i != out[-1]:
            out.append(i)
    return out


@dataclass(frozen=True)
class VideoClock:
    """How a file's PTS become content time and its pixels become upright (the rule of indexer/media.py, kept
    here because the engine does not import the indexer; tests/test_media_clock.py proves the two agree):
    content t = PTS - start, where start is the video stream's first frame (after the edit list), and frames
    are turned `rotation` degrees clockwise, as a player shows them."""

    start: float  # PTS seconds of the video's first frame
    duration: float  # content seconds to the end of the video stream
    rotation: int  # degrees clockwise a player turns the stored pixels: 0, 90, 180, 270
    width: int  # displayed size (rotation applied)
    height: int
    container: str  # the demuxer's first name: "mov", "matroska", "mpegts", "avi", ...


# decord 0.6.0 subtracts the video's start time and turns frames upright itself, but it mis-seeks MPEG-TS (frames
# lag their times by about the start offset) and lists an MP4 edit list's lead-in as frames with negative times;
# other containers go to PyAV, as in indexer/media.py.
DECORD_CONTAINERS = ("mov", "matroska", "avi")


def video_clock(path: str | Path) -> VideoClock:
    """The file's clock and orientation (PyAV; cached while the file is unchanged)."""
    st = Path(path).stat()
    return _video_clock(str(path), st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=64)
def _video_clock(path: str, mtime_ns: int, size: int) -> VideoClock:
    import av

    with av.open(path) as c:
        stream = c.streams.video[0]
        tb = stream.time_base
        if stream.start_time is not None:
            start = float(stream.start_time * tb)
        else:
            start = c.start_time / 1e6 if c.start_time is not None else 0.0
        first = next(c.decode(stream), None)  # PyAV shows the display matrix on frames (counter-clockwise)
        rotation = int(round(-float(getattr(first, "rotation", 0) or 0) / 90.0)) * 90 % 360
        if stream.duration:
            end = start + float(stream.duration * tb)
        else:  # Matroska/WebM state no stream duration: the end of the last packet
            end = _last_video_packet_end(c, stream)
        if end <= start and c.duration:  # no timed packets (raw streams): the file's own length
            end = start + c.duration / 1e6
        w, h = stream.codec_context.width, stream.codec_context.height
        container = c.format.name.split(",")[0]
    if rotation in (90, 270):
        w, h = h, w
    return VideoClock(start, max(0.0, end - start), rotation, w, h, container)


def _last_video_packet_end(c, stream) -> float:
    end = 0.0
    c.seek((c.start_time or 0) + (c.duration or 0) + 1_000_000, backward=True, any_frame=False)  # past any end
    for packet in c.demux(stream):
        if packet.pts is not None:
            end = max(end, float((packet.pts + (packet.duration or 0)) * packet.time_base))
    return end


def upright(frames: np.ndarray, rotation: int) -> np.ndarray:
    """(T, H, W, 3) stored frames turned `rotation` degrees clockwise (np.rot90 turns counter-clockwise)."""
    if not rotation:
        return frames
    return np.ascontiguousarray(np.rot90(frames, k=-(rotation // 90), axes=(1, 2)))


def _sample_decord(path: str, start, end, fps, max_frames, max_pixels, total_pixels):
    import decord

    clock = video_clock(path)
    if clock.container not in DECORD_CONTAINERS:
        raise RuntimeError(f"decord mis-seeks {clock.container}; PyAV reads it")
    start, end, times, per_frame = plan_sampling(start, end, clock.duration, fps, max_frames, max_pixels,
                                                 total_pixels)
    h, w = frame_size(clock.height, clock.width, per_frame)
    reader = decord.VideoReader(path, width=w, height=h, num_threads=1)  # upright at the displayed size
    n = len(reader)
    if n == 0:
        raise RuntimeError("no frames")
    ts = np.asarray(reader.get_frame_timestamp(np.arange(n)), dtype=np.float64)  # (n, 2): content start/end
    if ts[0, 0] < -1e-6:
        raise RuntimeError("an edit list's lead-in is listed as frames (negative times); PyAV reads this file")
    indices = _pick(ts[:, 0], times)
    frames = reader.get_batch(indices).asnumpy()
    return frames, [float(ts[i, 0]) for i in indices], start, end, clock.duration, "decord"


SEEK_BACK = (0.0, 1.0, 4.0, 16.0, 64.0)  # seconds before the target to seek to, tried in turn


def _decode_from(container, stream, t0: float, clock: VideoClock):
    """(content t, frame) from the last frame at or before content time t0 on; frames before content 0 (an edit
    list's lead-in) are left out. Seeks land on the file's own clock (content time + the first frame's PTS),
    and where a demuxer lands past the target (MPEG-TS seeks are approximate: measured 2 s late on the mpegts
    variant of tests/media_variants.py) it seeks again, further back."""
    tb = float(stream.time_base)
    for back in SEEK_BACK + (None,):
        target = clock.start if back is None else clock.start + max(0.0, t0 - back)
        container.seek(max(0, int(target / tb)), stream=stream, backward=True)
        frames = container.decode(stream)
        for frame in frames:
            pts = float(frame.pts * tb) if frame.pts is not None else frame.time
            if pts is not None:
                break
        else:
            continue  # nothing decodable after this seek point
        if pts - clock.start > t0 + 1e-6 and back is not None and target > clock.start:
            continue  # landed past the target: seek further back
        for frame in itertools.chain([frame], frames):
            pts = float(frame.pts * tb) if frame.pts is not None else frame.time
            if pts is not None and pts - clock.start >= -1e-6:
                yield max(0.0, pts - clock.start), frame
        return


def _sample_pyav(path: str, start, end, fps, max_frames, max_pixels, total_pixels):
    import av

    clock = video_clock(path)
    start, end, times, per_frame = plan_sampling(start, end, clock.duration, fps, max_frames, max_pixels,
                                                 total_pixels)
    h, w = frame_size(clock.height, clock.width, per_frame)  # upright size
    sw, sh = (h, w) if clock.rotation in (90, 270) else (w, h)  # the stored pixels are scaled before turning
    with av.open(path) as container:
        stream = container.streams.video[0]
        frames, stamps, prev = [], [], None
        k = 0
        for t, frame in _decode_from(container, stream, float(times[0]), clock):
            while k < len(times) and t > times[k] + 1e-6:
                if prev is not None and (not stamps or stamps[-1] != prev[0]):
                    stamps.append(prev[0])
                    frames.append(prev[1].to_ndarray(format="rgb24", width=sw, height=sh))
                k += 1
            if k >= len(times):
                break
            prev = (t, frame)
        if k < len(times) and prev is not None and (not stamps or stamps[-1] != prev[0]):
            stamps.append(prev[0])  # the window runs to the end of the file
            frames.append(prev[1].to_ndarray(format="rgb24", width=sw, height=sh))
    if not frames:
        raise RuntimeError("no frames decoded in the window")
    return upright(np.stack(frames), clock.rotation), stamps, start, end, clock.duration, "pyav"


def sample_clip(
    path: str | Path,
    start: float,
    end: float,
    fps: float = DEFAULT_FPS,
    max_frames: int = DEFAULT_MAX_FRAMES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    total_pixels: int = DEFAULT_TOTAL_PIXELS,
    video_id: int | None = None,
) -> Clip:
    """Frames of [start, end] (content seconds) at fps (fewer when max_frames or total_pixels say so), upright,
    times from PTS on the content clock (`VideoClock`).

    Frames are decoded straight at a size whose sides are multiples of 32 with h*w <= max_pixels and
    frames*h*w <= total_pixels, so the processor needs no further resize.
    """
    path = str(path)
    if not Path(path).is_file():
        raise SightlineError(f"{path}: no such video file.", hint="Check the path or re-index the library.")
    errors = []
    for sampler in (_sample_decord, _sample_pyav):
        try:
            frames, stamps, s, e, duration, backend = sampler(
                path, start, end, fps, max_frames, max_pixels, total_pixels
            )
            return Clip(video_id, path, frames, stamps, s, e, duration, {"backend": backend, "fps": fps})
        except SightlineError:
            raise
        except Exception as err:  # noqa: BLE001 - try the next decoder, report both
            errors.append(f"{sampler.__name__[8:]}: {type(err).__name__}: {err}")
    raise SightlineError(
        f"{Path(path).name}: cannot decode video frames ({'; '.join(errors)}).",
        hint="Re-encode it with ffmpeg (ffmpeg -i in.mkv -c:v libx264 out.mp4) or remove it from the library.",
    )


# --- frames -> processor ---------------------------------------------------------------------------------------


def even_frames(clip: Clip) -> tuple[np.ndarray, list[float]]:
    """Frames and times padded to a multiple of the temporal patch (repeat the last), as the processor does."""
    frames, times = clip.frames, list(clip.timestamps)
    pad = -len(frames) % TEMPORAL_PATCH
    if pad:
        frames = np.concatenate([frames, np.repeat(frames[-1:], pad, axis=0)])
        times += [times[-1]] * pad
    return frames, times


def pair_stamps(times: Sequence[float]) -> list[float]:
    """The `<t seconds>` value of each temporal patch: the mean time of its frames (Qwen3-VL's rule)."""
    times = list(times) + [times[-1]] * (-len(times) % TEMPORAL_PATCH)
    return [(times[i] + times[i + TEMPORAL_PATCH - 1]) / 2 for i in range(0, len(times), TEMPORAL_PATCH)]


def video_metadata(clip: Clip, times: Sequence[float] | None = None):
    """VideoMetadata whose frames_indices / fps are the frames' PTS (so the prompt's stamps are PTS-true)."""
    from transformers.video_utils import VideoMetadata

    times = list(clip.timestamps if times is None else times)
    h, w = clip.frames.shape[1:3]
    return VideoMetadata(
        total_num_frames=len(times),
        fps=STAMP_FPS,
        width=w,
        height=h,
        duration=clip.duration or None,
        video_backend=clip.meta.get("backend"),
        frames_indices=[int(round(t * STAMP_FPS)) for t in times],
    )


def build_inputs(processor, texts: list[str], clips_per_text: list[Sequence[Clip]], total_pixels: int | None = None):
    """Tokenize prompts holding one video placeholder per clip; frames go through the real processor.

    `texts` come from the chat template (each `<|vision_start|><|video_pad|><|vision_end|>` is replaced by the
    processor with per-pair `<t seconds>` blocks). Returns the processor's BatchFeature (pt tensors).
    """
    videos, metas = [], []
    for clips in clips_per_text:
        for clip in clips:
            frames, times = even_frames(clip)
            videos.append(frames)
            metas.append(video_metadata(clip, times))
    kwargs = {}
    if videos:
        largest = max(v.shape[0] * v.shape[1] * v.shape[2] for v in videos)
        budget = max(largest, total_pixels or 0)
        # Frames are already at a 32-multiple size within budget; this size keeps smart_resize from changing them.
        kwargs = dict(
            videos=videos,
            video_metadata=metas,
            do_sample_frames=False,
            size={"shortest_edge": FACTOR * FACTOR * TEMPORAL_PATCH, "longest_edge": budget},
        )
    return processor(text=texts, return_tensors="pt", padding=True, **kwargs)
