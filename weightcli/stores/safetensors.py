"""safetensors (``.safetensors``): Hugging Face's tensor file, read and patched in place.

The layout (https://huggingface.co/docs/safetensors, and the ``safetensors`` crate's
``tensor.rs``, which this module's checks follow): 8 bytes, a little-endian u64 N; N
bytes of UTF-8 JSON, an object mapping each tensor name to ``{"dtype", "shape",
"data_offsets": [begin, end]}`` plus an optional ``"__metadata__"`` object of strings;
then the data section, every tensor's bytes little-endian in C order at ``begin..end``
(relative to the section's start). The crate refuses a header over 100 MB, and a data
section with holes, overlaps or bytes no tensor names; so does this module, before a
byte of data is read, and it refuses a name given twice (JSON readers disagree on
which counts).

Patching writes the changed tensors' bytes at their offsets in a copy; every other byte
of the data section is copied by the kernel (``copy_file_range``). The header is written
again with weightcli's history in ``__metadata__`` (strings only: the history is one
JSON string), its keys in their order, padded with spaces to keep the data section
8-byte aligned as the crate's writer does. A dtype change (``quantize --dtype``) moves
the tensors after the retyped ones, each copied whole by the kernel.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from weightcli.dtypes import itemsize, to_numpy
from weightcli.errors import CorruptError, InputError, OutputError, literal
from weightcli.stores import capped, temps
from weightcli.stores.base import Block, Patcher, Store, StoreMeta, clean_history
from weightcli.stores.output import publish, temp_beside
from weightcli.stores.rangecopy import copy_range
from weightcli.stores.remote import is_url, open_range
from weightcli.tensor import TensorInfo

FORMAT = "safetensors"
SUFFIX = ".safetensors"
LABEL = "safetensors (.safetensors)"
# The crate's own limit (``MAX_HEADER_SIZE``).
MAX_HEADER = 100_000_000
METADATA = "__metadata__"
HISTORY_KEY = "weightcli_history"
ALIGN = 8
# Axes a tensor may have (the crate has none; numpy's own limit is 64).
MAX_NDIM = 32
# A patched copy keeps room for its header to grow when its data section is this large.
ROOM_FROM_BYTES = 64 << 20

# safetensors dtype -> weightcli's name (``weightcli.dtypes``).
DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U64": "uint64",
    "U32": "uint32",
    "U16": "uint16",
    "U8": "uint8",
    "BOOL": "bool",
}
CODES = {name: code for code, name in DTYPES.items()}


def probe(path: Path) -> bool:
    """A file that starts as safetensors does: a header length, then ``{`` (the crate's
    writer begins its JSON so). A length past the end or over the limit is the store's
    to refuse, with its reason."""
    if not path.is_file():
        return False
    try:
        with path.open("rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] >= 2


def named(path: Path) -> bool:
    """Directory searches: a file named as one (the content decides when it is opened)."""
    return path.name.endswith(SUFFIX)


@dataclass(frozen=True)
class Entry:
    """One tensor as the header places it (offsets relative to the data section)."""

    name: str
    code: str  # the safetensors dtype (F32, ...)
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def dtype(self) -> str:
        return DTYPES[self.code]


def _entry(label: str, name: str, spec: Any) -> Entry:
    bad = f"{label}: tensor {literal(repr(name))}"
    if not isinstance(spec, dict) or set(spec) - {"dtype", "shape", "data_offsets"}:
        raise CorruptError(f"{bad}: not an object of dtype, shape and data_offsets")
    code, shape, offsets = spec.get("dtype"), spec.get("shape"), spec.get("data_offsets")
    if code not in DTYPES:
        raise CorruptError(f"{bad}: unknown dtype {literal(repr(code))}")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_NDIM
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise CorruptError(f"{bad}: shape {literal(json.dumps(shape)[:80])} is not a list of sizes")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise CorruptError(
            f"{bad}: data_offsets {literal(json.dumps(offsets)[:80])} is not [begin, end]"
        )
    need = math.prod(shape) * itemsize(DTYPES[code])  # Python ints: no overflow
    if offsets[1] - offsets[0] != need:
        raise CorruptError(
            f"{bad}: {offsets[1] - offsets[0]} bytes for a {code} tensor of shape "
            f"{tuple(shape)} ({need} bytes)"
        )
    return Entry(name, code, tuple(shape), offsets[0], offsets[1])


@dataclass(frozen=True)
class Header:
    """A checked header: its tensors in data order, its metadata, where data starts."""

    entries: tuple[Entry, ...]
    metadata: dict[str, str]
    doc: dict[str, Any]  # as stored, keys in their order
    data_start: int
    data_size: int


def read_header(raw: Any, size: int, label: str) -> Header:
    """The header of a file of ``size`` bytes read through ``raw.pread(n, at)``."""
    head = raw.pread(8, 0)
    if len(head) < 8:
        raise CorruptError(f"{label}: {len(head)} bytes: too short for a safetensors file")
    (n,) = struct.unpack("<Q", head)
    if n > MAX_HEADER:
        raise CorruptError(f"{label}: header of {n} bytes, over safetensors' limit of {MAX_HEADER}")
    if 8 + n > size:
        raise CorruptError(f"{label}: header of {n} bytes runs past the end ({size} bytes)")
    text = raw.pread(n, 8)
    if len(text) != n:
        raise CorruptError(f"{label}: truncated header")
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError:
        raise CorruptError(f"{label}: header is not UTF-8 text") from None
    doc = capped.parse_json(decoded, f"{label}: header", unique=True)
    if not isinstance(doc, dict):
        raise CorruptError(f"{label}: header is not a JSON object")
    metadata = doc.get(METADATA, {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CorruptError(f"{label}: {METADATA} is not an object of strings")
    entries = sorted(
        (_entry(label, k, v) for k, v in doc.items() if k != METADATA),
        key=lambda e: (e.begin, e.end),
    )
    data_size = size - 8 - n
    at = 0
    for e in entries:  # the crate's rule: the tensors cover the data section exactly
        if e.begin != at:
            what = (
                "overlaps the tensor before it"
                if e.begin < at
                else f"leaves bytes {at}..{e.begin} unnamed"
            )
            raise CorruptError(f"{label}: tensor {literal(repr(e.name))} {what}")
        at = e.end
    if at != data_size:
        raise CorruptError(
            f"{label}: the tensors hold {at} bytes of data, the file {data_size}"
            + (" (truncated?)" if at > data_size else "")
        )
    return Header(tuple(entries), dict(metadata), doc, 8 + n, data_size)


def _split_name(name: str) -> tuple[str | None, str]:
    """``model.layers.0.weight`` -> (``model.layers.0``, ``weight``); Keras-style
    ``dense/kernel`` -> (``dense``, ``kernel``)."""
    cut = max(name.rfind("."), name.rfind("/"))
    if cut <= 0:
        return None, name
    return name[:cut], name[cut + 1 :]


class _LocalFile:
    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY)
        self.size = os.fstat(self.fd).st_size

    def pread(self, n: int, at: int) -> bytes:
        return os.pread(self.fd, n, at)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class SafetensorsStore(Store):
    """One ``.safetensors`` file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._raw: Any = open_range(path) if is_url(path) else _LocalFile(path)
        except OSError as exc:
            raise InputError(f"{path}: cannot be read: {exc.strerror or exc}") from exc
        try:
            self.header = read_header(self._raw, self._raw.size, str(path))
        except BaseException:
            self.close()
            raise
        meta = self.header.metadata
        history: list[dict[str, Any]] = []
        if HISTORY_KEY in meta:
            history = clean_history(capped.parse_json(meta[HISTORY_KEY], f"{path}: history"))
        self.meta = StoreMeta(
            format=FORMAT,
            format_label=LABEL,
            history=history,
            extra={k: v for k, v in meta.items() if k != HISTORY_KEY},
        )
        self._entries = {e.name: e for e in self.header.entries}
        self._infos = [
            TensorInfo(
                name=e.name,
                path=e.name,
                dtype=e.dtype,
                shape=e.shape,
                kind=_split_name(e.name)[1],
                layer=_split_name(e.name)[0],
            )
            for e in self.header.entries
        ]

    def tensors(self) -> list[TensorInfo]:
        return list(self._infos)

    def read(self, info: TensorInfo, block: Block | None = None) -> np.ndarray:
        entry = self._entries[info.path]
        dtype = to_numpy(entry.dtype)
        first, shape = (block.first, block.shape) if block is not None else (0, entry.shape)
        count = math.prod(shape)
        at = self.header.data_start + entry.begin + first * dtype.itemsize
        data = self._raw.pread(count * dtype.itemsize, at)
        if len(data) != count * dtype.itemsize:
            raise CorruptError(f"{self.path}: {info.name}: file ends inside the tensor (truncated)")
        # Little-endian on disk, as numpy's native order here (and copied, writable).
        return np.frombuffer(data, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(shape)

    def supports_dtype(self, dtype: str) -> str | None:
        return None if dtype in CODES else f"safetensors has no {dtype} dtype"

    def source_region(self) -> tuple[Path, int, int]:
        return self.path, self.header.data_start, self.header.data_size

    def _patch(self, out: Path, retype: dict[str, str]) -> Patcher:
        return SafetensorsPatcher(self, out, retype)

    def close(self) -> None:
        raw = getattr(self, "_raw", None)
        if raw is not None:
            raw.close()


def _pad(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def encode_header(doc: dict[str, Any], room: int = 0) -> bytes:
    """The 8-byte length and the JSON, padded with spaces to a multiple of 8 bytes (and
    to at least ``room`` bytes), as the crate's writer pads it."""
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
    size = max(_pad(len(text)), room)
    return struct.pack("<Q", size) + text + b" " * (size - len(text))


class SafetensorsPatcher(Patcher):
    """A patched copy of a ``.safetensors`` file.

    The data section of the copy starts after room for a header somewhat larger than
    the source's (the history it gains; in a file of 64 MiB of data or more): changed
    tensors are written at their offsets, and at commit every byte range nobody wrote
    is copied from the source by the kernel, and the header written in front, padded
    with spaces to the room. A header that outgrew the room (always, in a smaller file)
    moves the data section once (a kernel copy)."""

    def __init__(self, store: SafetensorsStore, out: Path, retype: dict[str, str]) -> None:
        super().__init__()
        self.store = store
        self.out = out
        self.retype = retype
        header = store.header
        self.doc = dict(header.doc)
        # The new layout: retyped tensors change size, and those after them move.
        self.places: dict[str, tuple[int, int]] = {}  # name -> new (begin, end)
        at = 0
        for e in header.entries:
            dtype = retype.get(e.name, e.dtype)
            size = math.prod(e.shape) * itemsize(dtype)
            self.places[e.name] = (at, at + size)
            if e.name in retype:
                self.doc[e.name] = {
                    "dtype": CODES[dtype],
                    "shape": list(e.shape),
                    "data_offsets": [at, at + size],
                }
            elif self.places[e.name] != (e.begin, e.end):
                self.doc[e.name] = {**header.doc[e.name], "data_offsets": [at, at + size]}
            at += size
        self.data_size = at
        # Room for the history to come, in a file large enough that moving its data
        # section would cost more than a few KiB of padding; a smaller one moves it.
        room = 0
        if self.data_size >= ROOM_FROM_BYTES:
            room = 8192 + sum(len(json.dumps(e.name)) + 2 for e in header.entries)
        self.data_start = 8 + _pad(header.data_start - 8 + room)
        self.written: dict[str, list[tuple[int, int]]] = {}
        self._bytes = 0
        self._doc: dict[str, Any] | None = None
        self.tmp = temp_beside(out)
        self.fd: int | None = None
        try:
            self.fd = os.open(self.tmp, os.O_RDWR)  # read back if the data section moves
            os.ftruncate(self.fd, self.data_start + self.data_size)
        except OSError as exc:
            self._abort()
            raise OutputError(f"{out}: cannot write: {exc.strerror or exc}") from exc

    @property
    def bytes_written(self) -> int:
        return self._bytes

    def _begin(self, info: TensorInfo, dtype: str) -> None:
        if dtype != info.dtype and self.retype.get(info.path) != dtype:
            raise ValueError(f"{info.name}: dtype change to {dtype} was not planned")
        self.written.setdefault(info.path, [])

    def _write(self, info: TensorInfo, block: Block, data: np.ndarray) -> None:
        assert self.fd is not None
        dtype = to_numpy(self.retype.get(info.path, info.dtype)).newbyteorder("<")
        raw = np.ascontiguousarray(data, dtype=dtype).reshape(-1).view(np.uint8)
        begin = self.places[info.path][0] + block.first * dtype.itemsize
        view = memoryview(raw.data)
        done = 0
        while done < len(view):
            done += os.pwrite(self.fd, view[done:], self.data_start + begin + done)
        self.written[info.path].append((begin, begin + len(view)))
        self._bytes += len(view)

    def _set_history(self, history: list[dict[str, Any]]) -> None:
        metadata = {**self.store.header.metadata, HISTORY_KEY: json.dumps(history)}
        if METADATA in self.doc:  # where it stood
            self._doc = {k: (metadata if k == METADATA else v) for k, v in self.doc.items()}
        else:  # first, as the crate writes it
            self._doc = {METADATA: metadata, **self.doc}

    def _fill(self) -> None:
        """Copy from the source every byte of the data section that was not written."""
        assert self.fd is not None
        src = self.store.header
        with open(self.store.path, "rb") as f:
            for e in src.entries:
                begin, end = self.places[e.name]
                if e.name in self.retype:
                    if sum(b - a for a, b in self.written.get(e.name, [])) != end - begin:
                        raise ValueError(f"{e.name}: retyped but not written whole")
                    continue
                pos = begin
                for a, b in sorted(self.written.get(e.name, [])) + [(end, end)]:
                    if a > pos:
                        copy_range(
                            f.fileno(),
                            self.fd,
                            0,
                            a - pos,
                            src.data_start + e.begin + (pos - begin),
                            self.data_start + pos,
                        )
                    pos = max(pos, b)

    def _commit(self) -> None:
        assert self.fd is not None and self._doc is not None
        self._fill()
        header = encode_header(self._doc)
        if len(header) <= self.data_start:  # fits the room (padded to it)
            header = encode_header(self._doc, self.data_start - 8)
            os.pwrite(self.fd, header, 0)
        else:  # the history outgrew the room: the data section moves once
            moved = temp_beside(self.out)
            fd = os.open(moved, os.O_WRONLY)
            try:
                os.ftruncate(fd, len(header) + self.data_size)
                os.pwrite(fd, header, 0)
                copy_range(self.fd, fd, 0, self.data_size, self.data_start, len(header))
            finally:
                os.close(fd)
            os.close(self.fd)
            self.fd = None
            temps.remove(self.tmp)
            self.tmp = moved
        self._bytes += len(header)
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        publish(self.tmp, self.out, self.overwrite)

    def _abort(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self.tmp.unlink(missing_ok=True)
