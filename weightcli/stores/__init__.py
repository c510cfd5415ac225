"""Open any supported checkpoint: the format is detected from content, not the name
(``registry.FORMATS`` lists every format, in detection order)."""

from __future__ import annotations

from pathlib import Path

from weightcli.errors import InputError, one_line, os_error
from weightcli.stores.base import Format, Patcher, Provenance, Store, StoreMeta
from weightcli.stores.detect import detect
from weightcli.stores.remote import as_path

__all__ = [
    "Format",
    "Patcher",
    "Provenance",
    "Store",
    "StoreMeta",
    "detect",
    "open_store",
]


def open_store(path: str | Path) -> Store:
    """Open a checkpoint of any supported format for reading (close it, or use ``with``)."""
    p = as_path(path)
    spec = detect(p)
    try:
        return spec.open(p)
    except OSError as exc:  # a file of the checkpoint that cannot be read
        raise InputError(one_line(f"{p}: cannot be read: {os_error(exc)}")) from exc
