"""backfill_runs.reenqueues: re-adds of a lost job in a row (issue 9)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("backfill_runs") as batch:
        batch.add_column(sa.Column("reenqueues", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("backfill_runs") as batch:
        batch.drop_column("reenqueues")
