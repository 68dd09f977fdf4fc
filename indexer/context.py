"""What stages receive and return: the per-run context (options + models handed in) and a stage's output.

Models arrive as callables built by app/services.py, loaded on first use; the indexer never imports the engine
or the app. A stage returns `StageOutput`; the runner commits its moments, their vectors and the stage's done
mark in one write.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from indexer.defaults import DEFAULT_OCR_INTERVAL, DEFAULT_SAMPLE_FPS
from indexer.media import MediaInfo
from storage.errors import SightlineError
from storage.once import OnceCache

# (frames (T, H, W, 3) uint8, timestamps) -> caption; may also have .many([(frames, timestamps), ...]).
# Built by app from the engine's Captioner (engine/captioner.py caption_fn()).
CaptionFn = Callable[[np.ndarray, Sequence[float]], str]


@dataclass(frozen=True)
class IndexOptions:
    """The settings the indexer reads (a small frozen copy of app Settings, STYLE rule 8)."""

    sample_fps: float = DEFAULT_SAMPLE_FPS
    ocr_interval: float = DEFAULT_OCR_INTERVAL
    sample_side: int = 960  # longer side of cached frames (OCR reads these)
    # Text detection alone runs on a copy this long first; only frames where it finds text are read in full.
    # 320 px keeps titles, cards and captions of 720p+ video; 0 reads every changed frame (slower, finds tiny text).
    ocr_gate_side: int = 320
    visual_span: float = 10.0  # a shot longer than this gets one visual moment per span
    thumb_side: int = 320
    audio_chunk_s: float = 120.0  # speech is transcribed in chunks this long: memory flat in the length


class UpstreamFailed(SightlineError):
    """What a stage was reading failed (the decode pass it follows); that stage's own error is the one shown."""


@dataclass
class MomentIn:
    """A moment a stage found, before it has a row id."""

    start: float
    end: float
    modality: str
    text: str = ""
    thumbnail: str | None = None  # relative to the library folder
    visual_vector: np.ndarray | None = None  # image embedding ('visual' space), when a visual model is loaded
    words: list[tuple[float, float, str]] | None = None  # speech: each word's (start, end, text), content seconds


@dataclass
class StageOutput:
    moments: list[MomentIn] = field(default_factory=list)
    media_s: float = 0.0  # seconds of media the stage covered (for speed figures and the ETA)
    message: str | None = None  # a note for `status` ("visual search off: ..."), kept in the video's notes
    status: str = "done"  # done | skipped
    video: dict = field(default_factory=dict)  # column updates for the Video row (probe)
    detail: dict = field(default_factory=dict)  # figures for progress and logs ({"shots": 6})


@dataclass
class VideoJob:
    """One video being indexed: its row id, file facts and where its frame cache lives."""

    id: int
    path: str
    fingerprint: str
    info: MediaInfo | None = None
    frames_ready: threading.Event = field(default_factory=threading.Event)
    frame_index: object = None  # indexer.frames.FrameIndex once scanned
    frame_lock: threading.Lock = field(default_factory=threading.Lock)
    feed: object = None  # indexer.frames.SampleFeed while this run's decode pass writes samples
    on_time: Callable[[float], None] | None = None  # frame decode position (progress within a stage)
    on_audio: Callable[[float], None] | None = None  # audio transcribed up to (progress within a stage)
    on_proxy: Callable[[float], None] | None = None  # browser proxy written up to (progress within a stage)

    def media(self) -> MediaInfo:
        """Probe the file once (raises SightlineError when it cannot be indexed)."""
        if self.info is None:
            from indexer.media import probe

            self.info = probe(self.path)
        return self.info


class Lazy:
    """A model handed to the stages, built on first use, once (storage.once.OnceCache, STYLE rule 15); None when
    not configured. A load failure is remembered: every stage that needs the model gets the same error, and the
    model is not loaded again in this run."""

    def __init__(self, build: Callable[[], object] | None, what: str):
        self._build, self.what = build, what
        self._once: OnceCache = OnceCache(remember_failures=True)

    @property
    def configured(self) -> bool:
        return self._build is not None

    def get(self):
        if self._build is None:
            return None
        return self._once.get(None, self._build)


@dataclass
class IndexContext:
    library: object  # storage.Library
    options: IndexOptions = field(default_factory=IndexOptions)
    text_embedder: Lazy = field(default_factory=lambda: Lazy(None, "text embedder"))
    visual_embedder: Lazy = field(default_factory=lambda: Lazy(None, "visual embedder"))
    transcriber: Lazy = field(default_factory=lambda: Lazy(None, "speech model"))
    ocr: Lazy = field(default_factory=lambda: Lazy(None, "OCR"))
    captioner: CaptionFn | None = None
    captions_note: str = "captions off: no captioning model handed in (use --captions with a loaded VLM)"

    @property
    def cache_dir(self) -> Path:
        return Path(self.library.cache_dir)
