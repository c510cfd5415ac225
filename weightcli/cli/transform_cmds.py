"""``weightcli scale | clip | quantize | apply``: transform tensors, write a new checkpoint."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import click

from weightcli import recipe
from weightcli.batch import Item, discover, plan_outputs
from weightcli.cli.batching import batch_options, is_batch, run_batch
from weightcli.cli.options import debug_option, json_option, make_selection, selection_options
from weightcli.errors import UsageError
from weightcli.report import print_json, print_transform, transform_json
from weightcli.steps import ClipStep, QuantizeStep, ScaleStep, Step
from weightcli.tasks import transform_task

F = Callable[..., Any]


def output_options(f: F) -> F:
    f = click.option("--dry-run", is_flag=True, help="Report everything, write nothing.")(f)
    f = click.option("--force", is_flag=True, help="Overwrite existing outputs.")(f)
    f = click.option(
        "--in-place",
        is_flag=True,
        help="Overwrite the input(s) (atomically, via a temporary file).",
    )(f)
    f = click.option(
        "--output-dir",
        type=click.Path(path_type=Path),
        help="With several inputs: write each below DIR, mirroring its place in the input tree.",
    )(f)
    f = click.option(
        "-o",
        "--output",
        type=click.Path(path_type=Path),
        help="Where to write the new checkpoint (same format as IN).",
    )(f)
    f = batch_options(f)
    return f


def finite(value: float | None, name: str) -> float | None:
    if value is not None and not math.isfinite(value):
        raise UsageError(f"{name} must be a finite number, got {value}")
    return value


def execute(
    paths: tuple[str, ...],
    steps: Callable[[], list[Step]],
    opts: dict[str, Any],
    command: str,
) -> None:
    """Run the steps on one input (errors are one line, exit 2) or on many (a batch)."""
    try:
        built = steps()
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    output, output_dir = opts["output"], opts["output_dir"]
    in_place, force, dry_run = opts["in_place"], opts["force"], opts["dry_run"]
    if not is_batch(paths, opts["recursive"], output_dir):
        task = partial(transform_task, built, None, output, in_place, force, dry_run, command)
        _, result = task(Item(Path(paths[0])))
        print_json(transform_json(result)) if opts["as_json"] else print_transform(result)
        return
    if output is not None:
        raise UsageError("-o/--output names one output; with several inputs use --output-dir DIR")
    if in_place and output_dir is not None:
        raise UsageError("--in-place and --output-dir exclude each other")
    items = discover(list(paths), opts["recursive"])
    outputs = None
    if not in_place and not dry_run:
        if output_dir is None:
            raise UsageError(
                "with several inputs, give --output-dir DIR (or --in-place, or --dry-run)"
            )
        outputs = plan_outputs(items, output_dir, force)
    task = partial(transform_task, built, outputs, None, in_place, force, dry_run, command)
    code = run_batch(
        items,
        False,
        opts["jobs"],
        opts["progress"],
        opts["as_json"],
        opts["debug"],
        task,
        print_transform,
        transform_json,
    )
    if code:
        raise SystemExit(code)


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


def split_factor(args: tuple[str, ...]) -> tuple[tuple[str, ...], float | None]:
    """``scale IN... [FACTOR]``: a last argument that is not an existing path is FACTOR."""
    if len(args) >= 2:
        last = Path(args[-1])
        if not (last.exists() or last.with_name(last.name + ".index").exists()):
            try:
                return args[:-1], float(args[-1])
            except ValueError:
                raise UsageError(f"FACTOR must be a number, got {args[-1]!r}") from None
    return args, None


@click.command()
@click.argument("args", nargs=-1, required=True, metavar="IN... [FACTOR]")
@click.option(
    "--by-activation",
    is_flag=True,
    help="Factors from calibration activations: each layer's output lands on --target.",
)
@click.option(
    "--calibration",
    type=click.Path(path_type=Path),
    help="With --by-activation: inputs as .npy, or .npz with one array per model input.",
)
@click.option(
    "--target",
    type=float,
    default=1.0,
    show_default=True,
    help="With --by-activation: the statistic each layer should reach.",
)
@click.option(
    "--stat",
    type=click.Choice(["mean-abs", "rms", "p99"]),
    default="mean-abs",
    show_default=True,
    help="With --by-activation: the statistic of a layer's output.",
)
@click.option(
    "--batch-size",
    type=int,
    default=32,
    show_default=True,
    help="With --by-activation: calibration batch size.",
)
@click.option(
    "--architecture",
    type=click.Path(path_type=Path),
    help="With --by-activation on a weights-only file: a full model file.",
)
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
    args: tuple[str, ...],
    by_activation: bool,
    calibration: Path | None,
    target: float,
    stat: str,
    batch_size: int,
    architecture: Path | None,
    by_type: tuple[str, ...],
    by_layer: tuple[str, ...],
    select: tuple[str, ...],
    exclude: tuple[str, ...],
    layer_types: tuple[str, ...],
    kinds: tuple[str, ...],
    include_optimizer: bool,
    **opts: Any,
) -> None:
    """Multiply selected tensors by FACTOR (0 zeroes them).

    Default selection: every floating-point model weight. --by-type and --by-layer
    give other factors to some layers (the last matching rule wins); without
    FACTOR only the layers they name are scaled. With several inputs (or -r DIR),
    write them below --output-dir.

    \b
    Examples:
      weightcli scale model.h5 0.5 -o half.h5
      weightcli scale model.keras 2 -s logits -o sharper.keras
      weightcli scale model.h5 --by-type Conv2D=0.9 --by-type Dense=1.1 -o out.h5
      weightcli scale -r models/ 0.5 --output-dir halved/
      weightcli scale model.keras --by-activation --calibration x.npy -o calibrated.keras
    """
    paths, factor = split_factor(args)
    sel = make_selection(select, exclude, layer_types, kinds, include_optimizer)
    if by_activation:
        if factor is not None or by_type or by_layer:
            raise UsageError(
                "--by-activation computes the factors: give no FACTOR, --by-type or --by-layer"
            )
        if calibration is None:
            raise UsageError("--by-activation needs --calibration DATA (.npy or .npz)")
        if is_batch(paths, opts["recursive"], opts["output_dir"]):
            raise UsageError("--by-activation works on one model at a time")
        by_activation_run(
            Path(paths[0]), sel, calibration, target, stat, batch_size, architecture, opts
        )
        return

    def steps() -> list[Step]:
        return [
            ScaleStep(
                sel,
                factor=finite(factor, "FACTOR"),
                by_type=parse_pairs(by_type, "--by-type"),
                by_layer=parse_pairs(by_layer, "--by-layer"),
            )
        ]

    execute(paths, steps, opts, "scale")


@click.command()
@click.argument("paths", nargs=-1, required=True, metavar="IN...")
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
    paths: tuple[str, ...],
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
    **opts: Any,
) -> None:
    """Clip selected tensors to bounds, and/or repair NaN and Inf.

    Reports per tensor how many elements were clipped and repaired.

    \b
    Examples:
      weightcli clip model.h5 --nonfinite zero -o repaired.h5
      weightcli clip model.keras --abs-max 1.0 -o clipped.keras
      weightcli clip model.h5 --percentile 99.9 --kind kernel -o tamed.h5
      weightcli clip -r checkpoints/ --nonfinite zero --output-dir repaired/
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

    execute(paths, steps, opts, "clip")


@click.command()
@click.argument("paths", nargs=-1, required=True, metavar="IN...")
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
    paths: tuple[str, ...],
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
    **opts: Any,
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
      weightcli quantize -r models/ --output-dir quantized/ -j 2
    """
    sel = make_selection(select, exclude, layer_types, kinds, include_optimizer)

    def steps() -> list[Step]:
        return [
            QuantizeStep(
                sel, bits=bits, scheme=scheme, granularity=granularity, axis=axis, dtype=dtype
            )
        ]

    execute(paths, steps, opts, "quantize")


@click.command(name="apply")
@click.argument("recipe_path", metavar="RECIPE.toml", type=click.Path(path_type=Path))
@click.argument("paths", nargs=-1, required=True, metavar="IN...")
@output_options
@json_option
@debug_option
def apply_cmd(recipe_path: Path, paths: tuple[str, ...], **opts: Any) -> None:
    """Apply a recipe's steps (scale, clip, quantize) in one pass and one write.

    The recipe format is in the README and examples/repair_and_quantize.toml.

    \b
    Examples:
      weightcli apply examples/repair_and_quantize.toml model.h5 -o fixed.h5
      weightcli apply recipe.toml saved_model/ -o patched_model/ --dry-run
      weightcli apply recipe.toml -r models/ --output-dir fixed/
    """
    execute(paths, lambda: recipe.load(recipe_path), opts, "apply")


def by_activation_run(
    path: Path,
    sel: Any,
    calibration: Path,
    target: float,
    stat: str,
    batch_size: int,
    architecture: Path | None,
    opts: dict[str, Any],
) -> None:
    from weightcli import activation, pipeline
    from weightcli.report import activation_json, print_activation
    from weightcli.stores import open_store

    with open_store(path) as store:
        out = (
            None
            if opts["dry_run"]
            else pipeline.resolve_output(path, opts["output"], opts["in_place"], opts["force"])
        )
        model = activation.load_keras(path, store, architecture)
        plan, inputs = activation.plan(model, store, sel, calibration, target, stat, batch_size)
        if not plan.factors:
            print_activation(plan)
            raise UsageError("no selected layer could be scaled (see the notes above)")
        step = activation.ActivationStep(plan, calibration.name)
        result = pipeline.run(
            store, [step], out, ["scale", str(path), "--by-activation"], dry_run=opts["dry_run"]
        )
    if out is not None:
        with open_store(out) as written:
            activation.measure_after(out, written, architecture, plan, inputs, batch_size)
    else:
        activation.measure_live(model, plan, inputs, batch_size)
    if opts["as_json"]:
        print_json({**transform_json(result), "activation": activation_json(plan)})
    else:
        print_transform(result)
        print_activation(plan)


COMMANDS = [scale, clip, quantize, apply_cmd]
