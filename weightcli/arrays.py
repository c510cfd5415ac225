"""Arrays a user hands in (``.npy``, ``.npz``: ``set``'s values, ``verify --input``,
calibration data): each header is read and checked before any data is.

Refused, with one line: a path that is not a regular file (a FIFO would block the read
forever), a header that claims more bytes than the file (or zip member) holds, object
arrays (pickles), zip members compressed as numpy never writes them or inflating past
a ratio, and anything over ``MAX_ARRAY_BYTES``.
"""

from __future__ import annotations

import math
import os
import stat
import zipfile
from pathlib import Path
from typing import IO, Any

import numpy as np

from weightcli.errors import InputError, UnsupportedError

# One array read into memory (or mapped) at the most.
MAX_ARRAY_BYTES = 16 << 30
# A deflated .npz member may inflate this many times its compressed size (zeros: ~1000x).
MAX_INFLATE_RATIO = 1100


def regular_file(path: Path, what: str = "file") -> int:
    """The size of ``path`` when it is a regular file (links followed); otherwise one
    clear error (missing, a folder, a FIFO, a device or a socket), before anything
    opens it."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputError(f"{path}: no such {what}") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = (
            "a folder"
            if stat.S_ISDIR(st.st_mode)
            else "not a regular file (a FIFO, device or socket)"
        )
        raise InputError(f"{path}: {kind}: refused")
    return st.st_size


def _header(fp: IO[bytes], label: str) -> tuple[tuple[int, ...], np.dtype[Any], bool]:
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(fp)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = fmt.read_array_header_2_0(fp)
        else:
            raise ValueError(f"unknown format version {version}")
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise InputError(f"{label}: not a .npy array: {exc}") from None
    if dtype.hasobject:
        raise UnsupportedError(f"{label}: holds Python objects (a pickle): refused")
    return tuple(shape), dtype, fortran


def _claimed(label: str, shape: tuple[int, ...], dtype: np.dtype[Any], holds: int) -> int:
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > holds:
        raise InputError(
            f"{label}: its header claims shape {shape} of {dtype} ({nbytes} bytes) but "
            f"it holds {holds}: refused"
        )
    if nbytes > MAX_ARRAY_BYTES:
        raise UnsupportedError(
            f"{label}: {nbytes} bytes, over the limit of {MAX_ARRAY_BYTES >> 30} GiB"
        )
    return nbytes


def _local(path: Path) -> Path:
    from weightcli.stores.remote import as_local

    return as_local(path)  # in object storage: downloaded once (a temporary)


def load_npy(path: Path, mmap: bool = True) -> np.ndarray:
    """A ``.npy`` file, checked first, then mapped (``mmap``) or read."""
    path = _local(path)
    size = regular_file(path)
    with open(path, "rb") as fp:
        shape, dtype, _ = _header(fp, str(path))
        _claimed(str(path), shape, dtype, size - fp.tell())
    try:
        array: np.ndarray = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read as .npy: {exc}") from exc
    return array


class Npz:
    """The named arrays of a ``.npz`` file; each member's header checked before it is read."""

    def __init__(self, path: Path) -> None:
        path = _local(path)
        regular_file(path)
        self.path = path
        try:
            self._zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise InputError(f"{path}: cannot read as .npz: {exc}") from None
        members = [i for i in self._zip.infolist() if i.filename.endswith(".npy")]
        names = [i.filename[: -len(".npy")] for i in members]
        if len(set(names)) != len(names):
            self.close()
            raise InputError(f"{path}: two arrays of one name: refused")
        self._members = dict(zip(names, members, strict=True))

    @property
    def files(self) -> list[str]:
        return list(self._members)

    def _open(self, key: str) -> tuple[IO[bytes], tuple[int, ...], np.dtype[Any], bool]:
        info = self._members[key]
        label = f"{self.path}[{key}]"
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise UnsupportedError(f"{label}: zip method {info.compress_type}: refused")
        if info.file_size > MAX_INFLATE_RATIO * info.compress_size + (1 << 20):
            raise InputError(
                f"{label}: inflates from {info.compress_size} to {info.file_size} bytes: refused"
            )
        fp = self._zip.open(info)
        try:
            shape, dtype, fortran = _header(fp, label)
            _claimed(label, shape, dtype, info.file_size)
        except BaseException:
            fp.close()
            raise
        return fp, shape, dtype, fortran

    def header(self, key: str) -> tuple[tuple[int, ...], np.dtype[Any]]:
        """An array's shape and dtype, its data unread."""
        fp, shape, dtype, _ = self._open(key)
        fp.close()
        return shape, dtype

    def __getitem__(self, key: str) -> np.ndarray:
        fp, shape, dtype, fortran = self._open(key)
        label = f"{self.path}[{key}]"
        try:
            with fp:
                array = np.empty(shape, dtype, order="F" if fortran else "C")
                contiguous = array.T if fortran else array  # C-contiguous either way
                view = memoryview(contiguous).cast("B")  # type: ignore[arg-type]
                pos = 0
                while pos < len(view):
                    n = fp.readinto(view[pos : pos + (1 << 20)])  # type: ignore[attr-defined]
                    if not n:
                        raise InputError(f"{label}: ends before its data does")
                    pos += n
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise InputError(f"{label}: damaged: {exc}") from None
        return array

    def close(self) -> None:
        self._zip.close()

    def __enter__(self) -> Npz:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_any(path: Path) -> np.ndarray | Npz:
    """A ``.npy`` array, or a ``.npz`` of named arrays (by content), checked first."""
    path = _local(path)
    regular_file(path)
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic.startswith(b"PK"):
        return Npz(path)
    return load_npy(path, mmap=False)
