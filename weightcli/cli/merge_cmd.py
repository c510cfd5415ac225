"""``weightcli merge``."""

from __future__ import annotations

from pathlib import Path

import click

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


@click.command()
@click.argument(
    "inputs", nargs=-1, required=True, type=click.Path(path_type=str), metavar="A B [C ...]"
)
@click.option(
    "--method",
    type=click.Choice(list(command.METHODS)),
    default="mean",
    show_default=True,
    help="mean (--weights), ema (--decay), task-arithmetic (--base, --lambda), ties (--base, --density, --lambda).",
)
@click.option(
    "--weights", metavar="W1,W2,...", help="mean: a weight per input (normalised to sum 1)."
)
@click.option("--decay", type=float, help="ema: the decay, in (0, 1); inputs oldest first.")
@click.option(
    "--base",
    type=click.Path(path_type=str),
    help="task-arithmetic, ties: the model the inputs were fine-tuned from.",
)
@click.option(
    "--lambda",
    "lam",
    type=float,
    help="task-arithmetic, ties: scale of the merged task vector (1.0).",
)
@click.option(
    "--density",
    type=float,
    help="ties: fraction of each task vector's largest magnitudes kept, in (0, 1].",
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
@output_group()
@json_option
@debug_option
def merge(
    inputs: tuple[str, ...],
    method: str,
    weights: str | None,
    decay: float | None,
    base: Path | None,
    lam: float | None,
    density: float | None,
    maps: tuple[str, ...],
    select: tuple[str, ...],
    exclude: tuple[str, ...],
    out: OutputSpec,
    as_json: bool,
    debug: bool,
) -> None:
    """Average or merge several checkpoints in one streaming pass.

    Tensors are matched by canonical name across the inputs (which may be of different
    formats); the inputs must agree on the names, shapes and dtypes of the merged
    tensors. Floating-point weights are combined in float64 and written in their own
    dtype into a surgery copy of the first input (of BASE for task-arithmetic and
    ties); integer tensors and optimizer state stay as that file holds them.

    \b
    Examples:
      weightcli merge ft1.keras ft2.keras ft3.keras -o soup.keras
      weightcli merge a.h5 b.h5 --weights 0.7,0.3 -o blend.h5
      weightcli merge ckpt_1.h5 ckpt_2.h5 ckpt_3.h5 --method ema --decay 0.9 -o ema.h5
      weightcli merge ft1.keras ft2.keras --method task-arithmetic --base base.keras --lambda 0.5 -o ta.keras
      weightcli merge ft1.keras ft2.keras --method ties --base base.keras --density 0.2 -o ties.keras
    """
    request = command.MergeRequest(
        others=tuple(as_path(p) for p in inputs[1:]),
        method=method,
        weights=_floats(weights),
        decay=decay,
        base=as_path(base) if base is not None else None,
        lam=lam,
        density=density,
        selection=make_selection(select, exclude, (), (), False),
        maps=tuple(maps),
        out=out,
    )
    dispatch_one(inputs[0], command.run, request, print_transform, as_json=as_json, debug=debug)
