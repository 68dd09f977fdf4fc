"""Speech clips whose word times are known by construction: a reading made of separately spoken pieces.

Each piece is spoken by espeak-ng (Debian's package, installed by `make test`) into its own WAV; the pieces are
laid end to end with short gaps (shorter than a phrase pause, so Whisper hears one run of sentences) after a
lead of silence, and muxed onto packaged footage (looped to the length needed). The truth of each piece is where
its first sound starts: the offset it was laid at plus the WAV's own leading silence, measured on the samples.
Used by the speech tests and by benchmarks/grounding_eval.py.
"""

from __future__ import annotations

import shutil
import subprocess
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RATE = 16_000
ONSET_LEVEL = 0.02  # |sample| above this is speech (espeak-ng writes clean silence between words)


@dataclass(frozen=True)
class Piece:
    text: str
    onset: float  # content seconds of its first sound in the finished clip
    end: float  # content seconds of its last sound


def have_espeak() -> bool:
    return shutil.which("espeak-ng") is not None


def speak(text: str, folder: Path, name: str, rate_wpm: int = 150) -> np.ndarray:
    """espeak-ng's reading of `text` as 16 kHz mono float32."""
    raw = Path(folder) / f"{name}.wav"
    subprocess.run(["espeak-ng", "-s", str(rate_wpm), "-w", str(raw), text], check=True, capture_output=True)
    with wave.open(str(raw)) as w:
        rate, data = w.getframerate(), np.frombuffer(w.readframes(w.getnframes()), np.int16)
    audio = data.astype(np.float32) / 32768.0
    if rate != RATE:  # espeak-ng speaks at 22.05 kHz
        from scipy.signal import resample_poly

        audio = resample_poly(audio, RATE, rate).astype(np.float32)
    return audio


def lay_out(pieces: list[str], folder: Path, lead_s: float = 3.0, gap_s: float = 0.15,
            pauses: dict[int, float] | None = None) -> tuple[np.ndarray, list[Piece]]:
    """Pieces spoken one after another: (audio, where each piece sounds). `pauses[i]` is a longer silence
    before piece i (a new paragraph)."""
    out = [np.zeros(int(lead_s * RATE), np.float32)]
    at = lead_s
    truth = []
    for i, text in enumerate(pieces):
        gap = (pauses or {}).get(i, gap_s if i else 0.0)
        out.append(np.zeros(int(gap * RATE), np.float32))
        at += int(gap * RATE) / RATE
        audio = speak(text, folder, f"piece{i:03d}")
        loud = np.flatnonzero(np.abs(audio) > ONSET_LEVEL)
        truth.append(Piece(text, at + loud[0] / RATE, at + loud[-1] / RATE))
        out.append(audio)
        at += len(audio) / RATE
    return np.concatenate(out), truth


def write_wav(audio: np.ndarray, path: Path) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype(np.int16).tobytes())
    return path


def mux(video: Path, audio: np.ndarray, out: Path, tail_s: float = 2.0, size: str | None = "320:180",
        fps: int | None = 10, audio_at: float = 0.0) -> Path:
    """`video` looped under `audio` (placed `audio_at` seconds in), as H.264/AAC MP4 as long as the audio plus
    tail_s. Small size and frame rate keep long test clips quick to decode."""
    wav = write_wav(np.concatenate([np.zeros(int(audio_at * RATE), np.float32), audio,
                                    np.zeros(int(tail_s * RATE), np.float32)]), Path(out).with_suffix(".wav"))
    length = audio_at + len(audio) / RATE + tail_s
    vf = ",".join(f for f in (f"scale={size}" if size else "", f"fps={fps}" if fps else "") if f) or "null"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-stream_loop", "-1", "-i", str(video), "-i", str(wav),
                    "-map", "0:v", "-map", "1:a", "-t", f"{length:.3f}", "-vf", vf, "-c:v", "libx264",
                    "-preset", "ultrafast", "-g", "50", "-c:a", "aac", "-b:a", "64k", str(out)],
                   check=True, capture_output=True)
    wav.unlink()
    return Path(out)
