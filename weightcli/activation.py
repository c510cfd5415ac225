"""``scale --by-activation``: per-layer factors from the activations a model produces on
calibration data, so each selected layer's typical output lands on a target.

The model runs in Keras (imported here, lazily); the factors are then written by the
ordinary surgery pipeline (a scale step per layer), so only the changed kernels and
biases are rewritten and the history is recorded. Each layer is measured with the
earlier layers already scaled, so every layer lands on the target, not only the first.

Statistics of a layer's output ``y`` over all calibration samples: ``mean-abs`` =
mean |y|, ``rms`` = sqrt(mean y^2), ``p99`` = 99th percentile of |y|.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from weightcli.errors import InputError, ParameterError, UsageError
from weightcli.framework import keras_module, load_keras_model, quiet
from weightcli.results import ActivationPlan, LayerPlan
from weightcli.select import Selection
from weightcli.steps import ScaleStep
from weightcli.stores import Store
from weightcli.tensor import TensorInfo

STATS = ("mean-abs", "rms", "p99")
# Activations f with f(c x) = c f(x) for c > 0: scaling the kernel and bias by c scales
# the layer's output by c exactly.
HOMOGENEOUS = {None, "linear", "relu", "leaky_relu"}


def load_calibration(
    path: Path, input_names: list[str], input_shapes: list[tuple[Any, ...]]
) -> list[np.ndarray]:
    """The calibration arrays, one per model input, checked against the input signature."""
    from weightcli.arrays import load_any, regular_file

    if regular_file(path, "calibration file") == 0:
        raise InputError(f"{path}: calibration file is empty")
    data = load_any(path)
    if isinstance(data, np.ndarray):
        if len(input_names) != 1:
            raise UsageError(
                f"{path}: the model has {len(input_names)} inputs: give a .npz with one array per input name"
            )
        arrays = [data]
    else:
        files = list(data.files)
        if len(files) == 1 and len(input_names) == 1:
            arrays = [data[files[0]]]
        else:
            missing = [n for n in input_names if n not in files]
            if missing:
                raise UsageError(
                    f"{path}: no array for model input(s) {', '.join(missing)} (it has {', '.join(files)})"
                )
            arrays = [data[n] for n in input_names]
    n = None
    for name, arr, shape in zip(input_names, arrays, input_shapes, strict=True):
        if arr.dtype.kind not in "fiub":
            raise UsageError(
                f"{path}: calibration data for {name} has dtype {arr.dtype}, not numbers"
            )
        if arr.size == 0 or arr.ndim == 0:
            raise UsageError(f"{path}: calibration data for {name} is empty")
        want = tuple(shape[1:])
        got = tuple(arr.shape[1:])
        if len(got) != len(want) or any(
            w is not None and w != g for w, g in zip(want, got, strict=True)
        ):
            raise UsageError(
                f"{path}: calibration data for {name} has samples of shape {got}; the model expects {want}"
            )
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise UsageError(f"{path}: calibration data for {name} holds NaN or Inf")
        if n is not None and arr.shape[0] != n:
            raise UsageError(f"{path}: inputs have different numbers of samples")
        n = arr.shape[0]
    return arrays


def _statistic(kind: str, outputs: list[np.ndarray]) -> float:
    y = np.concatenate([np.abs(o.astype(np.float64)).ravel() for o in outputs])
    if kind == "mean-abs":
        return float(y.mean())
    if kind == "rms":
        return float(math.sqrt(float(np.mean(y * y))))
    return float(np.percentile(y, 99))


def _activation(layer: Any) -> str | None:
    act = layer.get_config().get("activation")
    if act is None or isinstance(act, str):
        return act
    if isinstance(act, dict):
        return str(act.get("config", {}).get("name") or act.get("class_name"))
    return str(getattr(act, "__name__", act))


def _measure(
    model: Any, where: Placed, inputs: list[np.ndarray], batch_size: int, stat: str
) -> float:
    """The statistic of one layer's output over the calibration data, in the full model
    (a layer inside nested models is reached through each model's call in its parent)."""
    with quiet():
        return _measure_quietly(model, where, inputs, batch_size, stat)


def _measure_quietly(
    model: Any, where: Placed, inputs: list[np.ndarray], batch_size: int, stat: str
) -> float:
    keras = keras_module()
    feeders = []
    outer = model
    for sub in where.models:
        nodes = [n for n in sub._inbound_nodes if n in _nodes_of(outer)] or sub._inbound_nodes
        if len(nodes) != 1:
            raise UsageError(
                f"{where.path}: the model {sub.name} is called {len(nodes)} times: its layers "
                "cannot be measured one way"
            )
        feeders.append(keras.Model(outer.inputs, nodes[0].input_tensors))
        outer = sub
    probe = keras.Model(outer.inputs, where.layer.output)
    outs = []
    n = inputs[0].shape[0]
    for start in range(0, n, batch_size):
        batch: Any = [a[start : start + batch_size] for a in inputs]
        for feeder in feeders:
            batch = feeder(batch, training=False)
            batch = list(batch) if isinstance(batch, list | tuple) else [batch]
        out = probe(batch, training=False)  # a functional model: inputs as a list
        outs.append(np.asarray(out))
    return _statistic(stat, outs)


def _nodes_of(model: Any) -> list[Any]:
    """The call nodes of ``model``'s own graph (empty when Keras does not say)."""
    try:
        return [n for layer in model.layers for n in layer._inbound_nodes]
    except AttributeError:
        return []


def check_params(target: float, stat: str, batch_size: int) -> None:
    """The calibration parameters: a finite target > 0, a known statistic, a batch of 1+."""
    if not (math.isfinite(target) and target > 0):
        raise ParameterError(f"{{target}} must be a finite number > 0, got {target}")
    if stat not in STATS:
        raise ParameterError(f"{{stat}} must be one of {', '.join(STATS)}")
    if batch_size < 1:
        raise ParameterError("{batch_size} must be at least 1")


MEASURES = ("sequential", "original")


def plan(
    model: Any,
    store: Store,
    sel: Selection,
    calibration: Path,
    target: float,
    stat: str,
    batch_size: int,
    measure: str = "sequential",
) -> tuple[ActivationPlan, list[np.ndarray]]:
    """Measure and scale each selected layer in forward order.

    ``sequential``: each layer is measured with the earlier layers already scaled (in
    the live model), so every layer lands on the target. ``original``: every layer is
    measured once on the unmodified model (the tutorials' method); a layer after a
    scaled one then sees scaled inputs, and lands on target * the product of the
    factors before it (for homogeneous activations)."""
    check_params(target, stat, batch_size)
    names = [t.name.split(":")[0] for t in model.inputs]
    shapes = [tuple(t.shape) for t in model.inputs]
    inputs = load_calibration(calibration, names, shapes)
    tensors = {t.name: t for t in store.tensors()}
    result = ActivationPlan(target, stat)
    for where in _forward_layers(model):
        layer = where.layer
        kernel = tensors.get(f"{where.path}/kernel")
        if kernel is None:
            if layer.weights and any(w.path.endswith("kernel") for w in layer.weights):
                lp = LayerPlan(where.path, type(layer).__name__, _activation(layer))
                lp.note = f"no tensor {where.path}/kernel in the file: not scaled"
                result.layers.append(lp)
            continue
        if not sel.matches(kernel):
            continue
        act = _activation(layer)
        lp = LayerPlan(where.path, type(layer).__name__, act)
        result.layers.append(lp)
        named = any(
            where.path == g.rstrip("/*") or layer.name == g.split("/")[0] for g in sel.select
        )
        if act not in HOMOGENEOUS and not named:
            lp.note = f"activation {act} is not positively homogeneous: not scaled (select it explicitly to scale)"
            lp.stat_before = _measure(model, where, inputs, batch_size, stat)
            continue
        lp.stat_before = _measure(model, where, inputs, batch_size, stat)
        if lp.stat_before == 0:
            lp.note = "dead layer (statistic 0): not scaled"
            continue
        lp.factor = target / lp.stat_before
        lp.scaled = True
        if act not in HOMOGENEOUS:
            lp.note = (
                f"activation {act} is not positively homogeneous: the target is approached, not met"
            )
        if measure == "sequential":
            _scale_live(layer, lp.factor)
    if not any(lp.stat_before is not None for lp in result.layers):
        raise UsageError("the selection matches no layer with a kernel")
    if measure == "original":  # the model in memory now gets the factors, for dry runs
        by_path = {where.path: where.layer for where in _forward_layers(model)}
        for lp in result.layers:
            if lp.scaled:
                _scale_live(by_path[lp.layer], lp.factor)
    return result, inputs


def _scale_live(layer: Any, factor: float) -> None:
    for w in layer.weights:
        if w.path.endswith("/kernel") or w.path.endswith("/bias"):
            w.assign(np.asarray(w) * np.asarray(factor, dtype=np.asarray(w).dtype))


@dataclass(frozen=True)
class Placed:
    """A layer and the nested models it sits in (outermost first); ``path`` is its
    canonical name (``encoder/enc_dense``), as the stores name its tensors."""

    models: tuple[Any, ...]
    layer: Any

    @property
    def path(self) -> str:
        return "/".join([*(m.name for m in self.models), self.layer.name])


def _forward_layers(model: Any, models: tuple[Any, ...] = ()) -> list[Placed]:
    """Layers in forward (topological) order, nested models walked into."""
    out = []
    for layer in model.layers:
        inner = getattr(layer, "layers", None)
        if inner:
            out += _forward_layers(layer, (*models, layer))
        else:
            out.append(Placed(models, layer))
    return out


def measure_after(
    path: Path,
    store: Store,
    architecture: Path | None,
    result: ActivationPlan,
    inputs: list[np.ndarray],
    batch_size: int,
) -> None:
    """Statistic of every planned layer, measured again on the written model."""
    model = load_keras_model(path, store, architecture)
    measure_live(model, result, inputs, batch_size)


def measure_live(
    model: Any, result: ActivationPlan, inputs: list[np.ndarray], batch_size: int
) -> None:
    """The statistic of every measured layer in ``model`` (the written model, or for a dry
    run the scaled model in memory)."""
    by_path = {where.path: where for where in _forward_layers(model)}
    for lp in result.layers:
        if lp.stat_before is not None:
            lp.stat_after = _measure(model, by_path[lp.layer], inputs, batch_size, result.stat)


class ActivationStep(ScaleStep):
    """The scale step that writes an activation plan: exact per-layer factors on kernel and bias."""

    def __init__(self, result: ActivationPlan, calibration: str) -> None:
        factors = result.factors
        super().__init__(
            Selection(select=tuple(factors), kinds=("kernel", "bias")), by_layer=factors
        )
        self.result = result
        self.calibration = calibration

    def factor_for(self, info: TensorInfo) -> float | None:
        """The factor of the layer this tensor belongs to (by its full path)."""
        return self.by_layer.get(info.name.rsplit("/", 1)[0])

    def params(self) -> dict[str, Any]:
        return {
            "by_activation": {
                "target": self.result.target,
                "stat": self.result.stat,
                "calibration": self.calibration,
            },
            "factors": self.result.factors,
        }
