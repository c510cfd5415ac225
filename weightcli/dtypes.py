"""dtype names as weightcli reports them, including bfloat16 (via ml_dtypes)."""

from __future__ import annotations

import ml_dtypes
import numpy as np

BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
FLOAT_NAMES = {"float16", "bfloat16", "float32", "float64"}


def to_numpy(name: str) -> np.dtype:
    """The numpy dtype for a weightcli dtype name."""
    if name == "bfloat16":
        return BFLOAT16
    return np.dtype(name)


def name_of(dtype: np.dtype) -> str:
    """The weightcli name of a numpy dtype (``bfloat16`` included)."""
    if dtype == BFLOAT16:
        return "bfloat16"
    if dtype.kind in "SUO":
        return "string"
    return dtype.name


def is_float(name: str) -> bool:
    return name in FLOAT_NAMES


def itemsize(name: str) -> int:
    if name == "string":
        return 0
    return to_numpy(name).itemsize


def finfo_max(name: str) -> float:
    return float(ml_dtypes.finfo(to_numpy(name)).max)
