"""The one dispatcher: every command's run over one model or many.

One model: the result is printed (table or JSON), errors propagate (one line, exit
2). Several models (several paths, ``-r``, ``--output-dir``, or pairs for ``diff``):
worker processes, a progress bar, one output per model in input order, a summary,
and the worst exit code.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from weightcli.batch import (
    Item,
    Outcome,
    Runner,
    default_jobs,
    discover,
    ended_badly,
    plan_outputs,
)
from weightcli.child import ChildDied, ChildTimedOut, Limits, run_in_child
from weightcli.cli.options import spell
from weightcli.errors import InputError, ParameterError, UsageError, literal, one_line
from weightcli.grid import rich_console
from weightcli.params import OutputSpec, RunSpec
from weightcli.report import fmt_bytes, print_json, print_summary
from weightcli.results import ReportResult, Result
from weightcli.stores.remote import as_path, is_url

if TYPE_CHECKING:
    from weightcli.commands.report import ReportRequest

R = TypeVar("R", bound=Result)


@dataclass(frozen=True)
class Page:
    """A report page to write after the command: ``flag`` as the user gave it (its
    errors name it), the page's path, and the report's own parameters (selection, name
    maps); its ``against`` comes from the command's result (``compared()``)."""

    flag: str
    path: Path
    request: ReportRequest | None = None  # None: the report's defaults


def requested_page() -> Page | None:
    """``--report-html FILE`` of the running writing command (``report_html_option``
    puts it in the context, as --executor is)."""
    ctx = click.get_current_context(silent=True)
    given = ctx.meta.get("weightcli.report_html") if ctx is not None else None
    return Page("--report-html", page_path(given, "--report-html")) if given else None


def page_path(given: str, flag: str) -> Path:
    if "://" in given:
        raise UsageError(
            f"{flag} {literal(given)}: the page is written on this machine; give a local path"
        )
    return Path(given)


def _check_page(page: Page, items: list[Item], batch: bool) -> None:
    """What a page cannot follow, refused before anything runs."""
    if batch:
        raise UsageError(
            f"{page.flag} writes one page: run the command on one model (or weightcli report "
            "on each output)"
        )
    ctx = click.get_current_context(silent=True)
    params = ctx.params if ctx is not None else {}
    if params.get("dry_run"):
        raise UsageError(f"{page.flag} draws the written output: drop --dry-run")
    if params.get("in_place"):
        raise UsageError(
            f"{page.flag} draws the output against its source, which --in-place replaces: "
            "write to -o OUT instead"
        )
    models = [items[0].path, items[0].other, params.get("output")]
    if page.request is not None and page.request.against is not None:
        models.append(page.request.against)
    for m in models:
        if isinstance(m, str | Path) and not is_url(m) and _same_file(Path(m), page.path):
            raise UsageError(
                f"{page.flag} {literal(page.path)} is one of the models: give another file"
            )


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _with_page(task: Callable[[Item], R], page: Page, item: Item) -> R:
    """The command, then its page: the written file drawn against what it came from."""
    # (imported here: a command without a page starts without the report's modules)
    from weightcli.commands import report as report_cmd
    from weightcli.page import render as render_page
    from weightcli.stores.output import write_text

    result = task(item)
    if isinstance(result, ReportResult):  # ``weightcli report``: the page is its result
        write_text(page.path, render_page(result))
        return result
    pair = result.compared()  # type: ignore[attr-defined]  # every writing result has it
    if pair is None:
        raise UsageError(f"{page.flag}: nothing was written, so there is nothing to draw")
    after, before = pair
    request = replace(page.request or report_cmd.ReportRequest(), against=before)
    report = report_cmd.run(request, after)
    write_text(page.path, render_page(report))
    return result


def dispatch_one(
    path: str | Path,
    run: Callable[[Any, Path], R],
    request: object,
    render: Callable[[R], None],
    *,
    as_json: bool = False,
    debug: bool = False,
) -> None:
    """A command of one model: ``run(request, path)``, printed and exited as every other."""
    dispatch(
        [Item(as_path(path))],
        partial(_run_one, run, request),
        render,
        batch=False,
        as_json=as_json,
        debug=debug,
    )


def _run_one(run: Callable[[Any, Path], R], request: object, item: Item) -> R:
    return run(request, item.path)


def is_batch(paths: Sequence[str], recursive: bool, output_dir: object = None) -> bool:
    return len(paths) > 1 or recursive or output_dir is not None


def batch_plan(
    paths: Sequence[str], out: OutputSpec, run: RunSpec
) -> tuple[list[Item], tuple[tuple[Path, Path], ...], bool]:
    """The models a writing command runs on, each one's mirrored output below
    ``--output-dir`` (a batch), and whether it is a batch; the rules of -o against
    several inputs, --in-place and --output-dir, said once for every such command."""
    if not is_batch(paths, run.recursive, run.output_dir):
        return [Item(as_path(paths[0]))], (), False
    if out.output is not None:
        raise ParameterError("{output} names one output; with several inputs use {output_dir} DIR")
    if out.in_place and run.output_dir is not None:
        raise ParameterError("{in_place} and {output_dir} exclude each other")
    items = discover(list(paths), run.recursive)
    outputs: tuple[tuple[Path, Path], ...] = ()
    if not out.in_place and not out.dry_run:
        if run.output_dir is None:
            raise ParameterError(
                "with several inputs, give {output_dir} DIR (or {in_place}, or {dry_run})"
            )
        outputs = tuple(plan_outputs(items, run.output_dir, out.force).items())
    return items, outputs, True


def dispatch(
    items: list[Item],
    task: Callable[[Item], R],
    render: Callable[[R], None],
    *,
    batch: bool,
    jobs: int | None = None,
    progress: bool | None = None,
    as_json: bool = False,
    debug: bool = False,
    page: Page | None = None,
) -> None:
    """Run ``task`` on every item, print each result, and exit with the worst code.
    ``page`` (else a writing command's ``--report-html``): a report page written after
    the command, of what it wrote or compared."""
    page = page or requested_page()
    if page is not None:
        _check_page(page, items, batch)
        task = partial(_with_page, task, page)
    executor, scheduler = _executor(jobs)
    isolate, limits = _isolation(debug)
    if batch or executor == "dask":  # on a cluster, even one model is a batch of one
        code = _run_batch(
            items,
            task,
            render,
            jobs,
            progress,
            as_json,
            debug,
            executor,
            scheduler,
            isolate,
            limits,
        )
    else:
        result = _run_single(task, items[0], isolate, limits)
        code = result.exit_code
        if as_json:  # the same shape as each line of a batch
            print_json({"path": str(items[0].path), **result.to_json(), "exit_code": code})
        else:
            render(result)
        why = result.explain()
        if why:
            click.echo(f"weightcli: {items[0].label}: {why}", err=True)
        if page is not None:
            click.echo(f"weightcli: wrote the report page {page.path}", err=True)
    if code:
        raise SystemExit(code)


def _run_single(task: Callable[[Item], R], item: Item, isolate: bool, limits: Limits) -> R:
    """One model's run: in a supervised child process (the CLI), or here (--debug, tests
    that call the click command in-process)."""
    if not isolate:
        return task(item)
    try:
        return run_in_child(task, item, limits=limits)
    except (ChildDied, ChildTimedOut) as exc:
        raise InputError(literal(ended_badly(item.label, exc))) from None
    except MemoryError:
        raise InputError(
            literal(f"{item.label}: ran out of memory (or past --max-memory) processing this model")
        ) from None


def _isolation(debug: bool) -> tuple[bool, Limits]:
    """Whether each model runs in a child process of its own, and that child's limits.

    The command-line entry point (``weightcli.cli.main``) isolates every model, so that
    a file that crashes a native library costs one line and exit 2, not the process;
    so do --timeout and --max-memory, which need a child to enforce. --debug alone
    runs a single model here, for a whole traceback."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return False, Limits()
    limits = Limits(ctx.meta.get("weightcli.timeout"), ctx.meta.get("weightcli.max_memory"))
    root = ctx.find_root().obj
    wanted = isinstance(root, dict) and bool(root.get("isolate")) and not debug
    return wanted or limits != Limits(), limits


def _run_batch(
    items: list[Item],
    task: Callable[[Item], R],
    render: Callable[[R], None],
    jobs: int | None,
    progress: bool | None,
    as_json: bool,
    debug: bool,
    executor: str = "local",
    scheduler: str | None = None,
    isolate: bool = False,
    limits: Limits | None = None,
) -> int:
    show = sys.stderr.isatty() if progress is None else progress
    bar = _Progress(items) if show else None
    runner = Runner(
        task,
        jobs or default_jobs(),
        debug,
        bar.advance if bar else None,
        spell,
        executor=executor,
        scheduler=scheduler,
        isolate=isolate,
        limits=limits or Limits(),
    )
    outcomes: list[Outcome] = []
    try:
        for outcome in runner.run(items):
            outcomes.append(outcome)
            if as_json:
                doc = outcome.result.to_json() if outcome.result is not None else {}
                doc = {"path": outcome.path, **doc, "exit_code": outcome.code}
                if outcome.error:
                    doc["error"] = outcome.error
                print_json(doc)
            elif outcome.result is not None:
                if bar:
                    bar.pause()
                render(outcome.result)  # type: ignore[arg-type]  # the task's own result type
            if outcome.error:
                click.echo(f"weightcli: error: {one_line(outcome.error)}", err=True)
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
                    "internal_errors": sum(o.code == 3 for o in outcomes),
                    "exit_code": worst,
                    "seconds": round(sum(o.elapsed for o in outcomes), 3),
                }
            }
        )
    else:
        print_summary(outcomes)
    return worst


def _executor(jobs: int | None) -> tuple[str, str | None]:
    """--executor and --scheduler of the running command (set by ``batch_options``)."""
    ctx = click.get_current_context(silent=True)
    meta = ctx.meta if ctx is not None else {}
    executor = meta.get("weightcli.executor") or "local"
    scheduler = meta.get("weightcli.scheduler")
    if scheduler is not None and executor != "dask":
        raise click.UsageError("--scheduler needs --executor dask")
    if scheduler is not None and jobs is not None:
        raise click.UsageError(
            "-j/--jobs sets this machine's worker processes; with --scheduler the "
            "cluster's workers run the models (leave -j out)"
        )
    return executor, scheduler


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
