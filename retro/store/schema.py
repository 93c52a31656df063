"""SQLAlchemy tables: the host pipeline's tables and retro's own two.

The host tables (`models`, `matches`, `match_analysis`, `predictions`) are facts
of the pipeline retro serves (DESIGN §1): their names and columns are kept
exactly. retro only reads them; they are declared here so queries can be built
and the embedded demo can create them. Host deployments may have extra columns;
nothing here selects ``*``.

retro's own tables (`backfill_runs`, the projection, `backfill_events`, the
append-only log, `backfills` with `backfill_actions`, the backfills that
seeded the runs: :mod:`retro.backfill`, and `outbox`, the notifications to send:
:mod:`retro.store.outbox`) live in :data:`retro_metadata` and are created and
migrated by Alembic (``retro db upgrade``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    false,
    text,
    true,
)
from sqlalchemy.types import TypeDecorator

from retro.backfill import LEGACY_BACKFILL_ID

host_metadata = MetaData()
retro_metadata = MetaData()


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC instant on every backend.

    PostgreSQL stores ``timestamptz``; SQLite stores naive UTC text. Values
    going in must be timezone-aware (a naive value raises ``ValueError``);
    values coming out are always aware, in UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: retro stores UTC instants only")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# --- host tables (DESIGN §1) -------------------------------------------------

models = Table(
    "models",
    host_metadata,
    Column("id", Text, primary_key=True),
    Column("provider", Text),
    Column("model_name", Text),
    Column("display_name", Text),
    Column("active", Boolean, nullable=False, server_default=true()),
    Column("auto_disabled", Boolean, nullable=False, server_default=false()),
)

matches = Table(
    "matches",
    host_metadata,
    Column("id", Text, primary_key=True),
    Column("external_id", Text, unique=True),
    Column("competition_id", Text),
    Column("home_team", Text),
    Column("away_team", Text),
    Column("kickoff_time", Text),
    Column("home_score", Integer),
    Column("away_score", Integer),
    Column("status", Text),
    Column("quota_home", Integer),
    Column("quota_draw", Integer),
    Column("quota_away", Integer),
    # Optional, documented host indexes: retro's gap scan uses them when present.
    Index("ix_matches_kickoff_time", "kickoff_time"),
)

match_analysis = Table(
    "match_analysis",
    host_metadata,
    Column("id", Text, primary_key=True),
    Column("match_id", Text, ForeignKey("matches.id"), nullable=False),
    Column("favorite_team_name", Text),
    Column("home_win_pct", Integer),
    Column("draw_pct", Integer),
    Column("away_win_pct", Integer),
    Column("home_form", Text),
    Column("away_form", Text),
    Column("home_goals_avg", Text),
    Column("away_goals_avg", Text),
    Index("ix_match_analysis_match_id", "match_id"),
)

predictions = Table(
    "predictions",
    host_metadata,
    Column("id", Text, primary_key=True),
    Column("match_id", Text, ForeignKey("matches.id"), nullable=False),
    Column("model_id", Text, ForeignKey("models.id"), nullable=False),
    Column("predicted_home", Integer),
    Column("predicted_away", Integer),
    Column("predicted_result", Text),
    Column("tendency_points", Integer),
    Column("goal_diff_bonus", Integer),
    Column("exact_score_bonus", Integer),
    Column("total_points", Integer),
    Column("status", Text, nullable=False, server_default="pending"),
    Column("created_at", Text),
    Column("scored_at", Text),
    UniqueConstraint("match_id", "model_id", name="uq_predictions_match_model"),
)

# --- retro's own tables (DESIGN §3) --------------------------------------------

IN_FLIGHT_SQL = "state IN ('analyzing', 'predicting', 'settling')"
"""Runs between pending and done, as literal SQL: SQLite matches a query to a
partial index only when the query spells the same literal condition."""

backfill_runs = Table(
    "backfill_runs",
    retro_metadata,
    Column("id", Text, primary_key=True),
    Column("match_id", Text, nullable=False),
    Column("state", Text, nullable=False),
    Column("step", Text, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("job_id", Text),
    Column("requested_at", UTCDateTime()),
    Column("adopted_created_at", UTCDateTime()),
    Column("judged_created_at", UTCDateTime()),
    Column("not_before", UTCDateTime()),
    Column("next_check_at", UTCDateTime()),
    Column("gaps", Text, nullable=False),
    Column("found", Integer),
    Column("expected", Integer),
    Column("last_error", Text),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("finished_at", UTCDateTime()),
    Column("version", Integer, nullable=False),
    Column("reenqueues", Integer, nullable=False, server_default="0"),
    Column("timed_out", Boolean, nullable=False, server_default=false()),
    Column("backfill_id", Text, nullable=False, server_default=LEGACY_BACKFILL_ID),
    Index("ix_backfill_runs_next_check_at", "next_check_at"),
    Index("ix_backfill_runs_backfill_id", "backfill_id", "state"),
    # The tick's in-flight lookup reads only these rows, however long the backlog.
    Index(
        "ix_backfill_runs_in_flight",
        "next_check_at",
        sqlite_where=text(IN_FLIGHT_SQL),
        postgresql_where=text(IN_FLIGHT_SQL),
    ),
    Index("ix_backfill_runs_match_id", "match_id", "finished_at"),
    # `retro runs`: newest first, a page at a time (retro.store.listing).
    Index("ix_backfill_runs_created_at", "created_at", "id"),
    # At most one live (unfinished) run per match, even with rival `retro start`s.
    Index(
        "uq_backfill_runs_live_match",
        "match_id",
        unique=True,
        sqlite_where=text("finished_at IS NULL"),
        postgresql_where=text("finished_at IS NULL"),
    ),
)

backfill_events = Table(
    "backfill_events",
    retro_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", Text, nullable=False),
    Column("seq", Integer, nullable=False),
    Column("type", Text, nullable=False),
    Column("data", Text, nullable=False),
    Column("at", UTCDateTime(), nullable=False),
    UniqueConstraint("run_id", "seq", name="uq_backfill_events_run_seq"),
)

backfills = Table(
    "backfills",
    retro_metadata,
    Column("id", Text, primary_key=True),
    Column("label", Text, nullable=False),
    Column("window_from", UTCDateTime()),
    Column("window_to", UTCDateTime()),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("created_by", Text, nullable=False),
    Column("options", Text, nullable=False),  # JSON object
    Column("gap_counts", Text, nullable=False),  # JSON object: gap kind -> matches
    Column("paused", Boolean, nullable=False, server_default=false()),
    Column("cancelled_at", UTCDateTime()),
    Index("ix_backfills_label", "label"),
    Index("ix_backfills_created_at", "created_at"),
)

backfill_actions = Table(
    "backfill_actions",
    retro_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("backfill_id", Text, nullable=False),
    Column("type", Text, nullable=False),
    Column("data", Text, nullable=False),  # JSON object
    Column("by", Text, nullable=False),
    Column("at", UTCDateTime(), nullable=False),
    Index("ix_backfill_actions_backfill_id", "backfill_id", "id"),
)

outbox = Table(
    "outbox",
    retro_metadata,
    # The idempotency key (retro.notification): a second record of one notification
    # is a no-op (INSERT … ON CONFLICT DO NOTHING).
    Column("id", Text, primary_key=True),
    Column("kind", Text, nullable=False),  # run.failed | backfill.finished
    Column("payload", Text, nullable=False),  # JSON object: the webhook's body
    Column("created_at", UTCDateTime(), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    # When the sender may try next (also its claim's lease); NULL once sent or given up.
    Column("next_try_at", UTCDateTime()),
    Column("sent_at", UTCDateTime()),
    Column("last_error", Text),  # one masked line
    Index("ix_outbox_next_try_at", "next_try_at"),
)

HOST_TABLES: tuple[str, ...] = tuple(host_metadata.tables)
RETRO_TABLES: tuple[str, ...] = tuple(retro_metadata.tables)
