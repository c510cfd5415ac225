"""TensorFlow SavedModels and TF checkpoints, read and patched without TensorFlow.

A TF checkpoint is a TensorBundle: ``prefix.index`` (a sorted table of
BundleEntryProto: dtype, shape, shard, offset, size, crc32c) and
``prefix.data-NNNNN-of-MMMMM`` shards of raw little-endian bytes. A SavedModel
directory holds one under ``variables/variables`` plus ``saved_model.pb``.

Names: checkpoint keys are object-graph paths, not names. The checkpoint's own
``_CHECKPOINTABLE_OBJECT_GRAPH`` (a TrackableObjectGraph) maps each key to a node;
the same node id in saved_model.pb's SavedObjectGraph carries the variable's name
(``dense_1/kernel``), and the checkpoint records it too (``full_name``). A variable
the model reaches only through its optimizer (or metrics, or the save counter),
and every ``.OPTIMIZER_SLOT``, is optimizer state. Keys that hold the same
variable (Keras 3 ``export`` stores each twice) are grouped: one tensor, its
copies counted, every copy rewritten alike. TF1 bundles have no object graph:
their keys are the names.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import google_crc32c
import numpy as np

from weightcli.dtypes import itemsize, to_numpy
from weightcli.errors import CorruptError, InputError, OutputError, UnsupportedError
from weightcli.stores import capped, naming, temps, tfproto, tftable
from weightcli.stores.base import (
    BLOCK_ELEMS,
    Block,
    Format,
    Patcher,
    Store,
    StoreMeta,
    clean_history,
    split,
)
from weightcli.stores.detect import checkpoint_prefix, index_path, state_file_target
from weightcli.stores.links import check_inside, refuse_links_out
from weightcli.stores.output import publish, remove, temp_beside, temp_dir_beside
from weightcli.stores.rangecopy import RangeCopy
from weightcli.stores.remote import is_url
from weightcli.tensor import TensorInfo

DTYPES = {
    1: "float32",
    2: "float64",
    3: "int32",
    4: "uint8",
    5: "int16",
    6: "int8",
    7: "string",
    9: "int64",
    10: "bool",
    14: "bfloat16",
    17: "uint16",
    19: "float16",
    22: "uint32",
    23: "uint64",
}
OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
# Edges of the object graph that lead away from the model's own weights.
NON_MODEL_EDGES = {
    "optimizer",
    "keras_api",
    "_metrics",
    "metrics",
    "save_counter",
    "_self_unconditional_checkpoint_dependencies",
}
HISTORY_FILE = "weightcli_history.json"


def shard_name(prefix: Path, shard: int, num: int) -> Path:
    return prefix.with_name(f"{prefix.name}.data-{shard:05d}-of-{num:05d}")


@dataclass
class Entry:
    key: str
    raw: bytes  # the serialized BundleEntryProto as stored
    proto: Any

    @property
    def dtype(self) -> str:
        return DTYPES.get(self.proto.dtype, f"dtype{self.proto.dtype}")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d.size) for d in self.proto.shape.dim)


class Bundle:
    """One TensorBundle (``prefix.index`` + data shards)."""

    def __init__(self, prefix: Path) -> None:
        self.prefix = prefix
        self.index_path = prefix.with_name(prefix.name + ".index")
        label = str(self.index_path)
        data = capped.read_bytes(self.index_path, capped.INDEX_BYTES, "checkpoint index")
        self.header_raw = b""
        self.entries: dict[str, Entry] = {}
        for key, value in tftable.read_table(data, label):
            if key == b"":
                self.header_raw = value
                continue
            proto = tfproto.BundleEntryProto()
            try:
                proto.ParseFromString(value)
            except Exception as exc:
                raise CorruptError(f"{label}: damaged entry for {key!r}") from exc
            name = key.decode("utf-8", "replace")
            if len(proto.slices):
                raise UnsupportedError(
                    f"{label}: {name} is a partitioned (sliced) variable: not supported"
                )
            self.entries[name] = Entry(name, value, proto)
        header = tfproto.BundleHeaderProto()
        header.ParseFromString(self.header_raw)
        if header.endianness != 0:
            raise UnsupportedError(f"{label}: big-endian checkpoints are not supported")
        self.num_shards = max(1, int(header.num_shards))
        self._files: dict[int, BinaryIO] = {}
        sizes: dict[int, int] = {}
        for shard in range(self.num_shards):
            path = shard_name(prefix, shard, self.num_shards)
            if not path.is_file():
                raise CorruptError(f"{path}: data shard missing")
            sizes[shard] = path.stat().st_size
        for e in self.entries.values():
            _validate(e, label, self.num_shards, sizes)

    def file(self, shard: int) -> BinaryIO:
        if shard not in self._files:
            self._files[shard] = shard_name(self.prefix, shard, self.num_shards).open("rb")
        return self._files[shard]

    def read_bytes(self, e: Entry, start: int = 0, length: int | None = None) -> bytes:
        f = self.file(e.proto.shard_id)
        f.seek(e.proto.offset + start)
        n = e.proto.size - start if length is None else length
        data = f.read(n)
        if len(data) != n:
            raise CorruptError(f"{self.prefix}: tensor {e.key} is truncated")
        return data

    def check(self, e: Entry) -> None:
        """Verify a tensor's crc32c as TensorFlow does (masked crc of its bytes).

        For string tensors TensorFlow checksums each length as a little-endian uint32
        (uint64 past 4 GiB), not as the varint it stores, then the stored 4-byte
        checksum of the lengths, then the bytes.
        """
        if e.dtype == "string":
            crc = _string_crc(self.read_bytes(e), e)
            if tftable.mask(crc) != e.proto.crc32c:
                raise CorruptError(
                    f"{self.prefix}: checksum mismatch in tensor {e.key} (damaged data shard)"
                )
            return
        value = crc32c_of(self.file(e.proto.shard_id), e.proto.offset, e.proto.size)
        if value is None:
            raise CorruptError(f"{self.prefix}: tensor {e.key} is truncated")
        if tftable.mask(value) != e.proto.crc32c:
            raise CorruptError(
                f"{self.prefix}: checksum mismatch in tensor {e.key} (damaged data shard)"
            )

    def read_strings(self, e: Entry) -> list[bytes]:
        """A string tensor: varint lengths, a 4-byte checksum of them, then the bytes."""
        data = self.read_bytes(e)
        n = int(np.prod(e.shape, dtype=np.int64)) if e.shape else 1
        lengths = []
        pos = 0
        for _ in range(n):
            length, pos = _varint(data, pos, self.prefix, e)
            lengths.append(length)
        pos += 4
        out = []
        for length in lengths:
            out.append(data[pos : pos + length])
            pos += length
        return out

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()


def _validate(e: Entry, label: str, num_shards: int, sizes: dict[int, int]) -> None:
    """Everything an index entry claims, checked before anything is allocated for it:
    a known dtype, dimensions >= 0, a shard that exists, a byte range inside it, and for
    numeric tensors a size equal to the shape's element count times the item size."""
    p = e.proto
    where = f"{label}: tensor {e.key}"
    if p.dtype not in DTYPES:
        raise CorruptError(f"{where} has an unknown dtype ({p.dtype})")
    dims = [int(d.size) for d in p.shape.dim]
    if any(d < 0 for d in dims):
        raise CorruptError(f"{where} has a negative dimension {dims}")
    if not 0 <= p.shard_id < num_shards:
        raise CorruptError(f"{where} names data shard {p.shard_id} of {num_shards}")
    if p.offset < 0 or p.size < 0:
        raise CorruptError(f"{where} has a negative offset or size")
    if p.offset + p.size > sizes[p.shard_id]:
        raise CorruptError(f"{where} lies beyond the end of its data shard (truncated?)")
    if e.dtype != "string":
        count = 1
        for d in dims:
            count *= d
        want = count * itemsize(e.dtype)
        if want != p.size:
            raise CorruptError(
                f"{where}: its shape {dims} needs {want} bytes, the index says {p.size}"
            )


def crc32c_of(f: BinaryIO, offset: int, size: int) -> int | None:
    """crc32c of bytes [offset, offset + size) of ``f``, 1 MiB at a time (a block's
    worth: 16 MiB reads were the largest allocation of a SavedModel transform); None when
    the file ends first."""
    f.seek(offset)
    crc = 0
    left = size
    while left:
        chunk = f.read(min(left, 1 << 20))
        if not chunk:
            return None
        crc = google_crc32c.extend(crc, chunk)
        left -= len(chunk)
    return crc


def _varint(data: bytes, pos: int, where: object, e: Entry) -> tuple[int, int]:
    try:
        return tftable.varint(data, pos)
    except CorruptError as exc:
        raise CorruptError(f"{where}: string tensor {e.key}: {exc}") from None


def _string_crc(data: bytes, e: Entry) -> int:
    n = int(np.prod(e.shape, dtype=np.int64)) if e.shape else 1
    crc = 0
    pos = 0
    for _ in range(n):
        length, pos = _varint(data, pos, "checkpoint", e)
        width = 4 if length <= 0xFFFFFFFF else 8
        crc = google_crc32c.extend(crc, length.to_bytes(width, "little"))
    return int(google_crc32c.extend(crc, data[pos:]))


@dataclass
class _Variable:
    """One stored key while a checkpoint's tensors are named: what the object graph (or
    the names) say of it."""

    key: str
    name: str | None  # the variable's scoped name, when known
    fallback: str  # the key without its suffix: the name when two variables share one
    optimizer: bool  # training state, not a model weight
    trainable: bool | None  # the SavedModel's own word, where it has one
    entry: Entry
    order: int  # first visit in the object graph, walked in its children's order


class TFStore(Store):
    """A SavedModel directory or a TF checkpoint."""

    def cannot_compress(self) -> str | None:
        return (
            "a TensorFlow checkpoint's data shards have no compressed form (TensorFlow reads "
            "them raw, by offset): compress the folder for transport instead (tar with zstd)"
        )

    def __init__(self, path: Path, kind: Format) -> None:
        self.path = path
        self.kind = kind
        self.saved_object_graph: Any = None
        self.keras_classes: dict[str, str] = {}
        self._keras_nodes: dict[str, dict[str, Any]] = {}  # keras_metadata.pb: path -> JSON
        writer = None
        tags: list[str] = []
        if kind == Format.SAVEDMODEL:
            if not (path / "saved_model.pb").is_file():
                raise UnsupportedError(
                    f"{path}: only binary saved_model.pb is supported (found saved_model.pbtxt)"
                )
            sm = tfproto.SavedModel()
            try:
                sm.ParseFromString(
                    capped.read_bytes(path / "saved_model.pb", capped.GRAPH_BYTES, "saved_model.pb")
                )
            except Exception as exc:
                raise CorruptError(f"{path}/saved_model.pb: damaged protobuf") from exc
            if sm.meta_graphs:
                mg = sm.meta_graphs[0]
                tags = list(mg.meta_info_def.tags)
                if mg.meta_info_def.tensorflow_version:
                    writer = f"TensorFlow {mg.meta_info_def.tensorflow_version}"
                if mg.HasField("object_graph_def") and len(mg.object_graph_def.nodes):
                    self.saved_object_graph = mg.object_graph_def
                    self._user_object_classes()
            self._keras_metadata()
            prefix = path / "variables" / "variables"
            if not prefix.with_name("variables.index").is_file():
                raise CorruptError(f"{path}: SavedModel without variables/variables.index")
        else:
            found = checkpoint_prefix(path)
            if found is None:
                raise InputError(f"{path}: no checkpoint index in this directory")
            prefix = found
            if not index_path(prefix).is_file():
                raise InputError(f"{path}: no checkpoint index {prefix}.index")
        self.prefix = prefix
        self.bundle = Bundle(prefix)
        self._tensors, self._entries = self._name_tensors()
        self.meta = StoreMeta(
            format=kind,
            format_label="TensorFlow SavedModel"
            if kind == Format.SAVEDMODEL
            else "TensorFlow checkpoint",
            writer=writer,
            has_config=bool(self.keras_classes),
            history=self._read_history(),
            extra={"tags": ",".join(tags)} if tags else {},
        )
        if kind == Format.TF_CHECKPOINT:
            self.meta.extra["prefix"] = str(prefix)
            if path.is_dir() and prefix == path / "variables" / "variables":
                self.meta.extra["note"] = (
                    "no saved_model.pb in this folder: its variables read as a TF checkpoint "
                    "(no graph to load)"
                )
            elif (
                path.is_dir()
                and (named := state_file_target(path)) is not None
                and named not in (str(prefix), prefix.name)
            ):
                self.meta.extra["note"] = (
                    f"its checkpoint file names {named} (written elsewhere): read "
                    f"{prefix.name} in this folder"
                )
        if self.bundle.num_shards > 1:
            self.meta.extra["shards"] = self.bundle.num_shards

    # -- names -------------------------------------------------------------------------------

    def _user_object_classes(self) -> None:
        for node in self.saved_object_graph.nodes:
            meta = (
                naming.parse_json(node.user_object.metadata) if node.user_object.metadata else None
            )
            if isinstance(meta, dict) and meta.get("class_name") and meta.get("name"):
                self.keras_classes.setdefault(meta["name"], meta["class_name"])

    def _graph_trainables(self) -> set[str] | None:
        """A TF1 checkpoint's graph (``prefix.meta`` beside it): its trainable variables."""
        meta = (
            self.prefix.with_name(self.prefix.name + ".meta")
            if self.kind == Format.TF_CHECKPOINT
            else None
        )
        if meta is None or not meta.is_file():
            return None
        graph = tfproto.MetaGraphDef()
        try:
            graph.ParseFromString(capped.read_bytes(meta, capped.GRAPH_BYTES, "graph (.meta)"))
        except Exception:  # a graph it cannot read: the name rules decide
            return None
        return tfproto.trainable_variables(graph)

    def _keras_metadata(self) -> None:
        p = self.path / "keras_metadata.pb"
        if not p.is_file():
            return
        md = tfproto.SavedMetadata()
        try:
            md.ParseFromString(capped.read_bytes(p, capped.GRAPH_BYTES, "keras_metadata.pb"))
        except Exception:
            return
        for node in md.nodes:
            meta = naming.parse_json(node.metadata)
            if isinstance(meta, dict) and meta.get("class_name") and meta.get("name"):
                self.keras_classes.setdefault(meta["name"], meta["class_name"])
            if isinstance(meta, dict):
                self._keras_nodes[node.node_path] = meta

    def _object_graph(self) -> Any:
        e = self.bundle.entries.get(OBJECT_GRAPH_KEY)
        if e is None:
            return None
        self.bundle.check(e)
        (blob,) = self.bundle.read_strings(e)
        tog = tfproto.TrackableObjectGraph()
        try:
            tog.ParseFromString(blob)
        except Exception as exc:
            raise CorruptError(f"{self.prefix}: damaged object graph") from exc
        return tog

    def _name_tensors(self) -> tuple[list[TensorInfo], dict[str, Entry]]:
        entries = self.bundle.entries
        tog = self._object_graph()
        by_key: dict[str, tuple[int, Any]] = {}
        model_nodes: set[int] = set()
        if tog is not None and len(tog.nodes):
            for node_id, node in enumerate(tog.nodes):
                for attr in node.attributes:
                    by_key[attr.checkpoint_key] = (node_id, attr)
            stack = [0]
            while stack:
                n = stack.pop()
                if n in model_nodes or n >= len(tog.nodes):
                    continue
                model_nodes.add(n)
                stack.extend(
                    c.node_id for c in tog.nodes[n].children if c.local_name not in NON_MODEL_EDGES
                )
        trainable = self._graph_trainables() if tog is None else None
        # Model order: the object graph walked from its root, children in the order the
        # model lists them (layer_with_weights-0 before -1, a layer's kernel before its
        # bias), the first visit of each node counting.
        order: dict[int, int] = {}
        if tog is not None and len(tog.nodes):
            walk = [0]
            while walk:
                n = walk.pop()
                if n in order or n >= len(tog.nodes):
                    continue
                order[n] = len(order)
                walk.extend(c.node_id for c in reversed(tog.nodes[n].children))
        records: list[_Variable] = []
        for key, e in entries.items():
            if key == OBJECT_GRAPH_KEY:
                continue
            var_name = None
            optimizer = False
            trained: bool | None = None  # the SavedModel's own word: a trainable variable
            if key in by_key:
                node_id, attr = by_key[key]
                if self.saved_object_graph is not None and node_id < len(
                    self.saved_object_graph.nodes
                ):
                    variable = self.saved_object_graph.nodes[node_id].variable
                    var_name = variable.name or None
                    trained = bool(variable.trainable) if var_name else None
                var_name = var_name or attr.full_name or None
                optimizer = ".OPTIMIZER_SLOT" in key or node_id not in model_nodes
            elif tog is None:
                var_name = key
                optimizer = naming.looks_like_optimizer(key, e.dtype, e.shape)
                if trainable is not None and key not in trainable and not optimizer:
                    # With its graph (a TF1 Saver's .meta): a slot of a trainable
                    # variable (w/Momentum, w/ExponentialMovingAverage) is training state.
                    optimizer = any(key.startswith(t + "/") for t in trainable)
            else:
                optimizer = True  # a key the object graph does not describe
            fallback = key[: -len(VALUE_SUFFIX)] if key.endswith(VALUE_SUFFIX) else key
            records.append(
                _Variable(
                    key=key,
                    name=naming.strip_suffix(var_name) if var_name else None,
                    fallback=fallback,
                    optimizer=optimizer,
                    trainable=trained,
                    entry=e,
                    order=order.get(by_key[key][0], len(order)) if key in by_key else len(order),
                )
            )
        # Group the keys holding one variable (same scoped name, dtype and shape).
        groups: dict[tuple[Any, ...], list[_Variable]] = defaultdict(list)
        for r in records:
            e = r.entry
            if r.name and "/" in r.name and tog is not None:
                groups[(r.name, e.dtype, e.shape, r.optimizer)].append(r)
            else:
                groups[("key", r.key)].append(r)
        merged = []
        for members in groups.values():
            # The serving signature reads `variables/<i>`; list that copy first.
            members.sort(key=lambda r: (r.key.startswith("_all_variables/"), r.key))
            merged.append((members[0], tuple(m.key for m in members[1:])))
        # Unique names; where two distinct variables share one, use their keys.
        counts: dict[str, int] = defaultdict(int)
        for r, _ in merged:
            counts[r.name or ""] += 1
        for r, _ in merged:
            if not r.name or counts[r.name] > 1:
                r.name = r.fallback
        model_names = [r.name or r.fallback for r, _ in merged if not r.optimizer]
        # The shared first part (the model's name, TF 2.1's ``sequential/``) is decided
        # over the trainable weights where the SavedModel says which they are: metric and
        # other state variables kept beside them do not spoil it.
        trainable_names = [
            r.name or r.fallback for r, _ in merged if not r.optimizer and r.trainable
        ]
        root = (
            naming.strip_common_root(trainable_names or model_names, None, self.keras_classes)
            if tog is not None
            else None
        )
        tensors = []
        by_path: dict[str, Entry] = {}

        def model_order(m: tuple[_Variable, tuple[str, ...]]) -> tuple[Any, ...]:
            r = m[0]
            # Without an object graph (TF1): the names' order, numbers compared as numbers.
            natural = [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", r.key)]
            return (r.optimizer, r.order, natural)

        for r, copies in sorted(merged, key=model_order):
            name = r.name or r.fallback
            if root and not r.optimizer and name.startswith(root + "/"):
                name = name[len(root) + 1 :]
            e = r.entry
            parts = name.split("/")
            layer = parts[-2] if len(parts) >= 2 and not r.optimizer else None
            tensors.append(
                TensorInfo(
                    name=name,
                    path=r.key,
                    dtype=e.dtype,
                    shape=e.shape,
                    kind="optimizer" if r.optimizer else naming.kind_of(name),
                    layer=layer,
                    layer_class=self.keras_classes.get(layer or ""),
                    optimizer=r.optimizer,
                    copies=copies,
                )
            )
            by_path[r.key] = e
            for c in copies:
                by_path[c] = entries[c]
        if OBJECT_GRAPH_KEY in entries:
            e = entries[OBJECT_GRAPH_KEY]
            tensors.append(
                TensorInfo(
                    OBJECT_GRAPH_KEY,
                    OBJECT_GRAPH_KEY,
                    "string",
                    e.shape,
                    "object_graph",
                    optimizer=True,
                )
            )
            by_path[OBJECT_GRAPH_KEY] = e
        return tensors, by_path

    # -- reading -----------------------------------------------------------------------------

    @property
    def target(self) -> Path:
        return self.prefix if self.kind == Format.TF_CHECKPOINT else self.path

    def history_path(self, root: Path | None = None) -> Path:
        """Where the history lives: in a SavedModel folder ``root`` (default: this one),
        or beside a checkpoint prefix ``root`` (default: this one)."""
        if self.kind == Format.SAVEDMODEL:
            return (root or self.path) / "assets.extra" / HISTORY_FILE
        prefix = root or self.prefix
        return prefix.with_name(prefix.name + "." + HISTORY_FILE)

    def _read_history(self) -> list[dict[str, Any]]:
        p = self.history_path()
        if not p.is_file():
            return []
        parsed = naming.parse_json(
            capped.read_bytes(p, capped.HISTORY_BYTES, "history").decode(errors="replace")
        )
        return clean_history(parsed)

    def tensors(self) -> list[TensorInfo]:
        return list(self._tensors)

    def entry(self, key: str) -> Entry:
        return self._entries[key]

    def read(self, info: TensorInfo, block: Block | None = None) -> np.ndarray:
        e = self._entries[info.path]
        if info.dtype == "string":
            return np.array(self.bundle.read_strings(e), dtype=object).reshape(info.shape)
        dt = to_numpy(info.dtype)
        if block is None:
            return np.frombuffer(self.bundle.read_bytes(e), dtype=dt).reshape(info.shape)
        data = self.bundle.read_bytes(e, block.first * dt.itemsize, block.size * dt.itemsize)
        return np.frombuffer(data, dtype=dt).reshape(block.shape)

    def blocks(
        self,
        info: TensorInfo,
        max_elems: int = BLOCK_ELEMS,
        align: tuple[int, int] | None = None,
    ) -> Iterator[tuple[Block, np.ndarray]]:
        """Blocks of the tensor's primary copy, its crc32c verified on the way (one read)."""
        e = self._entries[info.path]
        if info.dtype == "string":
            self.bundle.check(e)
            yield Block(tuple(0 for _ in info.shape), info.shape, 0), self.read(info)
            return
        dt = to_numpy(info.dtype)
        crc = 0
        for block in split(info.shape, max_elems, align):
            raw = self.bundle.read_bytes(e, block.first * dt.itemsize, block.size * dt.itemsize)
            crc = google_crc32c.extend(crc, raw)
            yield block, np.frombuffer(raw, dtype=dt).reshape(block.shape)
        if tftable.mask(crc) != e.proto.crc32c:
            raise CorruptError(
                f"{self.prefix}: checksum mismatch in tensor {e.key} (damaged data shard)"
            )
        # The other stored copies of this variable too: a transform rewrites them all, so
        # damage in one must be seen, not overwritten with a fresh checksum.
        for key in info.copies:
            self.bundle.check(self._entries[key])

    def read_copy(self, info: TensorInfo, key: str) -> np.ndarray:
        """One stored copy of a variable (``key`` is ``info.path`` or one of ``info.copies``)."""
        e = self._entries[key]
        return np.frombuffer(self.bundle.read_bytes(e), dtype=to_numpy(info.dtype)).reshape(
            info.shape
        )

    def check(self, info: TensorInfo) -> None:
        for key in (info.path, *info.copies):
            self.bundle.check(self._entries[key])

    def supports_dtype(self, dtype: str) -> str | None:
        return "the graph fixes every variable's dtype and shape: a TensorFlow checkpoint edit may change values only"

    def _patch(self, out: Path, retype: dict[str, str]) -> Patcher:
        if retype:
            raise UnsupportedError(f"{self.path}: {self.supports_dtype('')}")
        return TFPatcher(self, out)

    def close(self) -> None:
        self.bundle.close()


def _copy(src: str | Path, dst: str | Path) -> None:
    shutil.copyfile(src, dst)
    shutil.copymode(src, dst)


class TFPatcher(Patcher):
    """A copy of the SavedModel directory (or checkpoint files) with patched data shards
    and a rewritten index (new crc32c for the changed tensors, new block checksums).
    Everything else keeps its bytes. Built in a temporary folder beside OUT, then
    renamed into place (for a checkpoint prefix: the shards first, the index last).
    """

    def __init__(self, store: TFStore, out: Path) -> None:
        super().__init__()
        self.store = store
        self.out = out
        self.tmp = temp_dir_beside(out)
        self._meta_bytes = 0  # index and history, written anew
        self.changed: set[str] = set()
        # Per changed tensor: (bytes written in order from its start, their crc32c).
        self.crcs: dict[str, tuple[int, int]] = {}
        b = store.bundle
        shards = [shard_name(b.prefix, s, b.num_shards) for s in range(b.num_shards)]
        self._copies: list[RangeCopy] = []
        try:
            if store.kind == Format.SAVEDMODEL:
                self.root = self.tmp / "model"
                skip = {p.resolve() for p in shards}
                refuse_links_out(store.path)
                shutil.copytree(
                    store.path,
                    self.root,
                    symlinks=True,  # links are copied as links, never read through
                    copy_function=_copy,
                    ignore=lambda d, names: [n for n in names if (Path(d) / n).resolve() in skip],
                )
                self.new_prefix = self.root / "variables" / "variables"
            else:
                self.root = self.tmp
                self.new_prefix = self.tmp / out.name
                _copy(b.index_path, self.new_prefix.with_name(self.new_prefix.name + ".index"))
                # A TF1 Saver's graph (``prefix.meta``) comes along: the output restores
                # into the same graph (a weight edit changes no variable's name or shape).
                meta = b.prefix.with_name(b.prefix.name + ".meta")
                if meta.is_file():
                    check_inside(meta.parent, meta)
                    _copy(meta, self.new_prefix.with_name(self.new_prefix.name + ".meta"))
            # Data shards: only the bytes of changed tensors are written anew; the rest
            # is copied in the kernel when the output is committed.
            for s, src in enumerate(shards):
                dst = shard_name(self.new_prefix, s, b.num_shards)
                dst.touch()
                shutil.copymode(src, dst)
                self._copies.append(RangeCopy(src, dst))
        except (OSError, shutil.Error) as exc:
            self._close_copies()
            temps.remove(self.tmp)
            raise OutputError(f"{out}: cannot write: {_first_os_error(exc)}") from exc
        except BaseException:
            self._close_copies()
            temps.remove(self.tmp)
            raise

    def _close_copies(self) -> None:
        for c in self._copies:
            c.close()

    @property
    def bytes_written(self) -> int:
        return self._meta_bytes + sum(c.bytes_written for c in self._copies)

    def _begin(self, info: TensorInfo, dtype: str) -> None:
        if dtype != info.dtype:
            raise UnsupportedError(f"{info.name}: {self.store.supports_dtype(dtype)}")

    def _write(self, info: TensorInfo, block: Block, data: np.ndarray) -> None:
        dt = to_numpy(info.dtype)
        raw = np.ascontiguousarray(data, dtype=dt).view()  # (no copy of a contiguous block)
        raw.flags.writeable = False  # (google_crc32c takes read-only buffers only)
        at = block.first * dt.itemsize
        # Blocks arrive in storage order: the crc32c of a tensor written from its start
        # to its end is known without reading it back (once: every copy holds these bytes).
        done, crc = self.crcs.get(info.path, (0, 0))
        if done == at:
            value = (done + raw.nbytes, google_crc32c.extend(crc, raw))
            for key in (info.path, *info.copies):
                self.crcs[key] = value
        for key in (info.path, *info.copies):
            e = self.store.entry(key)
            self._copies[e.proto.shard_id].write(raw, e.proto.offset + at)
            self.changed.add(key)

    def _set_history(self, history: list[dict[str, Any]]) -> None:
        p = self.store.history_path(
            self.root if self.store.kind == Format.SAVEDMODEL else self.new_prefix
        )
        p.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(history, indent=1) + "\n"
        p.write_text(text)
        self._meta_bytes += len(text.encode())

    def _rewrite_index(self) -> None:
        for c in self._copies:
            c.finish()
        b = self.store.bundle
        rows: list[tuple[bytes, bytes]] = [(b"", b.header_raw)]
        crc_of = {k: crc for k, (done, crc) in self.crcs.items() if done == b.entries[k].proto.size}
        for key in sorted(b.entries, key=lambda k: k.encode()):
            e = b.entries[key]
            value = e.raw
            if key in self.changed:
                crc = crc_of.get(key)
                if crc is None:  # not written from start to end: read it back
                    crc = self._crc_of_written(e)
                proto = tfproto.BundleEntryProto()
                proto.CopyFrom(e.proto)
                proto.crc32c = tftable.mask(crc)
                value = proto.SerializeToString(deterministic=True)
            rows.append((key.encode(), value))
        rows.sort(key=lambda kv: kv[0])
        table = tftable.write_table(rows)
        index_path(self.new_prefix).write_bytes(table)
        self._meta_bytes += len(table)

    def _commit(self) -> None:
        self._rewrite_index()
        if self.store.kind == Format.SAVEDMODEL:
            publish(self.root, self.out, self.overwrite)
        else:
            b = self.store.bundle
            files = [shard_name(self.new_prefix, s, b.num_shards) for s in range(b.num_shards)]
            hist = self.store.history_path(self.new_prefix)
            if hist.exists():
                files.append(hist)
            meta = self.new_prefix.with_name(self.new_prefix.name + ".meta")
            if meta.exists():
                files.append(meta)
            files.append(self.new_prefix.with_name(self.new_prefix.name + ".index"))
            done: list[Path] = []
            try:
                for f in files:  # shards first, the index last: it makes them visible
                    publish(f, self.out.parent / f.name, self.overwrite)
                    done.append(self.out.parent / f.name)
            except BaseException:
                for p in done:  # none of this writer's files stays beside another's
                    remove(p)
                raise
            self._meta_bytes += write_state_file(self.out)
        temps.remove(self.tmp)

    def _crc_of_written(self, e: Entry) -> int:
        b = self.store.bundle
        with open(shard_name(self.new_prefix, e.proto.shard_id, b.num_shards), "rb") as f:
            crc = crc32c_of(f, e.proto.offset, e.proto.size)
        assert crc is not None  # the output shard was just written in full
        return crc

    def _abort(self) -> None:
        self._close_copies()
        temps.remove(self.tmp)


def _first_os_error(exc: BaseException) -> str:
    """The first reason in an OSError or a copytree ``shutil.Error`` (a list of them)."""
    if isinstance(exc, shutil.Error) and exc.args and isinstance(exc.args[0], list):
        first = exc.args[0][0]
        return str(first[-1]) if isinstance(first, tuple) else str(first)
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


def write_state_file(prefix: Path) -> int:
    """Name ``prefix`` as the newest checkpoint in its folder's ``checkpoint`` state file
    (what ``tf.train.latest_checkpoint`` reads), keeping the others it lists. Returns
    the bytes written."""
    state = prefix.parent / "checkpoint"
    others: list[str] = []
    if state.is_file():
        state_text = capped.read_bytes(state, capped.STATE_FILE_BYTES, "checkpoint state file")
        for line in state_text.decode(errors="replace").splitlines():
            key, _, value = line.partition(":")
            name = value.strip().strip('"')
            if key.strip() == "all_model_checkpoint_paths" and name and name != prefix.name:
                others.append(name)
    lines = [f'model_checkpoint_path: "{prefix.name}"']
    lines += [f'all_model_checkpoint_paths: "{n}"' for n in [*others, prefix.name]]
    text = "\n".join(lines) + "\n"
    if is_url(prefix):
        tmp = temp_beside(state)
        tmp.write_text(text)
        publish(tmp, state, True)
    else:
        tmp = prefix.parent / f".checkpoint.{os.getpid()}.tmp"
        tmp.write_text(text)
        os.replace(tmp, state)
    return len(text.encode())


class SavedModelStore(TFStore):
    """A SavedModel directory (its variables checkpoint, its object graph)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, Format.SAVEDMODEL)

    @property
    def model_config(self) -> dict[str, Any] | None:
        """A tf.keras model's config, as ``keras_metadata.pb`` keeps it for the root
        (``model.save("folder")`` with tf.keras; a subclassed model has none), in the
        form a legacy ``.h5``'s ``model_config`` has: tf.keras's JSON encoding of tuples
        and shapes (``{"class_name": "__tuple__", "items": [...]}``) read as lists."""
        root = self._keras_nodes.get("root")
        if not isinstance(root, dict) or not isinstance(root.get("config"), dict):
            return None
        decoded = _decode_keras_json(root["config"])
        return {"class_name": root.get("class_name"), "config": decoded}

    def keras_writer(self) -> str | None:
        root = self._keras_nodes.get("root") or {}
        version = root.get("keras_version")
        return f"Keras {version}" if isinstance(version, str) else None

    def legacy_attrs(self) -> dict[str, Any]:
        return {**super().legacy_attrs(), "backend": "tensorflow"}

    def keras_layers(self) -> list[tuple[str, list[tuple[str, str]]]] | None:
        """A tf.keras SavedModel's weights as a legacy ``.h5`` groups them: each top-level
        layer with weights (its name, from ``keras_metadata.pb``'s
        ``root.layer_with_weights-K``) and its variables (the names a legacy ``.h5``
        gives them, ``lstm/lstm_cell/kernel:0``, and their checkpoint keys)."""
        if self.model_config is None:
            return None  # no tf.keras model in it (keras_metadata.pb)
        tog = self._object_graph()
        graph = self.saved_object_graph
        if tog is None or graph is None:
            raise UnsupportedError(f"{self.path}: no object graph names its variables")
        node_of = {a.checkpoint_key: n for n, node in enumerate(tog.nodes) for a in node.attributes}
        # A variable's checkpoint key is its shortest path from the root (often the
        # model's ``variables/7``), so its layer is the top-level ``layer_with_weights-K``
        # it is reached from.
        owner: dict[int, str] = {}
        for child in tog.nodes[0].children if len(tog.nodes) else ():
            if not re.fullmatch(r"layer_with_weights-\d+", child.local_name):
                continue
            stack = [child.node_id]
            while stack:
                n = stack.pop()
                if n in owner or n >= len(tog.nodes):
                    continue
                owner[n] = child.local_name
                stack.extend(
                    c.node_id for c in tog.nodes[n].children if c.local_name not in NON_MODEL_EDGES
                )
        out: dict[str, list[tuple[str, str]]] = {}
        for t in self.tensors():
            if t.optimizer:
                continue
            node = node_of.get(t.path)
            edge = owner.get(node) if node is not None else None
            layer = (self._keras_nodes.get(f"root.{edge}") or {}).get("name") if edge else None
            name = (
                graph.nodes[node].variable.name
                if node is not None and node < len(graph.nodes)
                else ""
            )
            if not isinstance(layer, str) or not name:
                raise UnsupportedError(
                    f"{self.path}: variable {t.path} is not one of a tf.keras layer's weights"
                )
            if not re.search(r":\d+$", name):  # as tf.keras names it in a legacy .h5
                name += ":0"
            out.setdefault(layer, []).append((name, t.path))
        return list(out.items())


def _decode_keras_json(x: Any) -> Any:
    """tf.keras's ``json_utils`` encodings undone: a tuple or a TensorShape as a list."""
    if isinstance(x, dict):
        if x.get("class_name") in ("__tuple__", "TensorShape") and "items" in x:
            return [_decode_keras_json(v) for v in x.get("items") or []]
        return {k: _decode_keras_json(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_decode_keras_json(v) for v in x]
    return x


class CheckpointStore(TFStore):
    """A TF checkpoint: a prefix, its ``.index`` or a data shard, or a folder of one."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, Format.TF_CHECKPOINT)
