"""Which container a path holds, decided from content, never from the name.

The one detector (``detect``), the one TF checkpoint prefix resolver
(``checkpoint_prefix``) and the one test of "is this file a model?" used when
searching directories (``looks_like_model``).
"""

from __future__ import annotations

import json
import os
import zipfile
from enum import StrEnum
from pathlib import Path

from weightcli.errors import InputError, UnsupportedError
from weightcli.stores.remote import is_url

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ZIP_SIGNATURE = b"PK\x03\x04"
TABLE_MAGIC = bytes.fromhex("57fb808b247547db")
ARCHIVE_MEMBERS = ("config.json", "model.weights.h5")


class Container(StrEnum):
    """The container kinds, each opened by one store class."""

    HDF5 = "hdf5"
    ZIP = "zip"
    KERAS_FOLDER = "keras-folder"
    SHARDED = "sharded"
    SAVEDMODEL = "savedmodel"
    TF_CHECKPOINT = "tf-checkpoint"


def _head(path: Path, n: int = 8) -> bytes:
    try:
        with path.open("rb") as f:
            return f.read(n)
    except OSError as exc:
        raise InputError(f"{path}: cannot be read: {exc.strerror or exc}") from exc


def is_hdf5(path: Path) -> bool:
    """HDF5 allows a user block: the signature may sit at 0, 512, 1024, 2048, ..."""
    try:
        with path.open("rb") as f:
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


def index_path(prefix: Path) -> Path:
    """The ``.index`` file of a TF checkpoint prefix."""
    return prefix.with_name(prefix.name + ".index")


def checkpoint_prefix(path: Path) -> Path | None:
    """The TF checkpoint prefix ``path`` names: a prefix, its ``.index``, a data shard, or a
    folder (its ``checkpoint`` state file names the newest; else its only ``.index``).
    None when ``path`` names no checkpoint."""
    name = path.name
    if path.suffix == ".index" and path.is_file():
        return path.with_name(name[: -len(".index")])
    if ".data-" in name and path.is_file():
        return path.with_name(name.split(".data-")[0])
    if path.is_dir():
        state = path / "checkpoint"
        if state.is_file():
            for line in state.read_text(errors="replace").splitlines():
                if line.startswith("model_checkpoint_path:"):
                    target = line.split(":", 1)[1].strip().strip('"')
                    return Path(target) if os.path.isabs(target) else path / target
        indexes = sorted(path.glob("*.index"))
        if not indexes and index_path(path / "variables" / "variables").is_file():
            return path / "variables" / "variables"
        if len(indexes) > 1:
            raise InputError(
                f"{path}: holds {len(indexes)} checkpoints and no 'checkpoint' file: name one prefix"
            )
        return indexes[0].with_name(indexes[0].name[: -len(".index")]) if indexes else None
    if not path.exists() and index_path(path).is_file():
        return path
    return None


def detect(path: Path) -> Container:
    """The container ``path`` holds; raises InputError when it is not a model."""
    try:
        return _detect(path)
    except OSError as exc:  # a name too long, a loop of links, ...
        raise InputError(f"{path}: cannot be read: {exc.strerror or exc}") from exc


def _detect(path: Path) -> Container:
    if path.is_dir():
        if not is_url(path) and not os.access(path, os.R_OK | os.X_OK):
            raise InputError(f"{path}: a directory that cannot be read (permission denied)")
        if (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file():
            return Container.SAVEDMODEL
        if is_model_folder(path):
            return Container.KERAS_FOLDER
        if (path / "export.meta").is_file() or any(path.glob("export-?????-of-?????")):
            raise UnsupportedError(
                f"{path}: a TensorFlow 0.12 SessionBundle export (export.meta), not a SavedModel; "
                "convert it with a TensorFlow 1.x release first"
            )
        if (path / "checkpoint").is_file() or any(path.glob("*.index")):
            return Container.TF_CHECKPOINT
        if index_path(path / "variables" / "variables").is_file():
            return Container.TF_CHECKPOINT  # a SavedModel without its saved_model.pb
        raise InputError(
            f"{path}: a directory that is neither a SavedModel (no saved_model.pb) nor a TF checkpoint"
        )
    if checkpoint_prefix(path) is not None:
        return Container.TF_CHECKPOINT
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if not path.is_file():
        raise InputError(f"{path}: not a regular file")
    head = _head(path)
    if head.startswith(ZIP_SIGNATURE):
        with path.open("rb") as f:
            # A zip first: an archive weightcli wrote holds its HDF5 weights member
            # after a user block (the member's local header), so it is HDF5 too.
            if zipfile.is_zipfile(f) or not is_hdf5(path):
                return Container.ZIP
    if is_hdf5(path):
        return Container.HDF5
    with path.open("rb") as f:
        if zipfile.is_zipfile(f):  # a zip with something before its first member
            return Container.ZIP
    if is_weights_map(path):
        return Container.SHARDED
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file")
    raise InputError(
        f"{path}: unknown format (not HDF5, a Keras archive, a SavedModel or a TF checkpoint)"
    )


def is_weights_map(path: Path) -> bool:
    """A Keras sharded weights map: a JSON object with a ``weight_map`` (read only when the
    file starts like JSON and is of a map's size)."""
    try:
        if path.stat().st_size > 64 << 20:
            return False
        with path.open("rb") as f:
            if f.read(64).lstrip()[:1] != b"{":
                return False
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(doc, dict) and isinstance(doc.get("weight_map"), dict)


def is_model_folder(path: Path) -> bool:
    """An unzipped Keras model (``save_model(m, dir, zipped=False)``): an archive's members
    in a folder."""
    return all((path / m).is_file() for m in ARCHIVE_MEMBERS)


def is_keras_archive(zf: zipfile.ZipFile) -> bool:
    names = set(zf.namelist())
    return all(m in names for m in ARCHIVE_MEMBERS)


# Names that say "a model" whatever the content: kept by directory searches, so that an
# empty or damaged one is reported as a failure instead of being skipped.
MODEL_SUFFIXES = (".h5", ".hdf5", ".keras")


def looks_like_model(path: Path) -> bool:
    """For directory searches: is this file a checkpoint (or a damaged one, to be reported)?

    HDF5 by its signature; a zip holding a Keras archive's members; a ``.index`` ending
    in the table magic; any file named ``*.h5``, ``*.hdf5`` or ``*.keras``.
    """
    if path.name.lower().endswith(MODEL_SUFFIXES):
        return True
    if path.name.lower().endswith(".json"):
        return is_weights_map(path)
    try:
        with path.open("rb") as f:
            head = f.read(8)
            if head == HDF5_SIGNATURE:
                return True
            if head.startswith(ZIP_SIGNATURE):
                try:
                    with zipfile.ZipFile(f) as zf:
                        return is_keras_archive(zf)
                except (zipfile.BadZipFile, OSError):
                    return False
            if path.suffix == ".index":
                f.seek(-8, os.SEEK_END)
                return f.read(8) == TABLE_MAGIC
    except OSError:
        return False
    return False
