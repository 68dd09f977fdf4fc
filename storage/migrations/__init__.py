"""Schema migrations (Alembic), run by `Library.open` inside the library's single-writer transaction.

A new library is made by running every revision from the first; a library made before migrations existed (by
`create_all`: it has a `videos` table but no `alembic_version`) is stamped at the baseline first, then upgraded.
A library at a revision this code does not know was upgraded by a newer Sightline and is refused.

No alembic.ini: the Config is built here with `script_location` pointing into this package, and the Library's
own connection (already inside its write transaction) is handed to env.py, so the whole upgrade commits or rolls
back as one, on SQLite and on any SQLAlchemy URL. To write a new revision after changing storage/models.py:

    python -m storage.migrations revision -m "what changed"   # autogenerates against a scratch library

then read the file it writes (render_as_batch is on: SQLite ALTERs go through batch_alter_table) and add data
steps by hand. tests/test_migrations.py fails while the models and the migrated schema differ.
"""

from __future__ import annotations

from pathlib import Path

from storage.errors import SightlineError

HEAD = "0002"  # the newest revision in versions/; tests/test_migrations.py checks it against the scripts
BASELINE = "0001"  # the schema `create_all` made before migrations existed
FOLDER = Path(__file__).resolve().parent
FTS_PREFIX = "moments_fts"  # the FTS5 table and its shadow tables: SQLite's, not the models'


def alembic_config(connection=None, fts5: bool | None = None, url: str | None = None):
    """An Alembic Config pointing at this package; `connection` is used as is (no engine of its own)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(FOLDER))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["connection"] = connection
    cfg.attributes["fts5"] = fts5  # None: the baseline asks SQLite itself
    return cfg


def include_name(name: str | None, type_: str, parent_names: dict) -> bool:
    """Autogenerate compares the models' tables only: not FTS5's virtual and shadow tables."""
    return not (type_ == "table" and name is not None and name.startswith(FTS_PREFIX))


def current_revision(connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


def upgrade(connection, fts5: bool) -> str | None:
    """Bring the schema on `connection` (inside a write transaction) to HEAD; return the revision it was at."""
    from alembic import command
    from alembic.script import ScriptDirectory
    from sqlalchemy import inspect

    cfg = alembic_config(connection, fts5)
    script = ScriptDirectory.from_config(cfg)
    was = current_revision(connection)
    if was is None and inspect(connection).has_table("videos"):
        command.stamp(cfg, BASELINE)  # made by create_all before migrations: that schema is the baseline
        was = BASELINE
    known = {rev.revision for rev in script.walk_revisions()}
    if was is not None and was not in known:
        raise SightlineError(
            f"This library's database was upgraded by a newer Sightline (schema revision {was}; this version "
            f"knows up to {script.get_current_head()}).",
            hint="Use the newer Sightline that upgraded it (update this install), or open another --library.")
    command.upgrade(cfg, "head")
    return was
