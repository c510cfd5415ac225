"""TensorInfo: what a store knows about one tensor, without reading its data."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from weightcli.dtypes import is_float, itemsize


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a checkpoint.

    ``name`` is the canonical name a Keras user recognises (``dense_1/kernel``),
    the same whichever format holds the model. ``path`` says where the store finds
    it (an HDF5 path or a checkpoint key); ``copies`` lists further paths that hold
    the same variable (Keras 3 SavedModel exports store each variable twice).
    ``quantized`` is set on every variable of a layer Keras quantized natively: its
    ``kernel``/``embeddings`` hold integer codes, its ``*_scale`` how to dequantize them.
    """

    name: str
    path: str
    dtype: str
    shape: tuple[int, ...]
    kind: str
    layer: str | None = None
    layer_class: str | None = None
    optimizer: bool = False
    copies: tuple[str, ...] = field(default=())
    quantized: str | None = None  # a natively quantized layer's mode (int8, int4/128, ...)
    # Other names that select it too: the name as stored, where Keras's differs (a
    # Keras 2.0 weight scoped ``conv2d_1_1/kernel`` in layer ``conv2d_1``).
    aliases: tuple[str, ...] = field(default=())

    @property
    def size(self) -> int:
        return math.prod(map(int, self.shape))  # (Python ints: exact at any size; 1 for ())

    @property
    def nbytes(self) -> int:
        return self.size * itemsize(self.dtype)

    @property
    def is_float(self) -> bool:
        return is_float(self.dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)
