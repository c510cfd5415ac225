"""``weightcli inspect``."""

from __future__ import annotations

import sys
from functools import partial

import click

from weightcli.batch import Item, discover
from weightcli.cli.dispatch import dispatch, is_batch
from weightcli.cli.options import (
    batch_options,
    debug_option,
    json_option,
    make_selection,
    selection_options,
)
from weightcli.commands import inspect as command
from weightcli.errors import UsageError
from weightcli.report import print_inspect
from weightcli.results import InspectResult
from weightcli.stores.remote import as_path


def _task(request: command.InspectRequest, item: Item) -> InspectResult:
    return command.run(request, item.path)


def _sparkline(given: bool | None, no_stats: bool, layers: bool, as_json: bool) -> bool:
    """Sparklines when asked for, or on a terminal; asked for where they cannot show
    (no statistics, one row per layer, JSON), an error."""
    if given is None:
        return sys.stdout.isatty() and not (no_stats or layers or as_json)
    if given and no_stats:
        raise UsageError("--sparkline draws the statistics' values: drop --no-stats")
    if given and layers:
        raise UsageError("--sparkline draws each tensor: drop --layers")
    return given


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=str))
@selection_options
@click.option("--layers", is_flag=True, help="One row per layer instead of one per tensor.")
@click.option(
    "--no-stats", is_flag=True, help="Metadata only: read no tensor data (fast on any size)."
)
@click.option(
    "--all", "show_all", is_flag=True, help="Include optimizer state (hidden by default)."
)
@click.option(
    "--digests",
    is_flag=True,
    help="Each tensor's BLAKE3 digest of its values (C order, little-endian): equal for "
    "the same tensor in every format.",
)
@click.option(
    "--sparkline/--no-sparkline",
    default=None,
    help="A distribution sparkline per tensor (the report's histogram bins, summed in "
    "fours; default: on a terminal, off in pipes and with --json).",
)
@click.option(
    "--fail-on-nonfinite",
    is_flag=True,
    help="Exit 1 when any selected tensor holds NaN or Inf (for CI).",
)
@batch_options
@json_option
@debug_option
def inspect(
    paths: tuple[str, ...],
    select: tuple[str, ...],
    exclude: tuple[str, ...],
    layer_types: tuple[str, ...],
    kinds: tuple[str, ...],
    include_optimizer: bool,
    layers: bool,
    no_stats: bool,
    show_all: bool,
    digests: bool,
    sparkline: bool | None,
    fail_on_nonfinite: bool,
    recursive: bool,
    jobs: int | None,
    progress: bool | None,
    as_json: bool,
    debug: bool,
) -> None:
    """Show what a checkpoint holds: tensors grouped by layer, with statistics.

    PATH is any supported checkpoint: .h5, .keras, .weights.h5, a SavedModel
    directory, or a TF checkpoint prefix. Several PATHs, or directories with
    --recursive, run in parallel workers and end with a summary table. With
    --json, one JSON object per model on its own line (schema in the README).

    \b
    Examples:
      weightcli inspect model.h5
      weightcli inspect model.keras --layers --no-stats
      weightcli inspect saved_model/ -s 'dense*' --json
      weightcli inspect ckpt.h5 --fail-on-nonfinite   # exit 1 on NaN/Inf
      weightcli inspect -r checkpoints/ --fail-on-nonfinite --json
      weightcli inspect model.h5 --digests --no-stats --json   # did any tensor change?
    """
    request = command.InspectRequest(
        selection=make_selection(
            select, exclude, layer_types, kinds, include_optimizer or show_all, floats_only=False
        ),
        with_stats=not no_stats,
        fail_on_nonfinite=fail_on_nonfinite,
        digests=digests,
        histograms=_sparkline(sparkline, no_stats, layers, as_json),
    )
    batch = is_batch(paths, recursive)
    items = discover(paths, recursive) if batch else [Item(as_path(paths[0]))]
    dispatch(
        items,
        partial(_task, request),
        partial(print_inspect, layers=layers),
        batch=batch,
        jobs=jobs,
        progress=progress,
        as_json=as_json,
        debug=debug,
    )
