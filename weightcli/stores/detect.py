"""Which container a path holds, decided from content, never from the name.

The one detector (``detect``), the one TF checkpoint prefix resolver
(``checkpoint_prefix``) and the one test of "is this file a model?" used when
searching directories (``looks_like_model``).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING

from weightcli.errors import InputError, UnsupportedError, WeightcliError
from weightcli.stores import capped
from weightcli.stores.remote import is_url

if TYPE_CHECKING:
    from weightcli.stores.registry import FormatSpec

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ZIP_SIGNATURE = b"PK\x03\x04"
TABLE_MAGIC = bytes.fromhex("57fb808b247547db")
ARCHIVE_MEMBERS = ("config.json", "model.weights.h5")


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
            text = capped.read_bytes(state, capped.STATE_FILE_BYTES, "checkpoint state file")
            for line in text.decode(errors="replace").splitlines():
                if line.startswith("model_checkpoint_path:"):
                    target = line.split(":", 1)[1].strip().strip('"')
                    return _prefix_here(path, target)
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


def state_file_target(folder: Path) -> str | None:
    """What a folder's ``checkpoint`` state file names as the newest checkpoint, as written."""
    state = folder / "checkpoint"
    if not state.is_file():
        return None
    text = capped.read_bytes(state, capped.STATE_FILE_BYTES, "checkpoint state file")
    for line in text.decode(errors="replace").splitlines():
        if line.startswith("model_checkpoint_path:"):
            return line.split(":", 1)[1].strip().strip('"')
    return None


def _prefix_here(folder: Path, named: str) -> Path:
    """The prefix a ``checkpoint`` state file names, inside ``folder``: a path from
    another machine (absolute, or leading out) reads the prefix of the same name here
    when there is one; a checkpoint elsewhere is never read."""
    candidate = Path(named) if os.path.isabs(named) else folder / named
    if not is_url(folder):
        top = folder.resolve()
        where = candidate.resolve()
        if where.parent != top and top not in where.parents:
            here = folder / Path(named).name
            if index_path(here).is_file():
                return here
            raise UnsupportedError(
                f"{folder}/checkpoint: names {named!r}, outside this folder, and no "
                f"{Path(named).name}.index is here: refused (name the prefix to read)"
            )
    return candidate


def detect(path: Path) -> FormatSpec:
    """The format ``path`` holds (its ``FormatSpec``); raises InputError when it is not
    a model. The probes of ``registry.FORMATS`` decide, in order."""
    try:
        return _detect(path)
    except OSError as exc:  # a name too long, a loop of links, ...
        raise InputError(f"{path}: cannot be read: {exc.strerror or exc}") from exc


def _detect(path: Path) -> FormatSpec:
    from weightcli.stores.registry import find

    folder = path.is_dir()
    if folder:
        if not is_url(path) and not os.access(path, os.R_OK | os.X_OK):
            raise InputError(f"{path}: a directory that cannot be read (permission denied)")
        if (
            not is_savedmodel(path)
            and not is_model_folder(path)
            and ((path / "export.meta").is_file() or any(path.glob("export-?????-of-?????")))
        ):
            raise UnsupportedError(
                f"{path}: a TensorFlow 0.12 SessionBundle export (export.meta), not a SavedModel; "
                "convert it with a TensorFlow 1.x release first"
            )
    spec = find(path)
    if spec is not None:
        return spec
    if folder:
        models = [p.name for p in sorted(path.iterdir())[:200] if looks_like_model(p)][:3]
        hint = (
            f"; it holds models ({', '.join(models)}, ...): give -r to search it" if models else ""
        )
        if (path / "variables.index").is_file():
            hint = (
                "; it holds variables.* files: its variables checkpoint reads as the prefix "
                f"{path}/variables"
            )
        raise InputError(
            f"{path}: a directory that is neither a SavedModel (no saved_model.pb) nor a TF "
            f"checkpoint{hint}"
        )
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if not path.is_file():
        raise InputError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file")
    from weightcli.stores.registry import FORMATS

    known = ", ".join(spec.name for spec in FORMATS)
    raise InputError(f"{path}: unknown format (none of the formats weightcli reads: {known})")


# -- the probes of registry.FORMATS (content first; cheap) ---------------------------------


def is_savedmodel(path: Path) -> bool:
    return path.is_dir() and (
        (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file()
    )


def is_tf_checkpoint(path: Path) -> bool:
    if path.is_dir():
        return (
            (path / "checkpoint").is_file()
            or any(path.glob("*.index"))
            # a SavedModel without its saved_model.pb
            or index_path(path / "variables" / "variables").is_file()
        )
    return checkpoint_prefix(path) is not None


def is_zip(path: Path) -> bool:
    """A zip archive. Before HDF5: an archive weightcli wrote holds its HDF5 weights
    member after a user block (the member's local header), so it is HDF5 too."""
    if not path.is_file():
        return False
    head = _head(path)
    with path.open("rb") as f:
        if head.startswith(ZIP_SIGNATURE) and (zipfile.is_zipfile(f) or not is_hdf5(path)):
            return True
        # a zip with something before its first member
        return not is_hdf5(path) and zipfile.is_zipfile(f)


def is_hdf5_file(path: Path) -> bool:
    return path.is_file() and is_hdf5(path)


def is_weights_map_file(path: Path) -> bool:
    return path.is_file() and is_weights_map(path)


def is_weights_map(path: Path) -> bool:
    """A Keras sharded weights map: a JSON object with a ``weight_map`` (read only when the
    file starts like JSON and is of a map's size)."""
    try:
        if path.stat().st_size > capped.JSON_BYTES:
            return False
        with path.open("rb") as f:
            if f.read(64).lstrip()[:1] != b"{":
                return False
        doc = capped.read_json(path, what="weights map")
    except (OSError, WeightcliError):
        return False
    # Keras maps each group to a list of shards (Hugging Face's index maps a tensor to one
    # file name: another format).
    wmap = doc.get("weight_map") if isinstance(doc, dict) else None
    return isinstance(wmap, dict) and all(isinstance(v, list) for v in wmap.values())


def is_model_folder(path: Path) -> bool:
    """An unzipped Keras model (``save_model(m, dir, zipped=False)``): an archive's members
    in a folder."""
    return path.is_dir() and all((path / m).is_file() for m in ARCHIVE_MEMBERS)


def names_model_folder(names: Collection[str]) -> bool:
    """Directory searches: file names of an unzipped Keras model."""
    return all(m in names for m in ARCHIVE_MEMBERS)


def is_keras_archive(zf: zipfile.ZipFile) -> bool:
    names = set(zf.namelist())
    return all(m in names for m in ARCHIVE_MEMBERS)


# Directory searches keep files whose names say "a model" whatever the content, so that
# an empty or damaged one is reported as a failure instead of being skipped.


def is_hdf5_named(path: Path) -> bool:
    """Directory searches: ``*.h5``/``*.hdf5`` by name, any other file by its signature."""
    return path.name.lower().endswith((".h5", ".hdf5")) or _head_is(path, HDF5_SIGNATURE)


def is_keras_archive_file(path: Path) -> bool:
    """Directory searches: ``*.keras`` by name, a zip holding a Keras archive's members."""
    if path.name.lower().endswith(".keras"):
        return True
    if not _head_is(path, ZIP_SIGNATURE, 4):
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            return is_keras_archive(zf)
    except (zipfile.BadZipFile, OSError):
        return False


def is_checkpoint_index(path: Path) -> bool:
    """Directory searches: a ``.index`` ending in the TF table magic."""
    if path.suffix != ".index":
        return False
    try:
        with path.open("rb") as f:
            f.seek(-8, os.SEEK_END)
            return f.read(8) == TABLE_MAGIC
    except OSError:
        return False


def is_weights_map_named(path: Path) -> bool:
    """Directory searches: a ``.json`` holding a Keras sharded weights map."""
    return path.name.lower().endswith(".json") and is_weights_map(path)


def _head_is(path: Path, signature: bytes, n: int = 8) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(n) == signature[:n]
    except OSError:
        return False


def looks_like_model(path: Path) -> bool:
    """For directory searches: is this file a checkpoint (or a damaged one, to be reported)?"""
    from weightcli.stores.registry import file_is_model

    return file_is_model(path) is not None
