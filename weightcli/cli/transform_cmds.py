"""``weightcli scale | clip | quantize | apply``: transform tensors, write a new checkpoint."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from weightcli import pipeline, recipe
from weightcli.cli.options import debug_option, json_option, make_selection, selection_options
from weightcli.errors import UsageError
from weightcli.report import print_json, print_transform, transform_json
from weightcli.steps import ClipStep, QuantizeStep, ScaleStep, Step
from weightcli.stores import open_store

F = Callable[..., Any]


def output_options(f: F) -> F:
    f = click.option("--dry-run", is_flag=True, help="Report everything, write nothing.")(f)
    f = click.option("--force", is_flag=True, help="Overwrite an existing OUT.")(f)
    f = click.option(
        "--in-place", is_flag=True, help="Overwrite the input (atomically, via a temporary file)."
    )(f)
    f = click.option(
        "-o",
        "--output",
        type=click.Path(path_type=Path),
        help="Where to write the new checkpoint (same format as IN).",
    )(f)
    return f


def finite(value: float | None, name: str) -> float | None:
    if value is not None and not math.isfinite(value):
        raise UsageError(f"{name} must be a finite number, got {value}")
    return value


def execute(
    path: str,
    steps: Callable[[], list[Step]],
    output: Path | None,
    in_place: bool,
    force: bool,
    dry_run: bool,
    as_json: bool,
    command: str,
) -> None:
    try:
        built = steps()
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    src = Path(path)
    with open_store(src) as store:
        out = None if dry_run else pipeline.resolve_output(src, output, in_place, force)
        if dry_run and output is None and not in_place:
            pass
        try:
            result = pipeline.run(store, built, out, [command, path], dry_run=dry_run)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
    if as_json:
        print_json(transform_json(result))
    else:
        print_transform(result)


def parse_pairs(values: tuple[str, ...], option: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for v in values:
        key, sep, num = v.partition("=")
        if not sep or not key:
            raise UsageError(f"{option} takes NAME=FACTOR, got {v!r}")
        try:
            f = float(num)
        except ValueError:
            raise UsageError(f"{option} {v}: {num!r} is not a number") from None
        out[key] = finite(f, f"{option} {key}") or 0.0
    return out


@click.command()
@click.argument("path", type=click.Path(path_type=str))
@click.argument("factor", required=False, type=float)
@click.option(
    "--by-type",
    multiple=True,
    metavar="CLASS=F",
    help="Factor for layers of a Keras class (repeatable).",
)
@click.option(
    "--by-layer",
    multiple=True,
    metavar="GLOB=F",
    help="Factor for layers whose name matches GLOB (repeatable).",
)
@selection_options
@output_options
@json_option
@debug_option
def scale(
    path: str,
    factor: float | None,
    by_type: tuple[str, ...],
    by_layer: tuple[str, ...],
    select: tuple[str, ...],
    exclude: tuple[str, ...],
    layer_types: tuple[str, ...],
    kinds: tuple[str, ...],
    include_optimizer: bool,
    output: Path | None,
    in_place: bool,
    force: bool,
    dry_run: bool,
    as_json: bool,
    debug: bool,
) -> None:
    """Multiply selected tensors by FACTOR (0 zeroes them).

    Default selection: every floating-point model weight. --by-type and --by-layer
    give other factors to some layers (the last matching rule wins); without
    FACTOR only the layers they name are scaled.

    \b
    Examples:
      weightcli scale model.h5 0.5 -o half.h5
      weightcli scale model.keras 2 -s logits -o sharper.keras
      weightcli scale model.h5 --by-type Conv2D=0.9 --by-type Dense=1.1 -o out.h5
    """
    sel = make_selection(select, exclude, layer_types, kinds, include_optimizer)

    def steps() -> list[Step]:
        return [
            ScaleStep(
                sel,
                factor=finite(factor, "FACTOR"),
                by_type=parse_pairs(by_type, "--by-type"),
                by_layer=parse_pairs(by_layer, "--by-layer"),
            )
        ]

    execute(path, steps, output, in_place, force, dry_run, as_json, "scale")


@click.command()
@click.argument("path", type=click.Path(path_type=str))
@click.option("--min", "lo", type=float, help="Lower bound.")
@click.option("--max", "hi", type=float, help="Upper bound.")
@click.option("--abs-max", type=float, metavar="A", help="Symmetric bounds [-A, A].")
@click.option(
    "--percentile",
    type=float,
    metavar="P",
    help="Per tensor, symmetric: clip |x| at its P-th percentile (e.g. 99.9).",
)
@click.option("--sigma", type=float, metavar="K", help="Per tensor: clip to mean +- K std.")
@click.option(
    "--nonfinite",
    type=click.Choice(["keep", "zero", "clip"]),
    default="keep",
    show_default=True,
    help="NaN/Inf repair: zero = NaN and Inf to 0; clip = NaN to 0, +-Inf to the bounds (0 without one).",
)
@selection_options
@output_options
@json_option
@debug_option
def clip(
    path: str,
    lo: float | None,
    hi: float | None,
    abs_max: float | None,
    percentile: float | None,
    sigma: float | None,
    nonfinite: str,
    select: tuple[str, ...],
    exclude: tuple[str, ...],
    layer_types: tuple[str, ...],
    kinds: tuple[str, ...],
    include_optimizer: bool,
    output: Path | None,
    in_place: bool,
    force: bool,
    dry_run: bool,
    as_json: bool,
    debug: bool,
) -> None:
    """Clip selected tensors to bounds, and/or repair NaN and Inf.

    Reports per tensor how many elements were clipped and repaired.

    \b
    Examples:
      weightcli clip model.h5 --nonfinite zero -o repaired.h5
      weightcli clip model.keras --abs-max 1.0 -o clipped.keras
      weightcli clip model.h5 --percentile 99.9 --kind kernel -o tamed.h5
    """
    sel = make_selection(select, exclude, layer_types, kinds, include_optimizer)

    def steps() -> list[Step]:
        return [
            ClipStep(
                sel,
                min=lo,
                max=hi,
                abs_max=abs_max,
                percentile=percentile,
                sigma=sigma,
                nonfinite=nonfinite,
            )
        ]

    execute(path, steps, output, in_place, force, dry_run, as_json, "clip")


@click.command()
@click.argument("path", type=click.Path(path_type=str))
@click.option("--bits", type=int, default=8, show_default=True, help="Integer width, 2..16.")
@click.option(
    "--scheme",
    type=click.Choice(["symmetric", "asymmetric"]),
    default="symmetric",
    show_default=True,
)
@click.option(
    "--granularity",
    type=click.Choice(["per-channel", "per-tensor"]),
    default="per-channel",
    show_default=True,
)
@click.option(
    "--axis", type=int, help="Channel axis for per-channel (default: the layer's output channels)."
)
@click.option(
    "--dtype",
    type=click.Choice(["float16", "bfloat16"]),
    help="Instead of fake quantization, store the tensors in this dtype.",
)
@selection_options
@output_options
@json_option
@debug_option
def quantize(
    path: str,
    bits: int,
    scheme: str,
    granularity: str,
    axis: int | None,
    dtype: str | None,
    select: tuple[str, ...],
    exclude: tuple[str, ...],
    layer_types: tuple[str, ...],
    kinds: tuple[str, ...],
    include_optimizer: bool,
    output: Path | None,
    in_place: bool,
    force: bool,
    dry_run: bool,
    as_json: bool,
    debug: bool,
) -> None:
    """Fake-quantize selected tensors (quantize, then dequantize to their own dtype).

    Every loader still reads the file. Biases, normalisation parameters and other
    1-D tensors are left alone unless selected explicitly (--select or --kind).
    Per-channel uses the output-channel axis of each layer's kernel (the last axis;
    the second last for transposed and depthwise convolutions; rows for Embedding).
    Reports per tensor the scale, SQNR in dB and max |error|.

    \b
    Examples:
      weightcli quantize model.h5 -o q8.h5
      weightcli quantize model.keras --bits 4 --scheme asymmetric -o q4.keras
      weightcli quantize model.keras --dtype float16 -o half.keras
    """
    sel = make_selection(select, exclude, layer_types, kinds, include_optimizer)

    def steps() -> list[Step]:
        return [
            QuantizeStep(
                sel, bits=bits, scheme=scheme, granularity=granularity, axis=axis, dtype=dtype
            )
        ]

    execute(path, steps, output, in_place, force, dry_run, as_json, "quantize")


@click.command(name="apply")
@click.argument("recipe_path", metavar="RECIPE.toml", type=click.Path(path_type=Path))
@click.argument("path", type=click.Path(path_type=str))
@output_options
@json_option
@debug_option
def apply_cmd(
    recipe_path: Path,
    path: str,
    output: Path | None,
    in_place: bool,
    force: bool,
    dry_run: bool,
    as_json: bool,
    debug: bool,
) -> None:
    """Apply a recipe's steps (scale, clip, quantize) in one pass and one write.

    The recipe format is in the README and examples/repair_and_quantize.toml.

    \b
    Examples:
      weightcli apply examples/repair_and_quantize.toml model.h5 -o fixed.h5
      weightcli apply recipe.toml saved_model/ -o patched_model/ --dry-run
    """
    execute(
        path, lambda: recipe.load(recipe_path), output, in_place, force, dry_run, as_json, "apply"
    )


COMMANDS = [scale, clip, quantize, apply_cmd]
