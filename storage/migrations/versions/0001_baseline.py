"""baseline: the schema `create_all` made before migrations (main at 634a6b1), FTS5 included

Written out table by table, not from storage.models: the models keep changing, this revision never does.
tests/test_migrations.py checks that it makes the same sqlite_master as a library built by that code.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# FTS5 over moments.text, kept in step by triggers (SQLite with FTS5 only; elsewhere search uses LIKE).
FTS_DDL = [
    "CREATE VIRTUAL TABLE IF NOT EXISTS moments_fts USING fts5("
    "text, content='moments', content_rowid='id', tokenize='porter unicode61')",
    "CREATE TRIGGER IF NOT EXISTS moments_ai AFTER INSERT ON moments BEGIN "
    "INSERT INTO moments_fts(rowid, text) VALUES (new.id, new.text); END",
    "CREATE TRIGGER IF NOT EXISTS moments_ad AFTER DELETE ON moments BEGIN "
    "INSERT INTO moments_fts(moments_fts, rowid, text) VALUES ('delete', old.id, old.text); END",
    "CREATE TRIGGER IF NOT EXISTS moments_au AFTER UPDATE OF text ON moments BEGIN "
    "INSERT INTO moments_fts(moments_fts, rowid, text) VALUES ('delete', old.id, old.text); "
    "INSERT INTO moments_fts(rowid, text) VALUES (new.id, new.text); END",
]


def _fts5() -> bool:
    """What the Library decided (it may have turned FTS5 off); asked of SQLite when run without a Library."""
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return False
    decided = op.get_context().config.attributes.get("fts5") if op.get_context().config else None
    if decided is not None:
        return bool(decided)
    return "ENABLE_FTS5" in {r[0] for r in bind.exec_driver_sql("PRAGMA compile_options").all()}


def upgrade() -> None:
    op.create_table(
        "videos",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(), nullable=False),
        sa.Column("fingerprint", sa.String(), nullable=True),
        sa.Column("size", sa.Integer(), nullable=True),
        sa.Column("mtime", sa.Float(), nullable=True),
        sa.Column("duration", sa.Float(), nullable=True),
        sa.Column("fps", sa.Float(), nullable=True),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("has_audio", sa.Boolean(), nullable=True),
        sa.Column("start_time", sa.Float(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("notes", sa.Text(), nullable=True),
        sa.Column("added_at", sa.Float(), nullable=False),
        sa.Column("indexed_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("path"),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("files_total", sa.Integer(), nullable=False),
        sa.Column("files_done", sa.Integer(), nullable=False),
        sa.Column("media_seconds_total", sa.Float(), nullable=False),
        sa.Column("media_seconds_done", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "moments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("video_id", sa.Integer(), nullable=False),
        sa.Column("start", sa.Float(), nullable=False),
        sa.Column("end", sa.Float(), nullable=False),
        sa.Column("modality", sa.String(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("thumbnail", sa.String(), nullable=True),
        sa.Column("stage", sa.String(), nullable=False),
        sa.ForeignKeyConstraint(["video_id"], ["videos.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_moments_video_start", "moments", ["video_id", "start"])
    op.create_index("ix_moments_modality", "moments", ["modality"])
    op.create_table(
        "stage_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("video_id", sa.Integer(), nullable=False),
        sa.Column("stage", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("fingerprint", sa.String(), nullable=True),
        sa.Column("wall_s", sa.Float(), nullable=False),
        sa.Column("media_s", sa.Float(), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("finished_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("video_id", "stage"),
        sa.ForeignKeyConstraint(["video_id"], ["videos.id"], ondelete="CASCADE"),
    )
    op.create_table(
        "embeddings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("moment_id", sa.Integer(), nullable=False),
        sa.Column("space", sa.String(), nullable=False),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("moment_id", "space"),
        sa.ForeignKeyConstraint(["moment_id"], ["moments.id"], ondelete="CASCADE"),
    )
    op.create_index("ix_embeddings_space", "embeddings", ["space", "moment_id", "model"])
    op.create_index("ix_embeddings_moment_id", "embeddings", ["moment_id"])
    if _fts5():
        for ddl in FTS_DDL:
            op.execute(ddl)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for name in ("moments_au", "moments_ad", "moments_ai"):
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
        op.execute("DROP TABLE IF EXISTS moments_fts")
    for table in ("embeddings", "stage_runs", "moments", "jobs", "videos"):
        op.drop_table(table)
