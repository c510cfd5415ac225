"""``weightcli report``: one self-contained HTML page of a checkpoint, or of a change."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import click

from weightcli.batch import Item
from weightcli.cli.dispatch import Page, dispatch, page_path
from weightcli.cli.options import (
    debug_option,
    json_option,
    make_selection,
    pairing_options,
    selection_options,
)
from weightcli.commands import report as command
from weightcli.commands.diff import DiffRequest
from weightcli.compare import read_map_file
from weightcli.distribution import EXACT_SIDE, EXACT_SIDE_MAX
from weightcli.report import print_report
from weightcli.results import ReportResult
from weightcli.stores.remote import as_path


def _task(request: command.ReportRequest, item: Item) -> ReportResult:
    return command.run(request, item.path)


@click.command()
@click.argument("path", type=click.Path(path_type=str))
@click.option(
    "-o",
    "--output",
    "page_file",
    required=True,
    metavar="FILE.html",
    help="The page to write (replaced when it exists).",
)
@click.option(
    "--against",
    metavar="REF",
    help="Draw the change from REF (any format): relative change per tensor, the "
    "largest changes, before/after histograms.",
)
@click.option(
    "--exact-side",
    type=int,
    default=EXACT_SIDE,
    show_default=True,
    metavar="N",
    help="Exact spectra (every singular value, so the effective rank too) for kernels "
    f"whose smaller side is at most N (0 to {EXACT_SIDE_MAX}); power iteration above it. "
    "The cost grows as N^3: ResNet50's page takes 1.25x the time at 512.",
)
@pairing_options(
    "PATH's",
    "With --against: pair tensors by (mapped) name, or by position in model order.",
)
@selection_options
@json_option
@debug_option
def report(
    path: str,
    page_file: str,
    against: str | None,
    exact_side: int,
    maps: tuple[str, ...],
    map_file: Path | None,
    match_by: str,
    select: tuple[str, ...],
    exclude: tuple[str, ...],
    layer_types: tuple[str, ...],
    kinds: tuple[str, ...],
    include_optimizer: bool,
    as_json: bool,
    debug: bool,
) -> None:
    """Write one HTML page of a checkpoint: a histogram per tensor (linear and log
    counts), statistics, NaN/Inf, sparsity, distinct values, spectral norm, stable and
    effective rank of 2-D kernels, the history, and flags to look at first (NaN/Inf,
    dead or exploding kernels, layers far from their peers).

    The page is one file with everything inline: no network request, readable
    without JavaScript (which only sorts and filters), on a desktop or a phone.
    Every writing command's --report-html FILE and diff --html FILE write the
    same page for what they changed or compared.

    \b
    Examples:
      weightcli report model.h5 -o model.html
      weightcli report pruned.keras --against model.keras -o change.html
      weightcli report model.h5 -s 'dense*' -o dense.html
      weightcli report model.h5 --exact-side 1024 -o exact.html
      weightcli scale model.h5 0.5 -o half.h5 --report-html half.html
    """
    selection = make_selection(
        select, exclude, layer_types, kinds, include_optimizer, floats_only=False
    )
    request = command.ReportRequest(
        selection=selection,
        against=as_path(against) if against else None,
        exact_side=exact_side,
        pairing=DiffRequest(
            selection=selection,
            maps=tuple(maps) + (read_map_file(map_file) if map_file else ()),
            match_by=match_by,
            nan_equal=True,
        ),
    )
    # The dispatcher's page step writes it, as for every --report-html.
    page = Page("-o/--output", page_path(page_file, "-o/--output"), request)
    item = Item(as_path(path), other=as_path(against) if against else None)
    dispatch(
        [item],
        partial(_task, request),
        print_report,
        batch=False,
        as_json=as_json,
        debug=debug,
        page=page,
    )
