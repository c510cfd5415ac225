"""Option bundles shared by several commands, and how the CLI spells parameters."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from weightcli.digest import ALGORITHMS
from weightcli.params import OUTPUT_FIELDS, OutputSpec, RunSpec
from weightcli.select import Selection, selection

F = Callable[..., Any]

# Parameters whose flag is not simply --name-with-dashes.
SPELLING = {
    "factor": "FACTOR",
    "output": "-o/--output",
    "select": "-s/--select",
    "exclude": "-x/--exclude",
    "jobs": "-j/--jobs",
    "executor": "--executor",
    "scheduler": "--scheduler",
    "recursive": "-r/--recursive",
    "min": "--min",
    "max": "--max",
    "lam": "--lambda",
    "from_npz": "--from",
    "layer_types": "--layer-type",
    "storage_option": "--storage-option",
    "format": "--format",
    "map_file": "--map-file",
}


def spell(param: str) -> str:
    """A library parameter name as the CLI spells it (``abs_max`` -> ``--abs-max``): as
    ``SPELLING`` says, else as the running command declares it (migrate's ``target`` is
    ``--for``), else by the name."""
    if param in SPELLING:
        return SPELLING[param]
    for p in _running_params():
        if p.name == param and isinstance(p, click.Option) and p.opts:
            return max(p.opts, key=len)
    return "--" + param.replace("_", "-")


def _running_params() -> list[click.Parameter]:
    """The parameters of the command being run (and of a subgroup's commands)."""
    ctx = click.get_current_context(silent=True)
    cmd = ctx.command if ctx is not None else None
    while ctx is not None and isinstance(cmd, click.Group) and ctx.invoked_subcommand:
        cmd = cmd.get_command(ctx, ctx.invoked_subcommand)
        ctx = None  # deeper groups: every command of the group is searched
    if isinstance(cmd, click.Group):
        subs = [
            cmd.get_command(click.get_current_context(), n)
            for n in cmd.list_commands(click.get_current_context())
        ]
        return [p for c in subs if c is not None for p in c.params]
    return list(cmd.params) if cmd is not None else []


def debug_option(f: F) -> F:
    return click.option("--debug", is_flag=True, hidden=True, help="Show tracebacks.")(f)


def selection_options(f: F) -> F:
    """--select/--exclude/--layer-type/--kind/--include-optimizer."""
    f = click.option(
        "--include-optimizer", is_flag=True, help="Also select optimizer state (hidden by default)."
    )(f)
    f = click.option(
        "--kind",
        "kinds",
        multiple=True,
        metavar="KIND[,KIND]",
        help="Only these kinds: kernel, bias, gamma, beta, moving_mean, moving_variance, embeddings, ...",
    )(f)
    f = click.option(
        "--layer-type",
        "layer_types",
        multiple=True,
        metavar="CLASS[,CLASS]",
        help="Only layers of these Keras classes (Dense,Conv2D); needs a file with a model config.",
    )(f)
    f = click.option(
        "-x",
        "--exclude",
        multiple=True,
        metavar="GLOB",
        help="Leave out tensors whose canonical name matches GLOB (repeatable).",
    )(f)
    f = click.option(
        "-s",
        "--select",
        multiple=True,
        metavar="GLOB",
        help="Only tensors whose canonical name matches GLOB, e.g. 'dense_*/kernel' or a layer name (repeatable).",
    )(f)
    return f


def make_selection(
    select: tuple[str, ...],
    exclude: tuple[str, ...],
    layer_types: tuple[str, ...],
    kinds: tuple[str, ...],
    include_optimizer: bool,
    floats_only: bool = True,
) -> Selection:
    return selection(select, exclude, layer_types, kinds, include_optimizer, floats_only)


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON on stdout.")(
        f
    )


def _to_meta(ctx: click.Context, param: click.Parameter, value: object) -> object:
    ctx.meta[f"weightcli.{param.name}"] = value
    return value


def batch_options(f: F) -> F:
    """-r/--recursive, -j/--jobs, --progress/--no-progress, --executor, --scheduler.

    The executor choice goes to the dispatcher through the context (``ctx.meta``), not
    through every command's signature."""
    f = click.option(
        "--scheduler",
        metavar="ADDRESS",
        default=None,
        expose_value=False,
        callback=_to_meta,
        help="With --executor dask: an existing cluster's scheduler (tcp://HOST:PORT); "
        "default: a local cluster on this machine.",
    )(f)
    f = click.option(
        "--executor",
        type=click.Choice(["local", "dask"]),
        default="local",
        show_default=True,
        expose_value=False,
        callback=_to_meta,
        help="Where the models run: worker processes here, or one task per model on a "
        "Dask cluster (pip install 'weightcli[dask]').",
    )(f)
    f = click.option(
        "--progress/--no-progress",
        default=None,
        help="Progress bar on stderr (default: only on an interactive terminal).",
    )(f)
    f = click.option(
        "-j",
        "--jobs",
        type=click.IntRange(min=1),
        default=None,
        help="Models processed in parallel worker processes (default: one per core).",
    )(f)
    f = click.option(
        "-r",
        "--recursive",
        is_flag=True,
        help="Search directories for checkpoints of every supported kind.",
    )(f)
    return f


def allow_nonfinite_option(f: F) -> F:
    """--allow-nonfinite: write NaN/Inf that the command creates (an error otherwise)."""
    return click.option(
        "--allow-nonfinite",
        is_flag=True,
        help="Write NaN/Inf that the command creates (overflow); an error otherwise.",
    )(f)


def report_html_option(f: F) -> F:
    """--report-html FILE: a report page of what the command wrote, drawn against what
    it came from. It goes to the dispatcher through the context (as --executor), which
    writes it after the command for every writing command alike."""
    return click.option(
        "--report-html",
        metavar="FILE",
        default=None,
        expose_value=False,
        callback=_to_meta,
        help="Also write a report page (HTML) of OUT against its source, as weightcli "
        "report OUT --against IN draws it.",
    )(f)


def note_option(f: F) -> F:
    """--note TEXT: why, kept in the output's history; --digest: how sources are hashed
    for it; --report-html: a page of the change."""
    f = report_html_option(f)
    f = click.option(
        "--requantize",
        is_flag=True,
        help="Change quantized weights (Keras int8 layers, .tflite int8) as the floats they "
        "stand for and store new codes under their scales; else a change that needs new "
        "codes is refused.",
    )(f)
    f = click.option(
        "--compress",
        is_flag=True,
        help="Store the output's tensors compressed (zeros and repeated values cost "
        "little): HDF5 chunks with gzip, a .keras weights member deflated.",
    )(f)
    f = digest_option(f)
    return click.option(
        "--note", metavar="TEXT", help="Why: kept in the output's history, shown by inspect."
    )(f)


def digest_option(f: F) -> F:
    """--digest: how the history records the sources."""
    return click.option(
        "--digest",
        type=click.Choice(ALGORITHMS),
        default=None,
        help="How the history records the sources: blake3 (default, or $WEIGHTCLI_DIGEST), "
        "sha256, none.",
    )(f)


def new_file_options(example: str) -> Callable[[F], F]:
    """-o/--output (required), --force and --digest of a command that writes a new file
    of another kind (export, lora extract): not a surgery copy, so no output group."""

    def decorate(f: F) -> F:
        f = report_html_option(digest_option(f))
        f = click.option("--force", is_flag=True, help="Overwrite an existing OUT.")(f)
        return click.option(
            "-o", "--output", type=click.Path(path_type=str), required=True, help=example
        )(f)

    return decorate


RUN_FIELDS = ("recursive", "output_dir", "jobs", "progress", "as_json", "debug")
SELECTION_FIELDS = ("select", "exclude", "layer_types", "kinds", "include_optimizer")


def parsed_into(name: str, make: Callable[..., Any], fields: tuple[str, ...]) -> Callable[[F], F]:
    """A decorator that takes a group's parsed options out of a command's keywords and
    passes them as one object, ``name=make(**those)``: the group's rules are the
    object's, enforced on creation, never click's."""

    def decorate(f: F) -> F:
        @functools.wraps(f)
        def parse(*args: Any, **kwargs: Any) -> Any:
            group = make(**{k: kwargs.pop(k) for k in fields if k in kwargs})
            return f(*args, **{name: group}, **kwargs)

        return parse

    return decorate


def output_group(nonfinite: bool = True) -> Callable[[F], F]:
    """The output parameter group of a command that writes one model, declared once:
    -o, --in-place, --force, --dry-run, --note (and --allow-nonfinite), parsed into one
    ``params.OutputSpec`` passed as ``out``."""

    def decorate(f: F) -> F:
        g = parsed_into("out", OutputSpec, OUTPUT_FIELDS)(f)
        g = allow_nonfinite_option(g) if nonfinite else g
        return single_output_options(g)

    return decorate


def batch_output_group(f: F) -> F:
    """The output and run groups of a command that writes one model or many: -o,
    --output-dir, --in-place, --force, --dry-run, --note, --allow-nonfinite, -r, -j,
    --progress, --executor, --json, parsed into ``out`` (``OutputSpec``) and ``run``
    (``RunSpec``)."""
    g = parsed_into("out", OutputSpec, OUTPUT_FIELDS)(f)
    g = parsed_into("run", RunSpec, RUN_FIELDS)(g)
    return output_options(json_option(debug_option(g)))


def selection_group(floats_only: bool = True) -> Callable[[F], F]:
    """-s/-x/--layer-type/--kind/--include-optimizer, parsed into ``sel``
    (``select.Selection``)."""

    def make(**given: Any) -> Selection:
        return selection(floats_only=floats_only, **given)

    def decorate(f: F) -> F:
        return selection_options(parsed_into("sel", make, SELECTION_FIELDS)(f))

    return decorate


def single_output_options(f: F) -> F:
    """-o, --in-place, --force, --dry-run and --note: a command that writes one model."""
    f = note_option(f)
    f = click.option("--dry-run", is_flag=True, help="Check and report everything, write nothing.")(
        f
    )
    f = click.option("--force", is_flag=True, help="Overwrite an existing OUT.")(f)
    f = click.option("--in-place", is_flag=True, help="Overwrite IN (atomically).")(f)
    f = click.option(
        "-o",
        "--output",
        type=click.Path(path_type=str),
        help="Where to write (IN's format; OUT/ or an existing folder: into it, under IN's name).",
    )(f)
    return f


def output_options(f: F) -> F:
    """-o, --output-dir, --in-place, --force, --dry-run, --allow-nonfinite, batch options."""
    f = note_option(f)
    f = allow_nonfinite_option(f)
    f = click.option(
        "--dry-run",
        is_flag=True,
        help="Check and report everything a real run would, write nothing.",
    )(f)
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
        type=click.Path(path_type=str),
        help="Where to write the new checkpoint (same format as IN); OUT/ or an existing folder: into it, under IN's name.",
    )(f)
    f = batch_options(f)
    return f


def map_file_option(f: F) -> F:
    """--map-file FILE: rename rules (OLD=NEW a line), after the --map ones."""
    return click.option(
        "--map-file",
        type=click.Path(path_type=Path),
        metavar="FILE",
        help="Rename rules from a file, one OLD=NEW a line (# comments), after any --map.",
    )(f)


def pairing_options(whose: str, order_help: str) -> Callable[[F], F]:
    """--map OLD=NEW (``whose`` tensors renamed before matching), --map-file and
    --match-by name|order: how two models' tensors are paired, by diff's rules."""

    def decorate(f: F) -> F:
        f = click.option(
            "--match-by",
            type=click.Choice(["name", "order"]),
            default="name",
            show_default=True,
            help=order_help,
        )(f)
        f = map_file_option(f)
        return click.option(
            "--map",
            "maps",
            multiple=True,
            metavar="OLD=NEW",
            help=f"Rename {whose} tensors before matching: a glob with '*' ('enc_*=encoder_*'), "
            "a name prefix, or re:PATTERN=NEW (repeatable).",
        )(f)

    return decorate


def custom_objects_option(help: str) -> Callable[[F], F]:
    """``--custom-objects FILE.py``: Python code to import, from this machine only
    (code is never run from object storage: download it and pass the local copy)."""

    def local_only(ctx: click.Context, param: click.Parameter, value: str | None) -> Path | None:
        if value is None:
            return None
        if "://" in value:
            raise click.UsageError(
                f"--custom-objects {value}: code is run only from a local file "
                "(download it, then pass the local copy)"
            )
        return Path(value)

    return click.option(
        "--custom-objects",
        type=click.STRING,
        callback=local_only,
        metavar="FILE.py",
        help=help,
    )
