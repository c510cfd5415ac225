"""Canonical tensor names, kinds and layer classes, from what Keras files record.

Rules (documented in the README, "Canonical names"):

* A weight's canonical name is the variable name the writer recorded, without the
  TensorFlow ``:0`` suffix (``dense_1/kernel:0`` -> ``dense_1/kernel``).
* When every model weight's name has at least three parts and all start with the
  same part, that part is the model's own name (Keras 3 Sequential models and
  SavedModel exports write ``mlp/dense_1/kernel``) and is dropped, so one model
  gets the same names in every format.
* Keras 3 ``.weights.h5`` / ``.keras`` store no variable names, only their order
  (``layers/<x>/vars/<i>``). The names come from the layer class (from the
  archive's config, or else from the group name, which Keras derives from the
  class): see ``KERAS3_VARS``. Layers not listed there, or whose number of
  variables does not fit, keep the index: ``<layer>/<i>``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

from weightcli.errors import CorruptError

# Variable names of common Keras 3 layers, in the order Keras creates them.
KERAS3_VARS: dict[str, list[str]] = {
    "Dense": ["kernel", "bias"],
    "EinsumDense": ["kernel", "bias"],
    "Conv1D": ["kernel", "bias"],
    "Conv2D": ["kernel", "bias"],
    "Conv3D": ["kernel", "bias"],
    "Conv1DTranspose": ["kernel", "bias"],
    "Conv2DTranspose": ["kernel", "bias"],
    "Conv3DTranspose": ["kernel", "bias"],
    "DepthwiseConv1D": ["kernel", "bias"],
    "DepthwiseConv2D": ["kernel", "bias"],
    "SeparableConv1D": ["depthwise_kernel", "pointwise_kernel", "bias"],
    "SeparableConv2D": ["depthwise_kernel", "pointwise_kernel", "bias"],
    "BatchNormalization": ["gamma", "beta", "moving_mean", "moving_variance"],
    "LayerNormalization": ["gamma", "beta"],
    "GroupNormalization": ["gamma", "beta"],
    "Embedding": ["embeddings"],
    "PReLU": ["alpha"],
    "LSTMCell": ["kernel", "recurrent_kernel", "bias"],
    "GRUCell": ["kernel", "recurrent_kernel", "bias"],
    "SimpleRNNCell": ["kernel", "recurrent_kernel", "bias"],
    "Normalization": ["mean", "variance", "count"],
}

# Keras 1 stored weights as `<layer>_W`, `<layer>_b`, ...: their kinds.
KERAS1_SUFFIX = {
    "W": "kernel",
    "b": "bias",
    "U": "recurrent_kernel",
    "gamma": "gamma",
    "beta": "beta",
    "running_mean": "moving_mean",
    "running_std": "moving_variance",
}

KNOWN_KINDS = {
    "kernel",
    "bias",
    "gamma",
    "beta",
    "moving_mean",
    "moving_variance",
    "embeddings",
    "recurrent_kernel",
    "depthwise_kernel",
    "pointwise_kernel",
    "alpha",
    "mean",
    "variance",
    "count",
}


def strip_suffix(name: str) -> str:
    """``dense_1/kernel:0`` -> ``dense_1/kernel``."""
    return re.sub(r":\d+$", "", name)


def kind_of(name: str) -> str:
    """The kind of a weight from its canonical name (last part, Keras 1 suffixes mapped)."""
    last = name.rsplit("/", 1)[-1]
    if last in KNOWN_KINDS or last in QUANT_PARAMS:
        return last
    m = re.match(r".*?_(W|b|U|gamma|beta|running_mean|running_std)(_[a-z])?$", last)
    if m:
        return KERAS1_SUFFIX[m.group(1)]
    return last


def to_snake_case(name: str) -> str:
    """Keras's own rule for naming a layer after its class (``Conv2D`` -> ``conv2d``)."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    name = re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()
    return name


SNAKE_TO_CLASS = {to_snake_case(c): c for c in KERAS3_VARS} | {
    "lstm": "LSTM",
    "gru": "GRU",
    "simple_rnn": "SimpleRNN",
    "re_lu": "ReLU",
}


# The sublayers Keras 3's MultiHeadAttention makes itself (EinsumDense each: kernel, bias),
# by their group names in a weights file.
MHA_PARTS = ("query_dense", "key_dense", "value_dense", "output_dense")


def class_from_group(group_name: str) -> str | None:
    """Guess a layer class from a Keras 3 group name (``dense_3`` -> ``Dense``)."""
    base = re.sub(r"_\d+$", "", group_name)
    return SNAKE_TO_CLASS.get(base)


# Natively quantized layers (``model.quantize(mode)``, Keras 3.15): the variables each
# class saves per mode, in order (its ``variable_serialization_spec``). Entries in
# OPTIONAL_QUANT are written only for some settings (use_bias, sub-channel int4).
QUANTIZED_VARS: dict[str, dict[str, list[str]]] = {
    "Dense": {
        "int8": ["kernel", "bias", "kernel_scale"],
        "int4": ["kernel", "bias", "kernel_scale", "kernel_zero", "g_idx"],
        "float8": [
            "kernel",
            "bias",
            "inputs_scale",
            "inputs_amax_history",
            "kernel_scale",
            "kernel_amax_history",
            "outputs_grad_scale",
            "outputs_grad_amax_history",
        ],
    },
    "Embedding": {
        "int8": ["embeddings", "embeddings_scale"],
        "int4": ["embeddings", "embeddings_scale", "embeddings_zero", "g_idx"],
    },
}
QUANTIZED_VARS["EinsumDense"] = QUANTIZED_VARS["Dense"]
OPTIONAL_QUANT = ("bias", "kernel_zero", "g_idx", "embeddings_zero")
# Variables of a quantized layer that hold quantization parameters, not weights.
QUANT_PARAMS = frozenset(
    n for spec in QUANTIZED_VARS.values() for names in spec.values() for n in names
) - {"kernel", "bias", "embeddings"}


def quantization_mode(config: dict[str, Any] | None) -> str | None:
    """The mode of a layer quantized by Keras (``QuantizedDTypePolicy`` in its config)."""
    dtype = (config or {}).get("dtype")
    if not isinstance(dtype, dict):
        return None
    mode = (dtype.get("config") or {}).get("mode")  # QuantizedDTypePolicy, Int4DTypePolicy, ...
    if mode:
        return str(mode)
    return "unknown" if "Quantized" in str(dtype.get("class_name", "")) else None


def keras3_var_names(
    layer_class: str | None, count: int, config: dict[str, Any] | None
) -> list[str] | None:
    """Names of a Keras 3 layer's ``vars/0..count-1``, or None when the rule does not apply."""
    mode = quantization_mode(config)
    if mode is not None:
        spec = QUANTIZED_VARS.get(layer_class or "", {}).get(mode.split("/")[0])  # int4/128
        if spec is None:
            return None
        names = list(spec)
        if (config or {}).get("use_bias") is False and "bias" in names:
            names.remove("bias")
        for optional in reversed(OPTIONAL_QUANT):
            if len(names) > count and optional in names and optional != "bias":
                names.remove(optional)
        return names if len(names) == count else None
    if layer_class is None or layer_class not in KERAS3_VARS:
        return None
    names = list(KERAS3_VARS[layer_class])
    cfg = config or {}
    if layer_class == "BatchNormalization" or layer_class.endswith("Normalization"):
        if layer_class != "Normalization":
            if cfg.get("scale") is False:
                names.remove("gamma")
            if cfg.get("center") is False:
                names.remove("beta")
    elif cfg.get("use_bias") is False and "bias" in names:
        names.remove("bias")
    if len(names) == count:
        return names
    if count < len(names) and "bias" in names and count == len(names) - 1 and not cfg:
        # use_bias=False without a config to say so: the bias is the one missing.
        return [n for n in names if n != "bias"]
    return None


def strip_common_root(
    names: list[str], model_name: str | None = None, layers: Iterable[str] = ()
) -> str | None:
    """The shared first part to drop from ``names`` (the model's own name), if any.

    With ``model_name`` (from the model config) the part is dropped only when it is
    that name; without one, when every name has at least three parts.
    """
    if not names:
        return None
    parts = [n.split("/") for n in names]
    if any(len(p) < (2 if model_name else 3) for p in parts):
        return None
    first = {p[0] for p in parts}
    root = first.pop() if len(first) == 1 else None
    if root is not None and model_name is not None and root != model_name:
        return None
    if root is not None and root in set(layers):
        return None  # a layer's own name (a single wrapper layer), not the model's
    return root


def names(value: Any, what: str) -> list[str]:
    """A Keras name-list attribute (``layer_names``, ``weight_names``) as strings; anything
    else is a damaged file (CorruptError naming ``what``)."""
    decoded = decode(value)
    if decoded is None:
        return []
    if isinstance(decoded, str):
        decoded = [decoded]
    if not isinstance(decoded, list) or not all(isinstance(v, str) for v in decoded):
        raise CorruptError(f"{what} is not a list of names")
    return decoded


def decode(value: Any) -> Any:
    """HDF5 attribute values as Python strings / lists of strings."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


def walk_config(config: Any) -> Iterator[dict[str, Any]]:
    """Every layer entry (``{"class_name", "config"}``) in a Keras model config, nested ones too."""
    if isinstance(config, dict):
        if "class_name" in config and isinstance(config.get("config"), dict):
            yield config
        for value in config.values():
            yield from walk_config(value)
    elif isinstance(config, list):
        for value in config:
            yield from walk_config(value)


def layer_classes(config: Any) -> dict[str, str]:
    """Map layer name -> class name for every layer a model config mentions (not the model itself)."""
    out: dict[str, str] = {}
    for entry in walk_config(config):
        if entry is config:
            continue
        name = entry["config"].get("name")
        if isinstance(name, str) and entry["class_name"] not in ("DTypePolicy", "Policy"):
            out.setdefault(name, entry["class_name"])
    return out


def model_name_of(config: Any) -> str | None:
    """The model's own name in a Keras model config (Keras 1 Sequential configs are a bare list)."""
    if isinstance(config, dict) and isinstance(config.get("config"), dict):
        name = config["config"].get("name")
        return name if isinstance(name, str) else None
    return None


def layer_configs(config: Any) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for entry in walk_config(config):
        name = entry["config"].get("name")
        if isinstance(name, str):
            out.setdefault(name, entry["config"])
    return out


def parse_json(text: Any) -> Any:
    if text is None:
        return None
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return None


def submodel_chains(config: Any) -> dict[str, dict[str, list[str]]]:
    """For each top-level layer that is itself a model: inner layer name -> the chain of
    names from inside that model down to the layer (``{"mid": {"d_in": ["inner", "d_in"],
    "d_mid": ["d_mid"]}}``). Legacy ``.h5`` files record only the top-level group of a
    nested model's weights; this restores the rest of the path from the config."""
    out: dict[str, dict[str, list[str]]] = {}
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict):
        return out
    for entry in config["config"].get("layers") or []:
        inner = entry.get("config") if isinstance(entry, dict) else None
        if isinstance(inner, dict) and isinstance(inner.get("layers"), list):
            name = inner.get("name")
            if isinstance(name, str):
                out[name] = _chains(inner["layers"])
    return out


def _chains(layers: list[Any]) -> dict[str, list[str]]:
    chains: dict[str, list[str]] = {}
    for entry in layers:
        cfg = entry.get("config") if isinstance(entry, dict) else None
        if not isinstance(cfg, dict) or not isinstance(cfg.get("name"), str):
            continue
        name = cfg["name"]
        if isinstance(cfg.get("layers"), list):
            for inner, chain in _chains(cfg["layers"]).items():
                chains.setdefault(inner, [name, *chain])
        else:
            chains.setdefault(name, [name])
    return chains


def layer_order(config: Any) -> dict[str, int]:
    """The model order of every layer, keyed by its path of names (``mid/inner/d_in``):
    the order the config lists them in, nested models in place."""
    order: dict[str, int] = {}

    def visit(layers: Any, prefix: str) -> None:
        if not isinstance(layers, list):
            return
        for entry in layers:
            cfg = entry.get("config") if isinstance(entry, dict) else None
            if not isinstance(cfg, dict) or not isinstance(cfg.get("name"), str):
                continue
            path = prefix + cfg["name"]
            order.setdefault(path, len(order))
            visit(cfg.get("layers"), path + "/")

    if isinstance(config, dict) and isinstance(config.get("config"), dict):
        visit(config["config"].get("layers"), "")
    return order


def nested_name(name: str, group: str, chains: dict[str, list[str]]) -> str:
    """A legacy ``.h5`` weight name inside nested model ``group``, with the models' names
    in front (``d_in/kernel`` in group ``mid`` -> ``mid/inner/d_in/kernel``): the one
    naming rule for nested models, the one ``.keras`` and ``.weights.h5`` files follow."""
    parts = name.split("/")
    if parts[0] == group and len(parts) > 2:  # Keras 3 writes nested Sequential weights so
        parts = parts[1:]
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] in chains:
            return "/".join([group, *chains[parts[i]], *parts[i + 1 :]])
    return "/".join([group, *parts])


def is_nested_weight(name: str, group: str) -> bool:
    """A weight that a layer group holds under another layer's name (``enc_dense/kernel`` in
    group ``encoder``): the group is a nested model."""
    parts = name.split("/")
    return len(parts) >= 2 and parts[0] != group


def owning_layer(parts: Iterable[str], known: dict[str, str], fallback: str | None) -> str | None:
    """The deepest part of a weight's name that is a layer the config knows, else ``fallback``."""
    found = None
    for part in parts:
        if part in known:
            found = part
    return found or fallback


OPTIMIZER_NAMES = re.compile(
    r"(^|/)(Adam|adam|SGD|sgd|RMSprop|rmsprop|Adagrad|adagrad|Adadelta|Adamax|Nadam|Ftrl|AdamW|adamw)"
    r"(/|$)|(^|/)(beta[12]_power(_\d+)?|global_step)$"
    r"|/(Adam|Adam_\d+|Momentum|Momentum_\d+|RMSProp|RMSProp_\d+)$"
)


def looks_like_optimizer(name: str, dtype: str = "float32", shape: tuple[int, ...] = (1,)) -> bool:
    """TF1-style optimizer and training state: ``w/Adam``, ``w/Adam_1``, ``beta1_power``
    (a second optimizer's ``beta1_power_1``), ``global_step``, and a scalar integer
    variable (a step counter, whatever its name: ``Variable_1``)."""
    counter = shape == () and dtype.startswith(("int", "uint"))
    return counter or bool(OPTIMIZER_NAMES.search(name))
