"""Per-tensor statistics, accumulated block by block so memory is bounded by a block.

Mean and variance merge per-block moments with Chan's parallel formula, in
float64, over the finite elements only; NaN and Inf are counted apart.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from weightcli import native


@dataclass(frozen=True)
class TensorStats:
    count: int
    min: float | None
    max: float | None
    mean: float | None
    std: float | None
    abs_max: float | None
    zeros: int
    nan: int
    inf: int

    @property
    def nonfinite(self) -> int:
        return self.nan + self.inf

    @property
    def zeros_pct(self) -> float:
        return 100.0 * self.zeros / self.count if self.count else 0.0

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("count")
        return d


# Magnitudes whose sums of squares over a slice stay normal float32 numbers; blocks
# beyond them are summed in float64.
FLOAT32_SAFE = (1e-15, 1e15)

# Slices of a block processed at once in the fast path (1 MiB of float32: the several
# passes over a slice hit the cache, and the per-call overhead stays small).
SLICE = 1 << 18


class RunningStats:
    """Accumulates :class:`TensorStats` over blocks of one tensor.

    Fast path (no NaN/Inf in the block, found from its min and max, which NaN and Inf
    would poison): per cache-sized slice, numpy's pairwise sum and the sum of squares
    (one BLAS dot; the sum of squared deviations instead where the mean dominates, so
    nothing cancels), merged across slices in float64 with Chan's formula. Mean and
    std are good to about 1e-6 relative; min, max and the counts are exact.
    """

    def __init__(self, count_zeros: bool = True) -> None:
        self.count_zeros = count_zeros
        self.count = 0
        self.finite = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.lo = math.inf
        self.hi = -math.inf
        self.abs_max = 0.0
        self.zeros = 0
        self.nan = 0
        self.inf = 0

    def _merge(self, n: int, mean: float, m2: float) -> None:
        total = self.finite + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.finite * n / total
        self.finite = total

    def merge(self, other: RunningStats) -> None:
        """Add what ``other`` accumulated (statistics of further elements)."""
        self.count += other.count
        self.zeros += other.zeros
        self.nan += other.nan
        self.inf += other.inf
        if other.finite:
            self._merge(other.finite, other.mean, other.m2)
            self._bounds(other.lo, other.hi)

    def _bounds(self, lo: float, hi: float) -> None:
        self.lo = min(self.lo, lo)
        self.hi = max(self.hi, hi)
        self.abs_max = max(self.abs_max, abs(lo), abs(hi))

    def add_moments(
        self, n: int, mean: float, m2: float, lo: float, hi: float, zeros: int = 0
    ) -> None:
        """Add ``n`` finite elements summarised elsewhere (the native kernels)."""
        self.count += n
        if self.count_zeros:
            self.zeros += zeros
        self._merge(n, mean, m2)
        self._bounds(lo, hi)

    def update(self, block: np.ndarray) -> None:
        a = np.asarray(block)
        if a.dtype.kind not in "fiub" and a.dtype.name != "bfloat16":
            return
        fast = native.stats_f32(a.reshape(-1)) if a.dtype == np.float32 else None
        if fast is not None:  # one fused pass over a float32 block without NaN/Inf
            self.add_moments(*fast)
            return
        if a.dtype.kind == "b":
            a = a.astype(np.uint8)
        self.count += a.size
        if a.size == 0:
            return
        flat = a.reshape(-1)
        if flat.dtype.kind != "f" or flat.dtype.itemsize < 4:
            work = np.float64 if flat.dtype.kind in "iu" else np.float32
        else:
            work = flat.dtype.type
        lo = float(flat.min())
        hi = float(flat.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            self._slow(flat)
            return
        self._bounds(lo, hi)
        amax = max(-lo, hi)
        if work is np.float32 and not (amax == 0 or FLOAT32_SAFE[0] < amax < FLOAT32_SAFE[1]):
            work = np.float64  # float32 sums of squares would overflow or underflow
        if self.count_zeros:
            self.zeros += int(np.count_nonzero(flat == 0))
        for i in range(0, flat.size, SLICE):
            c = flat[i : i + SLICE]
            if c.dtype != work:
                c = c.astype(work)
            n = c.size
            mean = float(c.sum()) / n  # numpy's pairwise summation
            sq = float(np.dot(c, c))
            m2 = sq - n * mean * mean
            if mean * mean > 1e-2 * (sq / n) or m2 < 0:
                # The mean dominates: sum squared deviations instead (no cancellation).
                d = c - c.dtype.type(mean)
                m2 = float(np.dot(d, d))
            self._merge(n, mean, m2)

    def _slow(self, flat: np.ndarray) -> None:
        x = flat.astype(np.float64)
        nan = np.isnan(x)
        inf = np.isinf(x)
        self.nan += int(nan.sum())
        self.inf += int(inf.sum())
        x = x[~(nan | inf)]
        if self.count_zeros:
            self.zeros += int(np.count_nonzero(x == 0))
        if x.size == 0:
            return
        mean = float(x.mean())
        self._merge(x.size, mean, float(((x - mean) ** 2).sum()))
        self._bounds(float(x.min()), float(x.max()))

    def result(self) -> TensorStats:
        if self.finite == 0:
            return TensorStats(
                self.count, None, None, None, None, None, self.zeros, self.nan, self.inf
            )
        return TensorStats(
            count=self.count,
            min=self.lo,
            max=self.hi,
            mean=self.mean,
            std=math.sqrt(self.m2 / self.finite),
            abs_max=self.abs_max,
            zeros=self.zeros,
            nan=self.nan,
            inf=self.inf,
        )


def tensor_stats(blocks: Any) -> TensorStats:
    """Statistics over an iterable of ``(start, block)`` pairs."""
    acc = RunningStats()
    for _, block in blocks:
        acc.update(block)
    return acc.result()
