"""Which files the web server may serve: the library's thumbnails, its probed video files and their proxies.

`ServedFiles` keeps that set in step with the library (`sync`), answers app/guard.py's check on every file
request (`allows`) and refuses to hand the player a file it will not serve (`check_served`). Gradio is told the
same set through its allowed paths and static paths; the static paths are Gradio-private state, written in one
place (`_serve_in_place`). `check_plays_as_is` refuses a file gr.Video would convert beside the original.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from storage import catalog as lv
from storage.errors import SightlineError

if TYPE_CHECKING:
    import gradio as gr

    from storage import Library

SERVED_STATUSES = (lv.INDEXED, lv.INDEXING, lv.INTERRUPTED)  # interrupted: its run stopped part way


def _serve_in_place(gone: set[str], new: set[str]) -> None:
    """Take `gone` off and add `new` to Gradio's static paths.

    Why Gradio's private `_StaticFiles.all_paths`: a file on that list is served from where it lies, while a file
    only in `allowed_paths` is copied into Gradio's cache when a component shows it (a copy of every long video
    the player opens). The public `gr.set_static_paths` (Gradio 6) can only add, and a removed or failed video
    must stop being served. This is the project's one write into Gradio's private state.
    """
    from gradio.data_classes import _StaticFiles

    _StaticFiles.all_paths[:] = [p for p in _StaticFiles.all_paths if str(p) not in gone]
    _StaticFiles.all_paths.extend(Path(p) for p in sorted(new))


class ServedFiles:
    """Keeps Gradio's allowed paths equal to the library's thumbnails plus the library's own video files and
    their browser proxies (cache/proxies, one file each).

    A video file is served only while its row is indexed (or being indexed) and its content probed as a video
    (a probe stage mark): never a failed row, never by extension alone. The database, vectors and other caches
    in the library folder are never served. `allows` is the check app/guard.py makes on every file request.
    """

    def __init__(self, library: Library):
        self.library = library
        self.demo: gr.Blocks | None = None
        self._videos: set[str] = set()
        self._real: set[str] = set()  # realpaths of _videos
        self._synced_at = 0.0

    def paths(self) -> list[str]:
        """Gradio's allowed paths: the thumbnails folder, then every served video and proxy."""
        return [str(self.library.folder / "thumbnails")] + sorted(self._videos)

    @staticmethod
    def wanted(rows: list[lv.VideoRow]) -> set[str]:
        """The video files and proxies these library rows allow serving."""
        served = [r for r in rows if r.status in SERVED_STATUSES and any(stage == "probe" for stage, _ in r.stages)]
        return {r.path for r in served} | {str(r.proxy) for r in served if r.proxy is not None}

    def out_of_step(self, rows: list[lv.VideoRow]) -> bool:
        """Whether these rows (read just now) want another set of files than the one served."""
        return self.wanted(rows) != self._videos

    def check_served(self, path: Path, row: lv.VideoRow | None) -> None:
        """Refuse to hand the player a file the server will not serve (Gradio would copy it into its cache)."""
        if str(path) not in self._videos:
            why = f"it failed to index ({row.error})" if row is not None and row.status == lv.FAILED else \
                "its content has not been probed as a video yet"
            raise SightlineError(f"{path.name} cannot be played: {why}.",
                                 hint="Re-index it from the Library tab, or remove it from the library.")

    def allows(self, path: str, refresh: bool = False) -> bool:
        """Whether the file route may answer `path` (as Gradio resolves it: absolute, or from the cwd): a served
        video or proxy, or a file under the thumbnails folder. `refresh` re-reads the library first (at most
        once a second), for a video indexed since the last sync."""
        if refresh and time.monotonic() - self._synced_at > 1.0:
            self.sync()
        try:
            real = os.path.realpath(os.path.abspath(path))
        except (ValueError, OSError):  # a NUL byte, a name too long
            return False
        if real in self._real:
            return True
        thumbs = os.path.realpath(self.library.folder / "thumbnails")
        return real.startswith(thumbs + os.sep) and os.path.isfile(real)

    def sync(self) -> None:
        """Re-read the library and serve exactly what it wants now (static paths, allowed paths, `allows`)."""
        now = self.wanted(lv.videos(self.library))
        _serve_in_place(gone=self._videos - now, new=now - self._videos)
        self._videos = now
        self._real = {os.path.realpath(p) for p in now}
        self._synced_at = time.monotonic()
        if self.demo is not None:
            self.demo.allowed_paths = self.paths()


def check_plays_as_is(row: lv.VideoRow) -> None:
    """Refuse to hand gr.Video a file it would convert: it writes <name>.mp4 beside the file (over it, for an
    HEVC .mp4) on every load. Files the proxy stage has decided on are safe: they got a proxy or need none."""
    if any(stage == "proxy" and status in ("done", "skipped") for stage, status in row.stages):
        return
    from gradio.processing_utils import video_is_playable

    if not video_is_playable(row.path):
        raise SightlineError(f"{row.name} cannot play in the browser until its browser copy is made.",
                             hint="Indexing makes one (the proxy stage); wait for it, or re-index the video.")
