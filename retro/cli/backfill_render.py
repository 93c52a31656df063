"""Rendering of backfills with Rich: the ``retro backfills`` table (also the
"Backfills" part of ``retro status``), one backfill's header (``retro status
--backfill``) and what a steering command did.

Ids are never cut: an id column does not wrap and is the last to give way (Rich
shrinks the wrapping columns first, and these can shrink to a character), so at
80 columns a backfill id shows whole on one line. Labels, created-by and other
text from people fold onto more lines instead. Text from outside retro goes
through :func:`shown` (one line, masked, no markup).
"""

from __future__ import annotations

import math
from datetime import datetime

from rich import box
from rich.table import Table
from rich.text import Text

from retro.backfill import ActionType, BackfillState
from retro.backfill_commands import BackfillCancel, Listing, Steered
from retro.config import mask
from retro.progress import BackfillSummary, describe_eta, short_eta
from retro.text import escape


def shown(text: object) -> Text:
    """``text`` on one line: masked, non-printable characters escaped, no markup."""
    return Text(escape(mask(str(text))))


def percent(value: float) -> str:
    """``66%``: rounded down, so ``100%`` only when it is exactly 100."""
    return f"{math.floor(value)}%"


def _when(instant: datetime | None) -> str:
    return "-" if instant is None else f"{instant:%Y-%m-%d %H:%M}"


def window_text(summary: BackfillSummary, sep: str = " → ") -> str:
    """``2025-05-12 12:00 → 2025-05-26 12:00`` (UTC), or ``-`` when unknown."""
    b = summary.backfill
    if b.window_from is None or b.window_to is None:
        return "-"
    return f"{_when(b.window_from)}{sep}{_when(b.window_to)}"


def progress_text(summary: BackfillSummary) -> str:
    """``2/3 finished (66%): 1 done, 1 failed, 0 cancelled``."""
    t = summary.tally
    return (
        f"{t.finished}/{t.seeded} finished ({percent(t.percent)}): "
        f"{t.done} done, {t.failed} failed, {t.cancelled} cancelled"
    )


def eta_text(summary: BackfillSummary) -> str:
    """``~3 min``, ``unknown``, ``paused``, or ``-`` once it ended."""
    state = summary.state
    if state is BackfillState.PAUSED:
        return "paused"
    if state in (BackfillState.FINISHED, BackfillState.CANCELLED):
        return "-"
    return short_eta(summary.progress).removeprefix("ETA ")


def backfills_table(found: list[BackfillSummary], *, title: str) -> Table:
    """One row per backfill: id (whole), label, window, created, state, progress
    (finished out of seeded, then done, failed and cancelled apart) and ETA."""
    table = Table(
        title=title,
        box=box.SIMPLE_HEAD,
        title_justify="left",
        pad_edge=False,
        collapse_padding=True,
    )
    longest = max((len(s.backfill.id) for s in found), default=8)
    table.add_column("backfill", no_wrap=True, min_width=longest)
    for name in ("label", "window (UTC)", "created (UTC)", "state", "progress", "ETA"):
        table.add_column(name, overflow="fold")
    for summary in found:
        b, t = summary.backfill, summary.tally
        table.add_row(
            Text(b.id),
            shown(b.label),
            window_text(summary, "\n→ "),
            Text(f"{_when(b.created_at)}\nby ") + shown(b.created_by),
            str(summary.state),
            f"{t.finished}/{t.seeded} {percent(t.percent)}\n{t.done} done\n{t.failed} failed\n"
            f"{t.cancelled} cancelled",
            eta_text(summary),
        )
    return table


def render_backfills(listing: Listing) -> list[Table | Text]:
    """``retro backfills``: the table, then how many older ones were left out."""
    if not listing.summaries:
        return [Text("No backfills yet: `retro start --days N --label TEXT` creates one.")]
    n = len(listing.summaries)
    parts: list[Table | Text] = [
        backfills_table(
            listing.summaries, title=f"Backfills (newest first, {n} of {listing.total})"
        )
    ]
    if listing.total > n:
        parts.append(Text(f"{listing.total - n} older not shown (--limit)."))
    return parts


def backfill_header(summary: BackfillSummary) -> list[Text]:
    """The lines ``retro status --backfill`` starts with: the backfill, its state,
    its progress (finished out of seeded) and ETA."""
    b = summary.backfill
    lines = [
        named(summary, "Backfill")
        + Text(f": {summary.state}; window {window_text(summary)} UTC; ")
        + Text(f"created {_when(b.created_at)} UTC by ")
        + shown(b.created_by),
        Text(f"Progress: {progress_text(summary)}; {summary.tally.live} live"),
    ]
    if summary.state is BackfillState.PAUSED:
        lines.append(
            Text(
                "Paused: no new job starts; jobs already queued or active finish and are "
                f"judged. `retro resume --backfill {b.id}` goes on."
            )
        )
    elif summary.state is BackfillState.RUNNING:
        lines.append(Text(describe_eta(summary.progress)))
    if b.cancelled_at is not None:
        lines.append(Text(f"Cancelled at {_when(b.cancelled_at)} UTC."))
    return lines


def named(summary: BackfillSummary, word: str = "backfill") -> Text:
    """``backfill 1a2b3c4d5e6f (INC-123)``, the label shown safely."""
    b = summary.backfill
    return Text(f"{word} {b.id} (") + shown(b.label) + Text(")")


def _runs(n: int) -> str:
    return f"{n} live run{'' if n == 1 else 's'}"


def steered_lines(steered: Steered) -> list[Text]:
    """What ``retro pause|resume|retry --backfill`` did, in a line or two."""
    summary = steered.summary
    b, live = summary.backfill, summary.tally.live
    if steered.action is ActionType.PAUSED:
        if not steered.changed:
            since = steered.since
            when = "" if since is None else f" since {_when(since.at)} UTC by {since.by}"
            said = f" is already paused{when}; nothing changed."
            return [named(summary, "Backfill") + shown(said)]
        return [
            named(summary, "Paused backfill") + Text(f": {_runs(live)} held."),
            Text(
                "Jobs already queued or active finish and are judged; no new job starts "
                f"until `retro resume --backfill {b.id}`."
            ),
        ]
    if steered.action is ActionType.RESUMED:
        if not steered.changed:
            return [named(summary, "Backfill") + Text(" is not paused; nothing changed.")]
        go_on = f": {_runs(live)} go on at the daemon's next tick."
        return [named(summary, "Resumed backfill") + Text(go_on)]
    count = len(steered.runs)
    if not count:
        return [Text("No failed run in ") + named(summary) + Text("; nothing re-armed.")]
    lines = [
        Text(f"Re-armed {count} failed run{'' if count == 1 else 's'} of ")
        + named(summary)
        + Text(": " + ", ".join(steered.runs))
    ]
    if b.paused:
        lines.append(Text(f"It is paused: they start on `retro resume --backfill {b.id}`."))
    return lines


def cancelled_line(done: BackfillCancel) -> Text:
    """The line ``retro cancel --backfill`` ends with."""
    return (
        named(done.summary, "Backfill")
        + Text(" cancelled by ")
        + shown(done.by)
        + Text(f": {progress_text(done.summary)}.")
    )
