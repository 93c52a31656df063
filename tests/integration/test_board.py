"""The board over HTTP on both backends, in process (httpx on the ASGI app, the board's
connections opened by :func:`retro.board.app.open_board` as the server opens them):
pages, filters, the run JSON equal to ``retro history --json``, 404s, escaping of host
text, security headers, and a Redis that does not answer shown, not raised."""

from __future__ import annotations

import asyncio
import html
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from retro import commands
from retro.app import App
from retro.board.app import Site, create_app, open_board
from retro.board.server import HttpServer
from retro.config import Settings
from retro.errors import RetroError
from retro.report import history_json
from retro.store import runs
from tests.boardsetup import LABEL, PROBE, Prepared, prepare
from tests.conftest import Backend


def settings_for(backend: Backend, **more: object) -> Settings:
    return Settings(
        database_url=backend.database_url,
        redis_url=backend.redis_url,
        queue_prefix=backend.prefix,
        max_in_flight=100,
        **more,  # type: ignore[arg-type]
    )


@asynccontextmanager
async def client(site: Site) -> AsyncIterator[httpx.AsyncClient]:
    async with open_board(site) as board:
        transport = httpx.ASGITransport(app=create_app(board))
        async with httpx.AsyncClient(transport=transport, base_url="http://board") as http:
            yield http


@asynccontextmanager
async def ticked(backend: Backend) -> AsyncIterator[tuple[Prepared, App]]:
    """The prepared backfill after one tick without workers, and the daemon's app: the
    doomed run failed, every other run has a job waiting for a worker."""
    prepared = await prepare(settings_for(backend))
    async with App(prepared.settings) as app:
        await app.tick(now=datetime.now(UTC))
        yield prepared, app


async def runs_now(app: App) -> list[runs.Run]:
    async with app.engine.connect() as conn:
        return await runs.list_runs(conn)


def text_of(page: str) -> str:
    """Visible text of ``page``, roughly: cells and blocks end with a space, other
    tags removed, entities decoded, whitespace collapsed."""
    spaced = re.sub(r"<(?:/t[dh]|/d[td]|/li|/p|/h\d|br)\b[^>]*>", " ", page)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", spaced)).split())


async def test_pages_of_a_backfill_its_runs_and_workers(backend: Backend) -> None:
    async with ticked(backend) as (prepared, app):
        async with client(Site(prepared.settings, app.probes())) as http:
            home = await http.get("/")
            assert home.status_code == 200
            assert home.headers["content-type"].startswith("text/html")
            csp = home.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "style-src 'self'" in csp
            assert home.headers["x-content-type-options"] == "nosniff"
            assert prepared.backfill_id in home.text
            assert "INC-123 &lt;b&gt;outage&lt;/b&gt;" in home.text and LABEL not in home.text
            seeded = len(prepared.runs)
            words = text_of(home.text)
            assert f"1 of {seeded} finished: 0 done, 1 failed, 0 cancelled" in words, words
            assert f"{100 // seeded} %" in words  # 1 finished (failed) out of seeded
            assert 'hx-trigger="every 2s"' in home.text

            page = await http.get(f"/backfills/{prepared.backfill_id}")
            assert page.status_code == 200
            assert "<svg" in page.text and "Hand-offs per minute" in page.text
            (run,) = [r for r in await runs_now(app) if r.state == "failed"]
            failed_run = run.id
            assert run.match_id == prepared.failing_match
            assert run.last_error and "has no external_id" in run.last_error
            assert run.last_error in text_of(page.text)  # the failure's reason
            # host text is text: the probe is escaped, never markup
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
            assert PROBE not in page.text

            only_failed = await http.get(
                f"/backfills/{prepared.backfill_id}", params={"state": "failed"}
            )
            listed = set(re.findall(r'<tr data-run="([0-9a-f]+)"', only_failed.text))
            assert listed == {failed_run}
            pending = await http.get(
                f"/backfills/{prepared.backfill_id}", params={"state": "analyzing"}
            )
            listed = set(re.findall(r'<tr data-run="([0-9a-f]+)"', pending.text))
            assert failed_run not in listed and listed

            fragment = await http.get(
                f"/backfills/{prepared.backfill_id}", headers={"HX-Request": "true"}
            )
            assert fragment.status_code == 200 and "<html" not in fragment.text
            assert "1 failed" in text_of(fragment.text)

            bad = await http.get(f"/backfills/{prepared.backfill_id}", params={"state": "x<y"})
            assert bad.status_code == 400 and "unknown state" in bad.text
            assert "x<y" not in bad.text
            for path in ("/backfills/nope", "/runs/nope", "/no/such/page"):
                missing = await http.get(path)
                assert missing.status_code == 404, path
                assert "Not found" in missing.text and "<html" in missing.text
            missing = await http.get("/runs/nope.json")
            assert missing.status_code == 404 and "nope" in missing.json()["error"]
            # a run-id prefix names its run, as in retro history
            prefix = await http.get(f"/runs/{failed_run[:8]}.json")
            assert prefix.json()["runs"][0]["run_id"] == failed_run
            short = await http.get(f"/runs/{failed_run[:3]}")
            assert short.status_code == 404 and "too short" in short.text

            workers = text_of((await http.get("/workers")).text)
            assert re.search(r"analysis \S+ 0 no worker no", workers), workers
            assert "database yes" in workers and "redis yes" in workers, workers

            # a run page: its timeline is retro history --json, and its job is shown
            probe = next(r for r in await runs_now(app) if r.match_id == prepared.probe_match)
            expected = history_json(await commands.history(app, probe.id))
            served = await http.get(f"/runs/{probe.id}.json")
            assert served.status_code == 200
            assert served.json() == expected  # retro history RUN --json, exactly

            page = await http.get(f"/runs/{probe.id}")
            assert page.status_code == 200
            rows = re.findall(r'<tr data-seq="(\d+)">\s*(.*?)</tr>', page.text, re.S)
            events = expected["runs"][0]["events"]
            assert [int(seq) for seq, _ in rows] == [e["seq"] for e in events]
            for (_, row), event in zip(rows, events, strict=True):
                cells = text_of(row)
                assert event["type"] in cells and event["at"] in cells
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text and PROBE not in page.text
            # its job waits in BullMQ for a worker there is none of
            assert probe.job_id is not None and probe.job_id in page.text
            words = text_of(page.text)
            assert re.search(r"BullMQ state (waiting|prioritized)", words), words
            assert "no worker" in words, words


async def test_a_redis_that_does_not_answer_is_shown_not_raised(backend: Backend) -> None:
    """``retro board`` (no daemon) with a Redis that refuses connections: the workers
    page and a run's job say so (password masked) instead of failing; ``/healthz``
    is 503 naming Redis, without a tick check (no daemon); there is no ``/metrics``."""
    async with ticked(backend) as (prepared, app):
        dead = "redis://retro:s3cret-pw@127.0.0.1:9/0"  # port 9 (discard): refused
        settings = prepared.settings.model_copy(update={"redis_url": dead})
        async with client(Site(settings)) as http:
            workers = await http.get("/workers")
            assert workers.status_code == 200
            words = text_of(workers.text)
            assert "Redis unreachable" in words and "s3cret" not in workers.text, words
            assert "database yes answered in" in words and "redis no" in words, words
            health = await http.get("/healthz")
            assert health.status_code == 503
            body = health.json()
            assert body["failed"] == ["redis"] and "tick" not in body["checks"]
            assert "s3cret" not in health.text
            assert (await http.get("/metrics")).status_code == 404

            run = next(r for r in await runs_now(app) if r.job_id is not None)
            page = await http.get(f"/runs/{run.id}")
            assert page.status_code == 200
            words = text_of(page.text)
            assert "Redis unreachable" in words and run.job_id in words, words


def test_a_board_that_cannot_open_its_database_does_not_start(tmp_path: Path) -> None:
    """The server's start-up opens the board's connections: a database that is not
    there is the store's own error, raised by ``start``, and the port is free again."""
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'missing.db'}")
    server = HttpServer("127.0.0.1", 0)
    port = server.port
    with pytest.raises(RetroError, match=r"missing\.db"):
        server.start(Site(settings))
    assert not server.serving
    server.close()
    again = HttpServer("127.0.0.1", port)  # released: the port binds again
    again.close()


@pytest.mark.parametrize("backend", ["sqlite-embedded"], indirect=True)
def test_retro_board_announces_only_the_routes_it_serves(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """``retro board`` (no daemon: no ``/metrics``) does not log that it serves
    ``/metrics``; it said so, and the route answered 404."""
    from tests.e2e.hostdata import seed_host, upgrade_retro

    seed_host(backend.database_url)
    upgrade_retro(backend.database_url)
    caplog.set_level(logging.INFO, logger="retro")
    server = HttpServer("127.0.0.1", 0)
    try:
        server.start(Site(settings_for(backend)))
        assert httpx.get(f"{server.url}metrics", timeout=10).status_code == 404
    finally:
        server.close()
    (said,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("board on")]
    assert "/metrics" not in said and "/healthz" in said, said


@pytest.mark.parametrize("backend", ["sqlite-embedded"], indirect=True)
async def test_the_backfills_page_shows_the_newest_and_counts_the_rest(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every periodic scan that seeds runs is a backfill: a month of them is
    thousands. The page (polled every 2 s) lists the newest
    :data:`retro.board.queries.BACKFILLS_SHOWN` and says how many older ones it
    leaves out (it listed every backfill ever, megabytes every 2 s)."""
    from retro.backfill import Backfill
    from retro.board import queries
    from retro.store import backfills
    from tests.e2e.hostdata import seed_host, upgrade_retro

    monkeypatch.setattr(queries, "BACKFILLS_SHOWN", 3)
    await asyncio.to_thread(seed_host, backend.database_url)  # each runs its own loop
    await asyncio.to_thread(upgrade_retro, backend.database_url)
    settings = settings_for(backend)
    now = datetime.now(UTC)
    async with App(settings, redis=False) as app, app.engine.begin() as conn:
        for n in range(5):
            created = now - timedelta(minutes=15 * n)
            await backfills.create(
                conn, Backfill(f"bf{n:010d}", "scan", created, created, created, "retro")
            )
    async with client(Site(settings)) as http:
        page = await http.get("/")
    assert page.status_code == 200
    shown = re.findall(r'data-backfill="(bf\d+)"', page.text)
    assert shown == ["bf0000000000", "bf0000000001", "bf0000000002"]
    assert "2 older backfills not shown" in text_of(page.text)


@pytest.mark.parametrize("backend", ["sqlite-embedded"], indirect=True)
async def test_a_backfill_page_says_when_it_lists_only_some_of_the_runs(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backfill with more runs than :data:`retro.board.queries.RUNS_SHOWN`: the
    runs table says it lists that many of them all (it said "500 runs", as if those
    were all there are)."""
    from retro.board import queries

    monkeypatch.setattr(queries, "RUNS_SHOWN", 2)
    prepared = await prepare(settings_for(backend))
    total = len(prepared.runs)
    assert total > 2
    async with client(Site(prepared.settings)) as http:
        every = text_of((await http.get(f"/backfills/{prepared.backfill_id}")).text)
        pending = text_of((await http.get(f"/backfills/{prepared.backfill_id}?state=pending")).text)
        failed = text_of((await http.get(f"/backfills/{prepared.backfill_id}?state=failed")).text)
    assert f"2 of {total} runs, most recently updated first" in every, every
    assert f"2 of {total} runs pending, most recently updated first" in pending, pending
    assert "No run failed" in failed
