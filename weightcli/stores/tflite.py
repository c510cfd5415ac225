""".tflite (TensorFlow Lite / LiteRT): the constant tensors of a flatbuffer model, read.

The layout is TensorFlow Lite's ``schema.fbs`` (``tensorflow/compiler/mlir/lite/schema``),
read here by a small flatbuffer reader of its own (no TensorFlow, no generated code), each
offset checked against the file before it is followed: a table is a signed offset to
its vtable (a u16 size, a u16 table size, then a u16 offset per field, 0 for absent);
a table, vector or string field holds a u32 offset forward from itself; a vector is a
u32 count then its elements. The fields read:

- ``Model``: 0 version, 1 operator_codes, 2 subgraphs, 3 description, 4 buffers.
- ``SubGraph``: 0 tensors, 3 operators, 4 name.
- ``Tensor``: 0 shape, 1 type, 2 buffer, 3 name, 4 quantization.
- ``QuantizationParameters``: 2 scale, 3 zero_point, 6 quantized_dimension.
- ``Buffer``: 0 data (inline), 1 offset and 2 size (a model over 2 GB keeps its data
  after the flatbuffer, by absolute offset).
- ``Operator``: 0 opcode_index, 1 inputs, 2 outputs. ``OperatorCode``: 0 deprecated_builtin_code,
  3 builtin_code.

The constant tensors are those whose buffer holds data; each is named as the converter
named it (``functional_1/fc_1/MatMul``), and grouped by the operator that uses it (a
FULLY_CONNECTED's weights are its ``kernel``, shaped ``[out, in]`` as TensorFlow Lite
stores them).

Writing (``TFLitePatcher``) is surgery: changed tensors are written over their bytes, no
table is rebuilt, and the history goes into the model's ``metadata`` as a buffer named
``weightcli_history``, which LiteRT ignores. Adding a buffer and a metadata entry needs
new ``buffers`` and ``metadata`` vectors, and a flatbuffer's offsets only point forward,
so they cannot follow the tables they list: the copy starts with a *prefix* (a new root
``Model`` table whose fields point at the source's own vectors, strings and tables, the
two new vectors, the new ``Buffer`` and ``Metadata`` tables and the history's bytes),
and the source's bytes follow unchanged, shifted by the prefix's length (a multiple of
16, so every buffer keeps its alignment; a buffer stored by absolute ``offset``, in a
model over 2 GB, has that offset moved by as much). The history records the prefix's
length, so a later run replaces that prefix instead of stacking another.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from weightcli.dtypes import to_numpy
from weightcli.errors import CorruptError, InputError, OutputError, UnsupportedError
from weightcli.stores import capped, temps
from weightcli.stores.base import (
    BLOCK_ELEMS,
    Affine,
    Block,
    Patcher,
    Store,
    StoreMeta,
    clean_history,
    split,
)
from weightcli.stores.output import publish, temp_beside
from weightcli.stores.rangecopy import RangeCopy, copy_range
from weightcli.tensor import TensorInfo

FORMAT = "tflite"
LABEL = "TensorFlow Lite / LiteRT (.tflite)"
IDENTIFIER = b"TFL3"
MAX_ITEMS = 10_000_000  # entries of one vector (tensors, buffers, operators, a shape...)
MAX_NDIM = 32

# TensorType -> weightcli's dtype name (None: not read as a tensor here).
TYPES: dict[int, str | None] = {
    0: "float32",
    1: "float16",
    2: "int32",
    3: "uint8",
    4: "int64",
    5: None,  # STRING
    6: "bool",
    7: "int16",
    8: None,  # COMPLEX64
    9: "int8",
    10: "float64",
    11: None,  # COMPLEX128
    12: "uint64",
    13: None,  # RESOURCE
    14: None,  # VARIANT
    15: "uint32",
    16: "uint16",
    17: None,  # INT4 (packed two to a byte)
    18: "bfloat16",
}

# BuiltinOperator codes whose constant inputs have a role: (name, {input index: kind}).
OPS: dict[int, tuple[str, dict[int, str]]] = {
    3: ("CONV_2D", {1: "kernel", 2: "bias"}),
    4: ("DEPTHWISE_CONV_2D", {1: "kernel", 2: "bias"}),
    9: ("FULLY_CONNECTED", {1: "kernel", 2: "bias"}),
    67: ("TRANSPOSE_CONV", {1: "kernel", 3: "bias"}),
    94: ("BATCH_MATMUL", {1: "kernel"}),
    118: ("CONV_3D", {1: "kernel", 2: "bias"}),
}


DEQUANTIZE = 6
DENSIFY = 124  # a sparse constant reaches its op through it, as a float16 one through DEQUANTIZE

SPARSITY = 6  # Tensor's field of the converter's sparse format (its dim_metadata)
UNREAD = {5: "string", 8: "complex64", 11: "complex128", 13: "resource", 14: "variant", 17: "int4"}

HISTORY = "weightcli_history"  # the metadata entry (and buffer) of weightcli's history
# Model's fields, in schema order: version (a u32), then offsets to operator_codes,
# subgraphs, description, buffers, metadata_buffer, metadata, signature_defs.
MODEL_FIELDS = 8
BUFFERS, METADATA = 4, 6
PREFIX_ALIGN = 16
# Integer codes TensorFlow Lite dequantizes as (codes - zero_point) * scale.
AFFINE_TYPES = ("int8", "uint8", "int16")


def probe(path: Path) -> bool:
    """A flatbuffer whose file identifier (bytes 4..8) is TensorFlow Lite's ``TFL3``."""
    if not path.is_file():
        return False
    try:
        with path.open("rb") as f:
            head = f.read(8)
    except OSError:
        return False
    return len(head) == 8 and head[4:8] == IDENTIFIER


def named(path: Path) -> bool:
    return path.name.endswith(".tflite")


class Flat:
    """Bounds-checked reads of a flatbuffer (``buf``: bytes-like)."""

    def __init__(self, buf: Any, label: str) -> None:
        self.buf = buf
        self.size = len(buf)
        self.label = label

    def _need(self, at: int, n: int) -> None:
        if at < 0 or n < 0 or at + n > self.size:
            raise CorruptError(f"{self.label}: a flatbuffer offset points outside the file ({at})")

    def u8(self, at: int) -> int:
        self._need(at, 1)
        return int(self.buf[at])

    def u16(self, at: int) -> int:
        self._need(at, 2)
        return int(struct.unpack_from("<H", self.buf, at)[0])

    def i32(self, at: int) -> int:
        self._need(at, 4)
        return int(struct.unpack_from("<i", self.buf, at)[0])

    def u32(self, at: int) -> int:
        self._need(at, 4)
        return int(struct.unpack_from("<I", self.buf, at)[0])

    def u64(self, at: int) -> int:
        self._need(at, 8)
        return int(struct.unpack_from("<Q", self.buf, at)[0])

    def table(self, at: int) -> Table:
        vtable = at - self.i32(at)
        size = self.u16(vtable)
        if size < 4 or size % 2:
            raise CorruptError(f"{self.label}: a damaged flatbuffer vtable (size {size})")
        self._need(vtable, size)
        return Table(self, at, vtable, (size - 4) // 2)

    def deref(self, at: int) -> int:
        """The position a u32 offset at ``at`` points to (forward from ``at``)."""
        return at + self.u32(at)

    def vector(self, at: int, item: int) -> tuple[int, int]:
        """(position of the first element, count) of the vector whose offset is at ``at``."""
        start = self.deref(at)
        n = self.u32(start)
        if n > MAX_ITEMS:
            raise CorruptError(f"{self.label}: a vector of {n} entries (at most {MAX_ITEMS})")
        self._need(start + 4, n * item)
        return start + 4, n

    def string(self, at: int) -> str:
        start, n = self.vector(at, 1)
        return bytes(self.buf[start : start + n]).decode("utf-8", errors="replace")


@dataclass(frozen=True)
class Table:
    flat: Flat
    at: int
    vtable: int
    fields: int

    def field(self, i: int) -> int | None:
        """The position of field ``i``'s value, or None when absent."""
        if i >= self.fields:
            return None
        off = self.flat.u16(self.vtable + 4 + 2 * i)
        return self.at + off if off else None

    def scalar(self, i: int, read: str, default: int = 0) -> int:
        at = self.field(i)
        return default if at is None else int(getattr(self.flat, read)(at))

    def sub(self, i: int) -> Table | None:
        at = self.field(i)
        return None if at is None else self.flat.table(self.flat.deref(at))

    def tables(self, i: int) -> list[Table]:
        at = self.field(i)
        if at is None:
            return []
        start, n = self.flat.vector(at, 4)
        return [self.flat.table(self.flat.deref(start + 4 * k)) for k in range(n)]

    def ints(self, i: int) -> list[int]:
        at = self.field(i)
        if at is None:
            return []
        start, n = self.flat.vector(at, 4)
        return [self.flat.i32(start + 4 * k) for k in range(n)]

    def text(self, i: int) -> str | None:
        at = self.field(i)
        return None if at is None else self.flat.string(at)


@dataclass(frozen=True)
class Constant:
    """Where one constant tensor's bytes are, and how to read them."""

    at: int  # file offset of its first byte
    nbytes: int
    buffer: int = 0  # its index in the model's buffers (several tensors may share one)
    scale: tuple[float, ...] = ()
    zero_point: tuple[int, ...] = ()
    axis: int = 0
    scale_at: int | None = None  # file offset of the scale vector's first float
    # The converter's sparse layout, rows of CSR: (row segments, column indices); the
    # buffer then holds only the nonzeros. Read as the dense tensor; never written.
    csr: tuple[np.ndarray, np.ndarray] | None = None


# SparsityParameters: 0 traversal_order, 1 block_map, 2 dim_metadata; DimensionMetadata:
# 0 format (DENSE 0, SPARSE_CSR 1), 1 dense_size, 2 and 3 array_segments (union type,
# table), 4 and 5 array_indices; a SparseIndexVector union's table holds ``values``
# (field 0): Int32Vector 1, Uint16Vector 2, Uint8Vector 3.
INDEX_VECTORS = {1: ("<i4", 4), 2: ("<u2", 2), 3: ("u1", 1)}


def _csr(flat: Flat, tensor: Table) -> tuple[np.ndarray, np.ndarray] | None:
    """The one sparse layout read here: a 2-D tensor in its own order, rows dense and
    columns CSR, no blocks (what the converter's EXPERIMENTAL_SPARSITY writes). None for
    a dense tensor or any other layout."""
    sparsity = tensor.sub(SPARSITY)
    if sparsity is None:
        return None
    dims = sparsity.tables(2)
    formats = [d.scalar(0, "u8") for d in dims]
    if sparsity.ints(0) != [0, 1] or sparsity.ints(1) or formats != [0, 1]:
        return None

    def index_vector(table: Table, type_field: int) -> np.ndarray | None:
        kind = INDEX_VECTORS.get(table.scalar(type_field, "u8"))
        holder = table.sub(type_field + 1)
        field = holder.field(0) if holder is not None else None
        if kind is None or field is None:
            return None
        start, n = flat.vector(field, kind[1])
        return np.frombuffer(bytes(flat.buf[start : start + n * kind[1]]), kind[0]).astype(np.int64)

    segments, columns = index_vector(dims[1], 2), index_vector(dims[1], 4)
    if segments is None or columns is None or (np.diff(segments) < 0).any():
        raise CorruptError(f"{flat.label}: a damaged sparse layout")
    return segments, columns


def _csr_fits(csr: tuple[np.ndarray, np.ndarray], shape: tuple[int, ...]) -> bool:
    segments, columns = csr
    return (
        len(shape) == 2
        and len(segments) == shape[0] + 1
        and segments[0] == 0
        and segments[-1] == len(columns)
        and bool(((columns >= 0) & (columns < shape[1])).all())
    )


class TFLiteStore(Store):
    """A ``.tflite`` model's constant tensors."""

    def __init__(self, path: Path) -> None:
        self.path = path
        local = self.local_copy()
        try:
            fd = os.open(local, os.O_RDONLY)
        except OSError as exc:
            raise InputError(f"{path}: cannot be read: {exc.strerror or exc}") from exc
        try:
            size = os.fstat(fd).st_size
            if size < 8:
                raise CorruptError(f"{path}: {size} bytes: too short for a .tflite model")
            self._map: mmap.mmap | None = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        self._flat = Flat(self._map, str(path))
        try:
            self._read(self._flat)
        except BaseException:
            self.close()
            raise

    def _read(self, flat: Flat) -> None:
        model = flat.table(flat.u32(0))
        history, self._body = self._history(flat, model)
        # The model as its writer made it: a weightcli prefix's root stands in front of it.
        self._original = flat.table(self._body + flat.u32(self._body)) if self._body else model
        if self._original.fields > MODEL_FIELDS:
            self._unknown = f"its Model table has {self._original.fields} fields"
        else:
            self._unknown = ""
        version = model.scalar(0, "u32")
        codes: list[int] = []
        for entry in model.tables(1):
            deprecated = entry.scalar(0, "u8")
            builtin = entry.scalar(3, "i32", deprecated)
            codes.append(max(builtin, deprecated))
        buffers = model.tables(4)
        subgraphs = model.tables(2)
        self._infos: list[TensorInfo] = []
        self._consts: dict[str, Constant] = {}
        self._affine: dict[str, Affine] = {}
        self._keras: dict[str, KerasForm] = {}
        self._unread: dict[str, int] = {}
        seen: set[str] = set()
        for g, graph in enumerate(subgraphs):
            tensors = graph.tables(0)
            # tensor index -> (op name, kind, the tensor that names the op's layer: its
            # kernel, the op's input channels: a depthwise kernel's Keras shape needs them)
            roles: dict[int, tuple[str, str, int, int]] = {}
            operators = graph.tables(3)
            # float16 (and some int8) weights reach their op through a DEQUANTIZE, sparse
            # ones through a DENSIFY: the constant behind its output plays the role
            behind: dict[int, int] = {}
            for operator in operators:
                index = operator.scalar(0, "u32")
                if index < len(codes) and codes[index] in (DEQUANTIZE, DENSIFY):
                    ins, outs = operator.ints(1), operator.ints(2)
                    if ins and outs:
                        behind[outs[0]] = ins[0]
            for operator in operators:
                index = operator.scalar(0, "u32")
                code = codes[index] if index < len(codes) else -1
                if code not in OPS:
                    continue
                name, kinds = OPS[code]
                inputs = [behind.get(t, t) for t in operator.ints(1)]
                owner = next(
                    (inputs[p] for p, k in kinds.items() if k == "kernel" and p < len(inputs)), -1
                )
                channels = 0
                if name == "DEPTHWISE_CONV_2D" and inputs and 0 <= inputs[0] < len(tensors):
                    dims = tensors[inputs[0]].ints(0)
                    channels = dims[-1] if dims else 0
                for position, t in enumerate(inputs):
                    if t >= 0 and t not in roles and position in kinds:
                        roles[t] = (name, kinds[position], owner, channels)
            for i, tensor in enumerate(tensors):
                found = self._constant(flat, tensor, buffers)
                if found is None:
                    continue
                info, const = found
                op_name, kind, owner, channels = roles.get(
                    i, (None, "weight" if info.ndim >= 2 else "constant", i, 0)
                )
                name = info.name if len(subgraphs) == 1 else f"subgraph_{g}/{info.name}"
                named_by = tensors[owner].text(3) if 0 <= owner < len(tensors) else None
                while name in seen:  # the converter may name two constants alike
                    name += "_"
                seen.add(name)
                path = f"{g}:{i}"
                layer, _, _ = (named_by or name).rpartition("/")
                affine = bool(const.scale) and info.dtype in AFFINE_TYPES
                const_info = TensorInfo(
                    name=name, path=path, dtype=info.dtype, shape=info.shape, kind=kind,
                    layer=layer or None, layer_class=op_name,
                    quantized=f"{info.dtype}-affine" if affine else None,
                )  # fmt: skip
                self._infos.append(const_info)
                self._consts[path] = const
                if op_name and named_by and len(subgraphs) == 1:
                    form = keras_form(named_by, op_name, kind, info.shape, channels)
                    if form is not None:
                        self._keras[path] = form
                if affine and kind == "kernel":
                    self._add_scale(const_info, const, seen)
        self.meta = StoreMeta(
            format=FORMAT,
            format_label=LABEL,
            writer=model.text(3),
            history=history,
            extra={
                "schema version": version,
                "subgraphs": len(subgraphs),
                "buffers": len(buffers),
                **(
                    {"constants not read": ", ".join(f"{n} {w}" for w, n in self._unread.items())}
                    if self._unread
                    else {}
                ),
            },
        )

    def _history(self, flat: Flat, model: Table) -> tuple[list[dict[str, Any]], int]:
        """weightcli's history in the model's metadata, and where the source's own bytes
        begin (the length of the prefix a weightcli write put in front; 0 if none)."""
        buffers = model.tables(4)
        for entry in model.tables(METADATA):
            if entry.text(0) != HISTORY:
                continue
            index = entry.scalar(1, "u32")
            data = buffers[index].field(0) if index < len(buffers) else None
            if data is None:
                raise CorruptError(f"{flat.label}: its weightcli history names no data")
            at, n = flat.vector(data, 1)
            if n > capped.HISTORY_BYTES:
                raise CorruptError(f"{flat.label}: a weightcli history of {n} bytes")
            doc = capped.parse_json(bytes(flat.buf[at : at + n]), f"{flat.label}: history")
            body = doc.get("prefix", 0) if isinstance(doc, dict) else None
            if (
                not isinstance(body, int)
                or isinstance(body, bool)
                or body < 0
                or body % PREFIX_ALIGN
                or body + 8 > flat.size
                or (body and bytes(flat.buf[body + 4 : body + 8]) != IDENTIFIER)
            ):
                raise CorruptError(f"{flat.label}: a damaged weightcli history (its prefix)")
            return clean_history(doc.get("history")), body
        return [], 0

    def _add_scale(self, codes: TensorInfo, const: Constant, seen: set[str]) -> None:
        """A quantized kernel's scale vector, listed as a float tensor of its own
        (``<layer>/kernel_scale``, as Keras names an int8 layer's): read and written at
        its place in the flatbuffer, so a factor reaches the weights through it."""
        name = codes.name.rsplit("/", 1)[0] + "/kernel_scale"
        if name in seen or const.scale_at is None:
            return  # (another kernel of that prefix has it: this one keeps its codes)
        seen.add(name)
        info = TensorInfo(
            name=name,
            path=codes.path + ":scale",
            dtype="float32",
            shape=(len(const.scale),),
            kind="kernel_scale",
            layer=codes.layer,
            layer_class=codes.layer_class,
            quantized=codes.quantized,
        )
        self._infos.append(info)
        # never a buffer: its own id, so it shares with nothing
        self._consts[info.path] = Constant(
            const.scale_at, 4 * len(const.scale), -1 - len(self._consts)
        )
        self._affine[codes.path] = Affine(info, const.zero_point or (0,), const.axis)

    def affine(self, info: TensorInfo) -> Affine | None:
        return self._affine.get(info.path)

    def _constant(
        self, flat: Flat, tensor: Table, buffers: list[Table]
    ) -> tuple[TensorInfo, Constant] | None:
        index = tensor.scalar(2, "u32")
        if index == 0 or index >= len(buffers):
            return None  # buffer 0 is the empty sentinel: not a constant
        code = tensor.scalar(1, "u8")
        dtype = TYPES.get(code)
        csr = _csr(flat, tensor) if dtype is not None else None
        if dtype is None or (tensor.field(SPARSITY) is not None and csr is None):
            # a constant weightcli does not read (int4 packed two a byte, a string, a
            # sparse layout other than rows of CSR): counted, and said in the header
            what = "sparse" if dtype is not None else UNREAD.get(code, f"type {code}")
            self._unread[what] = self._unread.get(what, 0) + 1
            return None
        buffer = buffers[index]
        data = buffer.field(0)
        if data is not None:
            at, nbytes = flat.vector(data, 1)
        else:
            at, nbytes = buffer.scalar(1, "u64"), buffer.scalar(2, "u64")
            if at <= 1:
                return None
            flat._need(at, nbytes)
        if nbytes == 0:
            return None
        shape = tuple(tensor.ints(0))
        if len(shape) > MAX_NDIM or any(d < 0 for d in shape):
            raise CorruptError(f"{flat.label}: a tensor of shape {shape[:8]}")
        name = tensor.text(3) or f"tensor_{index}"
        stored = len(csr[1]) if csr is not None else math.prod(shape)  # nonzeros, if sparse
        need = stored * to_numpy(dtype).itemsize
        if csr is not None and not _csr_fits(csr, shape):
            raise CorruptError(f"{flat.label}: tensor {name!r}: a damaged sparse layout")
        if need != nbytes:
            raise CorruptError(
                f"{flat.label}: tensor {name!r}: {nbytes} bytes for a {dtype} of shape {shape}"
            )
        scale: tuple[float, ...] = ()
        zero: tuple[int, ...] = ()
        axis = 0
        scale_at = None
        q = tensor.sub(4)
        if q is not None:
            s = q.field(2)
            if s is not None:
                start, n = flat.vector(s, 4)
                scale = tuple(struct.unpack_from(f"<{n}f", flat.buf, start))
                scale_at = start
            z = q.field(3)
            if z is not None:
                start, n = flat.vector(z, 8)
                zero = tuple(struct.unpack_from(f"<{n}q", flat.buf, start))
            axis = q.scalar(6, "i32")
        info = TensorInfo(name=name, path="", dtype=dtype, shape=shape, kind="")
        if scale and (
            axis < 0 or (len(scale) > 1 and (axis >= len(shape) or shape[axis] != len(scale)))
        ):
            raise CorruptError(
                f"{flat.label}: tensor {name!r}: {len(scale)} scales along axis {axis} of {shape}"
            )
        if zero and len(zero) not in (1, len(scale)):
            raise CorruptError(f"{flat.label}: tensor {name!r}: {len(zero)} zero points")
        return info, Constant(at, nbytes, index, scale, zero, axis, scale_at, csr)

    def tensors(self) -> list[TensorInfo]:
        return list(self._infos)

    def quantization(self, info: TensorInfo) -> Constant:
        """A constant's place and its quantization (scales, zero points, axis)."""
        return self._consts[info.path]

    def read(self, info: TensorInfo, block: Block | None = None) -> np.ndarray:
        const = self._consts[info.path]
        dtype = to_numpy(info.dtype)
        if const.csr is not None:
            assert self._map is not None
            raw = self._map[const.at : const.at + const.nbytes]
            values = np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype)
            segments, columns = const.csr
            dense = np.zeros(info.shape, dtype)
            rows = np.repeat(np.arange(info.shape[0]), np.diff(segments))
            dense[rows, columns] = values
            return dense if block is None else dense[block.index]
        first, shape = (block.first, block.shape) if block is not None else (0, info.shape)
        start = const.at + first * dtype.itemsize
        count = math.prod(shape)
        assert self._map is not None
        raw = self._map[start : start + count * dtype.itemsize]
        return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(shape)

    def supports_dtype(self, dtype: str) -> str | None:
        return (
            "a .tflite tensor keeps its type (its operators are compiled for it): convert "
            "the model again to change it"
        )

    def _patch(self, out: Path, retype: dict[str, str]) -> Patcher:
        if self._unknown:
            raise UnsupportedError(
                f"{self.path}: {self._unknown}, more than this writer knows; nothing written"
            )
        return TFLitePatcher(self, out)

    def sharers(self, info: TensorInfo) -> list[TensorInfo]:
        """The other constant tensors stored in ``info``'s buffer."""
        buffer = self._consts[info.path].buffer
        return [
            t for t in self._infos if t.path != info.path and self._consts[t.path].buffer == buffer
        ]

    def close(self) -> None:
        mapped = getattr(self, "_map", None)
        if mapped is not None:
            mapped.close()
            self._map = None
        self.drop_local_copy()


# -- Keras's names and layouts --------------------------------------------------------------


@dataclass(frozen=True)
class KerasForm:
    """How a converted kernel or bias looks in the Keras model it came from: the names
    it may have there (the layer the converter's scope names, with and without the
    ``_1`` Keras 3 adds to an op's scope), and the axes to move (``perm``) or the shape to
    take (``shape``) from TensorFlow Lite's layout to Keras's."""

    names: tuple[str, ...]
    shape: tuple[int, ...]  # in Keras's layout
    perm: tuple[int, ...] | None = None


def keras_form(
    named_by: str, op: str, kind: str, shape: tuple[int, ...], channels: int
) -> KerasForm | None:
    """The Keras form of an op's ``kind`` input (see ``KerasForm``), None where the
    converter's layout or name says too little."""
    if kind not in ("kernel", "bias"):
        return None
    # "scope/fc_1/MatMul", or fused ops' names joined by ";" ("m/dw_bn/FusedBatchNormV3;
    # m/dw/depthwise;..."): each segment's layer, as named and without Keras 3's "_1"
    layers: list[str] = []
    for segment in named_by.split(";"):
        parts = segment.split("/")
        if len(parts) < 2:
            continue
        layer = parts[-2]
        head, _, tail = layer.rpartition("_")
        layers += [layer, head] if head and tail.isdigit() else [layer]
    if not layers:
        return None
    stored = (
        ["depthwise_kernel", kind] if op == "DEPTHWISE_CONV_2D" and kind == "kernel" else [kind]
    )
    names = tuple(dict.fromkeys(f"{n}/{k}" for k in stored for n in layers))
    if kind == "bias":
        return KerasForm(names, shape)
    perm = {
        ("FULLY_CONNECTED", 2): (1, 0),  # [out, in] -> [in, out]
        ("CONV_2D", 4): (1, 2, 3, 0),  # [out, kh, kw, in] -> [kh, kw, in, out]
        ("TRANSPOSE_CONV", 4): (1, 2, 0, 3),  # [out, kh, kw, in] -> [kh, kw, out, in]
        ("CONV_3D", 5): None,  # the same layout
    }
    key = (op, len(shape))
    if key in perm:
        p = perm[key]
        return KerasForm(names, tuple(shape[i] for i in p) if p else shape, p)
    depthwise = op == "DEPTHWISE_CONV_2D" and len(shape) == 4 and shape[0] == 1
    if depthwise and channels > 0 and shape[3] % channels == 0:
        # [1, kh, kw, in * mult] -> [kh, kw, in, mult]
        return KerasForm(names, (shape[1], shape[2], channels, shape[3] // channels))
    return None


def to_keras(form: KerasForm, array: np.ndarray) -> np.ndarray:
    if form.perm is not None:
        return np.ascontiguousarray(array.transpose(form.perm))
    return array.reshape(form.shape)


class KerasLayout(Store):
    """A read-only view of a ``.tflite`` (or of its dequantized view, ``inner``) in which
    each kernel and bias the converter's ops name takes its Keras name, where the other
    model (``known``: its names) has it, and Keras's layout: what ``diff`` and
    ``verify`` compare with the model it came from. A moved tensor is read whole, once
    per pass (memory: one tensor)."""

    def __init__(self, inner: Store, tflite: TFLiteStore, known: set[str]) -> None:
        self.inner = inner
        self.path = inner.path
        self.meta = inner.meta
        self._forms: dict[str, tuple[KerasForm, TensorInfo]] = {}
        self._tensors: list[TensorInfo] = []
        used: set[str] = set()
        for t in inner.tensors():
            form = tflite._keras.get(t.path)
            name = None
            if form is not None:
                name = next((n for n in form.names if n in known and n not in used), None)
            if form is None or name is None:
                self._tensors.append(t)
                continue
            used.add(name)
            self._forms[t.path] = (form, t)
            self._tensors.append(replace(t, name=name, shape=form.shape, aliases=(t.name,)))

    def tensors(self) -> list[TensorInfo]:
        return list(self._tensors)

    def read(self, info: TensorInfo, block: Block | None = None) -> np.ndarray:
        if info.path not in self._forms:
            return self.inner.read(info, block)
        form, inner = self._forms[info.path]
        whole = to_keras(form, np.asarray(self.inner.read(inner)))
        return whole if block is None else whole[block.index]

    def blocks(
        self, info: TensorInfo, max_elems: int = BLOCK_ELEMS, align: tuple[int, int] | None = None
    ) -> Iterator[tuple[Block, np.ndarray]]:
        if info.path not in self._forms:
            yield from self.inner.blocks(info, max_elems, align)
            return
        whole = self.read(info)
        for block in split(info.shape, max_elems, align):
            yield block, whole[block.index]

    def _patch(self, out: Path, retype: dict[str, str]) -> Patcher:
        raise NotImplementedError("the Keras view of a .tflite is read-only")

    def close(self) -> None:
        self.inner.close()


def keras_view(view: Store, store: Store, other: Store) -> Store:
    """``view`` (a store, or its dequantized view) in Keras's names and layouts when
    ``store`` is a ``.tflite`` compared with a model of another format."""
    if not isinstance(store, TFLiteStore) or other.meta.format == FORMAT:
        return view
    return KerasLayout(view, store, {t.name for t in other.tensors()})


# -- writing --------------------------------------------------------------------------------

# Room left in front of the source's bytes for the prefix: in a model of ROOM_FROM_BYTES
# or more, ROOM beyond what the prefix needs with the source's history (the new entry
# fits in it); a smaller model gets a prefix of the exact size, its bytes moved once when
# the entry arrives (a kernel copy, as a safetensors header that outgrew its room).
ROOM = 64 * 1024
ROOM_FROM_BYTES = 64 * 1024 * 1024


def _align(n: int, to: int = PREFIX_ALIGN) -> int:
    return -(-n // to) * to


class _Prefix:
    """The bytes put in front of a patched model (see the module's docstring)."""

    def __init__(self, store: TFLiteStore, history: list[dict[str, Any]]) -> None:
        self.store = store
        self.history = json.dumps(history, separators=(",", ":"), ensure_ascii=False)
        self.size = len(self.build(0))  # the same for every prefix length (padded number)

    def build(self, length: int) -> bytes:
        """The prefix for source bytes that start at ``length`` (its own length, padded)."""
        store, flat, orig = self.store, self.store._flat, self.store._original

        def moved(src: int) -> int:  # where a position of the source lands in the copy
            return src - store._body + length

        out = bytearray(b"\0\0\0\0" + IDENTIFIER)
        vtable = len(out)
        present = [orig.field(i) is not None or i in (BUFFERS, METADATA) for i in range(8)]
        out += struct.pack("<HH", 4 + 2 * MODEL_FIELDS, 4 + 4 * MODEL_FIELDS)
        out += struct.pack(
            f"<{MODEL_FIELDS}H", *[4 + 4 * i if p else 0 for i, p in enumerate(present)]
        )
        table = len(out)
        struct.pack_into("<I", out, 0, table)
        out += struct.pack("<i", table - vtable) + bytes(4 * MODEL_FIELDS)
        buffers = _offsets(flat, orig, BUFFERS)
        entries = [at for at in _offsets(flat, orig, METADATA) if flat.table(at).text(0) != HISTORY]
        vec_buffers = len(out)
        out += struct.pack("<I", len(buffers) + 1) + bytes(4 * (len(buffers) + 1))
        vec_meta = len(out)
        out += struct.pack("<I", len(entries) + 1) + bytes(4 * (len(entries) + 1))
        # the history's Buffer table, its Metadata table, the name, the data
        out += struct.pack("<HHHH", 6, 8, 4, 0)
        new_buffer = len(out)
        out += struct.pack("<iI", 8, 0)
        out += struct.pack("<HHHH", 8, 12, 4, 8)
        new_entry = len(out)
        out += struct.pack("<iII", 8, 0, len(buffers))
        name = len(out)
        out += struct.pack("<I", len(HISTORY)) + HISTORY.encode() + b"\0"
        out += bytes(_align(len(out), 4) - len(out))
        doc = (
            '{"prefix": ' + str(length).ljust(20) + ', "history": ' + self.history + "}"
        ).encode()
        out += bytes(_align(len(out) + 4) - 4 - len(out))  # the data 16-byte aligned
        data = len(out)
        out += struct.pack("<I", len(doc)) + doc
        # the offsets, now that every position is known
        for i in range(MODEL_FIELDS):
            field = table + 4 + 4 * i
            if i == 0 and present[0]:
                struct.pack_into("<I", out, field, orig.scalar(0, "u32"))
            elif i == BUFFERS:
                struct.pack_into("<I", out, field, vec_buffers - field)
            elif i == METADATA:
                struct.pack_into("<I", out, field, vec_meta - field)
            elif present[i]:
                at = orig.field(i)
                assert at is not None
                struct.pack_into("<I", out, field, moved(flat.deref(at)) - field)
        for k, at in enumerate([*buffers, None]):
            slot = vec_buffers + 4 + 4 * k
            struct.pack_into("<I", out, slot, (new_buffer if at is None else moved(at)) - slot)
        for k, at in enumerate([*entries, None]):
            slot = vec_meta + 4 + 4 * k
            struct.pack_into("<I", out, slot, (new_entry if at is None else moved(at)) - slot)
        struct.pack_into("<I", out, new_buffer + 4, data - (new_buffer + 4))
        struct.pack_into("<I", out, new_entry + 4, name - (new_entry + 4))
        if length:
            if len(out) > length:
                raise ValueError("the prefix outgrew its length")
            out += bytes(length - len(out))
        return bytes(out)


def _offsets(flat: Flat, table: Table, i: int) -> list[int]:
    """The positions of the tables a vector field lists."""
    at = table.field(i)
    if at is None:
        return []
    start, n = flat.vector(at, 4)
    return [flat.deref(start + 4 * k) for k in range(n)]


class TFLitePatcher(Patcher):
    """A patched copy of a ``.tflite``: changed tensors written over their bytes, the
    source's bytes copied by the kernel behind a prefix (see the module's docstring)."""

    def __init__(self, store: TFLiteStore, out: Path) -> None:
        super().__init__()
        self.store = store
        self.out = out
        size = store.path.stat().st_size
        need = _Prefix(store, store.meta.history).size
        self.room = _align(need + (ROOM if size - store._body >= ROOM_FROM_BYTES else 0))
        self.tmp = temp_beside(out)
        self.hashes: dict[str, Any] = {}
        self.history: list[dict[str, Any]] | None = None
        self.prefix_bytes = 0
        try:
            self.copy: RangeCopy | None = RangeCopy(
                store.path, self.tmp, store._body, size - store._body, self.room
            )
        except BaseException:
            temps.remove(self.tmp)
            raise

    @property
    def bytes_written(self) -> int:
        return (self.copy.bytes_written if self.copy else 0) + self.prefix_bytes

    def _begin(self, info: TensorInfo, dtype: str) -> None:
        if dtype != info.dtype:
            raise ValueError(f"{info.name}: a dtype change was not planned")
        if self.store._consts[info.path].csr is not None:
            raise UnsupportedError(
                f"{self.store.path}: {info.name!r} is stored sparse (the converter's CSR "
                "rows): it is read, not written; leave it out, or change the model and "
                "convert it again"
            )
        import blake3

        self.hashes[info.path] = blake3.blake3()

    def _write(self, info: TensorInfo, block: Block, data: np.ndarray) -> None:
        assert self.copy is not None
        const = self.store._consts[info.path]
        dtype = to_numpy(info.dtype).newbyteorder("<")
        raw = np.ascontiguousarray(data, dtype=dtype).reshape(-1).view(np.uint8)
        self.copy.write(raw.data, const.at - self.store._body + block.first * dtype.itemsize)
        self.hashes[info.path].update(raw.data)

    def _set_history(self, history: list[dict[str, Any]]) -> None:
        self.history = history

    def _check_shared(self) -> None:
        """A buffer that several tensors share is written only when every one of them
        was, each with the same bytes: else one tensor's change would silently change
        the other (or be lost)."""
        for path in self.hashes:
            info = next(t for t in self.store.tensors() if t.path == path)
            for other in self.store.sharers(info):
                if other.path not in self.hashes:
                    raise UnsupportedError(
                        f"{self.store.path}: {info.name!r} shares its buffer with "
                        f"{other.name!r}, which was not selected: select both (they hold "
                        "the same bytes), or neither; nothing written"
                    )
                if self.hashes[other.path].digest() != self.hashes[path].digest():
                    raise UnsupportedError(
                        f"{self.store.path}: {info.name!r} and {other.name!r} share one "
                        "buffer and would get different values; nothing written"
                    )

    def _commit(self) -> None:
        assert self.copy is not None
        self._check_shared()
        prefix = _Prefix(self.store, self.history or [])
        length = self.room if prefix.size <= self.room else _align(prefix.size)
        self._move_offsets(length)
        self.copy.finish()
        final = self.tmp
        if length != self.room:  # the history outgrew the room: the copy moves once
            final = temp_beside(self.out)
            body = self.tmp.stat().st_size - self.room
            src_fd, dst_fd = os.open(self.tmp, os.O_RDONLY), os.open(final, os.O_WRONLY)
            try:
                os.ftruncate(dst_fd, length + body)
                copy_range(src_fd, dst_fd, 0, body, self.room, length)
            finally:
                os.close(src_fd)
                os.close(dst_fd)
            temps.remove(self.tmp)
            self.tmp = final
        head = prefix.build(length)
        fd = os.open(final, os.O_WRONLY)
        try:
            done = 0
            while done < len(head):
                done += os.pwrite(fd, head[done:], done)
        except OSError as exc:
            raise OutputError(f"{self.out}: cannot write: {exc.strerror or exc}") from exc
        finally:
            os.close(fd)
        self.prefix_bytes = len(head)
        publish(final, self.out, self.overwrite)

    def _move_offsets(self, length: int) -> None:
        """Buffers stored by absolute offset (a model over 2 GB) move with the copy."""
        assert self.copy is not None
        flat, store = self.store._flat, self.store
        for at in _offsets(flat, store._original, BUFFERS):
            buffer = flat.table(at)
            field = buffer.field(1)
            if field is None:
                continue
            offset = flat.u64(field)
            if offset > 1:
                moved = offset - store._body + length
                self.copy.write(struct.pack("<Q", moved), field - store._body)

    def _abort(self) -> None:
        if self.copy is not None:
            self.copy.close()
            self.copy = None
        temps.remove(self.tmp)
