"""Keras model configs translated between the two Keras lines that cannot read each
other's files: Keras 3 and tf.keras 2.x (``tf_keras``, Keras 2), by an explicit table of
per-class rules. Pure JSON: no framework is imported.

Each rule names the classes it applies to, the Keras whose loader needs it, and where
that Keras's code says why (each found by round-tripping real files: a model saved by
one Keras, loaded by the other, refused, and loaded after the rule). The table, in order:

``RULES`` (target ``keras3``: a file written by Keras 2 / tf.keras, loaded by Keras 3's
legacy loader ``keras/src/legacy/saving/legacy_h5_format.py``, which already patches
``batch_input_shape``, ``axis`` and Lambda configs itself):

- ``groups``: tf.keras's ``DepthwiseConv2D``, ``SeparableConv1D/2D`` and the transposed
  convolutions inherit ``Conv``'s ``groups`` argument and save it; Keras 3's classes take
  no ``groups`` (``keras/src/layers/convolutional/depthwise_conv2d.py``, ...:
  "Unrecognized keyword arguments ... {'groups': 1}", keras-team/keras #19151, #19441).
  Dropped when 1; another value is refused (those layers never grouped).
- ``separable-kernel``: tf.keras's ``SeparableConv*`` also saves ``Conv``'s
  ``kernel_initializer/regularizer/constraint`` (unused: it has ``depthwise_*`` and
  ``pointwise_*``); Keras 3's ``BaseSeparableConv`` refuses them. Dropped.
- ``time_major``: tf.keras's recurrent layers save ``time_major`` (False unless asked);
  Keras 3's ``RNN`` has no such argument (``keras/src/layers/rnn/rnn.py``). Dropped when
  False; True is refused (Keras 3 reads batch-major input only).
- ``attention-shapes``: tf.keras's ``MultiHeadAttention`` saves the shapes it was built
  with (``query_shape``, ``key_shape``, ``value_shape``) and ``softmax_robust_masking``;
  Keras 3's builds from its first call (``keras/src/layers/attention/
  multi_head_attention.py``). The shapes are dropped; ``softmax_robust_masking`` when False.

- ``node-kwargs``: a layer called with tensors as keyword arguments
  (``MultiHeadAttention(query, value=...)``) is saved by tf.keras as ``[name, node,
  tensor, {"value": [name, node, tensor]}]``; Keras 3 reads such a legacy node's keyword
  arguments as they are, a list of strings (``keras/src/models/functional.py``,
  ``deserialize_node``). The node is rewritten in Keras 3's own form (``args`` and
  ``kwargs`` of ``__keras_tensor__`` references).
- ``nested-node``: tf.keras gives a nested model built with its inputs (a Functional
  model; a Sequential whose first layer is an ``InputLayer`` or has a
  ``batch_input_shape``) a node of its own at construction, so its first call is node 1;
  Keras 3 makes none, and a reference to node 1 is unresolved ("The graph of the
  Functional model either has loops or disconnected nodes"). References to such a model
  (inbound nodes, the outputs) count one node less.

``REVERSE`` and the ``tf-keras`` graph rules (a file written by Keras 3's legacy
``.h5`` writer, loaded by ``tf_keras/src/saving/legacy/hdf5_format.py``):

- ``input-batch-shape``: Keras 3's ``InputLayer`` saves ``batch_shape``
  (``keras/src/layers/core/input_layer.py``); tf.keras's takes ``batch_input_shape``
  ("Unrecognized keyword arguments: ['batch_shape']", tensorflow/tensorflow #66381).
- ``dtype-policy``: Keras 3 saves a layer's dtype as a ``DTypePolicy`` object; tf.keras
  takes the policy's name.
- ``keras3-keys``: keys Keras 3 added that tf.keras's classes refuse
  (``KERAS3_ONLY_KEYS``: ``quantization_config``, ``rms_scaling``, ``synchronized``,
  initializers' ``input_axes``/``output_axes``, ``use_cudnn``,
  ``use_gate``, ``sliding_window``), dropped at the value that means what tf.keras does,
  refused at any other.
- ``attention-seed``: Keras 3's ``MultiHeadAttention`` saves a ``seed``; tf.keras's takes
  none (dropped when null).
- ``legacy-nodes``: Keras 3's node form back to tf.keras's; a layer called with several
  tensors positionally (``mha(q, v)``) passes the rest by name (``CALL_ARGS``), and
  tf.keras's ``MultiHeadAttention`` gets the shapes it is rebuilt from (``query_shape``,
  ...; its ``from_config`` needs them) from the node's tensors.
- ``nested-node``: the reverse of the rule above (one node more).

What no rule carries is refused, naming the layer: a ``Lambda`` (Python bytecode in the
file: never executed, never copied silently), a class neither Keras defines.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from weightcli.errors import UnsupportedError, literal

TARGETS = ("keras3", "tf-keras")


@dataclass(frozen=True)
class Change:
    """One config edit: which layer, which key, the value before and after (None:
    absent), and the rule that made it."""

    layer: str
    key: str
    old: Any
    new: Any
    rule: str

    def to_json(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "key": self.key,
            "old": self.old,
            "new": self.new,
            "rule": self.rule,
        }


class Refusal(Exception):
    """A layer no rule can carry: the reason, said to the user with the layer's name."""


Fix = Callable[[dict[str, Any]], list[tuple[str, Any, Any]]]


@dataclass(frozen=True)
class Rule:
    name: str
    classes: tuple[str, ...]  # () = every class
    fix: Fix

    def applies(self, class_name: str) -> bool:
        return not self.classes or class_name in self.classes


def _drop(cfg: dict[str, Any], key: str) -> list[tuple[str, Any, Any]]:
    if key not in cfg:
        return []
    return [(key, cfg.pop(key), None)]


def _groups(cfg: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    if cfg.get("groups", 1) != 1:
        raise Refusal(f"groups={cfg['groups']}: Keras 3's class takes no groups")
    return _drop(cfg, "groups")


def _separable_kernel(cfg: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    out: list[tuple[str, Any, Any]] = []
    for key in ("kernel_initializer", "kernel_regularizer", "kernel_constraint"):
        out += _drop(cfg, key)
    return out


def _time_major(cfg: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    if cfg.get("time_major"):
        raise Refusal("time_major=True: Keras 3's recurrent layers read batch-major input only")
    return _drop(cfg, "time_major")


def _attention_shapes(cfg: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    out: list[tuple[str, Any, Any]] = []
    for key in ("query_shape", "key_shape", "value_shape"):
        out += _drop(cfg, key)
    if cfg.get("softmax_robust_masking"):
        raise Refusal("softmax_robust_masking=True: Keras 3's MultiHeadAttention has no such mode")
    return out + _drop(cfg, "softmax_robust_masking")


CONV_NO_GROUPS = (
    "DepthwiseConv1D",
    "DepthwiseConv2D",
    "SeparableConv1D",
    "SeparableConv2D",
    "Conv1DTranspose",
    "Conv2DTranspose",
    "Conv3DTranspose",
)
RECURRENT = ("SimpleRNN", "LSTM", "GRU", "RNN", "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D")


def _wrapped_module(cfg: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """A wrapper's inner layer (Bidirectional's ``layer``, TimeDistributed's, an RNN's
    ``cell``) is read by Keras 3's new deserializer (``Bidirectional.from_config`` calls
    ``serialization_lib.deserialize_keras_object``), which finds a class only by its
    ``module``; tf.keras's SavedModel metadata leaves it out (its ``.h5`` has it)."""
    out: list[tuple[str, Any, Any]] = []
    for key in ("layer", "backward_layer", "cell"):
        inner = cfg.get(key)
        if (
            isinstance(inner, dict)
            and "module" not in inner
            and inner.get("class_name") in KERAS3_LAYERS
        ):
            inner["module"] = "keras.layers"
            inner.setdefault("registered_name", None)
            out.append((f"{key}.module", None, "keras.layers"))
    return out


def _same_meaning(cfg: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """An activation whose name means another function in the other Keras is refused:
    ``hard_sigmoid`` is ``clip(0.2 x + 0.5)`` in tf.keras (and Keras 2's LSTM/GRU
    default ``recurrent_activation``) but ``clip(x / 6 + 0.5)`` in Keras 3
    (keras/src/activations/activations.py). The model would load and compute other
    numbers: measured, 0.05 off on a Keras 2.1 LSTM."""
    for key in ("activation", "recurrent_activation"):
        name = _activation_name(cfg.get(key))
        if name == "hard_sigmoid":
            raise Refusal(
                f"{key} 'hard_sigmoid' is clip(0.2x + 0.5) in tf.keras and clip(x/6 + 0.5) "
                "in Keras 3: the model would compute other numbers; rebuild it with an "
                "activation both define (sigmoid) and retrain, or keep it in tf_keras"
            )
    return []


# Activations Keras 3 defines and tf.keras does not (keras.src.activations' names against
# tf_keras.activations.get, Keras 3.15 and tf_keras 2.21): tf_keras cannot load a layer
# using one.
KERAS3_ONLY_ACTIVATIONS = frozenset(
    (
        "celu", "glu", "hard_shrink", "hard_silu", "hard_swish", "hard_tanh", "log_sigmoid",
        "soft_shrink", "sparse_plus", "sparse_sigmoid", "sparsemax", "squareplus",
        "tanh_shrink", "threshold",
    )
)  # fmt: skip


def _activation_name(v: Any) -> Any:
    """An activation as a layer's config names it: a string, or Keras 3's function form."""
    if isinstance(v, dict) and v.get("class_name") == "function":
        return v.get("config")
    return v


def _keras3_activation(cfg: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    for key in ("activation", "recurrent_activation"):
        name = _activation_name(cfg.get(key))
        if isinstance(name, str) and name in KERAS3_ONLY_ACTIVATIONS:
            raise Refusal(
                f"{key} {name!r} is Keras 3's only: tf.keras has no such function; "
                "rebuild the layer with one both define"
            )
    return []


def _spatial_noise_shape(cfg: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """tf.keras's SpatialDropout saves ``noise_shape: null`` (inherited from Dropout)
    and ``trainable``; Keras 3's ``__init__(rate, seed, name, dtype)`` takes neither
    (measured: "Error when deserializing class 'SpatialDropout1D'"). The spatial layer
    computes its noise shape itself, and a dropout layer holds no weights to train."""
    if cfg.get("noise_shape") is not None:
        raise Refusal(f"noise_shape={cfg['noise_shape']}: Keras 3's class takes none")
    return _drop(cfg, "noise_shape") + _drop(cfg, "trainable")


def _no_trainable(cfg: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """Keras 3's Discretization takes no ``trainable`` (its ``__init__`` has no
    ``**kwargs``: measured, "unexpected keyword argument 'trainable'"); it holds no
    weights to train. Its ``dtype`` is tf.keras's output dtype (int64), but Keras 3
    takes it as the layer's dtype and its inputs arrive cast to it: values in [0, 1)
    became 0 before bucketing, a silent wrong result (measured). Keras 3 saves float32
    there."""
    out = _drop(cfg, "trainable")
    old = cfg.get("dtype")
    if isinstance(old, str) and old.startswith(("int", "uint")):
        cfg["dtype"] = "float32"
        out.append(("dtype", old, "float32"))
    return out


# tf.keras's random augmentation layers (identity at inference) save the RNG they use;
# Keras 3's take no ``rng_type`` ("Error when deserializing class 'RandomFlip'":
# measured).
RANDOM_LAYERS = (
    "RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation", "RandomContrast",
    "RandomCrop", "RandomHeight", "RandomWidth", "RandomBrightness",
)  # fmt: skip


def _rng_type(cfg: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    return _drop(cfg, "rng_type") + _drop(cfg, "force_generator")


RULES: tuple[Rule, ...] = (
    Rule("same-meaning", (), _same_meaning),
    Rule("no-trainable", ("Discretization",), _no_trainable),
    Rule("rng-type", RANDOM_LAYERS, _rng_type),
    Rule(
        "spatial-noise-shape",
        ("SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D"),
        _spatial_noise_shape,
    ),
    Rule("wrapped-module", ("Bidirectional", "TimeDistributed", "RNN"), _wrapped_module),
    Rule("groups", CONV_NO_GROUPS, _groups),
    Rule("separable-kernel", ("SeparableConv1D", "SeparableConv2D"), _separable_kernel),
    Rule("time_major", RECURRENT, _time_major),
    Rule("attention-shapes", ("MultiHeadAttention",), _attention_shapes),
)


def _input_batch_shape(cfg: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    out: list[tuple[str, Any, Any]] = []
    if "batch_shape" in cfg:
        shape = cfg.pop("batch_shape")
        cfg["batch_input_shape"] = shape
        out += [("batch_shape", shape, None), ("batch_input_shape", None, shape)]
    return out


def _dtype_policy(cfg: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    d = cfg.get("dtype")
    if isinstance(d, dict) and d.get("class_name") in ("DTypePolicy", "FloatDTypePolicy"):
        name = (d.get("config") or {}).get("name")
        if isinstance(name, str):
            cfg["dtype"] = name
            return [("dtype", d.get("class_name"), name)]
    return []


# Keys Keras 3 added that tf.keras's classes refuse, with the value that means "as
# tf.keras does": dropped at it, refused at any other.
KERAS3_ONLY_KEYS: dict[str, Any] = {
    "quantization_config": None,  # Dense, EinsumDense, Embedding (keras/src/layers/core)
    "rms_scaling": False,  # LayerNormalization
    "synchronized": False,  # BatchNormalization
    "input_axes": None,  # initializers' fan axes (keras/src/initializers)
    "output_axes": None,
    "use_cudnn": "auto",  # LSTM, GRU
    "use_gate": False,  # MultiHeadAttention
    "sliding_window": None,  # MultiHeadAttention
}


def _drop_neutral(
    cfg: dict[str, Any], keys: dict[str, Any], who: str
) -> list[tuple[str, Any, Any]]:
    """``keys`` dropped where they hold their neutral value; another value is refused."""
    out: list[tuple[str, Any, Any]] = []
    for key, neutral in keys.items():
        if key not in cfg:
            continue
        if cfg[key] != neutral:
            raise Refusal(f"{key}={cfg[key]!r}: {who} has no such setting")
        out += _drop(cfg, key)
    return out


def _keras3_keys(cfg: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    return _drop_neutral(cfg, KERAS3_ONLY_KEYS, "tf.keras")


def _attention_seed(cfg: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """A dropout seed tf.keras's class does not take (MultiHeadAttention, ConvLSTM)."""
    if cfg.get("seed") is not None:
        raise Refusal(f"seed={cfg['seed']}: tf.keras's class takes no seed")
    return _drop(cfg, "seed")


# Keys Keras 3 saves for one class that tf.keras's class does not take, with the value
# that means tf.keras's behaviour (get_config of each class in both, Keras 3.15 and
# tf_keras 2.21; measured: "Error when deserializing class 'RandomFlip'", 'Resizing',
# 'IntegerLookup'). Another value is refused.
_CHANNELS_LAST = {"data_format": "channels_last"}
KERAS3_CLASS_KEYS: dict[str, dict[str, Any]] = {
    "Resizing": {
        **_CHANNELS_LAST, "fill_mode": "constant", "fill_value": 0.0, "antialias": False,
        "pad_to_aspect_ratio": False,
    },
    "CenterCrop": _CHANNELS_LAST,
    **{cls: _CHANNELS_LAST for cls in RANDOM_LAYERS},
    "RandomContrast": {**_CHANNELS_LAST, "value_range": [0, 255]},
    "IntegerLookup": {"salt": None, "oov_method": "floormod"},
    "StringLookup": {"salt": None, "oov_method": "floormod"},
}  # fmt: skip


def _keras3_class_keys(cls: str) -> Fix:
    return lambda cfg: _drop_neutral(cfg, KERAS3_CLASS_KEYS[cls], f"tf.keras's {cls}")


def _leaky_alpha(cfg: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """Keras 3's LeakyReLU says ``negative_slope`` (and reads tf.keras's ``alpha`` as a
    deprecated name); tf.keras's takes ``alpha`` only ("Error when deserializing class
    'LeakyReLU'": measured)."""
    if "negative_slope" not in cfg:
        return []
    value = cfg.pop("negative_slope")
    cfg["alpha"] = value
    return [("negative_slope", value, None), ("alpha", None, value)]


REVERSE: tuple[Rule, ...] = (
    Rule("same-meaning", (), _same_meaning),
    # Keras 3's ConvLSTM takes a dropout seed; tf.keras's does not ("Keyword argument
    # not understood: 'seed'": measured).
    Rule("attention-seed", ("ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D"), _attention_seed),
    Rule("leaky-alpha", ("LeakyReLU",), _leaky_alpha),
    *(Rule("keras3-keys", (cls,), _keras3_class_keys(cls)) for cls in KERAS3_CLASS_KEYS),
    Rule("keras3-activation", (), _keras3_activation),
    Rule("attention-seed", ("MultiHeadAttention",), _attention_seed),
    Rule("input-batch-shape", ("InputLayer",), _input_batch_shape),
    Rule("dtype-policy", (), _dtype_policy),
    Rule("keras3-keys", (), _keras3_keys),
    Rule("lookup-dtype", ("IntegerLookup", "StringLookup"), lambda cfg: _lookup_dtype(cfg)),
)
TABLE = {"keras3": RULES, "tf-keras": REVERSE}


def _lookup_dtype(cfg: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """Keras 3 saves a lookup layer's float dtype policy; tf.keras's lookup layers in
    ``output_mode="int"`` want an integer dtype, their output's ("When output_mode='int',
    dtype should be an integer type": measured). Keras 3 outputs int64 indices there."""
    if cfg.get("output_mode", "int") != "int":
        return []
    old = cfg.get("dtype")
    if isinstance(old, str) and old.startswith(("float", "bfloat", "mixed")):
        cfg["dtype"] = "int64"
        return [("dtype", old, "int64")]
    return []


# Every layer class of keras.layers (Keras 3.15; with the model classes): a layer of
# another class is a custom one (or tf.keras's only: LocallyConnected2D, ...).
KERAS3_LAYERS = frozenset(
    (
        "Activation",
        "ActivityRegularization",
        "AdaptiveAveragePooling1D",
        "AdaptiveAveragePooling2D",
        "AdaptiveAveragePooling3D",
        "AdaptiveMaxPooling1D",
        "AdaptiveMaxPooling2D",
        "AdaptiveMaxPooling3D",
        "Add",
        "AdditiveAttention",
        "AlphaDropout",
        "Attention",
        "AugMix",
        "AutoContrast",
        "Average",
        "AveragePooling1D",
        "AveragePooling2D",
        "AveragePooling3D",
        "AvgPool1D",
        "AvgPool2D",
        "AvgPool3D",
        "BatchNormalization",
        "Bidirectional",
        "CategoryEncoding",
        "CenterCrop",
        "Concatenate",
        "ContrastLimitedAdaptiveHistogramEqualization",
        "Conv1D",
        "Conv1DTranspose",
        "Conv2D",
        "Conv2DTranspose",
        "Conv3D",
        "Conv3DTranspose",
        "ConvLSTM1D",
        "ConvLSTM2D",
        "ConvLSTM3D",
        "Convolution1D",
        "Convolution1DTranspose",
        "Convolution2D",
        "Convolution2DTranspose",
        "Convolution3D",
        "Convolution3DTranspose",
        "Cropping1D",
        "Cropping2D",
        "Cropping3D",
        "CutMix",
        "Dense",
        "DepthwiseConv1D",
        "DepthwiseConv2D",
        "Discretization",
        "Dot",
        "Dropout",
        "ELU",
        "EinsumDense",
        "Embedding",
        "Equalization",
        "Flatten",
        "FlaxLayer",
        "Functional",
        "GRU",
        "GRUCell",
        "GaussianDropout",
        "GaussianNoise",
        "GlobalAveragePooling1D",
        "GlobalAveragePooling2D",
        "GlobalAveragePooling3D",
        "GlobalAvgPool1D",
        "GlobalAvgPool2D",
        "GlobalAvgPool3D",
        "GlobalMaxPool1D",
        "GlobalMaxPool2D",
        "GlobalMaxPool3D",
        "GlobalMaxPooling1D",
        "GlobalMaxPooling2D",
        "GlobalMaxPooling3D",
        "GroupNormalization",
        "GroupQueryAttention",
        "HashedCrossing",
        "Hashing",
        "Identity",
        "Input",
        "InputLayer",
        "InputSpec",
        "IntegerLookup",
        "JaxLayer",
        "LSTM",
        "LSTMCell",
        "Lambda",
        "Layer",
        "LayerNormalization",
        "LeakyReLU",
        "Masking",
        "MaxNumBoundingBoxes",
        "MaxPool1D",
        "MaxPool2D",
        "MaxPool3D",
        "MaxPooling1D",
        "MaxPooling2D",
        "MaxPooling3D",
        "Maximum",
        "MelSpectrogram",
        "Minimum",
        "MixUp",
        "Model",
        "MultiHeadAttention",
        "Multiply",
        "Normalization",
        "PReLU",
        "Permute",
        "Pipeline",
        "RMSNormalization",
        "RNN",
        "RandAugment",
        "RandomBrightness",
        "RandomColorDegeneration",
        "RandomColorJitter",
        "RandomContrast",
        "RandomCrop",
        "RandomElasticTransform",
        "RandomErasing",
        "RandomFlip",
        "RandomGaussianBlur",
        "RandomGrayscale",
        "RandomHue",
        "RandomInvert",
        "RandomPerspective",
        "RandomPosterization",
        "RandomRotation",
        "RandomSaturation",
        "RandomSharpness",
        "RandomShear",
        "RandomTranslation",
        "RandomZoom",
        "ReLU",
        "RepeatVector",
        "Rescaling",
        "Reshape",
        "Resizing",
        "ReversibleEmbedding",
        "STFTSpectrogram",
        "SeparableConv1D",
        "SeparableConv2D",
        "SeparableConvolution1D",
        "SeparableConvolution2D",
        "Sequential",
        "SimpleRNN",
        "SimpleRNNCell",
        "Softmax",
        "Solarization",
        "SpatialDropout1D",
        "SpatialDropout2D",
        "SpatialDropout3D",
        "SpectralNormalization",
        "StackedRNNCells",
        "StringLookup",
        "Subtract",
        "TFSMLayer",
        "TextVectorization",
        "TimeDistributed",
        "TorchModuleWrapper",
        "UnitNormalization",
        "UpSampling1D",
        "UpSampling2D",
        "UpSampling3D",
        "Wrapper",
        "ZeroPadding1D",
        "ZeroPadding2D",
        "ZeroPadding3D",
    )
)

MODELS = ("Functional", "Model", "Sequential")


def _is_ref(v: Any) -> bool:
    return (
        isinstance(v, list)
        and len(v) in (3, 4)
        and isinstance(v[0], str)
        and isinstance(v[1], int)
        and isinstance(v[2], int)
    )


def _tensor(ref: list[Any]) -> dict[str, Any]:
    """A Keras 3 node's reference to a layer's output (its shape is a placeholder: the
    loader replaces the tensor by the one at ``keras_history``)."""
    return {
        "class_name": "__keras_tensor__",
        "config": {"shape": [None], "dtype": "float32", "keras_history": list(ref[:3])},
    }


def _node_kwargs_of(model_cfg: dict[str, Any]) -> list[tuple[str, str, Any, Any]]:
    out = []
    for layer in model_cfg.get("layers") or []:
        nodes = layer.get("inbound_nodes")
        if not isinstance(nodes, list):
            continue
        for i, node in enumerate(nodes):
            if not (isinstance(node, list) and node and all(_is_ref(r) for r in node)):
                continue
            kwargs = node[0][3] if len(node) == 1 and len(node[0]) == 4 else {}
            if not any(_is_ref(v) for v in kwargs.values()):
                continue
            new = {
                "args": [_tensor(node[0])],
                "kwargs": {k: _tensor(v) if _is_ref(v) else v for k, v in kwargs.items()},
            }
            nodes[i] = new
            out.append(
                (
                    str(layer.get("name") or layer.get("config", {}).get("name")),
                    "inbound_nodes",
                    node,
                    new,
                )
            )
    return out


def _built_at_construction(layer: dict[str, Any]) -> bool:
    cls, cfg = layer.get("class_name"), layer.get("config") or {}
    if cls in ("Functional", "Model"):
        return True
    if cls != "Sequential":
        return False
    inner = cfg.get("layers") or []
    first = inner[0] if inner and isinstance(inner[0], dict) else {}
    return first.get("class_name") == "InputLayer" or "batch_input_shape" in (
        first.get("config") or {}
    )


def _nested_node(model_cfg: dict[str, Any], shift_by: int = -1) -> list[tuple[str, str, Any, Any]]:
    layers = model_cfg.get("layers") or []
    nested = {
        str((layer.get("config") or {}).get("name"))
        for layer in layers
        if isinstance(layer, dict) and _built_at_construction(layer)
    }
    if not nested:
        return []
    out = []

    def shift(ref: list[Any], where: str, key: str) -> None:
        if _is_ref(ref) and ref[0] in nested and ref[1] + shift_by >= 0:
            new = ref[1] + shift_by
            out.append((where, key, f"{ref[0]} node {ref[1]}", f"{ref[0]} node {new}"))
            ref[1] = new

    for layer in layers:
        for node in layer.get("inbound_nodes") or []:
            for ref in node if isinstance(node, list) else []:
                shift(ref, str((layer.get("config") or {}).get("name")), "inbound_nodes")
    for key in ("output_layers", "input_layers"):
        refs = model_cfg.get(key) or []
        for ref in [refs] if _is_ref(refs) else refs:
            shift(ref, "(model)", key)
    return out


# The call arguments of layers called with several tensors positionally (Keras 3 saves
# them as ``args``; tf.keras's node form has one positional input, the rest by name).
CALL_ARGS = {"MultiHeadAttention": ("query", "value", "key")}


def _legacy_ref(t: Any) -> list[Any] | None:
    if isinstance(t, dict) and t.get("class_name") == "__keras_tensor__":
        history = (t.get("config") or {}).get("keras_history")
        if isinstance(history, list) and len(history) == 3:
            return list(history)
    return None


def _legacy_nodes(model_cfg: dict[str, Any]) -> list[tuple[str, str, Any, Any]]:
    """Keras 3's node form (``{"args": [...], "kwargs": {...}}``) back to tf.keras's
    (``[[name, node, tensor, kwargs], ...]``: several inputs as several entries)."""
    out = []
    for layer in model_cfg.get("layers") or []:
        nodes = layer.get("inbound_nodes")
        if not isinstance(nodes, list):
            continue
        name = str((layer.get("config") or {}).get("name"))
        for i, node in enumerate(nodes):
            if not isinstance(node, dict) or "args" not in node:
                continue
            args, kwargs = node.get("args") or [], dict(node.get("kwargs") or {})
            names = CALL_ARGS.get(str(layer.get("class_name")), ())
            if len(args) > 1 and len(args) <= len(names):  # mha(q, v): v by its name
                kwargs.update({names[j]: a for j, a in enumerate(args) if j > 0})
                args = args[:1]
            if layer.get("class_name") == "MultiHeadAttention" and i == 0:
                out += _attention_shapes_back(layer, args, kwargs)
            first = args[0] if args else None
            tensors = first if isinstance(first, list) else [first]
            refs = [_legacy_ref(t) for t in tensors]
            if len(args) != 1 or any(r is None for r in refs):
                raise Refusal(f"layer {name}: a call tf.keras's node form cannot say")
            # A node's ``training`` is what the layer's call defaulted to while the graph
            # was built (a random augmentation layer: True). Keras 3 overrides it with
            # the model's own flag on every call; tf.keras obeys it, so RandomFlip kept
            # flipping at inference (measured: outputs 1.0 off). It goes.
            kwargs.pop("training", None)
            extra = {k: (_legacy_ref(v) or v) for k, v in kwargs.items()}
            legacy = [[*r, extra] for r in refs if r is not None]
            nodes[i] = legacy
            out.append((name, "inbound_nodes", "Keras 3 node", legacy))
    return out


def _shape(t: Any) -> Any:
    return (t.get("config") or {}).get("shape") if isinstance(t, dict) else None


def _attention_shapes_back(
    layer: dict[str, Any], args: list[Any], kwargs: dict[str, Any]
) -> list[tuple[str, str, Any, Any]]:
    """tf.keras's MultiHeadAttention is rebuilt from the shapes in its config
    (``from_config`` pops ``query_shape``, ...); Keras 3's node says them."""
    cfg = layer.get("config") or {}
    query = _shape(args[0]) if args else None
    value = _shape(kwargs.get("value"))
    key = _shape(kwargs.get("key")) or value
    if query is None or value is None:
        raise Refusal(f"layer {cfg.get('name')}: the shapes it was called with are not saved")
    out = []
    for k, v in (("query_shape", query), ("value_shape", value), ("key_shape", key)):
        cfg[k] = v
        out.append((str(cfg.get("name")), k, None, v))
    return out


def _dict_nodes(layer: dict[str, Any]) -> list[dict[str, Any]]:
    """A layer's nodes in Keras 3's form (``{"args", "kwargs"}``)."""
    found = layer.get("inbound_nodes")
    return [n for n in found if isinstance(n, dict)] if isinstance(found, list) else []


def _entry_name(layer: Any) -> str:
    return str(((layer or {}).get("config") or {}).get("name"))


def _mask_uses(
    layers: list[dict[str, Any]], mine: str, fed_by: str
) -> list[tuple[dict[str, Any], dict[str, Any]]] | None:
    """Every node reading layer ``mine``'s output, when each reads it only as its
    ``mask`` and is fed (first argument) by layer ``fed_by``; None otherwise."""
    uses = []
    for consumer in layers:
        for cnode in _dict_nodes(consumer):
            if f'"keras_history": ["{mine}", ' not in json.dumps(cnode):
                continue
            mask = _legacy_ref((cnode.get("kwargs") or {}).get("mask"))
            fed = _legacy_ref((cnode.get("args") or [None])[0])
            rest = {k: v for k, v in cnode.items() if k != "kwargs"}
            others = {k: v for k, v in (cnode.get("kwargs") or {}).items() if k != "mask"}
            if (
                mask is None
                or mask[0] != mine
                or fed is None
                or fed[0] != fed_by
                or f'"keras_history": ["{mine}", ' in json.dumps([rest, others])
            ):
                return None
            uses.append((consumer, cnode))
    return uses


def _drop_mask(
    layers: list[dict[str, Any]],
    uses: list[tuple[dict[str, Any], dict[str, Any]]],
    removed: list[dict[str, Any]],
) -> list[tuple[str, str, Any, Any]]:
    out: list[tuple[str, str, Any, Any]] = []
    for consumer, cnode in uses:
        old = cnode["kwargs"].pop("mask")
        out.append((_entry_name(consumer), "mask", _legacy_ref(old)[0], None))  # type: ignore[index]
    for layer in removed:
        layers.remove(layer)
        out.append((_entry_name(layer), "layer", layer.get("class_name"), None))
    return out


def _implicit_mask(model_cfg: dict[str, Any]) -> list[tuple[str, str, Any, Any]]:
    """Keras 3 saves the mask a layer computes for the next ones as layers of its own,
    handed to the layers that read its output as their ``mask`` (keras/src/models/
    functional.py records a tensor's mask in the node):
    - ``Embedding(mask_zero=True)``: ``NotEqual(x, 0)`` on the embedding's input;
    - ``Masking(mask_value=v)``: ``Any(NotEqual(x, v), axis=-1)`` on the Masking's input.
    tf.keras has no such classes, and needs none: those layers compute the same masks
    (``compute_mask``) and its functional graph passes them on by itself. So those
    layers and ``mask`` arguments go, where that is all they are: read only as the mask
    of layers fed by that Embedding or Masking. Any other NotEqual or Any stays (and is
    refused as a class tf.keras does not have)."""
    layers = model_cfg.get("layers")
    if not isinstance(layers, list):
        return []
    outputs = json.dumps(model_cfg.get("output_layers"))
    # the masking layer's input tensor -> (the layer, the value it masks)
    masked_inputs: dict[str, tuple[str, Any]] = {}
    for layer in layers:
        cfg = layer.get("config") or {}
        cls = layer.get("class_name")
        if (cls == "Embedding" and cfg.get("mask_zero") is True) or cls == "Masking":
            value = 0 if cls == "Embedding" else cfg.get("mask_value", 0.0)
            for node in _dict_nodes(layer):
                ref = _legacy_ref((node.get("args") or [None])[0])
                if ref is not None:
                    masked_inputs[json.dumps(ref)] = (_entry_name(layer), value)
    by_name = {_entry_name(x): x for x in layers}
    out: list[tuple[str, str, Any, Any]] = []
    for layer in list(layers):
        if layer.get("class_name") != "NotEqual" or len(_dict_nodes(layer)) != 1:
            continue
        node = _dict_nodes(layer)[0]
        args, kwargs = node.get("args") or [], node.get("kwargs") or {}
        other = args[1] if len(args) > 1 else kwargs.get("y")
        ref = _legacy_ref(args[0]) if args else None
        found = masked_inputs.get(json.dumps(ref)) if ref is not None else None
        mine = _entry_name(layer)
        if found is None or other != found[1] or f'"{mine}"' in outputs:
            continue
        source = found[0]
        if by_name[source].get("class_name") == "Embedding":
            uses = _mask_uses(layers, mine, source)
            if uses is not None:
                out += _drop_mask(layers, uses, [layer])
            continue
        # Masking: the NotEqual feeds one Any(axis=-1), whose output is the mask
        readers = [
            x for x in layers if f'"keras_history": ["{mine}", ' in json.dumps(_dict_nodes(x))
        ]
        if len(readers) != 1 or readers[0].get("class_name") != "Any":
            continue
        reduce = readers[0]
        rcfg = reduce.get("config") or {}
        if rcfg.get("axis") != -1 or rcfg.get("keepdims") or len(_dict_nodes(reduce)) != 1:
            continue
        any_name = _entry_name(reduce)
        if f'"{any_name}"' in outputs:
            continue
        uses = _mask_uses(layers, any_name, source)
        if uses is not None:
            out += _drop_mask(layers, uses, [reduce, layer])
    return out


def _nested_node_back(model_cfg: dict[str, Any]) -> list[tuple[str, str, Any, Any]]:
    return _nested_node(model_cfg, shift_by=+1)


def _layer_name(layer: dict[str, Any]) -> Any:
    return (layer.get("config") or {}).get("name", layer.get("name"))


def _slash_names(model_cfg: dict[str, Any]) -> list[tuple[str, str, Any, Any]]:
    """Keras 3 refuses a layer name holding "/" ("Argument `name` must be a string and
    cannot contain character `/`": keras/src/ops/operation.py); tf.keras's DenseNet
    names its layers ``conv1/conv``. Each such name becomes ``conv1_conv`` (numbered if
    taken), in the layer and in every reference to it. Only a ``.keras`` output can
    carry this: a legacy ``.h5`` files each layer's weights under its name."""
    layers = [x for x in model_cfg.get("layers") or [] if isinstance(x, dict)]
    taken = {str(_layer_name(x)) for x in layers}
    renames: dict[str, str] = {}
    for layer in layers:
        name = _layer_name(layer)
        if isinstance(name, str) and "/" in name:
            base = new = name.replace("/", "_")
            k = 0
            while new in taken:
                k += 1
                new = f"{base}_{k}"
            taken.add(new)
            renames[name] = new
    if not renames:
        return []
    out: list[tuple[str, str, Any, Any]] = []
    for layer in layers:
        name = _layer_name(layer)
        if name in renames:
            if layer.get("name") == name:
                layer["name"] = renames[name]
            if isinstance(layer.get("config"), dict):
                layer["config"]["name"] = renames[name]
            out.append((name, "name", name, renames[name]))

    def fix(x: Any) -> None:
        if isinstance(x, list):
            if _is_ref(x) and x[0] in renames:
                x[0] = renames[x[0]]
            for v in x:
                fix(v)
        elif isinstance(x, dict):
            cfg = x.get("config")
            history = cfg.get("keras_history") if isinstance(cfg, dict) else None
            tensor = x.get("class_name") == "__keras_tensor__" and isinstance(history, list)
            if tensor and history and history[0] in renames:
                history[0] = renames[history[0]]
            for v in x.values():
                fix(v)

    for layer in layers:
        fix(layer.get("inbound_nodes"))
    fix(model_cfg.get("input_layers"))
    fix(model_cfg.get("output_layers"))
    return out


# Graph rules that remove layers the target needs no class for: run before every layer's
# class is checked.
REMOVALS = {"tf-keras": (("implicit-mask", _implicit_mask),)}


def _with_module(
    model_cfg: dict[str, Any], needs: Callable[[dict[str, Any]], bool]
) -> list[tuple[str, str, Any, Any]]:
    """Layer entries Keras 3's legacy loader would read wrongly are given ``module``:
    ``functional.process_layer`` then reads them with Keras 3's own deserializer."""
    out = []
    for entry in model_cfg.get("layers") or []:
        if not isinstance(entry, dict) or "module" in entry:
            continue
        if entry.get("class_name") in KERAS3_LAYERS and needs(entry):
            entry["module"] = "keras.layers"
            entry["registered_name"] = None
            out.append((str(_layer_name(entry)), "module", None, "keras.layers"))
    return out


def _list_axis(model_cfg: dict[str, Any]) -> list[tuple[str, str, Any, Any]]:
    """Keras 3's legacy loader (``saving_utils.model_from_config``) pops a layer's
    ``axis`` and puts back only an int or a one-item list: LayerNormalization over
    ``axis=[1, 2]`` came back over the last axis ("Shape mismatch ... for weight
    gamma": measured)."""

    def needs(entry: dict[str, Any]) -> bool:
        cfg = entry.get("config")
        axis = cfg.get("axis") if isinstance(cfg, dict) else None
        return isinstance(axis, list) and len(axis) > 1

    return _with_module(model_cfg, needs)


def _node_training(model_cfg: dict[str, Any]) -> list[tuple[str, str, Any, Any]]:
    """A layer called with ``training=True`` in the graph (Monte Carlo dropout) keeps
    training behaviour in tf.keras, even in ``predict``. Keras 3's functional model
    overrides a node's ``training`` with the model's own whenever one is given
    (``functional.operation_fn``), so ``predict`` would stop sampling: refused.
    (``training=False`` gives the same predictions in both.)"""
    for layer in model_cfg.get("layers") or []:
        for node in layer.get("inbound_nodes") or [] if isinstance(layer, dict) else []:
            for ref in node if isinstance(node, list) else []:
                kwargs = ref[3] if isinstance(ref, list) and len(ref) == 4 else None
                if isinstance(kwargs, dict) and kwargs.get("training") is True:
                    raise Refusal(
                        f"layer {_layer_name(layer)} is called with training=True (Monte "
                        "Carlo dropout?): tf.keras keeps that in predict(), Keras 3 "
                        "overrides it with predict()'s training=False; rebuild the layer "
                        "so that its call ignores training (a custom layer)"
                    )
    return []


def _attention_score_mode(model_cfg: dict[str, Any]) -> list[tuple[str, str, Any, Any]]:
    """Keras 3's legacy loader turns Attention's ``score_mode: "dot"`` into the
    function ``dot`` ("Error when deserializing class 'Attention'": measured)."""
    return _with_module(model_cfg, lambda entry: entry.get("class_name") == "Attention")


GRAPH_RULES = {
    "keras3": (
        ("node-training", _node_training),
        ("list-axis", _list_axis),
        ("attention-score-mode", _attention_score_mode),
        ("node-kwargs", _node_kwargs_of),
        ("nested-node", _nested_node),
        ("slash-names", _slash_names),
    ),
    "tf-keras": (("legacy-nodes", _legacy_nodes), ("nested-node", _nested_node_back)),
}


def _dicts(node: Any, depth: int = 0) -> Iterator[dict[str, Any]]:
    """Every dict of a JSON tree, at most 200 deep, each before what it holds: its
    values are read once the caller has seen it, so what the caller changed there is
    what is walked."""
    if depth > 200:
        return
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _dicts(value, depth + 1)
    elif isinstance(node, list):
        for value in node:
            yield from _dicts(value, depth + 1)


def _objects(node: Any) -> list[tuple[str, dict[str, Any], str]]:
    """Every Keras object in a config: (class name, its config dict, its layer name)."""
    found: list[tuple[str, dict[str, Any], str]] = []
    for d in _dicts(node):
        cls, cfg = d.get("class_name"), d.get("config")
        if isinstance(cls, str) and isinstance(cfg, dict):
            name = cfg.get("name") if isinstance(cfg.get("name"), str) else d.get("name")
            found.append((cls, cfg, name if isinstance(name, str) else cls))
    return found


# Keras 3's layers that tf.keras does not have, and tf.keras's that Keras 3 does not
# (dir(keras.layers) against dir(tf_keras.layers), Keras 3.15 and tf_keras 2.21).
KERAS3_NOT_TF = frozenset(
    (
        "AdaptiveAveragePooling1D", "AdaptiveAveragePooling2D", "AdaptiveAveragePooling3D",
        "AdaptiveMaxPooling1D", "AdaptiveMaxPooling2D", "AdaptiveMaxPooling3D", "AugMix",
        "AutoContrast", "ContrastLimitedAdaptiveHistogramEqualization", "CutMix",
        "Equalization", "FlaxLayer", "GroupQueryAttention", "JaxLayer", "MaxNumBoundingBoxes",
        "MelSpectrogram", "MixUp", "Pipeline", "RMSNormalization", "RandAugment",
        "RandomColorDegeneration", "RandomColorJitter", "RandomElasticTransform",
        "RandomErasing", "RandomGaussianBlur", "RandomGrayscale", "RandomHue", "RandomInvert",
        "RandomPerspective", "RandomPosterization", "RandomSaturation", "RandomSharpness",
        "RandomShear", "ReversibleEmbedding", "STFTSpectrogram", "Solarization", "TFSMLayer",
        "TorchModuleWrapper",
    )
)  # fmt: skip
TF_ONLY = frozenset(
    (
        "AbstractRNNCell", "DenseFeatures", "LocallyConnected1D", "LocallyConnected2D",
        "RandomHeight", "RandomWidth", "ThresholdedReLU",
    )
)  # fmt: skip
TF_KERAS_LAYERS = (KERAS3_LAYERS - KERAS3_NOT_TF) | TF_ONLY


def _known(entry: Any, target: str, custom: frozenset[str] = frozenset()) -> None:
    """A layer of a model's ``layers`` list (and a wrapper's inner layer) must be one of
    the target Keras's classes, or one the user's code defines (``custom``: class and
    registered names, from ``--custom-objects``): a custom class's code is not in the
    file, nor is a class the target does not define."""
    if not isinstance(entry, dict):
        return
    cls = entry.get("class_name")
    raw = entry.get("config")
    cfg: dict[str, Any] = raw if isinstance(raw, dict) else {}
    name = cfg.get("name") if isinstance(cfg.get("name"), str) else cls
    known = KERAS3_LAYERS if target == "keras3" else TF_KERAS_LAYERS
    registered = entry.get("registered_name")
    if cls in custom or (isinstance(registered, str) and registered in custom):
        return  # the user's own class: its config is carried as it is
    if isinstance(cls, str) and cls not in known:
        who = "Keras 3's" if target == "keras3" else "tf.keras's"
        raise UnsupportedError(
            f"layer {literal(str(name))}: class {literal(cls)} is not one of {who} layers "
            "(a custom class, or the other Keras's only): its code is not in the file; "
            "give its code with --custom-objects FILE.py, or rebuild it in code and load "
            "the weights with weightcli transplant"
        )
    for key in ("layer", "backward_layer", "forward_layer"):
        if isinstance(cfg.get(key), dict):
            _known(cfg[key], target, custom)


def _sequential_input(node: dict[str, Any]) -> list[Change]:
    """A Sequential whose first layer carries ``batch_input_shape`` (Keras 2.0 to 2.2
    saved no InputLayer): Keras 3's legacy loader turns that into the layer's
    ``input_shape``, batch axis included (one axis too many: "expected ndim=3, found
    ndim=4"). An InputLayer with that ``batch_input_shape`` goes first instead, as
    later tf.keras versions save it."""
    cfg = node.get("config")
    layers = (
        cfg.get("layers")
        if node.get("class_name") == "Sequential" and isinstance(cfg, dict)
        else None
    )
    if not layers or not isinstance(layers[0], dict):
        return []
    first = layers[0]
    inner = first.get("config")
    if first.get("class_name") == "InputLayer" or not isinstance(inner, dict):
        return []
    shape = inner.get("batch_input_shape")
    if not isinstance(shape, list):
        return []
    del inner["batch_input_shape"]
    name = f"{inner.get('name', 'input')}_input"
    layers.insert(
        0,
        {
            "class_name": "InputLayer",
            "config": {
                "batch_input_shape": shape,
                "dtype": inner.get("dtype", "float32"),
                "sparse": False,
                "name": name,
            },
        },
    )
    layer = str(inner.get("name"))
    return [
        Change(layer, "batch_input_shape", shape, None, "sequential-input"),
        Change(name, "(layer)", None, "InputLayer", "sequential-input"),
    ]


def _sequential_lists(node: Any) -> list[Change]:
    """Keras 2.0 to 2.2.0 saved a Sequential's config as its list of layers; Keras 3's
    loader reads ``config["config"]`` as a dict (``saving_utils.model_from_config``:
    "pop expected at most 1 argument"). Each becomes ``{"name", "layers"}``."""
    out: list[Change] = []
    for d in _dicts(node):
        if d.get("class_name") == "Sequential" and isinstance(d.get("config"), list):
            layers = d["config"]
            d["config"] = {"name": "sequential", "layers": layers}
            out.append(
                Change("(model)", "config", "a list of layers", "{name, layers}", "sequential-list")
            )
        out += _sequential_input(d)
    return out


def translate(
    config: dict[str, Any], target: str, custom: frozenset[str] = frozenset()
) -> tuple[dict[str, Any], list[Change]]:
    """The config for ``target``'s loader and every change made; a layer that cannot be
    carried is refused (``UnsupportedError`` naming it and why); ``custom``: the class
    names of the user's own code, carried as they are."""
    if target not in TABLE:
        raise UnsupportedError(
            f"migrating for {literal(target)} is not done yet (its rule table): only "
            f"{', '.join(TABLE)}"
        )
    new = copy.deepcopy(config)
    changes: list[Change] = []
    if target == "keras3":
        changes += _sequential_lists(new)
    for cls, cfg, layer in _objects(new):
        if cls in MODELS and isinstance(cfg.get("layers"), list):
            removals = REMOVALS.get(target, ())
            for step, rules in enumerate((removals, GRAPH_RULES.get(target, ()))):
                if step == 1:  # what is left must be the target's (or the user's) classes
                    for entry in cfg["layers"]:
                        _known(entry, target, custom)
                for rule_name, graph_fix in rules:
                    try:
                        graph_edits = graph_fix(cfg)
                    except Refusal as exc:
                        raise UnsupportedError(str(exc)) from None
                    for where, key, old, nv in graph_edits:
                        changes.append(Change(where, key, old, nv, rule_name))
        for rule in TABLE[target]:
            if rule.applies(cls):
                try:
                    edits = rule.fix(cfg)
                except Refusal as exc:
                    raise UnsupportedError(f"layer {literal(layer)} ({cls}): {exc}") from None
                changes += [Change(layer, k, old, nv, rule.name) for k, old, nv in edits]
    return new, changes


def writer_line(writer: str | None) -> str | None:
    """Which Keras line wrote a file (its ``keras_version``, as ``StoreMeta.writer``
    says it: "Keras 2.4.0 (tensorflow backend)"): keras3, tf-keras (Keras 2 and tf.keras)
    or keras1; None when unknown."""
    m = re.match(r"Keras (\d+)\.", writer or "")
    if not m:
        return None
    major = int(m.group(1))
    return "keras3" if major >= 3 else "tf-keras" if major == 2 else "keras1"


def loads_in(
    config: dict[str, Any],
    writer: str | None,
    legacy_h5: bool,
    history: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The static "loads in" verdict per Keras line, from these tables alone:
    ``{"keras3": {"loads": bool, "needs": {what: count}}, "tf-keras": ...}``. A config is
    in the form of the Keras that wrote it, or of the last ``migrate --for`` its history
    records; for the other line, what the table would change is what that Keras trips on
    (a ``.keras`` archive: only Keras 3)."""
    from weightcli.framework import python_code_in  # pure JSON, no framework import

    form = migrated_for(history or []) or writer_line(writer)
    code = python_code_in(config)
    out: dict[str, Any] = {}
    for target in TARGETS:
        needs: dict[str, int]
        if form == "keras1":
            needs = {"written by Keras 1": 1}
        elif form == target:
            needs = {}
        elif not legacy_h5:
            needs = {"not a legacy .h5": 1}
        else:
            needs = needed(config, target)
        if code and needs:
            needs[f"Lambda in {', '.join(code)}"] = len(code)
        out[target] = {"loads": not needs, "needs": needs}
    return out


def migrated_for(history: list[dict[str, Any]]) -> str | None:
    """The target of the last ``migrate`` a history records."""
    found = None
    for record in history:
        for step in record.get("steps") or []:
            if isinstance(step, dict) and step.get("command") == "migrate":
                target = step.get("for")
                found = target if target in TARGETS else found
    return found


def needed(config: dict[str, Any], target: str) -> dict[str, int]:
    """What ``target``'s loader would trip on, per rule and class (``"DepthwiseConv2D
    'groups'": 13``): the static "loads in" check. Empty: loads as it is."""
    counts: dict[str, int] = {}
    try:
        _, changes = translate(config, target)
    except UnsupportedError as exc:
        return {str(exc): 1}
    seen: set[tuple[str, str]] = set()
    classes = {layer: cls for cls, _, layer in _objects(config)}
    for c in changes:
        if (c.layer, c.rule) in seen:
            continue
        seen.add((c.layer, c.rule))
        label = f"{classes.get(c.layer, '?')} {c.rule}"
        counts[label] = counts.get(label, 0) + 1
    return counts
