"""``weightcli inspect``."""

from __future__ import annotations

import click

from weightcli.cli.options import debug_option, json_option, make_selection, selection_options
from weightcli.inspection import inspect_store
from weightcli.report import inspect_json, print_inspect, print_json
from weightcli.stores import open_store


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
    "--fail-on-nonfinite",
    is_flag=True,
    help="Exit 1 when any selected tensor holds NaN or Inf (for CI).",
)
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
    fail_on_nonfinite: bool,
    as_json: bool,
    debug: bool,
) -> int:
    """Show what a checkpoint holds: tensors grouped by layer, with statistics.

    PATH is any supported checkpoint: .h5, .keras, .weights.h5, a SavedModel
    directory, or a TF checkpoint prefix. With --json, one JSON object per model
    on its own line (schema in the README).

    \b
    Examples:
      weightcli inspect model.h5
      weightcli inspect model.keras --layers --no-stats
      weightcli inspect saved_model/ -s 'dense*' --json
      weightcli inspect ckpt.h5 --fail-on-nonfinite   # exit 1 on NaN/Inf
    """
    sel = make_selection(
        select, exclude, layer_types, kinds, include_optimizer or show_all, floats_only=False
    )
    failed = False
    for path in paths:
        with open_store(path) as store:
            result = inspect_store(store, sel, with_stats=not no_stats)
        if as_json:
            print_json(inspect_json(result))
        else:
            print_inspect(result, layers)
        if fail_on_nonfinite and result.nonfinite:
            failed = True
            if not as_json:
                click.echo(f"weightcli: {path}: {result.nonfinite} NaN/Inf values", err=True)
    if failed:
        raise SystemExit(1)
    return 0
