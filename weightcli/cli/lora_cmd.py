"""``weightcli lora merge`` and ``weightcli lora extract``."""

from __future__ import annotations

from pathlib import Path

import click

from weightcli.cli.dispatch import dispatch_one
from weightcli.cli.options import debug_option, json_option, new_file_options, output_group
from weightcli.commands import lora as command
from weightcli.params import OutputSpec
from weightcli.report import print_lora_extract, print_transform
from weightcli.stores.remote import as_path

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=CONTEXT)
def lora() -> None:
    """KerasHub LoRA adapters (*.lora.h5) and saved checkpoints, offline.

    An adapter names layers by their index in the model, as KerasHub's
    Backbone.save_lora_weights writes it; weightcli finds the index by building BASE's
    model from its config with Keras (no weight allocated: the tf extra is needed).

    \b
    Examples:
      weightcli lora merge base.keras adapter.lora.h5 -o merged.keras
      weightcli lora extract base.keras tuned.keras --rank 8 -o adapter.lora.h5
    """


architecture_option = click.option(
    "--architecture",
    type=click.Path(path_type=str),
    help="For a weights-only BASE: the model file (.keras) or KerasHub preset config.json "
    "that says its layers.",
)


@lora.command("merge")
@click.argument("base", metavar="BASE", type=click.Path(path_type=str))
@click.argument("adapter", metavar="ADAPTER", type=click.Path(path_type=str))
@click.option(
    "--alpha",
    type=float,
    help="LoRA alpha: the update is scaled by alpha / rank (default: alpha = rank, as KerasHub).",
)
@architecture_option
@output_group()
@json_option
@debug_option
def merge(
    base: str,
    adapter: str,
    alpha: float | None,
    architecture: str | None,
    out: OutputSpec,
    as_json: bool,
    debug: bool,
) -> None:
    """Merge ADAPTER into BASE's kernels: W += (alpha / rank) A @ B, streamed.

    As Keras's _get_kernel_with_merged_lora computes it (Dense, EinsumDense, convolutions,
    Embedding); every other byte of BASE is kept. The report lists each kernel changed
    and the norm of its update.

    \b
    Examples:
      weightcli lora merge base.keras adapter.lora.h5 -o merged.keras
      weightcli lora merge model.weights.h5 adapter.lora.h5 --architecture config.json -o merged.weights.h5
    """
    request = command.MergeRequest(
        adapter=as_path(adapter),
        alpha=alpha,
        architecture=as_path(architecture) if architecture else None,
        out=out,
    )
    dispatch_one(base, command.merge, request, print_transform, as_json=as_json, debug=debug)


@lora.command("extract")
@click.argument("base", metavar="BASE", type=click.Path(path_type=str))
@click.argument("tuned", metavar="TUNED", type=click.Path(path_type=str))
@click.option("--rank", type=int, help="The adapter's rank.")
@click.option(
    "--energy",
    type=float,
    help="Instead of --rank: the smallest rank keeping this share of every kernel's "
    "squared singular values (e.g. 0.99).",
)
@click.option(
    "--target",
    "targets",
    multiple=True,
    metavar="GLOB",
    help="Only these layers (by name); default: every LoRA-capable layer that changed.",
)
@architecture_option
@new_file_options("OUT.lora.h5")
@click.option("--note", help="Why: recorded in the adapter's history.")
@json_option
@debug_option
def extract(
    base: str,
    tuned: str,
    rank: int | None,
    energy: float | None,
    targets: tuple[str, ...],
    architecture: str | None,
    output: str,
    force: bool,
    digest: str | None,
    note: str | None,
    as_json: bool,
    debug: bool,
) -> None:
    """Factor TUNED - BASE into a KerasHub LoRA adapter (truncated SVD per kernel).

    Each LoRA-capable kernel that changed (Dense, EinsumDense, convolutions, Embedding;
    reshaped to 2-D as Keras's LoRA factors it) gets rank-R factors; the report gives
    each kernel's retained energy and largest error, and the weights an adapter cannot
    carry (biases, normalisation) that changed too. `lora merge BASE OUT` gives back
    TUNED's kernels within the reported error.

    \b
    Examples:
      weightcli lora extract base.keras tuned.keras --rank 8 -o adapter.lora.h5
      weightcli lora extract base.keras tuned.keras --energy 0.99 --target 'query*' -o a.lora.h5
    """
    request = command.ExtractRequest(
        tuned=as_path(tuned),
        output=Path(output),
        rank=rank,
        energy=energy,
        targets=targets,
        architecture=as_path(architecture) if architecture else None,
        force=force,
        digest=digest,
        note=note,
    )
    dispatch_one(base, command.extract, request, print_lora_extract, as_json=as_json, debug=debug)
