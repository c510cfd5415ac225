"""Open any supported checkpoint: the format is detected from content, not the name."""

from __future__ import annotations

from pathlib import Path

from weightcli.stores.base import Format, Patcher, Provenance, Store, StoreMeta
from weightcli.stores.detect import Container, detect
from weightcli.stores.remote import as_path

__all__ = [
    "Container",
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
    kind = detect(p)
    if kind == Container.HDF5:
        from weightcli.stores.hdf5 import H5Store

        return H5Store(p)
    if kind == Container.ZIP:
        from weightcli.stores.archive import ArchiveStore

        return ArchiveStore(p)
    if kind == Container.SHARDED:
        from weightcli.stores.sharded import ShardedStore

        return ShardedStore(p)
    if kind == Container.KERAS_FOLDER:
        from weightcli.stores.archive import FolderStore

        return FolderStore(p)
    from weightcli.stores.tfbundle import TFStore

    return TFStore(p, kind)
