"""storage.library: the single writer (BEGIN IMMEDIATE, WAL, busy_timeout), deadlines, database URLs."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from sqlalchemy import select, text

from storage import Library, SightlineError
from storage.models import Moment, Video
from tests.library_builder import add_video, fake_embed

ROOT = Path(__file__).resolve().parents[1]


def _trace(lib: Library) -> list[str]:
    """Record every statement SQLite runs on the pooled connection(s) of this library."""
    statements: list[str] = []
    with lib.engine.connect() as conn:
        conn.connection.dbapi_connection.set_trace_callback(statements.append)
    return statements


def test_writer_takes_the_lock_up_front_in_wal_mode(library):
    statements = _trace(library)
    library.write(lambda s: s.add(Video(path="/videos/a.mp4")))
    assert statements[0] == "BEGIN IMMEDIATE", statements
    assert statements[-1] == "COMMIT", statements
    with library.read() as s:
        conn = s.connection()
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 30_000


def test_a_failing_write_rolls_back(library):
    def bad(s):
        s.add(Video(path="/videos/b.mp4"))
        s.flush()
        raise ValueError("boom")

    with pytest.raises(ValueError):
        library.write(bad)
    with library.read() as s:
        assert s.scalars(select(Video)).all() == []


def test_write_inside_write_is_refused(library):
    with pytest.raises(RuntimeError, match="inside a write"):
        library.write(lambda s: library.write(lambda s2: None))


_WRITER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from storage import Library
    from storage.models import Moment, Video
    lib = Library.open({folder!r})
    vid = lib.write(lambda s: s.get(Video, 1).id)
    def one(s, i):
        s.add(Moment(video_id=vid, start=i, end=i + 1, modality="speech", text=f"{{sys.argv[1]}} {{i}}", stage="t"))
        s.flush()
        time.sleep(0.005)  # hold the write lock a moment so the two processes really overlap
    start = float(sys.argv[2])
    while time.time() < start:
        time.sleep(0.005)
    for i in range(20):
        lib.write(lambda s: one(s, i))
    lib.close()
""")


def test_two_processes_write_at_once_without_database_is_locked(tmp_path):
    folder = tmp_path / "lib"
    lib = Library.open(folder)
    lib.write(lambda s: s.add(Video(path="/videos/shared.mp4")))
    script = tmp_path / "writer.py"
    script.write_text(_WRITER.format(root=str(ROOT), folder=str(folder)))
    start = time.time() + 2.0  # both processes begin writing at the same instant
    procs = [subprocess.Popen([sys.executable, str(script), name, str(start)], stderr=subprocess.PIPE, text=True)
             for name in ("left", "right")]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    assert not any("locked" in e for e in errors), errors
    with lib.read() as s:
        texts = s.scalars(select(Moment.text)).all()
    assert len(texts) == 40 and {t.split()[0] for t in texts} == {"left", "right"}
    lib.close()


def test_read_deadline_stops_a_runaway_query_with_a_message(library):
    forever = text("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c")
    t0 = time.monotonic()
    with pytest.raises(SightlineError, match="longer than 0.2 s") as err:
        with library.read(deadline_s=0.2) as s:
            s.execute(forever).scalar()
    assert time.monotonic() - t0 < 5
    assert "filter" in err.value.hint
    with library.read() as s:  # the handler is gone: the same pooled connection still runs queries
        assert s.execute(text("SELECT 1")).scalar() == 1


def test_search_past_its_deadline_raises_sightline_error(library):
    from storage.search import search

    add_video(library, "/videos/a.mp4", 10, [(0, 1, "speech", "hello there")])
    with pytest.raises(SightlineError, match="took longer"):
        search(library, "hello", fake_embed, deadline_s=0)


@pytest.mark.parametrize("form", ["sqlite+pysqlite:///{folder}/other.db", "sqlite:///file:{folder}/uri.db?uri=true",
                                  "sqlite://"])
def test_other_sqlite_url_forms_work_with_fts(tmp_path, form):
    from storage.search import search

    url = form.format(folder=tmp_path)
    lib = Library.open(tmp_path / "lib", url)
    try:
        assert lib.is_sqlite and lib.has_fts
        add_video(lib, "/videos/a.mp4", 10, [(0, 1, "speech", "the red bicycle"), (2, 3, "text", "EXIT")])
        hits = search(lib, "bicycle", fake_embed, k=3)
        assert hits[0].text == "the red bicycle" and hits[0].sources.get("keyword") == 1
        if "pysqlite" in form:
            assert (tmp_path / "other.db").exists() and not (tmp_path / "lib" / "library.db").exists()
    finally:
        lib.close()


def test_without_fts5_keyword_search_falls_back_to_like_and_never_touches_fts(tmp_path, monkeypatch):
    """What a non-SQLite database gets: no FTS5 DDL, no FTS5 query, LIKE ranking by words matched."""
    import storage.library
    from storage.search import keyword_ranking, search

    monkeypatch.setattr(storage.library, "_fts5_available", lambda engine: False)
    lib = Library.open(tmp_path / "lib")
    try:
        statements = _trace(lib)
        _, ids = add_video(lib, "/videos/a.mp4", 10, [(0, 1, "speech", "a red car"), (1, 2, "speech", "red car red"),
                                                      (2, 3, "speech", "blue 100%_sure"), (3, 4, "text", "car")])
        ranked = keyword_ranking(lib, "red car", 10)
        assert [i for i, _ in ranked][:2] == ids[:2] and set(i for i, _ in ranked) == {ids[0], ids[1], ids[3]}
        assert [i for i, _ in keyword_ranking(lib, "_", 10)] == [ids[2]]  # LIKE wildcards are escaped
        hits = search(lib, "car", fake_embed, modalities=["text"])
        assert [h.moment_id for h in hits] == [ids[3]]
        with lib.read() as s:
            tables = s.execute(text("SELECT name FROM sqlite_master")).scalars().all()
        assert not any("fts" in t for t in tables), tables
        assert not any("fts" in st.lower() for st in statements), [st for st in statements if "fts" in st.lower()]
    finally:
        lib.close()


def test_bad_database_url_is_a_clear_error(tmp_path):
    with pytest.raises(SightlineError, match="database URL"):
        Library.open(tmp_path / "lib", "not a url")
    with pytest.raises(SightlineError, match="Cannot open the database"):
        Library.open(tmp_path / "lib2", "nosuchdialect://x/y")


def test_not_a_database_file_is_a_clear_error(tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "library.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(SightlineError, match="is damaged \\(file is not a database\\)") as err:
        Library.open(tmp_path / "lib")
    assert "sightline repair" in err.value.hint


def test_unknown_video_lists_the_known_ones(library):
    add_video(library, "/videos/one_1.mp4", 5, [])
    add_video(library, "/videos/two.mp4", 5, [])
    assert library.video_by_ref("two.mp4").path == "/videos/two.mp4"
    assert library.video_by_ref("1").path == "/videos/one_1.mp4"
    with pytest.raises(SightlineError) as err:
        library.video_by_ref("one%1.mp4")  # LIKE wildcards in names match nothing by accident
    assert "1: one_1.mp4" in err.value.hint and "2: two.mp4" in err.value.hint


def test_deleting_a_video_removes_its_moments_from_fts(library):
    from storage.search import keyword_ranking

    vid, ids = add_video(library, "/videos/a.mp4", 5, [(0, 1, "speech", "zebra crossing")])
    assert [i for i, _ in keyword_ranking(library, "zebra", 5)] == ids
    library.write(lambda s: s.delete(s.get(Video, vid)))
    assert keyword_ranking(library, "zebra", 5) == []
    with library.read() as s:
        assert s.scalars(select(Moment)).all() == []
