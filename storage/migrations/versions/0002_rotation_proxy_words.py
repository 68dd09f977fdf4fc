"""videos.rotation and videos.proxy, moments.words; speech and on-screen text re-run on the next index

Schema: three columns (commit 81b754c). Data: the `speech` and `screen_text` marks of every video that were
`done` become `outdated`, with the reason as their message. The runner re-runs any stage whose mark is not
done/skipped, so the next `sightline index` (no PATH: every video of the library) redoes those two stages and
nothing else; `sightline status` shows the reason until then. The old speech moments stay searchable until the
re-run replaces them (re-running a stage replaces only that stage's moments). Speech marks that are `skipped`
(no audio track) stay: the new speech stage would skip those files as well.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

OUTDATED = "outdated"
REASONS = {
    "speech": "re-runs after the upgrade: phrase-level speech with word times",
    "screen_text": "re-runs after the upgrade: on-screen text ends exact to one sample",
}


def upgrade() -> None:
    # batch_alter_table: on SQLite an ADD COLUMN stays a plain ALTER (no table copy, so the FTS5 triggers on
    # moments and the ON DELETE CASCADE rows below videos are never touched). rotation is NOT NULL like the
    # model; the server default fills the rows already there.
    # A library that create_all made from the models of 81b754c (before this revision) has the columns already.
    have = {table: {c["name"] for c in sa.inspect(op.get_bind()).get_columns(table)} for table in ("videos", "moments")}
    with op.batch_alter_table("videos") as batch:
        if "rotation" not in have["videos"]:
            batch.add_column(sa.Column("rotation", sa.Integer(), nullable=False, server_default="0"))
        if "proxy" not in have["videos"]:
            batch.add_column(sa.Column("proxy", sa.String(), nullable=True))
    with op.batch_alter_table("moments") as batch:
        if "words" not in have["moments"]:
            batch.add_column(sa.Column("words", sa.Text(), nullable=True))

    stage_runs = sa.table("stage_runs", sa.column("stage", sa.String), sa.column("status", sa.String),
                          sa.column("message", sa.Text))
    for stage, reason in REASONS.items():
        op.execute(stage_runs.update()
                   .where(stage_runs.c.stage == stage, stage_runs.c.status == "done")
                   .values(status=OUTDATED, message=reason))


def downgrade() -> None:
    # The older code re-runs any mark that is not done/skipped too, so `outdated` marks may stay as they are.
    # Plain DROP COLUMN (SQLite >= 3.35): a batch table copy of moments would drop its FTS5 triggers.
    op.drop_column("moments", "words")
    op.drop_column("videos", "proxy")
    op.drop_column("videos", "rotation")
