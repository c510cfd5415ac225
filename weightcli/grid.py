"""Tables and styled text for the reports, drawn without rich when nobody sees colour.

A ``Grid`` looks like rich's default ``Table`` (heavy-headed box, one space of
padding) and is laid out here in one pass from the widest cell of each column; rich
would lay out every cell as a renderable of its own, which dominated ``inspect`` on
models with hundreds of tensors. Cells are plain ``str`` or ``Styled`` runs of text,
never console markup, so a tensor called ``w[0]`` stays ``w[0]``.

``Out`` prints lines, styled text and grids. On a terminal (or with FORCE_COLOR) it
hands them to rich, for colour; otherwise (pipes, files, CI logs: most runs) it
writes the same characters itself, and rich is never imported, which saves a tenth
of a short command's run time. Tables too wide for the output fall back to rich's
``Table``, whose cells fold.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import unicodedata
from collections.abc import Iterator, Sequence
from functools import cache
from typing import Any, TextIO

Run = tuple[str, str | None]  # text and its style ("bold cyan"), None for none


class Styled:
    """Text in runs that each may carry a rich style name."""

    def __init__(self, text: str = "", style: str | None = None) -> None:
        self.runs: list[Run] = [(text, style)] if text else []

    def append(self, text: str, style: str | None = None) -> Styled:
        if text:
            self.runs.append((text, style))
        return self

    @property
    def plain(self) -> str:
        return "".join(t for t, _ in self.runs)

    def __str__(self) -> str:
        return self.plain

    def __repr__(self) -> str:
        return f"Styled({self.runs!r})"


Cell = str | Styled


def plain(cell: Cell) -> str:
    return cell.plain if isinstance(cell, Styled) else cell


def cell_len(text: str) -> int:
    """Terminal cells ``text`` takes (wide East Asian characters take two)."""
    if text.isascii():
        return len(text)
    return sum(_char_width(c) for c in text)


@cache
def _char_width(c: str) -> int:
    if unicodedata.combining(c):
        return 0
    return 2 if unicodedata.east_asian_width(c) in "WF" else 1


def runs_of(cell: Cell) -> list[Run]:
    return list(cell.runs) if isinstance(cell, Styled) else ([(cell, None)] if cell else [])


def column_widths(headers: Sequence[str], rows: Sequence[Sequence[Cell]]) -> list[int]:
    """The width of each column: its widest cell, title included, in terminal cells."""
    widths = [cell_len(h) for h in headers]
    for row in rows:
        for j, cell in enumerate(row):
            n = cell_len(plain(cell))
            if n > widths[j]:
                widths[j] = n
    return widths


def total_width(widths: Sequence[int]) -> int:
    """Characters per line once borders and padding are added."""
    return sum(widths) + 3 * len(widths) + 1


# rich's HEAVY_HEAD box: top, header row, header rule, body rows, section rule, bottom.
BOX = {
    "top": ("┏", "━", "┳", "┓"),
    "head": ("┃", "┃", "┃"),
    "head_rule": ("┡", "━", "╇", "┩"),
    "body": ("│", "│", "│"),
    "rule": ("├", "─", "┼", "┤"),
    "bottom": ("└", "─", "┴", "┘"),
}
ASCII_BOX = {
    "top": ("+", "-", "+", "+"),
    "head": ("|", "|", "|"),
    "head_rule": ("|", "-", "+", "|"),
    "body": ("|", "|", "|"),
    "rule": ("|", "-", "+", "|"),
    "bottom": ("+", "-", "+", "+"),
}


class Grid:
    """Rows of cells under a bold header. ``justify`` is "left" or "right" per column;
    ``section_ends`` are row indexes followed by a separator line."""

    def __init__(
        self,
        headers: Sequence[str],
        justify: Sequence[str],
        rows: Sequence[Sequence[Cell]],
        widths: Sequence[int],
        section_ends: set[int] | None = None,
    ) -> None:
        self.headers = list(headers)
        self.justify = list(justify)
        self.rows = rows
        self.widths = list(widths)
        self.section_ends = section_ends or set()

    def _fold(self, cell: Cell, j: int) -> list[Cell]:
        """A cell as the lines it takes: text wider than its column is folded (split
        every ``width`` characters, keeping each run's style)."""
        width = self.widths[j]
        if cell_len(plain(cell)) <= width or width < 1:
            return [cell]
        lines: list[Cell] = []
        current = Styled()
        room = width
        for text, style in runs_of(cell):
            while text:
                piece, text = _split_cells(text, room)
                current.append(piece, style)
                room -= cell_len(piece)
                if room <= 0 or (not piece and text):
                    lines.append(current)
                    current, room = Styled(), width
        if plain(current):
            lines.append(current)
        return lines

    def _cell(self, cell: Cell, j: int, style: str | None = None) -> list[Run]:
        text = plain(cell)
        runs: list[Run] = runs_of(cell) if style is None else [(text, style)]
        right = self.justify[j] == "right"
        if right and text != text.rstrip():  # as rich does: no trailing blanks
            text = text.rstrip()
            runs = _cut(runs, len(text))
        gap = self.widths[j] - cell_len(text)
        pad: list[Run] = [(" " * gap, style)] if gap > 0 else []
        return [(" ", style), *(pad + runs if right else runs + pad), (" ", style)]

    def lines(self, ascii_only: bool = False) -> Iterator[list[Run]]:
        """The table, line by line, as runs of styled text."""
        box = ASCII_BOX if ascii_only else BOX
        padded = [w + 2 for w in self.widths]

        def rule(kind: str) -> list[Run]:
            left, fill, cross, right = box[kind]
            return [(left + cross.join(fill * w for w in padded) + right, None)]

        def row(kind: str, cells: Sequence[Cell], style: str | None = None) -> Iterator[list[Run]]:
            left, mid, right = box[kind]
            parts = [self._fold(cell, j) for j, cell in enumerate(cells)]
            for k in range(max(len(p) for p in parts)):
                out: list[Run] = [(left, None)]
                for j, p in enumerate(parts):
                    if j:
                        out.append((mid, None))
                    out += self._cell(p[k] if k < len(p) else "", j, style)
                out.append((right, None))
                yield out

        yield rule("top")
        yield from row("head", self.headers, "bold")
        yield rule("head_rule")
        last = len(self.rows) - 1
        for i, cells in enumerate(self.rows):
            yield from row("body", cells)
            if i in self.section_ends and i != last:
                yield rule("rule")
        yield rule("bottom")

    def __rich_console__(self, console: Any, options: Any) -> Iterator[Any]:
        from rich.segment import Segment

        for runs in self.lines(ascii_only=options.ascii_only):
            for text, style in runs:
                yield Segment(text, console.get_style(style) if style else None)
            yield Segment.line()

    def __rich_measure__(self, console: Any, options: Any) -> Any:
        from rich.measure import Measurement

        width = total_width(self.widths)
        return Measurement(width, width)


def _cut(runs: list[Run], n: int) -> list[Run]:
    """The first ``n`` characters of ``runs``."""
    out: list[Run] = []
    for text, style in runs:
        if n <= 0:
            break
        out.append((text[:n], style))
        n -= len(text)
    return out


def table(
    headers: Sequence[tuple[str, str]],
    rows: Sequence[Sequence[Any]],
    width: int,
    section_ends: set[int] | None = None,
) -> Grid:
    """``headers`` are (title, justify). When the table is wider than ``width``
    columns, the text (left-justified) columns fold, widest first, down to 8 characters;
    numbers (right-justified) are never split. A table that still does not fit is drawn
    wider than ``width`` rather than lose or cut a cell."""
    titles = [h for h, _ in headers]
    justify = [j for _, j in headers]
    cells = [[c if isinstance(c, Styled) else str(c) for c in r] for r in rows]
    widths = column_widths(titles, cells)
    floor = [
        w if j == "right" else min(w, max(8, cell_len(t)))
        for w, j, t in zip(widths, justify, titles, strict=True)
    ]
    while total_width(widths) > width:
        foldable = [k for k in range(len(widths)) if widths[k] > floor[k]]
        if not foldable:
            break
        k = max(foldable, key=lambda i: widths[i])
        widths[k] -= 1
    return Grid(titles, justify, cells, widths, section_ends)


def _split_cells(text: str, room: int) -> tuple[str, str]:
    """``text`` cut after ``room`` terminal cells (wide characters count as two)."""
    used = 0
    for i, ch in enumerate(text):
        w = cell_len(ch)
        if used + w > room:
            return text[:i], text[i:]
        used += w
    return text, ""


def to_rich_text(cell: Cell) -> Any:
    from rich.text import Text

    text = Text()
    for part, style in runs_of(cell):
        text.append(part, style=style or "")
    return text


class Out:
    """Prints lines (``str``, no markup), ``Styled`` text and tables to one stream."""

    def __init__(self, stream: TextIO, width: int | None, color: bool) -> None:
        self.stream = stream
        self.color = color
        self._rich: Any = None
        if color:
            self._rich = rich_console(stream, width)
            self.width: int = self._rich.width
        else:
            self.width = width or shutil.get_terminal_size().columns

    def print(self, item: Any = "") -> None:
        if self._rich is not None:
            # A table wider than the terminal (numbers are never cut) is drawn whole.
            self._rich.print(
                to_rich_text(item) if isinstance(item, Styled) else item, markup=False, crop=False
            )
            return
        if isinstance(item, Grid):
            text = "\n".join("".join(t for t, _ in line) for line in item.lines()) + "\n"
        elif isinstance(item, str | Styled):
            text = plain(item) + "\n"
        else:  # a rich renderable (a folding Table): rich draws it, without colour
            rich_console(self.stream, self.width, color_system=None).print(item)
            return
        self.stream.write(text)


def rich_console(stream: TextIO, width: int | None, **kwargs: Any) -> Any:
    from rich.console import Console

    return Console(
        file=stream, width=width, soft_wrap=False, highlight=False, emoji=False, **kwargs
    )


def wants_color(stream: TextIO) -> bool:
    """Colour for a terminal, or when FORCE_COLOR asks for it (and NO_COLOR does not)."""
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def out(stderr: bool = False) -> Out:
    """An ``Out`` for stdout (or stderr) that does not squeeze tables to 80 columns when
    output is a pipe or CI log (COLUMNS, else 180)."""
    stream = sys.stderr if stderr else sys.stdout
    color = wants_color(stream)
    width = None
    if not stream.isatty():
        columns = os.environ.get("COLUMNS", "")
        width = int(columns) if columns.isdigit() and int(columns) > 0 else 180
    return Out(stream, width, color)


def fmt_num(x: float | None, digits: int = 4) -> str:
    if x is None:
        return "-"
    if x == 0:
        return "0"
    if not math.isfinite(x):
        return str(x)
    if abs(x) >= 1e5 or abs(x) < 1e-3:
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"
