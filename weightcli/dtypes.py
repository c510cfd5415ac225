"""dtype names as weightcli reports them, including bfloat16 (via ml_dtypes)."""

from __future__ import annotations

from functools import cache

import numpy as np

FLOAT_NAMES = {"float16", "bfloat16", "float32", "float64"}


@cache
def bfloat16() -> np.dtype:
    """numpy's view of bfloat16 (ml_dtypes, imported on first use)."""
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)


def to_numpy(name: str) -> np.dtype:
    """The numpy dtype for a weightcli dtype name."""
    if name == "bfloat16":
        return bfloat16()
    if name.startswith("float8_"):  # float8_e4m3fn, float8_e5m2 (safetensors F8_*)
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, name))
    return np.dtype(name)


@cache
def name_of(dtype: np.dtype) -> str:
    """The weightcli name of a numpy dtype (``bfloat16`` included)."""
    if dtype.name == "bfloat16":
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
    import ml_dtypes

    return float(ml_dtypes.finfo(to_numpy(name)).max)
