"""A run's progress as the CLI's tqdm bar and the UI see it: `ProgressEvent`s with the ETA, in order.

`RunProgress` counts media seconds done (whole files, plus each stage's share of the file at hand, plus how far
running stages got) and turns stage events into ProgressEvents. The ETA is `storage.catalog.time_left`, the one the
UI's status reads: the speed measured so far, else the library's past speed (`storage.jobs`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from storage import jobs
from storage.catalog import time_left

log = logging.getLogger("sightline.indexer")

# Share of a video's indexing time per stage, used for the ETA until the library has its own figures.
DEFAULT_WEIGHTS = {"probe": 0.01, "shots": 0.35, "visual": 0.05, "screen_text": 0.25, "speech": 0.3,
                   "captions": 0.04, "proxy": 0.1}
PROGRESS_EVERY_S = 1.0  # progress inside a stage (decode position, audio transcribed, proxy written) at most this often


@dataclass
class ProgressEvent:
    """What the CLI's tqdm bar and the UI show: where the run is and how long it will take."""

    job_id: int
    file_index: int  # 1-based position of the current file
    files_total: int
    path: str
    stage: str
    state: str  # started | progress | done | skipped | failed | unchanged | finished
    media_done: float  # seconds of media indexed so far in this run (whole files plus finished stages)
    media_total: float
    elapsed_s: float
    eta_s: float | None
    message: str = ""

    @property
    def fraction(self) -> float:
        return self.media_done / self.media_total if self.media_total else 0.0


class Cancelled(Exception):
    """Raised inside a running stage (through its progress callback) once Ctrl-C stopped the run."""


class RunProgress:
    """Turns stage completions into ProgressEvents with an ETA, and drives an optional tqdm bar."""

    def __init__(self, library, job_id: int, files_total: int, media_total: float,
                 on_progress: Callable[[ProgressEvent], None] | None, show: bool):
        self.job_id, self.files_total, self.media_total = job_id, files_total, media_total
        self.on_progress = on_progress
        self.started = time.time()
        self.media_done = 0.0
        self.partial = 0.0  # fraction of the current file done, in media seconds
        self.running: dict[str, float] = {}  # stages under way: their share of the file done so far (media s)
        self.shown = 0.0  # the largest share of the current file reported so far
        self.last_within = 0.0
        self.lock = threading.Lock()
        self.cancelled = threading.Event()  # Ctrl-C: running stages stop at their next progress report
        self.weights = jobs.stage_shares(library, DEFAULT_WEIGHTS)
        self.history_rate = jobs.wall_per_media_second(library)  # from earlier runs
        self.bar = None
        if show:
            from tqdm import tqdm

            self.bar = tqdm(total=round(media_total, 1), unit="s", desc="indexing", dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} media s [{elapsed}<{remaining}]")

    def eta(self) -> float | None:
        return time_left(self.media_total, self.media_done + self._file_part(), time.time() - self.started,
                         self.history_rate)

    def emit(self, index: int, path: str, stage: str, state: str, message: str = "") -> None:
        with self.lock:
            event = ProgressEvent(self.job_id, index, self.files_total, path, stage, state,
                                  self.media_done + self._file_part(), self.media_total, time.time() - self.started,
                                  self.eta(), message)
            if self.bar is not None:
                self.bar.n = round(min(event.media_done, self.media_total), 1)
                self.bar.set_postfix_str(f"{Path(path).name}: {stage} {state}"[:60], refresh=True)
            if self.on_progress is not None:  # under the lock: stage threads' events arrive in order
                try:
                    self.on_progress(event)
                except Exception:  # noqa: BLE001 - a broken progress consumer must not stop indexing
                    log.exception("progress callback failed")

    def _file_part(self) -> float:
        # Never backwards: stages overlap, and one ending can take back less than the others' running shares.
        self.shown = max(self.shown, self.partial + sum(self.running.values()))
        return self.shown

    def within(self, index: int, path: str, stage: str, t: float, duration: float) -> None:
        """A running stage has reached media time t (of duration): move the bar, at most every PROGRESS_EVERY_S.
        After Ctrl-C it raises instead: the stage's decode, transcription or ffmpeg stops there."""
        if self.cancelled.is_set():
            raise Cancelled("indexing interrupted")
        if duration <= 0:
            return
        with self.lock:
            self.running[stage] = min(1.0, max(0.0, t / duration)) * duration * self.weights.get(stage, 0.05)
            now = time.time()
            if now - self.last_within < PROGRESS_EVERY_S:
                return
            self.last_within = now
        self.emit(index, path, stage, "progress")

    def stage_done(self, stage: str, duration: float) -> None:
        with self.lock:
            self.running.pop(stage, None)
            self.partial = min(duration, self.partial + duration * self.weights.get(stage, 0.05))

    def file_done(self, duration: float) -> None:
        with self.lock:
            self.media_done += duration
            self.partial = self.shown = 0.0
            self.running.clear()

    def close(self, complete: bool = True) -> None:
        """End the bar: at 100% only when the run finished (an interrupted or aborted run shows where it stopped)."""
        if self.bar is not None:
            if complete:
                self.bar.n = round(self.media_total, 1)
            self.bar.refresh()
            self.bar.close()
