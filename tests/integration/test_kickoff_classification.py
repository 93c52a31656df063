"""Every kickoff text is classified once (issue 9, point 8).

Hypothesis writes kickoff texts (readable ISO forms and near misses: odd Unicode
digits, offsets, lower-case ``t``/``z``, fractions of many lengths, spaces around,
leap seconds, ``24:00``, impossible dates, ignorable characters) into the real
``matches`` table, runs the real ``gaps.scan`` with the optional partial index in
place, and checks each text ends in exactly one of {gap, outside the window,
reported unreadable}, as an independent classifier (string rules written here,
then ``datetime.fromisoformat`` for the values) says. On SQLite, PostgreSQL with
its default collation, and PostgreSQL with the ICU collation ``und-x-icu``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, insert, text

from retro.store import db, gaps, migrate
from retro.store.schema import host_metadata, matches

NOW = datetime(2025, 5, 21, 12, 0, tzinfo=UTC)
DAYS = 3
SINCE = NOW - timedelta(days=DAYS)


# --- the independent classifier ---------------------------------------------------


def _digits(s: str) -> bool:
    return all(c in "0123456789" for c in s)


def _hhmm(s: str) -> bool:
    return len(s) == 5 and s[2] == ":" and _digits(s[:2] + s[3:])


def _time_ok(body: str) -> bool:
    if len(body) == 5:
        return _hhmm(body)
    if len(body) < 8 or not _hhmm(body[:5]) or body[5] != ":" or not _digits(body[6:8]):
        return False
    fraction = body[8:]
    return fraction == "" or (
        fraction[0] == "." and 2 <= len(fraction) <= 7 and _digits(fraction[1:])
    )


def _form_ok(value: str) -> bool:
    """The documented readable forms, checked character by character."""
    date, rest = value[:10], value[10:]
    if len(date) != 10 or date[4] != "-" or date[7] != "-":
        return False
    if not _digits(date[:4] + date[5:7] + date[8:]) or date[0] not in "12":
        return False
    if rest == "":
        return True
    if rest[0] not in "T ":
        return False
    body = rest[1:]
    if body.endswith("Z"):
        body = body[:-1]
    elif len(body) >= 6 and body[-6] in "+-":  # ±HH:MM, minutes 00-59
        if not _hhmm(body[-5:]) or body[-2] not in "012345":
            return False
        body = body[:-6]
    elif len(body) >= 5 and body[-5] in "+-":  # ±HHMM, minutes 00-59
        if not _digits(body[-4:]) or body[-2] not in "012345":
            return False
        body = body[:-5]
    elif len(body) >= 3 and body[-3] in "+-":  # ±HH
        if not _digits(body[-2:]):
            return False
        body = body[:-3]
    return _time_ok(body)


def expected(value: str) -> str:
    """``gap``, ``outside`` or ``unreadable``, by rules written independently of retro."""
    if not _form_ok(value):
        return "unreadable"
    try:
        instant = datetime.fromisoformat(value)
    except ValueError:
        return "unreadable"
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=UTC)
    return "gap" if SINCE <= instant <= NOW else "outside"


# --- texts ------------------------------------------------------------------------

instants = st.datetimes(
    min_value=(SINCE - timedelta(days=3)).replace(tzinfo=None),
    max_value=(NOW + timedelta(days=2)).replace(tzinfo=None),
)
offsets = st.sampled_from([0, 60, -240, 330, 345, -570, 1439, -1439, 840])


@st.composite
def iso_texts(draw: st.DrawFn) -> str:
    """A readable-looking ISO text of an instant near the window, in one of many forms."""
    minutes = draw(offsets)
    moment = draw(instants).replace(tzinfo=UTC).astimezone(timezone(timedelta(minutes=minutes)))
    sep = draw(st.sampled_from(["T", " ", "t"]))
    digits = draw(st.integers(0, 8))
    body = moment.strftime(f"%Y-%m-%d{sep}%H:%M")
    if draw(st.booleans()) or digits:
        body += moment.strftime(":%S")
        if digits:
            body += "." + f"{moment.microsecond:06d}{moment.microsecond:06d}"[:digits]
    sign = "-" if minutes < 0 else "+"
    hh, mm = divmod(abs(minutes), 60)
    zones = [f"{sign}{hh:02d}:{mm:02d}", f"{sign}{hh:02d}{mm:02d}", f"{sign}{hh:02d}"]
    if not minutes:
        zones += ["", "Z", "z", "-00:00"]
    zone = draw(st.sampled_from(zones))
    return body + zone


NEAR_MISSES = (
    lambda s: " " + s,
    lambda s: s + " ",
    lambda s: "\x1f" + s,
    lambda s: "\u200b" + s,
    lambda s: s.replace("2", "\uff12", 1),  # fullwidth digit
    lambda s: s.replace("0", "\u0660", 1),  # Arabic-Indic digit
    lambda s: s[:11] + "24:00" + s[16:],
    lambda s: s[:17] + "60" + s[19:] if len(s) >= 19 and s[16] == ":" else s + ":60",
    lambda s: s[:5] + "13" + s[7:],
    lambda s: s[:5] + "04-31" + s[10:],
    lambda s: "2025-02-29" + s[10:],
    lambda s: "2024-02-29" + s[10:],
    lambda s: s[:10],
    lambda s: s.replace(".", ",", 1),
    lambda s: s.replace("-", "/", 2),
    lambda s: s[:4] + s[5:7] + s[8:],
    lambda s: "0" + s[1:],
    lambda s: s + "+24:00",
    lambda s: s[:4] + "+" + s[5:],  # a sign where the date's dash is
    lambda s: s[:7] + "+" + s[8:],
)


@st.composite
def kickoff_texts(draw: st.DrawFn) -> str:
    base = draw(iso_texts())
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return base
    if kind == 3:
        return draw(st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00")))
    return draw(st.sampled_from(NEAR_MISSES))(base)


def test_the_classifier_knows_the_documented_forms() -> None:
    assert expected("2025-05-20T19:00:00.000Z") == "gap"
    assert expected("2025-05-20 21:00:00.5+02:00") == "gap"
    assert expected("2025-05-20") == "gap"
    assert expected("2025-05-21T12:00:00.000001Z") == "outside"
    for bad in (
        "2025-05-20t19:00Z",
        " 2025-05-20T19:00Z",
        "2025-05-20T24:00",
        "2025-02-29",
        "2025+05-20",
        "2025-05+20T19:00Z",
    ):
        assert expected(bad) == "unreadable"


# --- the scan on each backend ---------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres", "postgres-icu"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Host and retro tables, the optional host indexes, on one backend/collation."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'kickoffs.db'}"
    else:
        url = request.getfixturevalue("postgres_url")

    async def prepare() -> None:
        engine = db.create_engine(url)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(host_metadata.create_all)
                if request.param == "postgres-icu":
                    await conn.execute(
                        text(
                            "ALTER TABLE matches ALTER COLUMN kickoff_time "
                            'TYPE text COLLATE "und-x-icu"'
                        )
                    )
                await conn.execute(
                    text(
                        "CREATE INDEX ix_matches_unreadable_kickoff ON matches (id) "
                        f"WHERE {gaps.UNREADABLE_KICKOFF_SQL}"
                    )
                )
            await migrate.upgrade(engine)
        finally:
            await engine.dispose()

    asyncio.run(prepare())
    yield url


async def scan_texts(url: str, texts: list[str]) -> gaps.Scan:
    engine = db.create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(delete(matches))
            await conn.execute(
                insert(matches),
                [
                    {"id": f"m{i:02d}", "kickoff_time": value, "status": "finished"}
                    for i, value in enumerate(texts)
                ],
            )
        async with engine.connect() as conn:
            return await gaps.scan(
                conn, now=NOW, days=DAYS, cooldown=timedelta(0), expected_override=0
            )
    finally:
        await engine.dispose()


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(texts=st.lists(kickoff_texts(), min_size=1, max_size=12))
@example(texts=["2025+05-20", "2025-05+20", "2025-05-20 12:00:00+00", "2025-05-20T12:00+0530"])
def test_each_kickoff_text_is_classified_once(database_url: str, texts: list[str]) -> None:
    result = asyncio.run(scan_texts(database_url, texts))
    ids = [f"m{i:02d}" for i in range(len(texts))]
    skipped = [s.match_id for s in result.skipped]
    assert len(skipped) == len(set(skipped)), "a text reported twice"
    found = [g.match_id for g in result.gaps]
    assert not set(found) & set(skipped), "a text both a gap and unreadable"
    got = {i: "gap" if i in found else "unreadable" if i in skipped else "outside" for i in ids}
    want = {i: expected(value) for i, value in zip(ids, texts, strict=True)}
    assert got == want, {i: texts[int(i[1:])] for i in ids if got[i] != want[i]}
    for gap in result.gaps:
        assert gap.kickoff == gaps.parse_kickoff(texts[int(gap.match_id[1:])])
