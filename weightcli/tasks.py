"""One model's work for each command, as plain functions of picklable arguments, so that
batch runs can hand them to worker processes. Each returns (exit code, result)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from weightcli import pipeline
from weightcli.batch import Item
from weightcli.inspection import InspectResult, inspect_store
from weightcli.select import Selection
from weightcli.steps import Step
from weightcli.stores import open_store


def inspect_task(
    sel: Selection, with_stats: bool, fail_on_nonfinite: bool, item: Item
) -> tuple[int, InspectResult]:
    with open_store(item.path) as store:
        result = inspect_store(store, sel, with_stats=with_stats)
    return (1 if fail_on_nonfinite and result.nonfinite else 0), result


def transform_task(
    steps: list[Step],
    outputs: dict[Path, Path] | None,
    output: Path | None,
    in_place: bool,
    force: bool,
    dry_run: bool,
    command: str,
    item: Item,
) -> tuple[int, pipeline.TransformResult]:
    target = outputs.get(item.path) if outputs is not None else output
    with open_store(item.path) as store:
        out = (
            None
            if dry_run
            else pipeline.resolve_output(
                item.path, target, in_place, force, mkdirs=outputs is not None
            )
        )
        try:
            result = pipeline.run(store, steps, out, [command, str(item.path)], dry_run=dry_run)
        except ValueError as exc:
            from weightcli.errors import UsageError

            raise UsageError(str(exc)) from exc
    return 0, result


def verify_task(opts: Any, item: Item) -> tuple[int, Any]:
    from weightcli.verify import verify_path

    result = verify_path(str(item.path), opts)
    return (1 if result.failed else 0), result
