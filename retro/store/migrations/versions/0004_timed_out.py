"""backfill_runs.timed_out: a timed-out job keeps its run's slot in back-off (issue 10)

The projection gains ``Run.timed_out`` (set by ``PhaseTimedOut``, cleared by the
next ``…Requested`` or a change of state). Existing in-flight runs whose last
verdict was a timeout (step ``failed`` or ``backoff`` and the ``last_error`` that
``PhaseTimedOut`` writes, ``"<phase> job ran longer than <budget> s"``) get it set,
so the stored projection equals the replay of their history (``retro verify``).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_PHASES = {"analyzing": "analysis", "predicting": "predictions", "settling": "settlement"}


def upgrade() -> None:
    with op.batch_alter_table("backfill_runs") as batch:
        batch.add_column(
            sa.Column("timed_out", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    runs = sa.table(
        "backfill_runs",
        sa.column("state", sa.Text),
        sa.column("step", sa.Text),
        sa.column("last_error", sa.Text),
        sa.column("timed_out", sa.Boolean),
    )
    for state, phase in _PHASES.items():
        op.execute(
            runs.update()
            .where(
                runs.c.state == state,
                runs.c.step.in_(["failed", "backoff"]),
                runs.c.last_error.like(f"{phase} job ran longer than % s"),
            )
            .values(timed_out=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("backfill_runs") as batch:
        batch.drop_column("timed_out")
