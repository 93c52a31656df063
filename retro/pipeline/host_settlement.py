"""Settlement against the host tables: score a match's pending predictions.

The scoring rule comes in as an argument (the reference pipeline passes the
Kicktipp quota rule, :func:`retro.pipeline.stages.kicktipp`): the store writes,
it does not decide. Settlement is idempotent: only ``pending`` predictions are
written, so settling a match twice changes nothing the second time.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from retro.pipeline.host import select_in
from retro.pipeline.host_rows import (
    MatchNotFound,
    ResultConflict,
    ScoringRule,
    Settlement,
    iso_utc,
)
from retro.store.schema import matches, predictions


async def settle_match(engine: AsyncEngine, settlement: Settlement, rule: ScoringRule) -> int:
    """Score every ``pending`` prediction of one match (see :func:`settle_matches`).

    Returns:
        How many predictions this call scored (0 when all were scored already).

    Raises:
        MatchNotFound: no such match.
        ResultConflict: the match already holds different scores.
    """
    return (await settle_matches(engine, [settlement], rule))[settlement.match_id]


async def settle_matches(
    engine: AsyncEngine, settlements: Iterable[Settlement], rule: ScoringRule
) -> dict[str, int]:
    """Settle matches in one transaction with ``rule`` (the Kicktipp quota rule in practice).

    For each match: a match without scores gets the given scores and status; a
    match whose scores differ is refused. The rule sees every non-void tip
    (pending and scored) so quotas reflect all predictions; only ``pending``
    rows are written (``status='scored'``, the four point columns, ``scored_at``).
    Pending rows without both predicted goals become ``void``. The match's
    ``quota_*`` columns are set. Already-scored rows are never touched, so a
    second run changes nothing.

    Returns:
        Predictions scored, by match id.

    Raises:
        MatchNotFound: a match does not exist (nothing is written).
        ResultConflict: a match holds different scores (nothing is written).
    """
    items = {item.match_id: item for item in settlements}
    if not items:
        return {}
    async with engine.begin() as conn:
        await _record_results(conn, items)
        tips = await select_in(
            conn,
            select(
                predictions.c.match_id,
                predictions.c.id,
                predictions.c.predicted_home,
                predictions.c.predicted_away,
                predictions.c.status,
            )
            .where(predictions.c.status != "void")
            .order_by(predictions.c.match_id, predictions.c.id)
            .with_for_update(),
            predictions.c.match_id,
            list(items),
        )
        by_match: dict[str, list[Any]] = defaultdict(list)
        for row in tips:
            by_match[row.match_id].append(row)
        scored = dict.fromkeys(items, 0)
        updates: list[dict[str, Any]] = []
        voids: list[dict[str, Any]] = []
        quotas: list[dict[str, Any]] = []
        for match_id, rows in by_match.items():
            item = items[match_id]
            if not any(r.status == "pending" for r in rows):
                continue
            stamp = iso_utc(item.scored_at)
            valid = [
                r for r in rows if r.predicted_home is not None and r.predicted_away is not None
            ]
            sheet = rule(
                [(r.predicted_home, r.predicted_away) for r in valid],
                (item.home_score, item.away_score),
            )
            for r, (tp, gd, ex, tot) in zip(valid, sheet.points, strict=True):
                if r.status == "pending":
                    updates.append(
                        {"b_id": r.id, "tp": tp, "gd": gd, "ex": ex, "tot": tot, "at": stamp}
                    )
                    scored[match_id] += 1
            voids.extend(
                {"b_id": r.id, "at": stamp}
                for r in rows
                if r.status == "pending" and (r.predicted_home is None or r.predicted_away is None)
            )
            home, draw, away = sheet.quotas
            quotas.append({"b_id": match_id, "qh": home, "qd": draw, "qa": away})
        pending = (predictions.c.id == bindparam("b_id"), predictions.c.status == "pending")
        if updates:
            await conn.execute(
                update(predictions)
                .where(*pending)
                .values(
                    status="scored",
                    tendency_points=bindparam("tp"),
                    goal_diff_bonus=bindparam("gd"),
                    exact_score_bonus=bindparam("ex"),
                    total_points=bindparam("tot"),
                    scored_at=bindparam("at"),
                ),
                updates,
            )
        if voids:
            await conn.execute(
                update(predictions)
                .where(*pending)
                .values(status="void", scored_at=bindparam("at")),
                voids,
            )
        if quotas:
            await conn.execute(
                update(matches)
                .where(matches.c.id == bindparam("b_id"))
                .values(
                    quota_home=bindparam("qh"),
                    quota_draw=bindparam("qd"),
                    quota_away=bindparam("qa"),
                ),
                quotas,
            )
    return scored


async def _record_results(conn: AsyncConnection, items: Mapping[str, Settlement]) -> None:
    """Check every match exists and agrees with its result; fill in missing scores.

    Raises:
        MatchNotFound: a match does not exist.
        ResultConflict: a match holds different scores.
    """
    found = await select_in(
        conn,
        select(matches.c.id, matches.c.home_score, matches.c.away_score),
        matches.c.id,
        list(items),
    )
    known = {row.id: row for row in found}
    missing = [match_id for match_id in items if match_id not in known]
    if missing:
        raise MatchNotFound(f"match {missing[0]} not found")
    fill: list[dict[str, Any]] = []
    for match_id, item in items.items():
        row = known[match_id]
        if row.home_score is None or row.away_score is None:
            fill.append(
                {"b_id": match_id, "h": item.home_score, "a": item.away_score, "s": item.status}
            )
        elif (row.home_score, row.away_score) != (item.home_score, item.away_score):
            raise ResultConflict(
                f"match {match_id} is {row.home_score}-{row.away_score} in the database, "
                f"settlement says {item.home_score}-{item.away_score}"
            )
    if fill:
        await conn.execute(
            update(matches)
            .where(matches.c.id == bindparam("b_id"))
            .values(home_score=bindparam("h"), away_score=bindparam("a"), status=bindparam("s")),
            fill,
        )
