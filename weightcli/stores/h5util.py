"""Careful HDF5 access: read-only, no links out of the file, no shape bombs.

Modelled on Keras's ``safe_get_h5_group``/``safe_get_h5_dataset``: a weights file
never needs external links, soft links, external or virtual datasets, or a
dataset whose declared size dwarfs the file, so each of those is refused.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, BinaryIO

import h5py
import numpy as np

from weightcli.dtypes import bfloat16, name_of
from weightcli.errors import CorruptError, UnsupportedError

# A dataset may declare at most this many bytes beyond what the file could hold.
SHAPE_BOMB_FACTOR = 64
SHAPE_BOMB_MIN = 64 * 1024 * 1024

HISTORY_ATTR = "weightcli_history"


def open_h5(src: str | os.PathLike[str] | BinaryIO, label: str) -> h5py.File:
    """Open an HDF5 file read-only, turning HDF5's errors into one clear line."""
    try:
        return h5py.File(src, "r")
    except OSError as exc:
        raise CorruptError(
            f"{label}: cannot be read as HDF5 (truncated or damaged?): {first_line(exc)}"
        ) from exc


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def file_size(f: h5py.File) -> int:
    try:
        return int(f.id.get_filesize())
    except Exception:  # pragma: no cover - fileobj without size
        return 0


def check_dataset(ds: h5py.Dataset, size_limit: int) -> None:
    """Refuse external, virtual and shape-bomb datasets."""
    dcpl = ds.id.get_create_plist()
    if dcpl.get_layout() == h5py.h5d.VIRTUAL:
        raise UnsupportedError(f"{ds.name}: virtual datasets are not supported in a weights file")
    if dcpl.get_external_count() > 0:
        raise UnsupportedError(f"{ds.name}: external datasets (data outside the file) are refused")
    declared = (
        int(np.prod(ds.shape, dtype=np.int64)) * ds.dtype.itemsize
        if ds.shape
        else ds.dtype.itemsize
    )
    if declared > SHAPE_BOMB_MIN and declared > size_limit * SHAPE_BOMB_FACTOR:
        raise UnsupportedError(
            f"{ds.name}: declares {declared} bytes in a file of {size_limit} bytes (shape bomb refused)"
        )


def walk(group: h5py.Group, size_limit: int) -> Iterator[tuple[str, h5py.Group | h5py.Dataset]]:
    """Every object below ``group`` (depth first, names sorted), refusing links out of the tree."""
    for name in group:
        link = group.get(name, getlink=True)
        full = f"{group.name.rstrip('/')}/{name}"
        if isinstance(link, h5py.ExternalLink):
            raise UnsupportedError(
                f"{full}: external links are refused (they point outside the file)"
            )
        if isinstance(link, h5py.SoftLink):
            raise UnsupportedError(f"{full}: soft links are refused in a weights file")
        obj = group[name]
        if isinstance(obj, h5py.Dataset):
            check_dataset(obj, size_limit)
            yield full, obj
        elif isinstance(obj, h5py.Group):
            yield full, obj
            yield from walk(obj, size_limit)


def index(f: h5py.File, size_limit: int) -> dict[str, h5py.Dataset]:
    """Every dataset of the file by absolute path, in one C-level pass (H5Lvisit, H5Ovisit).

    Soft and external links are refused; hard links only lead to the objects listed.
    """
    bad: list[tuple[str, str]] = []

    def on_link(name: bytes, info: Any) -> None:
        if info.type == h5py.h5l.TYPE_EXTERNAL:
            bad.append(
                (
                    name.decode("utf-8", "replace"),
                    "external links are refused (they point outside the file)",
                )
            )
        elif info.type == h5py.h5l.TYPE_SOFT:
            bad.append(
                (name.decode("utf-8", "replace"), "soft links are refused in a weights file")
            )

    f.id.links.visit(on_link, info=True)
    if bad:
        name, why = bad[0]
        raise UnsupportedError(f"/{name}: {why}")
    names: list[str] = []

    def on_object(name: bytes, info: Any) -> None:
        if info.type == h5py.h5o.TYPE_DATASET:
            names.append(name.decode("utf-8", "replace"))

    h5py.h5o.visit(f.id, on_object, info=True)
    out: dict[str, h5py.Dataset] = {}
    for name in names:
        ds = f["/" + name]
        check_dataset(ds, size_limit)
        out["/" + name] = ds
    return out


def datasets(group: h5py.Group, size_limit: int) -> Iterator[tuple[str, h5py.Dataset]]:
    for path, obj in walk(group, size_limit):
        if isinstance(obj, h5py.Dataset):
            yield path, obj


def get_dataset(f: h5py.File, path: str, size_limit: int) -> h5py.Dataset | None:
    """The dataset at ``path``, following only hard links; None when absent."""
    node: Any = f
    parts = [p for p in path.split("/") if p]
    for i, part in enumerate(parts):
        if not isinstance(node, h5py.Group) or part not in node:
            return None
        link = node.get(part, getlink=True)
        if isinstance(link, h5py.ExternalLink | h5py.SoftLink):
            raise UnsupportedError(
                f"/{'/'.join(parts[: i + 1])}: links are refused in a weights file"
            )
        node = node[part]
    if not isinstance(node, h5py.Dataset):
        return None
    check_dataset(node, size_limit)
    return node


def read_attr(obj: h5py.HLObject, name: str) -> Any:
    """An attribute, reassembling the ``name0``, ``name1``, ... chunks Keras splits large ones into."""
    if name in obj.attrs:
        return obj.attrs[name]
    if f"{name}0" not in obj.attrs:
        return None
    parts: list[Any] = []
    i = 0
    while f"{name}{i}" in obj.attrs:
        parts.extend(list(obj.attrs[f"{name}{i}"]))
        i += 1
    return parts


def dtype_name(ds: h5py.Dataset) -> str:
    """The dtype of a dataset, honouring Keras 3's ``dtype="bfloat16"`` marker."""
    marker = ds.attrs.get("dtype")
    if isinstance(marker, bytes):
        marker = marker.decode()
    if marker == "bfloat16":
        return "bfloat16"
    return name_of(ds.dtype)


def read_dataset(ds: h5py.Dataset, dtype: str, start: int | None, stop: int | None) -> np.ndarray:
    if ds.shape == ():
        arr = np.asarray(ds[()])
    elif start is None and stop is None:
        arr = ds[()]
    else:
        arr = ds[start:stop]
    if dtype == "bfloat16" and arr.dtype.name != "bfloat16":
        arr = arr.view(bfloat16()) if arr.dtype.itemsize == 2 else arr.astype(bfloat16())
    return np.asarray(arr)
