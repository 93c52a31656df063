"""backfill_runs (projection) and backfill_events (log)

Revision ID: 0001
Revises:
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from retro.store.schema import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "backfill_runs",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("match_id", sa.Text(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("step", sa.Text(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Text()),
        sa.Column("requested_at", UTCDateTime()),
        sa.Column("adopted_created_at", UTCDateTime()),
        sa.Column("judged_created_at", UTCDateTime()),
        sa.Column("not_before", UTCDateTime()),
        sa.Column("next_check_at", UTCDateTime()),
        sa.Column("gaps", sa.Text(), nullable=False),
        sa.Column("found", sa.Integer()),
        sa.Column("expected", sa.Integer()),
        sa.Column("last_error", sa.Text()),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("finished_at", UTCDateTime()),
        sa.Column("version", sa.Integer(), nullable=False),
    )
    op.create_index("ix_backfill_runs_next_check_at", "backfill_runs", ["next_check_at"])
    op.create_index("ix_backfill_runs_match_id", "backfill_runs", ["match_id", "finished_at"])
    op.create_index(
        "uq_backfill_runs_live_match",
        "backfill_runs",
        ["match_id"],
        unique=True,
        sqlite_where=sa.text("finished_at IS NULL"),
        postgresql_where=sa.text("finished_at IS NULL"),
    )
    op.create_table(
        "backfill_events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("run_id", "seq", name="uq_backfill_events_run_seq"),
    )


def downgrade() -> None:
    op.drop_table("backfill_events")
    op.drop_table("backfill_runs")
