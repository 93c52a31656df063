"""Crash points for tests (Dagster-style crash flags): the daemon kills itself at
a named point of the tick, to prove that a crash there loses and repeats nothing.

Set ``RETRO_CRASH_AT`` to ``point:n[,point:n…]``: the process exits with
:data:`CRASH_EXIT_CODE` (no cleanup, like SIGKILL) the n-th time it reaches
``point``. Points: ``before_append``, ``after_append`` (committed),
``before_enqueue``, ``after_enqueue`` (:data:`POINTS`, the tick's), and
``after_notify_commit`` (:data:`NOTIFY_POINTS`: an append that recorded a
notification committed, and nothing has sent it yet; reached only with
``notify_url`` set). Unset in production: then :meth:`reach` only counts.
"""

from __future__ import annotations

import os
from collections import Counter

CRASH_EXIT_CODE = 70
POINTS = ("before_append", "after_append", "before_enqueue", "after_enqueue")
NOTIFY_POINTS = ("after_notify_commit",)
KNOWN = POINTS + NOTIFY_POINTS
ENV = "RETRO_CRASH_AT"


class CrashPoints:
    """Counts arrivals at each point; exits the process at the configured ones.

    Raises:
        ValueError: the spec names an unknown point or a count below 1.
    """

    def __init__(self, spec: str | None = None) -> None:
        self._at: dict[str, int] = {}
        self._seen: Counter[str] = Counter()
        for item in filter(None, (spec or "").split(",")):
            point, _, count = item.strip().partition(":")
            if point not in KNOWN or not count.isdigit() or int(count) < 1:
                raise ValueError(f"bad {ENV} entry {item!r}: use one of {', '.join(KNOWN)}:N")
            self._at[point] = int(count)

    @classmethod
    def from_env(cls) -> CrashPoints:
        """Crash points from ``RETRO_CRASH_AT`` (none when unset)."""
        return cls(os.environ.get(ENV))

    def reach(self, point: str) -> None:
        """Note an arrival at ``point``; exit at once if this is the configured one."""
        self._seen[point] += 1
        if self._at.get(point) == self._seen[point]:
            os._exit(CRASH_EXIT_CODE)
