"""Media access: probe, fingerprint and streaming frame decode (audio: indexer/audio.py).

Probe goes through ffprobe (ffmpeg-python) and falls back to PyAV's container metadata where no ffprobe is
installed. Frames are decoded one at a time (decord, PyAV as fallback) and never held as a whole video.

One clock for every reader (DESIGN, "Times"): content time `t = pts_seconds - info.start_time`, where
`start_time` is the PTS of the video stream's first frame (after the container's edit list): 0 is the first frame
a player shows. Frames with t < 0 (an edit list's lead-in, leading frames of an open GOP) are not content and are
dropped; audio before 0 is cut off (indexer/audio.py). The engine (engine/video_inputs.py) keeps its own copy of this rule, as
DESIGN keeps the engine from importing the indexer; tests/test_media_clock.py proves the two agree.

Frames come out upright, as a player shows them: `info.rotation` (the display matrix, as degrees clockwise) is
applied to every decoded frame, and `info.width`/`info.height` are the displayed size, not the stored one.
decord already does both (it subtracts the video stream's start time and applies the rotation itself, checked on
decord 0.6.0), but it mis-seeks MPEG-TS and decodes an MP4 edit list's lead-in as frames, so those files are
read with PyAV (`decord_reads`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from storage.errors import SightlineError

VIDEO_EXTENSIONS = frozenset(
    ".mp4 .m4v .mov .mkv .webm .avi .mpg .mpeg .ts .mts .m2ts .wmv .flv .3gp .ogv".split())

HINT_REENCODE = "Re-encode it with ffmpeg (ffmpeg -i IN -c:v libx264 -c:a aac OUT.mp4) or remove it from the folder."


@dataclass(frozen=True)
class MediaInfo:
    """What probing a file tells: enough to plan decoding and to show the user."""

    path: str
    duration: float  # content seconds: from the first frame shown to the end of the longer of video and audio
    fps: float
    width: int  # displayed size (rotation applied): what every frame this module hands out measures
    height: int
    video_codec: str
    has_audio: bool
    start_time: float  # PTS (s) of the video's first frame: content time = PTS - start_time, for every reader
    audio_start: float  # content time of the first audio sample (< 0 when the audio starts before the picture)
    size: int  # bytes
    container: str = ""  # ffprobe's format_name ("mov,mp4,m4a,3gp,3g2,mj2", "mpegts", "matroska,webm", "avi", ...)
    audio_codec: str = ""  # "" when there is no audio track
    rotation: int = 0  # degrees clockwise a player turns the decoded pixels (display matrix): 0, 90, 180 or 270
    video_duration: float = 0.0  # content time where the video stream ends (<= duration); 0.0: unknown

    @property
    def stored_size(self) -> tuple[int, int]:
        """(width, height) of the pixels as the file stores them, before the display rotation."""
        return (self.height, self.width) if self.rotation in (90, 270) else (self.width, self.height)


@dataclass
class Frame:
    """One decoded frame: `t` content seconds (from PTS), `image` RGB uint8 (H, W, 3), upright."""

    t: float
    image: np.ndarray


# --- probe ------------------------------------------------------------------------------------------------------


def _check_file(path: Path) -> int:
    if not path.exists():
        raise SightlineError(f"{path}: no such file.", hint="Check the path; it may have been moved or deleted.")
    if not path.is_file():
        raise SightlineError(f"{path}: not a regular file.")
    size = path.stat().st_size
    if size == 0:
        raise SightlineError(f"{path.name}: the file is empty (0 bytes).",
                             hint="The copy or download probably failed; copy the file again.")
    return size


def _explain_probe_failure(path: Path, detail: str) -> SightlineError:
    """Turn ffprobe/PyAV's complaint into a sentence a user can act on."""
    low = detail.lower()
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        head = b""
    if head[4:8] == b"ftyp" and "invalid data" in low:
        detail = f"an MP4/MOV container without its index: {detail.strip()}"
        low = "truncat"
    if "moov atom not found" in low or "end of file" in low or "truncat" in low or "partial file" in low:
        return SightlineError(f"{path.name}: the file is truncated or incomplete ({detail.strip()}).",
                              hint="The copy or recording did not finish; copy it again or re-encode what is left.")
    if "invalid data" in low or "could not find codec parameters" in low or "unknown format" in low:
        return SightlineError(f"{path.name}: not a video file that ffmpeg can read ({detail.strip()}).",
                              hint="Check that it really is a video; " + HINT_REENCODE)
    return SightlineError(f"{path.name}: cannot read the file ({detail.strip() or 'unknown error'}).",
                          hint=HINT_REENCODE)


def _decoder_available(codec: str) -> bool:
    import av

    try:
        av.codec.Codec(codec, "r")
        return True
    except Exception:  # noqa: BLE001 - PyAV raises several types for unknown codecs
        return False


def _float(value, default: float = 0.0) -> float:
    try:
        out = float(value)
        return out if np.isfinite(out) else default
    except (TypeError, ValueError):
        return default


def _rate(text: str | None) -> float:
    try:
        value = float(Fraction(text)) if text and text != "0/0" else 0.0
    except (ValueError, ZeroDivisionError):
        value = 0.0
    return value


def _probe_ffprobe(path: Path) -> dict:
    import ffmpeg

    try:
        return ffmpeg.probe(str(path))
    except ffmpeg.Error as err:
        detail = (err.stderr or b"").decode("utf-8", "replace").strip().splitlines()
        raise _explain_probe_failure(path, detail[-1] if detail else str(err)) from None


def _probe_pyav(path: Path) -> dict:
    """ffprobe's JSON shape, filled from PyAV's container metadata (used where no ffprobe is installed)."""
    import av

    try:
        with av.open(str(path)) as c:
            streams = []
            for s in c.streams:
                entry = {"codec_type": s.type, "codec_name": s.codec_context.name if s.codec_context else "",
                         "start_time": float(s.start_time * s.time_base) if s.start_time is not None else None,
                         "duration": float(s.duration * s.time_base) if s.duration is not None else None}
                if s.type == "video":
                    entry.update(width=s.codec_context.width, height=s.codec_context.height,
                                 avg_frame_rate=str(s.average_rate or 0), r_frame_rate=str(s.base_rate or 0))
                streams.append(entry)
            video = c.streams.video[0] if c.streams.video else None
            if video is not None:
                # PyAV shows the display matrix on decoded frames only (counter-clockwise, like ffprobe's field)
                first = next(c.decode(video), None)
                turn = getattr(first, "rotation", 0) or 0
                streams[video.index]["side_data_list"] = [{"side_data_type": "Display Matrix", "rotation": turn}]
            fmt = {"format_name": c.format.name, "duration": c.duration / 1e6 if c.duration else None,
                   "start_time": c.start_time / 1e6 if c.start_time is not None else None}
            return {"streams": streams, "format": fmt}
    except av.FFmpegError as err:
        raise _explain_probe_failure(path, str(err)) from None


def probe(path: str | Path) -> MediaInfo:
    """Probe a video file; raise SightlineError saying what is wrong with it when it cannot be indexed."""
    path = Path(path)
    size = _check_file(path)
    data = _probe_ffprobe(path) if shutil.which("ffprobe") else _probe_pyav(path)
    streams = data.get("streams", [])
    fmt = data.get("format", {})
    video = next((s for s in streams if s.get("codec_type") == "video"
                  and not int((s.get("disposition") or {}).get("attached_pic", 0))), None)
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    if video is None:
        kind = "an audio-only file" if audio else "no audio or video streams"
        raise SightlineError(f"{path.name}: no video stream ({kind}).",
                             hint="Sightline indexes videos; audio-only files are not supported yet.")
    codec = video.get("codec_name") or ""
    if not codec or not _decoder_available(codec):
        raise SightlineError(f"{path.name}: the video codec {codec or '(unknown)'!r} is not supported here.",
                             hint=HINT_REENCODE)
    # Content time 0 is the video's first frame (the stream's start after the edit list), not the container's
    # start: that is the earliest of all streams (often AAC priming a few ms before the picture).
    start = _start(video, _float(fmt.get("start_time")))
    video_end, audio_end = _stream_ends(path, video, audio, fmt)
    video_duration = max(0.0, video_end - start)
    duration = max(video_duration, audio_end - start)
    if duration <= 0:
        raise SightlineError(f"{path.name}: the file reports no duration; it is probably truncated.",
                             hint=HINT_REENCODE)
    fps = _rate(video.get("avg_frame_rate")) or _rate(video.get("r_frame_rate"))
    audio_start = _start(audio, start) - start if audio else 0.0
    rotation = stream_rotation(video)
    w, h = int(video.get("width") or 0), int(video.get("height") or 0)
    if rotation in (90, 270):
        w, h = h, w
    return MediaInfo(str(path), duration, fps, w, h, codec, audio is not None, start, audio_start, size,
                     container=str(fmt.get("format_name") or ""), audio_codec=str((audio or {}).get("codec_name") or ""),
                     rotation=rotation, video_duration=video_duration)


def _start(stream: dict, default: float) -> float:
    """The stream's first PTS in seconds, exact (ffprobe prints start_time rounded to 6 decimals)."""
    try:
        return float(int(stream["start_pts"]) * Fraction(stream["time_base"]))
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return _float(stream.get("start_time"), default)


def stream_rotation(stream: dict) -> int:
    """Degrees clockwise a player turns the stream's pixels: 0, 90, 180 or 270.

    The display matrix's angle (ffprobe's side data `rotation`, PyAV's `frame.rotation`) counts counter-clockwise,
    so a phone's portrait clip says -90 and is shown turned 90 degrees clockwise. ffprobe before 5.0 gave the
    clockwise angle as a `rotate` tag instead.
    """
    for side in stream.get("side_data_list") or []:
        if "rotation" in side:
            return int(round(-_float(side["rotation"]) / 90.0)) * 90 % 360
    tag = (stream.get("tags") or {}).get("rotate")
    return int(round(_float(tag) / 90.0)) * 90 % 360 if tag else 0


def _stream_ends(path: Path, video: dict, audio: dict | None, fmt: dict) -> tuple[float, float]:
    """(video end, audio end) as PTS seconds. A stream's start + duration where the container states a duration
    per stream (MP4, MPEG-TS, AVI). Matroska/WebM state none, and their file duration counts from PTS 0, not from
    the start, so the last packets are read instead (a seek to the end; nothing decoded)."""
    ends = {}
    for kind, stream in (("video", video), ("audio", audio)):
        if stream is not None and stream.get("duration") not in (None, "N/A") and _float(stream.get("duration")) > 0:
            ends[kind] = _start(stream, 0.0) + _float(stream.get("duration"))
    if "video" not in ends:
        ends = {**_last_packet_ends(path, fmt), **ends}
    if "video" not in ends:  # nothing readable at the end: the file's own figure, counted from its start
        ends["video"] = _float(fmt.get("start_time")) + _float(fmt.get("duration"))
    return ends["video"], ends.get("audio", 0.0) if audio is not None else 0.0


def _last_packet_ends(path: Path, fmt: dict) -> dict[str, float]:
    """{"video": end, "audio": end}: the largest pts + duration among the packets after a seek to the end."""
    import av

    ends: dict[str, float] = {}
    try:
        with av.open(str(path)) as c:
            streams = [s for s in c.streams if s.type in ("video", "audio")]
            # past any end the file can have: its start plus its duration, whichever way the demuxer counts it
            target = int((_float(fmt.get("start_time")) + _float(fmt.get("duration")) + 1.0) * 1e6)
            c.seek(target, backward=True, any_frame=False)
            for packet in c.demux(streams):
                if packet.pts is None:
                    continue
                end = float((packet.pts + (packet.duration or 0)) * packet.time_base)
                kind = packet.stream.type
                if kind not in ends or end > ends[kind]:
                    ends[kind] = end
    except (av.FFmpegError, OSError, ValueError):
        return {}
    return ends


# --- fingerprint ------------------------------------------------------------------------------------------------

_CHUNK = 64 * 1024
_SAMPLES = 16


def fingerprint(path: str | Path) -> str:
    """Size + hash of sampled chunks (head, tail, 16 spread between): constant time on huge files."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.blake2b(str(size).encode(), digest_size=16)
    with open(path, "rb") as f:
        if size <= _CHUNK * (_SAMPLES + 2):
            h.update(f.read())
        else:
            for i in range(_SAMPLES + 2):
                f.seek((size - _CHUNK) * i // (_SAMPLES + 1))
                h.update(f.read(_CHUNK))
    return f"{size}:{h.hexdigest()}"


# --- frames -----------------------------------------------------------------------------------------------------


def fit_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """(w, h) scaled so the longer side is at most max_side, both even (decoders like even sizes)."""
    if not max_side or max(width, height) <= max_side:
        return width - width % 2, height - height % 2
    scale = max_side / max(width, height)
    return max(2, int(round(width * scale / 2)) * 2), max(2, int(round(height * scale / 2)) * 2)


def next_step(t: float, fps: float) -> float:
    """The next point of the 1/fps grid after t: samples stay on the grid instead of drifting with frame times."""
    return (np.floor(t * fps + 1e-6) + 1) / fps


def _decode_error(path: str, err: Exception) -> SightlineError:
    return SightlineError(f"{Path(path).name}: decoding failed ({err}); the file may be damaged or truncated.",
                          hint=HINT_REENCODE)


def upright(image: np.ndarray, rotation: int) -> np.ndarray:
    """The stored pixels (H, W, C) turned `rotation` degrees clockwise, as a player shows them; contiguous."""
    if not rotation:
        return image
    return np.ascontiguousarray(np.rot90(image, k=-(rotation // 90)))  # rot90 turns counter-clockwise for k > 0


def stored_fit(info: MediaInfo, max_side: int | None) -> tuple[int, int]:
    """(w, h) to scale the stored pixels to, so that once turned upright they measure fit_size(display size)."""
    w, h = fit_size(info.width, info.height, max_side)
    return (h, w) if info.rotation in (90, 270) else (w, h)


# decord 0.6.0 reads MPEG-TS wrongly (after a seek its frames lag their times by about the start offset: the
# text card of tests/media_variants.py's mpegts variant is black at 5 s) and hands out an MP4 edit list's
# lead-in as frames with negative times. Those files go to PyAV.
DECORD_CONTAINERS = ("mov", "matroska", "avi")


def decord_reads(info: MediaInfo) -> bool:
    """Whether decord reads this container correctly (see DECORD_CONTAINERS)."""
    return info.container.split(",")[0] in DECORD_CONTAINERS


def _frames_decord(info: MediaInfo, fps: float, max_side: int | None, batch: int = 8) -> Iterator[Frame]:
    import decord

    # decord turns frames upright itself and takes the displayed size
    w, h = fit_size(info.width, info.height, max_side)
    vr = decord.VideoReader(info.path, ctx=decord.cpu(0), width=w, height=h)
    n = len(vr)
    # decord's times are already content times: it subtracts the video stream's start time itself
    times = vr.get_frame_timestamp(np.arange(n))[:, 0].astype(np.float64)
    if n and times[0] < -1e-6:
        raise RuntimeError("an edit list's lead-in is listed as frames (negative times); PyAV reads this file")
    picks, next_t = [], 0.0
    for i, t in enumerate(times):
        if t + 1e-6 >= next_t:
            picks.append(i)
            next_t = next_step(t, fps)
    for k in range(0, len(picks), batch):
        idx = picks[k:k + batch]
        arr = vr.get_batch(idx).asnumpy()
        for i, img in zip(idx, arr):
            yield Frame(float(times[i]), img)
    del vr


# Sampling a few frames a second needs no frame that nothing else refers to: the decoder may skip them
# (FFmpeg's AVDISCARD_NONREF; mostly B-frames). Reference frames decode exactly as before, and their PTS
# gives their times, so the saving (about a third of the decode time on x264 output) costs no accuracy.
SKIP_NONREF_BELOW_FPS = 5.0


def _open_video(c, fps: float | None):
    stream = c.streams.video[0]
    stream.thread_type = "AUTO"
    if fps is not None and fps <= SKIP_NONREF_BELOW_FPS:
        stream.codec_context.skip_frame = "NONREF"
    return stream


def _frames_pyav(info: MediaInfo, fps: float | None, max_side: int | None) -> Iterator[Frame]:
    from av.video.reformatter import VideoReformatter

    w, h = stored_fit(info, max_side)
    scaler = VideoReformatter()  # one swscale context for the whole file, not one per frame
    next_t = 0.0
    for t, frame in scan_frames(info, skip_nonref=fps is not None and fps <= SKIP_NONREF_BELOW_FPS):
        if fps and t + 1e-6 < next_t:
            continue
        next_t = next_step(t, fps) if fps else 0.0
        image = scaler.reformat(frame, width=w, height=h, format="rgb24").to_ndarray()
        yield Frame(t, upright(image, info.rotation))


def iter_frames(info: MediaInfo, fps: float, max_side: int | None = None, backend: str = "auto") -> Iterator[Frame]:
    """Frames sampled at `fps` (the first frame at or after each 1/fps step), downscaled to max_side, upright,
    streamed; times are content times.

    decord is tried first where it reads the container correctly (`decord_reads`); PyAV is the fallback (and the
    only backend when decord cannot open the file). backend="decord" forces decord.
    """
    if backend == "decord" or (backend == "auto" and decord_reads(info)):
        try:
            import decord  # noqa: F401

            gen = _frames_decord(info, fps, max_side)
            first = next(gen, None)
        except Exception as err:  # noqa: BLE001 - decord raises its own DECORDError and RuntimeErrors
            if backend == "decord":
                raise _decode_error(info.path, err) from err
            first, gen = None, None
        if gen is not None:
            if first is not None:
                yield first
            try:
                yield from gen
            except Exception as err:  # noqa: BLE001
                raise _decode_error(info.path, err) from err
            return
    try:
        yield from _frames_pyav(info, fps, max_side)
    except SightlineError:
        raise
    except Exception as err:  # noqa: BLE001 - av.FFmpegError and friends
        raise _decode_error(info.path, err) from err


def scan_frames(info: MediaInfo, skip_nonref: bool = True) -> Iterator[tuple[float, object]]:
    """Every (reference) frame of the content once, in order: (content t, av.VideoFrame as stored, not yet turned
    upright: see `upright`). Callers convert only what they need (shots want a tiny copy of many frames, OCR and
    thumbnails a larger copy of a few), so the file is decoded once."""
    import av

    try:
        with av.open(info.path) as c:
            stream = _open_video(c, 1.0 if skip_nonref else None)
            for frame in c.decode(stream):
                if frame.time is None:
                    continue
                t = frame.time - info.start_time
                if t < -1e-6:
                    continue  # before the first frame a player shows (an edit list's lead-in): not content
                yield max(0.0, t), frame
    except av.FFmpegError as err:
        raise _decode_error(info.path, err) from err


def has_ffprobe() -> bool:
    return shutil.which("ffprobe") is not None and os.access(shutil.which("ffprobe"), os.X_OK)
