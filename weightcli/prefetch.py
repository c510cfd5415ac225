"""Read ahead: the next blocks are read by a thread while the caller computes on this one
(``ahead``); a value the caller will need next computed meanwhile (``Speculative``).

Reads (``preadv``, h5py, file reads) release the GIL, as numpy's loops do, so on two
cores reading and computing overlap. Memory stays bounded: at most ``depth`` items wait.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Generator, Iterable
from typing import Generic, TypeVar

from weightcli.stores.interrupts import start_shielded

T = TypeVar("T")

_DONE = object()


def ahead(items: Iterable[T], depth: int = 2) -> Generator[T, None, None]:
    """The items of ``items`` in order, produced by a thread at most ``depth`` ahead.

    An exception raised while producing is raised here, at the item where it happened.
    When the caller stops early (or fails), the thread stops at its next item and is
    joined before this generator ends: no read is left running behind the caller.
    """
    q: queue.Queue[tuple[bool, object]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple[bool, object]) -> bool:
        while not stop.is_set():
            try:
                q.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            put((False, exc))
            return
        put((True, _DONE))

    thread = threading.Thread(target=work, name="weightcli-read-ahead", daemon=True)
    start_shielded(thread)
    try:
        while True:
            ok, item = q.get()
            if not ok:
                assert isinstance(item, BaseException)
                raise item
            if item is _DONE:
                return
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        thread.join()


K = TypeVar("K")


class Speculative(Generic[K, T]):
    """``fn(key)`` computed ahead, on a helper thread, for the key the caller says it will
    ask for next (``start``); ``take(key)`` returns that result when the key is the one
    started, else computes ``fn(key)`` here. At most one computation is ahead (bounded
    memory); an error raised ahead is dropped and the computation done again here, so
    it is raised where the caller asked. One helper thread serves the ``start`` calls (a
    thread each cost more than it saved); ``close`` ends it, and it ends by itself when
    no work came for ``IDLE`` seconds (a caller that failed half-way leaves none behind)."""

    IDLE = 1.0

    def __init__(self, fn: Callable[[K], T]) -> None:
        self.fn = fn
        self._key: K | None = None
        self._pending = False
        self._jobs: queue.Queue[K | None] = queue.Queue()
        self._done: queue.Queue[list[T]] = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def _serve(self) -> None:
        while True:
            try:
                key = self._jobs.get(timeout=self.IDLE)
            except queue.Empty:
                with self._lock:
                    if self._jobs.empty():
                        self._thread = None
                        return
                continue
            if key is None:
                return
            out: list[T] = []
            with contextlib.suppress(BaseException):  # computed again, and raised, by take
                out.append(self.fn(key))
            self._done.put(out)

    def _collect(self) -> list[T]:
        if not self._pending:
            return []
        self._pending = False
        return self._done.get()

    def take(self, key: K) -> T:
        got = self._collect()
        if got and self._key == key:
            return got[0]
        return self.fn(key)

    def start(self, key: K) -> None:
        self._collect()  # (not taken: dropped)
        self._key, self._pending = key, True
        with self._lock:
            self._jobs.put(key)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._serve, name="weightcli-ahead", daemon=True
                )
                start_shielded(self._thread)

    def close(self) -> None:
        """Drop what is ahead and end the helper thread (joined)."""
        self._collect()
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is not None:
                self._jobs.put(None)
        if thread is not None:
            thread.join()
