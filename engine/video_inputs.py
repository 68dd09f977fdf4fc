"""Video windows -> frames with PTS timestamps -> model inputs through the real Qwen3-VL processor.

`sample_clip` decodes a window of a file at a given fps (decord, PyAV as fallback), with every frame's time taken
from the stream's PTS, the window snapped into [0, duration], and a per-frame and total pixel budget plus a frame
cap so a long window cannot run the GPU out of memory. `build_inputs` hands the frames to `Qwen3VLProcessor`
(do_sample_frames=False) with metadata that makes the processor's `<t seconds>` stamps equal the mean PTS of each
frame pair. The processor computes stamps as frames_indices / fps; we pass fps = 1e6 and the PTS in microseconds
as the "indices", so variable-frame-rate files get true times, not index/average-fps guesses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
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
    """Frames of one window of one video; timestamps are seconds from the file's start, from PTS."""

    video_id: int | None
    path: str
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    timestamps: list[float]
    start: float = 0.0  # the window actually sampled, after snapping into [0, duration]
    end: float = 0.0
    duration: float = 0.0  # of the whole file
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


def _sample_decord(path: str, start, end, fps, max_frames, max_pixels, total_pixels):
    import decord

    probe = decord.VideoReader(path, num_threads=1)
    n = len(probe)
    if n == 0:
        raise RuntimeError("no frames")
    ts = np.asarray(probe.get_frame_timestamp(np.arange(n)), dtype=np.float64)  # (n, 2) PTS start/end seconds
    height, width = probe[0].shape[:2]
    del probe
    duration = float(ts[-1, 1])
    start, end, times, per_frame = plan_sampling(start, end, duration, fps, max_frames, max_pixels, total_pixels)
    indices = _pick(ts[:, 0], times)
    h, w = frame_size(height, width, per_frame)
    reader = decord.VideoReader(path, width=w, height=h, num_threads=1)
    frames = reader.get_batch(indices).asnumpy()
    return frames, [float(ts[i, 0]) for i in indices], start, end, duration, "decord"


def _sample_pyav(path: str, start, end, fps, max_frames, max_pixels, total_pixels):
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        tb = float(stream.time_base)
        if stream.duration:
            duration = stream.duration * tb
        elif container.duration:
            duration = container.duration / 1e6
        else:
            raise RuntimeError("unknown duration")
        start, end, times, per_frame = plan_sampling(start, end, duration, fps, max_frames, max_pixels, total_pixels)
        h, w = frame_size(stream.height, stream.width, per_frame)
        container.seek(max(0, int(times[0] / tb)), stream=stream, backward=True)
        frames, stamps, prev = [], [], None
        k = 0
        for frame in container.decode(stream):
            t = float(frame.pts * tb) if frame.pts is not None else float(frame.time)
            while k < len(times) and t > times[k] + 1e-6:
                if prev is not None and (not stamps or stamps[-1] != prev[0]):
                    stamps.append(prev[0])
                    frames.append(prev[1].to_ndarray(format="rgb24", width=w, height=h))
                k += 1
            if k >= len(times):
                break
            prev = (t, frame)
        if k < len(times) and prev is not None and (not stamps or stamps[-1] != prev[0]):
            stamps.append(prev[0])  # the window runs to the end of the file
            frames.append(prev[1].to_ndarray(format="rgb24", width=w, height=h))
    if not frames:
        raise RuntimeError("no frames decoded in the window")
    return np.stack(frames), stamps, start, end, duration, "pyav"


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
    """Frames of [start, end] at fps (fewer when max_frames or total_pixels say so), times from PTS.

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
