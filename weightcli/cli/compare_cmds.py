"""``weightcli diff`` and ``weightcli verify``."""

from __future__ import annotations

from functools import partial

import click

from weightcli.cli.batching import batch_options, run_command
from weightcli.cli.options import debug_option, json_option, make_selection
from weightcli.compare import diff_stores, parse_map
from weightcli.report import diff_json, print_diff, print_json, print_verify, verify_json
from weightcli.stores import open_store
from weightcli.tasks import verify_task
from weightcli.verify import VerifyOptions


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
    "--map",
    "maps",
    multiple=True,
    metavar="OLD=NEW",
    help="Rename A's tensors before matching: a glob with '*' ('enc_*=encoder_*') or a name prefix (repeatable).",
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
    "--all-rows",
    is_flag=True,
    help="List identical tensors too (default: only the ones that differ).",
)
@json_option
@debug_option
def diff(
    a: str,
    b: str,
    atol: float,
    rtol: float,
    nan_equal: bool,
    structure: bool,
    maps: tuple[str, ...],
    select: tuple[str, ...],
    exclude: tuple[str, ...],
    include_optimizer: bool,
    all_rows: bool,
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
    Examples:
      weightcli diff model.h5 model.keras
      weightcli diff before.h5 after.h5 --atol 1e-6 --json
      weightcli diff old.h5 new.h5 --map 'enc_*=encoder_*' --structure
    """
    sel = make_selection(select, exclude, (), (), include_optimizer, floats_only=False)
    parsed = [parse_map(m) for m in maps]
    with open_store(a) as sa, open_store(b) as sb:
        result = diff_stores(
            sa, sb, sel, parsed, atol=atol, rtol=rtol, nan_equal=nan_equal, structure=structure
        )
    if as_json:
        print_json(diff_json(result))
    else:
        print_diff(result, all_rows)
    if not result.equal:
        raise SystemExit(1)


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
    tf.saved_model.load for SavedModels), runs on a deterministic input with finite
    outputs, and with --reference its outputs match the reference's. Several PATHs
    (or -r DIR) are verified in parallel workers and end with a summary.

    Exit 0 when no check failed, 1 when one failed, 2 when verification could not run.

    \b
    Examples:
      weightcli verify model.keras
      weightcli verify repaired.h5 --reference original.h5 --atol 1e-3
      weightcli verify weights.h5 --architecture model.h5 --no-load --json
      weightcli verify -r exports/ --no-load
    """
    opts = VerifyOptions(
        reference, architecture, no_load, seed, batch, input_file, atol, rtol, min_cosine
    )
    task = partial(verify_task, opts)
    run_command(paths, recursive, jobs, progress, as_json, debug, task, print_verify, verify_json)


COMMANDS = [diff, verify]
