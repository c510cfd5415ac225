"""Keras 3 sharded weights: ``model.save_weights("w.weights.json", max_shard_size=...)``
writes a JSON map ``{"metadata": {...}, "weight_map": {"/layers/dense/vars":
["w_00000.weights.h5"], ...}}`` and the shards it names beside it, each a
``.weights.h5`` holding some of the layers. Read as one model; patched shard by shard
(only the shards with a changed tensor are rewritten, the others copied); the map is
written last, with the new shards' names and the history."""

from __future__ import annotations

import json
import shutil
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np

from weightcli.errors import CorruptError, UnsupportedError
from weightcli.stores import capped, temps
from weightcli.stores.base import Block, Format, Patcher, Store, StoreMeta, clean_history
from weightcli.stores.hdf5 import H5Patcher, H5Store
from weightcli.stores.links import check_inside
from weightcli.stores.output import publish_with_parts, temp_dir_beside
from weightcli.tensor import TensorInfo

SUFFIX = ".weights.json"
LABEL = "Keras 3 sharded weights (.weights.json)"
MAX_MAP_BYTES = 64 << 20
# Shards kept open at once (HDF5 costs about 0.5 MiB per open file).
AWAKE_SHARDS = 16
HISTORY_KEY = "weightcli_history"


def read_map(path: Path) -> dict[str, Any]:
    """The JSON map, checked: an object whose ``weight_map`` maps group paths to lists of
    shard file names."""
    doc = capped.read_json(path, capped.JSON_BYTES, "weights map")
    wmap = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(wmap, dict) or not all(
        isinstance(v, list) and all(isinstance(s, str) for s in v) for v in wmap.values()
    ):
        raise CorruptError(f"{path}: not a Keras weights map (no weight_map of shard lists)")
    checked: dict[str, Any] = doc
    return checked


def shard_names(doc: dict[str, Any]) -> list[str]:
    """The shards a map names, in order of first mention (linear in the names)."""
    out: dict[str, None] = {}
    for shards in doc["weight_map"].values():
        out.update(dict.fromkeys(shards))
    return list(out)


def files_of(path: Path) -> list[Path]:
    """A weights map and its shards (the shards in the map's folder, as named)."""
    return [path, *(path.parent / name for name in shard_names(read_map(path)))]


def shards_named_in(folder: Path, names: Collection[str]) -> set[str]:
    """Directory searches: the shard files that the weights maps among ``names`` name
    (parts of those models, never models themselves)."""
    from weightcli.stores.detect import is_weights_map

    out: set[str] = set()
    for name in names:
        if name.endswith(".json") and is_weights_map(folder / name):
            try:
                out.update(shard_names(read_map(folder / name)))
            except CorruptError:
                continue
    return out


def _group_names(shards: list[Path]) -> dict[str, str]:
    """``.../vars`` group path -> the layer name recorded on it, in any of the shards."""
    import h5py

    from weightcli.stores import h5util

    out: dict[str, str] = {}
    for shard in shards:
        f = h5util.open_h5(shard, str(shard))
        try:

            def visit(name: str, obj: Any) -> None:
                if name.endswith("vars") and "name" in obj.attrs:
                    value = obj.attrs["name"]
                    out.setdefault(
                        "/" + name, value.decode() if isinstance(value, bytes) else str(value)
                    )

            if "model_config" in f.attrs or "layer_names" in f.attrs or "model_weights" in f:
                raise CorruptError(
                    f"{shard}: a legacy Keras .h5 (full model or weights), not a shard of a "
                    "Keras 3 weights map: refused (its names would be read shifted)"
                )
            f.visititems(lambda n, o: visit(n, o) if isinstance(o, h5py.Group) else None)
        finally:
            f.close()
    return out


class ShardedStore(Store):
    """A ``.weights.json`` map and its shards, as one checkpoint."""

    def siblings(self) -> list[Path]:
        return [self.path.parent / name for name in self.names]

    def __init__(self, path: Path) -> None:
        self.path = path
        self.doc = read_map(path)
        self.names = shard_names(self.doc)
        self.stores: list[H5Store] = []
        try:
            shards: list[Path] = []
            for name in self.names:
                if Path(name).name != name or name in ("", ".", ".."):
                    raise UnsupportedError(
                        f"{path}: names shard {name!r} outside the map's folder: refused"
                    )
                shard = check_inside(path.parent, path.parent / name)
                if not shard.is_file():
                    raise CorruptError(f"{path}: names shard {name}, which is missing")
                shards.append(shard)
            # A layer's group may be split over shards, its name kept in one of them only.
            groups = _group_names(shards)
            for shard in shards:
                # Every shard is a .weights.h5 layout, even one holding optimizer state only.
                store = H5Store(shard, group_names=groups, kind=Format.KERAS3_WEIGHTS)
                self.stores.append(store)
                if len(shards) > AWAKE_SHARDS:
                    store.sleep()  # listed; reopened when read
        except BaseException:
            self.close()
            raise
        self._tensors: list[TensorInfo] = []
        self._route: dict[str, tuple[int, TensorInfo]] = {}
        for i, store in enumerate(self.stores):
            for t in store.tensors():
                info = TensorInfo(
                    name=t.name,
                    path=f"{self.names[i]}:{t.path}",
                    dtype=t.dtype,
                    shape=t.shape,
                    kind=t.kind,
                    layer=t.layer,
                    layer_class=t.layer_class,
                    optimizer=t.optimizer,
                    quantized=t.quantized,
                )
                self._tensors.append(info)
                self._route[info.path] = (i, t)
        self._awake: list[int] = []  # the shards open now, least recently used first
        if len(self.stores) <= AWAKE_SHARDS:
            self._awake = list(range(len(self.stores)))
        history = self.doc.get(HISTORY_KEY)
        self.meta = StoreMeta(
            format=Format.KERAS3_SHARDED,
            format_label=LABEL,
            history=clean_history(history),
            extra={"shards": len(self.names)},
        )

    def tensors(self) -> list[TensorInfo]:
        return list(self._tensors)

    def route(self, info: TensorInfo) -> tuple[int, TensorInfo]:
        """Which shard holds ``info``, and the tensor as that shard names it."""
        return self._route[info.path]

    def shard(self, i: int) -> H5Store:
        """Shard ``i``, open; at most ``AWAKE_SHARDS`` stay open (a shard put to sleep
        reopens itself when it is read again)."""
        if i in self._awake:
            self._awake.remove(i)
        self._awake.append(i)
        store = self.stores[i]
        store.wake()
        while len(self._awake) > AWAKE_SHARDS:
            self.stores[self._awake.pop(0)].sleep()
        return store

    def read(self, info: TensorInfo, block: Block | None = None) -> np.ndarray:
        i, inner = self.route(info)
        return self.shard(i).read(inner, block)

    def supports_dtype(self, dtype: str) -> str | None:
        return None

    def _patch(self, out: Path, retype: dict[str, str], compress: bool = False) -> Patcher:
        return ShardedPatcher(self, out, retype, compress)

    def cannot_compress(self) -> str | None:
        return None

    def close(self) -> None:
        for store in self.stores:
            store.close()


class ShardedPatcher(Patcher):
    """Writes OUT.weights.json and its shards ``<stem>_NNNNN.weights.h5``: changed shards
    patched, the others copied; shards moved into place first, the map last."""

    def __init__(
        self, store: ShardedStore, out: Path, retype: dict[str, str], compress: bool = False
    ) -> None:
        super().__init__()
        self.store = store
        self.out = out
        self.retype = retype
        self.compress = compress  # every shard rewritten compressed
        stem = out.name[: -len(SUFFIX)] if out.name.endswith(SUFFIX) else out.name
        self.new_names = [f"{stem}_{i:05d}.weights.h5" for i in range(len(store.names))]
        self.tmp = temp_dir_beside(out)
        self.inners: dict[int, H5Patcher] = {}
        self._map_bytes = 0

    @property
    def bytes_written(self) -> int:
        return self._map_bytes + sum(p.bytes_written for p in self.inners.values())

    def _inner(self, i: int) -> H5Patcher:
        if i not in self.inners:
            dest = self.tmp / self.new_names[i]
            dest.touch()
            prefix = f"{self.store.names[i]}:"
            retype = {k[len(prefix) :]: v for k, v in self.retype.items() if k.startswith(prefix)}
            self.inners[i] = H5Patcher(
                self.store.shard(i), self.out, retype, tmp=dest, compress=self.compress
            )
        return self.inners[i]

    def _begin(self, info: TensorInfo, dtype: str) -> None:
        i, inner = self.store.route(info)
        self._inner(i).begin(inner, dtype)

    def _write(self, info: TensorInfo, block: Block, data: np.ndarray) -> None:
        i, inner = self.store.route(info)
        self._inner(i).write(inner, block, data)

    def _set_history(self, history: list[dict[str, Any]]) -> None:
        doc = dict(self.store.doc)
        renamed = dict(zip(self.store.names, self.new_names, strict=True))
        doc["weight_map"] = {
            group: [renamed[s] for s in shards]
            for group, shards in self.store.doc["weight_map"].items()
        }
        doc[HISTORY_KEY] = history
        text = json.dumps(doc, indent=4)
        (self.tmp / self.out.name).write_text(text)
        self._map_bytes = len(text.encode())

    def _commit(self) -> None:
        for i, name in enumerate(self.store.names):
            if i not in self.inners and self.compress:
                self._inner(i)  # unchanged, but stored compressed too
            if i in self.inners:
                self.inners[i].close_file()
            else:
                shutil.copyfile(self.store.path.parent / name, self.tmp / self.new_names[i])
        parts = [(self.tmp / new, self.out.parent / new) for new in self.new_names]
        main = (self.tmp / self.out.name, self.out)
        publish_with_parts(parts, main, self.overwrite or self._same_names(), self.overwrite)
        temps.remove(self.tmp)

    def _same_names(self) -> bool:
        """Writing over the source's own shards (in place)."""
        return self.out.resolve() == self.store.path.resolve()

    def _abort(self) -> None:
        for inner in self.inners.values():
            inner.abort()
        temps.remove(self.tmp)
