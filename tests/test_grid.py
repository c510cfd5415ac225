"""The fast table renderer draws exactly what rich's own Table draws (the oracle)."""

from __future__ import annotations

import io

from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from rich.table import Table
from rich.text import Text

from weightcli import grid

WORDS = st.text(alphabet="abcdefghij_/0123456789 .,()-xé", min_size=0, max_size=14)


def render(renderable: object, width: int = 200, color: bool = False) -> str:
    buf = io.StringIO()
    con = Console(
        file=buf,
        width=width,
        color_system="standard" if color else None,
        force_terminal=color,
        soft_wrap=False,
        highlight=False,
    )
    con.print(renderable)
    return buf.getvalue()


def rich_table(
    headers: list[tuple[str, str]], rows: list[list[str | Text]], ends: set[int]
) -> Table:
    t = Table(header_style="bold")
    for title, justify in headers:
        t.add_column(title, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for i, r in enumerate(rows):
        t.add_row(*(c if isinstance(c, Text) else Text(c) for c in r), end_section=i in ends)
    return t


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 5).flatmap(
        lambda n: st.tuples(
            st.lists(st.tuples(WORDS, st.sampled_from(["left", "right"])), min_size=n, max_size=n),
            st.lists(st.lists(WORDS, min_size=n, max_size=n), min_size=1, max_size=8),
            st.sets(st.integers(0, 8)),
        )
    )
)
def test_grid_matches_rich_table(case: tuple) -> None:
    headers, rows, ends = case
    cells: list[list[str | Text]] = [
        [Text(c, style="bold cyan") if j == 0 and c else c for j, c in enumerate(r)] for r in rows
    ]
    ours = grid.table(headers, cells, 200, ends)
    assert isinstance(ours, grid.Grid)
    assert render(ours) == render(rich_table(headers, cells, ends))


def test_styles_reach_the_terminal() -> None:
    t = grid.table([("Name", "left"), ("N", "right")], [[Text("red", style="red"), "1"]], 80)
    out = render(t, 80, color=True)
    assert "\x1b[1m" in out  # the bold header
    assert "\x1b[31mred" in out


def test_cells_are_not_markup() -> None:
    t = grid.table([("Tensor", "left")], [["w[bold]x[/bold]"], ["a[0]"]], 80)
    out = render(t)
    assert "w[bold]x[/bold]" in out and "a[0]" in out


def test_too_wide_falls_back_to_folding_table() -> None:
    rows = [["x" * 60, "y" * 60]]
    t = grid.table([("A", "left"), ("B", "left")], rows, 80)
    assert isinstance(t, Table)
    out = render(t, 80)
    assert max(len(line) for line in out.splitlines()) <= 80
    assert out.count("x") == 60 and out.count("y") == 60
