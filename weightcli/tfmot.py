"""TensorFlow Model Optimization's training wrappers, read from a saved model's config
(pure JSON and numpy: TFMOT is never imported).

TFMOT wraps each layer it prunes, clusters or quantizes in a layer of its own, whose
config holds the original layer's (``config.layer``) and whose weights are the original
ones (``<inner>/kernel:0``) plus its own (``<wrapper>/mask:0``, ...). ``unwrap`` turns
the model config back into the plain model's, and says for each wrapper how the plain
layer's weights are computed from what it saved, as TFMOT's own ``strip_pruning`` and
``strip_clustering`` do:

- ``PruneLowMagnitude`` (``prune_low_magnitude``): the kernel times ``mask`` (the
  wrapper's ``mask``, ``threshold`` and ``pruning_step`` are dropped).
- ``ClusterWeights`` (``cluster_weights``): each clustered weight ``w`` (stored: the
  original value TFMOT trains) becomes its nearest ``cluster_centroids_<w>`` (the first
  on a tie), the associations recomputed as ``strip_clustering`` recomputes them (the
  saved ``pulling_indices_<w>`` may be a training step old).
- ``QuantizeWrapperV2`` (``quantize_model``, quantization-aware training): the weights as
  stored (the float model; the ranges ``kernel_min``/``kernel_max`` and activations'
  are dropped), its ``QuantizeAwareActivation(act)`` back to ``act``; the
  ``QuantizeLayer`` TFMOT puts at the inputs is removed.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from weightcli.errors import UnsupportedError

WRAPPERS = {
    "PruneLowMagnitude": "prune",
    "ClusterWeights": "cluster",
    "QuantizeWrapperV2": "quantize",
    "QuantizeWrapper": "quantize",
}
REMOVED = {"QuantizeLayer"}


@dataclass(frozen=True)
class Unwrapped:
    """One wrapper layer and the plain layer inside it."""

    wrapper: str
    inner: str
    inner_class: str
    kind: str  # prune | cluster | quantize
    data_format: str = "channels_last"  # the inner layer's (per-channel clustering's axis)


def _layer_name(entry: dict[str, Any]) -> str:
    return str(entry.get("name") or entry.get("config", {}).get("name"))


def _rename(value: Any, names: dict[str, str]) -> Any:
    """Inbound-node and input/output references renamed (``[name, node, tensor, ...]``
    lists whose first element names a layer)."""
    if isinstance(value, list):
        if value and isinstance(value[0], str) and value[0] in names:
            return [names[value[0]], *(_rename(v, names) for v in value[1:])]
        return [_rename(v, names) for v in value]
    if isinstance(value, dict):
        return {k: _rename(v, names) for k, v in value.items()}
    return value


def _reroute(value: Any, removed: dict[str, Any]) -> Any:
    """References to a removed layer replaced by that layer's own input reference."""
    if isinstance(value, list):
        if value and isinstance(value[0], str) and value[0] in removed:
            return copy.deepcopy(removed[value[0]])
        return [_reroute(v, removed) for v in value]
    if isinstance(value, dict):
        return {k: _reroute(v, removed) for k, v in value.items()}
    return value


# Activations QAT puts in a wrapped layer's config, and what they stand for.
QAT_ACTIVATIONS = {"QuantizeAwareActivation", "NoOpActivation"}


def _plain_activations(value: Any) -> Any:
    """A QAT-wrapped layer's config with TFMOT's activation objects replaced by the
    activation they wrap (``QuantizeAwareActivation(relu)`` -> ``"relu"``;
    ``NoOpActivation`` -> ``"linear"``)."""
    if isinstance(value, dict):
        if value.get("class_name") in QAT_ACTIVATIONS:
            inner = (value.get("config") or {}).get("activation", "linear")
            return _plain_activations(inner) if isinstance(inner, dict) else inner
        return {k: _plain_activations(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_activations(v) for v in value]
    return value


def unwrap(model_config: dict[str, Any]) -> tuple[dict[str, Any], list[Unwrapped], list[str]]:
    """The plain model's config, the wrappers unwrapped (in the config's order), and the
    layers removed. A model with no TFMOT layer is an error (nothing to strip)."""
    cls = model_config.get("class_name")
    if cls not in ("Sequential", "Functional", "Model"):
        raise UnsupportedError(f"strip reads a Sequential or functional model, not a {cls}")
    config = copy.deepcopy(model_config)
    layers = config.get("config", {}).get("layers")
    if not isinstance(layers, list):
        raise UnsupportedError("the model config lists no layers")
    out: list[dict[str, Any]] = []
    found: list[Unwrapped] = []
    removed: list[str] = []
    names: dict[str, str] = {}
    reroutes: dict[str, Any] = {}
    for entry in layers:
        kind = WRAPPERS.get(entry.get("class_name", ""))
        if entry.get("class_name") in REMOVED:
            name = _layer_name(entry)
            removed.append(name)
            nodes = entry.get("inbound_nodes") or []
            if nodes and nodes[0]:  # a functional model: its consumers read its input
                reroutes[name] = nodes[0][0]
            continue
        if kind is None:
            if any(w in str(entry.get("config", {})) for w in (*WRAPPERS, *REMOVED)):
                raise UnsupportedError(
                    f"layer {_layer_name(entry)!r} holds a TFMOT wrapper inside it (a nested "
                    "model): strip unwraps the top level of a model only"
                )
            out.append(entry)
            continue
        inner = entry.get("config", {}).get("layer")
        if not isinstance(inner, dict) or "config" not in inner:
            raise UnsupportedError(
                f"{_layer_name(entry)}: a {entry['class_name']} without its layer"
            )
        wrapper_name = _layer_name(entry)
        if kind == "quantize":
            inner = _plain_activations(inner)
        inner_name = str(inner["config"].get("name"))
        plain = {
            k: v
            for k, v in entry.items()
            if k not in ("class_name", "config", "module", "registered_name")
        }
        plain.update({k: v for k, v in inner.items()})
        if "name" in entry:
            plain["name"] = inner_name
        out.append(plain)
        names[wrapper_name] = inner_name
        data_format = inner["config"].get("data_format") or "channels_last"
        found.append(
            Unwrapped(
                wrapper_name, inner_name, str(inner.get("class_name")), kind, str(data_format)
            )
        )
    if not found and not removed:
        raise UnsupportedError("no TFMOT wrapper in this model: nothing to strip")
    config["config"]["layers"] = out
    if reroutes:
        config = _reroute(config, reroutes)
    return _rename(config, names), found, removed
