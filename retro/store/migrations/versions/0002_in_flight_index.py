"""partial index over in-flight runs: the tick does not scan the backlog

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

IN_FLIGHT_SQL = "state IN ('analyzing', 'predicting', 'settling')"


def upgrade() -> None:
    op.create_index(
        "ix_backfill_runs_in_flight",
        "backfill_runs",
        ["next_check_at"],
        sqlite_where=sa.text(IN_FLIGHT_SQL),
        postgresql_where=sa.text(IN_FLIGHT_SQL),
    )


def downgrade() -> None:
    op.drop_index("ix_backfill_runs_in_flight", table_name="backfill_runs")
