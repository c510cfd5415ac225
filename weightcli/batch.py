"""Many models in one run: discovery by content, mirrored outputs, parallel workers.

Discovery (``--recursive``): a directory holding ``saved_model.pb`` is one model
(nothing below it is searched); a ``.index`` whose bytes end with the table magic
names one TF checkpoint prefix (one model, whatever its number of shards); any other
file is a model when its content says HDF5 or Keras archive, or when its name says
model (``.h5``, ``.hdf5``, ``.keras``) whatever its content: an empty or damaged
``model.h5`` is kept so that its failure is reported. A folder that cannot be read is
reported too. Everything else (data shards, ``checkpoint`` state files, other files,
hidden names) is skipped.

Each model runs in a worker process (``jobs`` of them); outcomes come back in input
order, and one model failing never stops the others.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from weightcli.child import Limits, end_with_parent
from weightcli.errors import (
    ExitCode,
    OutputError,
    Terminated,
    UsageError,
    WeightcliError,
    literal,
    one_line,
    os_error,
)
from weightcli.results import Result
from weightcli.stores.registry import file_is_model, folder_is_model, parts_of_models
from weightcli.stores.remote import RemotePath, as_path, as_urls


@dataclass(frozen=True)
class Item:
    """One model to process; ``root`` is the directory it was found under (for mirroring).

    ``other`` is the second model of a pair (``diff`` over two directories)."""

    path: Path
    root: Path | None = None
    other: Path | None = None

    @property
    def relative(self) -> Path:
        return self.path.relative_to(self.root) if self.root is not None else Path(self.path.name)

    @property
    def label(self) -> str:
        return f"{self.path} {self.other}" if self.other is not None else str(self.path)


Task = Callable[[Item], Result]


@dataclass
class Outcome:
    """One item's end: its exit code, its result (None on an error) or its error line."""

    path: str
    code: int
    elapsed: float
    result: Result | None = None
    error: str | None = None
    size: int = 0
    label: str = ""  # what the summary shows (a pair: both paths)

    def __post_init__(self) -> None:
        self.label = self.label or self.path


def model_size(path: Path) -> int:
    from weightcli.digest import total_size

    try:
        return total_size(path)
    except (OSError, WeightcliError):  # unreadable: the model's own run reports why
        return 0


def _models_in(folder: Path, names: list[str]) -> Iterator[Path]:
    """The models among a folder's files (not its subfolders), by the registry's rules:
    files that are parts of a model (data shards, state files, a map's shards) skipped."""
    parts = parts_of_models(folder, names)
    for name in sorted(names):
        if name.startswith(".") or name in parts:
            continue
        model = file_is_model(folder / name)
        if model is not None:
            yield model


def _walk(root: Path) -> Iterator[Path]:
    unreadable: list[Path] = []
    for folder, dirs, files in os.walk(root, onerror=lambda e: unreadable.append(Path(e.filename))):
        yield from unreadable  # reported as failed models, never skipped in silence
        unreadable.clear()
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if folder_is_model(files):
            dirs[:] = []
            yield here
            continue
        yield from _models_in(here, files)
    yield from unreadable


def _walk_remote(root: RemotePath) -> Iterator[Path]:
    """``_walk`` for a prefix in object storage: one listing of every object below it,
    then the same rules."""
    below: dict[Path, list[Path]] = {}
    for f in root.walk_files():
        rel = f.relative_to(root).parts
        if any(part.startswith(".") for part in rel):
            continue
        below.setdefault(f.parent, []).append(f)
    models = sorted(d for d, files in below.items() if folder_is_model({f.name for f in files}))

    def inside_model(folder: Path) -> bool:
        return any(folder == m or m in folder.parents for m in models)

    for m in models:
        if not any(other in m.parents for other in models):
            yield m
    for folder in sorted(below):
        if not inside_model(folder):
            yield from _models_in(folder, [f.name for f in below[folder]])


def discover(paths: Sequence[str], recursive: bool) -> list[Item]:
    """The models named by ``paths`` (directories searched when ``recursive``)."""
    items: list[Item] = []
    for raw in paths:
        p = as_path(raw)
        if p.is_dir() and recursive and not (p / "saved_model.pb").is_file():
            walk = _walk_remote(p) if isinstance(p, RemotePath) else _walk(p)
            found = sorted((Item(m, p) for m in walk), key=lambda it: it.relative.parts)
            if not found:
                raise UsageError(f"{p}: no checkpoint found below this directory")
            items += found
        else:
            items.append(Item(p))
    seen: set[Path] = set()
    unique = []
    for it in items:
        key = it.path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(it)
    return unique


def plan_outputs(items: Sequence[Item], output_dir: Path, force: bool) -> dict[Path, Path]:
    """Input path -> output path below ``output_dir`` (created when missing), mirroring
    each input's place in its tree."""
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputError.naming(f"{literal(output_dir)}: {{output_dir}} is not a directory")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)  # as its subfolders are
    except OSError as exc:
        raise OutputError(f"{output_dir}: cannot create it: {exc.strerror or exc}") from exc
    out: dict[Path, Path] = {}
    taken: dict[Path, Path] = {}
    from weightcli.stores.output import inside

    for it in items:
        target = inside(output_dir, it.relative.as_posix())
        if target in taken:
            raise UsageError(f"{it.path} and {taken[target]} would both be written to {target}")
        taken[target] = it.path
        out[it.path] = target
    return out


def _call(task: Task, item: Item, debug: bool, spell: Callable[[str], str]) -> Outcome:
    started = time.perf_counter()
    size = model_size(item.path)
    try:
        result = task(item)
        return Outcome(
            str(item.path),
            result.exit_code,
            time.perf_counter() - started,
            result,
            size=size,
            label=item.label,
        )
    except WeightcliError as exc:
        return Outcome(
            str(item.path),
            exc.exit_code,
            time.perf_counter() - started,
            error=one_line(as_urls(exc.render(spell))),
            size=size,
            label=item.label,
        )
    except OSError as exc:  # the machine's answer (no space, no permission), not a bug
        return Outcome(
            str(item.path),
            ExitCode.ERROR,
            time.perf_counter() - started,
            error=one_line(f"{item.label}: {os_error(exc)}"),
            size=size,
            label=item.label,
        )
    except MemoryError:
        return Outcome(
            str(item.path),
            2,
            time.perf_counter() - started,
            error=f"{item.label}: ran out of memory (or past the memory limit) processing this model",
            size=size,
            label=item.label,
        )
    except Exception as exc:  # a bug in weightcli: keep going, report it in full
        detail = traceback.format_exc() if debug else f"{type(exc).__name__}: {exc}"
        return Outcome(
            str(item.path),
            ExitCode.INTERNAL,
            time.perf_counter() - started,
            error=f"internal error (a bug in weightcli, please report it): {detail}",
            size=size,
            label=item.label,
        )


def _failed(item: Item, error: str, seconds: float) -> Outcome:
    return Outcome(str(item.path), 2, seconds, error=error, label=item.label)


# Signals that mean native code crashed (a damaged file tripping the HDF5 library).
_CRASHES = {"SIGSEGV", "SIGBUS", "SIGILL", "SIGFPE", "SIGABRT", "SIGSYS"}


def ended_badly(label: str, exc: BaseException) -> str:
    """One line for a model whose process died or was stopped (``weightcli.child``)."""
    from weightcli.child import ChildDied

    if isinstance(exc, ChildDied):
        sig = exc.signal_name
        if sig in _CRASHES:
            return (
                f"{label}: a native library (HDF5, TensorFlow) crashed reading this model "
                f"({sig}); the file is damaged"
            )
        if sig == "SIGKILL":
            return (
                f"{label}: the process was killed (SIGKILL; out of memory?) processing this model"
            )
        return f"{label}: {exc} while processing this model"
    return f"{label}: {exc}"


@dataclass
class Runner:
    """Runs a task over items, ``jobs`` processes at a time, yielding outcomes in input order.

    ``spell`` spells parameter names in error messages (the CLI: as its flags)."""

    task: Task
    jobs: int = 1
    debug: bool = False
    on_done: Callable[[Outcome], None] | None = field(default=None)
    spell: Callable[[str], str] = str
    executor: str = "local"  # or "dask": one task per model on a Dask cluster
    scheduler: str | None = None  # the cluster's scheduler; None: a LocalCluster here
    # Each model in a child process of its own (a crash, a time or memory limit ends
    # only that model); off: models run here, one after another (the Python API).
    isolate: bool = False
    limits: Limits = field(default_factory=Limits)

    def run(self, items: Sequence[Item]) -> Iterator[Outcome]:
        self._check_limits(items)
        if self.executor == "dask":
            from weightcli.cluster import run_on_dask

            for outcome in run_on_dask(
                _call,
                self.task,
                items,
                self.debug,
                self.spell,
                self.scheduler,
                self.jobs,
                _failed,
            ):
                self._done(outcome)
                yield outcome
            return
        from weightcli.child import fork_is_safe

        remote = any(isinstance(it.path, RemotePath) for it in items)
        # Models in object storage on several workers: workers started afresh (spawn)
        # in a pool. A forked worker would inherit the storage library's event-loop
        # thread and connections mid-use (and, with TensorFlow loaded, it was seen to hang).
        forkable = fork_is_safe() and not (remote and self.jobs > 1)
        if forkable and (self.isolate or self.jobs > 1):
            yield from self._in_children(items)
        elif self.jobs <= 1 or len(items) <= 1:
            for it in items:
                outcome = _call(self.task, it, self.debug, self.spell)
                self._done(outcome)
                yield outcome
        else:
            yield from self._in_pool(items)

    def _check_limits(self, items: Sequence[Item]) -> None:
        """A limit this run cannot enforce is an error, never ignored in silence."""
        from weightcli.child import fork_is_safe

        if self.limits == Limits():
            return
        if self.executor == "dask":
            raise UsageError.naming(
                "{timeout} and {max_memory} limit this machine's children; with {executor} "
                "dask, set the cluster's own limits (its workers' memory, a task timeout)"
            )
        remote = any(isinstance(it.path, RemotePath) for it in items)
        if fork_is_safe() and not (remote and self.jobs > 1):
            return  # each model in a forked child: every limit holds
        if self.jobs <= 1 or len(items) <= 1:  # models would run in this process
            raise UsageError.naming(
                "{timeout} and {max_memory} cannot hold here (TensorFlow is loaded in this "
                "process, so models run in it): run weightcli as a command of its own"
            )
        if self.limits.seconds is not None:  # a pool of spawned workers: memory only
            raise UsageError.naming(
                "{timeout} needs each model in a child of its own: with models in object "
                "storage give -j 1"
            )

    def _in_pool(self, items: Sequence[Item]) -> Iterator[Outcome]:
        """Spawned worker processes (models in object storage, or TensorFlow loaded here)."""
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        from concurrent.futures.process import BrokenProcessPool

        with ProcessPoolExecutor(
            max_workers=min(self.jobs, len(items)),
            initializer=_worker_start,
            initargs=(os.getpid(), self.limits),
            mp_context=multiprocessing.get_context("spawn"),
        ) as pool:
            futures = [pool.submit(_call, self.task, it, self.debug, self.spell) for it in items]
            for it, fut in zip(items, futures, strict=True):
                try:
                    outcome = fut.result()
                except BrokenProcessPool:
                    # A worker died (a crash in native code): this model (and any other
                    # not answered) runs alone, to fail with its cause; models that
                    # finished are never run again.
                    outcome = self._alone(it)
                self._done(outcome)
                yield outcome

    def _in_children(self, items: Sequence[Item]) -> Iterator[Outcome]:
        """Each model in a child process of its own, ``jobs`` at a time (forked: about a
        millisecond each). A model whose child dies or runs past the limits fails alone;
        no model runs twice."""
        from weightcli.child import run_children

        calls = [(_call, (self.task, it, self.debug, self.spell)) for it in items]
        started = time.perf_counter()
        for it, done in zip(items, run_children(calls, self.jobs, self.limits), strict=True):
            if isinstance(done.error, KeyboardInterrupt | Terminated):
                raise done.error
            if done.error is None and done.value is not None:
                outcome = done.value
            else:
                error = done.error or RuntimeError("no answer")
                outcome = _failed(it, ended_badly(it.label, error), time.perf_counter() - started)
            started = time.perf_counter()
            self._done(outcome)
            yield outcome

    def _done(self, outcome: Outcome) -> None:
        if self.on_done:
            self.on_done(outcome)

    def _alone(self, item: Item) -> Outcome:
        from weightcli.child import ChildDied, ChildTimedOut, run_in_child

        started = time.perf_counter()
        try:
            return run_in_child(_call, self.task, item, self.debug, self.spell, limits=self.limits)
        except (ChildDied, ChildTimedOut) as exc:
            return _failed(item, ended_badly(item.label, exc), time.perf_counter() - started)


def _worker_start(parent: int, limits: Limits) -> None:
    """Worker start-up: end this worker when the main process ends (a main process
    killed outright cannot shut its pool down, and its workers would otherwise wait
    for work forever), under the memory limit."""
    end_with_parent(parent)
    if limits.memory is not None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limits.memory, limits.memory))


def default_jobs() -> int:
    return max(
        1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )
