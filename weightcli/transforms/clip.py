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


# Tensors up to this many elements (16 MiB of float32) get an exact percentile in
# memory; larger ones are located by a histogram pass (bounded memory).
EXACT_PERCENTILE_ELEMS = 1 << 22
HIST_BINS = 1 << 16


class AbsPercentile:
    """The ``p``-th percentile of |x| over a tensor streamed in blocks, in bounded memory:
    the one home of ``clip --percentile``'s algorithm.

    Pass 1 (``first``): every block. A tensor of at most ``exact_elems`` elements is
    kept and its percentile is exact (``abs_percentile``). Otherwise ``end_first``
    asks for pass 2 (``second``): a histogram of |x| in ``HIST_BINS`` bins over
    [0, max |x|] (the maximum known from pass 1), and ``bound`` interpolates linearly
    inside the bin that holds the wanted rank: within one bin width of the exact value.
    """

    def __init__(self, p: float, size: int, exact_elems: int | None = None) -> None:
        self.p = p
        self.exact = size <= (EXACT_PERCENTILE_ELEMS if exact_elems is None else exact_elems)
        self._blocks: list[np.ndarray] = []
        self._hist: np.ndarray | None = None
        self._top = 0.0
        self._finite = 0
        self.value: float | None = None

    def first(self, block: np.ndarray) -> None:
        if self.exact:
            self._blocks.append(block)

    def end_first(self, abs_max: float | None, finite: int) -> bool:
        """After pass 1 (with the tensor's max |x| and finite count): True when pass 2
        is needed; else ``value`` is the exact percentile."""
        if self.exact:
            both = (
                np.concatenate([b.ravel() for b in self._blocks]) if self._blocks else np.zeros(0)
            )
            self._blocks = []
            self.value = abs_percentile(both, self.p)
            return False
        self._top = float(abs_max or 0.0)
        self._finite = finite
        self._hist = np.zeros(HIST_BINS, np.int64)
        return True

    def second(self, block: np.ndarray) -> None:
        assert self._hist is not None
        self._hist += abs_histogram(block, self._top, HIST_BINS)

    def end_second(self) -> float:
        """The percentile, from the histogram of pass 2."""
        assert self._hist is not None
        rank = self.p / 100.0 * max(self._finite - 1, 0)
        cum = np.cumsum(self._hist)
        i = int(np.searchsorted(cum, rank, side="right"))
        width = self._top / HIST_BINS
        before = cum[i - 1] if i > 0 else 0
        inside = self._hist[min(i, HIST_BINS - 1)] or 1
        self.value = float((min(i, HIST_BINS - 1) + (rank - before) / inside) * width)
        return self.value
