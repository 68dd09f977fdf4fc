"""One indexing run per library folder, and the one process that writes its derived files.

The lock is an flock on `indexing.lock` in the library folder, held by the indexing run in progress (the CLI
beside the UI, a cron job, the UI's own worker) or by `sightline repair`. The OS drops it when the holder ends,
killed (-9) or not, so a killed run never blocks the next one. The file holds the holder's "process N, started
..." line for `holder()` to show.

DESIGN.md's contract: derived files (the FAISS indexes) are written only by the process that holds this lock.
`held_here(folder)` says whether this process holds it (the flag is set by `exclusive` and `holding`, not read
back from the OS, so asking costs nothing); storage/vectors.py asks it before every write.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from storage.errors import SightlineError

LOCK_NAME = "indexing.lock"

_held_folders: set[Path] = set()  # library folders whose indexing lock this process holds
_held_guard = threading.Lock()


class IndexingBusy(SightlineError):
    """An indexing run cannot start: another run holds the lock, or the library folder cannot be written."""


def held_here(folder: Path) -> bool:
    """True while this process holds `folder`'s indexing lock."""
    with _held_guard:
        return Path(folder).resolve() in _held_folders


@contextmanager
def holding(folder: Path) -> Iterator[None]:
    """Mark `folder`'s indexing lock as held by this process while the caller holds its flock."""
    folder = Path(folder).resolve()
    with _held_guard:
        _held_folders.add(folder)
    try:
        yield
    finally:
        with _held_guard:
            _held_folders.discard(folder)


def holder(folder: Path) -> str | None:
    """Who holds the indexing lock now ("process 123, started ..."), or None when no run is alive.

    A cheap, non-blocking probe (LOCK_SH|LOCK_NB on the lock file): a job row still marked running whose
    holder is gone was killed, and readers show it as interrupted."""
    try:
        import fcntl
    except ImportError:  # not a POSIX system: no lock, so no way to tell; trust the job rows
        return "a run (liveness unknown on this system)"
    try:
        f = open(Path(folder) / LOCK_NAME)
    except OSError:  # no lock file: no run has ever held it
        return None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return f.read().strip() or "another process"
        except OSError:
            return None
        fcntl.flock(f, fcntl.LOCK_UN)
        return None


@contextmanager
def exclusive(folder: Path) -> Iterator[None]:
    """Hold the lock for an indexing run; IndexingBusy (naming the holder) when another process holds it."""
    try:
        import fcntl
    except ImportError:  # not a POSIX system: no lock, as before (the run is still the one that writes)
        with holding(folder):
            yield
        return
    try:
        lock_file = open(Path(folder) / LOCK_NAME, "a+")
    except OSError as err:  # a read-only library folder (or disk), or one we may not write to
        raise IndexingBusy(
            f"Cannot write in the library folder {folder}: {err.strerror}.",
            hint="Make the folder writable (a read-only disk, or its permissions), free space on its disk, "
            "or choose another --library folder; then run again.") from None
    with lock_file as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            who = f.read().strip() or "another process"
            raise IndexingBusy(
                f"Another indexing run is working on this library ({who}).",
                hint="Wait for it to finish (`sightline status` shows its progress) or stop it, then run "
                "again; nothing indexed is lost either way.") from None
        try:
            f.seek(0)
            f.truncate()
            f.write(f"process {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}")
            f.flush()
            with holding(folder):
                yield
        finally:
            try:
                f.seek(0)
                f.truncate()
            except OSError:  # the disk went read-only or full mid-run: the lock still goes
                pass
            fcntl.flock(f, fcntl.LOCK_UN)
