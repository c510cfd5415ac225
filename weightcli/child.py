"""Run a function in a child process that may die (a damaged HDF5 file crashing the
HDF5 library, TensorFlow aborting in C++): the caller gets the result, the exception
it raised, or how it died, and goes on.

The parent supervises: it removes the temporaries the child still held when it died
(the child reports each one it makes and lets go of), stops a child that runs past a
time limit, and the child runs under a memory limit (``RLIMIT_AS``) when one is set.
SIGINT and SIGTERM that reach the parent are passed on to the child, which cleans up
and answers as an interrupted run does.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing import connection
from pathlib import Path
from typing import Any, Generic, TypeVar

from weightcli.stores.temps import remove_path

T = TypeVar("T")


class ChildDied(Exception):
    """The child process ended without an answer (killed by a signal, or exited)."""

    def __init__(self, exitcode: int | None) -> None:
        self.exitcode = exitcode
        super().__init__(describe_exit(exitcode))

    @property
    def signal_name(self) -> str | None:
        if self.exitcode is None or self.exitcode >= 0:
            return None
        try:
            return signal.Signals(-self.exitcode).name
        except ValueError:
            return f"signal {-self.exitcode}"


class ChildTimedOut(Exception):
    """The child ran past its time limit and was stopped."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        super().__init__(f"it ran past the time limit of {seconds:g} s and was stopped")


def describe_exit(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"the process died of {name}"
    return f"the process ended with exit code {exitcode} and no answer"


@dataclass(frozen=True)
class Limits:
    """Per-child limits: seconds of wall time, bytes of address space (None: none)."""

    seconds: float | None = None
    memory: int | None = None


@dataclass
class _Answer(Generic[T]):
    value: T | None = None
    error: BaseException | None = None


def end_with_parent(parent: int | None = None) -> None:
    """End this process when its parent ends (Linux: ``PR_SET_PDEATHSIG``). With
    ``parent``: exit at once if that parent already ended before this took effect."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if parent is not None and os.getppid() != parent:
        os._exit(1)


def _interrupt_once(signum: int, frame: object) -> None:
    """SIGINT in a child: one KeyboardInterrupt; more (the terminal's and the parent's
    copy of the same ^C) are ignored while it cleans up."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def _child(conn: Any, limits: Limits, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    end_with_parent()
    # Forked while the parent held SIGINT/SIGTERM back: take them from here on.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    from weightcli.stores import temps

    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _interrupt_once)
    if limits.memory is not None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limits.memory, limits.memory))

    def tell(kind: str, path: Path) -> None:
        with contextlib.suppress(OSError):
            conn.send_bytes(pickle.dumps((kind, str(path))))

    temps.disown_inherited()
    temps.listen(tell)
    try:
        answer: _Answer[Any] = _Answer(value=fn(*args))
    except BaseException as exc:  # sent back, raised again in the parent
        answer = _Answer(error=exc)
    temps.remove_all()  # a forked child ends without running exit handlers
    temps.listen(None)
    try:
        data = pickle.dumps(("answer", answer))
    except Exception as exc:  # an unpicklable result or exception: send its text
        data = pickle.dumps(("answer", _Answer(error=RuntimeError(f"{type(exc).__name__}: {exc}"))))
    conn.send_bytes(data)
    conn.close()


def fork_is_safe() -> bool:
    """Forking this process is safe unless TensorFlow (and its threads) is loaded here."""
    return sys.modules.get("tensorflow") is None


@dataclass
class Done(Generic[T]):
    """How one call in a child ended: its value, or the exception it raised (or
    ``ChildDied`` / ``ChildTimedOut``)."""

    value: T | None = None
    error: BaseException | None = None


@dataclass
class _Run:
    index: int
    proc: Any
    conn: Any
    deadline: float | None
    held: dict[str, None] = field(default_factory=dict)
    answer: _Answer[Any] | None = None


def run_children(
    calls: Sequence[tuple[Callable[..., T], tuple[Any, ...]]],
    jobs: int = 1,
    limits: Limits | None = None,
) -> Iterator[Done[T]]:
    """Each ``fn(*args)`` in a child process of its own, ``jobs`` at a time; how each
    ended, in input order (an interrupted call: its ``KeyboardInterrupt``/``Terminated``). A child that dies or runs past the time limit ends only its
    own call; the temporaries it held are removed here. SIGINT/SIGTERM here are passed
    on to the running children, no new one starts, and the signal is raised again once
    they have answered. Children are forked when that is safe, else spawned."""
    from weightcli.errors import Terminated
    from weightcli.stores.interrupts import signals_held

    limits = limits or Limits()
    ctx = multiprocessing.get_context("fork" if fork_is_safe() else "spawn")
    pending = deque(enumerate(calls))
    running: dict[Any, _Run] = {}
    finished: dict[int, Done[T]] = {}
    stopped: BaseException | None = None
    emitted = 0

    def read(run: _Run) -> bool:
        """One message of ``run``'s child; False at the end of its pipe."""
        try:
            with signals_held():  # a message is read whole
                kind, payload = pickle.loads(run.conn.recv_bytes())
        except (EOFError, OSError):
            return False
        if kind == "+":
            run.held[payload] = None
        elif kind == "-":
            run.held.pop(payload, None)
        else:
            run.answer = payload
        return True

    def finish(run: _Run, error: BaseException | None = None) -> None:
        run.proc.join()
        # What the child said before it ended and nobody read yet (a temporary it made
        # just before it was stopped): read now, so that nothing it held is left behind.
        with contextlib.suppress(OSError, EOFError):
            while run.conn.poll() and read(run):
                pass
        run.conn.close()
        del running[run.conn]
        for name in run.held:  # what a child that died or was stopped left behind
            remove_path(Path(name))
        if error is None and run.answer is None:
            error = ChildDied(run.proc.exitcode)
        if error is None and run.answer is not None:
            finished[run.index] = Done(run.answer.value, run.answer.error)
        else:
            finished[run.index] = Done(error=error)

    def stop(exc: BaseException) -> None:
        """SIGINT/SIGTERM here: passed on to the running children (which clean up and
        answer), no new one started."""
        nonlocal stopped
        if stopped is None:
            stopped = exc
        pending.clear()
        sig = signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT
        for run in running.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(run.proc.pid, sig)

    try:
        while pending or running:
            # A signal may land anywhere in this loop, not only while it waits: it
            # stops the run the same way wherever it lands (never killing a child that
            # is cleaning up, never losing what it said).
            try:
                while pending and len(running) < max(1, jobs) and stopped is None:
                    index, (fn, args) = pending.popleft()
                    recv, send = ctx.Pipe(duplex=False)
                    proc = ctx.Process(target=_child, args=(send, limits, fn, args))  # type: ignore[attr-defined]
                    with signals_held():  # started and known as one step
                        proc.start()
                        deadline = (
                            None if limits.seconds is None else time.monotonic() + limits.seconds
                        )
                        running[recv] = _Run(index, proc, recv, deadline)
                    send.close()
                deadlines = [r.deadline for r in running.values() if r.deadline is not None]
                wait = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
                ready = connection.wait(list(running), wait)
                for conn in ready:
                    run = running[conn]
                    if not read(run) or run.answer is not None:
                        finish(run)
                now = time.monotonic()
                for run in list(running.values()):
                    if run.deadline is not None and now >= run.deadline:
                        run.proc.kill()
                        finish(run, ChildTimedOut(limits.seconds or 0.0))
            except (KeyboardInterrupt, Terminated) as exc:
                stop(exc)
                continue
            while emitted in finished and stopped is None:
                yield finished.pop(emitted)
                emitted += 1
    finally:
        for run in list(running.values()):  # the caller stopped early, or an error
            run.proc.kill()
            finish(run)
    if stopped is not None:
        # Calls that completed before the signal reached them did their work: say so;
        # the first that did not (interrupted, or never started) ends the run here.
        while emitted in finished:
            yield finished.pop(emitted)
            emitted += 1
        if emitted < len(calls):
            raise stopped


def run_in_child(fn: Callable[..., T], *args: Any, limits: Limits | None = None) -> T:
    """``fn(*args)`` in a child process; its exception is raised here; ``ChildDied``
    when it died, ``ChildTimedOut`` when it ran past ``limits.seconds``."""
    done = next(iter(run_children([(fn, args)], 1, limits)))
    if done.error is not None:
        raise done.error
    return done.value  # type: ignore[return-value]
