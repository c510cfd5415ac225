"""Clip values to bounds and repair NaN/Inf.

``nonfinite`` says what happens to NaN and Inf:

* ``keep``: NaN left as it is; +-Inf clipped to a bound on its side, as ``np.clip``
  and ``tf.clip_by_value`` do (counted as clipped), and kept where that side has none;
* ``zero``: NaN and +-Inf become 0;
* ``clip``: NaN becomes 0, +Inf the upper bound and -Inf the lower bound (0 where
  that side has no bound).
"""

from __future__ import annotations

import math

import numpy as np

NONFINITE = ("keep", "zero", "clip")


def clip(
    x: np.ndarray, lo: float | None, hi: float | None, nonfinite: str = "keep"
) -> tuple[np.ndarray, int, int]:
    """Clip ``x`` to [lo, hi]; returns (result, elements clipped, elements repaired)."""
    if nonfinite not in NONFINITE:
        raise ValueError(f"nonfinite must be one of {NONFINITE}")
    if x.dtype.kind == "f" and x.dtype.itemsize >= 4 and x.size:
        lo_x, hi_x = x.min(), x.max()
        if np.isfinite(lo_x) and np.isfinite(hi_x):  # no NaN/Inf: clip in the tensor's dtype
            lo_t = x.dtype.type(lo) if lo is not None else None
            hi_t = x.dtype.type(hi) if hi is not None else None
            if (lo_t is None or lo_x >= lo_t) and (hi_t is None or hi_x <= hi_t):
                return x, 0, 0  # within bounds already: the block itself, unchanged
            y = np.clip(x, lo_t, hi_t)
            return y, int(np.count_nonzero(y != x)), 0
    y = np.array(x, copy=True)
    if y.dtype.kind != "f" and y.dtype.name != "bfloat16":
        wide = y
        finite = np.ones(y.shape, bool)
    else:
        wide = y.astype(np.float64) if y.dtype.itemsize < 4 or y.dtype.name == "bfloat16" else y
        finite = np.isfinite(wide)
    clipped = 0
    # Bounds apply to the infinities too, unless another rule repairs them below.
    bounded = ~np.isnan(wide) if nonfinite == "keep" and not finite.all() else finite
    if lo is not None:
        below = bounded & (wide < lo)
        clipped += int(below.sum())
        wide = np.where(below, lo, wide)
    if hi is not None:
        above = bounded & (wide > hi)
        clipped += int(above.sum())
        wide = np.where(above, hi, wide)
    repaired = 0
    if nonfinite != "keep" and not finite.all():
        nan = np.isnan(wide)
        pos = np.isposinf(wide)
        neg = np.isneginf(wide)
        repaired = int(nan.sum() + pos.sum() + neg.sum())
        wide = np.where(nan, 0.0, wide)
        if nonfinite == "zero":
            wide = np.where(pos | neg, 0.0, wide)
        else:
            wide = np.where(pos, hi if hi is not None else 0.0, wide)
            wide = np.where(neg, lo if lo is not None else 0.0, wide)
    return np.asarray(wide).astype(x.dtype, copy=False), clipped, repaired


def sigma_bounds(mean: float, std: float, k: float) -> tuple[float, float]:
    """[mean - k*std, mean + k*std]."""
    return mean - k * std, mean + k * std


def abs_percentile(x: np.ndarray, p: float) -> float:
    """The ``p``-th percentile of |x| over the finite elements (0 when there are none).

    Computed in the tensor's own dtype (|x| is exact there), partitioning in place, so
    memory stays at one copy of the tensor.
    """
    a = np.abs(x[np.isfinite(x)])
    return float(np.percentile(a, p, overwrite_input=True)) if a.size else 0.0


def abs_histogram(x: np.ndarray, top: float, bins: int) -> np.ndarray:
    """Counts of |x| over the finite elements in ``bins`` equal bins spanning [0, top]
    (values at or past ``top`` count in the last bin).

    Bin indexes come from one multiply in float32 (float64 for float64 data), so an
    element within rounding of a bin edge may land in the neighbouring bin: the
    histogram locates a percentile to within one bin, which is its purpose.
    """
    a = x.reshape(-1)
    if a.size and not (np.isfinite(a.min()) and np.isfinite(a.max())):
        a = a[np.isfinite(a)]
    if top <= 0 or not a.size:
        counts = np.zeros(bins, np.int64)
        counts[0] = a.size
        return counts
    factor = bins / top
    work = np.float64 if a.dtype == np.float64 or not factor < 1e37 else np.float32
    idx = np.abs(a if a.dtype == work else a.astype(work))
    if math.isfinite(factor):
        idx *= work(factor)
    else:  # a subnormal top: scale in two steps
        idx /= work(top)
        idx *= bins
    np.minimum(idx, bins - 1, out=idx)
    return np.bincount(idx.astype(np.intp), minlength=bins)
