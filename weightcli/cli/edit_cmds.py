"""``weightcli set`` and ``weightcli dump``: direct edits and exports."""

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
from weightcli.commands import assign, dump, freeze, reinit
from weightcli.params import OutputSpec
from weightcli.report import print_dump, print_freeze, print_transform
from weightcli.transforms.initializers import NAMES as INITIALIZERS


@click.command(name="set")
@click.argument("path", metavar="IN", type=click.Path(path_type=str))
@click.argument("assignments", nargs=-1, metavar="NAME=FILE.npy|NAME=VALUE ...")
@click.option(
    "--from",
    "from_npz",
    type=click.Path(path_type=Path),
    metavar="FILE.npz",
    help="Assign every array of a .npz whose keys are canonical names (as dump writes them).",
)
@output_group()
@json_option
@debug_option
def set_cmd(
    path: str,
    assignments: tuple[str, ...],
    from_npz: Path | None,
    out: OutputSpec,
    as_json: bool,
    debug: bool,
) -> None:
    """Assign tensors from .npy files, a .npz, or a constant (layer.set_weights, in a file).

    Shapes must match exactly (a constant fills the tensor); values are cast to the
    tensor's dtype and the report gives the largest change the cast made. A name that
    does not exist is an error naming the nearest ones. Only the assigned tensors are
    rewritten.

    \b
    Examples:
      weightcli set model.keras dense_1/bias=0 -o zero_bias.keras
      weightcli set model.h5 logits/kernel=new_kernel.npy -o patched.h5
      weightcli dump model.keras -o weights.npz && weightcli set model.keras --from weights.npz -o same.keras
    """
    request = assign.SetRequest(
        assignments=tuple(assign.parse_assignment(a) for a in assignments),
        from_npz=from_npz,
        out=out,
    )
    dispatch_one(path, assign.run, request, print_transform, as_json=as_json, debug=debug)


@click.command(name="dump")
@click.argument("path", metavar="IN", type=click.Path(path_type=str))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="OUT.npz (or a folder with --format npy-dir).",
)
@click.option(
    "-s", "--select", multiple=True, metavar="GLOB", help="Only these tensors (repeatable)."
)
@click.option("-x", "--exclude", multiple=True, metavar="GLOB", help="Leave these out.")
@click.option("--include-optimizer", is_flag=True, help="Optimizer state too.")
@click.option(
    "--format",
    "layout",
    type=click.Choice(["npz", "npy-dir"]),
    default="npz",
    show_default=True,
    help="npz: one archive keyed by canonical name; npy-dir: one NAME.npy per tensor.",
)
@click.option(
    "--max-bytes",
    type=int,
    default=dump.DEFAULT_MAX_BYTES,
    show_default=True,
    help="Refuse a dump larger than this (0: no limit).",
)
@click.option(
    "--dequantize",
    is_flag=True,
    help="Quantized weights (Keras int8 layers, .tflite int8) as the floats they stand "
    "for, their scales left out; default: the integer codes and scales as stored.",
)
@click.option("--force", is_flag=True, help="Overwrite an existing OUT.")
@json_option
@debug_option
def dump_cmd(
    path: str,
    output: Path,
    select: tuple[str, ...],
    exclude: tuple[str, ...],
    include_optimizer: bool,
    layout: str,
    max_bytes: int,
    dequantize: bool,
    force: bool,
    as_json: bool,
    debug: bool,
) -> None:
    """Save the selected tensors as numpy arrays, streamed (np.load reads them back).

    \b
    Examples:
      weightcli dump model.keras -o weights.npz
      weightcli dump model.h5 -s 'dense_*' --format npy-dir -o weights/
      weightcli dump saved_model/ -o all.npz --max-bytes 0
      weightcli dump model_int8.tflite --dequantize -o floats.npz
    """
    request = dump.DumpRequest(
        output=output,
        selection=make_selection(select, exclude, (), (), include_optimizer, floats_only=False),
        layout=layout,
        max_bytes=max_bytes,
        force=force,
        dequantize=dequantize,
    )
    dispatch_one(path, dump.run, request, print_dump, as_json=as_json, debug=debug)


@click.command(name="freeze")
@click.argument("path", metavar="IN", type=click.Path(path_type=str))
@click.option(
    "-s",
    "--select",
    "layers",
    multiple=True,
    metavar="LAYER_GLOB",
    help="Layers (name or path such as 'encoder/*'; repeatable).",
)
@click.option("--unfreeze", is_flag=True, help="Make them trainable instead.")
@output_group(nonfinite=False)
@json_option
@debug_option
def freeze_cmd(
    path: str,
    layers: tuple[str, ...],
    unfreeze: bool,
    out: OutputSpec,
    as_json: bool,
    debug: bool,
) -> None:
    """Freeze (or --unfreeze) layers in the stored model config; weights untouched.

    Sets `trainable` in the config (.keras, an unzipped model folder, a full-model .h5),
    nested models included: Keras loads the output with exactly those layers frozen.
    Files without a model config (weights-only, SavedModel, checkpoints) are refused.

    \b
    Examples:
      weightcli freeze model.keras -s 'backbone*' -o frozen.keras
      weightcli freeze model.keras -s 'encoder/*' --unfreeze -o tune.keras
    """
    request = freeze.FreezeRequest(
        layers=tuple(layers),
        unfreeze=unfreeze,
        out=out,
    )
    dispatch_one(path, freeze.run, request, print_freeze, as_json=as_json, debug=debug)


@click.command(name="reinit")
@click.argument("path", metavar="IN", type=click.Path(path_type=str))
@click.option(
    "-s",
    "--select",
    multiple=True,
    metavar="GLOB",
    help="The tensors to re-initialise (required; repeatable).",
)
@click.option("-x", "--exclude", multiple=True, metavar="GLOB", help="Leave these out.")
@click.option(
    "--kind",
    "kinds",
    multiple=True,
    metavar="KIND[,KIND]",
    help="Only these kinds (kernel, bias, ...).",
)
@click.option(
    "--initializer",
    type=click.Choice(list(INITIALIZERS)),
    required=True,
    help="A Keras initialiser (fans computed as Keras computes them).",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Values are reproducible from it."
)
@click.option("--value", type=float, help="constant: the value.")
@click.option("--mean", type=float, help="random_normal: the mean (0.0).")
@click.option("--stddev", type=float, help="random_normal: the standard deviation (0.05).")
@click.option("--minval", type=float, help="random_uniform: the lower bound (-0.05).")
@click.option("--maxval", type=float, help="random_uniform: the upper bound (0.05).")
@click.option("--gain", type=float, help="orthogonal: the gain (1.0).")
@output_group()
@json_option
@debug_option
def reinit_cmd(
    path: str,
    select: tuple[str, ...],
    exclude: tuple[str, ...],
    kinds: tuple[str, ...],
    initializer: str,
    seed: int,
    value: float | None,
    mean: float | None,
    stddev: float | None,
    minval: float | None,
    maxval: float | None,
    gain: float | None,
    out: OutputSpec,
    as_json: bool,
    debug: bool,
) -> None:
    """Re-initialise the selected tensors with a Keras initialiser.

    glorot_uniform/normal, he_uniform/normal, lecun_uniform/normal (fans as Keras
    computes them for every kernel layout), orthogonal, zeros, ones, constant,
    random_normal, random_uniform. The values are reproducible from --seed.

    \b
    Examples:
      weightcli reinit model.keras -s logits --initializer glorot_uniform -o fresh_head.keras
      weightcli reinit model.h5 -s 'dense_2/bias' --initializer constant --value 0.1 -o b.h5
      weightcli reinit model.keras -s conv --kind kernel --initializer he_normal --seed 7 -o c.keras
    """
    params = tuple(
        (k, v)
        for k, v in (
            ("value", value),
            ("mean", mean),
            ("stddev", stddev),
            ("minval", minval),
            ("maxval", maxval),
            ("gain", gain),
        )
        if v is not None
    )
    request = reinit.ReinitRequest(
        initializer=initializer,
        selection=make_selection(select, exclude, (), kinds, False),
        seed=seed,
        params=params,
        out=out,
    )
    dispatch_one(path, reinit.run, request, print_transform, as_json=as_json, debug=debug)


@click.command(name="strip")
@click.argument("path", metavar="IN", type=click.Path(path_type=str))
@output_group(nonfinite=False)
@json_option
@debug_option
def strip_cmd(path: str, out: OutputSpec, as_json: bool, debug: bool) -> None:
    """Remove TensorFlow Model Optimization's training wrappers: the plain model.

    IN: a model saved with TFMOT's pruning, clustering or quantization-aware training
    wrappers (tf_keras, legacy .h5). OUT is the plain model, which Keras loads without
    TFMOT: pruned kernels times their masks, clustered ones gathered from their
    centroids, QAT layers' float weights; the wrappers' own variables (masks,
    thresholds, cluster indices, quantizer ranges) and the optimizer state dropped.
    Combine with `weightcli migrate` (when it lands) to reach Keras 3.

    \b
    Examples:
      weightcli strip pruned_tfmot.h5 -o plain.h5
      weightcli strip qat_model.h5 -o float_model.h5 --dry-run
    """
    from weightcli.commands import strip
    from weightcli.report import print_strip

    dispatch_one(
        path, strip.run, strip.StripRequest(out=out), print_strip, as_json=as_json, debug=debug
    )
