"""`sightline repair`: a damaged or lost library.db becomes a working library again, keeping what can be read.

1. The old file (with its -wal) is moved aside as `library.db.broken-<time>`, never changed; a copy of it is read.
2. A fresh database is made by the migrations (`Library.open` on an empty folder), and every row of videos,
   moments, embeddings, stage_runs and jobs that SQLite can still read is copied into it under its old id
   (a moment's id is its FAISS id and names its thumbnails). A damaged page is stepped over: the scan resumes
   at the next rowid that reads (found by doubling, then bisecting), like the sqlite3 shell's `.recover` but
   in plain Python. Foreign keys are on, so a moment whose video row was lost is dropped too; FTS5 refills
   through the migrations' triggers.
3. Which rows were lost is read from the old file's indexes (ix_moments_video_start holds every moment's
   video, ix_embeddings_space every vector's moment): each video that lost a moment or a vector loses the rest
   of its rows and its stage marks too and becomes `pending`, so `sightline index` indexes it again from its file.
   When an index cannot be read either, every video it could not vouch for is re-indexed (safe, slower).
4. The FAISS files are rebuilt from the embeddings kept, and the new file passes `PRAGMA quick_check`.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from storage.errors import SightlineError

TABLES = ("videos", "moments", "embeddings", "stage_runs", "jobs")  # parents first, so foreign keys hold
MAX_ROWID = 2**62
REINDEX_NOTE = "repair: some of its rows were lost with a damaged page; the next `sightline index` re-indexes it"


@dataclass
class RepairReport:
    folder: Path
    healthy: bool = False  # nothing to do: the database passed its check
    backup: Path | None = None
    kept: dict[str, int] = field(default_factory=dict)
    unreadable: dict[str, int] = field(default_factory=dict)  # rows on damaged pages (from the old indexes)
    dropped: dict[str, int] = field(default_factory=dict)  # rows read whose parent row was lost
    damaged_tables: list[str] = field(default_factory=list)  # tables where a page could not be read
    reindex: list[str] = field(default_factory=list)  # paths of videos marked to index again
    vectors: dict[str, int] = field(default_factory=dict)
    cleared: int = 0  # moments kept but removed because their video is indexed again

    def describe(self) -> str:
        if self.healthy:
            return f"The library database {self.folder / 'library.db'} passed its check: nothing to repair."
        lines = [f"Repaired {self.folder / 'library.db'}; the old file is kept as {self.backup}."
                 if self.backup else f"Made a fresh database {self.folder / 'library.db'} (there was no old file)."]
        kept = ", ".join(f"{self.kept.get(t, 0)} {t}" for t in TABLES)
        lines.append(f"Kept: {kept}.")
        lost = [f"{self.unreadable.get(t, 0) + self.dropped.get(t, 0)} {t}" for t in TABLES
                if self.unreadable.get(t, 0) + self.dropped.get(t, 0)]
        unknown = [t for t in self.damaged_tables if not self.unreadable.get(t)]
        if self.backup and len(unknown) == len(TABLES):
            lines.append("Lost: everything; no row of the old file could be read.")
        elif lost or unknown:
            lines.append("Lost: " + ", ".join(lost + [f"an unknown number of {t}" for t in unknown]) + ".")
        else:
            lines.append("Lost: nothing.")
        if self.vectors:
            lines.append("Vectors rebuilt: " + ", ".join(f"{n} {s}" for s, n in self.vectors.items()) + ".")
        if self.reindex:
            lines.append(f"{len(self.reindex)} video(s) lost rows, so their other {self.cleared} moments were set "
                         "aside too; they are indexed again by `sightline index`:")
            lines += [f"  {p}" for p in self.reindex[:20]]
        if not self.kept.get("videos"):
            lines.append("No video could be kept: index your folders again (sightline index PATH...).")
        elif self.unreadable.get("videos") or self.dropped.get("videos") or "videos" in self.damaged_tables:
            lines.append("Some video rows were lost with their paths: index your folders again to bring them back.")
        return "\n".join(lines)


@contextmanager
def _exclusive(folder: Path):
    """The indexing lock (storage/indexing_lock.py), held for the repair: no indexing run starts (or runs) while
    the file is rebuilt, and this process is the one that writes the vector files (`Library.holds_indexing_lock`).
    Another run holding it is said in the repair's words; a folder that cannot be written keeps the lock's own."""
    from storage.indexing_lock import IndexingBusy, exclusive

    with ExitStack() as held:
        try:
            held.enter_context(exclusive(folder))
        except IndexingBusy as err:
            if not err.message.startswith("Another indexing run"):
                raise
            raise SightlineError(f"{err.message[:-1]}, so it cannot be repaired now.",
                                 hint="Stop it (and the web UI), then run `sightline repair` again.") from None
        yield


def repair_library(folder: str | Path) -> RepairReport:
    """Rebuild `folder`'s library.db from its readable rows (see the module docstring); returns what happened."""
    from storage.library import DB_NAME, Library

    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
        raise SightlineError(f"There is no library folder {folder}.", hint="Pass the library with --library DIR.")
    db = folder / DB_NAME
    report = RepairReport(folder)
    with _exclusive(folder):
        if db.is_file() and db.stat().st_size > 0 and _passes_check(db):
            report.healthy = True
            return report
        stamp = time.strftime("%Y%m%d-%H%M%S")
        work = folder / "cache" / f"repair-{stamp}"
        work.mkdir(parents=True, exist_ok=True)
        try:
            old = None
            if db.exists():
                report.backup = folder / f"{DB_NAME}.broken-{stamp}"
                for suffix in ("", "-wal", "-shm"):  # SQLite finds <name>-wal beside <name>: the pair stays whole
                    if Path(f"{db}{suffix}").exists():
                        os.replace(f"{db}{suffix}", f"{report.backup}{suffix}")
                        if suffix != "-shm":
                            shutil.copyfile(f"{report.backup}{suffix}", work / f"old.db{suffix}")
                old = work / "old.db"
            Library.open(work / "new").close()  # the schema, through the migrations
            new_db = work / "new" / DB_NAME
            _salvage(old, new_db, report)
            for suffix in ("-wal", "-shm"):
                Path(f"{new_db}{suffix}").unlink(missing_ok=True)  # closed cleanly: checkpointed already
            os.replace(new_db, db)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        for f in (folder / "vectors").glob("*"):  # derived from the old rows: rebuilt below from the kept ones
            if f.is_file():
                f.unlink()
        with Library.open(folder) as lib:
            report.vectors = lib.rebuild_vectors()
            lib.check_health()
    return report


def _passes_check(db: Path) -> bool:
    from contextlib import closing

    try:
        with closing(sqlite3.connect(db)) as conn:
            return conn.execute("PRAGMA quick_check").fetchall() == [("ok",)] and bool(
                conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'videos'").fetchall())
    except sqlite3.DatabaseError:
        return False


# --- copying what reads --------------------------------------------------------------------------------------


def _salvage(old_path: Path | None, new_path: Path, report: RepairReport) -> None:
    new = sqlite3.connect(new_path, isolation_level=None)
    try:
        new.execute("PRAGMA foreign_keys=ON")
        new.execute("BEGIN")
        if old_path is not None:
            old = sqlite3.connect(old_path)
            try:
                read_ids = {t: _copy_table(old, new, t, report) for t in TABLES}
                _mark_lost(old, new, read_ids, report)
            finally:
                old.close()
        new.execute("COMMIT")
    finally:
        new.close()


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in conn.execute(f"PRAGMA table_info({table})").fetchall()]


def _copy_table(old: sqlite3.Connection, new: sqlite3.Connection, table: str, report: RepairReport) -> set[int]:
    """Copy every readable row of `table`; returns the rowids read (kept or dropped)."""
    report.kept[table] = report.dropped[table] = 0
    try:
        cols = [c for c in _columns(new, table) if c in set(_columns(old, table))]
    except sqlite3.DatabaseError:  # the schema itself is unreadable
        cols = []
    if not cols:
        report.damaged_tables.append(table)
        return set()
    names = ", ".join(f'"{c}"' for c in cols)
    insert = f"INSERT INTO {table} ({names}) VALUES ({', '.join('?' * len(cols))})"
    read: set[int] = set()
    for row in _readable_rows(old, table, names, report):
        read.add(row[0])
        try:
            new.execute(insert, row[1:])
            report.kept[table] += 1
        except sqlite3.DatabaseError:  # its video (or moment) was lost, or the row itself is garbage
            report.dropped[table] += 1
    return read


def _readable_rows(conn: sqlite3.Connection, table: str, names: str, report: RepairReport):
    """(rowid, *columns) of every row SQLite can read, in rowid order, stepping over damaged pages."""
    select = f"SELECT rowid, {names} FROM {table} WHERE rowid >= ? ORDER BY rowid"
    start = -MAX_ROWID
    while True:
        try:
            for row in conn.execute(select, (start,)):
                start = row[0] + 1
                yield row
            return
        except sqlite3.DatabaseError:
            if table not in report.damaged_tables:
                report.damaged_tables.append(table)
            start = _next_readable_start(conn, select, start)
            if start is None:
                return


def _next_readable_start(conn: sqlite3.Connection, select: str, bad: int) -> int | None:
    """The smallest rowid >= bad from which a row reads (doubling, then bisecting); None when none does."""
    def reads(start: int) -> bool:
        try:
            conn.execute(select + " LIMIT 1", (start,)).fetchall()
            return True
        except sqlite3.DatabaseError:
            return False

    step, good = 1, None
    while bad + step < MAX_ROWID:
        if reads(bad + step):
            good = bad + step
            break
        bad, step = bad + step, step * 2
    if good is None:
        return None
    while good - bad > 1:
        mid = (bad + good) // 2
        bad, good = (bad, mid) if reads(mid) else (mid, good)
    return good


def _index_entries(conn: sqlite3.Connection, sql: str) -> tuple[list[tuple], bool]:
    """Rows of a covering-index scan of the old file; (rows read, whether the scan reached the end)."""
    rows: list[tuple] = []
    try:
        for row in conn.execute(sql):
            rows.append(row)
        return rows, True
    except sqlite3.DatabaseError:
        return rows, False


def _mark_lost(old: sqlite3.Connection, new: sqlite3.Connection, read_ids: dict[str, set[int]],
               report: RepairReport) -> None:
    """Count the rows on damaged pages and mark their videos for re-indexing."""
    kept_videos = {r[0] for r in new.execute("SELECT id FROM videos")}
    hit: set[int] = set()
    moment_video: dict[int, int] = dict(new.execute("SELECT id, video_id FROM moments").fetchall())
    if "moments" in report.damaged_tables:
        entries, complete = _index_entries(
            old, "SELECT id, video_id FROM moments INDEXED BY ix_moments_video_start")
        moment_video.update(entries)
        lost = [(i, v) for i, v in entries if i not in read_ids["moments"]]
        report.unreadable["moments"] = len(lost)
        hit |= {v for _i, v in lost}
        if not complete:  # the index is damaged too: every video past what it vouched for
            last = entries[-1][1] if entries else None
            hit |= {v for v in kept_videos if last is None or v >= last}
    if "embeddings" in report.damaged_tables:
        entries, complete = _index_entries(old, "SELECT id, moment_id FROM embeddings INDEXED BY ix_embeddings_space")
        lost = [(i, m) for i, m in entries if i not in read_ids["embeddings"]]
        report.unreadable["embeddings"] = len(lost)
        hit |= {moment_video[m] for _i, m in lost if m in moment_video}
        if not complete:
            hit |= kept_videos
    hit &= kept_videos
    for video_id in sorted(hit):
        new.execute("DELETE FROM moments WHERE video_id = ?", (video_id,))  # their vectors and FTS rows go too
        new.execute("DELETE FROM stage_runs WHERE video_id = ?", (video_id,))
        new.execute("UPDATE videos SET status = 'pending', error = NULL, notes = ? WHERE id = ?",
                    (REINDEX_NOTE, video_id))
    report.reindex = [r[0] for r in new.execute(
        f"SELECT path FROM videos WHERE id IN ({', '.join('?' * len(hit))}) ORDER BY id", sorted(hit))]
    kept_moments = report.kept.get("moments", 0)
    report.kept = {t: new.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}
    report.cleared = kept_moments - report.kept["moments"]
