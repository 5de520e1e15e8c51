"""Reusing steps across runs, and telling runs apart.

``steps.cache_key`` is the digest of everything that decides a step's result and
``steps.ingredients`` what went into it (JSON), so a later run can reuse a finished step with the
same key and say which ingredient changed when it cannot; ``steps.reused_from`` names the run a
reused step's artifacts came from, and ``steps.reuse_note`` says why the step ran or was reused.
``file_hashes`` remembers a local data file's sha256 by path, size and modification time, so a
large file is not hashed again on every run. ``runs.name``, ``runs.note`` and ``run_tags`` are what
people call their runs by.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("steps") as batch:
        batch.add_column(sa.Column("cache_key", sa.String(64)))
        batch.add_column(sa.Column("ingredients", sa.Text))
        batch.add_column(sa.Column("reused_from", sa.String(64)))
        batch.add_column(sa.Column("reuse_note", sa.Text))
    op.create_index("ix_steps_cache_key", "steps", ["cache_key"])
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("name", sa.String(128)))
        batch.add_column(sa.Column("note", sa.Text))
    op.create_table(
        "run_tags",
        sa.Column("run_id", sa.String(64), sa.ForeignKey("runs.id"), primary_key=True),
        sa.Column("key", sa.String(128), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    op.create_table(
        "file_hashes",
        sa.Column("host", sa.String(255), primary_key=True),
        sa.Column("path", sa.String(1024), primary_key=True),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("mtime_ns", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("file_hashes")
    op.drop_table("run_tags")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("note")
        batch.drop_column("name")
    op.drop_index("ix_steps_cache_key", "steps")
    with op.batch_alter_table("steps") as batch:
        batch.drop_column("reuse_note")
        batch.drop_column("reused_from")
        batch.drop_column("ingredients")
        batch.drop_column("cache_key")
