"""outbox: notifications recorded with the event that causes them (issue 11)

One row per webhook notification (``notify_url``): ``id`` is its idempotency key,
``payload`` the JSON body, ``next_try_at`` when the daemon's sender may try it
(NULL once sent or given up). Nothing existing is changed.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from retro.store.schema import UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "outbox",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("next_try_at", UTCDateTime()),
        sa.Column("sent_at", UTCDateTime()),
        sa.Column("last_error", sa.Text()),
    )
    op.create_index("ix_outbox_next_try_at", "outbox", ["next_try_at"])


def downgrade() -> None:
    op.drop_index("ix_outbox_next_try_at", "outbox")
    op.drop_table("outbox")
