"""Screenshots of the board during the demo heal, for the README and docs/production.md.

    .venv/bin/python docs/img/shoot.py            # about 40 s; needs Debian's chromium

Runs ``retro demo --board`` in process (``run_demo`` with a board on a free port),
with each reference job slowed by :data:`PACE` seconds so that the heal, about 2 s
on its own, lasts long enough to be caught halfway. Once a third of the runs have
finished, the workers hold the job they are on while headless Chromium (Playwright,
``executable_path``: no browser download) shoots three pages into this folder:

* ``board-backfills.png``: the backfills, with progress bar and ETA;
* ``board-backfill.png``: the demo's backfill: progress, hand-off chart, runs;
* ``board-run.png``: the run in flight: its job, active in BullMQ, and its timeline
  so far.

The demo's data is the demo's (openfootball, CC0); nothing else is changed.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``retro`` importable from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from playwright.async_api import Page, async_playwright

from retro.board.server import HttpServer
from retro.demo.scenario import run_demo
from retro.pipeline.workers import ReferenceWorkers

HERE = Path(__file__).resolve().parent
PACE = 0.12
"""Seconds each reference job sleeps before its work (the demo heals 68 runs, 3 jobs each)."""
SHOOT_AT = 33
"""Percent of runs finished when the pages are shot."""
WIDTH, HEIGHT = 1280, 860


def slowed(
    handler: Callable[..., Awaitable[dict[str, Any]]], go: asyncio.Event
) -> Callable[..., Any]:
    """``handler`` (a reference worker's) after :data:`PACE` seconds, once ``go`` is set."""

    async def slow(self: ReferenceWorkers, job: Any, token: str) -> dict[str, Any]:
        await asyncio.sleep(PACE)
        await go.wait()
        return await handler(self, job, token)

    return slow


async def shoot(server: HttpServer, chromium: str, out: Path, go: asyncio.Event) -> None:
    """Wait for the board, then for :data:`SHOOT_AT` percent; hold the workers (clear
    ``go``), shoot the pages, and let the workers go on."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium)
        page: Page = await browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
        for _ in range(600):  # the board starts with the heal
            try:
                await page.goto(server.url)
                break
            except Exception:
                await asyncio.sleep(0.1)
        row = page.locator("tr[data-backfill]").first
        await row.wait_for(timeout=60_000)
        percent = row.locator(".percent")
        for _ in range(1200):  # the page polls every 2 s; read it every 0.1 s
            if int(await percent.get_attribute("data-percent") or 0) >= SHOOT_AT:
                break
            await asyncio.sleep(0.1)
        go.clear()
        await asyncio.sleep(2 * PACE)  # the job in hand reaches the hold
        await page.reload()
        backfill = await row.get_attribute("data-backfill")
        await page.screenshot(path=out / "board-backfills.png")
        await page.goto(f"{server.url}backfills/{backfill}")
        await page.screenshot(path=out / "board-backfill.png")
        live = page.locator(
            "table.runs tr:has(.s-analyzing), table.runs tr:has(.s-predicting), "
            "table.runs tr:has(.s-settling)"
        ).first
        run = await live.get_attribute("data-run")
        await page.goto(f"{server.url}runs/{run}")
        await page.screenshot(path=out / "board-run.png")
        go.set()
        await browser.close()
        print(f"shot {backfill} and run {run} into {out}")


async def main(out: Path, chromium: str) -> None:
    go = asyncio.Event()
    go.set()
    for name in ("analyze", "predict", "settle"):
        setattr(ReferenceWorkers, name, slowed(getattr(ReferenceWorkers, name), go))
    server = HttpServer("127.0.0.1", 0)
    with tempfile.TemporaryDirectory() as workdir:
        shots = asyncio.create_task(shoot(server, chromium, out, go))
        await run_demo(workdir, say=print, board=server)
        await shots


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE, help="folder for the PNGs")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.out, arguments.chromium))
