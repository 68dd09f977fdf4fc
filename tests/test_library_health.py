"""Database health: a damaged library.db is named (with `sightline repair`) by status, index, search and the UI's
start; repair keeps every readable row and re-indexes what lost rows; a lost database is refused, not reset.

One real library is indexed once (gradio's a.mp4 through app.services.Services, ~70 s: the slow tests) and padded
with 12 storage-built videos of 250 moments each (their own vector space), so that a damaged page loses some rows,
not all; the fast tests use a storage-built library alone. Every test damages its own copy by writing 4 KB of
garbage over a page that SQLite's dbstat names.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from storage.errors import SightlineError
from tests.contracts import assert_search_output
from tests.library_builder import add_video, copy_library

PAGE = 4096
FAKE_VIDEOS, FAKE_MOMENTS = 12, 250

def _add_cameras(lib, count: int = FAKE_VIDEOS, moments: int = FAKE_MOMENTS) -> None:
    for v in range(count):
        add_video(lib, f"/footage/cam{v:02d}.mp4", 600,
                  [(i, i + 1, "speech", f"camera {v} segment {i} the harbour crane lifts container {i}")
                   for i in range(moments)], space="fake")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A storage-built library (no models): 6 cameras of 120 moments with vectors."""
    from storage import Library

    folder = tmp_path_factory.mktemp("built") / "lib"
    with Library.open(folder) as lib:
        _add_cameras(lib, 6, 120)
    return folder


@pytest.fixture
def built_copy(built, tmp_path) -> Path:
    return copy_library(built, tmp_path / "lib")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, card_mp4) -> Path:
    from app.services import Services
    from app.settings import load_settings

    folder = tmp_path_factory.mktemp("health") / "lib"
    services = Services(load_settings({}, library=str(folder)))
    try:
        summary = services.index([str(card_mp4)])
        assert summary.done, summary.describe()
        _add_cameras(services.library)
    finally:
        services.library.close()
    return folder


@pytest.fixture
def lib_copy(pristine, tmp_path) -> Path:
    return copy_library(pristine, tmp_path / "lib")


def _cli(folder: Path, *args: str):
    from app.cli import cli

    return CliRunner().invoke(cli, ["--library", str(folder), *args])


def _pages(db: Path, name: str) -> list[int]:
    with sqlite3.connect(db) as conn:
        return [r[0] for r in conn.execute(
            "SELECT pageno FROM dbstat WHERE name = ? ORDER BY pageno", (name,)).fetchall()]


def _garbage(db: Path, page: int) -> None:
    """4 KB of seeded random bytes over one page; its first byte 0, never a valid b-tree page type."""
    import random

    junk = bytearray(random.Random(page).randbytes(PAGE))
    junk[0] = 0
    with open(db, "r+b") as f:
        f.seek((page - 1) * PAGE)
        f.write(junk)


def _assert_damaged_message(result) -> None:
    assert result.exit_code == 1, result.output
    assert "is damaged" in result.output and "sightline repair" in result.output, result.output
    for leak in ("Internal error", "SELECT", "Traceback", "sqlalche.me"):
        assert leak not in result.output, result.output


def _card_hits(folder: Path) -> list[dict]:
    result = _cli(folder, "search", "thanks for watching", "--json", "--k", "3")
    assert result.exit_code == 0, result.output
    return assert_search_output(result.output)


@pytest.mark.slow
def test_a_damaged_index_page_is_named_by_status_index_search_and_repair_restores_search(lib_copy):
    db = lib_copy / "library.db"
    before = _card_hits(lib_copy)
    assert before and before[0]["video"].endswith("a.mp4")
    _garbage(db, _pages(db, "ix_embeddings_space")[0])  # the root: every vector count reads it

    for args in (("status",), ("index",), ("search", "thanks for watching")):
        _assert_damaged_message(_cli(lib_copy, *args))

    result = _cli(lib_copy, "repair")
    assert result.exit_code == 0, result.output
    assert "Lost: nothing." in result.output, result.output
    assert f"Kept: {FAKE_VIDEOS + 1} videos" in result.output, result.output
    assert list(lib_copy.glob("library.db.broken-*")), os.listdir(lib_copy)
    assert _cli(lib_copy, "status").exit_code == 0
    assert [(h["video"], h["start"]) for h in _card_hits(lib_copy)] == [(h["video"], h["start"]) for h in before]


@pytest.mark.slow
def test_repair_keeps_the_readable_rows_and_reindexes_the_video_that_lost_some(lib_copy):
    from storage import Library
    from storage.catalog import videos
    from storage.repair import repair_library

    db = lib_copy / "library.db"
    with sqlite3.connect(db) as conn:
        total = conn.execute("SELECT count(*) FROM moments").fetchone()[0]
        card = conn.execute("SELECT id, count(*) FROM moments WHERE video_id = 1").fetchone()
    pages = _pages(db, "moments")
    _garbage(db, pages[len(pages) // 2])  # a leaf in the middle: rows of one storage-built camera
    _assert_damaged_message(_cli(lib_copy, "status"))

    damaged_bytes = db.read_bytes()
    report = repair_library(lib_copy)
    text = report.describe()
    assert report.backup.read_bytes() == damaged_bytes  # the old file is kept as it was
    lost = report.unreadable["moments"]
    assert 0 < lost < FAKE_MOMENTS, text
    assert len(report.reindex) in (1, 2) and all("/footage/cam" in p for p in report.reindex), text
    assert report.kept["moments"] + report.cleared + lost == total, text
    assert f"Lost: {lost} moments" in text, text

    with Library.open(lib_copy) as lib:
        lib.check_health()
        rows = {v.path: v for v in videos(lib)}
        assert rows[report.reindex[0]].status == "pending" and rows[report.reindex[0]].moments == 0
        kept_card = [v for v in rows.values() if v.path.endswith("a.mp4")][0]
        assert kept_card.status == "indexed" and (kept_card.id, kept_card.moments) == tuple(card), kept_card
        with sqlite3.connect(db) as conn:
            vectors = dict(conn.execute("SELECT space, count(*) FROM embeddings GROUP BY space").fetchall())
        assert lib.vectors("fake").count == vectors["fake"] == (FAKE_VIDEOS - len(report.reindex)) * FAKE_MOMENTS
        assert lib.vectors("text").count == vectors["text"]
    assert _card_hits(lib_copy)[0]["video"].endswith("a.mp4")
    result = _cli(lib_copy, "search", "harbour crane container", "--k", "3")  # FTS5 refilled by the triggers
    assert result.exit_code == 0 and "/footage/cam" in result.output, result.output


def test_a_garbage_first_page_is_damaged_and_repair_starts_a_fresh_library(built_copy):
    lib_copy = built_copy
    db = lib_copy / "library.db"
    _garbage(db, 1)  # the header: "file is not a database"
    _assert_damaged_message(_cli(lib_copy, "status"))
    result = _cli(lib_copy, "repair")
    assert result.exit_code == 0 and "no row of the old file could be read" in result.output, result.output
    status = _cli(lib_copy, "status")
    assert status.exit_code == 0 and "0 indexed" in status.output, status.output


@pytest.mark.parametrize("how", ["zero-byte", "deleted"])
def test_a_lost_database_is_refused_not_reset(built_copy, how):
    from storage import Library

    lib_copy = built_copy
    db = lib_copy / "library.db"
    if how == "zero-byte":
        db.write_bytes(b"")
    else:
        db.unlink()
    faiss_bytes = (lib_copy / "vectors" / "fake.faiss").read_bytes()
    for args in (("status",), ("search", "harbour crane"), ("index",)):
        result = _cli(lib_copy, *args)
        assert result.exit_code == 1 and "deleted or lost" in result.output, result.output
        assert "sightline repair" in result.output and "backup" in result.output, result.output
    with pytest.raises(SightlineError, match="deleted or lost"):
        Library.open(lib_copy)
    assert (lib_copy / "vectors" / "fake.faiss").read_bytes() == faiss_bytes  # not rebuilt to nothing
    assert db.exists() == (how == "zero-byte")  # nothing made in its place

    result = _cli(lib_copy, "repair")
    assert result.exit_code == 0 and "index your folders again" in result.output, result.output
    assert _cli(lib_copy, "status").exit_code == 0


def test_a_new_empty_folder_still_makes_a_library(tmp_path):
    result = _cli(tmp_path / "brand-new", "status")
    assert result.exit_code == 0 and "0 indexed" in result.output, result.output
    assert (tmp_path / "brand-new" / "library.db").stat().st_size > 0


@pytest.mark.slow
def test_a_folder_in_place_of_the_faiss_file_is_moved_aside_and_rebuilt(lib_copy, card_mp4):
    before = _card_hits(lib_copy)
    faiss_path = lib_copy / "vectors" / "text.faiss"
    faiss_path.unlink()
    faiss_path.mkdir()
    (faiss_path / "keep.txt").write_text("mine")
    assert [(h["video"], h["start"]) for h in _card_hits(lib_copy)] == [(h["video"], h["start"]) for h in before]
    assert faiss_path.is_dir()  # a search holds no indexing lock: it searched an index rebuilt in memory
    result = _cli(lib_copy, "index", str(card_mp4))  # the next indexing run saves the file
    assert result.exit_code == 0, result.output
    assert faiss_path.is_file()
    assert [(h["video"], h["start"]) for h in _card_hits(lib_copy)] == [(h["video"], h["start"]) for h in before]
    aside = list((lib_copy / "vectors").glob("text.faiss.broken-*"))
    assert len(aside) == 1 and (aside[0] / "keep.txt").read_text() == "mine"
    result = _cli(lib_copy, "repair")
    assert result.exit_code == 0 and "nothing to repair" in result.output, result.output


def test_a_damaged_page_fails_reads_and_writes_with_the_repair_message_and_repair_keeps_ids(built_copy):
    from sqlalchemy import func, select

    from storage import Library
    from storage.models import Moment, Video
    from storage.repair import repair_library

    db = built_copy / "library.db"
    with sqlite3.connect(db) as conn:
        ids = {r[0]: r[1] for r in conn.execute("SELECT id, text FROM moments").fetchall()}
    pages = _pages(db, "moments")
    _garbage(db, pages[len(pages) // 3])
    with Library.open(built_copy) as lib:  # the open itself stays cheap: no full check
        with pytest.raises(SightlineError) as err:
            lib.check_health()
        assert "is damaged" in err.value.message and "sightline repair" in err.value.hint
        with pytest.raises(SightlineError, match="is damaged"):
            with lib.read() as s:
                s.execute(select(func.sum(func.length(Moment.text)))).scalar()
        with pytest.raises(SightlineError, match="is damaged"):
            lib.write(lambda s: s.execute(Moment.__table__.update().values(stage="x")))

    report = repair_library(built_copy)
    assert 0 < report.unreadable["moments"] < 120 and len(report.reindex) in (1, 2), report.describe()
    with Library.open(built_copy) as lib:
        lib.check_health()
        with lib.read() as s:
            kept = {m.id: m.text for m in s.scalars(select(Moment)).all()}
            pending = s.scalars(select(Video.path).where(Video.status == "pending")).all()
        assert kept and all(ids[i] == t for i, t in kept.items())  # same ids, same rows
        assert sorted(pending) == sorted(report.reindex)
        assert lib.vectors("fake").count == len(kept)
        assert lib.vectors("fake").rebuilt_on_open is None  # repair (the lock's holder) saved the vector files
    assert _cli(built_copy, "status").exit_code == 0
    assert "nothing to repair" in _cli(built_copy, "repair").output


def test_a_folder_in_place_of_the_faiss_file_or_sidecar_is_rebuilt(built_copy):
    from storage import Library

    for name in ("fake.faiss", "fake.json"):
        path = built_copy / "vectors" / name
        path.unlink()
        path.mkdir()
    with Library.open(built_copy) as lib:
        store = lib.vectors("fake")  # a reader: rebuilt in memory; the folders are left to the lock's holder
        assert store.count == 6 * 120 and store.rebuilt_on_open
        assert (built_copy / "vectors" / "fake.faiss").is_dir() and (built_copy / "vectors" / "fake.json").is_dir()
        with lib.indexing_lock():  # the next indexing run moves them aside and saves the files
            pass
    assert (built_copy / "vectors" / "fake.faiss").is_file() and (built_copy / "vectors" / "fake.json").is_file()
    assert len(list((built_copy / "vectors").glob("fake.*.broken-*"))) == 2
    with Library.open(built_copy) as lib:
        store = lib.vectors("fake")
        assert store.count == 6 * 120 and store.rebuilt_on_open is None


@pytest.mark.slow  # imports gradio (~10 s)
def test_the_ui_start_names_a_damaged_library(built_copy):
    from app.settings import load_settings
    from app.server import create_app

    _garbage(built_copy / "library.db", _pages(built_copy / "library.db", "moments")[0])
    with pytest.raises(SightlineError) as err:
        create_app(load_settings({}, library=str(built_copy)))
    assert "is damaged" in err.value.user_text() and "sightline repair" in err.value.user_text()


def test_a_failed_statement_with_an_unusual_message_runs_the_quick_check(built_copy):
    """SQLite does not always say "malformed": after any failure that is not an ordinary one (locked, full,
    constraint, ...) the file is checked, and only a file that fails the check is called damaged."""
    from storage.library import _quick_check_after

    db = built_copy / "library.db"
    odd = sqlite3.DatabaseError("disk I/O error")
    assert _quick_check_after(odd, str(db)) == ""  # healthy file: the error is passed on as it was
    assert _quick_check_after(sqlite3.OperationalError("database is locked"), str(db)) == ""
    pages = _pages(db, "moments")
    _garbage(db, pages[len(pages) // 2])
    assert _quick_check_after(odd, str(db)) != ""
    assert _quick_check_after(sqlite3.IntegrityError("UNIQUE constraint failed"), str(db)) == ""  # not checked


def test_repair_waits_for_no_indexing_run_and_says_which_holds_the_lock(tmp_path):
    """Repair takes the indexing lock as a run does; another process holding it is named, and nothing changes."""
    import subprocess
    import sys

    from storage import Library
    from storage.repair import repair_library

    folder = tmp_path / "lib"
    with Library.open(folder) as lib:
        add_video(lib, "/videos/a.mp4", 10.0, [(1.0, 2.0, "speech", "hello there")])
    before = (folder / "library.db").read_bytes()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from storage import Library\n"
         "with Library.open(sys.argv[1]) as lib, lib.indexing_lock():\n    print('held', flush=True); time.sleep(60)",
         str(folder)], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SightlineError) as err:
            repair_library(folder)
        assert err.value.message.startswith("Another indexing run is working on this library (process "
                                            f"{holder.pid}, started "), err.value.message
        assert err.value.message.endswith("), so it cannot be repaired now.")
        assert err.value.hint == "Stop it (and the web UI), then run `sightline repair` again."
        assert (folder / "library.db").read_bytes() == before and not list(folder.glob("library.db.broken-*"))
    finally:
        holder.kill()
        holder.wait()
