"""``weightcli diff`` and ``weightcli verify``."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import click

from weightcli.batch import Item, discover
from weightcli.cli.dispatch import Page, dispatch, is_batch, page_path
from weightcli.cli.options import (
    batch_options,
    custom_objects_option,
    debug_option,
    json_option,
    make_selection,
    pairing_options,
)
from weightcli.commands import diff as diff_cmd
from weightcli.commands import verify as verify_cmd
from weightcli.commands.report import ReportRequest
from weightcli.compare import read_map_file
from weightcli.errors import InputError, WeightcliError
from weightcli.report import print_diff, print_verify
from weightcli.results import VerifyResult
from weightcli.stores import detect
from weightcli.stores.remote import as_path


def _verify_task(request: verify_cmd.VerifyRequest, item: Item) -> VerifyResult:
    return verify_cmd.run(request, item.path)


def _is_model(path: Path) -> bool:
    try:
        detect(path)
        return True
    except (InputError, WeightcliError):
        return False


def _print_pair(result: diff_cmd.DiffResult | diff_cmd.UnpairedResult, all_rows: bool) -> None:
    if isinstance(result, diff_cmd.UnpairedResult):
        from weightcli.report import console

        console().print(f"{result.path}: {result.verdict}")
        return
    print_diff(result, all_rows)


@click.command()
@click.argument("a", type=click.Path(path_type=str))
@click.argument("b", type=click.Path(path_type=str))
@click.option("--atol", type=float, default=0.0, show_default=True, help="Absolute tolerance.")
@click.option(
    "--rtol", type=float, default=0.0, show_default=True, help="Relative tolerance, relative to B."
)
@click.option(
    "--nan-equal",
    is_flag=True,
    help="Count NaN in A and B at the same place as equal (default: NaN equals nothing).",
)
@click.option(
    "--structure", is_flag=True, help="Compare names, shapes and dtypes only; read no tensor data."
)
@click.option(
    "--ignore-dtype",
    is_flag=True,
    help="Compare values after casting (a float16 export within tolerance is equal); "
    "the verdict says how many tensors were compared across dtypes.",
)
@pairing_options(
    "A's",
    "Pair tensors by (mapped) name, or by position in model order (the same model "
    "saved under other names: .keras, .h5, SavedModel).",
)
@click.option(
    "-s",
    "--select",
    multiple=True,
    metavar="GLOB",
    help="Only these tensors (canonical names, repeatable).",
)
@click.option(
    "-x", "--exclude", multiple=True, metavar="GLOB", help="Leave these out (repeatable)."
)
@click.option("--include-optimizer", is_flag=True, help="Compare optimizer state too.")
@click.option(
    "--dequantize/--no-dequantize",
    default=None,
    help="Compare natively quantized layers by their dequantized weights (default: when either side has them).",
)
@click.option(
    "--html",
    "html",
    metavar="FILE",
    help="Also write the report page of A against B (weightcli report A --against B).",
)
@click.option(
    "--all-rows",
    is_flag=True,
    help="List identical tensors too (default: only the ones that differ).",
)
@batch_options
@json_option
@debug_option
def diff(
    a: str,
    b: str,
    atol: float,
    rtol: float,
    nan_equal: bool,
    structure: bool,
    ignore_dtype: bool,
    match_by: str,
    maps: tuple[str, ...],
    map_file: Path | None,
    select: tuple[str, ...],
    exclude: tuple[str, ...],
    include_optimizer: bool,
    dequantize: bool | None,
    all_rows: bool,
    html: str | None,
    recursive: bool,
    jobs: int | None,
    progress: bool | None,
    as_json: bool,
    debug: bool,
) -> None:
    """Compare two checkpoints tensor by tensor, matched by canonical name.

    A and B may be of different formats (an .h5 against its .keras, SavedModel or
    TF checkpoint). A pair is close when |a-b| <= atol + rtol*|b| (numpy's rule;
    B is the reference); the default is exact. Exit 0 when every tensor is equal
    within tolerance, 1 when any differs (or is missing on one side), 2 on error,
    as diff and h5diff do.

    \b
    A and B may also be two directories of checkpoints (-r, or directories that are
    not checkpoints themselves): models found below each (as -r finds them) are
    paired by their path relative to A and B and compared pair by pair, with a
    summary; a model below only one side counts as a difference.

    \b
    Examples:
      weightcli diff model.h5 model.keras
      weightcli diff before.h5 after.h5 --atol 1e-6 --json
      weightcli diff old.h5 new.h5 --map 'enc_*=encoder_*' --structure
      weightcli diff -r exports_v1/ exports_v2/ --atol 1e-6
      weightcli diff tuned.h5 base.h5 --html change.html   # a page of the change
    """
    request = diff_cmd.DiffRequest(
        selection=make_selection(select, exclude, (), (), include_optimizer, floats_only=False),
        maps=tuple(maps) + (read_map_file(map_file) if map_file else ()),
        atol=atol,
        rtol=rtol,
        nan_equal=nan_equal,
        structure=structure,
        ignore_dtype=ignore_dtype,
        match_by=match_by,
        dequantize=dequantize,
    )
    pa, pb = as_path(a), as_path(b)
    pairs = pa.is_dir() and pb.is_dir() and (recursive or not (_is_model(pa) or _is_model(pb)))
    items = diff_cmd.pair_items(pa, pb) if pairs else [Item(pa, other=pb)]
    page = None
    if html is not None:
        page = Page(
            "--html",
            page_path(html, "--html"),
            ReportRequest(request.selection, against=pb, pairing=request),
        )
    dispatch(
        items,
        partial(diff_cmd.pair_task, request, pa),
        partial(_print_pair, all_rows=all_rows),
        batch=pairs,
        jobs=jobs,
        progress=progress,
        as_json=as_json,
        debug=debug,
        page=page,
    )


@click.command()
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@click.option(
    "--reference",
    metavar="REF",
    help="A checkpoint this one must match (names, shapes, dtypes, values, outputs).",
)
@click.option(
    "--architecture",
    metavar="MODEL",
    help="A full model file whose architecture a weights-only PATH loads into.",
)
@click.option("--no-load", is_flag=True, help="Static checks only: never import TensorFlow.")
@click.option(
    "--input",
    "input_file",
    metavar="FILE",
    help="Inputs for the forward pass: .npy (one input) or .npz (one array per input name).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the generated input.")
@click.option(
    "--batch", type=int, default=4, show_default=True, help="Batch size of the generated input."
)
@click.option(
    "--atol",
    type=float,
    default=1e-8,
    show_default=True,
    help="Output comparison: absolute tolerance (numpy allclose).",
)
@click.option(
    "--rtol",
    type=float,
    default=1e-5,
    show_default=True,
    help="Output comparison: relative tolerance (numpy allclose).",
)
@click.option(
    "--min-cosine", type=float, help="Output comparison: also require this cosine similarity."
)
@custom_objects_option("A Python file defining (and registering) the model's custom layers.")
@click.option(
    "--trust-code",
    is_flag=True,
    help="Load models whose loading runs code they carry: a Lambda layer's Python "
    "bytecode, a SavedModel's TensorFlow graph. Off: those are not loaded.",
)
@click.option(
    "--source",
    "sources",
    multiple=True,
    metavar="FILE",
    help="Check that FILE is a recorded source of PATH's last history entry (by the "
    "digest recorded; repeatable: a merge's inputs).",
)
@batch_options
@json_option
@debug_option
def verify(
    paths: tuple[str, ...],
    reference: str | None,
    architecture: str | None,
    no_load: bool,
    input_file: str | None,
    seed: int,
    batch: int,
    atol: float,
    rtol: float,
    min_cosine: float | None,
    custom_objects: Path | None,
    trust_code: bool,
    sources: tuple[str, ...],
    recursive: bool,
    jobs: int | None,
    progress: bool | None,
    as_json: bool,
    debug: bool,
) -> None:
    """Check that a checkpoint is sound, loads, and still computes what it should.

    Static checks (no TensorFlow): every tensor readable with checksums verified,
    every tensor finite, no all-zero kernel (warning), copies of one variable agree,
    half-precision values not saturated (warning). With --reference: same names,
    shapes and dtypes, and no tensor that looks re-initialised. Unless --no-load:
    the model loads (Keras for .h5/.keras, --architecture for weights-only files,
    tf.saved_model.load for SavedModels with --trust-code), runs on a deterministic
    input with finite outputs, and with --reference its outputs match the reference's.
    Several PATHs (or -r DIR) are verified in parallel workers and end with a summary.

    \b
    A file's own code never runs unless you pass --trust-code: Keras loads in safe
    mode (tf_keras too), a model whose config holds Lambda bytecode fails "loads"
    unloaded, and a SavedModel (whose graph ops can read and write files when it is
    loaded and run) is not loaded ("loads" is skipped).

    --source FILE: FILE must be a recorded source of PATH's last history entry (its
    digest, by the algorithm recorded: BLAKE3 or sha256), else that check fails; no
    digest recorded is exit 2.

    Exit 0 when no check failed, 1 when one failed (damage verify finds, in any format,
    is a failed "readable" check), 2 when verification could not run.

    \b
    Examples:
      weightcli verify model.keras
      weightcli verify repaired.h5 --reference original.h5 --atol 1e-3
      weightcli verify weights.h5 --architecture model.h5 --no-load --json
      weightcli verify -r exports/ --no-load
      weightcli verify fixed.h5 --source model.h5 --no-load   # made from model.h5?
      weightcli verify exported_savedmodel/ --trust-code
    """
    request = verify_cmd.VerifyRequest(
        reference=as_path(reference) if reference else None,
        architecture=as_path(architecture) if architecture else None,
        no_load=no_load,
        seed=seed,
        batch=batch,
        input_file=as_path(input_file) if input_file else None,
        atol=atol,
        rtol=rtol,
        min_cosine=min_cosine,
        custom_objects=custom_objects,
        trust_code=trust_code,
        sources=tuple(as_path(p) for p in sources),
    )
    many = is_batch(paths, recursive)
    items = discover(paths, recursive) if many else [Item(as_path(paths[0]))]
    if jobs is None and not no_load:
        jobs = 1  # each worker would import TensorFlow (seconds, ~500 MiB): one is faster
    dispatch(
        items,
        partial(_verify_task, request),
        print_verify,
        batch=many,
        jobs=jobs,
        progress=progress,
        as_json=as_json,
        debug=debug,
    )
