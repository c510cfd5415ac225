"""The HDF5 family: Keras legacy ``.h5`` (full model and weights-only, Keras 1/2/3),
Keras 3 ``.weights.h5``, and any other HDF5 file.

Which layout a file has is decided from its content (root attributes and groups),
never from its name.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import h5py
import numpy as np

from weightcli.dtypes import to_numpy
from weightcli.errors import CorruptError, UnsupportedError
from weightcli.stores import h5util, naming, temps
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
from weightcli.stores.output import publish, temp_beside
from weightcli.stores.rangecopy import RangeCopy
from weightcli.stores.remote import RangeFile, is_url, open_range
from weightcli.tensor import TensorInfo

LEGACY_FULL = Format.KERAS_H5
LEGACY_WEIGHTS = Format.KERAS_H5_WEIGHTS
KERAS3_WEIGHTS = Format.KERAS3_WEIGHTS
GENERIC = Format.HDF5

LABELS = {
    LEGACY_FULL: "Keras legacy HDF5 (full model)",
    LEGACY_WEIGHTS: "Keras legacy HDF5 (weights only)",
    KERAS3_WEIGHTS: "Keras 3 weights (.weights.h5)",
    GENERIC: "HDF5 (no Keras layout)",
}


def classify(f: h5py.File) -> Format:
    """Which HDF5 layout ``f`` has."""
    mw = f.get("model_weights", getclass=False) if "model_weights" in f else None
    if isinstance(mw, h5py.Group) and h5util.read_attr(mw, "layer_names") is not None:
        return LEGACY_FULL
    if h5util.read_attr(f, "layer_names") is not None:
        return LEGACY_WEIGHTS
    layers = f.get("layers") if "layers" in f else None
    if isinstance(layers, h5py.Group) and (
        "vars" in f
        or any(isinstance(layers[k], h5py.Group) and "vars" in layers[k] for k in layers)
    ):
        return KERAS3_WEIGHTS
    if "layers" in f and "vars" in f:
        return KERAS3_WEIGHTS
    # tf.keras on Windows: "layers\\dense" groups at the root, each with its "vars".
    if any(k.startswith("layers\\") and "vars" in f[k] for k in f if isinstance(f[k], h5py.Group)):
        return KERAS3_WEIGHTS
    return GENERIC


def auto_names(config: Any) -> dict[str, str]:
    """A model config's Keras 3 weight-file group names -> its layers' names, by replaying
    Keras's naming (a group is named by the layer's class, numbered in order: ``dense``,
    ``dense_1``, ...; a Sequential's InputLayer takes no name)."""
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict):
        return {}
    layers = config["config"].get("layers") or []
    if config.get("class_name") == "Sequential":
        layers = [e for e in layers if isinstance(e, dict) and e.get("class_name") != "InputLayer"]
    used: dict[str, int] = {}
    out: dict[str, str] = {}
    for entry in layers:
        if not isinstance(entry, dict):
            continue
        base = naming.to_snake_case(entry.get("class_name", "") or "")
        if base in used:
            used[base] += 1
            auto = f"{base}_{used[base]}"
        else:
            used[base] = 0
            auto = base
        name = (entry.get("config") or {}).get("name")
        if isinstance(name, str):
            out[auto] = name
    return out


def sub_config(config: Any, layer: str) -> Any:
    """The config entry of ``layer`` in a model config (a nested model's own config)."""
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict):
        return None
    for entry in config["config"].get("layers") or []:
        if isinstance(entry, dict) and (entry.get("config") or {}).get("name") == layer:
            return entry
    return None


class H5Store(Store):
    """Any HDF5-family checkpoint. ``config`` is an archive's ``config.json``, when there is one."""

    def __init__(
        self,
        path: Path,
        src: str | os.PathLike[str] | BinaryIO | None = None,
        config: dict[str, Any] | None = None,
        label: str | None = None,
        group_names: dict[str, str] | None = None,
        kind: Format | None = None,
    ) -> None:
        self.path = path
        self.label = label or str(path)
        # Layer names of ``.../vars`` groups recorded elsewhere (another shard of a map).
        self._group_names = group_names or {}
        # In object storage: HDF5 reads through a file fetched by byte range.
        target = src if src is not None else path
        self._remote = open_range(target) if isinstance(target, Path) and is_url(target) else None
        try:
            self._file = h5util.open_h5(
                src if src is not None else self._remote or path, self.label
            )
        except BaseException:
            if self._remote is not None:
                self._remote.close()
            raise
        # Contiguous data is read straight from the file (pread), bypassing HDF5.
        self._raw: tuple[int | RangeFile, int, int] | None = None
        region = None if is_url(path) else self.source_region()
        if region is not None:
            file, base, size = region
            self._raw = os.open(file, os.O_RDONLY), base, size
        elif self._remote is not None:
            self._raw = self._remote, 0, self._remote.size
        self._size = h5util.file_size(self._file) or (path.stat().st_size if path.is_file() else 0)
        self._archive_config = config
        self.kind: Format = kind or classify(self._file)
        self._datasets: dict[str, h5util.Dset] = {}
        self._group_set: set[str] = set()  # filled by the index walk
        try:
            self._index = h5util.index(self._file, self._size, self._group_set)
            self._tensors = self._list()
        except (OSError, KeyError, ValueError, RuntimeError, TypeError, OverflowError) as exc:
            self.close()
            raise CorruptError(
                f"{self.label}: damaged HDF5 structure: {h5util.first_line(exc)}"
            ) from exc
        except BaseException:  # a refused file (links out of it, ...): release it too
            self.close()
            raise
        self.meta = self._meta()

    # -- listing ---------------------------------------------------------------------------

    @property
    def model_config(self) -> Any:
        """The model config (a dict for Keras files that have one); do not modify it."""
        return self._config()

    def _config(self) -> Any:
        """The model config (parsed once; callers must not modify it)."""
        if self._archive_config is not None:
            return self._archive_config
        if not hasattr(self, "_parsed_config"):
            try:
                self._parsed_config = naming.parse_json(
                    h5util.read_attr(self._file, "model_config")
                )
            except RecursionError as exc:
                raise CorruptError(f"{self.label}: model_config is nested too deeply") from exc
        return self._parsed_config

    def _meta(self) -> StoreMeta:
        f = self._file
        config = self._config()
        version = (
            naming.decode(f.attrs.get("keras_version")) if "keras_version" in f.attrs else None
        )
        backend = naming.decode(f.attrs.get("backend")) if "backend" in f.attrs else None
        writer = None
        if version:
            writer = f"Keras {version}" + (f" ({backend} backend)" if backend else "")
        meta = StoreMeta(
            format=self.kind,
            format_label=LABELS[self.kind],
            writer=writer,
            has_config=isinstance(config, dict),
        )
        if isinstance(config, dict):
            meta.model_class = config.get("class_name")
            meta.model_name = naming.model_name_of(config)
        raw = f.attrs.get(h5util.HISTORY_ATTR)
        if raw is not None:
            meta.history = clean_history(naming.parse_json(raw))
        return meta

    def _info(
        self,
        name: str,
        path: str,
        ds: h5util.Dset,
        layer: str | None,
        optimizer: bool,
        classes: dict[str, str],
        kind: str | None = None,
        quantized: str | None = None,
        aliases: tuple[str, ...] = (),
    ) -> TensorInfo:
        self._datasets[path] = ds
        return TensorInfo(
            name=name,
            path=path,
            dtype=ds.dtype_name,
            shape=ds.shape,
            kind=kind or ("optimizer" if optimizer else naming.kind_of(name)),
            layer=layer,
            layer_class=classes.get(layer) if layer else None,
            optimizer=optimizer,
            quantized=quantized,
            aliases=aliases,
        )

    def _list(self) -> list[TensorInfo]:
        if self.kind in (LEGACY_FULL, LEGACY_WEIGHTS):
            return self._list_legacy()
        if self.kind == KERAS3_WEIGHTS:
            return self._list_keras3()
        return self._list_generic()

    def _numeric(self, ds: h5util.Dset) -> bool:
        return ds.dtype.kind in "fiub" or ds.marker == "bfloat16"

    def _under(self, group: h5py.Group) -> list[tuple[str, h5util.Dset]]:
        """Datasets below ``group`` (indexed once by their first path parts)."""
        if not hasattr(self, "_by_top"):
            self._by_top: dict[str, list[tuple[str, h5util.Dset]]] = {}
            for p, ds in self._index.items():
                parts = p.split("/")
                for depth in (2, 3):
                    if len(parts) > depth:
                        self._by_top.setdefault("/".join(parts[:depth]), []).append((p, ds))
        name = group.name.rstrip("/")
        if name.count("/") <= 2:
            return self._by_top.get(name, [])
        prefix = name + "/"
        return [(p, ds) for p, ds in self._index.items() if p.startswith(prefix)]

    def _list_generic(self) -> list[TensorInfo]:
        out = []
        for path, ds in self._index.items():
            if self._numeric(ds):
                out.append(self._info(path.lstrip("/"), path, ds, None, False, {}))
        return out

    def _list_legacy(self) -> list[TensorInfo]:
        f = self._file
        root = f["model_weights"] if self.kind == LEGACY_FULL else f
        classes = naming.layer_classes(self._config())
        weights: list[tuple[str, str, h5util.Dset, str | None]] = []
        stored_as: dict[str, str] = {}  # path -> the stored name, where Keras's differs
        groups: list[str] = []  # the top-level layer group of each weight
        seen: set[str] = set()
        for layer in naming.names(
            h5util.read_attr(root, "layer_names"), f"{self.label}: layer_names"
        ):
            if layer not in root:
                continue
            group = root[layer]
            for wname in naming.names(
                h5util.read_attr(group, "weight_names"), f"{self.label}: {layer}/weight_names"
            ):
                path = f"{group.name}/{wname}"
                ds = self._index.get(path)
                if ds is None:
                    raise CorruptError(
                        f"{self.label}: layer {layer!r} lists weight {wname!r} that is missing"
                    )
                name = naming.strip_suffix(wname)
                scope, _, rest = name.partition("/")
                if rest and "/" not in rest and re.fullmatch(re.escape(layer) + r"_\d+", scope):
                    # A stale scope (a model built twice in one session, Keras 2.0:
                    # ``conv2d_1_1/kernel`` in layer ``conv2d_1``): Keras names it by
                    # its layer; the stored name still selects it.
                    stored_as[path] = name
                    name = f"{layer}/{rest}"
                if "/" not in name:  # Keras 1: `dense_1_W`
                    owner: str | None = layer
                else:
                    owner = naming.owning_layer(name.split("/")[:-1], classes, layer)
                weights.append((name, path, ds, owner))
                groups.append(layer)
                seen.add(path)
            # Datasets the layer does not list still are tensors of the file: show them.
            for path, ds in self._under(group):
                if path not in seen and self._numeric(ds):
                    rel = path[len(group.name) + 1 :]
                    weights.append((f"{layer}/{naming.strip_suffix(rel)}", path, ds, layer))
                    groups.append(layer)
                    seen.add(path)
        config = self._config()
        model_name = naming.model_name_of(config)
        root_name = naming.strip_common_root([w[0] for w in weights], model_name, classes)
        chains = naming.submodel_chains(config)
        out = []
        for (name, path, ds, owner), group in zip(weights, groups, strict=True):
            if root_name:
                name = name[len(root_name) + 1 :]
            if group in chains:
                name = naming.nested_name(name, group, chains[group])
            elif not chains and config is None and naming.is_nested_weight(name, group):
                name = f"{group}/{name}"  # no config: one level of nesting is all we know
            alias = stored_as.get(path)
            aliases = (alias,) if alias and alias != name else ()
            out.append(self._info(name, path, ds, owner, False, classes, aliases=aliases))
        if "optimizer_weights" in f and isinstance(f["optimizer_weights"], h5py.Group):
            opt = f["optimizer_weights"]
            for path, ds in self._under(opt):
                rel = naming.strip_suffix(path[len(opt.name) + 1 :])
                out.append(self._info(f"optimizer/{rel}", path, ds, None, True, classes))
        # Anything else numeric outside the Keras groups (rare; hand-edited files).
        for path, ds in self._index.items():
            if (
                path not in self._datasets
                and self._numeric(ds)
                and not path.startswith("/optimizer_weights/")
            ):
                if self.kind == LEGACY_FULL and path.startswith("/model_weights/"):
                    continue
                out.append(self._info(path.lstrip("/"), path, ds, None, False, classes))
        return out

    def _auto_names(self) -> dict[str, str]:
        """Keras 3 group name -> layer name, by replaying Keras's naming of the top-level layers."""
        return auto_names(self._config())

    def _list_keras3(self) -> list[TensorInfo]:
        config = self._config()
        classes = naming.layer_classes(config)
        configs = naming.layer_configs(config)
        auto = self._auto_names()
        out: list[TensorInfo] = []
        model_vars: list[tuple[str, str, h5util.Dset, str | None]] = []
        groups: dict[str, list[str]] = {}
        quantized: dict[str, str] = {}
        for p in self._index:
            parent, _, leaf = p.rpartition("/")
            if parent.endswith("/vars"):
                groups.setdefault(parent, []).append(leaf)
        for path, leaves in groups.items():
            members = sorted(
                leaves, key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0, k)
            )
            owner = path[: -len("/vars")]
            logical = owner.replace("\\", "/")  # tf.keras on Windows: backslashes
            if logical == "/optimizer" or logical.startswith("/optimizer/"):
                for k in members:
                    ds = self._index[f"{path}/{k}"]
                    out.append(self._info(f"optimizer/{k}", f"{path}/{k}", ds, None, True, classes))
                continue
            if logical == "/metrics" or logical.startswith("/metrics/"):
                # Training metrics' state (tf.keras archives keep it): not model weights,
                # hidden as optimizer state is (``--all`` shows both).
                for k in members:
                    ds = self._index[f"{path}/{k}"]
                    name = f"{logical.strip('/')}/{k}"
                    out.append(self._info(name, f"{path}/{k}", ds, None, True, classes))
                continue
            chain = self._layer_chain(owner, auto)
            layer = chain[-1] if chain else None
            layer_class = classes.get(layer) if layer else None
            last = logical.rsplit("/", 1)[-1]
            if layer_class is None:
                layer_class = naming.class_from_group(last)
            if layer_class is None and last in naming.MHA_PARTS and len(chain) >= 2:
                # MultiHeadAttention's own EinsumDense sublayers (absent from the config)
                owner_class = classes.get(chain[-2]) or naming.class_from_group(chain[-2])
                if owner_class == "MultiHeadAttention":
                    layer_class = "EinsumDense"
            if last == "cell" and len(chain) >= 2:
                parent_class = classes.get(chain[-2]) or naming.class_from_group(
                    logical.split("/")[-2]
                )
                side = logical.split("/")[-2]
                if parent_class is None and side in ("forward_layer", "backward_layer"):
                    # a Bidirectional's sublayer, named in its config's ``layer`` only
                    wrapper = (configs.get(chain[-3]) if len(chain) >= 3 else None) or {}
                    inner = wrapper.get(side) or wrapper.get("layer") or {}
                    parent_class = inner.get("class_name") if isinstance(inner, dict) else None
                layer_class = f"{parent_class}Cell" if parent_class else None
            layer_config = configs.get(layer or "")
            names = naming.keras3_var_names(layer_class, len(members), layer_config)
            mode = naming.quantization_mode(layer_config)
            prefix = "/".join(chain)
            for i, k in enumerate(members):
                ds = self._index[f"{path}/{k}"]
                var = names[i] if names else k
                name = f"{prefix}/{var}" if prefix else var
                model_vars.append((name, f"{path}/{k}", ds, layer))
                if mode:
                    quantized[name] = mode
                if layer and layer_class and layer not in classes:
                    classes[layer] = layer_class
        # Model order (as the config lists the layers), not the file's alphabetical order
        # (dense_1, dense_11, dense_2); optimizer state after the model's weights.
        order = naming.layer_order(config)
        ranked = sorted(
            enumerate(model_vars),
            key=lambda iv: (order.get(iv[1][0].rsplit("/", 1)[0], len(order)), iv[0]),
        )
        optimizer = out
        out = [
            self._info(name, path, ds, layer, False, classes, quantized=quantized.get(name))
            for _, (name, path, ds, layer) in ranked
        ]
        return out + optimizer

    def _groups(self) -> set[str]:
        """Every group of the file, from the one walk that indexed it (a set lookup:
        asking HDF5 per group costs ~0.1 ms in a group of thousands)."""
        return self._group_set

    def _layer_chain(self, owner: str, auto: dict[str, str]) -> list[str]:
        """Names of the layer groups from the root down to ``owner`` (``/layers/a/layers/b``).

        A backslash in a group's name is a separator too (tf.keras on Windows wrote
        ``layers\\conv1d/vars/0``): the logical parts are named as on any system, and
        each is looked up in the file under the group that really holds it."""
        f = self._file
        parts: list[str] = []  # logical parts
        real: list[str] = []  # the file's group path that ends with each part ("" if none)
        prefix = ""
        for segment in (p for p in owner.split("/") if p):
            pieces = segment.split("\\")
            prefix += "/" + segment
            for j, piece in enumerate(pieces):
                parts.append(piece)
                real.append(prefix if j == len(pieces) - 1 else "")
        chain: list[str] = []
        model = self._config()  # the config of the model whose layers this level names
        for i in range(len(parts)):
            vars_path = real[i] + "/vars"
            if parts[i] == "layers" or not real[i] or vars_path not in self._groups():
                continue
            vars_group = f[vars_path]
            name = (
                naming.decode(vars_group.attrs.get("name")) if "name" in vars_group.attrs else None
            )
            name = name or self._group_names.get(vars_path)
            if not name:
                # A generated group name (``dense``): the layer's own, by replaying
                # Keras's naming in the model (or nested model) that holds it.
                names = auto if i == 1 else auto_names(model)
                name = names.get(parts[i], parts[i])
            chain.append(str(name))
            model = sub_config(model, str(name))
        return chain

    # -- reading ---------------------------------------------------------------------------

    def tensors(self) -> list[TensorInfo]:
        return list(self._tensors)

    @property
    def h5file(self) -> h5py.File:
        """The open HDF5 file (read-only)."""
        self.wake()
        return self._file

    def dataset(self, info: TensorInfo) -> h5util.Dset:
        """Where and how ``info`` is stored in the HDF5 file."""
        self.wake()
        return self._datasets[info.path]

    # A local file can be closed between uses (``sleep``) and reopened when read again
    # (``wake``): a weights map of thousands of shards keeps only a few open (HDF5 costs
    # about 0.5 MiB per open file).
    _asleep = False

    def can_sleep(self) -> bool:
        return self._remote is None and self.path.is_file()

    def sleep(self) -> None:
        """Close the file (its listing is kept); reopened by the next read."""
        if self._asleep or not self.can_sleep():
            return
        for ds in self._index.values():
            ds.release()
        raw = self._raw
        if raw is not None and isinstance(raw[0], int):
            os.close(raw[0])
        self._raw = None
        if self._file.id.valid:
            self._file.close()
        self._asleep = True

    def wake(self) -> None:
        if not self._asleep:
            return
        self._file = h5util.open_h5(self.path, self.label)
        for ds in self._index.values():
            ds.fid = self._file.id
        region = self.source_region()
        if region is not None:
            file, base, size = region
            self._raw = os.open(file, os.O_RDONLY), base, size
        self._asleep = False

    def blocks(
        self,
        info: TensorInfo,
        max_elems: int = BLOCK_ELEMS,
        align: tuple[int, int] | None = None,
    ) -> Iterator[tuple[Block, np.ndarray]]:
        try:
            yield from super().blocks(info, max_elems, align)
        finally:  # read once: closed again (a file of many tensors keeps none open)
            ds = self._datasets.get(info.path)
            if ds is not None:
                ds.release()

    def read(self, info: TensorInfo, block: Block | None = None) -> np.ndarray:
        self.wake()
        ds = self._datasets[info.path]
        try:
            if self._raw is not None:
                arr = h5util.read_direct(*self._raw, ds, block)
                if arr is not None:
                    return arr
            arr = h5util.read_dataset(ds.dataset, info.dtype, block)
            if arr.dtype.byteorder not in "=|":  # big-endian data: computed on natively,
                arr = arr.astype(arr.dtype.newbyteorder("="))  # written back as stored
            return arr
        except (OSError, RuntimeError, ValueError, TypeError, OverflowError) as exc:
            raise CorruptError(
                f"{self.label}: cannot read {info.name} (damaged or truncated file?): "
                f"{h5util.first_line(exc)}"
            ) from exc

    def supports_dtype(self, dtype: str) -> str | None:
        if dtype == "bfloat16" and self.kind in (LEGACY_FULL, LEGACY_WEIGHTS):
            return (
                "the legacy .h5 loaders (Keras 2 and Keras 3's legacy path) do not understand bfloat16; "
                "use --dtype float16, or a .keras / .weights.h5 file"
            )
        return None

    def close(self) -> None:
        raw = getattr(self, "_raw", None)
        if raw is not None and isinstance(raw[0], int):
            os.close(raw[0])
        self._raw = None
        if not self._asleep and self._file.id.valid:
            self._file.close()
        remote = getattr(self, "_remote", None)
        if remote is not None:
            remote.close()

    def _patch(self, out: Path, retype: dict[str, str], compress: bool = False) -> Patcher:
        return H5Patcher(self, out, retype, compress=compress)

    def keras_layers(self) -> list[tuple[str, list[tuple[str, str]]]] | None:
        return legacy_layers(self) if self.kind == LEGACY_FULL else None

    def legacy_attrs(self) -> dict[str, Any]:
        return source_attrs(self) if self.kind == LEGACY_FULL else super().legacy_attrs()

    def training_state(self) -> list[str]:
        if self.kind == LEGACY_FULL:
            return training_state(self)
        config = self._config()
        if self.meta.keras3_model and isinstance(config, dict):
            from weightcli.stores.keras3_layout import training_state as keras3_state

            return keras3_state(config, self.tensors())
        return super().training_state()

    def stored_dtype(self, info: TensorInfo) -> np.dtype:
        return np.dtype(self.dataset(info).dtype)

    def cannot_compress(self) -> str | None:
        return None

    def copy_source_to(self, dest: Path) -> None:
        """Copy the container's bytes to ``dest`` (the HDF5 file itself)."""
        shutil.copyfile(self.local_copy(), dest)

    def source_region(self) -> tuple[Path, int, int] | None:
        """Where the HDF5 file's bytes lie as they are: (file, offset, size); None when
        they are not in a file as such. Direct reads and range copies use it."""
        local = self.local_copy()
        return (local, 0, local.stat().st_size) if local.is_file() else None


def copy_attrs(src: h5py.HLObject, dst: h5py.HLObject) -> None:
    for key in src.attrs:
        dst.attrs.create(key, src.attrs[key], dtype=src.attrs.get_id(key).dtype)


COMPRESS_MIN_ELEMS = 4096
# How ``--compress`` stores an HDF5 dataset (h5py and Keras read it as any other).
COMPRESSION: dict[str, Any] = {"chunks": True, "compression": "gzip", "compression_opts": 6}


class H5Patcher(Patcher):
    """Writes a patched copy of an HDF5 checkpoint.

    Same dtypes, source a plain file: each changed tensor's new bytes are written at
    its dataset's offset in the output (contiguous HDF5 datasets are raw bytes at a
    known place), and every byte range nobody wrote is copied from the source with
    ``copy_file_range`` at commit. Every output byte is written once, as ``cp``
    would; the result is the source's bytes with only the changed datasets replaced.
    A dataset that is not contiguous (chunked, compressed) switches to the general
    route: the rest of the copy is completed and h5py writes in place.

    A dtype change (``quantize --dtype``): the copy is rebuilt object by object with
    HDF5's own object copy (``H5Ocopy``: data and attributes as they were), and only
    the retyped datasets are created anew, so the file shrinks. ``compress``: the
    finished copy is rebuilt so once more, every numeric dataset of at least
    ``COMPRESS_MIN_ELEMS`` created anew chunked with gzip (level 6; byte shuffling
    would cost a pruned tensor a sixth of the saving)
    (``COMPRESSION``), its data copied block by block (compressed chunks written once:
    HDF5 does not reclaim the space of a compressed chunk written again).
    """

    def __init__(
        self,
        store: H5Store,
        out: Path,
        retype: dict[str, str],
        tmp: Path | None = None,
        tmp_base: int = 0,
        compress: bool = False,
    ) -> None:
        super().__init__()
        self.store = store
        self.out = out
        self.tmp = tmp or temp_beside(out)
        # The HDF5 file starts at byte ``tmp_base`` of ``tmp`` (a power of two >= 512,
        # where HDF5 looks for a superblock: the bytes before are a user block, such as
        # a zip member's local header); h5py finds it there.
        self.tmp_base = tmp_base
        self.retype = retype
        self.compress = compress
        self.f: h5py.File | None = None
        self.copy: RangeCopy | None = None
        self.offsets: dict[str, int] = {}
        self._general = False  # h5py writes (after the range copy, or without one)
        self._h5_bytes = 0
        self._copied_bytes = 0
        try:
            if retype:
                self._rebuild()
                self._h5_bytes = self.tmp.stat().st_size - tmp_base  # written whole
                self.f = h5py.File(self.tmp, "r+")
            elif (region := store.source_region()) is not None:
                path, base, size = region
                self.copy = RangeCopy(path, self.tmp, base, size, dst_base=tmp_base)
            else:
                assert not tmp_base, "a copy at an offset needs a source region"
                store.copy_source_to(self.tmp)
                self._general = True
                self._h5_bytes = self.tmp.stat().st_size
                self.f = h5py.File(self.tmp, "r+")
        except BaseException:
            self._close()
            self.tmp.unlink(missing_ok=True)
            raise

    def _rebuild(self) -> None:
        src = self.store.h5file
        with h5py.File(self.tmp, "w", userblock_size=self.tmp_base or None) as dst:
            copy_attrs(src, dst)
            self._copy_group(src, dst)

    def _repack(self) -> None:
        """``compress``: the finished copy rebuilt compressed, in place of ``tmp``."""
        assert not self.tmp_base, "a compressed copy is a file of its own"
        packed = temps.make_file(self.tmp.parent, self.tmp.name + ".")
        try:
            with h5py.File(self.tmp, "r") as src, h5py.File(packed, "w") as dst:
                copy_attrs(src, dst)
                self._copy_group(src, dst, packing=True)
            os.chmod(packed, os.stat(self.tmp).st_mode & 0o777)
            os.replace(packed, self.tmp)
            temps.forget(packed)
        except BaseException:
            temps.remove(packed)
            raise
        self._h5_bytes = self.tmp.stat().st_size
        self._copied_bytes = 0

    def _compressible(self, ds: h5py.Dataset) -> bool:
        """A numeric dataset large enough that compressing it pays (a chunk index and a
        filter pipeline cost a few hundred bytes: small ones stay contiguous)."""
        return (
            self.compress
            and ds.shape is not None
            and len(ds.shape) > 0
            and ds.size >= COMPRESS_MIN_ELEMS
            and (ds.dtype.kind in "fiub" or naming.decode(ds.attrs.get("dtype", "")) == "bfloat16")
        )

    def _copy_compressed(self, ds: h5py.Dataset, dst: h5py.Group, name: str) -> None:
        out = dst.create_dataset(name, shape=ds.shape, dtype=ds.dtype, **COMPRESSION)
        copy_attrs(ds, out)
        for block in split(ds.shape):
            out[block.index] = ds[block.index]

    def _copy_group(self, src: h5py.Group, dst: h5py.Group, packing: bool = False) -> None:
        retype = {} if packing else self.retype
        for name in src:
            obj = src[name]
            path = obj.name
            if isinstance(obj, h5py.Dataset) and path in retype:
                new_dtype = self.retype[path]
                # bfloat16 as Keras 3 writes it: an opaque 2-byte type marked dtype="bfloat16".
                stored = to_numpy(new_dtype)
                ds = dst.create_dataset(name, shape=obj.shape, dtype=stored)
                copy_attrs(obj, ds)
                if new_dtype == "bfloat16":
                    ds.attrs["dtype"] = "bfloat16"
                elif "dtype" in ds.attrs and naming.decode(ds.attrs["dtype"]) == "bfloat16":
                    del ds.attrs["dtype"]
            elif packing and isinstance(obj, h5py.Dataset) and self._compressible(obj):
                self._copy_compressed(obj, dst, name)
            elif isinstance(obj, h5py.Group) and (
                packing or any(p.startswith(path + "/") for p in retype)
            ):
                sub = dst.create_group(name)
                copy_attrs(obj, sub)
                self._copy_group(obj, sub, packing)
            else:
                src.copy(obj, dst, name=name)

    @property
    def bytes_written(self) -> int:
        if self.retype or self.compress or self._general:
            return self._h5_bytes + self._copied_bytes
        return self._copied_bytes + (self.copy.bytes_written if self.copy is not None else 0)

    def _begin(self, info: TensorInfo, dtype: str) -> None:
        if dtype != info.dtype and self.retype.get(info.path) != dtype:
            raise ValueError(f"{info.name}: dtype change to {dtype} was not planned")
        if self.copy is not None:
            ds = self.store.dataset(info)
            if ds.offset is None:
                self._complete()
            else:
                self.offsets[info.path] = ds.offset

    def _write(self, info: TensorInfo, block: Block, data: np.ndarray) -> None:
        if self.copy is not None:
            ds = self.store.dataset(info)
            raw = np.ascontiguousarray(
                data, dtype=ds.dtype if data.dtype.name != "bfloat16" else data.dtype
            )
            at = self.offsets[info.path] + block.first * ds.dtype.itemsize
            self.copy.write(
                raw.reshape(-1).view(np.uint8), at
            )  # bytes (bfloat16 has no buffer format)
            return
        assert self.f is not None
        target = self.f[info.path]
        if data.dtype.name == "bfloat16" and target.dtype.kind != "V":
            data = data.astype(target.dtype)
        if target.shape == ():
            target[()] = data
        else:
            target[block.index] = data
        self._h5_bytes += int(data.nbytes)

    def _complete(self) -> None:
        """Fill every byte range not written from the source; continue with h5py."""
        if self.copy is None:
            return
        self.copy.finish()
        self._copied_bytes += self.copy.bytes_written
        self.copy = None
        self._general = True
        self.f = h5py.File(self.tmp, "r+")

    def _set_config(self, config: dict[str, Any]) -> None:
        """A legacy full-model file keeps its config in the root attribute ``model_config``."""
        if self.store.kind != LEGACY_FULL:
            raise UnsupportedError(f"{self.out}: this HDF5 file stores no model config")
        self._complete()
        assert self.f is not None
        text = json.dumps(config)
        self.f.attrs["model_config"] = text
        self._h5_bytes += len(text.encode())

    def _drop_training(self) -> list[str]:
        """A legacy full-model file's ``training_config`` attribute (the compile
        arguments) and ``optimizer_weights`` group (the optimizer's state)."""
        if self.store.kind != LEGACY_FULL:
            raise UnsupportedError(f"{self.out}: this HDF5 file stores no training state")
        self._complete()
        assert self.f is not None
        dropped = []
        if "training_config" in self.f.attrs:
            del self.f.attrs["training_config"]
            dropped.append("training_config")
        if "optimizer_weights" in self.f:
            del self.f["optimizer_weights"]
            dropped.append("optimizer_weights")
        return dropped

    def _create(self, path: str, data: np.ndarray) -> None:
        self._complete()
        assert self.f is not None
        self.f.create_dataset(path, data=data)
        self._h5_bytes += int(data.nbytes)

    def _set_history(self, history: list[dict[str, Any]]) -> None:
        self._complete()
        assert self.f is not None
        text = json.dumps(history)
        self.f.attrs[h5util.HISTORY_ATTR] = text
        self._h5_bytes += len(text.encode())

    def _close(self) -> None:
        if self.copy is not None:
            self.copy.close()
            self.copy = None
        if self.f is not None and self.f.id.valid:
            self.f.close()

    def close_file(self) -> None:
        self._complete()
        self._close()
        if self.compress:
            self._repack()

    def _commit(self) -> None:
        self.close_file()
        publish(self.tmp, self.out, self.overwrite)

    def _abort(self) -> None:
        try:
            self._close()
        finally:
            self.tmp.unlink(missing_ok=True)


# -- a legacy full model written anew (``strip``: the layers themselves change) -------------


def legacy_layers(store: H5Store) -> list[tuple[str, list[tuple[str, str]]]]:
    """A legacy full model's weight groups as Keras lists them (``layer_names``, then each
    layer's ``weight_names``): (layer, [(weight name, dataset path)])."""
    if store.kind != LEGACY_FULL:
        raise UnsupportedError(
            f"{store.path}: a {store.meta.format_label}, not a legacy full-model .h5 "
            "(TFMOT's models are saved so: model.save('m.h5') with tf_keras)"
        )
    group = store.h5file["model_weights"]
    out = []
    names = h5util.read_attr(group, "layer_names")
    for layer in [] if names is None else list(names):
        name = naming.decode(layer)
        found = h5util.read_attr(group[name], "weight_names")
        weights = [] if found is None else list(found)
        out.append(
            (
                name,
                [(naming.decode(w), f"/model_weights/{name}/{naming.decode(w)}") for w in weights],
            )
        )
    return out


def training_state(store: H5Store) -> list[str]:
    """What a legacy full model stores for training (its compile arguments, its
    optimizer's state): what a rewrite that does not carry them drops."""
    f = store.h5file
    return [k for k in ("training_config",) if k in f.attrs] + [
        k for k in ("optimizer_weights",) if k in f
    ]


Made = Callable[[], np.ndarray] | tuple[Any, tuple[int, ...], Iterator[tuple[Block, np.ndarray]]]


def write_legacy_model(
    out: Path,
    attrs: dict[str, Any],
    config: dict[str, Any],
    layers: Sequence[tuple[str, Sequence[tuple[str, Made]]]],
    history: list[dict[str, Any]],
    overwrite: bool,
) -> int:
    """A legacy full-model ``.h5`` made anew: ``config`` as its ``model_config``, each
    layer's weights under ``model_weights`` (each made whole by a function, or streamed
    as (dtype, shape, blocks)), ``attrs`` (``keras_version``, ...) on the file and on
    ``model_weights``, no optimizer state. Published atomically; the bytes written."""
    tmp = temp_beside(out)
    try:
        with h5py.File(tmp, "w") as f:
            for key, value in attrs.items():
                f.attrs[key] = value
            f.attrs["model_config"] = json.dumps(config)
            group = f.create_group("model_weights")
            for key in ("keras_version", "backend"):
                if key in attrs:
                    group.attrs[key] = attrs[key]
            group.attrs["layer_names"] = np.array([n.encode() for n, _ in layers])
            for name, weights in layers:
                layer = group.create_group(name)
                layer.attrs["weight_names"] = np.array([w.encode() for w, _ in weights])
                for weight, made in weights:
                    if callable(made):
                        layer.create_dataset(weight, data=made())
                        continue
                    h5util.write_streamed(layer, weight, *made)
            f.attrs[h5util.HISTORY_ATTR] = json.dumps(history)
        size = tmp.stat().st_size
        publish(tmp, out, overwrite)
    except BaseException:
        temps.remove(tmp)
        raise
    return size


def source_attrs(store: H5Store) -> dict[str, Any]:
    """The attributes of a legacy full model that a new one made from it keeps: its
    writer's ``keras_version`` and ``backend``, its ``training_config``."""
    src = store.h5file
    return {
        k: src.attrs[k] for k in ("keras_version", "backend", "training_config") if k in src.attrs
    }
