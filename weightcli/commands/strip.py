"""``strip``: a model saved with TensorFlow Model Optimization's training wrappers
(pruning, clustering, quantization-aware training) becomes the plain model, which Keras
loads without TFMOT: the config unwrapped and the effective weights written
(``weightcli.tfmot`` says how), the wrappers' own variables and the optimizer state
dropped. A new file (the layers change), written in the source's format."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from weightcli import tfmot
from weightcli.digest import digest
from weightcli.errors import UnsupportedError
from weightcli.params import OutputSpec
from weightcli.results import StripResult, StripRow
from weightcli.stores import open_store
from weightcli.stores.base import Format, Provenance, Store
from weightcli.stores.hdf5 import write_legacy_model
from weightcli.stores.remote import as_path
from weightcli.tensor import TensorInfo

__all__ = ["StripRequest", "StripResult", "run"]


@dataclass(frozen=True)
class StripRequest:
    """Where the plain model goes."""

    out: OutputSpec = field(default_factory=OutputSpec)

    def __post_init__(self) -> None:
        self.out.refuse("allow_nonfinite", "in_place", "compress", "requantize", command="strip")


def _reader(store: Store, info: TensorInfo) -> np.ndarray:
    return np.asarray(store.read(info))


def run(request: StripRequest, path: str | Path) -> StripResult:
    src = as_path(path)
    with open_store(src) as store:
        layers = store.keras_layers()
        model_config = getattr(store, "model_config", None)
        if layers is None:
            raise UnsupportedError(
                f"{src}: strip reads TFMOT models saved by tf_keras as a legacy .h5 "
                "(model.save('m.h5')) or a SavedModel with its keras_metadata.pb "
                "(model.save('folder'))"
            )
        attrs = store.legacy_attrs()
        # a legacy .h5 in, the same format out; a SavedModel's plain model: a legacy .h5
        saved = not store.meta.legacy_full_model
        if not isinstance(model_config, dict):
            raise UnsupportedError(f"{src}: no model config to unwrap")
        config, unwrapped, removed = tfmot.unwrap(model_config)
        by_path = {t.path: t for t in store.tensors()}
        wrappers = {u.wrapper: u for u in unwrapped}
        plan: list[tuple[str, list[tuple[str, Callable[[], np.ndarray]]]]] = []
        rows: list[StripRow] = []
        dropped: list[str] = []
        for name, weights in layers:
            if name in removed:
                dropped += [w for w, _ in weights]
                continue
            u = wrappers.get(name)
            if u is None:
                plan.append((name, [(w, _load(store, by_path[p])) for w, p in weights]))
                continue
            own = {w.split("/", 1)[1]: by_path[p] for w, p in weights if w.startswith(f"{name}/")}
            inner = _in_order(
                [(w, by_path[p]) for w, p in weights if w.startswith(f"{u.inner}/")], u
            )
            made: list[tuple[str, Callable[[], np.ndarray]]] = []
            for w, info in inner:
                short = w.split("/", 1)[1].split(":")[0]  # kernel
                how, make = _effective(u, short, info, own, store)
                made.append((w, make))
                rows.append(StripRow(u.wrapper, u.inner, u.kind, w, how))
            dropped += [f"{name}/{k}" for k in own]
            plan.append((u.inner, made))
        out = request.out.plan(  # a SavedModel's plain model: a legacy .h5 (no graph to write)
            store,
            src,
            as_format=(Format.KERAS_H5, "Keras legacy HDF5 (full model)") if saved else None,
        )
        history = [
            *store.meta.history,
            Provenance.now(
                command=f"weightcli strip {src}",
                steps=[{"command": "strip", "unwrapped": [u.wrapper for u in unwrapped]}],
                source=src.name,
                source_digest=None
                if request.out.dry_run
                else digest(store.local_copy(), request.out.digest),
                changed=[r.weight for r in rows],
                note=request.out.note,
            ).to_json(),
        ]
        optimizer = any(t.optimizer for t in store.tensors())
        written = 0
        if out is not None:
            written = write_legacy_model(
                out,
                attrs,
                config,
                plan,
                history,
                request.out.force,
            )
        return StripResult(
            str(src), str(out) if out else None, rows, removed, dropped, optimizer, written
        )


def _in_order(
    weights: list[tuple[str, TensorInfo]], u: tfmot.Unwrapped
) -> list[tuple[str, TensorInfo]]:
    """The plain layer's weights in the order the layer creates them (Keras loads a
    legacy .h5 by position): a wrapper may save them in another (``ClusterWeights``
    puts the kernel it replaces last)."""
    from weightcli.stores.naming import keras3_var_names

    order = keras3_var_names(u.inner_class, len(weights), None)
    if order is None:
        return weights
    rank = {name: i for i, name in enumerate(order)}
    return sorted(weights, key=lambda p: rank.get(p[0].split("/", 1)[1].split(":")[0], len(rank)))


def _load(store: Store, info: TensorInfo) -> Callable[[], np.ndarray]:
    """A deferred read (one tensor in memory at a time, as it is written)."""
    return lambda: _reader(store, info)


def _effective(
    u: tfmot.Unwrapped, short: str, info: TensorInfo, own: dict[str, TensorInfo], store: Store
) -> tuple[str, Callable[[], np.ndarray]]:
    """How the plain layer's weight ``short`` is made, and a function that makes it."""
    if u.kind == "prune" and short == "kernel":
        masks = [k for k in own if k.startswith("mask")]
        if len(masks) != 1:
            raise UnsupportedError(f"{u.wrapper}: {len(masks)} pruning masks (one expected)")
        mask = own[masks[0]]
        return "kernel x mask", lambda: (_reader(store, info) * _reader(store, mask)).astype(
            info.dtype
        )
    if u.kind == "cluster":
        centroids = own.get(f"cluster_centroids_{short}:0")
        indices = own.get(f"pulling_indices_{short}:0")
        if centroids is not None and indices is not None:
            per_channel = len(centroids.shape) == 2
            if len(centroids.shape) not in (1, 2):
                raise UnsupportedError(
                    f"{u.wrapper}: centroids of shape {centroids.shape} (1-D or per channel)"
                )

            def nearest(values: np.ndarray, c: np.ndarray) -> np.ndarray:
                # As strip_clustering: the associations recomputed from the original
                # weight (the saved indices may be a training step old), the nearest
                # centroid by |w - c| in the weight's dtype, the first on a tie.
                flat = values.reshape(-1)
                idx = np.empty(flat.size, np.int64)
                for at in range(0, flat.size, 1 << 16):
                    part = flat[at : at + (1 << 16)]
                    idx[at : at + part.size] = np.argmin(np.abs(part[:, None] - c[None, :]), axis=1)
                return c[idx].reshape(values.shape)

            def gathered() -> np.ndarray:
                c = _reader(store, centroids)
                w = _reader(store, info)
                if not per_channel:
                    return nearest(w, c).astype(info.dtype)
                # TFMOT's per-channel clustering (Conv2D): each output channel (the last
                # axis, or axis 1 for channels_first) has centroids of its own
                axis = 1 if u.data_format == "channels_first" else w.ndim - 1
                if w.shape[axis] != c.shape[0]:
                    raise UnsupportedError(
                        f"{u.wrapper}: {c.shape[0]} channels of centroids for a weight of "
                        f"shape {w.shape}"
                    )
                moved = np.moveaxis(w, axis, 0)
                out = np.stack([nearest(moved[i], c[i]) for i in range(c.shape[0])])
                return np.moveaxis(out, 0, axis).astype(info.dtype)

            return "nearest centroid", gathered
    return "as stored", _load(store, info)
