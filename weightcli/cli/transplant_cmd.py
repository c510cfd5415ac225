"""``weightcli transplant``."""

from __future__ import annotations

from pathlib import Path

import click

from weightcli.cli.dispatch import dispatch_one
from weightcli.cli.options import (
    debug_option,
    json_option,
    make_selection,
    output_group,
    pairing_options,
)
from weightcli.commands import transplant as command
from weightcli.compare import read_map_file
from weightcli.params import OutputSpec
from weightcli.report import print_transplant
from weightcli.stores.remote import as_path


@click.command()
@click.argument("source", type=click.Path(path_type=str))
@click.argument("target", type=click.Path(path_type=str))
@pairing_options(
    "SOURCE's",
    "order: pair the weights of both models in model order (rebuilt models whose names shifted).",
)
@click.option(
    "--layout",
    type=click.Choice(["keras", "torch"]),
    default="keras",
    show_default=True,
    help="torch: SOURCE holds PyTorch's layouts and names (a .safetensors state dict); each "
    "TARGET layer's rule names the tensors it takes (fc/kernel <- fc.weight) and converts them.",
)
@click.option(
    "-s", "--select", multiple=True, metavar="GLOB", help="Only these TARGET tensors (repeatable)."
)
@click.option(
    "-x", "--exclude", multiple=True, metavar="GLOB", help="Leave these TARGET tensors out."
)
@click.option(
    "--source-select", multiple=True, metavar="GLOB", help="Only these SOURCE tensors (repeatable)."
)
@click.option(
    "--from-ema",
    is_flag=True,
    help="Take SOURCE's weights from its optimizer's moving averages (Keras 3 use_ema=True).",
)
@click.option(
    "--include-optimizer", is_flag=True, help="Also move optimizer state (matched by name)."
)
@click.option(
    "--strict",
    is_flag=True,
    help="Exit 1 when a TARGET tensor receives nothing or a SOURCE tensor is unused.",
)
@output_group()
@json_option
@debug_option
def transplant(
    source: str,
    target: str,
    maps: tuple[str, ...],
    map_file: Path | None,
    match_by: str,
    layout: str,
    select: tuple[str, ...],
    exclude: tuple[str, ...],
    source_select: tuple[str, ...],
    from_ema: bool,
    include_optimizer: bool,
    strict: bool,
    out: OutputSpec,
    as_json: bool,
    debug: bool,
) -> None:
    """Move weights from SOURCE into a copy of TARGET, in TARGET's format.

    Tensors are matched by canonical name (after --map renames SOURCE's), or by
    position in model order (--match-by order). A pair whose shapes differ is skipped
    and reported; values are cast to TARGET's dtype (a loss of precision is said). Every
    TARGET tensor that receives nothing keeps its bytes, as do TARGET's config, graph
    and optimizer state. The report lists every TARGET tensor with what it received,
    then the SOURCE tensors left unused. --dry-run answers "which of my weights would
    load?" and writes nothing.

    \b
    Examples:
      weightcli transplant trained.keras new_model.keras --map 'base/*=backbone/*' -o ready.keras
      weightcli transplant old_tfkeras.h5 rebuilt.keras --match-by order -o ported.keras
      weightcli transplant ckpt/ckpt-10 saved_model/ -o refreshed_model/ --strict
      weightcli transplant a.weights.h5 b.h5 --dry-run
      weightcli transplant trained.keras trained.keras --from-ema -o export_ready.keras
      weightcli transplant torch.safetensors model.keras --layout torch --map 'encoder.*=dense*' -o ported.keras
    """
    request = command.TransplantRequest(
        source=as_path(source),
        selection=make_selection(select, exclude, (), (), False, floats_only=False),
        source_select=tuple(source_select),
        maps=tuple(maps) + (read_map_file(map_file) if map_file else ()),
        match_by=match_by,
        layout=layout,
        strict=strict,
        include_optimizer=include_optimizer,
        from_ema=from_ema,
        out=out,
    )
    dispatch_one(target, command.run, request, print_transplant, as_json=as_json, debug=debug)
