"""backfills and backfill_actions; backfill_runs.backfill_id (issue 11)

A backfill is one named heal: ``retro start`` or a periodic scan that seeded runs.
Runs stored before this revision belong to one backfill, ``legacy`` (label
``before-backfills``), created here when there are such runs: its window is
unknown (NULL), its gap counts are counted from the runs' ``gaps``, and it was
created when its first run was. Their ``RunSeeded`` events carry no
``backfill_id`` and replay with ``legacy`` (:class:`retro.events.RunSeeded`), so
the stored projection still equals the replay (``retro verify``).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from __future__ import annotations

import json
from collections import Counter

import sqlalchemy as sa
from alembic import op

from retro.store.schema import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

LEGACY = "legacy"


def upgrade() -> None:
    op.create_table(
        "backfills",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("label", sa.Text(), nullable=False),
        sa.Column("window_from", UTCDateTime()),
        sa.Column("window_to", UTCDateTime()),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("created_by", sa.Text(), nullable=False),
        sa.Column("options", sa.Text(), nullable=False),
        sa.Column("gap_counts", sa.Text(), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("cancelled_at", UTCDateTime()),
    )
    op.create_index("ix_backfills_label", "backfills", ["label"])
    op.create_index("ix_backfills_created_at", "backfills", ["created_at"])
    op.create_table(
        "backfill_actions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("backfill_id", sa.Text(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("by", sa.Text(), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_backfill_actions_backfill_id", "backfill_actions", ["backfill_id", "id"])
    with op.batch_alter_table("backfill_runs") as batch:
        batch.add_column(sa.Column("backfill_id", sa.Text(), nullable=False, server_default=LEGACY))
    op.create_index("ix_backfill_runs_backfill_id", "backfill_runs", ["backfill_id", "state"])

    runs = sa.table(
        "backfill_runs", sa.column("gaps", sa.Text), sa.column("created_at", UTCDateTime())
    )
    conn = op.get_bind()
    rows = conn.execute(sa.select(runs.c.gaps, runs.c.created_at)).all()
    if not rows:
        return
    kinds = Counter(kind for gaps, _ in rows for kind in gaps.split(",") if kind)
    first = min(created_at for _, created_at in rows)
    op.bulk_insert(
        sa.table(
            "backfills",
            sa.column("id", sa.Text),
            sa.column("label", sa.Text),
            sa.column("created_at", UTCDateTime()),
            sa.column("created_by", sa.Text),
            sa.column("options", sa.Text),
            sa.column("gap_counts", sa.Text),
        ),
        [
            {
                "id": LEGACY,
                "label": "before-backfills",
                "created_at": first,
                "created_by": "migration 0005",
                "options": "{}",
                "gap_counts": json.dumps(dict(sorted(kinds.items()))),
            }
        ],
    )


def downgrade() -> None:
    op.drop_index("ix_backfill_runs_backfill_id", "backfill_runs")
    with op.batch_alter_table("backfill_runs") as batch:
        batch.drop_column("backfill_id")
    op.drop_table("backfill_actions")
    op.drop_table("backfills")
