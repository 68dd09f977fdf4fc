"""One decode pass per video: shot cuts (PySceneDetect on tiny frames) and sampled frames cached as JPEGs.

Shots, visual moments, on-screen text and thumbnails all need frames; decoding a long video is the costliest
thing the indexer does, so it happens once. The pass streams: a tiny copy of (nearly) every frame goes to the
scene detector and is dropped, and a larger copy of a frame every 1/sample_fps seconds (and just after every
cut, so each shot has a keyframe) is written to the library's cache folder. Stages read the samples back one
at a time, so memory stays flat whatever the length. `index.json` is written last: a scan killed half-way is
redone, never half-used.

A stage that reads samples in time order (on-screen text) need not wait for the whole pass: `follow(video, ctx)`
yields each sample as soon as it is on disk, through the video's `SampleFeed`, so OCR runs beside the decoding.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from indexer.context import UpstreamFailed
from indexer.media import MediaInfo, next_step, scan_frames, stored_fit, upright
from storage.errors import SightlineError

SHOT_SIDE = 128  # scene detection works on frames this small; cuts are large changes
SHOT_STEP = 0.0  # seconds between frames the detector sees: every decoded frame (non-reference frames are
# already skipped by the decoder; skipping more widens the gaps and motion starts to read as cuts)
SHOT_MIN_LEN = 0.6  # seconds; PySceneDetect's flash filter
KEY_DELAY = 0.2  # a shot's keyframe is taken this long after its cut (skips transition frames)
JPEG_QUALITY = 88


@dataclass(frozen=True)
class Sample:
    t: float  # content seconds (PTS - the video's start time; indexer.media)
    file: str  # JPEG name inside the cache folder; the frame upright, as a player shows it
    key: bool  # first sample of a shot


@dataclass
class FrameIndex:
    folder: Path
    samples: list[Sample]
    cuts: list[float]  # shot starts after 0.0, seconds
    last_t: float  # content time of the last decoded frame

    def image(self, sample: Sample) -> np.ndarray:
        """The sample's frame, RGB uint8."""
        return read_sample(self.folder, sample)

    def shots(self, duration: float) -> list[tuple[float, float]]:
        bounds = [0.0, *[c for c in self.cuts if 0.0 < c < duration], duration]
        return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def read_sample(folder: Path, sample: Sample) -> np.ndarray:
    """A cached sample's frame, RGB uint8, contiguous (a `[:, :, ::-1]` view costs every OpenCV call after it
    a 5 ms copy at 960 px; the conversion here costs 0.2 ms)."""
    import cv2

    bgr = cv2.imread(str(Path(folder) / sample.file), cv2.IMREAD_COLOR)
    if bgr is None:
        raise SightlineError(f"Cached frame {sample.file} is unreadable.", hint="Index the video again.")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class SampleFeed:
    """The samples of a decode pass that is running now, readable in order while it runs (any number of readers).

    The pass `put`s each sample once its JPEG is written and `finish`es (or `fail`s) at the end; a reader blocks
    until the next sample or the end. Samples are small records, so the feed keeps them all.
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._samples: list[Sample] = []
        self._ended = False
        self._error: str | None = None
        self._cond = threading.Condition()

    def put(self, sample: Sample) -> None:
        with self._cond:
            self._samples.append(sample)
            self._cond.notify_all()

    def finish(self, samples: list[Sample]) -> None:
        """The pass is done; `samples` is its whole list (a cached index hands over everything at once)."""
        with self._cond:
            if not self._ended:
                self._samples, self._ended = list(samples), True
                self._cond.notify_all()

    def fail(self, error: str) -> None:
        """The pass failed: readers raise UpstreamFailed (a no-op once the pass finished)."""
        with self._cond:
            if not self._ended:
                self._error, self._ended = error, True
                self._cond.notify_all()

    def cancel(self, error: str) -> None:
        """The run was stopped: readers raise UpstreamFailed at their next sample, even after the pass finished."""
        with self._cond:
            self._error, self._ended = error, True
            self._cond.notify_all()

    def image(self, sample: Sample) -> np.ndarray:
        return read_sample(self.folder, sample)

    def __iter__(self) -> Iterator[Sample]:
        i = 0
        while True:
            with self._cond:
                self._cond.wait_for(lambda: len(self._samples) > i or self._ended)
                if self._error is not None:
                    raise UpstreamFailed(f"the decode pass failed: {self._error}")
                if len(self._samples) <= i:
                    return
                sample = self._samples[i]
            yield sample
            i += 1


def cache_folder(cache_dir: Path, video_id: int, fingerprint: str) -> Path:
    tag = fingerprint.split(":")[-1][:10]
    return Path(cache_dir) / "frames" / f"{video_id:06d}-{tag}"


def load_index(folder: Path) -> FrameIndex | None:
    meta = folder / "index.json"
    if not meta.exists():
        return None
    try:
        data = json.loads(meta.read_text())
        samples = [Sample(float(t), f, bool(k)) for t, f, k in data["samples"]]
        if not all((folder / s.file).exists() for s in samples):
            return None
        return FrameIndex(folder, samples, [float(c) for c in data["cuts"]], float(data["last_t"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def scan(info: MediaInfo, folder: Path, sample_fps: float, sample_side: int,
         on_time=None, feed: SampleFeed | None = None) -> FrameIndex:
    """Decode the video once: detect cuts, cache samples (each also `put` on `feed`). Returns the index (also
    saved to folder)."""
    import cv2
    from av.video.reformatter import VideoReformatter
    from scenedetect.common import FrameTimecode, Timecode
    from scenedetect.detectors import ContentDetector

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    small = stored_fit(info, SHOT_SIDE)  # the detector does not mind sideways frames: no turning them
    big = stored_fit(info, sample_side)  # samples are turned upright after scaling (OCR, thumbnails, embeddings)
    rate = Fraction(info.fps).limit_denominator(1001) if info.fps > 0 else Fraction(25)
    detector = ContentDetector(min_scene_len=SHOT_MIN_LEN)
    # One scaler per size for the whole pass: `frame.to_ndarray(width=...)` sets up a new swscale context for
    # every frame (measured on the 5-minute 720p benchmark clip: the scan's CPU time 27.4 s -> 24.7 s).
    to_small, to_big = VideoReformatter(), VideoReformatter()
    samples: list[Sample] = []
    cuts: list[float] = []
    next_sample, next_shot, last_t, key_pending = 0.0, 0.0, -1.0, True
    for t, frame in scan_frames(info):
        if t < last_t - 1e-6:
            continue  # out-of-order or repeated PTS (broken files): keep time moving forward
        last_t = t
        if t + 1e-6 >= next_shot:
            next_shot = t + SHOT_STEP
            tiny = to_small.reformat(frame, width=small[0], height=small[1], format="bgr24",
                                     interpolation="AREA").to_ndarray()
            tc = FrameTimecode(Timecode(pts=frame.pts, time_base=Fraction(frame.time_base)), fps=rate)
            for cut in detector.process_frame(tc, tiny):
                cut_t = cut.seconds - info.start_time  # the timecode is the frame's own PTS
                if cut_t > 0.0:
                    cuts.append(cut_t)
                    next_sample = min(next_sample, cut_t + KEY_DELAY)
                    key_pending = True
        if t + 1e-6 >= next_sample:
            image = upright(to_big.reformat(frame, width=big[0], height=big[1], format="bgr24").to_ndarray(),
                            info.rotation)
            name = f"{int(round(t * 1000)):010d}.jpg"
            cv2.imwrite(str(folder / name), image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            samples.append(Sample(t, name, key_pending))
            if feed is not None:
                feed.put(samples[-1])
            key_pending = False
            next_sample = next_step(t, sample_fps)
            if on_time is not None:
                on_time(t)
    if not samples:
        raise SightlineError(f"{Path(info.path).name}: no frame could be decoded; the file is damaged or truncated.",
                             hint="Re-encode it with ffmpeg or remove it.")
    # Both sides in content time: the video stream's own end (a longer audio track does not count)
    stated = info.video_duration or info.duration
    missing = stated - last_t
    if missing > max(2.0, 0.1 * stated):
        raise SightlineError(
            f"{Path(info.path).name}: the video stops at {last_t:.1f} s of {stated:.1f} s; "
            "the file is truncated or damaged.",
            hint="Copy the file again, or re-encode what is left (ffmpeg -i IN -c copy OUT.mp4).")
    index = FrameIndex(folder, samples, cuts, last_t)
    meta = {"samples": [[s.t, s.file, s.key] for s in samples], "cuts": cuts, "last_t": last_t}
    tmp = folder / "index.json.tmp"
    tmp.write_text(json.dumps(meta))
    tmp.replace(folder / "index.json")
    return index


def ensure_frames(video, ctx) -> FrameIndex:
    """The video's frame index: from the cache when a finished scan is there, else scanned now (once).

    When the runner gave the video a feed (`start_feed`), the samples go there too, as they are written.
    """
    with video.frame_lock:
        if video.frame_index is None:
            folder = cache_folder(ctx.cache_dir, video.id, video.fingerprint)
            try:
                index = load_index(folder)
                if index is None:
                    o = ctx.options
                    index = scan(video.media(), folder, o.sample_fps, o.sample_side, on_time=video.on_time,
                                 feed=video.feed)
            except Exception as err:
                if video.feed is not None:
                    why = err.user_text() if isinstance(err, SightlineError) else f"{type(err).__name__}: {err}"
                    video.feed.fail(why)
                raise
            if video.feed is not None:
                video.feed.finish(index.samples)
            video.frame_index = index
            video.frames_ready.set()
        return video.frame_index


def start_feed(video, ctx) -> SampleFeed:
    """Give the video a feed before its decode pass starts, so `follow` readers can start beside it."""
    video.feed = SampleFeed(cache_folder(ctx.cache_dir, video.id, video.fingerprint))
    return video.feed


def follow(video, ctx) -> SampleFeed:
    """The video's samples in time order, with `.image(sample)`: the running pass's feed when there is one (its
    samples arrive as they are written), else a finished feed over the index (from the cache, or scanned now)."""
    if video.feed is not None:
        return video.feed
    index = ensure_frames(video, ctx)
    feed = SampleFeed(index.folder)
    feed.finish(index.samples)
    return feed


def drop_frames(video, ctx) -> None:
    """Remove the cached samples once every frame stage of the video is done."""
    shutil.rmtree(cache_folder(ctx.cache_dir, video.id, video.fingerprint), ignore_errors=True)


def nearest_sample(index: FrameIndex, t: float) -> Sample:
    return min(index.samples, key=lambda s: abs(s.t - t))


def small_gray(image: np.ndarray, size: tuple[int, int] = (64, 36)) -> np.ndarray:
    """A tiny grayscale copy for cheap change detection."""
    import cv2

    return cv2.resize(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), size, interpolation=cv2.INTER_AREA).astype(np.int16)


def frames_in(index: FrameIndex, start: float, end: float) -> Iterator[Sample]:
    for s in index.samples:
        if start - 1e-6 <= s.t < end:
            yield s


def spans(index: FrameIndex, duration: float, max_span: float) -> list[tuple[float, float]]:
    """Shots, with shots longer than max_span cut into equal parts of at most max_span seconds."""
    import math

    out = []
    for a, b in index.shots(duration):
        parts = max(1, math.ceil((b - a) / max_span - 1e-9))
        edges = [a + (b - a) * i / parts for i in range(parts + 1)]
        out.extend(zip(edges, edges[1:]))
    return out


def samples_by_preference(index: FrameIndex, start: float, end: float) -> list[Sample]:
    """Samples inside [start, end), the one nearest the middle first (a thumbnail's candidates)."""
    mid = (start + end) / 2
    inside = [s for s in index.samples if start - 1e-6 <= s.t < end]
    if not inside:
        inside = [nearest_sample(index, mid)]
    return sorted(inside, key=lambda s: abs(s.t - mid))
