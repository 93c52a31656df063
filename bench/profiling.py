"""``--profile``: where the daemon's time goes, with pyinstrument (a dev dependency).

The benches wrap the daemon's run in :func:`profiled`; pyinstrument samples the
event loop every 0.5 ms with ``async_mode="enabled"``, so time a coroutine spends
awaiting a database or Redis reply is charged to the ``await`` that waits for it.
The whole profile goes to a text file; :func:`breakdown` sums the time inside
``App.tick`` by the part of a step that spent it, for the figures the bench prints.
Profiler overhead inflates absolute times: read the shares, not the milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyinstrument import Profiler

PARTS: dict[str, str] = {
    "due": "runs.due (which runs to look at)",
    "slot_free": "runs.slot_free (max_in_flight check)",
    "get": "runs.get (locked read of the run)",
    "job_view": "BullMQ job state (getState + Job.fromId)",
    "worker_count": "CLIENT LIST (worker count)",
    "match_facts": "match facts query (host tables)",
    "_prepare": "_prepare (stale cleanup / remove unstarted)",
    "append": "runs.append (events + projection)",
    "__aexit__": "transaction commit / connection release",
    "__aenter__": "transaction begin / connection checkout",
    "_effect": "_effect (Queue.add)",
    "_recover_job": "_recover_job",
    "decide": "decide (pure)",
}


@dataclass
class Breakdown:
    """Seconds spent inside ``App.tick``, in all and by part (keys of :data:`PARTS`)."""

    tick: float = 0.0
    parts: dict[str, float] = field(default_factory=dict)
    wall: float = 0.0
    cpu: float = 0.0


@contextmanager
def profiled(path: Path | None) -> Iterator[Breakdown]:
    """Profile the block when ``path`` is given; write pyinstrument's text report to
    ``path`` and fill the yielded :class:`Breakdown` on exit. No-op when ``None``."""
    result = Breakdown()
    if path is None:
        yield result
        return
    profiler = Profiler(interval=0.0005, async_mode="enabled")
    profiler.start()
    try:
        yield result
    finally:
        session = profiler.stop()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(profiler.output_text(unicode=True, color=False, show_all=False))
        result.wall, result.cpu = session.duration, session.cpu_time
        root = session.root_frame()
        if root is not None:
            _walk(root, result, inside_tick=False)


def _walk(frame: Any, out: Breakdown, *, inside_tick: bool) -> None:
    """Sum the time of the outermost frame of each part under ``App.tick``."""
    name = frame.function
    if not inside_tick and name == "tick" and frame.file_path and "retro/" in frame.file_path:
        out.tick += frame.time
        inside_tick = True
    elif inside_tick and name in PARTS:
        out.parts[name] = out.parts.get(name, 0.0) + frame.time
        return  # its children are part of it
    for child in frame.children:
        _walk(child, out, inside_tick=inside_tick)


def report(label: str, b: Breakdown, *, events: int, path: Path) -> list[str]:
    """Lines for the bench's output: tick time per event and the share of each part."""
    lines = [
        f"{label}: profile ({path}): {b.wall:.1f} s wall, {b.cpu:.1f} s CPU; App.tick "
        f"{b.tick:.1f} s = {1000 * b.tick / max(events, 1):.2f} ms per appended event "
        "(profiler overhead included)"
    ]
    for name, seconds in sorted(b.parts.items(), key=lambda kv: -kv[1]):
        share = 100 * seconds / b.tick if b.tick else 0.0
        lines.append(f"{label}:   {share:5.1f} %  {PARTS[name]}")
    rest = b.tick - sum(b.parts.values())
    if b.tick:
        lines.append(f"{label}:   {100 * rest / b.tick:5.1f} %  the rest (loop, logging, evolve)")
    return lines
