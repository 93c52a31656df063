"""Tables that never cut an id (issue 11): run, match, job and backfill ids show
whole at any terminal width they fit, so they can be copied.

:class:`IdTable` collects rows like a Rich ``Table`` and decides how to draw them
when it is printed, at the console's width:

- as a Rich ``Table`` whose id columns never wrap (``no_wrap``, ``min_width`` = the
  longest id in the column) and whose other columns fold (``overflow="fold"``), when
  the ids fit beside a fair share of every other column (:meth:`IdTable.fits`);
- otherwise (many columns, long match ids, 80 columns) as one block per row: the
  ids first, each ``header id`` whole on a line (several on one line when they fit),
  then the other columns as ``header: value`` text wrapped below, indented.

A *token* column holds words that carry ids (``retro history``'s event data:
``job_id=analyze-retro-m-1 attempt=2``): it wraps between words, never inside one.
In a table it is given a fixed width no narrower than its longest word (Rich then
narrows only the other columns); in a block its words wrap like any text.

An id longer than the whole width cannot show on one line; it folds like any text.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator

from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

MIN_OTHER = 10
"""Characters a non-id column keeps at least (all of it when shorter) for the rows to
be drawn as a table: a date, ``2025-05-26``, stays on one line."""
MIN_SHARE = 4
"""A long non-id column (a failure reason) keeps at least this fraction (1/4) of its
widest cell, so it is never squeezed into a thin ribbon: blocks read better then."""
ID_GAP = "  "
"""Between two ids on the first line of a block."""


class IdTable:
    """Rows with named columns, some of which hold ids; printed as a table or as
    blocks, whichever keeps every id whole at the console's width (module docstring).

    Args:
        headers: the column headers, left to right.
        ids: the headers of the columns that hold ids.
        tokens: the headers of the columns whose words must stay whole.
        title: shown above the rows.

    Raises:
        ValueError: an id header is no column.
    """

    def __init__(
        self,
        *headers: str,
        ids: Collection[str] = (),
        tokens: Collection[str] = (),
        title: str | Text | None = None,
    ) -> None:
        unknown = (set(ids) | set(tokens)) - set(headers)
        if unknown:
            raise ValueError(f"columns {sorted(unknown)} are not among {headers}")
        self.headers = headers
        self.id_columns = frozenset(i for i, header in enumerate(headers) if header in ids)
        self.token_columns = frozenset(
            i for i, header in enumerate(headers) if header in tokens and header not in ids
        )
        self.title = title
        self.rows: list[tuple[Text, ...]] = []

    def add_row(self, *cells: str | Text) -> None:
        """One row, a cell per column; a ``str`` is shown as it is (never read as markup).

        Raises:
            ValueError: not one cell per column.
        """
        if len(cells) != len(self.headers):
            raise ValueError(f"{len(cells)} cells for {len(self.headers)} columns")
        self.rows.append(tuple(cell if isinstance(cell, Text) else Text(cell) for cell in cells))

    def _natural(self, index: int) -> int:
        """The width column ``index`` takes unwrapped: its header or its widest cell."""
        cells = (row[index].cell_len for row in self.rows)
        return max(Text(self.headers[index]).cell_len, *cells, 0)

    def _longest_word(self, index: int) -> int:
        """The widest word (between spaces) of column ``index``, header included."""
        texts = [self.headers[index], *(row[index].plain for row in self.rows)]
        return max((Text(word).cell_len for text in texts for word in text.split()), default=0)

    def _floor(self, index: int) -> int:
        """The narrowest column ``index`` may get in a table (:meth:`fits`)."""
        natural = self._natural(index)
        if index in self.id_columns:
            return natural
        floor = min(natural, max(MIN_OTHER, natural // MIN_SHARE))
        if index in self.token_columns:
            return max(floor, self._longest_word(index))
        return floor

    def fits(self, width: int) -> bool:
        """Whether a table ``width`` cells wide shows every id whole, keeps every
        token column's words whole, and keeps of every other column :data:`MIN_OTHER`
        characters or 1/:data:`MIN_SHARE` of its widest cell, whichever is more (all
        of it, if that is less).

        The default box draws ``3 * columns + 1`` cells of rules and padding. Rich
        narrows the widest foldable columns first, so when this holds it never
        has to narrow an id column.
        """
        need = 3 * len(self.headers) + 1 + sum(map(self._floor, range(len(self.headers))))
        return need <= width

    def table(self, width: int | None = None) -> Table:
        """The rows as a Rich ``Table`` for a console ``width`` cells wide: id columns
        unwrapped, at least as wide as their longest id; token columns as wide as
        the table lets them be beside the other columns' natural widths, but never
        narrower than their longest word; other columns folded."""
        natural = [self._natural(i) for i in range(len(self.headers))]
        excess = 0 if width is None else 3 * len(self.headers) + 1 + sum(natural) - width
        table = Table(title=self.title)
        for index, header in enumerate(self.headers):
            if index in self.id_columns:
                table.add_column(header, no_wrap=True, min_width=natural[index])
            elif index in self.token_columns:
                fixed = max(self._floor(index), natural[index] - max(excess, 0))
                excess -= natural[index] - fixed
                table.add_column(header, width=fixed, overflow="fold")
            else:
                table.add_column(header, overflow="fold")
        for row in self.rows:
            table.add_row(*row)
        return table

    def blocks(self, width: int) -> Iterator[RenderableType]:
        """The rows as blocks for a console ``width`` cells wide (module docstring)."""
        if self.title is not None:
            yield self.title if isinstance(self.title, Text) else Text(self.title)
        others = [i for i in range(len(self.headers)) if i not in self.id_columns]
        for row in self.rows:
            line = Text()
            for index in sorted(self.id_columns):
                part = Text.assemble(self.headers[index], " ", row[index])
                if line.cell_len and line.cell_len + len(ID_GAP) + part.cell_len > width:
                    yield line
                    line = Text()
                if line.cell_len:
                    line.append(ID_GAP)
                line.append_text(part)
            if line.cell_len:
                yield line
            details = Text("; ", overflow="fold").join(
                Text.assemble(self.headers[i], ": ", row[i]) for i in others
            )
            if details.cell_len:
                yield Padding(details, (0, 0, 0, 2), expand=False)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if self.fits(options.max_width):
            yield self.table(options.max_width)
        else:
            yield from self.blocks(options.max_width)
