"""Read ahead: the next blocks are read by a thread while the caller computes on this one.

Reads (``preadv``, h5py, file reads) release the GIL, as numpy's loops do, so on two
cores reading and computing overlap. Memory stays bounded: at most ``depth`` items wait.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator, Iterable
from typing import TypeVar

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
