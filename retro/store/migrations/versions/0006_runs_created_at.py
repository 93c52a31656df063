"""backfill_runs: index on (created_at, id) for ``retro runs`` (issue 11)

``retro runs`` lists runs newest first, a page at a time (``ORDER BY created_at
DESC, id DESC LIMIT n``); this index serves that order read backwards, so a page
reads as many index entries as it shows, however long the log.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_backfill_runs_created_at", "backfill_runs", ["created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_backfill_runs_created_at", "backfill_runs")
