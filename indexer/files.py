"""Which files a run indexes: the paths given, folders walked for video extensions, and of the files found by a
walk only those whose content probes as a video (a `.ts` may be TypeScript, a `.mp4` may be text).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

from sqlalchemy import select

from indexer.media import VIDEO_EXTENSIONS
from storage.catalog import remove as remove_video
from storage.errors import SightlineError
from storage.models import FAILED, StageRun, Video

log = logging.getLogger("sightline.indexer")


def collect(paths: Iterable[str | Path]) -> tuple[list[Path], list[Path]]:
    """(video files, folders given). Folders are walked for known video extensions; named files are taken as is."""
    files, roots = [], []
    for raw in paths:
        p = Path(raw).expanduser()
        if not p.exists():
            raise SightlineError(f"No such file or folder: {raw}.", hint="Check the path and try again.")
        p = p.resolve()
        if p.is_dir():
            roots.append(p)
            for dirpath, dirnames, filenames in os.walk(p):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in sorted(filenames):
                    if not name.startswith(".") and Path(name).suffix.lower() in VIDEO_EXTENSIONS:
                        files.append(Path(dirpath) / name)
        else:
            files.append(p)
    seen, unique = set(), []
    for f in files:
        if f not in seen:
            seen.add(f)
            unique.append(f)
    return unique, roots


TRANSPORT_STREAMS = frozenset((".ts", ".mts", ".m2ts"))  # .ts is also TypeScript: these are sniffed first


def looks_like_transport_stream(path: Path) -> bool:
    """MPEG-TS packets start with the sync byte 0x47 every 188 bytes (M2TS/AVCHD: 192, after a 4-byte stamp)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4 * 192 + 4)
    except OSError:
        return True  # unreadable: let the run say so for the file
    for first, stride in ((0, 188), (4, 192)):
        offsets = [first + k * stride for k in range(4) if first + k * stride < len(head)]
        if offsets and all(head[o] == 0x47 for o in offsets):
            return True
    return False


def _not_a_video(err: SightlineError) -> bool:
    """The probe found no video in the file (text, an image, audio only), as opposed to a damaged video."""
    return "not a video file" in err.message or "no video stream" in err.message


def keep_videos(library, paths, files: list[Path]) -> tuple[list[Path], dict, list[tuple[str, str]]]:
    """Files found by walking a folder only count once their content probes as a video: the others (a
    TypeScript `config.ts`, a text file named `.mp4`) are left out and returned with why (the run's summary
    reports them), and a
    row an earlier run registered for one is removed. Files named explicitly are kept: they fail with the probe's
    message. Videos of the library that probed before are not probed again. Returns (kept files, {path:
    MediaInfo} of those probed here, for their VideoJobs: no file is probed twice, [(path, why) left out])."""
    from indexer.media import probe

    probed_now: dict[str, object] = {}
    named = {Path(p).expanduser().resolve() for p in paths if Path(p).expanduser().is_file()}
    with library.read() as s:
        probed = set(s.scalars(select(Video.path).join(StageRun, StageRun.video_id == Video.id).where(
            StageRun.stage == "probe", Video.status != FAILED)).all())
    kept, dropped = [], []
    for f in files:
        if f in named or str(f) in probed:
            kept.append(f)
            continue
        if f.suffix.lower() in TRANSPORT_STREAMS and not looks_like_transport_stream(f):
            dropped.append((f, "not an MPEG transport stream (no 0x47 sync bytes)"))
            continue
        try:
            probed_now[str(f)] = probe(f)
        except SightlineError as err:
            if _not_a_video(err):
                dropped.append((f, err.message))
                continue
        kept.append(f)
    if dropped:
        try:
            with library.read() as s:
                ids = s.scalars(select(Video.id).where(Video.path.in_([str(f) for f, _ in dropped]))).all()
            for video_id in ids:
                remove_video(library, video_id)
        except Exception:  # noqa: BLE001 - a row left behind stays failed and is never served; the run goes on
            log.exception("could not remove the rows of files that are not videos")
    return kept, probed_now, [(str(f), why) for f, why in dropped]
