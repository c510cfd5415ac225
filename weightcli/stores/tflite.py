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
stores them). Writing a ``.tflite`` is not supported yet: ``inspect``, ``diff``, ``dump``
and ``verify`` read it.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from weightcli.dtypes import to_numpy
from weightcli.errors import CorruptError, InputError, UnsupportedError
from weightcli.stores.base import Block, Patcher, Store, StoreMeta
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
    scale: tuple[float, ...] = ()
    zero_point: tuple[int, ...] = ()
    axis: int = 0


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
        try:
            self._read(Flat(self._map, str(path)))
        except BaseException:
            self.close()
            raise

    def _read(self, flat: Flat) -> None:
        model = flat.table(flat.u32(0))
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
        seen: set[str] = set()
        for g, graph in enumerate(subgraphs):
            tensors = graph.tables(0)
            # tensor index -> (op name, kind, the tensor that names the op's layer: its kernel)
            roles: dict[int, tuple[str, str, int]] = {}
            operators = graph.tables(3)
            # float16 (and some int8) weights reach their op through a DEQUANTIZE: the
            # constant behind its output plays the role
            behind: dict[int, int] = {}
            for operator in operators:
                index = operator.scalar(0, "u32")
                if index < len(codes) and codes[index] == DEQUANTIZE:
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
                for position, t in enumerate(inputs):
                    if t >= 0 and t not in roles and position in kinds:
                        roles[t] = (name, kinds[position], owner)
            for i, tensor in enumerate(tensors):
                found = self._constant(flat, tensor, buffers)
                if found is None:
                    continue
                info, const = found
                op_name, kind, owner = roles.get(
                    i, (None, "weight" if info.ndim >= 2 else "constant", i)
                )
                name = info.name if len(subgraphs) == 1 else f"subgraph_{g}/{info.name}"
                named_by = tensors[owner].text(3) if 0 <= owner < len(tensors) else None
                while name in seen:  # the converter may name two constants alike
                    name += "_"
                seen.add(name)
                path = f"{g}:{i}"
                layer, _, _ = (named_by or name).rpartition("/")
                self._infos.append(
                    TensorInfo(
                        name=name, path=path, dtype=info.dtype, shape=info.shape, kind=kind,
                        layer=layer or None, layer_class=op_name,
                        quantized="int8" if const.scale and info.dtype in ("int8", "uint8", "int16") else None,
                    )
                )  # fmt: skip
                self._consts[path] = const
        self.meta = StoreMeta(
            format=FORMAT,
            format_label=LABEL,
            writer=model.text(3),
            extra={"schema version": version, "subgraphs": len(subgraphs), "buffers": len(buffers)},
        )

    def _constant(
        self, flat: Flat, tensor: Table, buffers: list[Table]
    ) -> tuple[TensorInfo, Constant] | None:
        index = tensor.scalar(2, "u32")
        if index == 0 or index >= len(buffers):
            return None  # buffer 0 is the empty sentinel: not a constant
        dtype = TYPES.get(tensor.scalar(1, "u8"))
        if dtype is None:
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
        need = math.prod(shape) * to_numpy(dtype).itemsize
        name = tensor.text(3) or f"tensor_{index}"
        if need != nbytes:
            raise CorruptError(
                f"{flat.label}: tensor {name!r}: {nbytes} bytes for a {dtype} of shape {shape}"
            )
        scale: tuple[float, ...] = ()
        zero: tuple[int, ...] = ()
        axis = 0
        q = tensor.sub(4)
        if q is not None:
            s = q.field(2)
            if s is not None:
                start, n = flat.vector(s, 4)
                scale = tuple(struct.unpack_from(f"<{n}f", flat.buf, start))
            z = q.field(3)
            if z is not None:
                start, n = flat.vector(z, 8)
                zero = tuple(struct.unpack_from(f"<{n}q", flat.buf, start))
            axis = q.scalar(6, "i32")
        info = TensorInfo(name=name, path="", dtype=dtype, shape=shape, kind="")
        return info, Constant(at, nbytes, scale, zero, axis)

    def tensors(self) -> list[TensorInfo]:
        return list(self._infos)

    def quantization(self, info: TensorInfo) -> Constant:
        """A constant's place and its quantization (scales, zero points, axis)."""
        return self._consts[info.path]

    def read(self, info: TensorInfo, block: Block | None = None) -> np.ndarray:
        const = self._consts[info.path]
        dtype = to_numpy(info.dtype)
        first, shape = (block.first, block.shape) if block is not None else (0, info.shape)
        start = const.at + first * dtype.itemsize
        count = math.prod(shape)
        assert self._map is not None
        raw = self._map[start : start + count * dtype.itemsize]
        return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(shape)

    def _patch(self, out: Path, retype: dict[str, str]) -> Patcher:
        raise UnsupportedError(
            f"{self.path}: writing a .tflite is not supported yet (inspect, diff, dump and "
            "verify read it); patch the model it was converted from and convert again"
        )

    def close(self) -> None:
        mapped = getattr(self, "_map", None)
        if mapped is not None:
            mapped.close()
            self._map = None
        self.drop_local_copy()
