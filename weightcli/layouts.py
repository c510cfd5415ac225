"""PyTorch's weight layouts and Keras's, per Keras layer class (pure numpy, no I/O).

A Keras tensor corresponds to one or more PyTorch tensors, named after it (``fc/kernel``
<-> ``fc.weight``; an LSTM's ``bias`` <-> ``bias_ih_l0`` + ``bias_hh_l0``). Each
``Rule`` says which (its roles), how to turn the PyTorch arrays into the Keras array
(``to_keras``) and back (``to_torch``), and the Keras shape the PyTorch shapes give
(``keras_shape``), so a pairing is checked before any data is read. The conventions,
from PyTorch's documentation of each module and Keras's layer code:

- Linear ``weight [out, in]``, ``y = x W^T + b``; Dense ``kernel [in, out]``.
- Conv{1,2,3}d ``weight [O, I/groups, k...]`` (channels first); Keras Conv ``kernel
  [k..., I, O]`` (channels last).
- Depthwise (``groups=C``, ``out = C*M``) ``weight [C*M, 1, k...]``, output channel
  ``c*M + m``; DepthwiseConv ``kernel [k..., C, M]``.
- ConvTranspose{1,2,3}d ``weight [I, O, k...]``; Keras ConvTranspose ``kernel [k..., O, I]``.
- Embedding, LayerNorm/GroupNorm (``weight``, ``bias``), BatchNorm (``weight``,
  ``bias``, ``running_mean``, ``running_var``): the same arrays under other names.
- LSTM: ``weight_ih_l0 [4H, I]``, ``weight_hh_l0 [4H, H]``, gates (i, f, g, o) as
  Keras's (i, f, c, o); two biases, ``b_ih + b_hh`` = Keras's one ``bias [4H]``.
- MultiheadAttention: ``in_proj_weight [3E, E]`` packs query, key and value (``[H*D,
  E]`` each; Keras: ``query/kernel [E, H, D]``), ``in_proj_bias``, ``out_proj.weight
  [E, H*D]`` (Keras: ``attention_output/kernel [H, D, E]``); both scale by 1/sqrt(D).
- GRU: gates (r, z, n); Keras's (z, r, h). ``n = tanh(W_in x + b_in + r * (W_hn h +
  b_hn))`` is Keras's ``reset_after=True``, whose ``bias [2, 3H]`` holds the input and
  the recurrent bias; ``reset_after=False`` has no PyTorch counterpart (refused).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from weightcli.errors import UsageError
from weightcli.tensor import TensorInfo

Shape = tuple[int, ...]

# Keras kinds and the PyTorch names of the same arrays (no layout change).
SAME = {
    "bias": "bias",
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
    "embeddings": "weight",
}


@dataclass(frozen=True)
class Rule:
    """How one Keras tensor is made of PyTorch tensors, and back."""

    what: str  # for reports: "Linear weight [out, in] -> Dense kernel [in, out]"
    roles: tuple[str, ...]  # the PyTorch tensors' last name parts
    to_keras: Callable[[Sequence[np.ndarray]], np.ndarray]
    to_torch: Callable[[np.ndarray], Sequence[np.ndarray]]
    keras_shape: Callable[[Sequence[Shape]], Shape | None]  # None: they do not fit
    # The roles name tensors of the layer's parent (MultiHeadAttention's in_proj_weight)
    # rather than of the layer itself.
    parent: bool = False
    # ``to_torch`` gives rows ``index`` of ``count`` equal row blocks of one PyTorch
    # tensor (query, key and value packed in ``in_proj_weight``).
    pack: tuple[int, int] | None = None

    def torch_names(self, info: TensorInfo) -> list[str]:
        """The PyTorch names of ``info``'s tensors: its canonical name with ``/`` as
        ``.`` and its kind replaced by each role (``fc/kernel`` -> ``fc.weight``)."""
        parts = info.name.split("/")[: -2 if self.parent else -1]
        stem = ".".join(parts)
        return [f"{stem}.{role}" if stem else role for role in self.roles]


def _transposed(perm: Callable[[int], tuple[int, ...]], what: str, role: str = "weight") -> Rule:
    def to_keras(arrays: Sequence[np.ndarray]) -> np.ndarray:
        a = arrays[0]
        return np.ascontiguousarray(a.transpose(perm(a.ndim)))

    def to_torch(a: np.ndarray) -> list[np.ndarray]:
        return [np.ascontiguousarray(a.transpose(np.argsort(perm(a.ndim))))]

    def keras_shape(shapes: Sequence[Shape]) -> Shape:
        (s,) = shapes
        return tuple(s[i] for i in perm(len(s)))

    return Rule(what, (role,), to_keras, to_torch, keras_shape)


def _identity(kind: str, role: str, cls: str) -> Rule:
    return Rule(
        f"{cls} {role} -> {kind} (same array)",
        (role,),
        lambda arrays: np.ascontiguousarray(arrays[0]),
        lambda a: [a],
        lambda shapes: shapes[0],
    )


# torch [O, I, k1..kn] -> keras [k1..kn, I, O]
def _conv_perm(ndim: int) -> tuple[int, ...]:
    return (*range(2, ndim), 1, 0)


def depthwise_rule(target: TensorInfo) -> Rule:
    m = target.shape[-1]
    c = target.shape[-2]
    k = target.shape[:-2]

    def to_keras(arrays: Sequence[np.ndarray]) -> np.ndarray:
        a = arrays[0].reshape(c, m, *k)  # [C*M, 1, k...] -> [C, M, k...]
        return np.ascontiguousarray(a.transpose(*range(2, 2 + len(k)), 0, 1))

    def to_torch(a: np.ndarray) -> list[np.ndarray]:
        back = a.transpose(len(k), len(k) + 1, *range(len(k)))  # [C, M, k...]
        return [np.ascontiguousarray(back.reshape(c * m, 1, *k))]

    def keras_shape(shapes: Sequence[Shape]) -> Shape | None:
        (s,) = shapes
        return (*k, c, m) if s == (c * m, 1, *k) else None

    return Rule(
        "depthwise Conv weight [C*M, 1, k...] -> DepthwiseConv kernel [k..., C, M]",
        ("weight",),
        to_keras,
        to_torch,
        keras_shape,
    )


def _gates(a: np.ndarray, order: Sequence[int], axis: int) -> np.ndarray:
    parts = np.split(a, 3, axis=axis)
    return np.concatenate([parts[i] for i in order], axis=axis)


GRU_ORDER = (1, 0, 2)  # torch (r, z, n) <-> keras (z, r, h): its own inverse


def _gru_matrix(role: str, what: str) -> Rule:
    def to_keras(arrays: Sequence[np.ndarray]) -> np.ndarray:
        return np.ascontiguousarray(_gates(arrays[0], GRU_ORDER, 0).T)

    def to_torch(a: np.ndarray) -> list[np.ndarray]:
        return [np.ascontiguousarray(_gates(a.T, GRU_ORDER, 0))]

    return Rule(what, (role,), to_keras, to_torch, lambda s: (s[0][1], s[0][0]))


def _gru_bias() -> Rule:
    def to_keras(arrays: Sequence[np.ndarray]) -> np.ndarray:
        return np.stack([_gates(a, GRU_ORDER, 0) for a in arrays])

    def to_torch(a: np.ndarray) -> list[np.ndarray]:
        return [np.ascontiguousarray(_gates(a[i], GRU_ORDER, 0)) for i in (0, 1)]

    def keras_shape(shapes: Sequence[Shape]) -> Shape | None:
        return (2, *shapes[0]) if shapes[0] == shapes[1] and len(shapes[0]) == 1 else None

    return Rule(
        "GRU bias_ih_l0, bias_hh_l0 (r, z, n) -> GRU bias [2, 3H] (z, r, h; reset_after)",
        ("bias_ih_l0", "bias_hh_l0"),
        to_keras,
        to_torch,
        keras_shape,
    )


def _lstm_bias() -> Rule:
    def to_torch(a: np.ndarray) -> list[np.ndarray]:
        return [a, np.zeros_like(a)]

    def keras_shape(shapes: Sequence[Shape]) -> Shape | None:
        return shapes[0] if shapes[0] == shapes[1] else None

    return Rule(
        "LSTM bias_ih_l0 + bias_hh_l0 -> LSTM bias [4H] (their sum; gates i, f, g/c, o)",
        ("bias_ih_l0", "bias_hh_l0"),
        lambda arrays: arrays[0] + arrays[1],
        to_torch,
        keras_shape,
    )


MHA_PARTS = ("query", "key", "value")


def _mha(info: TensorInfo) -> Rule | None:
    """A MultiHeadAttention's sublayer (``mha/query/kernel``), as PyTorch's
    ``nn.MultiheadAttention`` holds it: ``in_proj_weight [3E, E]`` (query, key, value
    rows, each ``[H*D, E]``), ``in_proj_bias [3E]``, ``out_proj.weight [E, H*D]``,
    ``out_proj.bias``. Both scale queries by 1/sqrt(D)."""
    part = info.name.split("/")[-2] if info.name.count("/") >= 2 else ""
    kind, shape = info.kind, info.shape
    if kind == "kernel" and len(shape) == 3 and part in (*MHA_PARTS, "attention_output"):
        e, hd = (
            (shape[0], shape[1] * shape[2])
            if part != "attention_output"
            else (shape[2], shape[0] * shape[1])
        )
        if e != hd:
            raise UsageError(
                f"{info.name}: num_heads x key_dim = {hd}, not the model width {e}: PyTorch's "
                "MultiheadAttention has no such layer (embed_dim = num_heads x head_dim)"
            )
    if part in MHA_PARTS:
        i = MHA_PARTS.index(part)
        if kind == "kernel" and len(shape) == 3:
            e, h, d = shape

            def keras_shape(shapes: Sequence[Shape]) -> Shape | None:
                return (e, h, d) if shapes[0] == (3 * h * d, e) else None

            return Rule(
                f"MultiheadAttention in_proj_weight rows {part} [H*D, E] -> {part} kernel [E, H, D]",
                ("in_proj_weight",),
                lambda a: np.ascontiguousarray(
                    a[0][i * h * d : (i + 1) * h * d].T.reshape(e, h, d)
                ),
                lambda k: [np.ascontiguousarray(k.reshape(e, h * d).T)],
                keras_shape,
                parent=True,
                pack=(i, 3),
            )
        if kind == "bias" and len(shape) == 2:
            h, d = shape
            return Rule(
                f"MultiheadAttention in_proj_bias part {part} [H*D] -> {part} bias [H, D]",
                ("in_proj_bias",),
                lambda a: np.ascontiguousarray(a[0][i * h * d : (i + 1) * h * d].reshape(h, d)),
                lambda b: [b.reshape(-1)],
                lambda shapes: (h, d) if shapes[0] == (3 * h * d,) else None,
                parent=True,
                pack=(i, 3),
            )
    if part == "attention_output":
        if kind == "kernel" and len(shape) == 3:
            h, d, e = shape
            return Rule(
                "MultiheadAttention out_proj.weight [E, H*D] -> attention_output kernel [H, D, E]",
                ("out_proj.weight",),
                lambda a: np.ascontiguousarray(a[0].T.reshape(h, d, e)),
                lambda k: [np.ascontiguousarray(k.reshape(h * d, e).T)],
                lambda shapes: (h, d, e) if shapes[0] == (e, h * d) else None,
                parent=True,
            )
        if kind == "bias":
            return Rule(
                "MultiheadAttention out_proj.bias -> attention_output bias (same array)",
                ("out_proj.bias",),
                lambda a: np.ascontiguousarray(a[0]),
                lambda b: [b],
                lambda shapes: shapes[0],
                parent=True,
            )
    return None


CONV = ("Conv1D", "Conv2D", "Conv3D")
CONV_T = ("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose")
DEPTHWISE = ("DepthwiseConv1D", "DepthwiseConv2D")
NORMS = ("LayerNormalization", "BatchNormalization", "GroupNormalization")


def rule_for(info: TensorInfo) -> Rule:
    """The rule of one Keras tensor, by its layer class and kind; an error names what
    has no PyTorch counterpart here."""
    cls, kind = info.layer_class, info.kind
    if cls is None:
        raise UsageError(
            f"{info.name}: its layer class is unknown (a weights-only file, or a sublayer the "
            "config does not list, such as MultiHeadAttention's): PyTorch layouts are chosen "
            "by layer class; give a full model (.keras, .h5 with its config), or leave it out "
            "(-x)"
        )
    if cls == "EinsumDense":
        rule = _mha(info)
        if rule is not None:
            return rule
    if cls in ("GRUCell", "GRU"):
        if kind == "bias" and info.ndim == 1:  # reset_after=False: one bias [3H]
            raise UsageError(
                f"{info.name}: a GRU with reset_after=False has no PyTorch counterpart"
            )
        if kind == "kernel":
            return _gru_matrix(
                "weight_ih_l0", "GRU weight_ih_l0 [3H, I] (r, z, n) -> kernel [I, 3H] (z, r, h)"
            )
        if kind == "recurrent_kernel":
            return _gru_matrix(
                "weight_hh_l0",
                "GRU weight_hh_l0 [3H, H] (r, z, n) -> recurrent_kernel [H, 3H] (z, r, h)",
            )
        if kind == "bias":
            return _gru_bias()
    if cls in ("LSTMCell", "LSTM"):
        if kind == "kernel":
            return _transposed(
                lambda n: (1, 0), "LSTM weight_ih_l0 [4H, I] -> kernel [I, 4H]", "weight_ih_l0"
            )
        if kind == "recurrent_kernel":
            return _transposed(
                lambda n: (1, 0),
                "LSTM weight_hh_l0 [4H, H] -> recurrent_kernel [H, 4H]",
                "weight_hh_l0",
            )
        if kind == "bias":
            return _lstm_bias()
    if kind == "kernel":
        if cls == "Dense" and info.ndim == 2:
            return _transposed(
                lambda n: (1, 0), "Linear weight [out, in] -> Dense kernel [in, out]"
            )
        if cls in CONV:
            return _transposed(_conv_perm, f"Conv weight [O, I, k...] -> {cls} kernel [k..., I, O]")
        if cls in CONV_T:
            return _transposed(
                lambda n: (*range(2, n), 1, 0),
                f"ConvTranspose weight [I, O, k...] -> {cls} kernel [k..., O, I]",
            )
        if cls in DEPTHWISE:
            return depthwise_rule(info)
    norm_kind = kind in ("gamma", "beta", "moving_mean", "moving_variance")
    if (
        kind in SAME
        and (not norm_kind or cls in NORMS)
        and (kind != "embeddings" or cls == "Embedding")
    ):
        return _identity(kind, SAME[kind], cls)
    raise UsageError(
        f"{info.name}: no PyTorch layout rule for a {cls} {kind} here (Dense, Conv, "
        "ConvTranspose, DepthwiseConv, Embedding, normalisation, LSTM, GRU and "
        "MultiHeadAttention layers); "
        "move it with --layout keras"
    )
