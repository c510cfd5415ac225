"""Steps that an interrupt must not split: SIGINT and SIGTERM held back meanwhile."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM held back while a temporary is created and registered: one
    landing between the two would leave a temporary nobody knows to remove (it is
    delivered, and handled, right after)."""
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    except (AttributeError, OSError, ValueError):  # no signal masks here
        old = None
    try:
        yield
    finally:
        if old is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


def start_shielded(thread: threading.Thread) -> None:
    """Start a helper thread that never takes SIGINT or SIGTERM: it inherits the mask
    held here (as do native threads it starts, such as BLAKE3's pool), so the kernel
    delivers a signal sent to the process to the main thread, whose ``signals_held``
    then really holds it."""
    with signals_held():
        thread.start()
