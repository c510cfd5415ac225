"""The dequantized view of a checkpoint: each natively quantized layer's integer codes
read as the float weights Keras computes from them, its scales hidden.

Keras 3 int8 layers store ``kernel`` (or ``embeddings``) as int8 codes and a float
``kernel_scale`` (``embeddings_scale``); the weight is ``codes / scale``, one scale per
output channel (Dense: the kernel's last axis) or per row (Embedding: axis 0). Other
modes (int4, packed two codes a byte; float8) and layouts are shown as stored, and
``unsupported`` says which.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from weightcli.errors import UnsupportedError, UsageError, literal
from weightcli.stores.base import BLOCK_ELEMS, Affine, Block, Patcher, Store
from weightcli.tensor import TensorInfo

SCALE_OF_CODES = {"kernel": "kernel_scale", "embeddings": "embeddings_scale"}


class DequantizedStore(Store):
    """A read-only view of ``inner`` with int8 codes dequantized to float32."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.path = inner.path
        self.meta = inner.meta
        by_name = {t.name: t for t in inner.tensors()}
        self._scales: dict[str, tuple[TensorInfo, int]] = {}  # codes path -> (scale, axis)
        self._affine: dict[str, Affine] = {}  # codes path -> (codes - zero) * scale
        self.unsupported: list[str] = []
        hidden: set[str] = set()
        self._tensors: list[TensorInfo] = []
        for t in inner.tensors():
            affine = inner.affine(t) if t.quantized else None
            if affine is not None:
                self._affine[t.path] = affine
                hidden.add(affine.scale.path)
                continue
            scale = by_name.get(_scale_name(t)) if t.quantized else None
            if scale is None or t.kind not in SCALE_OF_CODES:
                continue
            axis = _axis(t, scale)
            if not (t.quantized or "").startswith("int8") or axis is None:
                self.unsupported.append(t.name)
                continue
            self._scales[t.path] = (scale, axis)
            hidden.add(scale.path)
        for t in inner.tensors():
            if t.path in hidden:
                continue
            if t.path in self._scales or t.path in self._affine:
                t = replace(t, dtype="float32", quantized=None)
            self._tensors.append(t)

    @property
    def dequantized(self) -> list[str]:
        """Names of the tensors this view dequantizes."""
        return [t.name for t in self._tensors if t.path in self._scales or t.path in self._affine]

    def tensors(self) -> list[TensorInfo]:
        return list(self._tensors)

    def read(self, info: TensorInfo, block: Block | None = None) -> np.ndarray:
        raw = self.inner.read(self._inner_info(info), block)
        return self._dequantize(info, block, raw)

    def blocks(
        self,
        info: TensorInfo,
        max_elems: int = BLOCK_ELEMS,
        align: tuple[int, int] | None = None,
    ) -> Iterator[tuple[Block, np.ndarray]]:
        for where, raw in self.inner.blocks(self._inner_info(info), max_elems, align):
            yield where, self._dequantize(info, where, raw)

    def _inner_info(self, info: TensorInfo) -> TensorInfo:
        if info.path not in self._scales and info.path not in self._affine:
            return info
        return next(t for t in self.inner.tensors() if t.path == info.path)

    def _dequantize(self, info: TensorInfo, where: Block | None, raw: np.ndarray) -> np.ndarray:
        affine = self._affine.get(info.path)
        if affine is not None:
            scale = np.asarray(self.inner.read(affine.scale), np.float32).reshape(-1)
            zero = np.asarray(affine.zero, np.float32)
            if scale.size == 1:
                whole: np.ndarray = (raw.astype(np.float32) - zero[0]) * scale[0]
                return whole.astype(np.float32)
            axis = affine.axis
            first = where.origin[axis] if where is not None and where.origin else 0
            shape = [1] * raw.ndim
            shape[axis] = raw.shape[axis]
            s = scale[first : first + raw.shape[axis]].reshape(shape)
            z = zero if zero.size == 1 else zero[first : first + raw.shape[axis]].reshape(shape)
            return ((raw.astype(np.float32) - z) * s).astype(np.float32)
        if info.path not in self._scales:
            return raw
        scale_info, axis = self._scales[info.path]
        scale = np.asarray(self.inner.read(scale_info), np.float32).reshape(-1)
        first = where.origin[axis] if where is not None and where.origin else 0
        part = scale[first : first + raw.shape[axis]]
        shape = [1] * raw.ndim
        shape[axis] = part.size
        return (raw.astype(np.float32) / part.reshape(shape)).astype(np.float32)

    def _patch(self, out: Path, retype: dict[str, str]) -> Patcher:
        raise NotImplementedError("the dequantized view is read-only")

    def close(self) -> None:
        self.inner.close()


def _scale_name(t: TensorInfo) -> str:
    return t.name.rsplit("/", 1)[0] + "/" + SCALE_OF_CODES.get(t.kind, "")


def _axis(codes: TensorInfo, scale: TensorInfo) -> int | None:
    """The axis of ``codes`` that ``scale`` runs along, when the layout is one Keras uses
    for int8 (Dense: the last axis; Embedding: axis 0)."""
    n = 1
    for d in scale.shape:
        n *= d
    if codes.kind == "kernel" and codes.ndim >= 1 and n == codes.shape[-1]:
        return codes.ndim - 1
    if codes.kind == "embeddings" and codes.ndim >= 1 and n == codes.shape[0]:
        return 0
    return None


def has_quantized(store: Store) -> bool:
    return any(t.quantized for t in store.tensors())


def compared_views(a: Store, b: Store, dequantize: bool | None = None) -> tuple[Store, Store]:
    """Two stores as ``diff`` compares them: natively quantized layers by their
    dequantized weights (``dequantize``; None: when either side has such layers), and a
    ``.tflite`` against a model of another format in Keras's names and layouts."""
    from weightcli.stores.tflite import keras_view

    if dequantize is None:
        dequantize = has_quantized(a) or has_quantized(b)
    va, vb = (DequantizedStore(a), DequantizedStore(b)) if dequantize else (a, b)
    return keras_view(va, a, b), keras_view(vb, b, a)


class RequantizedStore(DequantizedStore):
    """The dequantized view, writable: a tensor changed as floats is stored as new codes
    under its scales, which stay as they were (``--requantize``). Codes are
    ``round(value / scale) + zero`` (TensorFlow Lite) or ``round(value * scale)`` (Keras's
    int8 layers), checked against the codes' type: a value the scales cannot reach is an
    error, never a saturated code."""

    @classmethod
    def of(cls, store: Store) -> RequantizedStore:
        if not has_quantized(store):
            raise UsageError(
                f"{literal(store.path)} holds no quantized weights: drop {{requantize}}"
            )
        view = cls(store)
        if not view.dequantized:
            raise UnsupportedError(
                f"{literal(store.path)}: its quantized weights are of a kind weightcli does "
                f"not requantize ({', '.join(view.unsupported[:3]) or 'unknown'})"
            )
        return view

    def local_copy(self) -> Path:
        return self.inner.local_copy()

    def supports_dtype(self, dtype: str) -> str | None:
        return self.inner.supports_dtype(dtype)

    def patch(
        self,
        out: Path,
        retype: dict[str, str] | None = None,
        overwrite: bool = False,
        compress: bool = False,
    ) -> Patcher:
        if retype and any(p in self._scales or p in self._affine for p in retype):
            raise UnsupportedError(
                f"{literal(self.path)}: requantized weights keep their codes' type"
            )
        return _Requantizing(self, self.inner.patch(out, retype, overwrite, compress))

    def codes(self, info: TensorInfo, where: Block, values: np.ndarray) -> np.ndarray:
        """``values`` (floats) of ``info`` as its codes, or the error of a value out of reach."""
        inner = self._inner_info(info)
        dtype = np.dtype(inner.dtype)
        v = np.asarray(values, np.float64)
        affine = self._affine.get(info.path)
        if affine is not None:
            scale = np.asarray(self.inner.read(affine.scale), np.float64).reshape(-1)
            zero = np.asarray(affine.zero, np.float64)
            axis = affine.axis
            if scale.size > 1:
                first = where.origin[axis] if where.origin else 0
                shape = [1] * v.ndim
                shape[axis] = v.shape[axis]
                scale = scale[first : first + v.shape[axis]].reshape(shape)
                if zero.size > 1:
                    zero = zero[first : first + v.shape[axis]].reshape(shape)
            q = np.rint(v / scale + zero)
        else:
            scale_info, axis = self._scales[info.path]
            s = np.asarray(self.inner.read(scale_info), np.float64).reshape(-1)
            first = where.origin[axis] if where.origin else 0
            shape = [1] * v.ndim
            shape[axis] = v.shape[axis]
            q = np.rint(v * s[first : first + v.shape[axis]].reshape(shape))
        lo, hi = np.iinfo(dtype).min, np.iinfo(dtype).max
        out = (q < lo) | (q > hi) | ~np.isfinite(q)
        if out.any():
            raise UsageError(
                f"{literal(info.name)}: {int(out.sum())} new values fall outside what "
                f"{dtype.name} codes reach at its scales (a scale would have to change): "
                "change it less, or quantize the float model again"
            )
        return q.astype(dtype)


class _Requantizing(Patcher):
    """A patcher of the requantized view: a changed quantized tensor is written as codes."""

    def __init__(self, view: RequantizedStore, inner: Patcher) -> None:
        super().__init__()
        self.view = view
        self.inner = inner
        self.out = getattr(inner, "out", view.path)

    @property
    def bytes_written(self) -> int:
        return self.inner.bytes_written

    def _begin(self, info: TensorInfo, dtype: str) -> None:
        inner = self.view._inner_info(info)
        self.inner.begin(inner, inner.dtype if inner is not info else dtype)

    def _write(self, info: TensorInfo, block: Block, data: np.ndarray) -> None:
        inner = self.view._inner_info(info)
        if inner is not info:
            data = self.view.codes(info, block, data)
        self.inner.write(inner, block, data)

    def _set_history(self, history: list[dict[str, Any]]) -> None:
        self.inner.set_history(history)

    def _commit(self) -> None:
        self.inner.commit()

    def _abort(self) -> None:
        self.inner.abort()
