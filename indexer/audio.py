"""Audio on the index's clock: 16 kHz mono float32 in chunks, so an hour of sound is never one array unless asked
for. Content time 0 is the video's first presented frame (indexer/media.py): sound before it is cut off, a delayed
track keeps its delay (`info.audio_start`). ffmpeg decodes where it is installed, PyAV otherwise.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from indexer.media import HINT_REENCODE, MediaInfo
from storage.errors import SightlineError

SAMPLE_RATE = 16_000  # Whisper's rate; every audio consumer gets this


def iter_audio(info: MediaInfo, chunk_s: float = 120.0) -> Iterator[tuple[float, np.ndarray]]:
    """16 kHz mono float32 audio as (offset in content seconds, samples) chunks; sound before content time 0
    (audio that starts before the first frame, as AAC priming in MPEG-TS does) is cut off.

    Chunks are about chunk_s long (memory stays flat in the file's length) and end at the quietest 20 ms of
    their last 5 seconds, so a cut rarely falls inside a word.
    """
    if not info.has_audio:
        return
    chunk = int(chunk_s * SAMPLE_RATE)
    ffmpeg_exe = shutil.which("ffmpeg")
    gen = _audio_ffmpeg(info, ffmpeg_exe) if ffmpeg_exe else _audio_pyav(info)
    buf: list[np.ndarray] = []
    have = 0
    offset = max(0.0, info.audio_start)
    skip = int(round(max(0.0, -info.audio_start) * SAMPLE_RATE))  # samples before content time 0
    for block in gen:
        if skip:
            block, skip = block[skip:], max(0, skip - len(block))
        buf.append(block)
        have += len(block)
        while have >= chunk:
            joined = np.concatenate(buf)
            cut = _quiet_cut(joined, chunk)
            yield offset, joined[:cut]
            offset += cut / SAMPLE_RATE
            buf, have = [joined[cut:]], len(joined) - cut
    if have:
        yield offset, np.concatenate(buf)


def _quiet_cut(audio: np.ndarray, chunk: int, search_s: float = 5.0, window: int = SAMPLE_RATE // 50) -> int:
    """Sample index near `chunk` where the audio is quietest (RMS over 20 ms windows in the last search_s)."""
    lo = max(window, chunk - int(search_s * SAMPLE_RATE))
    tail = audio[lo:chunk]
    n = len(tail) // window
    if n < 2:
        return chunk
    rms = np.sqrt(np.mean(tail[: n * window].reshape(n, window) ** 2, axis=1))
    return lo + int(np.argmin(rms)) * window + window // 2


def load_audio(info: MediaInfo) -> tuple[float, np.ndarray]:
    """The whole audio track at once (short files, tests): (offset in content seconds, samples)."""
    parts = list(iter_audio(info, chunk_s=1e9))
    if not parts:
        return 0.0, np.zeros(0, np.float32)
    return parts[0]


def _audio_ffmpeg(info: MediaInfo, exe: str) -> Iterator[np.ndarray]:
    cmd = [exe, "-nostdin", "-v", "error", "-i", info.path, "-map", "0:a:0", "-vn", "-ac", "1",
           "-ar", str(SAMPLE_RATE), "-f", "f32le", "-"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        while True:
            raw = proc.stdout.read(SAMPLE_RATE * 4 * 30)  # 30 s per read
            if not raw:
                break
            yield np.frombuffer(raw[: len(raw) - len(raw) % 4], dtype=np.float32)
        err = proc.stderr.read().decode("utf-8", "replace").strip()
        if proc.wait() != 0:
            raise SightlineError(f"{Path(info.path).name}: the audio track cannot be decoded ({err[-300:]}).",
                                 hint=HINT_REENCODE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def _audio_pyav(info: MediaInfo) -> Iterator[np.ndarray]:
    import av

    try:
        with av.open(info.path) as c:
            stream = c.streams.audio[0]
            resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
            for frame in c.decode(stream):
                for out in resampler.resample(frame):
                    yield out.to_ndarray().reshape(-1).astype(np.float32, copy=False)
            for out in resampler.resample(None):
                yield out.to_ndarray().reshape(-1).astype(np.float32, copy=False)
    except av.FFmpegError as err:
        raise SightlineError(f"{Path(info.path).name}: the audio track cannot be decoded ({err}).",
                             hint=HINT_REENCODE) from err
