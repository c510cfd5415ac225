"""Every checkpoint format weightcli knows, in one list: ``FORMATS``.

Adding a format is one module (its ``Store`` and ``Patcher``, and a content probe) plus
one ``FormatSpec`` line below. Everything that asks "which format is this?" iterates
this list: ``detect``/``open_store`` (the first probe that says yes), the output name
check (``allowed_suffixes``), directory searches (``folder_is_model``,
``file_is_model``, ``parts_of_models``). Store classes and probes are named as
``"module:attribute"`` and imported only when used, so detecting an HDF5 file never
imports the TensorFlow protobufs.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weightcli.stores.base import Format, Store, fingerprint
from weightcli.stores.remote import is_url


def _resolve(ref: str | Callable[..., Any]) -> Any:
    if callable(ref):
        return ref
    module, attr = ref.split(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class FormatSpec:
    """One container layout: how it is recognised, opened, written and found."""

    name: str  # the container's id (``detect``'s answer)
    # Does this path hold the container? By content; called in FORMATS order.
    probe: str | Callable[[Path], bool]
    store: str  # "module:Class": ``Class(path)`` opens it
    # The format ids its store reports, each with the output names it may be written
    # under (empty: any name, e.g. a folder).
    writes: Mapping[str, tuple[str, ...]]
    # Directory searches: a folder whose file names say it is one model of this kind...
    folder_model: str | Callable[[Collection[str]], bool] | None = None
    # ... a file that is a model of this kind (by name or content) ...
    file_model: str | Callable[[Path], bool] | None = None
    # ... the model path a file names (a checkpoint's ``.index`` names its prefix) ...
    model_path: Callable[[Path], Path] = field(default=lambda p: p)
    # ... and the files in a folder that belong to a model of this kind (never models).
    parts: str | Callable[[Path, Collection[str]], set[str]] | None = None
    # The files a checkpoint of this kind is made of, beyond its own path (digests,
    # staging): a weights map's shards.
    files: str | Callable[[Path], list[Path]] | None = None
    # A writer of new files of this format (``export --to NAME``): "module:Class", its
    # ``Class(out, overwrite)`` taking tensors with ``add`` and ending with ``commit``.
    create: str | None = None

    def holds(self, path: Path) -> bool:
        probe: Callable[[Path], bool] = _resolve(self.probe)
        return probe(path)

    def open(self, path: Path) -> Store:
        cls = _resolve(self.store)
        store: Store = cls(path)
        if not is_url(path):
            with contextlib.suppress(OSError):
                store.opened_as = fingerprint(store._lock_file())
        return store


def _prefix_of(index: Path) -> Path:
    name = index.name
    return index.with_name(name[: -len(".index")]) if name.endswith(".index") else index


DETECT = "weightcli.stores.detect"

# In detection order: folders first, then a zip before HDF5 (a .keras that weightcli
# wrote holds its HDF5 weights after a user block, so it is HDF5 too).
FORMATS: tuple[FormatSpec, ...] = (
    FormatSpec(
        "savedmodel",
        f"{DETECT}:is_savedmodel",
        "weightcli.stores.tfbundle:SavedModelStore",
        {Format.SAVEDMODEL: ()},
        folder_model=lambda names: "saved_model.pb" in names,
    ),
    FormatSpec(
        "keras-folder",
        f"{DETECT}:is_model_folder",
        "weightcli.stores.archive:FolderStore",
        {Format.KERAS_FOLDER: ()},
        folder_model=f"{DETECT}:names_model_folder",
    ),
    FormatSpec(
        "tf-checkpoint",
        f"{DETECT}:is_tf_checkpoint",
        "weightcli.stores.tfbundle:CheckpointStore",
        {Format.TF_CHECKPOINT: ()},
        file_model=f"{DETECT}:is_checkpoint_index",
        model_path=_prefix_of,
        parts=lambda folder, names: {n for n in names if ".data-" in n or n == "checkpoint"},
    ),
    FormatSpec(
        "zip",
        f"{DETECT}:is_zip",
        "weightcli.stores.archive:ArchiveStore",
        {Format.KERAS_ARCHIVE: (".keras",)},
        file_model=f"{DETECT}:is_keras_archive_file",
    ),
    FormatSpec(
        "hdf5",
        f"{DETECT}:is_hdf5_file",
        "weightcli.stores.hdf5:H5Store",
        {
            Format.KERAS_H5: (".h5", ".hdf5"),
            Format.KERAS_H5_WEIGHTS: (".h5", ".hdf5"),
            Format.KERAS3_WEIGHTS: (".weights.h5",),
            Format.HDF5: (".h5", ".hdf5", ".weights.h5"),
        },
        file_model=f"{DETECT}:is_hdf5_named",
    ),
    FormatSpec(
        "sharded",
        f"{DETECT}:is_weights_map_file",
        "weightcli.stores.sharded:ShardedStore",
        {Format.KERAS3_SHARDED: (".weights.json",)},
        file_model=f"{DETECT}:is_weights_map_named",
        parts="weightcli.stores.sharded:shards_named_in",
        files="weightcli.stores.sharded:files_of",
    ),
    FormatSpec(
        "safetensors",
        "weightcli.stores.safetensors:probe",
        "weightcli.stores.safetensors:SafetensorsStore",
        {"safetensors": (".safetensors",)},
        file_model="weightcli.stores.safetensors:named",
        create="weightcli.stores.safetensors:NewFile",
    ),
    FormatSpec(
        "safetensors-index",
        "weightcli.stores.safetensors:is_index",
        "weightcli.stores.safetensors:IndexStore",
        {"safetensors-index": (".safetensors.index.json",)},
        file_model="weightcli.stores.safetensors:index_named",
        parts="weightcli.stores.safetensors:index_parts",
        files="weightcli.stores.safetensors:index_files",
    ),
    FormatSpec(
        "tflite",
        "weightcli.stores.tflite:probe",
        "weightcli.stores.tflite:TFLiteStore",
        {"tflite": (".tflite",)},
        file_model="weightcli.stores.tflite:named",
    ),
)


def find(path: Path) -> FormatSpec | None:
    """The first format whose probe holds ``path`` (None: none does)."""
    return next((spec for spec in FORMATS if spec.holds(path)), None)


def by_name(name: str) -> FormatSpec:
    return next(spec for spec in FORMATS if spec.name == name)


def allowed_suffixes(fmt: str) -> tuple[str, ...] | None:
    """The output names a format id may be written under (None: an unknown id)."""
    for spec in FORMATS:
        if fmt in spec.writes:
            return spec.writes[fmt]
    return None


def known_suffixes() -> list[str]:
    """Every output suffix some format is written under, longest first."""
    found = {sfx for spec in FORMATS for sfxs in spec.writes.values() for sfx in sfxs}
    return sorted(found, key=len, reverse=True)


def folder_is_model(names: Collection[str]) -> bool:
    """Directory searches: do these file names make their folder one model?"""
    return any(
        spec.folder_model is not None and _resolve(spec.folder_model)(names) for spec in FORMATS
    )


def file_is_model(path: Path) -> Path | None:
    """Directory searches: the model this file is (or names), or None."""
    for spec in FORMATS:
        if spec.file_model is not None and _resolve(spec.file_model)(path):
            return spec.model_path(path)
    return None


def files_of(path: Path) -> list[Path]:
    """The files of the checkpoint in the file ``path``: itself, and any it names (a
    weights map's shards), for digests."""
    for spec in FORMATS:
        if spec.files is not None and spec.holds(path):
            found: list[Path] = _resolve(spec.files)(path)
            return found
    return [path]


def parts_of_models(folder: Path, names: Collection[str]) -> set[str]:
    """Directory searches: the files in ``folder`` that belong to a model (data shards,
    state files, a weights map's shards): never models themselves."""
    out: set[str] = set()
    for spec in FORMATS:
        if spec.parts is not None:
            out |= _resolve(spec.parts)(folder, names)
    return out


def export_targets() -> dict[str, str]:
    """The formats ``export`` writes: name -> the output suffix."""
    return {
        spec.name: next(iter(spec.writes.values()))[0]
        for spec in FORMATS
        if spec.create is not None and spec.writes
    }


def new_file(name: str, out: Path, overwrite: bool) -> Any:
    """A writer of a new file of format ``name`` (see ``FormatSpec.create``)."""
    spec = by_name(name)
    assert spec.create is not None, f"{name}: no writer of new files"
    return _resolve(spec.create)(out, overwrite)
