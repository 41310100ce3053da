"""Tables that fit the terminal and print their rows as they come.

A rich ``Table`` measures every row before it prints the first, and takes
most of a second per thousand rows; a listing of 40,000 errors would print
nothing for many seconds.  Here the column widths are decided from the
header and the first page of rows, and every row is then one line written
at once: widths are measured in terminal cells with ``rich.cells``, colour
comes from the console's own colour system.

Two ways to lay out:

* ``fit`` (a terminal, unless ``--wide``): the table fits the console's
  width.  The columns least worth keeping are dropped until the rest fit;
  the one ``flex`` column takes what is left; a cell too long for its column
  is cut with ``…`` (never broken over two lines, never cut mid-character).
* otherwise (a pipe, a file, ``--wide``): every column, nothing cut: one row
  per line whatever the width, for ``grep`` and ``awk``.

Text from the database is shown with its control characters escaped
(``\\x1b``), so a pipeline name cannot move the cursor or recolour the screen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from rich.cells import cell_len, set_cell_size
from rich.console import Console
from rich.text import Text

from ._text import visible

__all__ = ["GAP", "Column", "StreamTable", "clean"]

#: Spaces between columns.
GAP = 2
_ELLIPSIS = "…"
#: How far back a cut looks for a space to end on a whole word.
_WORD_BACK = 15


def clean(text: Any) -> str:
    """``text`` as a string safe for a terminal cell: control characters escaped."""
    s = "" if text is None else str(text)
    if s.isprintable():
        return s
    # One line per row: a newline is escaped too, a tab is a space.
    return visible(s.replace("\t", " ")).replace("\n", "\\x0a")


@dataclass(frozen=True, slots=True)
class Column:
    """A column: its header, how to get its cell from a row, and how it gives way.

    ``keep``: when the table is too wide, lower ``keep`` columns go first
    (100 and more are never dropped).  ``flex``: takes the width left over and
    is cut to fit.  ``max_width``: in a fitted table, longer cells are cut.
    ``style``: a rich style for a row's cell (``"red"``), or None.
    ``compact``: used instead of ``cell`` when the table is too wide.
    """

    header: str
    cell: Callable[[dict[str, Any]], str]
    right: bool = False
    keep: int = 50
    flex: bool = False
    min_width: int = 8
    max_width: int | None = None
    style: Callable[[dict[str, Any]], str | None] | None = None
    #: A shorter cell for a table that does not fit with ``cell``'s (``3h ago``).
    compact: Callable[[dict[str, Any]], str] | None = None


def _width(text: str) -> int:
    return len(text) if text.isascii() else cell_len(text)


def _fit(text: str, width: int) -> str:
    """``text`` cut to ``width`` cells, ending in ``…`` when cut; at a space if one is near."""
    if _width(text) <= width:
        return text
    if width <= 1:
        return _ELLIPSIS[:width]
    cut = text[: width - 1] if text.isascii() else set_cell_size(text, width - 1).rstrip()
    if not text[len(cut) : len(cut) + 1].isspace():
        space = cut.rfind(" ", max(0, len(cut) - _WORD_BACK))
        if space > 0:
            cut = cut[:space]  # end on a whole word rather than mid-word
    return cut.rstrip() + _ELLIPSIS


class StreamTable:
    """Print rows (dicts) under a header, a page at a time, fitted or not."""

    def __init__(
        self,
        out: Console,
        columns: list[Column],
        *,
        fit: bool,
        title: str | None = None,
    ) -> None:
        self.out = out
        self.columns = columns
        self.fit = fit
        self.title = title
        self.shown: list[Column] = []
        self.widths: list[int] = []
        self.rows = 0
        self.compact = False
        self._styles: dict[str, tuple[str, str]] = {}
        self._index: list[int] = []

    # -- layout -----------------------------------------------------------------------

    def _natural(self, first: list[list[str]]) -> list[int]:
        return [
            max([_width(col.header)] + [_width(cells[i]) for cells in first])
            for i, col in enumerate(self.columns)
        ]

    def _layout(self, page: list[dict[str, Any]]) -> list[list[str]]:
        """Choose the columns and their widths from the first page; its cells."""
        first = [self._cells(row) for row in page]
        room = self.out.width
        if self.fit and sum(self._natural(first)) + GAP * (len(self.columns) - 1) > room:
            self.compact = any(col.compact is not None for col in self.columns)
            first = [self._cells(row) for row in page]
        natural = []
        for i, col in enumerate(self.columns):
            width = max([_width(col.header)] + [_width(cells[i]) for cells in first])
            if self.fit and col.max_width is not None and not col.flex:
                width = min(width, max(col.max_width, _width(col.header)))
            natural.append(width)
        keep = list(range(len(self.columns)))
        if self.fit:
            while True:
                fixed = sum(natural[i] for i in keep if not self.columns[i].flex)
                flex = [i for i in keep if self.columns[i].flex]
                need = fixed + GAP * (len(keep) - 1)
                need += sum(min(natural[i], self.columns[i].min_width) for i in flex)
                droppable = [i for i in keep if self.columns[i].keep < 100]
                if need <= room or not droppable:
                    break
                keep.remove(min(droppable, key=lambda i: self.columns[i].keep))
            for i in flex:
                others = sum(natural[j] for j in keep if j != i) + GAP * (len(keep) - 1)
                natural[i] = max(1, min(natural[i], room - others))
        self.shown = [self.columns[i] for i in keep]
        self.widths = [natural[i] for i in keep]
        self._index = keep
        return first

    def _style(self, name: str) -> tuple[str, str]:
        """The escape codes around a cell of style ``name`` on this console ('' if none)."""
        if name not in self._styles:
            if self.out.color_system is None or not name:
                self._styles[name] = ("", "")
            else:
                with self.out.capture() as captured:
                    self.out.print(Text("\0", style=name), end="")
                before, _, after = captured.get().partition("\0")
                self._styles[name] = (before, after)
        return self._styles[name]

    # -- rows ---------------------------------------------------------------------------

    def _line(self, row: dict[str, Any] | None, cells: list[str]) -> str:
        parts = []
        last = len(self._index) - 1
        for n, (i, col, width) in enumerate(zip(self._index, self.shown, self.widths, strict=True)):
            text = cells[i]
            if self.fit:
                text = _fit(text, width)
            pad = width - _width(text)
            if pad > 0 and (col.right or n < last):
                text = " " * pad + text if col.right else text + " " * pad
            if row is not None and col.style is not None:
                before, after = self._style(col.style(row) or "")
                if before:
                    text = before + text + after
            parts.append(text)
        return (" " * GAP).join(parts).rstrip() if row is not None else (" " * GAP).join(parts)

    def _cells(self, row: dict[str, Any]) -> list[str]:
        if self.compact:
            return [clean((col.compact or col.cell)(row)) for col in self.columns]
        return [clean(col.cell(row)) for col in self.columns]

    def print_rows(self, pages: Iterable[list[dict[str, Any]]]) -> int:
        """Print every page's rows (the first page fixes the widths); the number printed."""
        file = self.out.file
        for page in pages:
            if not self.shown:
                cells = self._layout(page)
                self._header()
            else:
                cells = [self._cells(row) for row in page]
            lines = [self._line(row, c) for row, c in zip(page, cells, strict=True)]
            if lines:
                file.write("\n".join(lines) + "\n")
                file.flush()
            self.rows += len(lines)
        return self.rows

    def _header(self) -> None:
        if self.title:
            self.out.print(Text(self.title, style="bold"))
        header = self._line(None, [col.header for col in self.columns]).rstrip()
        # soft_wrap: the header is one line like the rows, however wide (a pipe).
        self.out.print(Text(header, style="bold"), soft_wrap=True)


def pages_of(rows: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """A list of rows as one page (for the short tables of ``show`` and ``status``)."""
    yield rows
