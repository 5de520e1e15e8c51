"""Aliases: one name for the model that ships (``@champion``), moved on purpose, every move kept.

``aliases`` holds where each name points now; ``alias_moves`` every move (and removal): the run,
the run it left, who (user@host), when, why, and for a gated promotion the comparison it passed.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "aliases",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("run_id", sa.String(64), sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("moved_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "alias_moves",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False, index=True),
        sa.Column("run_id", sa.String(64)),
        sa.Column("previous", sa.String(64)),
        sa.Column("moved_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("moved_by", sa.String(255), nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("comparison", sa.Text),
    )


def downgrade() -> None:
    op.drop_table("alias_moves")
    op.drop_table("aliases")
