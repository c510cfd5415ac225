"""Fake quantization: quantize to ``bits``-bit integers, then dequantize to the input dtype.

Symmetric: q in [-(2^(b-1) - 1), 2^(b-1) - 1], zero point 0, scale = max|x| / qmax.
Asymmetric: q in [0, 2^b - 1], range [min(x, 0), max(x, 0)], scale = range / (2^b - 1),
integer zero point. Either way every value within the range is reproduced to within
half a step (scale / 2).
"""

from __future__ import annotations

import math

import numpy as np

SCHEMES = ("symmetric", "asymmetric")


def qrange(bits: int, scheme: str) -> tuple[int, int]:
    if not 2 <= bits <= 16:
        raise ValueError(f"bits must be between 2 and 16, got {bits}")
    if scheme == "symmetric":
        q = 2 ** (bits - 1) - 1
        return -q, q
    if scheme == "asymmetric":
        return 0, 2**bits - 1
    raise ValueError(f"scheme must be one of {SCHEMES}")


def round_half_away(q: np.ndarray) -> np.ndarray:
    """Round to the nearest integer, ties away from zero, in place (float arrays) and
    returned: TFLite's rule (``std::round`` in its quantizer); numpy's ``round`` takes
    ties to even (54.5 -> 54, where TFLite gives 55)."""
    q = np.asarray(q, np.float64)
    t = np.abs(q, out=np.empty_like(q))  # (an array even when q is 0-d)
    t += 0.5
    np.floor(t, out=t)
    # the sign put back with copysign: a masked ``negative(where=...)`` is several times
    # slower (the quantize profile's top line); -0.0 and NaN keep their signs either way.
    np.copysign(t, q, out=q)
    return q


def params(lo: np.ndarray, hi: np.ndarray, bits: int, scheme: str) -> tuple[np.ndarray, np.ndarray]:
    """(scale, zero_point) arrays from per-channel (or scalar) min and max."""
    qmin, qmax = qrange(bits, scheme)
    lo = np.minimum(np.asarray(lo, np.float64), 0.0)
    hi = np.maximum(np.asarray(hi, np.float64), 0.0)
    if scheme == "symmetric":
        absmax = np.maximum(-lo, hi)
        scale = absmax / qmax
        zero = np.zeros_like(scale)
    else:
        scale = (hi - lo) / (qmax - qmin)
        with np.errstate(divide="ignore", invalid="ignore"):
            zero = np.clip(round_half_away(qmin - lo / np.where(scale > 0, scale, 1.0)), qmin, qmax)
    scale = np.where(scale > 0, scale, 1.0)  # an all-zero channel: any scale reproduces it
    return scale, zero


def fake_quantize(
    x: np.ndarray, scale: np.ndarray, zero: np.ndarray, bits: int, scheme: str
) -> np.ndarray:
    """Quantize-dequantize ``x`` with broadcastable ``scale``/``zero``; returns ``x``'s dtype.

    NaN stays NaN; +-Inf saturate to the ends of the range.
    """
    qmin, qmax = qrange(bits, scheme)
    finite = x.dtype.kind == "f" and bool(np.isfinite(x.min()) and np.isfinite(x.max()))
    nan = None if finite else np.isnan(x)
    # In float64, in place: one temporary the size of the block.
    q = x.astype(np.float64)
    np.divide(q, scale, out=q)
    round_half_away(q)
    shifted = bool(np.any(zero))  # symmetric: the zero point is 0 everywhere
    if shifted:
        q += zero
    np.clip(q, qmin, qmax, out=q)
    if shifted:
        q -= zero
    q *= scale
    if nan is not None and nan.any():
        q[nan] = np.nan
    return q.astype(x.dtype)


def channel_shape(ndim: int, axis: int) -> tuple[int, ...]:
    """Shape that broadcasts a per-channel vector along ``axis`` of an ``ndim`` tensor."""
    shape = [1] * ndim
    shape[axis] = -1
    return tuple(shape)


def reduce_minmax(x: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (or whole-tensor with axis None) min and max over finite values."""
    if x.dtype.kind == "f" and x.size and np.isfinite(x.min()) and np.isfinite(x.max()):
        # No NaN/Inf: reduce in the tensor's own dtype (exact: min and max only pick values).
        if axis is None:
            return np.asarray(float(x.min())), np.asarray(float(x.max()))
        axes = tuple(i for i in range(x.ndim) if i != axis % x.ndim)
        return x.min(axis=axes).astype(np.float64), x.max(axis=axes).astype(np.float64)
    wide = x.astype(np.float64)
    finite = np.isfinite(wide)
    lo_src = np.where(finite, wide, np.inf)
    hi_src = np.where(finite, wide, -np.inf)
    if axis is None:
        return np.asarray(lo_src.min(initial=np.inf)), np.asarray(hi_src.max(initial=-np.inf))
    axes = tuple(i for i in range(x.ndim) if i != axis % x.ndim)
    return lo_src.min(axis=axes, initial=np.inf), hi_src.max(axis=axes, initial=-np.inf)


def sqnr_db(signal: float, noise: float) -> float:
    """Signal-to-quantization-noise ratio in dB from sums of squares (inf when exact,
    -inf when the noise is infinite: an overflow)."""
    if noise == 0:
        return math.inf
    if signal == 0 or not math.isfinite(noise):
        return -math.inf
    if not math.isfinite(signal):
        return math.inf
    return 10.0 * math.log10(signal / noise)


# Output-channel axis of each Keras layer's kernel, by layer class.
# Keras lays kernels out as (..., in, out): the last axis. Transposed convolutions
# store (..., out, in): the second last. Depthwise kernels (h, w, in, multiplier):
# each input channel owns its filters, so the input axis (second last). Embedding
# tables are quantized per row (token).
CHANNEL_AXIS = {
    "Conv1DTranspose": -2,
    "Conv2DTranspose": -2,
    "Conv3DTranspose": -2,
    "DepthwiseConv1D": -2,
    "DepthwiseConv2D": -2,
    "Embedding": 0,
}


def channel_axis(layer_class: str | None, kind: str, ndim: int) -> int | None:
    """The per-channel axis for a tensor; None for scalars and 1-D tensors (per-tensor)."""
    if ndim < 2:
        return None
    if kind == "depthwise_kernel":
        return ndim - 2
    axis = CHANNEL_AXIS.get(layer_class or "", -1)
    return axis % ndim
