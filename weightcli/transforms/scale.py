"""Multiply by a factor."""

from __future__ import annotations

import numpy as np


def scale(x: np.ndarray, factor: float) -> np.ndarray:
    """``x * factor`` in ``x``'s own dtype (computed in float64 for half-precision inputs)."""
    if x.dtype.itemsize < 4:
        return (x.astype(np.float64) * factor).astype(x.dtype)
    return (x * x.dtype.type(factor)).astype(x.dtype, copy=False)
