"""Schema migrations (storage/migrations): a library made by the code before them opens, upgrades and re-runs
only the stages whose output changed; new libraries reach the newest revision; the models never drift from it.

tests/data/old_library/library.db was indexed by main at 634a6b1 (the last code before migrations) from
tests/data/old_library/clip.mp4; that folder's README gives the commands.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from storage import Library, SightlineError
from storage import migrations

OLD = Path(__file__).resolve().parent / "data" / "old_library"
RERUN = ("speech", "screen_text")  # the stages 0002 marks outdated
# Everything SQLite lists for the schema, except Alembic's own table.
SCHEMA_SQL = ("SELECT type, name, tbl_name, sql FROM sqlite_master "
              "WHERE name NOT LIKE '%alembic_version%' ORDER BY type, name")


def _cli(*args: str):
    from app.cli import cli

    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def _rows(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def _revision(lib: Library) -> str | None:
    with lib.engine.connect() as conn:
        return migrations.current_revision(conn)


def _schema_diff(lib: Library) -> list:
    """Alembic autogenerate's differences between the library's schema and storage/models.py."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from storage.models import Base

    with lib.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"include_name": migrations.include_name})
        return compare_metadata(context, Base.metadata)


def _upgrade_to(db: Path, revision: str) -> None:
    from alembic import command
    from sqlalchemy import create_engine

    engine = create_engine(f"sqlite:///{db}")
    try:
        with engine.begin() as conn:
            command.upgrade(migrations.alembic_config(conn, fts5=True), revision)
    finally:
        engine.dispose()


# --- the revisions ------------------------------------------------------------------------------------------------


def test_head_is_the_one_newest_revision():
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(migrations.alembic_config())
    assert script.get_heads() == [migrations.HEAD]  # one line of revisions, and HEAD names its end
    assert [r.revision for r in script.walk_revisions()][-1] == migrations.BASELINE


def test_a_new_library_reaches_head_and_matches_the_models(tmp_path):
    with Library.open(tmp_path / "lib") as lib:
        assert _revision(lib) == migrations.HEAD
        assert lib.has_fts
        assert _schema_diff(lib) == []  # a model change without a revision fails here


def test_the_model_check_sees_a_missing_revision(tmp_path):
    """At the baseline, the comparison reports exactly the three columns 0002 adds: it can fail."""
    _upgrade_to(tmp_path / "x.db", migrations.BASELINE)
    lib = Library(tmp_path, f"sqlite:///{tmp_path / 'x.db'}")  # not .open(): that would upgrade it
    try:
        added = sorted((d[2], d[3].name) for d in _schema_diff(lib))
    finally:
        lib.close()
    assert added == [("moments", "words"), ("videos", "proxy"), ("videos", "rotation")]


def test_the_baseline_is_the_schema_the_old_code_made(tmp_path):
    _upgrade_to(tmp_path / "x.db", migrations.BASELINE)
    made = _rows(tmp_path / "x.db", SCHEMA_SQL)
    assert len(made) == 20  # 5 tables, 7 indexes, FTS5 and its 4 shadow tables, 3 triggers
    assert made == _rows(OLD / "library.db", SCHEMA_SQL)


def test_a_library_from_a_newer_sightline_is_refused_untouched(tmp_path):
    with Library.open(tmp_path / "lib"):
        pass
    db = tmp_path / "lib" / "library.db"
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0999'")
    before = _rows(db, SCHEMA_SQL)
    with pytest.raises(SightlineError, match="newer Sightline") as err:
        Library.open(tmp_path / "lib")
    assert "0999" in str(err.value) and err.value.hint
    assert _rows(db, SCHEMA_SQL) == before and _rows(db, "SELECT * FROM alembic_version") == [("0999",)]


def test_downgrade_to_the_baseline_and_back(tmp_path):
    from alembic import command

    with Library.open(tmp_path / "lib") as lib:
        def down_and_up(session):
            cfg = migrations.alembic_config(session.connection(), lib.has_fts)
            command.downgrade(cfg, migrations.BASELINE)
            columns = {r[1] for r in session.connection().exec_driver_sql("PRAGMA table_info(videos)")}
            command.upgrade(cfg, "head")
            return columns

        columns = lib.write(down_and_up)
        assert "rotation" not in columns and "path" in columns
        assert _revision(lib) == migrations.HEAD and _schema_diff(lib) == []


# --- a library indexed by the old code -----------------------------------------------------------------------------


@pytest.fixture
def old_library(tmp_path) -> tuple[Path, Path]:
    """A copy of the old library pointed at a copy of its clip (the db stores absolute paths)."""
    from indexer.media import fingerprint

    clip = tmp_path / "media" / "clip.mp4"
    clip.parent.mkdir()
    shutil.copy(OLD / "clip.mp4", clip)
    folder = tmp_path / "lib"
    folder.mkdir()
    shutil.copy(OLD / "library.db", folder / "library.db")
    with sqlite3.connect(folder / "library.db") as conn:
        (stored,) = conn.execute("SELECT fingerprint FROM videos").fetchone()
        conn.execute("UPDATE videos SET path = ?", (str(clip.resolve()),))
    assert fingerprint(clip) == stored, "tests/data/old_library/clip.mp4 is not the file the library indexed"
    return folder, clip


@pytest.mark.slow
def test_an_old_library_upgrades_and_reruns_only_the_changed_stages(old_library):
    from storage.search import keyword_ranking

    folder, clip = old_library
    db = folder / "library.db"
    old_videos = _rows(db, "SELECT id, path, fingerprint, duration, status FROM videos")
    old_moments = _rows(db, "SELECT id, video_id, start, \"end\", modality, text, stage FROM moments ORDER BY id")
    old_runs = {r[0]: r for r in _rows(db, "SELECT stage, status, fingerprint, wall_s, media_s, finished_at "
                                           "FROM stage_runs")}
    assert {m[4] for m in old_moments} == {"speech", "visual"} and set(RERUN) <= set(old_runs)

    # Open with this code: upgraded in place, nothing lost, the two stages waiting with their reason.
    with Library.open(folder) as lib:
        assert _revision(lib) == migrations.HEAD and _schema_diff(lib) == []
        # The old speech moments stay searchable (FTS5 triggers intact) until the re-run replaces them.
        dagger = [mid for mid, _ in keyword_ranking(lib, "dagger", 5)]
        assert dagger and all(m[4] == "speech" for m in old_moments if m[0] in dagger)
    assert _rows(db, "SELECT id, path, fingerprint, duration, status FROM videos") == old_videos
    assert _rows(db, "SELECT id, video_id, start, \"end\", modality, text, stage FROM moments ORDER BY id") \
        == old_moments
    assert _rows(db, "SELECT DISTINCT rotation, proxy FROM videos") == [(0, None)]

    report = json.loads(_cli("--library", str(folder), "status", "--json").output)
    video = report["videos"][0]
    assert video["status"] == "indexed" and video["moments"] == len(old_moments)
    assert set(video["reruns"]) == set(RERUN) and video["reruns"]["speech"].startswith("re-runs after the upgrade")
    assert report["reruns"]["stages"] == {"speech": 1, "screen_text": 1}
    assert report["reruns"]["command"] == f"sightline --library {folder} index"
    text = _cli("--library", str(folder), "status").output
    assert "speech re-runs after the upgrade: phrase-level speech with word times" in text
    assert "screen_text re-runs after the upgrade: on-screen text ends exact to one sample" in text
    assert f"run `sightline --library {folder} index`" in text

    # `sightline index` with no PATH: every library video, only its outdated stages.
    out = _cli("--library", str(folder), "index").output
    assert "Indexed 1 file(s)" in out and "0 failed" in out, out
    runs = {r[0]: r for r in _rows(db, "SELECT stage, status, fingerprint, wall_s, media_s, finished_at "
                                       "FROM stage_runs")}
    # Besides the two the upgrade marks, a stage runs again only where this code's signature for it differs
    # from the one stored (probe moved to v2 to record rotation: a metadata read). Never the decode-heavy ones.
    signatures = _signatures(folder)
    changed = {st for st, old in old_runs.items() if old[2].split("|", 1)[1] != signatures[st]} - set(RERUN)
    assert not changed & {"shots", "visual"}, f"an upgrade would re-decode every video: {changed}"
    for stage, old in old_runs.items():
        if stage in RERUN or stage in changed:
            assert runs[stage][1] == old[1] and runs[stage][5] > old[5], (stage, old, runs[stage])
        else:
            assert runs[stage] == old, f"{stage} ran again: {old} -> {runs[stage]}"
    moments = _rows(db, "SELECT id, video_id, start, \"end\", modality, text, stage FROM moments ORDER BY id")
    assert [m for m in moments if m[6] not in RERUN] == [m for m in old_moments if m[6] not in RERUN]
    new_speech = [m for m in moments if m[6] == "speech"]
    assert any("dagger" in m[5] for m in new_speech)
    with Library.open(folder) as lib:
        dagger = [mid for mid, _ in keyword_ranking(lib, "dagger", 5)]
    assert dagger and set(dagger) <= {m[0] for m in new_speech}  # FTS5 follows the replaced rows
    report = json.loads(_cli("--library", str(folder), "status", "--json").output)
    assert report["reruns"] == {"videos": 0, "stages": {}, "command": None}
    assert report["videos"][0]["reruns"] == {} and report["videos"][0]["status"] == "indexed"

    # The re-run wrote phrase-level speech: every moment carries its words' times.
    words = _rows(db, "SELECT words FROM moments WHERE stage = 'speech'")
    speech_stage_writes_words = not signatures["speech"].startswith("v1 ")  # v1: Whisper segments, no words
    if not speech_stage_writes_words:
        pytest.skip("indexer/stages/speech.py does not keep word times yet (signature v1): words not checked")
    assert words and all(w is not None and json.loads(w) for (w,) in words)


def _signatures(folder: Path) -> dict[str, str]:
    """Each stage's signature under this code, with the settings the CLI uses (what the runner compares)."""
    from app.services import Services
    from app.settings import load_settings
    from indexer.stages import DEFAULT_STAGES

    services = Services(load_settings(library=str(folder)))
    try:
        ctx = services.index_context()
        return {st.NAME: st.signature(ctx) for st in DEFAULT_STAGES}
    finally:
        services.library.close()


@pytest.mark.slow
def test_the_ui_reruns_what_an_upgrade_changed_by_itself(old_library):
    """Opening the web UI on an upgraded library re-runs the outdated stages in the background, unasked."""
    import time

    from app.settings import load_settings
    from app.server import create_app
    from storage.catalog import status_report

    folder, clip = old_library
    services, demo, _served = create_app(load_settings({}, library=str(folder), vlm_model="none"))
    try:
        worker = services.index_worker
        deadline = time.time() + 240
        while time.time() < deadline and (worker.busy or worker.pending()):
            time.sleep(0.2)
        report = status_report(services.library)
        assert report["reruns"]["videos"] == 0, report["reruns"]
        assert "Indexed 1 file" in worker.last_message, worker.last_message
        with services.library.read() as s:
            from sqlalchemy import select

            from storage.models import Moment

            words = s.scalars(select(Moment.words).where(Moment.modality == "speech")).all()
        assert words and all(words)  # phrase-level speech, with word times, without a command
    finally:
        services.library.close()
