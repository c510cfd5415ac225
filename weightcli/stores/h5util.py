"""Careful HDF5 access: read-only, no links out of the file, no shape bombs.

Modelled on Keras's ``safe_get_h5_group``/``safe_get_h5_dataset``: a weights file
never needs external links, soft links, external or virtual datasets, or a
dataset whose declared size dwarfs the file, so each of those is refused.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import h5py
import numpy as np

from weightcli.dtypes import bfloat16, name_of
from weightcli.errors import CorruptError, UnsupportedError
from weightcli.stores.base import Block
from weightcli.stores.remote import RangeFile, is_url, open_range

# A dataset may declare at most this many bytes beyond what the file could hold.
SHAPE_BOMB_FACTOR = 64
SHAPE_BOMB_MIN = 64 * 1024 * 1024

HISTORY_ATTR = "weightcli_history"


def open_h5(src: str | os.PathLike[str] | BinaryIO | RangeFile, label: str) -> h5py.File:
    """Open an HDF5 file read-only, turning HDF5's errors into one clear line. A path in
    object storage is read by byte range."""
    if isinstance(src, Path) and is_url(src):
        src = open_range(src)
    try:
        f = h5py.File(src, "r")
    except OSError as exc:
        raise CorruptError(
            f"{label}: cannot be read as HDF5 (truncated or damaged?): {first_line(exc)}"
        ) from exc
    bound_metadata_cache(f)
    return f


# HDF5's metadata cache grows to 32 MiB per file by default, and a file of tens of
# thousands of objects costs hundreds of MiB besides while it is walked; weightcli reads
# each object's metadata once, so a small cache loses nothing (measured: a 60,000-tensor
# file indexed in 144 MiB instead of 314, and faster).
METADATA_CACHE_BYTES = 8 << 20


def bound_metadata_cache(f: h5py.File) -> None:
    try:
        config = f.id.get_mdc_config()
        config.set_initial_size = True
        config.initial_size = 2 << 20
        config.min_size = 1 << 20
        config.max_size = METADATA_CACHE_BYTES
        f.id.set_mdc_config(config)
    except (AttributeError, ValueError, RuntimeError):  # an h5py without it: its defaults
        pass


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def file_size(f: h5py.File) -> int:
    try:
        return int(f.id.get_filesize())
    except Exception:  # pragma: no cover - fileobj without size
        return 0


@dataclass(eq=False)
class Dset:
    """One dataset as the stores need it, read once when the file is indexed.

    Built from HDF5's low-level handles (h5py ``Dataset`` objects cost far more on
    files with hundreds of tensors); ``dataset`` makes one when it is needed.
    """

    name: str
    fid: Any  # the file's h5py.h5f.FileID: the dataset is opened from it when read
    shape: tuple[int, ...]
    dtype: np.dtype
    marker: str | None  # Keras 3's ``dtype`` attribute ("bfloat16" for bfloat16 data)
    offset: int | None  # contiguous, unfiltered, allocated data: where its bytes start
    _dataset: h5py.Dataset | None = None

    @property
    def id(self) -> Any:
        """The dataset's h5py.h5d.DatasetID, opened on first use: a file of many
        thousands of tensors does not hold them all open (HDF5 keeps metadata per open
        object: about 16 KiB each)."""
        return self.dataset.id

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def dtype_name(self) -> str:
        """The dtype, honouring Keras 3's ``dtype="bfloat16"`` marker."""
        return "bfloat16" if self.marker == "bfloat16" else name_of(self.dtype)

    @property
    def dataset(self) -> h5py.Dataset:
        if self._dataset is None:
            self._dataset = h5py.Dataset(h5py.h5d.open(self.fid, self.name.encode()))
        return self._dataset

    def release(self) -> None:
        """Close the dataset (reopened when read again)."""
        self._dataset = None


def describe(dsid: Any, name: str, size_limit: int, fid: Any = None) -> Dset:
    """A :class:`Dset` for an open dataset, refusing external, virtual and shape-bomb ones."""
    dcpl = dsid.get_create_plist()
    layout = dcpl.get_layout()
    if layout == h5py.h5d.VIRTUAL:
        raise UnsupportedError(f"{name}: virtual datasets are not supported in a weights file")
    if dcpl.get_external_count() > 0:
        raise UnsupportedError(f"{name}: external datasets (data outside the file) are refused")
    shape = tuple(int(d) for d in dsid.shape)
    dtype = dsid.dtype
    declared = math.prod(shape) * dtype.itemsize
    if declared > SHAPE_BOMB_MIN and declared > size_limit * SHAPE_BOMB_FACTOR:
        raise UnsupportedError(
            f"{name}: declares {declared} bytes in a file of {size_limit} bytes (shape bomb refused)"
        )
    marker = None
    if h5py.h5a.exists(dsid, b"dtype"):
        raw = h5py.AttributeManager(h5py.Dataset(dsid)).get("dtype")
        marker = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    offset = None
    if layout == h5py.h5d.CONTIGUOUS and dcpl.get_nfilters() == 0:
        offset = dsid.get_offset()
    return Dset(name, fid, shape, dtype, marker, None if offset is None else int(offset))


def index(f: h5py.File, size_limit: int, groups: set[str] | None = None) -> dict[str, Dset]:
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
        elif groups is not None and info.type == h5py.h5o.TYPE_GROUP:
            groups.add("/" + name.decode("utf-8", "replace"))

    h5py.h5o.visit(f.id, on_object, info=True)
    out: dict[str, Dset] = {}
    for name in names:
        path = "/" + name
        dsid = h5py.h5d.open(f.id, path.encode())
        if dsid.get_space().get_simple_extent_type() == h5py.h5s.NULL:
            continue  # a NULL dataspace holds no values: not a tensor
        out[path] = describe(dsid, path, size_limit, f.id)
        dsid.close()
    return out


# Attributes (model configs, name lists, histories) are read up to this size.
MAX_ATTR_BYTES = 64 << 20


def read_attr(obj: h5py.HLObject, name: str) -> Any:
    """An attribute, reassembling the ``name0``, ``name1``, ... chunks Keras splits large ones into."""
    value = _attr(obj, name)
    if value is not None or not h5py.h5a.exists(obj.id, f"{name}0".encode()):
        return value
    parts: list[Any] = []
    i = 0
    while (part := _attr(obj, f"{name}{i}")) is not None:
        parts.extend(list(part))
        i += 1
    return parts


def _attr(obj: h5py.HLObject, name: str) -> Any:
    """One attribute as h5py's ``attrs[name]`` gives it, None when absent. Numbers and
    strings (fixed-size, or variable-length as Keras writes layer and weight names) are
    read through the low-level API, far cheaper per call; anything else through h5py."""
    key = name.encode()
    if not h5py.h5a.exists(obj.id, key):
        return None
    aid = h5py.h5a.open(obj.id, key)
    try:
        stored = aid.get_storage_size()
    except RuntimeError:  # HDF5 reports an empty attribute as an error
        stored = 0
    if stored > MAX_ATTR_BYTES:
        raise CorruptError(
            f"{obj.file.filename}: attribute {name} of {obj.name} is {stored} bytes "
            f"(limit {MAX_ATTR_BYTES >> 20} MiB)"
        )
    dtype = aid.dtype
    vlen = h5py.check_string_dtype(dtype) if dtype.kind == "O" else None
    simple = dtype.kind in "Sfiub" or (vlen is not None and vlen.length is None)
    if not simple or aid.get_space().get_simple_extent_type() == h5py.h5s.NULL:
        return obj.attrs[name]
    arr = np.empty(aid.shape, dtype=dtype)
    if vlen is None:
        aid.read(arr)
    else:
        aid.read(arr, mtype=h5py.h5t.py_create(dtype))
        # As h5py does: variable-length strings come back as str.
        text = [b.decode("utf-8", "surrogateescape") for b in arr.flat]
        arr = np.array(text, dtype=dtype).reshape(arr.shape)
    return arr[()] if arr.ndim == 0 else arr


def read_dataset(ds: h5py.Dataset, dtype: str, block: Block | None) -> np.ndarray:
    """A block of a dataset (all of it by default), read by HDF5."""
    arr = ds[()] if block is None or not ds.shape else ds[block.index]
    if dtype == "bfloat16" and arr.dtype.name != "bfloat16":
        arr = arr.view(bfloat16()) if arr.dtype.itemsize == 2 else arr.astype(bfloat16())
    return np.asarray(arr)


def read_direct(
    fd: int | RangeFile, base: int, size: int, ds: Dset, block: Block | None
) -> np.ndarray | None:
    """A block of a contiguous dataset (all of it by default), read straight from the file
    with ``pread`` (the HDF5 file is bytes [base, base + size) of ``fd``). None when HDF5
    must do the reading: chunked or filtered data, no data written yet, or a type needing
    conversion."""
    bf16 = ds.marker == "bfloat16" and ds.dtype.itemsize == 2
    if ds.offset is None or not (bf16 or (ds.dtype.kind in "fiub" and ds.dtype.isnative)):
        return None
    first, shape = (0, ds.shape) if block is None else (block.first, block.shape)
    arr = np.empty(shape, dtype=np.uint16 if bf16 else ds.dtype)
    view = arr.reshape(-1).view(np.uint8).data
    at = ds.offset + first * ds.dtype.itemsize
    if at + len(view) > size:
        raise OSError(f"file ends at byte {size}: data missing")
    if not isinstance(fd, int):  # in object storage: one ranged fetch
        view[:] = fd.pread(len(view), base + at)
        return arr.view(bfloat16()) if bf16 else arr
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], base + at + done)
        if n == 0:
            raise OSError(f"file ends at byte {at + done}: data missing")
        done += n
    return arr.view(bfloat16()) if bf16 else arr


def write_streamed(
    group: h5py.Group,
    name: str,
    dtype: Any,
    shape: tuple[int, ...],
    blocks: Iterator[tuple[Block, np.ndarray]],
) -> None:
    """A new dataset filled block by block (each block at its place in the tensor): a
    tensor copied without ever being whole in memory."""
    ds = group.create_dataset(name, shape=shape, dtype=dtype)
    for block, data in blocks:
        if ds.shape == ():
            ds[()] = data
        else:
            ds[block.index] = data
