"""Text output never cuts an id (issue 11): an :class:`IdTable` drawn at any width
shows each id whole on one line, as a table when the ids fit and as blocks when not."""

from __future__ import annotations

import io

from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from rich.text import Text

from retro.cli.tables import IdTable

ID_CHARS = st.characters(
    codec="utf-8", categories=("Lu", "Ll", "Nd", "Pd", "Po", "Lo"), exclude_characters="\u3000"
)
IDS = st.text(ID_CHARS, min_size=12, max_size=60)
OTHER = st.text(st.characters(codec="utf-8", categories=("L", "N", "P", "Zs")), max_size=120)


def drawn(table: IdTable, width: int) -> list[str]:
    console = Console(
        file=io.StringIO(), width=width, color_system=None, highlight=False, legacy_windows=False
    )
    console.print(table)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    return text.splitlines()


def in_flight(match_id: str) -> IdTable:
    table = IdTable(
        "run", "match", "teams", "phase", "job id", "job", ids={"run", "match", "job id"}
    )
    table.add_row(
        "3f2a9c1b4d5e",
        match_id,
        "Wolverhampton Wanderers FC v Brighton & Hove Albion FC",
        "analysis",
        f"analyze-retro-{match_id}",
        "waiting: no worker consuming analysis-queue",
    )
    return table


def test_ids_that_do_not_fit_as_a_table_are_drawn_as_blocks() -> None:
    match_id = "m-" + "x" * 28
    table = in_flight(match_id)
    assert not table.fits(80) and table.fits(200)
    narrow = drawn(table, 80)
    assert not any("┃" in line for line in narrow), narrow  # no table: blocks
    assert "run 3f2a9c1b4d5e  match " + match_id in narrow, narrow
    assert "job id analyze-retro-" + match_id in narrow, narrow
    assert any(line.startswith("  teams: Wolverhampton") for line in narrow), narrow
    assert all(len(line) <= 80 for line in narrow), narrow
    wide = drawn(table, 200)
    (row,) = [line for line in wide if "3f2a9c1b4d5e" in line]
    assert match_id in row and f"analyze-retro-{match_id}" in row and "Wolverhampton" in row


def test_a_table_that_fits_keeps_ids_whole_and_folds_the_rest() -> None:
    table = IdTable("run", "match", "reason", ids={"run", "match"})
    reason = "analysis failed 3 times; last: ConnectionResetError: reset by peer"
    table.add_row("3f2a9c1b4d5e", "m-" + "y" * 28, reason)
    assert table.fits(80)
    lines = drawn(table, 80)
    assert any("┃ run" in line for line in lines), lines  # a table
    assert any("3f2a9c1b4d5e" in line and "m-" + "y" * 28 in line for line in lines), lines
    assert not any("analysis" in line and "peer" in line for line in lines), lines  # wrapped
    assert all(len(line) <= 80 for line in lines), lines
    table.add_row("0a1b2c3d4e5f", "m-2", "analysis failed: " + "a very long reason " * 10)
    assert not table.fits(80)  # a reason squeezed to a thin ribbon: blocks instead


def test_words_of_a_token_column_stay_whole_at_every_width() -> None:
    job = "job_id=analyze-retro-m-2025-premier-league-heal-0001"
    table = IdTable("seq", "time (UTC)", "event", "data", tokens={"data"})
    for seq in range(1, 4):
        table.add_row(
            str(seq),
            "2025-05-26 12:00:00.125",
            "AnalysisRequested",
            f"attempt={seq} {job} match_id=m-2025-premier-league-heal-0001 priority=3",
        )
    for width in (60, 80, 100, 120, 160, 240):
        lines = drawn(table, width)
        assert sum(job in line for line in lines) == 3, (width, lines)
        assert all(len(line) <= width for line in lines), (width, lines)
    assert any("┃ data" in line for line in drawn(table, 100))  # a table there


def test_cells_are_never_read_as_markup() -> None:
    table = IdTable("run", "note", ids={"run"})
    table.add_row("[bold]r1", "[red]x[/red]")
    lines = drawn(table, 120)
    assert any("[bold]r1" in line and "[red]x[/red]" in line for line in lines), lines


@settings(max_examples=60, deadline=None)
@given(
    ids=st.lists(IDS, min_size=1, max_size=4),
    others=st.lists(OTHER, max_size=6),
    rows=st.integers(1, 3),
    width=st.sampled_from([80, 100, 132]),
)
def test_every_id_shows_whole_on_one_line(
    ids: list[str], others: list[str], rows: int, width: int
) -> None:
    headers = [f"id{i}" for i in range(len(ids))] + [f"col{i}" for i in range(len(others))]
    table = IdTable(*headers, ids=set(headers[: len(ids)]), title="T")
    for n in range(rows):
        table.add_row(*(f"<{value}{n}>" for value in ids), *(Text(value) for value in others))
    lines = drawn(table, width)
    for n in range(rows):
        for value in ids:
            assert any(f"<{value}{n}>" in line for line in lines), (f"<{value}{n}>", lines)
