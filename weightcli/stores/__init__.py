"""Open any supported checkpoint: the format is detected from content, not the name."""

from __future__ import annotations

import zipfile
from pathlib import Path

from weightcli.errors import InputError, UnsupportedError
from weightcli.stores.base import Patcher, Store, StoreMeta

__all__ = ["Patcher", "Store", "StoreMeta", "open_store", "detect"]

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ZIP_SIGNATURE = b"PK\x03\x04"
TABLE_MAGIC = bytes.fromhex("57fb808b247547db")


def _head(path: Path, n: int = 8) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError as exc:
        raise InputError(f"{path}: cannot be read: {exc.strerror or exc}") from exc


def _is_hdf5(path: Path) -> bool:
    # HDF5 allows a user block: the signature may sit at 0, 512, 1024, 2048, ...
    try:
        with open(path, "rb") as f:
            offset = 0
            while True:
                f.seek(offset)
                chunk = f.read(8)
                if len(chunk) < 8:
                    return False
                if chunk == HDF5_SIGNATURE:
                    return True
                offset = 512 if offset == 0 else offset * 2
    except OSError:
        return False


def _bundle_prefix(path: Path) -> Path | None:
    """The TF checkpoint prefix that ``path`` names (a prefix, its .index or a data shard)."""
    name = path.name
    if path.suffix == ".index" and path.is_file():
        return path.with_name(name[: -len(".index")])
    if ".data-" in name and path.is_file():
        return path.with_name(name.split(".data-")[0])
    if not path.exists() and path.with_name(name + ".index").is_file():
        return path
    return None


def detect(path: Path) -> str:
    """A short format id for ``path``; raises InputError when it is not a model."""
    if path.is_dir():
        if (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file():
            return "savedmodel"
        if (path / "export.meta").is_file() or any(path.glob("export-?????-of-?????")):
            raise UnsupportedError(
                f"{path}: a TensorFlow 0.12 SessionBundle export (export.meta), not a SavedModel; "
                "convert it with a TensorFlow 1.x release first"
            )
        if (path / "checkpoint").is_file() or any(path.glob("*.index")):
            return "tf-checkpoint"
        raise InputError(
            f"{path}: a directory that is neither a SavedModel (no saved_model.pb) nor a TF checkpoint"
        )
    if _bundle_prefix(path) is not None:
        return "tf-checkpoint"
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if not path.is_file():
        raise InputError(f"{path}: not a regular file")
    head = _head(path)
    if _is_hdf5(path):
        return "hdf5"
    if head.startswith(ZIP_SIGNATURE) or zipfile.is_zipfile(path):
        return "zip"
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file")
    raise InputError(
        f"{path}: unknown format (not HDF5, a Keras archive, a SavedModel or a TF checkpoint)"
    )


def open_store(path: str | Path) -> Store:
    """Open a checkpoint of any supported format for reading."""
    p = Path(path)
    kind = detect(p)
    if kind == "hdf5":
        from weightcli.stores.hdf5 import H5Store

        return H5Store(p)
    if kind == "zip":
        from weightcli.stores.archive import ArchiveStore

        return ArchiveStore(p)
    from weightcli.stores.tfbundle import open_tf_store

    return open_tf_store(p, kind)
