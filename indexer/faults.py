"""How indexing fails. Not the file's fault: the library's disk is full, read-only or not writable
(`ResourceFailure`): the runner stops after the file at hand, so the rest stays pending and the next run resumes
it. The file's: it cannot be read, or a stage failed on it (`FileFailed`): the error lands in `videos.error` and
the run goes on. Each message says what to free or fix.
"""

from __future__ import annotations

import errno
from pathlib import Path

from storage.errors import SightlineError


class ResourceFailure(SightlineError):
    """The library cannot take more writes (disk full, read-only, no permission): the run stops after this file."""


class FileFailed(SightlineError):
    """This file could not be indexed; the message (the video's `error`) says why. The run goes on."""


# How a ResourceFailure's message starts: a file failed this way is taken up again by the next run, whatever it is given.
RESOURCE_MESSAGES = ("The disk holding the library", "The library folder", "No permission to write in the library")
_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def resource_failure(err: BaseException, library) -> ResourceFailure | None:
    """The disk-full / read-only / permission problem behind err (its causes included), as a message that says
    what to free or fix; None for any other error."""
    where = library.folder
    again = "then run `sightline index` again: what is indexed stays, the rest resumes."
    seen = 0
    while err is not None and seen < 8:
        seen += 1
        text = str(getattr(err, "orig", None) or err).lower()
        code = getattr(err, "errno", None) if isinstance(err, OSError) else None
        if code in _FULL or "database or disk is full" in text or "no space left on device" in text:
            return ResourceFailure(
                f"The disk holding the library ({where}) is full.",
                hint=f"Free space on it (the library's cache/ folder of frame caches can be deleted safely), or "
                f"move the library with --library; {again}")
        if code == errno.EROFS or "readonly database" in text or "read-only file system" in text:
            return ResourceFailure(f"The library folder {where} is read-only.",
                                   hint=f"Make its disk writable (remount it read-write) or choose another "
                                   f"--library folder; {again}")
        if code in (errno.EACCES, errno.EPERM) and str(getattr(err, "filename", "") or "").startswith(str(where)):
            return ResourceFailure(f"No permission to write in the library folder {where} ({err.filename}).",
                                   hint=f"Give this user write access to the folder (chown/chmod), or choose "
                                   f"another --library folder; {again}")
        err = err.__cause__ or err.__context__
    return None


def unreadable(path: Path, err: OSError) -> str:
    """The message of a video file that cannot be read, saying what to fix."""
    if err.errno in (errno.EACCES, errno.EPERM):
        return (f"{path.name}: cannot read the file (permission denied). Give this user read access "
                f"(chmod a+r '{path}') or run Sightline as a user who can read it, then index again.")
    return f"{path.name}: cannot read the file ({err.strerror})."
