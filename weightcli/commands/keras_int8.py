"""``quantize --store keras-int8``: turn Dense and Embedding layers into Keras's own int8
layers (int8 codes, a float32 scale per output channel or row, the layer's dtype policy
in the config), exactly as ``model.quantize("int8")`` does, so the file shrinks about 4x
and ``keras.saving.load_model`` gives a quantized model.

Keras's rule (``quantizers.abs_max_quantize`` on the host, Keras 3.15): per output
channel (Dense: over the kernel's axis 0; Embedding: over each row),
``scale = 127 / (max|w| + 1e-7)`` and ``codes = clip(round(w * scale), -127, 127)``, in
float32; the layer computes with ``codes / scale``. Reproduced here in numpy, block by
block (a first pass for the maxima, a second for the codes), bit for bit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from weightcli.digest import digest
from weightcli.errors import UnsupportedError, UsageError
from weightcli.figures import KerasInt8Figures
from weightcli.params import OutputSpec
from weightcli.results import TensorChange, TransformResult
from weightcli.select import Selection
from weightcli.stats import RunningStats
from weightcli.stores import open_store
from weightcli.stores.base import BLOCK_ELEMS, Provenance, Store
from weightcli.stores.naming import walk_config
from weightcli.stores.remote import as_path
from weightcli.tensor import TensorInfo

__all__ = ["KerasInt8Request", "run"]

EPSILON = 1e-7  # keras.config.epsilon(), the default Keras quantizes with
QMAX = 127
# The reduced axis (the one the maxima run over) for each layer class's weight.
REDUCE_AXIS = {("Dense", "kernel"): 0, ("Embedding", "embeddings"): 1}
POLICY = {
    "module": "keras.dtype_policies",
    "class_name": "QuantizedDTypePolicy",
    "config": {"mode": "int8", "source_name": "float32"},
    "registered_name": None,
}
QUANTIZATION_CONFIG = {
    "module": "keras.quantizers",
    "class_name": "Int8QuantizationConfig",
    "config": {
        "weight_quantizer": None,
        "activation_quantizer": {
            "module": "keras.quantizers",
            "class_name": "AbsMaxQuantizer",
            "config": {"value_range": [-QMAX, QMAX], "epsilon": EPSILON, "output_dtype": "int8"},
            "registered_name": None,
        },
    },
    "registered_name": None,
}


@dataclass(frozen=True)
class KerasInt8Request:
    """Which layers (default: every float32 Dense and Embedding layer) and where to write."""

    selection: Selection = field(default_factory=Selection)
    out: OutputSpec = field(default_factory=OutputSpec)

    def __post_init__(self) -> None:
        self.out.refuse("allow_nonfinite", "requantize", command="quantize --store keras-int8")


def run(request: KerasInt8Request, path: str | Path) -> TransformResult:
    """Quantize the selected layers natively and write the archive (or model folder)."""
    started = time.perf_counter()
    src = as_path(path)
    with open_store(src) as store:
        if not store.meta.keras3_model:
            raise UnsupportedError(
                f"{src}: a {store.meta.format_label}: Keras int8 layers need a .keras archive or "
                "an unzipped model folder (the layer's dtype policy lives in its config)"
            )
        chosen, left_out = _plan(store, request.selection)
        out = request.out.plan(store, src)
        patcher = None
        if not request.out.dry_run:
            assert out is not None
            patcher = store.patch(
                out,
                {t.path: "int8" for t, _ in chosen},
                request.out.force or request.out.in_place,
                request.out.compress,
            )
        changes: list[TensorChange] = []
        try:
            for info, axis in chosen:
                changes.append(_quantize(store, info, axis, patcher))
            config = _quantized_config(store, [t for t, _ in chosen])
            record = Provenance.now(
                command=f"weightcli quantize {src} --store keras-int8",
                steps=[{"command": "quantize", "store": "keras-int8"}],
                source=src.name,
                source_digest=digest(store.local_copy(), request.out.digest),
                changed=[c.info.name for c in changes],
                note=request.out.note,
            ).to_json()
            if patcher is not None:
                patcher.set_config(config)
                patcher.set_history([*store.meta.history, record])
                patcher.commit()
        except BaseException:
            if patcher is not None:
                patcher.abort()
            raise
        return TransformResult(
            source=src,
            output=None if request.out.dry_run else out,
            changes=changes,
            selected=len(chosen),
            total_tensors=sum(1 for t in store.tensors() if not t.optimizer),
            bytes_written=patcher.bytes_written if patcher is not None else 0,
            elapsed=time.perf_counter() - started,
            record=record,
            dry_run=request.out.dry_run,
            left_out=left_out,
        )


def _plan(store: Store, sel: Selection) -> tuple[list[tuple[TensorInfo, int]], list[str]]:
    chosen: list[tuple[TensorInfo, int]] = []
    left_out: list[str] = []
    for t in store.tensors():
        if t.optimizer or not sel.matches(t) or t.kind not in ("kernel", "embeddings"):
            continue
        axis = REDUCE_AXIS.get((t.layer_class or "", t.kind))
        if axis is None or t.ndim != 2 or t.dtype != "float32" or t.quantized:
            left_out.append(t.name)
            continue
        chosen.append((t, axis))
    if not chosen:
        raise UsageError(
            "no float32 Dense or Embedding layer selected: Keras int8 layers are made from those"
            + (f" (left out: {', '.join(left_out[:5])})" if left_out else "")
        )
    return chosen, left_out


def _quantize(store: Store, info: TensorInfo, axis: int, patcher: Any) -> TensorChange:
    keep = 1 - axis
    amax = np.zeros(info.shape[keep], np.float32)
    for where, block in store.blocks(info, BLOCK_ELEMS):
        if not np.isfinite(block).all():
            raise UsageError(
                f"{info.name} holds NaN or Inf: int8 codes cannot represent them "
                "(repair it first: clip --nonfinite zero)"
            )
        part = np.max(np.abs(block), axis=axis)
        span = slice(where.origin[keep], where.origin[keep] + block.shape[keep])
        amax[span] = np.maximum(amax[span], part)
    scale = np.divide(QMAX, np.add(amax, EPSILON)).astype(np.float32)  # Keras: float32 throughout
    before, after = RunningStats(count_zeros=False), RunningStats(count_zeros=False)
    worst = 0.0
    if patcher is not None:
        patcher.begin(info, "int8")
    for where, block in store.blocks(info, BLOCK_ELEMS):
        span = slice(where.origin[keep], where.origin[keep] + block.shape[keep])
        s = scale[span].reshape((1, -1) if axis == 0 else (-1, 1))
        codes = np.clip(np.round(np.multiply(block, s)), -QMAX, QMAX).astype(np.int8)
        if patcher is not None:
            patcher.write(info, where, codes)
        deq = codes.astype(np.float32) / s
        before.update(block)
        after.update(deq)
        worst = max(worst, float(np.max(np.abs(deq - block))) if block.size else 0.0)
    scale_path = info.path.rsplit("/", 1)[0] + "/" + str(_next_index(store, info))
    if patcher is not None:
        patcher.create(scale_path, scale)
    figures = KerasInt8Figures(
        scale_min=float(scale.min()) if scale.size else 0.0,
        scale_max=float(scale.max()) if scale.size else 0.0,
        max_abs_error=worst,
    )
    return TensorChange(info, "int8", before.result(), after.result(), info.size, worst, [figures])


def _next_index(store: Store, info: TensorInfo) -> int:
    """Where Keras puts the scale: after the layer's other variables (kernel, bias)."""
    group = info.path.rsplit("/", 1)[0] + "/"
    return sum(1 for t in store.tensors() if t.path.startswith(group))


def _quantized_config(store: Store, tensors: list[TensorInfo]) -> dict[str, Any]:
    import copy

    config = copy.deepcopy(getattr(store, "model_config", None))
    if not isinstance(config, dict):
        raise UnsupportedError(f"{store.path}: no model config to record the int8 layers in")
    layers = {t.layer for t in tensors}
    done: set[str] = set()
    for entry in walk_config(config):
        cfg = entry["config"]
        if entry.get("class_name") in ("Dense", "Embedding") and cfg.get("name") in layers:
            cfg["dtype"] = dict(POLICY)
            cfg["quantization_config"] = copy.deepcopy(QUANTIZATION_CONFIG)
            done.add(cfg["name"])
    missing = layers - done
    if missing:
        raise UnsupportedError(
            f"{store.path}: layers {sorted(str(m) for m in missing)} are not in the model config"
        )
    return config
