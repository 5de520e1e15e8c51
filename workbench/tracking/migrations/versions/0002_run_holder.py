"""Who holds a run, and how runs started by hand are told apart.

``holder`` and ``heartbeat_at`` let one process at a time execute a run's steps, on any machine
sharing the database; ``launcher`` says whether `workbench run` or a notebook (JupyterLab, plain
papermill, a scheduler's papermill operator) started the run.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # tables created before migrations existed are stamped 0001 whatever their shape: add what lacks
    have = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("runs")}
    new = [
        sa.Column("launcher", sa.String(16)),
        sa.Column("holder", sa.String(128)),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True)),
    ]
    with op.batch_alter_table("runs") as batch:
        for column in new:
            if column.name not in have:
                batch.add_column(column)
    op.execute("UPDATE runs SET launcher = 'notebook' WHERE status = 'interactive'")
    op.execute("UPDATE runs SET launcher = 'workbench' WHERE launcher IS NULL")


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("heartbeat_at")
        batch.drop_column("holder")
        batch.drop_column("launcher")
