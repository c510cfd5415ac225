"""Run a function in a child process that may die (TensorFlow aborting in C++, a
crashing native library): the caller gets the result, the exception it raised, or how
it died, and goes on."""

from __future__ import annotations

import multiprocessing
import pickle
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class ChildDied(Exception):
    """The child process ended without an answer (killed by a signal, or exited)."""

    def __init__(self, exitcode: int | None) -> None:
        self.exitcode = exitcode
        super().__init__(describe_exit(exitcode))


def describe_exit(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"the process died of {name}"
    return f"the process ended with exit code {exitcode} and no answer"


@dataclass
class _Answer(Generic[T]):
    value: T | None = None
    error: BaseException | None = None


def _child(conn: Any, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: end with the parent
    try:
        answer: _Answer[Any] = _Answer(value=fn(*args))
    except BaseException as exc:  # sent back, raised again in the parent
        answer = _Answer(error=exc)
    try:
        conn.send_bytes(pickle.dumps(answer))
    except Exception as exc:  # an unpicklable exception: send its text
        conn.send_bytes(pickle.dumps(_Answer(error=RuntimeError(f"{type(exc).__name__}: {exc}"))))
    conn.close()


def run_in_child(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a child process; its exception is raised here; ``ChildDied``
    when it died. The child is forked when TensorFlow is not loaded here (fast), else
    spawned (forking a process with TensorFlow's threads is unsafe)."""
    method = "spawn" if sys.modules.get("tensorflow") is not None else "fork"
    ctx = multiprocessing.get_context(method)
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, fn, args))  # type: ignore[attr-defined]
    proc.start()
    send.close()
    try:
        data = recv.recv_bytes()
    except EOFError:
        proc.join()
        raise ChildDied(proc.exitcode) from None
    finally:
        recv.close()
    proc.join()
    answer: _Answer[T] = pickle.loads(data)
    if answer.error is not None:
        raise answer.error
    return answer.value  # type: ignore[return-value]
