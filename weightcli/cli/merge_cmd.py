"""``weightcli merge``."""

from __future__ import annotations

from typing import Any

import click

from weightcli.cli import options
from weightcli.cli.dispatch import dispatch_one
from weightcli.cli.options import (
    debug_option,
    json_option,
    make_selection,
    output_group,
)
from weightcli.commands import merge as command
from weightcli.errors import ParameterError, literal
from weightcli.params import OutputSpec
from weightcli.report import print_transform
from weightcli.stores.remote import as_path


def _floats(text: str | None) -> tuple[float, ...]:
    if not text:
        return ()
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ParameterError(
            f"{{weights}} takes numbers separated by commas, got {literal(repr(text))}"
        ) from None


def _params(weights: str | None = None, **given: Any) -> command.MethodParams:
    return command.MethodParams(weights=_floats(weights), **given)


@click.command()
@click.argument("inputs", nargs=-1, type=click.Path(path_type=str), metavar="A B [C ...]")
@click.option(
    "--method",
    default="mean",
    show_default=True,
    metavar="METHOD",
    help="mean, ema, task-arithmetic, ties, dare-linear, dare-ties, breadcrumbs, "
    "breadcrumbs-ties, della, della-linear, slerp, model-stock (- or _).",
)
@click.option(
    "--config",
    "config",
    type=click.Path(path_type=str),
    metavar="MERGE.yaml",
    help="A merge file (models, base, method, parameters per model and per tensor, "
    "gradients over depth): then give no inputs.",
)
@click.option(
    "--weights",
    metavar="W1,W2,...",
    help="mean: a weight per input (normalised); task arithmetic family: each input's weight.",
)
@click.option("--decay", type=float, help="ema: the decay, in (0, 1); inputs oldest first.")
@click.option(
    "--base",
    type=click.Path(path_type=str),
    help="The model the inputs were fine-tuned from (task arithmetic family, model-stock).",
)
@click.option(
    "--lambda",
    "lam",
    type=float,
    help="Task arithmetic family: scale of the merged task vector (1.0).",
)
@click.option(
    "--density",
    type=float,
    help="ties, dare, breadcrumbs, della: fraction of each task vector kept, in (0, 1].",
)
@click.option(
    "--gamma", type=float, help="breadcrumbs: fraction of largest magnitudes dropped (0.01)."
)
@click.option("--epsilon", type=float, help="della: spread of the keep probabilities (0.15).")
@click.option("--t", "t", type=float, help="slerp: 0 gives the first input, 1 the second.")
@click.option("--seed", type=int, help="dare, della: the seed of the random drops (0).")
@click.option(
    "--normalize/--no-normalize",
    default=None,
    help="Task arithmetic family: divide by the weights summed (default: the method's).",
)
@click.option(
    "--rescale/--no-rescale",
    default=None,
    help="dare, della: divide what is kept by its keep probability (default: yes).",
)
@click.option(
    "--map",
    "maps",
    multiple=True,
    metavar="OLD=NEW",
    help="Rename the other inputs' tensors before matching (as diff --map).",
)
@click.option(
    "-s",
    "--select",
    multiple=True,
    metavar="GLOB",
    help="Only merge these tensors (the rest: the first input's).",
)
@click.option("-x", "--exclude", multiple=True, metavar="GLOB", help="Do not merge these tensors.")
@options.parsed_into("params", _params, command.METHOD_FIELDS)
@output_group()
@json_option
@debug_option
def merge(
    inputs: tuple[str, ...],
    method: str,
    config: str | None,
    base: str | None,
    params: command.MethodParams,
    maps: tuple[str, ...],
    select: tuple[str, ...],
    exclude: tuple[str, ...],
    out: OutputSpec,
    as_json: bool,
    debug: bool,
) -> None:
    """Merge several checkpoints in one streaming pass.

    Tensors are matched by canonical name across the inputs (which may be of different
    formats); the inputs must agree on the names, shapes and dtypes of the merged
    tensors. Floating-point weights are combined in float64 and written in their own
    dtype into a surgery copy of the first input (of BASE when there is one); integer
    tensors and optimizer state stay as that file holds them. The methods are
    mergekit's (each cites its paper in weightcli/transforms/merge.py); every parameter
    is checked at every tensor before a tensor is read.

    \b
    Examples:
      weightcli merge ft1.keras ft2.keras ft3.keras -o soup.keras
      weightcli merge a.h5 b.h5 --weights 0.7,0.3 -o blend.h5
      weightcli merge ckpt_1.h5 ckpt_2.h5 ckpt_3.h5 --method ema --decay 0.9 -o ema.h5
      weightcli merge ft1.keras ft2.keras --method task-arithmetic --base base.keras --lambda 0.5 -o ta.keras
      weightcli merge ft1.keras ft2.keras --method ties --base base.keras --density 0.2 -o ties.keras
      weightcli merge ft1.keras ft2.keras --method dare-ties --base base.keras --density 0.5 --seed 1 -o dare.keras
      weightcli merge a.keras b.keras --method slerp --t 0.3 -o slerp.keras
      weightcli merge --config merge.yaml -o merged.keras
    """
    if config is not None:
        if inputs:
            raise ParameterError("a merge file names the models: give no inputs with {config}")
        first = config
    elif not inputs:
        raise ParameterError("give the models to merge, or {config} MERGE.yaml")
    else:
        first = inputs[0]
    request = command.MergeRequest(
        others=tuple(as_path(p) for p in inputs[1:]),
        method=method,
        base=as_path(base) if base is not None else None,
        params=params,
        config=config is not None,
        selection=make_selection(select, exclude, (), (), False),
        maps=tuple(maps),
        out=out,
    )
    dispatch_one(first, command.run, request, print_transform, as_json=as_json, debug=debug)
