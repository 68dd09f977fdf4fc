"""The saved form of one vector space: `vectors/<space>.faiss` and its sidecar `vectors/<space>.json`.

The sidecar holds the id checksum of the vectors SQLite held when the index was saved (count, sum, min and max of
the moment ids, the model) and the byte size and CRC32 of the .faiss file it describes. `write_pair` writes the
index, then the sidecar, each to a temporary file renamed into place, so the pair is valid once the sidecar lands;
`read_pair` loads it only when the sidecar agrees with SQLite and with the file. Whether a process may write at
all (only the indexing lock's holder) is decided by storage/vectors.py.
"""

from __future__ import annotations

import json
import logging
import os
import time
import zlib
from pathlib import Path

from sqlalchemy import func, select

from storage.errors import SightlineError
from storage.models import Embedding

log = logging.getLogger("sightline")

CHECKSUM_KEYS = ("count", "id_sum", "id_min", "id_max", "model")


def checksum(session, space: str) -> dict:
    """The id checksum of the vectors SQLite holds for `space`."""
    row = session.execute(
        select(func.count(Embedding.id), func.coalesce(func.sum(Embedding.moment_id), 0),
               func.min(Embedding.moment_id), func.max(Embedding.moment_id), func.min(Embedding.model))
        .where(Embedding.space == space)
    ).one()
    return {"count": int(row[0]), "id_sum": int(row[1]), "id_min": row[2], "id_max": row[3], "model": row[4]}


def same_checksum(meta: dict, expected: dict) -> bool:
    return all(meta.get(k) == expected[k] for k in CHECKSUM_KEYS)


def file_crc(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            crc = zlib.crc32(chunk, crc)
    return crc


def sidecar_mtime(meta_path: Path) -> int:
    """The sidecar's mtime (ns), 0 when there is none: it changes with every save, so readers watch it."""
    try:
        return meta_path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0


def read_pair(path: Path, meta_path: Path, expected: dict):
    """(index or None, sidecar dict) when the pair holds what `expected` (SQLite's checksum) says, else the
    reason it cannot be used (a str)."""
    import faiss

    if not meta_path.exists():
        return "no sidecar"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return "unreadable sidecar"
    if not same_checksum(meta, expected):
        return "stale: SQLite holds other vectors"
    if expected["count"] == 0:
        return None, meta
    if not path.exists():
        return "no index file"
    if not path.is_file():
        return "index path is not a file (a folder?)"
    try:
        if path.stat().st_size != meta.get("bytes") or file_crc(path) != meta.get("crc32"):
            return "index file corrupt (size or CRC differs)"
    except OSError:
        return "index file unreadable"
    try:
        index = faiss.read_index(str(path))
    except RuntimeError:
        return "index file unreadable"
    if index.ntotal != expected["count"]:
        return "index file holds another count"
    return index, meta


def pair_matches(index, meta: dict, path: Path, meta_path: Path) -> bool:
    """The files on disk are this index and sidecar (size and CRC as the sidecar says)."""
    try:
        if not meta_path.is_file() or json.loads(meta_path.read_text()) != meta:
            return False
        if index is None:
            return not os.path.lexists(path)
        return path.is_file() and path.stat().st_size == meta.get("bytes") and file_crc(path) == meta.get("crc32")
    except (OSError, ValueError):
        return False


def write_pair(index, meta: dict, path: Path, meta_path: Path) -> dict:
    """Save the index and its sidecar (see the module docstring); return the sidecar written."""
    import faiss

    tmp = path.with_suffix(".faiss.tmp")
    tmp_meta = meta_path.with_suffix(".json.tmp")
    for p in (path, meta_path, tmp, tmp_meta):
        _move_aside_unless_file(p)
    if index is not None:
        faiss.write_index(index, str(tmp))
        meta = {**meta, "bytes": tmp.stat().st_size, "crc32": file_crc(tmp)}
        os.replace(tmp, path)
    elif path.exists():
        path.unlink()
    tmp_meta.write_text(json.dumps(meta))
    os.replace(tmp_meta, meta_path)  # written last: the pair is valid once this lands
    return meta


def _move_aside_unless_file(path: Path) -> None:
    """A folder (or anything not a file) where a derived file goes is renamed <name>.broken-<time>, never
    deleted, so the file can be written again; SightlineError when even that is not possible."""
    if not os.path.lexists(path) or path.is_file() and not path.is_symlink():
        return
    aside = path.with_name(f"{path.name}.broken-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        os.replace(path, aside)
    except OSError as err:
        raise SightlineError(f"{path} is not a file (a folder or link is in its place) and cannot be moved "
                             f"aside: {err.strerror}.",
                             hint="Move or delete it; Sightline rebuilds the vectors from the database.") from None
    log.warning("%s was not a file; moved aside to %s and rebuilt", path, aside)
