"""Per-tensor statistics, accumulated block by block so memory is bounded by a block.

Mean and variance merge per-block moments with Chan's parallel formula, in
float64, over the finite elements only; NaN and Inf are counted apart.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


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


class RunningStats:
    """Accumulates :class:`TensorStats` over blocks of one tensor."""

    def __init__(self) -> None:
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

    def update(self, block: np.ndarray) -> None:
        a = np.asarray(block)
        if a.dtype.kind not in "fiub" and a.dtype.name != "bfloat16":
            return
        if a.dtype.kind == "b":
            a = a.astype(np.uint8)
        self.count += a.size
        if a.size == 0:
            return
        if a.dtype.kind == "f" or a.dtype.name == "bfloat16":
            x = (
                a.astype(np.float64, copy=False)
                if a.dtype.itemsize < 4 or a.dtype.name == "bfloat16"
                else a
            )
            nan = np.isnan(x)
            inf = np.isinf(x)
            n_nan = int(nan.sum())
            n_inf = int(inf.sum())
            self.nan += n_nan
            self.inf += n_inf
            if n_nan or n_inf:
                x = x[~(nan | inf)]
        else:
            x = a
        self.zeros += int(np.count_nonzero(x == 0))
        n = x.size
        if n == 0:
            return
        x64 = x.astype(np.float64, copy=False)
        bmean = float(x64.mean())
        bm2 = float(((x64 - bmean) ** 2).sum())
        lo = float(x64.min())
        hi = float(x64.max())
        total = self.finite + n
        delta = bmean - self.mean
        self.mean += delta * n / total
        self.m2 += bm2 + delta * delta * self.finite * n / total
        self.finite = total
        self.lo = min(self.lo, lo)
        self.hi = max(self.hi, hi)
        self.abs_max = max(self.abs_max, abs(lo), abs(hi))

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
