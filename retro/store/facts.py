"""What the host tables show for one match: the database half of a run's facts."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from retro.stages import STAGES
from retro.store.gaps import (
    expected_models_query,
    found_predictions,
    has_analysis,
    pending_prediction,
)
from retro.store.schema import matches


@dataclass(frozen=True)
class MatchFacts:
    """One match's row (what payloads need) and its stage data counts.

    ``found`` counts expected models (active, not auto-disabled) with a
    prediction, not rows; ``unscored`` counts ``pending`` predictions.
    """

    match_id: str
    external_id: str | None
    home_team: str | None
    away_team: str | None
    status: str | None
    home_score: int | None
    away_score: int | None
    has_analysis: bool
    found: int
    expected: int
    unscored: int


def unscored_predictions() -> ColumnElement[int]:
    """Scalar subquery: the ``pending`` (unscored) predictions of the ``matches`` row."""
    return select(func.count()).where(pending_prediction()).scalar_subquery()


DONE_SQL: Mapping[str, Callable[[], ColumnElement[Any]]] = {
    "has_analysis": has_analysis,
    "found": found_predictions,
    "unscored": unscored_predictions,
}
"""The SQL behind each stage's "done" fact (:attr:`retro.stages.Stage.done`), by the
:class:`MatchFacts` field it fills: an analysis with a favourite, expected models
with a prediction, predictions still unscored."""


async def match_facts(
    conn: AsyncConnection, match_id: str, *, expected_override: int | None = None
) -> MatchFacts | None:
    """The facts of ``match_id``, or ``None`` if the match no longer exists (one query)."""
    row = (
        (
            await conn.execute(
                select(
                    matches.c.external_id,
                    matches.c.home_team,
                    matches.c.away_team,
                    matches.c.status,
                    matches.c.home_score,
                    matches.c.away_score,
                    *(DONE_SQL[stage.done]().label(stage.done) for stage in STAGES.values()),
                    expected_models_query().scalar_subquery().label("expected"),
                ).where(matches.c.id == match_id)
            )
        )
        .mappings()
        .first()
    )
    if row is None:
        return None
    return MatchFacts(
        match_id=match_id,
        external_id=row["external_id"],
        home_team=row["home_team"],
        away_team=row["away_team"],
        status=row["status"],
        home_score=row["home_score"],
        away_score=row["away_score"],
        has_analysis=bool(row["has_analysis"]),
        found=int(row["found"]),
        expected=int(row["expected"]) if expected_override is None else expected_override,
        unscored=int(row["unscored"]),
    )
