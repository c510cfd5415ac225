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
from weightcli.stores.output import publish, publish_with_parts, temp_beside, temp_dir_beside
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

    def cannot_compress(self) -> str | None:
        return "safetensors has no compressed form (its readers map the data as it is)"

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

    def __init__(
        self,
        store: SafetensorsStore,
        out: Path,
        retype: dict[str, str],
        tmp: Path | None = None,
    ) -> None:
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
        self.tmp = tmp or temp_beside(out)  # ``tmp``: an empty file made by the caller
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

    def finish(self) -> Path:
        """Complete the copy (the bytes nobody wrote, the header) without publishing it:
        the finished temporary file. Without a history (a shard of an index, whose
        history is the index's), the header keeps the source's metadata."""
        assert self.fd is not None
        doc = self._doc if self._doc is not None else self.doc
        self._fill()
        header = encode_header(doc)
        if len(header) <= self.data_start:  # fits the room (padded to it)
            header = encode_header(doc, self.data_start - 8)
            os.pwrite(self.fd, header, 0)
        else:  # the history outgrew the room: the data section moves once
            moved = temps.make_file(self.tmp.parent, self.tmp.name + ".")
            os.chmod(moved, os.stat(self.tmp).st_mode & 0o777)
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
        return self.tmp

    def _commit(self) -> None:
        publish(self.finish(), self.out, self.overwrite)

    def _abort(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        temps.remove(self.tmp)


# -- Hugging Face's sharded checkpoints: ``model.safetensors.index.json`` -------------------
#
# ``{"metadata": {"total_size": N, ...}, "weight_map": {tensor: "model-00001-of-00002.
# safetensors", ...}}`` beside the shards it names (transformers' ``save_pretrained``,
# huggingface_hub's ``split_state_dict_into_shards``). Read as one checkpoint of the tensors
# the map names; patched shard by shard (changed shards rewritten, the others copied;
# in place: left as they are); the index written last, the history in its ``metadata``.

INDEX_FORMAT = "safetensors-index"
INDEX_SUFFIX = ".safetensors.index.json"
INDEX_LABEL = "sharded safetensors (.safetensors.index.json)"
# Shards one index may name (each stays open: a descriptor and its parsed header).
MAX_SHARDS = 4096


def read_index(path: Path) -> dict[str, Any]:
    """The index, checked: an object whose ``weight_map`` maps tensor names to the file
    names of shards in the index's folder, and whose ``metadata`` is an object."""
    doc = capped.parse_json(
        capped.read_bytes(path, capped.JSON_BYTES, "safetensors index"), str(path), unique=True
    )
    wmap = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(wmap, dict) or not all(isinstance(v, str) for v in wmap.values()):
        raise CorruptError(f"{path}: not a safetensors index (no weight_map of file names)")
    if not isinstance(doc.get("metadata", {}), dict):
        raise CorruptError(f"{path}: its metadata is not an object")
    checked: dict[str, Any] = doc
    return checked


def index_shards(doc: dict[str, Any]) -> list[str]:
    """The shard files an index names, in order of first mention."""
    return list(dict.fromkeys(doc["weight_map"].values()))


def is_index(path: Path) -> bool:
    """A safetensors index: named so, and holding a map of tensor names to file names."""
    if not path.name.endswith(INDEX_SUFFIX) or not path.is_file():
        return False
    try:
        read_index(path)
    except (OSError, CorruptError, InputError):
        return path.stat().st_size > 0  # named so: opened, to say why it is refused
    return True


def index_named(path: Path) -> bool:
    return path.name.endswith(INDEX_SUFFIX)


def index_files(path: Path) -> list[Path]:
    """An index and its shards (for digests)."""
    return [path, *(path.parent / name for name in index_shards(read_index(path)))]


def index_parts(folder: Path, names: Any) -> set[str]:
    """Directory searches: the shards the indexes among ``names`` name (parts of those
    models, never models themselves)."""
    out: set[str] = set()
    for name in names:
        if name.endswith(INDEX_SUFFIX):
            try:
                out.update(index_shards(read_index(folder / name)))
            except (OSError, CorruptError, InputError):
                continue
    return out


class IndexStore(Store):
    """A ``.safetensors.index.json`` and its shards, as one checkpoint."""

    def __init__(self, path: Path) -> None:
        from weightcli.stores.links import check_inside

        self.path = path
        self.doc = read_index(path)
        self.names = index_shards(self.doc)
        if len(self.names) > MAX_SHARDS:
            raise CorruptError(f"{path}: names {len(self.names)} shards (at most {MAX_SHARDS})")
        self.shards: list[SafetensorsStore] = []
        try:
            for name in self.names:
                if Path(name).name != name or name in ("", ".", ".."):
                    raise CorruptError(
                        f"{path}: names shard {literal(repr(name))} outside the index's folder: "
                        "refused"
                    )
                shard = check_inside(path.parent, path.parent / name)
                if not shard.is_file():
                    raise CorruptError(f"{path}: names shard {name}, which is missing")
                self.shards.append(SafetensorsStore(shard))
        except BaseException:
            self.close()
            raise
        where = {name: i for i, name in enumerate(self.names)}
        self._route: dict[str, int] = {}
        for tensor, shard in self.doc["weight_map"].items():
            i = where[shard]
            if tensor not in self.shards[i]._entries:
                self.close()
                raise CorruptError(f"{path}: maps {tensor!r} to {shard}, which does not hold it")
            self._route[tensor] = i
        self._tensors = [
            t
            for i, store in enumerate(self.shards)
            for t in store.tensors()
            if self._route.get(t.path) == i
        ]
        metadata = self.doc.get("metadata", {})
        self.meta = StoreMeta(
            format=INDEX_FORMAT,
            format_label=INDEX_LABEL,
            history=clean_history(metadata.get(HISTORY_KEY)),
            extra={
                "shards": len(self.names),
                **{
                    k: v
                    for k, v in metadata.items()
                    if k != HISTORY_KEY and not isinstance(v, dict | list)
                },
            },
        )

    def tensors(self) -> list[TensorInfo]:
        return list(self._tensors)

    def shard_of(self, info: TensorInfo) -> int:
        return self._route[info.path]

    def read(self, info: TensorInfo, block: Block | None = None) -> np.ndarray:
        return self.shards[self.shard_of(info)].read(info, block)

    def supports_dtype(self, dtype: str) -> str | None:
        return None if dtype in CODES else f"safetensors has no {dtype} dtype"

    def siblings(self) -> list[Path]:
        return [self.path.parent / name for name in self.names]

    def _patch(self, out: Path, retype: dict[str, str]) -> Patcher:
        return IndexPatcher(self, out, retype)

    def close(self) -> None:
        for store in getattr(self, "shards", []):
            store.close()


class IndexPatcher(Patcher):
    """Writes OUT (``<stem>.safetensors.index.json``) and its shards: changed shards
    patched, the others copied (in place: left alone). Shards are named
    ``<stem>-NNNNN-of-NNNNN.safetensors`` (in place: as they were); they are moved into
    place first, the index last."""

    def __init__(self, store: IndexStore, out: Path, retype: dict[str, str]) -> None:
        super().__init__()
        self.store = store
        self.out = out
        self.retype = retype
        self.in_place = out.resolve() == store.path.resolve()
        n = len(store.names)
        stem = out.name[: -len(INDEX_SUFFIX)] if out.name.endswith(INDEX_SUFFIX) else out.name
        self.new_names = (
            list(store.names)
            if self.in_place
            else [f"{stem}-{i + 1:05d}-of-{n:05d}{SUFFIX}" for i in range(n)]
        )
        self.tmp = temp_dir_beside(out)
        self.inners: dict[int, SafetensorsPatcher] = {}
        self._index_bytes = 0

    @property
    def bytes_written(self) -> int:
        return self._index_bytes + sum(p.bytes_written for p in self.inners.values())

    def _inner(self, i: int) -> SafetensorsPatcher:
        if i not in self.inners:
            dest = self.tmp / self.new_names[i]
            dest.touch()
            shard = self.store.shards[i]
            retype = {k: v for k, v in self.retype.items() if k in shard._entries}
            self.inners[i] = SafetensorsPatcher(
                shard, self.out.parent / self.new_names[i], retype, tmp=dest
            )
        return self.inners[i]

    def _begin(self, info: TensorInfo, dtype: str) -> None:
        self._inner(self.store.shard_of(info)).begin(info, dtype)

    def _write(self, info: TensorInfo, block: Block, data: np.ndarray) -> None:
        self._inner(self.store.shard_of(info)).write(info, block, data)

    def _set_history(self, history: list[dict[str, Any]]) -> None:
        doc = dict(self.store.doc)
        renamed = dict(zip(self.store.names, self.new_names, strict=True))
        doc["weight_map"] = {t: renamed[s] for t, s in self.store.doc["weight_map"].items()}
        metadata = dict(doc.get("metadata", {}))
        if "total_size" in metadata:  # the tensors' bytes, as transformers counts them
            metadata["total_size"] = sum(
                math.prod(t.shape) * itemsize(self.retype.get(t.path, t.dtype))
                for t in self.store.tensors()
            )
        metadata[HISTORY_KEY] = history
        doc["metadata"] = metadata
        text = json.dumps(doc, indent=2)
        (self.tmp / self.out.name).write_text(text)
        self._index_bytes = len(text.encode())

    def _commit(self) -> None:
        import shutil

        finished: dict[int, Path] = {}
        for i, name in enumerate(self.store.names):
            if i in self.inners:
                finished[i] = self.inners[i].finish()
            elif not self.in_place:
                shutil.copyfile(self.store.path.parent / name, self.tmp / self.new_names[i])
                finished[i] = self.tmp / self.new_names[i]
        parts = [(path, self.out.parent / self.new_names[i]) for i, path in finished.items()]
        main = (self.tmp / self.out.name, self.out)
        publish_with_parts(parts, main, self.overwrite or self.in_place, self.overwrite)
        temps.remove(self.tmp)

    def _abort(self) -> None:
        for inner in self.inners.values():
            inner.abort()
        temps.remove(self.tmp)


class NewFile:
    """A new ``.safetensors`` file, written tensor by tensor (``export``).

    The data section goes to a temporary file first, each tensor's bytes in the order
    given (streamed by the caller, block by block); the header, which needs every
    tensor's shape, is put in front at ``commit`` and the data section copied after it
    by the kernel; the result is published atomically (never over an existing OUT
    without ``overwrite``)."""

    def __init__(self, out: Path, overwrite: bool = False) -> None:
        self.out = out
        self.overwrite = overwrite
        self.entries: dict[str, dict[str, Any]] = {}
        self.at = 0
        self.data = temp_beside(out, ".data")
        self.fd: int | None = os.open(self.data, os.O_RDWR)
        self.bytes_written = 0

    def add(self, name: str, dtype: str, shape: tuple[int, ...], chunks: Any) -> None:
        """The tensor ``name``: ``chunks`` (arrays) are its values in C order."""
        assert self.fd is not None
        if name in self.entries or name == METADATA:
            raise OutputError(f"{self.out}: two tensors would be named {name!r}")
        if dtype not in CODES:
            raise OutputError(f"{self.out}: {name}: safetensors has no {dtype} dtype")
        little = to_numpy(dtype).newbyteorder("<")
        begin = self.at
        for chunk in chunks:
            raw = np.ascontiguousarray(chunk, dtype=little).reshape(-1).view(np.uint8)
            view = memoryview(raw.data)
            done = 0
            while done < len(view):
                done += os.pwrite(self.fd, view[done:], self.at + done)
            self.at += len(view)
        need = math.prod(shape) * itemsize(dtype)
        if self.at - begin != need:
            raise ValueError(f"{name}: {self.at - begin} bytes written, {need} expected")
        self.entries[name] = {
            "dtype": CODES[dtype],
            "shape": list(shape),
            "data_offsets": [begin, self.at],
        }

    def commit(self, history: list[dict[str, Any]], layout: str = "keras") -> None:
        """Publish the file, ``history`` in its ``__metadata__`` (with ``format``: ``pt``
        for PyTorch's layout, as transformers expects, else ``keras``)."""
        assert self.fd is not None
        metadata = {
            "format": "pt" if layout == "torch" else "keras",
            HISTORY_KEY: json.dumps(history),
        }
        header = encode_header({METADATA: metadata, **self.entries})
        final = temp_beside(self.out)
        try:
            fd = os.open(final, os.O_WRONLY)
            try:
                os.ftruncate(fd, len(header) + self.at)
                os.pwrite(fd, header, 0)
                copy_range(self.fd, fd, 0, self.at, 0, len(header))
            finally:
                os.close(fd)
            publish(final, self.out, self.overwrite)
        except BaseException:
            temps.remove(final)
            raise
        self.bytes_written = len(header) + self.at
        self.abort()  # the data section's temporary

    def abort(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        temps.remove(self.data)
