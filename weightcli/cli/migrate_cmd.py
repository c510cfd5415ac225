"""``weightcli migrate``."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import click

from weightcli.cli.dispatch import batch_plan, dispatch
from weightcli.cli.options import batch_output_group, custom_objects_option
from weightcli.commands import migrate as command
from weightcli.migrate import TARGETS
from weightcli.params import OutputSpec, RunSpec
from weightcli.report import print_migrate


@click.command()
@click.argument("paths", nargs=-1, required=True, metavar="IN...", type=click.Path(path_type=str))
@click.option(
    "--for",
    "target",
    type=click.Choice(list(TARGETS)),
    help="The Keras that loads OUT (default: the other line than IN's writer: keras3 for "
    "a Keras 2 / tf.keras file, tf-keras for a Keras 3 one).",
)
@click.option(
    "--check",
    is_flag=True,
    help="Load IN with the Keras that wrote it and OUT with the target's, run both on "
    "seeded random inputs; exit 1 when they differ beyond --atol (the tf extra).",
)
@click.option("--atol", type=float, default=1e-5, show_default=True, help="--check's tolerance.")
@custom_objects_option(
    "A Python file defining (and registering) the model's custom layers: they are carried "
    "as they are, and --check loads with them."
)
@batch_output_group
def migrate(
    paths: tuple[str, ...],
    target: str | None,
    check: bool,
    atol: float,
    custom_objects: Path | None,
    out: OutputSpec,
    run: RunSpec,
) -> None:
    """Make a model saved by one Keras load in the other, offline.

    The stored config is rewritten by a table of per-class rules (README: "Keras versions
    and migrate"); every tensor's bytes, and everything else in the file, are carried as
    they are. Today: a legacy full-model .h5. A Lambda layer, or a class no rule carries,
    is refused with its name. Every config change is reported.

    \b
    Examples:
      weightcli migrate teachable_machine_model.h5 -o keras3_model.h5
      weightcli migrate old.h5 -o new.h5 --check
      weightcli migrate -r models/ --output-dir migrated/ --json
    """
    items, outputs, batch = batch_plan(paths, out, run)
    request = command.MigrateRequest(
        target=target,
        check=check,
        atol=atol,
        outputs=outputs,
        out=out,
        custom_objects=custom_objects,
    )
    dispatch(
        items,
        partial(command.task, request),
        print_migrate,
        batch=batch,
        jobs=run.jobs,
        progress=run.progress,
        as_json=run.as_json,
        debug=run.debug,
    )
