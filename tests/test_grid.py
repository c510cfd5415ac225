"""Tables and reports: what weightcli draws itself equals what rich draws (the oracle)."""

from __future__ import annotations

import io
import re
import sys

import pytest
from helpers import SAMPLES, run
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from rich.table import Table

from weightcli import grid
from weightcli.grid import Out, Styled

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
    headers: list[tuple[str, str]], rows: list[list[str | Styled]], ends: set[int]
) -> Table:
    t = Table(header_style="bold")
    for title, justify in headers:
        t.add_column(title, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for i, r in enumerate(rows):
        t.add_row(*(grid.to_rich_text(c) for c in r), end_section=i in ends)
    return t


def plain_out(renderable: object) -> str:
    buf = io.StringIO()
    Out(buf, 200, color=False).print(renderable)
    return buf.getvalue()


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
    cells: list[list[str | Styled]] = [
        [Styled(c, "bold cyan").append(" x", "dim") if j == 0 and c else c for j, c in enumerate(r)]
        for r in rows
    ]
    ours = grid.table(headers, cells, 200, ends)
    assert isinstance(ours, grid.Grid)
    want = render(rich_table(headers, cells, ends))
    assert render(ours) == want  # drawn through rich
    assert plain_out(ours) == want  # drawn without rich


def test_styles_reach_the_terminal() -> None:
    t = grid.table([("Name", "left"), ("N", "right")], [[Styled("red", "red"), "1"]], 80)
    out = render(t, 80, color=True)
    assert "\x1b[1m" in out  # the bold header
    assert "\x1b[31mred" in out


def test_cells_are_not_markup() -> None:
    t = grid.table([("Tensor", "left")], [["w[bold]x[/bold]"], ["a[0]"]], 80)
    for out in (render(t), plain_out(t)):
        assert "w[bold]x[/bold]" in out and "a[0]" in out


def test_too_wide_folds_text_and_keeps_numbers_whole() -> None:
    rows = [["x" * 60, "y" * 60, "-1.234e-05"]]
    t = grid.table([("A", "left"), ("B", "left"), ("N", "right")], rows, 80)
    for out in (render(t, 80), plain_out(t)):
        assert max(len(line) for line in out.splitlines()) <= 80
        assert out.count("x") == 60 and out.count("y") == 60
        assert "-1.234e-05" in out  # one piece, on one line
    # Numbers alone wider than the terminal: drawn wider, never cut.
    wide = grid.table([("N", "right")] * 12, [["-1.234e-05"] * 12], 80)
    out = plain_out(wide)
    assert out.count("-1.234e-05") == 12


@pytest.mark.parametrize(
    "args",
    [
        ["inspect", str(SAMPLES / "cnn_keras3.h5")],
        ["inspect", str(SAMPLES / "mlp_export"), "--layers"],
        ["inspect", str(SAMPLES / "mlp_nan.h5"), "--no-stats"],
        ["diff", str(SAMPLES / "mlp_keras3.h5"), str(SAMPLES / "mlp_nan.h5"), "--all-rows"],
        ["verify", str(SAMPLES / "mlp.keras"), "--no-load"],
        ["scale", str(SAMPLES / "cnn.keras"), "0.5", "--dry-run"],
        ["inspect", str(SAMPLES / "mlp.keras"), str(SAMPLES / "mlp_keras3.h5")],
    ],
)
def test_reports_without_rich_equal_reports_through_rich(monkeypatch, args: list[str]) -> None:
    """Every report drawn for a pipe (no rich) has the characters rich draws for it."""

    def through(color: bool) -> str:
        monkeypatch.setattr(grid, "out", lambda stderr=False: Out(sys.stdout, 150, color))
        res = run(*args)
        assert res.code in (0, 1), res.err
        return re.sub(r"\d+\.\d\d s\b", "T.TT s", res.out)  # elapsed times vary

    through_rich = through(True)  # rich, writing to a pipe: no colour codes
    assert "\x1b[" not in through_rich
    assert through(False) == through_rich
