"""The library folder: SQLite (or any SQLAlchemy URL), FAISS vectors, thumbnails and caches.

One writer, many readers: every write goes through `Library.write(fn)`, which runs `fn(session)` on a single
writer thread in one `BEGIN IMMEDIATE` transaction. Reads use their own sessions (`Library.read()`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from sqlalchemy import create_engine, event, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from storage.errors import SightlineError
from storage.models import Base, Moment, Video

T = TypeVar("T")

DB_NAME = "library.db"

# FTS5 over moments.text, kept in step by triggers (SQLite only; other databases fall back to LIKE).
_FTS_DDL = [
    "CREATE VIRTUAL TABLE IF NOT EXISTS moments_fts USING fts5("
    "text, content='moments', content_rowid='id', tokenize='porter unicode61')",
    "CREATE TRIGGER IF NOT EXISTS moments_ai AFTER INSERT ON moments BEGIN "
    "INSERT INTO moments_fts(rowid, text) VALUES (new.id, new.text); END",
    "CREATE TRIGGER IF NOT EXISTS moments_ad AFTER DELETE ON moments BEGIN "
    "INSERT INTO moments_fts(moments_fts, rowid, text) VALUES ('delete', old.id, old.text); END",
    "CREATE TRIGGER IF NOT EXISTS moments_au AFTER UPDATE ON moments BEGIN "
    "INSERT INTO moments_fts(moments_fts, rowid, text) VALUES ('delete', old.id, old.text); "
    "INSERT INTO moments_fts(rowid, text) VALUES (new.id, new.text); END",
]


def _sqlite_engine(url: str) -> Engine:
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (see _on_begin)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        # Writers take the lock up front so two writers never deadlock on an upgrade.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.get("writer") else "BEGIN")

    return engine


class Library:
    """An open library folder. Create with `Library.open(folder)`; close with `close()`."""

    def __init__(self, folder: Path, url: str | None = None):
        self.folder = Path(folder).expanduser().resolve()
        self.url = url or f"sqlite:///{self.folder / DB_NAME}"
        self.is_sqlite = self.url.startswith("sqlite")
        self.engine = _sqlite_engine(self.url) if self.is_sqlite else create_engine(self.url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sightline-writer")
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
        lib = cls(folder, url)
        lib._create_schema()
        return lib

    def _create_schema(self) -> None:
        Base.metadata.create_all(self.engine)
        if self.is_sqlite:
            with self.engine.begin() as conn:
                for ddl in _FTS_DDL:
                    conn.exec_driver_sql(ddl)

    # --- sessions -------------------------------------------------------------------------------------------

    def write(self, fn: Callable[[Session], T]) -> T:
        """Run fn in one transaction on the writer thread; return its result."""
        return self._writer.submit(self._in_transaction, fn).result()

    def _in_transaction(self, fn: Callable[[Session], T]) -> T:
        with self.engine.connect() as conn:
            conn.info["writer"] = True
            try:
                with Session(bind=conn, expire_on_commit=False) as session, session.begin():
                    return fn(session)
            finally:
                conn.info.pop("writer", None)

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for reading; never commit in it."""
        with self._sessions() as session:
            yield session

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

    # --- vectors (FAISS, derived from the embeddings table) ----------------------------------------------------

    def vectors(self, space: str):
        """The VectorStore of one embedding space, opened (and reconciled with SQLite) on first use."""
        from storage.vectors import VectorStore

        with self._vectors_lock:
            if space not in self._vectors:
                self._vectors[space] = VectorStore.open(self, space)
            return self._vectors[space]

    def vector_spaces(self) -> list[str]:
        from storage.models import Embedding

        with self.read() as s:
            return sorted(s.scalars(select(Embedding.space).distinct()).all())

    # --- small read helpers --------------------------------------------------------------------------------

    def video_by_ref(self, ref: str | int) -> Video:
        """A video by id, path or file name; raises SightlineError naming the known videos when not found."""
        with self.read() as s:
            video = None
            if isinstance(ref, int) or str(ref).isdigit():
                video = s.get(Video, int(ref))
            if video is None:
                resolved = str(Path(str(ref)).expanduser().resolve())
                video = s.scalar(select(Video).where(Video.path == resolved))
            if video is None:
                matches = s.scalars(select(Video).where(Video.path.like(f"%/{Path(str(ref)).name}"))).all()
                if len(matches) == 1:
                    video = matches[0]
            if video is None:
                known = ", ".join(f"{v.id}: {Path(v.path).name}" for v in s.scalars(select(Video)).all()[:20])
                raise SightlineError(f"No video {ref!r} in this library.",
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
