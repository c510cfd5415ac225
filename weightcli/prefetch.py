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
    it is raised where the caller asked."""

    def __init__(self, fn: Callable[[K], T]) -> None:
        self.fn = fn
        self._key: K | None = None
        self._thread: threading.Thread | None = None
        self._result: list[T] = []

    def take(self, key: K) -> T:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            if self._key == key and self._result:
                return self._result.pop()
            self._result.clear()
        return self.fn(key)

    def start(self, key: K) -> None:
        if self._thread is not None:  # (not taken: dropped)
            self._thread.join()
            self._result.clear()
        self._key = key

        def run() -> None:
            with contextlib.suppress(BaseException):  # computed again, and raised, by take
                self._result.append(self.fn(key))

        self._thread = threading.Thread(target=run, name="weightcli-ahead", daemon=True)
        start_shielded(self._thread)
