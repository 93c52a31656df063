"""A backfill for the board's tests: the demo outage of one league, named, with an XSS
probe for a team name and a run bound to fail (its match has no ``external_id``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import update

from retro import commands
from retro.app import App
from retro.config import Settings
from retro.store.gaps import GapKind
from retro.store.schema import matches
from tests.healing import DEMO_NOW, seed_outage

PROBE = "<script>alert(1)</script>"
"""A team name that would run if the board did not escape host text."""
LABEL = "INC-123 <b>outage</b>"
"""The backfill's label (markup too: labels are operators' text)."""


@dataclass(frozen=True)
class Prepared:
    """The seeded backfill: its id and runs; ``probe_match``'s home team is
    :data:`PROBE`; ``failing_match`` misses analysis and has no ``external_id``, so
    its run fails at its first tick with a reason."""

    settings: Settings
    backfill_id: str
    runs: list[str]
    probe_match: str
    failing_match: str


async def prepare(settings: Settings, competitions: tuple[str, ...] = ("it.1",)) -> Prepared:
    """Seed the demo outage of ``competitions``, plant the probe and the doomed match,
    and start one backfill labelled :data:`LABEL` (as ``retro start --label``)."""
    await seed_outage(settings.database_url, competitions)
    async with App(settings, redis=False) as app:
        dry = await commands.start(
            app, days=14, now=datetime.now(UTC), until=DEMO_NOW, dry_run=True
        )
        gaps = dry.scan.gaps
        failing = next(g.match_id for g in gaps if GapKind.MISSING_ANALYSIS in g.kinds)
        probe = next(g.match_id for g in gaps if g.match_id != failing)
        async with app.engine.begin() as conn:
            await conn.execute(update(matches).where(matches.c.id == probe).values(home_team=PROBE))
            await conn.execute(
                update(matches).where(matches.c.id == failing).values(external_id=None)
            )
        report = await commands.start(
            app, days=14, now=datetime.now(UTC), until=DEMO_NOW, label=LABEL
        )
    assert report.backfill is not None and len(report.seeded) == len(gaps)
    return Prepared(settings, report.backfill.id, report.seeded, probe, failing)
