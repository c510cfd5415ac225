"""Every temporary file and folder weightcli makes, in one registry.

A temporary is created and registered as one step (SIGINT/SIGTERM held back meanwhile),
forgotten when its owner publishes or removes it, and removed when the process ends if
it is still here. A supervising parent (``weightcli.child``) listens: whatever a child
that crashed or was killed still held is removed by the parent.

Names carry the writer's process id (``TEMP_TAG`` + pid), so that a later run can
recognise and remove those of a process that was killed outright (``remove_stale_temps``).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from weightcli.stores.interrupts import signals_held

TEMP_TAG = "weightcli-"

# Path -> None, in creation order: what this process made and still holds.
_live: dict[Path, None] = {}
# Told of each temporary made ("+") and let go ("-"); set in a supervised child.
_listener: Callable[[str, Path], None] | None = None


def disown_inherited() -> None:
    """In a forked child: the temporaries registered so far are its parent's, not its own."""
    _live.clear()


def listen(listener: Callable[[str, Path], None] | None) -> None:
    """Tell ``listener`` of every temporary made (``"+"``) and let go (``"-"``) from now on."""
    global _listener
    _listener = listener


def _register(path: Path) -> None:
    _live[path] = None
    if _listener is not None:
        _listener("+", path)


def _make(folder: Path | None, prefix: str, suffix: str, create: Callable[[Path], None]) -> Path:
    """A fresh temporary, registered *before* it is created: an interrupt that lands
    anywhere (a signal can reach this thread's Python code even while it holds signals
    back, when the kernel delivered it to another thread) leaves nothing unknown: a name
    registered but never created is harmless to remove."""
    where = Path(folder) if folder is not None else Path(tempfile.gettempdir())
    for _ in range(100):
        path = where / f"{prefix}{secrets.token_hex(4)}{suffix}"
        with signals_held():
            _register(path)
            try:
                create(path)
            except FileExistsError:
                forget(path)
                continue
            except BaseException:
                forget(path)
                raise
        return path
    raise FileExistsError(f"no free temporary name in {where}")


def _create_file(path: Path) -> None:
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600))


def make_file(folder: Path | None, prefix: str, suffix: str = ".tmp") -> Path:
    """A fresh empty temporary file (mode 0600) in ``folder`` (None: the system's)."""
    return _make(folder, prefix, suffix, _create_file)


def make_dir(folder: Path | None, prefix: str, suffix: str = ".tmp") -> Path:
    """A fresh temporary folder (mode 0700) in ``folder`` (None: the system's)."""
    return _make(folder, prefix, suffix, lambda path: os.mkdir(path, 0o700))


def forget(path: Path) -> None:
    """``path`` is no longer a temporary of this process (published, or removed)."""
    if _live.pop(path, 0) is None and _listener is not None:
        _listener("-", path)


def remove_path(path: Path) -> None:
    """Remove a file or folder (never following a link), if it is there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def remove(path: Path) -> None:
    """Remove a temporary and forget it."""
    remove_path(path)
    forget(path)


def remove_all() -> None:
    """Remove every temporary this process still holds (at exit, after an interrupt)."""
    for path in list(_live):
        remove(path)


atexit.register(remove_all)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder: Path, prefix: str = "") -> list[Path]:
    """Remove the temporary files and folders of dead weightcli processes in ``folder``
    (those whose names start with ``prefix``); returns what was removed."""
    pattern = re.compile(re.escape(prefix) + r".*" + re.escape(TEMP_TAG) + r"(\d+)\.")
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = pattern.match(entry.name)
        if not m or not entry.name.endswith(".tmp") and ".tmp" not in entry.name:
            continue
        if int(m.group(1)) == os.getpid() or _alive(int(m.group(1))):
            continue
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed
