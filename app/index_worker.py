"""The web UI's background indexing: one thread runs `Services.index` on queued paths, one request at a time.

The Library tab's handlers queue paths (`submit`) and return at once; the timer redraws the progress from the job
table and from the worker's latest progress event (`event`, `last_event`) and final message (`last_message`).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from app.errors import user_message
from storage.errors import SightlineError

if TYPE_CHECKING:
    from app.services import Services
    from indexer.runner import ProgressEvent


class IndexWorker:
    """One background thread that runs `services.index` on queued paths, one request at a time."""

    def __init__(self, services: Services | None, on_done: Callable[[], None] | None = None):
        self.services = services
        self.on_done = on_done or (lambda: None)
        self._queue: queue.Queue[list[str]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.busy = False
        self.current: list[str] = []
        self.last_event = ""  # the latest progress event, described
        self.event: ProgressEvent | None = None  # the latest progress event itself
        self.last_message = ""

    def submit(self, paths: list[str]) -> None:
        """Queue paths (files or folders) to index; the thread starts if it is not running."""
        self._queue.put(list(paths))
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="sightline-index", daemon=True)
                self._thread.start()

    def pending(self) -> int:
        """How many requests wait behind the one running."""
        return self._queue.qsize()

    def _on_progress(self, event: ProgressEvent) -> None:
        self.event = event
        name = Path(event.path).name
        if name:
            self.last_event = (f"File {event.file_index} of {event.files_total}: "
                               f"{name} — {event.stage} {event.state}").strip()
        else:
            self.last_event = str(event)

    def _run(self) -> None:
        while True:
            try:
                paths = self._queue.get(timeout=1.0)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():
                        self._thread = None
                        return
                continue
            self.busy, self.current, self.last_event, self.event = True, paths, "", None
            try:
                summary = self.services.index(paths, on_progress=self._on_progress)
                self.last_message = summary.describe()
            except SightlineError as err:
                self.last_message = f"Indexing stopped: {user_message(err)}"
            except Exception as err:  # noqa: BLE001 - a background thread: log it and say so in the UI
                self.last_message = user_message(err, bug="Indexing failed")
            finally:
                self.busy, self.current = False, []
                self.on_done()
