"""Several inputs in one command: options, progress, per-model output, summary, exit code."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from weightcli.batch import Item, Outcome, Runner, default_jobs, discover
from weightcli.grid import Styled, rich_console
from weightcli.report import console, finite_or_none, fmt_bytes, print_json, table

F = Callable[..., Any]


def batch_options(f: F) -> F:
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


def is_batch(paths: tuple[str, ...], recursive: bool, output_dir: Path | None = None) -> bool:
    return len(paths) > 1 or recursive or output_dir is not None


def run_command(
    paths: tuple[str, ...],
    recursive: bool,
    jobs: int | None,
    progress: bool | None,
    as_json: bool,
    debug: bool,
    task: Callable[[Item], tuple[int, Any]],
    render: Callable[[Any], None],
    to_json: Callable[[Any], dict[str, Any]],
    explain: Callable[[Any], str] | None = None,
) -> None:
    """One model (errors are one line, exit 2) or a batch; exits with the worst outcome."""
    if is_batch(paths, recursive):
        code = run_batch(paths, recursive, jobs, progress, as_json, debug, task, render, to_json)
    else:
        code, result = task(Item(Path(paths[0])))
        if as_json:
            print_json(to_json(result))
        else:
            render(result)
        if code and explain is not None:
            click.echo(f"weightcli: {paths[0]}: {explain(result)}", err=True)
    if code:
        raise SystemExit(code)


def run_batch(
    paths: tuple[str, ...] | list[Item],
    recursive: bool,
    jobs: int | None,
    progress: bool | None,
    as_json: bool,
    debug: bool,
    task: Callable[[Item], tuple[int, Any]],
    render: Callable[[Any], None],
    to_json: Callable[[Any], dict[str, Any]],
) -> int:
    """Run ``task`` over every model; print each outcome in input order, then a summary.

    Returns the worst exit code (0, 1 or 2)."""
    items = paths if paths and isinstance(paths[0], Item) else discover(list(paths), recursive)  # type: ignore[arg-type]
    show = sys.stderr.isatty() if progress is None else progress
    bar = _Progress(items) if show else None
    runner = Runner(task, jobs or default_jobs(), debug, on_done=bar.advance if bar else None)
    outcomes: list[Outcome] = []
    try:
        for outcome in runner.run(items):
            outcomes.append(outcome)
            if as_json:
                doc = (
                    to_json(outcome.result)
                    if outcome.result is not None
                    else {"path": outcome.path}
                )
                doc = {"path": outcome.path, **doc, "exit_code": outcome.code}
                if outcome.error:
                    doc["error"] = outcome.error
                print_json(finite_or_none(doc))
            elif outcome.result is not None:
                if bar:
                    bar.pause()
                render(outcome.result)
            if outcome.error:
                click.echo(f"weightcli: error: {outcome.error}", err=True)
    finally:
        if bar:
            bar.stop()
    worst = max((o.code for o in outcomes), default=0)
    if as_json:
        print_json(
            {
                "summary": {
                    "models": len(outcomes),
                    "ok": sum(o.code == 0 for o in outcomes),
                    "failed": sum(o.code == 1 for o in outcomes),
                    "errors": sum(o.code == 2 for o in outcomes),
                    "exit_code": worst,
                    "seconds": round(sum(o.elapsed for o in outcomes), 3),
                }
            }
        )
    else:
        print_summary(outcomes)
    return worst


OUTCOME = {0: "ok", 1: "check failed", 2: "error"}


def print_summary(outcomes: list[Outcome]) -> None:
    rows = []
    for o in outcomes:
        style = {0: "green", 1: "yellow", 2: "bold red"}[o.code]
        rows.append([o.path, Styled(OUTCOME[o.code], style), f"{o.elapsed:.2f} s", o.error or ""])
    out = console()
    out.print(
        table(
            [("Model", "left"), ("Outcome", "left"), ("Time", "right"), ("Error", "left")],
            rows,
        )
    )
    counts = ", ".join(f"{sum(o.code == c for o in outcomes)} {OUTCOME[c]}" for c in (0, 1, 2))
    out.print(f"{len(outcomes)} models: {counts}")


class _Progress:
    """A rich progress bar on stderr: models and bytes done, ETA."""

    def __init__(self, items: list[Item]) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        from weightcli.batch import model_size

        self.total_bytes = sum(model_size(it.path) for it in items) or 1
        self.done_bytes = 0
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[bytes]}"),
            TimeRemainingColumn(),
            console=rich_console(sys.stderr, None),
            transient=True,
        )
        self.task = self.progress.add_task("models", total=len(items), bytes="")
        self.progress.start()

    def advance(self, outcome: Outcome) -> None:
        self.done_bytes += outcome.size
        self.progress.update(
            self.task,
            advance=1,
            bytes=f"{fmt_bytes(self.done_bytes)} of {fmt_bytes(self.total_bytes)}",
        )

    def pause(self) -> None:
        self.progress.refresh()

    def stop(self) -> None:
        self.progress.stop()
