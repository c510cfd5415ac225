"""Option bundles shared by several commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from weightcli.select import Selection, split_list

F = Callable[..., Any]


def debug_option(f: F) -> F:
    return click.option("--debug", is_flag=True, hidden=True, help="Show tracebacks.")(f)


def selection_options(f: F) -> F:
    """--select/--exclude/--layer-type/--kind/--include-optimizer."""
    f = click.option(
        "--include-optimizer", is_flag=True, help="Also select optimizer state (hidden by default)."
    )(f)
    f = click.option(
        "--kind",
        "kinds",
        multiple=True,
        metavar="KIND[,KIND]",
        help="Only these kinds: kernel, bias, gamma, beta, moving_mean, moving_variance, embeddings, ...",
    )(f)
    f = click.option(
        "--layer-type",
        "layer_types",
        multiple=True,
        metavar="CLASS[,CLASS]",
        help="Only layers of these Keras classes (Dense,Conv2D); needs a file with a model config.",
    )(f)
    f = click.option(
        "-x",
        "--exclude",
        multiple=True,
        metavar="GLOB",
        help="Leave out tensors whose canonical name matches GLOB (repeatable).",
    )(f)
    f = click.option(
        "-s",
        "--select",
        multiple=True,
        metavar="GLOB",
        help="Only tensors whose canonical name matches GLOB, e.g. 'dense_*/kernel' or a layer name (repeatable).",
    )(f)
    return f


def make_selection(
    select: tuple[str, ...],
    exclude: tuple[str, ...],
    layer_types: tuple[str, ...],
    kinds: tuple[str, ...],
    include_optimizer: bool,
    floats_only: bool = True,
) -> Selection:
    return Selection(
        select=tuple(select),
        exclude=tuple(exclude),
        layer_types=split_list(layer_types),
        kinds=split_list(kinds),
        include_optimizer=include_optimizer,
        floats_only=floats_only,
    )


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON on stdout.")(
        f
    )
