"""SQL against the host pipeline's tables, for the reference workers and the demo.

retro itself only reads the host tables (DESIGN §1); the functions here that
write them exist for the reference pipeline (:mod:`retro.pipeline`) and the
embedded demo, which stand in for the host's own workers. Every write is
idempotent: an analysis has the id ``analysis-{match_id}``, a prediction the id
``pred-{match_id}-{model_id}`` and at most one row per (match, model), and
settlement touches ``pending`` predictions only.

``pipeline_job_log`` (in :data:`pipeline_metadata`, not a host table) is the
reference workers' journal: one row per job execution, so tests can prove that
no enqueue ``(job_id, job_timestamp)`` ran twice.

The row types, errors and instant helpers live in :mod:`retro.pipeline.host_rows`
(no SQLAlchemy there), settlement in :mod:`retro.pipeline.host_settlement`, the
other queries here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields
from datetime import datetime
from typing import Any, TypeAlias

from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    Integer,
    MetaData,
    Select,
    Table,
    Text,
    bindparam,
    case,
    false,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from retro.pipeline.host_rows import (
    SETTLED_STATUSES,
    AnalysisRow,
    JobLogEntry,
    LeaderboardRow,
    MatchRow,
    ModelRow,
    NewPrediction,
    PlayedMatch,
    PredictionRow,
    iso_utc,
    parse_instant,
)
from retro.store.schema import host_metadata, match_analysis, matches, models, predictions

HostEngine: TypeAlias = AsyncEngine
"""The engine type, re-exported so code outside :mod:`retro.store` need not import SQLAlchemy."""

pipeline_metadata = MetaData()

pipeline_job_log = Table(
    "pipeline_job_log",
    pipeline_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("queue", Text, nullable=False),
    Column("job_name", Text, nullable=False),
    Column("job_id", Text, nullable=False),
    Column("job_timestamp", BigInteger, nullable=False),
    Column("match_id", Text),
    Column("attempts_made", Integer, nullable=False),
    Column("started_at", Text, nullable=False),
    Column("outcome", Text, nullable=False),
)


# --- schema ------------------------------------------------------------------------


async def create_host_tables(engine: AsyncEngine) -> None:
    """Create the host tables and ``pipeline_job_log`` where missing (demo, tests)."""
    async with engine.begin() as conn:
        await conn.run_sync(host_metadata.create_all)
        await conn.run_sync(pipeline_metadata.create_all)


async def create_journal(engine: AsyncEngine) -> None:
    """Create only ``pipeline_job_log`` where missing (the reference workers' own table)."""
    async with engine.begin() as conn:
        await conn.run_sync(pipeline_metadata.create_all)


def _columns(table: Table, row_type: type[Any]) -> list[ColumnElement[Any]]:
    """``table``'s columns named like ``row_type``'s dataclass fields, in field order."""
    return [table.c[f.name] for f in fields(row_type)]


def _insert_ignore(conn: AsyncConnection, table: Table, keys: Sequence[str] = ()) -> Any:
    """``INSERT … ON CONFLICT [(keys)] DO NOTHING`` in the connection's dialect.

    Without ``keys`` a conflict on any unique constraint is ignored.
    """
    index_elements = list(keys) or None
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=index_elements)
    return sqlite.insert(table).on_conflict_do_nothing(index_elements=index_elements)


async def select_in(
    conn: AsyncConnection, stmt: Select[Any], column: ColumnElement[Any], keys: Sequence[str]
) -> list[Any]:
    """Rows of ``stmt`` restricted to ``column IN keys``, 500 keys per query."""
    rows: list[Any] = []
    for start in range(0, len(keys), 500):
        chunk = keys[start : start + 500]
        rows.extend((await conn.execute(stmt.where(column.in_(chunk)))).all())
    return rows


# --- models and matches ------------------------------------------------------------------


async def insert_models(engine: AsyncEngine, rows: Iterable[ModelRow]) -> int:
    """Insert ``models`` rows, skipping ids that exist. Returns how many were new."""
    values = [vars(row) for row in rows]
    if not values:
        return 0
    async with engine.begin() as conn:
        stmt = _insert_ignore(conn, models, ["id"]).returning(models.c.id)
        return len((await conn.execute(stmt, values)).all())


async def active_models(engine: AsyncEngine) -> list[ModelRow]:
    """Models with ``active AND NOT auto_disabled``, by id: the ones expected to predict."""
    stmt = (
        select(*_columns(models, ModelRow))
        .where(
            models.c.active,
            or_(models.c.auto_disabled.is_(None), models.c.auto_disabled == false()),
        )
        .order_by(models.c.id)
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    return [
        ModelRow(**{**r._asdict(), "active": True, "auto_disabled": bool(r.auto_disabled)})
        for r in rows
    ]


async def insert_matches(engine: AsyncEngine, rows: Iterable[MatchRow]) -> int:
    """Insert ``matches`` rows in one transaction, skipping ids that exist.

    Returns:
        How many rows were new.
    """
    values = [vars(row) for row in rows]
    if not values:
        return 0
    async with engine.begin() as conn:
        stmt = _insert_ignore(conn, matches, ["id"]).returning(matches.c.id)
        return len((await conn.execute(stmt, values)).all())


_MATCH_COLUMNS = _columns(matches, MatchRow)


async def get_match(engine: AsyncEngine, match_id: str) -> MatchRow | None:
    """The ``matches`` row ``match_id``, or None."""
    async with engine.connect() as conn:
        row = (await conn.execute(select(*_MATCH_COLUMNS).where(matches.c.id == match_id))).first()
    return None if row is None else MatchRow(**row._asdict())


async def team_history(
    engine: AsyncEngine, teams: Iterable[str], *, before: datetime
) -> list[PlayedMatch]:
    """Played matches of any of ``teams`` that kicked off strictly before ``before``.

    Played means status ``finished`` or ``awarded`` with both scores set. Rows
    whose ``kickoff_time`` does not parse are skipped. Sorted by kick-off.

    Args:
        engine: the host database.
        teams: team names, as in ``matches.home_team``/``away_team``.
        before: an aware instant; later and equal kick-offs are left out.
    """
    names = sorted(set(teams))
    stmt = select(*_MATCH_COLUMNS).where(
        or_(matches.c.home_team.in_(names), matches.c.away_team.in_(names)),
        matches.c.status.in_(SETTLED_STATUSES),
        matches.c.home_score.is_not(None),
        matches.c.away_score.is_not(None),
    )
    async with engine.connect() as conn:
        rows = [MatchRow(**r._asdict()) for r in (await conn.execute(stmt)).all()]
    played: list[PlayedMatch] = []
    for row in rows:
        try:
            kickoff = row.kickoff
        except ValueError:
            continue
        if kickoff < before and row.home_score is not None and row.away_score is not None:
            played.append(
                PlayedMatch(row.home_team, row.away_team, kickoff, row.home_score, row.away_score)
            )
    played.sort(key=lambda m: (m.kickoff, m.home_team))
    return played


# --- analysis --------------------------------------------------------------------------


async def get_analysis(engine: AsyncEngine, match_id: str) -> AnalysisRow | None:
    """The match's analysis, preferring a row with a favourite; None when there is none."""
    stmt = (
        select(*_columns(match_analysis, AnalysisRow))
        .where(match_analysis.c.match_id == match_id)
        .order_by(case((match_analysis.c.favorite_team_name.is_(None), 1), else_=0))
        .limit(1)
    )
    async with engine.connect() as conn:
        row = (await conn.execute(stmt)).first()
    return None if row is None else AnalysisRow(**row._asdict())


async def upsert_analyses(engine: AsyncEngine, rows: Iterable[AnalysisRow]) -> int:
    """Write analyses in one transaction; returns how many matches were written.

    A match that already has analysis rows (whatever their ids) has them all
    updated in place; otherwise a row ``analysis-{match_id}`` is inserted. Running
    it twice leaves one row per match with the same values.
    """
    items = list(rows)
    if not items:
        return 0
    async with engine.begin() as conn:
        ids = sorted({a.match_id for a in items})
        present: set[str] = set()
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            stmt = select(match_analysis.c.match_id).where(match_analysis.c.match_id.in_(chunk))
            present.update((await conn.execute(stmt)).scalars())
        fresh = [{"id": a.id, **vars(a)} for a in items if a.match_id not in present]
        stale = [
            {"b_match_id": a.match_id, **{k: v for k, v in vars(a).items() if k != "match_id"}}
            for a in items
            if a.match_id in present
        ]
        if fresh:
            await conn.execute(_insert_ignore(conn, match_analysis, ["id"]), fresh)
        if stale:
            bulk_update = (
                update(match_analysis)
                .where(match_analysis.c.match_id == bindparam("b_match_id"))
                .values(
                    {c.name: bindparam(c.name) for c in _columns(match_analysis, AnalysisRow)[1:]}
                )
            )
            await conn.execute(bulk_update, stale)
    return len(items)


async def upsert_analysis(engine: AsyncEngine, row: AnalysisRow) -> None:
    """Write one match's analysis idempotently (see :func:`upsert_analyses`)."""
    await upsert_analyses(engine, [row])


# --- predictions ------------------------------------------------------------------------


async def predicted_model_ids(engine: AsyncEngine, match_id: str) -> set[str]:
    """Ids of the models that have a prediction (any status) for ``match_id``."""
    stmt = select(predictions.c.model_id).where(predictions.c.match_id == match_id)
    async with engine.connect() as conn:
        return set((await conn.execute(stmt)).scalars())


async def insert_predictions(engine: AsyncEngine, rows: Iterable[NewPrediction]) -> int:
    """Insert ``pending`` predictions in one transaction, skipping (match, model) pairs that exist.

    Rows already present are filtered out first (without ``RETURNING``, which
    makes bulk inserts slow on PostgreSQL); ``ON CONFLICT DO NOTHING`` covers a
    concurrent writer.

    Returns:
        How many rows were inserted (a concurrent writer's duplicates, skipped
        by the conflict clause, would be counted too).
    """
    values: list[dict[str, Any]] = [
        {
            "id": p.id,
            "match_id": p.match_id,
            "model_id": p.model_id,
            "predicted_home": p.predicted_home,
            "predicted_away": p.predicted_away,
            "predicted_result": p.predicted_result,
            "status": "pending",
            "created_at": iso_utc(p.created_at),
        }
        for p in rows
    ]
    if not values:
        return 0
    async with engine.begin() as conn:
        present = await select_in(
            conn,
            select(predictions.c.match_id, predictions.c.model_id),
            predictions.c.match_id,
            sorted({v["match_id"] for v in values}),
        )
        taken = {(r.match_id, r.model_id) for r in present}
        fresh = [v for v in values if (v["match_id"], v["model_id"]) not in taken]
        if fresh:
            await conn.execute(_insert_ignore(conn, predictions), fresh)
    return len(fresh)


_PREDICTION_COLUMNS = _columns(predictions, PredictionRow)


async def match_predictions(engine: AsyncEngine, match_id: str) -> list[PredictionRow]:
    """Every prediction of ``match_id``, by model id."""
    stmt = (
        select(*_PREDICTION_COLUMNS)
        .where(predictions.c.match_id == match_id)
        .order_by(predictions.c.model_id)
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    return [PredictionRow(**r._asdict()) for r in rows]


# --- reports -------------------------------------------------------------------------


async def leaderboard(engine: AsyncEngine) -> list[LeaderboardRow]:
    """Every model's scored predictions, total points and exact scores, best first."""
    scored = predictions.c.status == "scored"
    points = func.coalesce(func.sum(case((scored, predictions.c.total_points), else_=0)), 0)
    stmt = (
        select(
            models.c.id,
            models.c.display_name,
            func.count(predictions.c.id).filter(scored).label("scored"),
            points.label("points"),
            func.count(predictions.c.id).filter(scored, predictions.c.exact_score_bonus > 0),
        )
        .select_from(models.outerjoin(predictions, predictions.c.model_id == models.c.id))
        .group_by(models.c.id, models.c.display_name)
        .order_by(points.desc(), models.c.id)
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    return [LeaderboardRow(r[0], r[1] or r[0], int(r[2]), int(r[3]), int(r[4])) for r in rows]


# --- the reference workers' journal -------------------------------------------------------


async def log_job(engine: AsyncEngine, entry: JobLogEntry) -> None:
    """Append one execution to ``pipeline_job_log``."""
    values: Mapping[str, Any] = {**vars(entry), "started_at": iso_utc(entry.started_at)}
    async with engine.begin() as conn:
        await conn.execute(pipeline_job_log.insert().values(**values))


async def job_log(engine: AsyncEngine, *, match_id: str | None = None) -> list[JobLogEntry]:
    """The journal in execution order, optionally for one match."""
    stmt = select(*_columns(pipeline_job_log, JobLogEntry)).order_by(pipeline_job_log.c.id)
    if match_id is not None:
        stmt = stmt.where(pipeline_job_log.c.match_id == match_id)
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    return [JobLogEntry(**{**r._asdict(), "started_at": parse_instant(r.started_at)}) for r in rows]
