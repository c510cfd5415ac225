"""``weightcli scale | clip | quantize | apply``: transform tensors, write a new checkpoint."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import click

from weightcli.batch import Item
from weightcli.cli.dispatch import batch_plan, dispatch, dispatch_one, is_batch
from weightcli.cli.options import batch_output_group, custom_objects_option, selection_group
from weightcli.commands import transform as command
from weightcli.errors import ParameterError, literal
from weightcli.params import OutputSpec, RunSpec
from weightcli.report import print_transform
from weightcli.results import TransformResult
from weightcli.select import Selection
from weightcli.steps import ClipStep, ClusterStep, PruneStep, QuantizeStep, ScaleStep, Step
from weightcli.stores.remote import as_path


def _task(request: command.TransformRequest, item: Item) -> TransformResult:
    return command.run(request, item.path)


def execute(
    paths: tuple[str, ...],
    steps: Callable[[], list[Step]],
    out: OutputSpec,
    run: RunSpec,
    name: str,
) -> None:
    """Run the steps on one input or on many (a batch), through the one dispatcher."""
    built = tuple(steps())
    items, outputs, batch = batch_plan(paths, out, run)
    request = command.TransformRequest(steps=built, command=name, outputs=outputs, out=out)
    dispatch(
        items,
        partial(_task, request),
        print_transform,
        batch=batch,
        jobs=run.jobs,
        progress=run.progress,
        as_json=run.as_json,
        debug=run.debug,
    )


def one_model(paths: tuple[str, ...], run: RunSpec, what: str) -> str:
    """The one input of a command that takes one model at a time."""
    if is_batch(paths, run.recursive, run.output_dir):
        raise ParameterError(f"{what} works on one model at a time")
    return paths[0]


def parse_pairs(values: tuple[str, ...], param: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for v in values:
        key, sep, num = v.partition("=")
        if not sep or not key:
            raise ParameterError(f"{{{param}}} takes NAME=FACTOR, got {literal(repr(v))}")
        try:
            out[key] = float(num)
        except ValueError:
            raise ParameterError(
                f"{{{param}}} {literal(v)}: {literal(repr(num))} is not a number"
            ) from None
    return out


def split_factor(
    args: tuple[str, ...], factor: float | None
) -> tuple[tuple[str, ...], float | None]:
    """``scale IN... [FACTOR]``: decided by parsing alone, never by the disk. With two or
    more arguments, a last one that reads as a number is FACTOR (a file named like a
    number is written ``./2``); ``--factor F`` says it explicitly."""
    if factor is not None:
        return args, factor
    if len(args) >= 2:
        try:
            return args[:-1], float(args[-1])
        except ValueError:
            pass
    return args, None


@click.command()
@click.argument("args", nargs=-1, required=True, metavar="IN... [FACTOR]")
@click.option(
    "--factor",
    type=float,
    metavar="F",
    help="The factor, spelled out (instead of the last argument).",
)
@click.option(
    "--by-activation",
    is_flag=True,
    help="Factors from calibration activations: each layer's output lands on --target.",
)
@click.option(
    "--calibration",
    type=click.Path(path_type=str),
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
    type=click.Path(path_type=str),
    help="With --by-activation on a weights-only file: a full model file.",
)
@click.option(
    "--measure",
    type=click.Choice(["sequential", "original"]),
    default="sequential",
    show_default=True,
    help="With --by-activation: measure each layer after the earlier ones are scaled (sequential), or all on the unmodified model (original).",
)
@custom_objects_option(
    "With --by-activation: a Python file defining (and registering) custom layers."
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
@selection_group()
@batch_output_group
def scale(
    args: tuple[str, ...],
    factor: float | None,
    by_activation: bool,
    calibration: str | None,
    target: float,
    stat: str,
    batch_size: int,
    architecture: str | None,
    measure: str,
    custom_objects: Path | None,
    by_type: tuple[str, ...],
    by_layer: tuple[str, ...],
    sel: Selection,
    out: OutputSpec,
    run: RunSpec,
) -> None:
    """Multiply selected tensors by FACTOR (0 zeroes them).

    Default selection: every floating-point model weight. --by-type and --by-layer
    give other factors to some layers (a --by-layer rule beats a --by-type rule,
    whatever their order; among rules of one kind the last matching one wins); without
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
    paths, factor = split_factor(args, factor)
    if factor is None and len(args) >= 2 and not (by_activation or by_type or by_layer):
        raise ParameterError(
            f"{{factor}} must be a number, got {literal(repr(args[-1]))} (FACTOR comes last)"
        )
    if by_activation:
        if factor is not None or by_type or by_layer:
            raise ParameterError(
                "{by_activation} computes the factors: give no {factor}, {by_type} or {by_layer}"
            )
        if calibration is None:
            raise ParameterError("{by_activation} needs {calibration} DATA (.npy or .npz)")
        # Framework-bound (loads the model): imported only on this path.
        from weightcli.commands import by_activation as by_activation_cmd

        request = by_activation_cmd.ByActivationRequest(
            selection=sel,
            calibration=as_path(calibration),
            target=target,
            stat=stat,
            batch_size=batch_size,
            architecture=as_path(architecture) if architecture else None,
            measure=measure,
            custom_objects=custom_objects,
            out=out,
        )
        by_activation_run(one_model(paths, run, "{by_activation}"), request, run)
        return

    def steps() -> list[Step]:
        return [
            ScaleStep(
                sel,
                factor=factor,
                by_type=parse_pairs(by_type, "by_type"),
                by_layer=parse_pairs(by_layer, "by_layer"),
            )
        ]

    execute(paths, steps, out, run, "scale")


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
@selection_group()
@batch_output_group
def clip(
    paths: tuple[str, ...],
    lo: float | None,
    hi: float | None,
    abs_max: float | None,
    percentile: float | None,
    sigma: float | None,
    nonfinite: str,
    sel: Selection,
    out: OutputSpec,
    run: RunSpec,
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

    execute(paths, steps, out, run, "clip")


@click.command()
@click.argument("paths", nargs=-1, required=True, metavar="IN...")
@click.option("--bits", type=int, help="Integer width, 2..16.  [default: 8]")
@click.option(
    "--scheme",
    type=click.Choice(["symmetric", "asymmetric"]),
    help="[default: symmetric]",
)
@click.option(
    "--granularity",
    type=click.Choice(["per-channel", "per-tensor"]),
    help="[default: per-channel]",
)
@click.option(
    "--axis", type=int, help="Channel axis for per-channel (default: the layer's output channels)."
)
@click.option(
    "--dtype",
    type=click.Choice(["float16", "bfloat16"]),
    help="Instead of fake quantization, store the tensors in this dtype.",
)
@click.option(
    "--store",
    type=click.Choice(["fake", "keras-int8"]),
    default="fake",
    show_default=True,
    help="fake: quantize and dequantize in place; keras-int8: Keras's own int8 layers (.keras / model folder).",
)
@selection_group()
@batch_output_group
def quantize(
    paths: tuple[str, ...],
    bits: int | None,
    scheme: str | None,
    granularity: str | None,
    axis: int | None,
    dtype: str | None,
    store: str,
    sel: Selection,
    out: OutputSpec,
    run: RunSpec,
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
      weightcli quantize model.keras --store keras-int8 -o q8.keras   # Keras's own int8 layers
      weightcli quantize -r models/ --output-dir quantized/ -j 2
    """
    if store == "keras-int8":
        given = [
            p
            for p, v in (
                ("bits", bits),
                ("scheme", scheme),
                ("granularity", granularity),
                ("axis", axis),
                ("dtype", dtype),
            )
            if v is not None
        ]
        if given:
            names = ", ".join("{" + p + "}" for p in given)
            raise ParameterError(
                f"{{store}} keras-int8 quantizes as Keras does (int8, per channel): give no {names}"
            )
        from weightcli.commands import keras_int8

        request = keras_int8.KerasInt8Request(selection=sel, out=out)
        dispatch_one(
            one_model(paths, run, "{store} keras-int8"),
            keras_int8.run,
            request,
            print_transform,
            as_json=run.as_json,
            debug=run.debug,
        )
        return

    def steps() -> list[Step]:
        return [
            QuantizeStep(
                sel, bits=bits, scheme=scheme, granularity=granularity, axis=axis, dtype=dtype
            )
        ]

    execute(paths, steps, out, run, "quantize")


def parse_pattern(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    n, sep, m = text.partition(":")
    if not sep or not n.strip().isdigit() or not m.strip().isdigit():
        raise ParameterError(f"{{pattern}} takes N:M (such as 2:4), got {literal(repr(text))}")
    return int(n), int(m)


@click.command()
@click.argument("paths", nargs=-1, required=True, metavar="IN...")
@click.option(
    "--sparsity", type=float, metavar="S", help="Fraction of each tensor zeroed, in [0, 1)."
)
@click.option(
    "--scope",
    type=click.Choice(["layer", "global"]),
    default="layer",
    show_default=True,
    help="layer: each tensor to S; global: one threshold over every selected tensor.",
)
@click.option(
    "--by-layer",
    multiple=True,
    metavar="GLOB=S",
    help="Sparsity for layers (or tensors) whose name matches GLOB (repeatable; the last match wins).",
)
@click.option(
    "--pattern",
    metavar="N:M",
    help="Structured sparsity: N zeros in every M consecutive weights along the input axis (2:4).",
)
@selection_group()
@batch_output_group
def prune(
    paths: tuple[str, ...],
    sparsity: float | None,
    scope: str,
    by_layer: tuple[str, ...],
    pattern: str | None,
    sel: Selection,
    out: OutputSpec,
    run: RunSpec,
) -> None:
    """Zero the smallest-magnitude weights (post-training magnitude pruning).

    Default selection: the kernels of Dense, Conv, Embedding and attention layers (2-D or
    more); biases, normalisation and 1-D tensors only when named (-s, --kind). Exactly
    the requested number of weights is zeroed (keep = round(n x (1 - S)), as TFMOT
    counts): ties at the threshold are zeroed first in storage order. The report gives
    each tensor's sparsity reached and threshold.

    \b
    Examples:
      weightcli prune model.keras --sparsity 0.5 -o half_sparse.keras
      weightcli prune model.h5 --sparsity 0.8 --scope global -o sparse.h5
      weightcli prune model.keras --sparsity 0.5 --by-layer 'head*=0.2' -o out.keras
      weightcli prune model.keras --pattern 2:4 -o sparse24.keras
    """

    def steps() -> list[Step]:
        return [
            PruneStep(
                sel,
                sparsity=sparsity,
                scope=scope,
                by_layer=parse_pairs(by_layer, "by_layer"),
                pattern=parse_pattern(pattern),
            )
        ]

    execute(paths, steps, out, run, "prune")


@click.command()
@click.argument("paths", nargs=-1, required=True, metavar="IN...")
@click.option(
    "--clusters",
    "-k",
    type=int,
    default=16,
    show_default=True,
    help="Distinct values per tensor (or per channel).",
)
@click.option(
    "--per-channel", is_flag=True, help="Cluster each output channel on its own (K values each)."
)
@click.option(
    "--init",
    type=click.Choice(["kmeans++", "linear", "density"]),
    default="kmeans++",
    show_default=True,
    help="Starting centroids, as TFMOT's CentroidInitialization names them.",
)
@click.option("--seed", type=int, default=None, help="Seed of kmeans++'s sampling (default 0).")
@selection_group()
@batch_output_group
def cluster(
    paths: tuple[str, ...],
    clusters: int,
    per_channel: bool,
    init: str,
    seed: int | None,
    sel: Selection,
    out: OutputSpec,
    run: RunSpec,
) -> None:
    """Weight clustering: each tensor keeps at most K distinct values (exact 1-D k-means).

    Default selection: kernels and embeddings (2-D or more), as prune. Lloyd's algorithm
    runs on every value, one pass per iteration, to convergence; the report gives each
    tensor's values written, iterations, SQNR and max error.

    \b
    Examples:
      weightcli cluster model.keras --clusters 16 -o clustered.keras
      weightcli cluster model.h5 -k 8 --per-channel --init linear -o c8.h5
    """

    def steps() -> list[Step]:
        return [ClusterStep(sel, clusters=clusters, per_channel=per_channel, init=init, seed=seed)]

    execute(paths, steps, out, run, "cluster")


@click.command(name="apply")
@click.argument("recipe_path", metavar="RECIPE.toml", type=click.Path(path_type=str))
@click.argument("paths", nargs=-1, required=True, metavar="IN...")
@batch_output_group
def apply_cmd(recipe_path: str, paths: tuple[str, ...], out: OutputSpec, run: RunSpec) -> None:
    """Apply a recipe's steps (scale, clip, quantize) in one pass and one write.

    The recipe format is in the README and examples/repair_and_quantize.toml.

    \b
    Examples:
      weightcli apply examples/repair_and_quantize.toml model.h5 -o fixed.h5
      weightcli apply recipe.toml saved_model/ -o patched_model/ --dry-run
      weightcli apply recipe.toml -r models/ --output-dir fixed/
    """
    from weightcli import recipe  # tomllib and the recipe schema: only for apply

    execute(paths, lambda: recipe.load(as_path(recipe_path)), out, run, "apply")


def by_activation_run(path: str, request: Any, run: RunSpec) -> None:
    from weightcli.commands import by_activation as by_activation_cmd
    from weightcli.report import print_activation, print_by_activation

    try:
        dispatch_one(  # the JSON keys, exit codes and supervision of every command
            path,
            by_activation_cmd.run,
            request,
            print_by_activation,
            as_json=run.as_json,
            debug=run.debug,
        )
    except by_activation_cmd.NothingToScaleError as exc:
        print_activation(exc.plan)
        raise
