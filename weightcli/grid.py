"""A table that looks like rich's default ``Table`` (heavy-headed box, one space of
padding) but renders in a single pass over precomputed column widths.

rich lays out every cell of a ``Table`` as a renderable of its own: on a model with
hundreds of tensors that is most of ``inspect``'s run time. When every column fits
the console at its widest cell, nothing needs laying out, so the lines are built
here directly. Cells are plain text (``str``) or ``rich.text.Text`` for styled
text; neither is parsed as console markup, so a tensor called ``w[0]`` stays
``w[0]``. Tables too wide for the console fall back to rich's ``Table``, which
folds cells.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from rich.box import HEAVY_HEAD
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.segment import Segment
from rich.style import Style
from rich.table import Table
from rich.text import Text

Cell = str | Text


def _plain(cell: Cell) -> str:
    return cell.plain if isinstance(cell, Text) else cell


def column_widths(headers: Sequence[str], rows: Iterable[Sequence[Cell]]) -> list[int]:
    """The width of each column: its widest cell, title included, in terminal cells."""
    widths = [cell_len(h) for h in headers]
    for row in rows:
        for j, cell in enumerate(row):
            n = cell_len(_plain(cell))
            if n > widths[j]:
                widths[j] = n
    return widths


def total_width(widths: Sequence[int]) -> int:
    """Characters per line once borders and padding are added."""
    return sum(widths) + 3 * len(widths) + 1


class Grid:
    """Rows of cells under a bold header, in rich's ``Table`` look.

    ``justify`` is "left" or "right" per column; ``section_ends`` are row indexes
    followed by a separator line.
    """

    def __init__(
        self,
        headers: Sequence[str],
        justify: Sequence[str],
        rows: Sequence[Sequence[Cell]],
        widths: Sequence[int],
        section_ends: set[int] | None = None,
        header_style: str = "bold",
    ) -> None:
        self.headers = list(headers)
        self.justify = list(justify)
        self.rows = rows
        self.widths = list(widths)
        self.section_ends = section_ends or set()
        self.header_style = header_style

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        width = total_width(self.widths)
        return Measurement(width, width)

    def _cell(self, cell: Cell, j: int, console: Console, base: Style) -> list[Segment]:
        right = self.justify[j] == "right"
        if right:  # as rich does: right-justified text loses trailing blanks
            if isinstance(cell, Text):
                cell = cell.copy()
                cell.rstrip()
            else:
                cell = cell.rstrip()
        text = _plain(cell)
        gap = self.widths[j] - cell_len(text)
        if isinstance(cell, Text) and (cell.spans or cell.style):
            own = console.get_style(cell.style) if cell.style else None
            content = list(Segment.apply_style(cell.render(console), base + own if own else base))
        else:
            content = [Segment(text, base)] if text else []
        pad = Segment(" " * gap, base) if gap > 0 else None
        out = [Segment(" ", base)]
        if pad is not None and right:
            out.append(pad)
            out += content
        else:
            out += content
            if pad is not None:
                out.append(pad)
        out.append(Segment(" ", base))
        return out

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        box = HEAVY_HEAD.substitute(options, safe=console.safe_box)
        padded = [w + 2 for w in self.widths]
        line = Segment.line()
        null = Style.null()
        yield Segment(box.get_top(padded))
        yield line
        head = console.get_style(self.header_style)
        yield Segment(box.head_left)
        for j, title in enumerate(self.headers):
            if j:
                yield Segment(box.head_vertical)
            yield from self._cell(title, j, console, head)
        yield Segment(box.head_right)
        yield line
        yield Segment(box.get_row(padded, "head"))
        yield line
        separator = box.get_row(padded, "row")
        last = len(self.rows) - 1
        for i, row in enumerate(self.rows):
            left, mid, right = (
                (box.foot_left, box.foot_vertical, box.foot_right)
                if i == last
                else (box.mid_left, box.mid_vertical, box.mid_right)
            )
            yield Segment(left)
            for j, cell in enumerate(row):
                if j:
                    yield Segment(mid)
                yield from self._cell(cell, j, console, null)
            yield Segment(right)
            yield line
            if i in self.section_ends and i != last:
                yield Segment(separator)
                yield line
        yield Segment(box.get_bottom(padded))
        yield line


def table(
    headers: Sequence[tuple[str, str]],
    rows: Sequence[Sequence[Any]],
    width: int,
    section_ends: set[int] | None = None,
) -> Grid | Table:
    """``headers`` are (title, justify). A ``Grid`` when the table fits in ``width``
    columns, else rich's ``Table``, whose cells fold to fit."""
    titles = [h for h, _ in headers]
    justify = [j for _, j in headers]
    cells = [[c if isinstance(c, Text) else str(c) for c in r] for r in rows]
    widths = column_widths(titles, cells)
    if total_width(widths) <= width:
        return Grid(titles, justify, cells, widths, section_ends)
    t = Table(header_style="bold")
    for title, how in headers:
        t.add_column(title, justify=how, overflow="fold")  # type: ignore[arg-type]
    ends = section_ends or set()
    for i, r in enumerate(cells):
        t.add_row(*(c if isinstance(c, Text) else Text(c) for c in r), end_section=i in ends)
    return t
