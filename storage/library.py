"""The library folder: SQLite (or any SQLAlchemy URL), FAISS vectors, thumbnails and caches.

One writer, many readers: every write goes through `Library.write(fn)`, which runs `fn(session)` on a single
writer thread in one transaction. On SQLite that transaction is `BEGIN IMMEDIATE` (the write lock is taken up
front, so two processes never deadlock upgrading a read lock), the database is in WAL mode (readers never wait
for the writer) and `busy_timeout` makes a second writer wait for the lock instead of failing with "database is
locked". pysqlite's own transaction handling is switched off (`isolation_level = None`) so that the BEGIN we
emit in SQLAlchemy's `begin` event is the one SQLite sees; tests/test_storage_library.py checks the statements.

Reads use their own sessions (`Library.read()`); `read(deadline_s=...)` installs an SQLite progress handler
that interrupts a query past its deadline and raises SightlineError instead of hanging.

Any SQLAlchemy URL is accepted. Keyword search uses SQLite FTS5 when the database is SQLite and FTS5 is compiled
in (`Library.has_fts`); elsewhere it falls back to LIKE and nothing touches FTS5.

The schema is made, and upgraded, only by the Alembic revisions in storage/migrations, run by `Library.open`
in one writer transaction.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from sqlalchemy import create_engine, event, select, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

from storage import indexing_lock as locks
from storage.errors import SightlineError
from storage.models import Moment, Video

T = TypeVar("T")

DB_NAME = "library.db"
BUSY_TIMEOUT_MS = 60_000  # a second writer (another process) waits this long for the lock before failing

log = logging.getLogger("sightline")


def _sqlite_engine(url: str) -> Engine:
    parsed = make_url(url)
    in_memory = parsed.database in (None, "", ":memory:")
    kwargs = {"poolclass": StaticPool} if in_memory else {}  # one shared connection, or each sees its own db
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_MS / 1000},
                           **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # pysqlite emits no BEGIN of its own; we do (see _on_begin)
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")  # first: switching to WAL needs the lock
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        # Writers take the lock up front: a deferred transaction that upgrades to a write after another
        # process committed fails at once with SQLITE_BUSY (the busy handler cannot help it).
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.get("writer") else "BEGIN")

    return engine


def _raise_damage_as_user_error(engine: Engine, db: str) -> None:
    """Any statement, read or write, that finds the file damaged raises SightlineError naming `sightline repair`
    instead of SQLAlchemy's error with the raw SQL."""

    @event.listens_for(engine, "handle_error")
    def _on_error(context):
        err = context.original_exception
        if is_damage(err):
            raise damaged_error(db, str(err)) from err
        problems = _quick_check_after(err, db)
        if problems:
            raise damaged_error(db, f"{err}; quick check: {problems}") from err


# Failures that say nothing about the file's health: no quick check after them.
_ORDINARY_FAILURES = ("locked", "busy", "interrupt", "full", "readonly", "read-only", "constraint", "unique",
                      "no such", "syntax", "already exists", "unable to open", "out of memory")


def _quick_check_after(err: BaseException, db: str) -> str:
    """After a failed statement whose message is not an ordinary failure, SQLite's quick check on a fresh
    read-only connection: "" when the file is healthy (or cannot be checked), else what it found."""
    import sqlite3

    if not isinstance(err, sqlite3.DatabaseError) or any(w in str(err).lower() for w in _ORDINARY_FAILURES):
        return ""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1.0) as conn:
            rows = [str(r[0]) for r in conn.execute("PRAGMA quick_check").fetchall()]
    except sqlite3.Error as check_err:
        return "" if not is_damage(check_err) else str(check_err)
    return "" if rows == ["ok"] else "; ".join(rows[:3])


def _fts5_available(engine: Engine) -> bool:
    with engine.connect() as conn:
        options = {r[0] for r in conn.exec_driver_sql("PRAGMA compile_options").all()}
    return "ENABLE_FTS5" in options


# --- health: a damaged or lost database is named, with the way back (sightline repair) -----------------------

REPAIR_HINT = ("Run `sightline repair` (with the same --library): it keeps the old file as library.db.broken-<time>, "
               "rebuilds the library from every row it can still read and marks the videos that lost rows for "
               "re-indexing. Or restore library.db from a backup.")
_DAMAGE_WORDS = ("malformed", "not a database", "database corruption")


def is_damage(err: BaseException) -> bool:
    """True for SQLite's own words for a damaged file (SQLITE_CORRUPT, SQLITE_NOTADB), raw or wrapped."""
    import sqlite3

    orig = getattr(err, "orig", None) or err
    return isinstance(orig, sqlite3.DatabaseError) and any(w in str(orig).lower() for w in _DAMAGE_WORDS)


def damaged_error(db: Path | str, detail: str) -> SightlineError:
    return SightlineError(f"The library database {db} is damaged ({detail}).", hint=REPAIR_HINT)


def _holds_derived_files(folder: Path) -> bool:
    """Vectors or thumbnails on disk: a database made them, so an empty or missing one was lost, not new."""
    for sub in ("vectors", "thumbnails"):
        try:
            if any((folder / sub).iterdir()):
                return True
        except OSError:
            continue
    return False


def lost_database_error(db: Path, what: str) -> SightlineError:
    return SightlineError(
        f"The library database {db} is {what}, but the library folder still holds vectors or thumbnails of "
        "indexed videos: the database was deleted or lost, so Sightline will not start over with an empty "
        "library on top of them.",
        hint="Restore library.db from a backup, or run `sightline repair` (with the same --library) to start a "
        "fresh database (then index your folders again).")


def _refuse_lost_database(folder: Path) -> None:
    """A missing or zero-byte library.db where vectors or thumbnails exist is refused (a new folder is fine)."""
    db = folder / DB_NAME
    wal = folder / (DB_NAME + "-wal")
    if db.exists() and (db.stat().st_size > 0 or (wal.exists() and wal.stat().st_size > 0)):
        return
    if _holds_derived_files(folder):
        raise lost_database_error(db, "missing" if not db.exists() else "empty (0 bytes)")


def _refuse_lost_database_schema(lib: Library) -> None:
    """An SQLite file with no Sightline tables where vectors or thumbnails exist (emptied, or replaced)."""
    from sqlalchemy import inspect

    with lib.engine.connect() as conn:
        tables = inspect(conn).get_table_names()
    if not tables and _holds_derived_files(lib.folder):
        raise lost_database_error(lib.folder / DB_NAME, "empty (no tables)")


class Library:
    """An open library folder. Create with `Library.open(folder)`; close with `close()`."""

    def __init__(self, folder: Path, url: str | None = None):
        self.folder = Path(folder).expanduser().resolve()
        self.url = url or f"sqlite:///{self.folder / DB_NAME}"
        try:
            backend = make_url(self.url).get_backend_name()
        except ArgumentError as err:
            raise SightlineError(f"Cannot parse the database URL {self.url!r}.",
                                 hint="Use an SQLAlchemy URL such as sqlite:////path/library.db or "
                                 "postgresql://user@host/db, or leave SIGHTLINE_DATABASE_URL empty.") from err
        self.is_sqlite = backend == "sqlite"
        try:
            self.engine = _sqlite_engine(self.url) if self.is_sqlite else create_engine(self.url)
        except Exception as err:  # noqa: BLE001 - a missing driver, a bad option: the user's URL is the cause
            raise SightlineError(f"Cannot open the database {self.url!r}: {err}",
                                 hint="Check the URL and that its database driver is installed.") from err
        if self.is_sqlite:
            _raise_damage_as_user_error(self.engine, make_url(self.url).database or self.url)
        # Keyword search: FTS5 where SQLite has it compiled in, LIKE everywhere else.
        self.has_fts = self.is_sqlite and _fts5_available(self.engine)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sightline-writer")
        self._writer_thread: int | None = None
        self._vectors: dict[str, object] = {}
        self._vectors_lock = threading.Lock()

    @classmethod
    def open(cls, folder: str | Path, url: str | None = None) -> Library:
        folder = Path(folder).expanduser()
        if folder.exists() and not folder.is_dir():
            raise SightlineError(f"Library location {folder} is a file, not a folder.",
                                 hint="Pass --library with a folder path.")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for sub in ("thumbnails", "vectors", "cache"):
                (folder / sub).mkdir(exist_ok=True)
        except OSError as err:
            raise SightlineError(f"Cannot create the library folder {folder}: {err.strerror}.",
                                 hint="Choose a writable folder with --library or SIGHTLINE_LIBRARY.") from err
        if url is None:
            _refuse_lost_database(folder.resolve())
        lib = None
        try:
            lib = cls(folder, url)
            lib._migrate()
        except DBAPIError as err:
            if lib is not None:
                lib.close()
            if is_damage(err):
                raise damaged_error(url or folder / DB_NAME, str(err.orig)) from err
            raise SightlineError(f"Cannot open the database {url or folder / DB_NAME}: {err.orig}.",
                                 hint="Check that it is a Sightline library database and is writable, or "
                                 "choose another --library folder.") from err
        except BaseException:
            if lib is not None:
                lib.close()
            raise
        return lib

    def _migrate(self) -> None:
        """Bring the schema to the newest revision (storage/migrations); a no-op read when it is there."""
        from sqlalchemy import inspect

        from storage import migrations

        with self.engine.connect() as conn:
            current = (conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
                       if inspect(conn).has_table("alembic_version") else None)
        if current is None and self.url == f"sqlite:///{self.folder / DB_NAME}":
            _refuse_lost_database_schema(self)
        if current != migrations.HEAD:
            # In a writer transaction: two processes opening (or upgrading) a library at once must not race,
            # and an upgrade that fails half way leaves the library as it was.
            self.write(lambda session: migrations.upgrade(session.connection(), self.has_fts))
        if self.has_fts:
            with self.engine.connect() as conn:  # a library made where SQLite had no FTS5: LIKE, as elsewhere
                self.has_fts = inspect(conn).has_table(migrations.FTS_PREFIX)

    def check_health(self) -> None:
        """SQLite's `PRAGMA quick_check`; raises SightlineError (damaged, run `sightline repair`) unless "ok".

        Reads every page: ~0.3 s for 100k moments with their vectors (226 MB, warm cache), so it runs where a
        user starts work (status, index, repair, the UI's start), not in every search process."""
        if not self.is_sqlite:
            return
        with self.engine.connect() as conn:
            rows = [str(r[0]) for r in conn.exec_driver_sql("PRAGMA quick_check").all()]
        if rows != ["ok"]:
            detail = "; ".join(rows[:3]) + (f"; and {len(rows) - 3} more problems" if len(rows) > 3 else "")
            raise damaged_error(make_url(self.url).database, f"quick check: {detail}")

    # --- sessions -------------------------------------------------------------------------------------------

    def write(self, fn: Callable[[Session], T]) -> T:
        """Run fn in one transaction on the writer thread; return its result."""
        if threading.get_ident() == self._writer_thread:
            raise RuntimeError("Library.write() called from inside a write(): do all of it in one fn.")
        return self._writer.submit(self._in_transaction, fn).result()

    def _in_transaction(self, fn: Callable[[Session], T]) -> T:
        self._writer_thread = threading.get_ident()
        with self.engine.connect() as conn:
            conn.info["writer"] = True
            try:
                with Session(bind=conn, expire_on_commit=False) as session, session.begin():
                    return fn(session)
            finally:
                conn.info.pop("writer", None)

    @contextmanager
    def read(self, deadline_s: float | None = None) -> Iterator[Session]:
        """A session for reading; never commit in it. With `deadline_s`, SQLite queries that run past the
        deadline are interrupted and raise SightlineError (other databases ignore the deadline)."""
        with Session(self.engine, expire_on_commit=False) as session:
            if deadline_s is None or not self.is_sqlite:
                yield session
                return
            raw = session.connection().connection.dbapi_connection
            stop_at = time.monotonic() + deadline_s
            raw.set_progress_handler(lambda: 1 if time.monotonic() > stop_at else 0, 2000)
            try:
                yield session
            except OperationalError as err:
                if "interrupted" in str(err.orig).lower():
                    raise SightlineError(f"The search took longer than {deadline_s:g} s and was stopped.",
                                         hint="Use more specific words, or filter by video or modality.") from None
                raise
            finally:
                raw.set_progress_handler(None, 0)

    # --- paths ----------------------------------------------------------------------------------------------

    def path_of(self, relative: str) -> Path:
        """Absolute path of a file the library stores (thumbnails, caches) from its stored relative name."""
        return self.folder / relative

    def thumbnail_dir(self, video_id: int) -> Path:
        folder = self.folder / "thumbnails" / f"{video_id:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    @property
    def cache_dir(self) -> Path:
        return self.folder / "cache"

    # --- one indexing run at a time ----------------------------------------------------------------------------

    def indexing_holder(self) -> str | None:
        """Who holds the indexing lock now ("process 123, started ..."), or None when no run is alive."""
        return locks.holder(self.folder)

    @contextmanager
    def indexing_lock(self) -> Iterator[None]:
        """Held by one indexing run per library folder, across processes (storage/indexing_lock.py).

        Two runs would scan the same videos into the same frame cache; the second is refused (IndexingBusy),
        naming the process that holds the lock. While it is held this process writes the FAISS files (and no
        other process does); on taking it, files that readers found missing, stale or corrupt are rebuilt.
        """
        with locks.exclusive(self.folder):
            self._reconcile_vectors()
            yield

    @property
    def holds_indexing_lock(self) -> bool:
        """True while this process holds the library's indexing lock: only then are FAISS files written."""
        return locks.held_here(self.folder)

    # --- vectors (FAISS, derived from the embeddings table) ----------------------------------------------------

    def _reconcile_vectors(self) -> None:
        """The lock was just taken: save again every FAISS file that is missing, stale or corrupt (readers
        searched an index rebuilt in memory meanwhile), so readers load a good file from now on."""
        try:
            spaces = set(self.vector_spaces()) | {p.stem for p in (self.folder / "vectors").glob("*.json")}
        except Exception as err:  # noqa: BLE001 - a damaged database: the run meets it and says so
            log.warning("could not bring the vector files of %s up to date: %s", self.folder, err)
            return
        for space in sorted(spaces):  # one space failing leaves the others to be reconciled
            try:
                with self._vectors_lock:
                    store = self._vectors.get(space)
                if store is None:
                    self.vectors(space)  # opening checks the files and, with the lock held, saves a rebuild
                else:
                    store.reconcile()
            except Exception as err:  # noqa: BLE001 - a full disk: the run meets it and says so
                log.warning("could not bring the %s vector files of %s up to date: %s", space, self.folder, err)

    def vectors(self, space: str):
        """The VectorStore of one embedding space, opened (and reconciled with SQLite) on first use."""
        from storage.vectors import VectorStore

        with self._vectors_lock:
            if space not in self._vectors:
                self._vectors[space] = VectorStore.open(self, space)
            return self._vectors[space]

    def rebuild_vectors(self, space: str | None = None) -> dict[str, int]:
        """Rebuild the FAISS index of one space (or of every space) from SQLite; returns {space: vectors}."""
        counts = {}
        for name in [space] if space else self.vector_spaces():
            store = self.vectors(name)
            store.rebuild()
            counts[name] = store.count
        return counts

    def vector_spaces(self) -> list[str]:
        """Embedding spaces present, by a skip-scan of the space index (DISTINCT would read every row)."""
        with self.read() as s:
            rows = s.execute(text(
                "WITH RECURSIVE sp(space) AS (SELECT min(space) FROM embeddings UNION ALL "
                "SELECT (SELECT min(space) FROM embeddings WHERE space > sp.space) FROM sp "
                "WHERE sp.space IS NOT NULL) SELECT space FROM sp WHERE space IS NOT NULL")).all()
        return sorted(r[0] for r in rows)

    # --- small read helpers --------------------------------------------------------------------------------

    def video_by_ref(self, ref: str | int) -> Video:
        """A video by id, path or file name; raises SightlineError naming the known videos when not found."""
        from storage import validate

        ref = validate.video_ref(ref)  # an id as int (ASCII digits only), or text no longer than a path
        with self.read() as s:
            video = s.get(Video, ref) if isinstance(ref, int) else None
            if video is None:
                resolved = str(Path(str(ref)).expanduser().resolve())
                video = s.scalar(select(Video).where(Video.path == resolved))
            if video is None:
                matches = s.scalars(select(Video).where(
                    Video.path.endswith(f"/{Path(str(ref)).name}", autoescape=True))).all()
                if len(matches) == 1:
                    video = matches[0]
            if video is None:
                known = ", ".join(f"{v.id}: {Path(v.path).name}" for v in s.scalars(select(Video)).all()[:20])
                raise SightlineError(f"No video {validate.shown(ref)} in this library.",
                                     hint=f"Known videos: {known}." if known else "Index some videos first.")
            return video

    def moment_count(self, modality: str | None = None) -> int:
        from sqlalchemy import func

        with self.read() as s:
            q = select(func.count(Moment.id))
            if modality:
                q = q.where(Moment.modality == modality)
            return int(s.scalar(q) or 0)

    def sqlite_version(self) -> str:
        with self.engine.connect() as conn:
            return str(conn.execute(text("select sqlite_version()")).scalar()) if self.is_sqlite else "n/a"

    def close(self) -> None:
        for store in self._vectors.values():
            store.close()
        self._writer.shutdown(wait=True)
        self.engine.dispose()

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
