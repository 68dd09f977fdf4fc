"""Alembic's entry point: run the revisions on the connection storage.migrations hands over.

`Library.open` passes its write transaction's connection (config.attributes["connection"]); Alembic then opens
no transaction of its own, so the upgrade commits with that transaction. Without one (a developer's tool run
with sqlalchemy.url set), an engine is made from the URL. `render_as_batch`: SQLite cannot ALTER most things,
so autogenerate writes ALTERs as `batch_alter_table` (plain ALTER where SQLite can, a table copy where not).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from storage.migrations import include_name
from storage.models import Base


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True,
                      include_name=include_name)
    with context.begin_transaction():
        context.run_migrations()


def _main() -> None:
    config = context.config
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("storage/migrations/env.py: no connection handed in and no sqlalchemy.url set.")
    if context.is_offline_mode():
        context.configure(url=url, target_metadata=Base.metadata, render_as_batch=True, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            _run(conn)
            conn.commit()
    finally:
        engine.dispose()


_main()
