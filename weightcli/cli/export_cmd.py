"""``weightcli export``: a checkpoint's weights as a new file of another format."""

from __future__ import annotations

from pathlib import Path

import click

from weightcli.cli.dispatch import dispatch_one
from weightcli.cli.options import (
    debug_option,
    json_option,
    map_file_option,
    new_file_options,
    selection_group,
)
from weightcli.commands import export as command
from weightcli.compare import read_map_file
from weightcli.report import print_export
from weightcli.select import Selection
from weightcli.stores.registry import export_targets


@click.command()
@click.argument("path", metavar="IN", type=click.Path(path_type=str))
@click.option(
    "--to",
    type=click.Choice([*export_targets(), *command.CONVERTED]),
    default="safetensors",
    show_default=True,
    help="The format written (tflite: TensorFlow's converter on the whole model; the tf extra).",
)
@click.option(
    "--layout",
    type=click.Choice(["keras", "torch"]),
    default="keras",
    show_default=True,
    help="keras: each tensor as stored, by its canonical name; torch: PyTorch's names and "
    "layouts (fc/kernel -> fc.weight transposed; conv kernels to [O, I, k...]; LSTM/GRU gates).",
)
@new_file_options("OUT.safetensors")
@click.option(
    "--map",
    "maps",
    multiple=True,
    metavar="OLD=NEW",
    help="Rename the written tensors (diff --map's rules; re:PATTERN=NEW too).",
)
@map_file_option
@click.option(
    "--int8",
    is_flag=True,
    help="--to tflite: full-integer weights and activations, calibrated on --calibration.",
)
@click.option(
    "--calibration",
    type=click.Path(path_type=Path),
    metavar="FILE",
    help="--to tflite: sample inputs (.npy, or .npz with one array per input), samples "
    "first: --int8's calibration and --check's inputs.",
)
@click.option(
    "--check",
    is_flag=True,
    help="--to tflite: run OUT in the interpreter and IN in Keras on the same inputs "
    "(--calibration, or seeded random ones); exit 1 when outputs differ by more than --atol.",
)
@click.option(
    "--atol",
    type=float,
    default=None,
    help="--check's absolute tolerance (default 1e-4; 0.1 with --int8).",
)
@selection_group(floats_only=False)
@json_option
@debug_option
def export(
    path: str,
    to: str,
    layout: str,
    output: str,
    force: bool,
    digest: str | None,
    maps: tuple[str, ...],
    map_file: Path | None,
    int8: bool,
    calibration: Path | None,
    check: bool,
    atol: float | None,
    sel: Selection,
    as_json: bool,
    debug: bool,
) -> None:
    """Write IN's weights as a new file of another format (not surgery: a new container),
    or (--to tflite) convert the whole model with TensorFlow's converter.

    Model weights by default (optimizer state with --include-optimizer). --layout torch
    converts each tensor by its Keras layer class (a full model is needed: .keras, or an
    .h5 with its config); `weightcli transplant OUT.safetensors IN --layout torch` reads
    such a file back. The report lists every tensor, the names it was written as and the
    rule applied.

    \b
    Examples:
      weightcli export model.keras --to safetensors -o model.safetensors
      weightcli export model.keras --to safetensors --layout torch -o pytorch.safetensors
      weightcli export model.keras --layout torch --map 're:dense_(\\d+)\\.(.*)=fc\\1.\\2' -o t.safetensors
      weightcli export model.keras --to tflite -o model.tflite --check
      weightcli export model.keras --to tflite --int8 --calibration x.npy -o int8.tflite --check
    """
    request = command.ExportRequest(
        output=Path(output),
        to=to,
        layout=layout,
        selection=sel,
        force=force,
        digest=digest,
        maps=maps + (read_map_file(map_file) if map_file else ()),
        int8=int8,
        calibration=calibration,
        check=check,
        atol=atol,
    )
    dispatch_one(path, command.run, request, print_export, as_json=as_json, debug=debug)
