"""The optional native kernels (``weightcli/_native.c``): fused float32 block passes.

The numpy code beside each call is the reference path and runs wherever a kernel does
not apply: no compiled module (built at install when a C compiler is there), a dtype
other than float32, a non-contiguous block, NaN/Inf in the block (each kernel returns
None and the caller's numpy path takes the block), or ``WEIGHTCLI_NATIVE=0`` in the
environment (for A/B runs; the tests compare both paths on the same blocks).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Any

import numpy as np

ENV = "WEIGHTCLI_NATIVE"


def _load() -> ModuleType | None:
    if os.environ.get(ENV, "1") == "0":
        return None
    try:
        # By its full name, not ``from weightcli import``: the compiled module is a leaf
        # and needs nothing of the package face (weightcli/__init__.py) above it.
        return importlib.import_module("weightcli._native")
    except ImportError:
        return None


# The compiled module, or None; tests set it to None to run the numpy path.
kernels: ModuleType | None = _load()


def fused(*dtypes: Any) -> bool:
    """Whether blocks of these dtypes go through the kernels (when contiguous and finite)."""
    return kernels is not None and all(str(d) == "float32" for d in dtypes)


def _f32(*arrays: np.ndarray) -> bool:
    return kernels is not None and all(
        a.dtype == np.float32 and a.flags.c_contiguous and a.size for a in arrays
    )


def stats_f32(x: np.ndarray) -> tuple[int, float, float, float, float, int] | None:
    """(n, mean, sum of squared deviations, min, max, zeros) of a float32 block, or None."""
    if not _f32(x):
        return None
    assert kernels is not None
    r: Any = kernels.stats_f32(x)
    return r


def pair_f32(x: np.ndarray, y: np.ndarray) -> Any:
    """((mean, m2, min, max, zeros) of x, the same of y, elements changed, max |y - x|) for two
    float32 blocks of one shape, or None."""
    if not _f32(x, y) or x.shape != y.shape:
        return None
    assert kernels is not None
    return kernels.pair_f32(x, y)


def map_pair_f32(
    x: np.ndarray, kind: int, a: float, b: float = 0.0, first: int = 0, limit: int = -1
) -> tuple[np.ndarray, Any] | None:
    """``x * a`` (kind 0), ``np.clip(x, a, b)`` (kind 1; float32 bounds, neither zero) or
    ``prune.prune_block(x, float32, a, first, limit)`` (kind 2: ``a`` the threshold's bit
    pattern) of a float32 block with ``pair_f32``'s figures of it, in one pass; None when
    the kernel does not apply."""
    if not _f32(x):
        return None
    assert kernels is not None
    out = np.empty_like(x)
    r = kernels.map_pair_f32(x, out, kind, float(a), float(b), first, limit)
    return None if r is None else (out, r)


def fake_quant_f32(
    x: np.ndarray, scale: np.ndarray, zero: np.ndarray, inner: int, qmin: int, qmax: int
) -> tuple[np.ndarray, tuple[float, float, float]] | None:
    """``x`` quantized and dequantized (see transforms/quantize.py) with its error figures
    (sum of x^2, sum of errors^2, max |error|), or None. ``scale``/``zero``: one float64
    per channel; element i belongs to channel ``(i // inner) % len(scale)``."""
    if not _f32(x):
        return None
    assert kernels is not None
    out = np.empty_like(x)
    sc = np.ascontiguousarray(scale, np.float64).reshape(-1)
    zp = np.ascontiguousarray(zero, np.float64).reshape(-1)
    r = kernels.fake_quant_f32(x, out, sc, zp, inner, float(qmin), float(qmax))
    return None if r is None else (out, r)


def abs_hist_f32(
    x: np.ndarray,
    hist: np.ndarray,
    prefix: int | None,
    window: np.ndarray | None = None,
    lo: int = 0,
) -> bool | None:
    """Add the radix histogram of a float32 block's |x| bit patterns to ``hist`` (65536
    int64 counts): the high 16 bits (``prefix`` None), or the low 16 bits of the values
    whose high 16 bits are ``prefix``. With the high bits, ``window`` (3 x 65536 int64)
    also gets the low 16 bits of the values whose high 16 bits are ``lo``, ``lo + 1`` and
    ``lo + 2``. Returns whether the block holds a NaN (first kind only), or None when
    the kernel does not apply."""
    if not _f32(x) or hist.dtype != np.int64 or hist.shape != (65536,):
        return None
    if not hist.flags.c_contiguous or not 0 <= (prefix or 0) <= 0x7FFF:
        return None
    if window is not None and (
        prefix is not None
        or window.dtype != np.int64
        or window.shape != (3, 65536)
        or not window.flags.c_contiguous
        or not 0 <= lo <= 0x7FFF
    ):
        return None
    assert kernels is not None
    flat = x.reshape(-1)
    return bool(kernels.abs_hist_f32(flat, hist, -1 if prefix is None else prefix, window, lo))


def lincomb_f32(
    out: np.ndarray, xs: list[np.ndarray], a: list[float], c: list[float]
) -> np.ndarray | None:
    """``out`` (float32) = x0 * a0, then ``acc * c[k] + x[k] * a[k]`` for each further
    input, in float64 in that order and rounded once; None when the kernel does not apply
    (then ``out`` is untouched)."""
    if not _f32(out, *xs) or any(x.shape != out.shape for x in xs) or not 1 <= len(xs) <= 64:
        return None
    assert kernels is not None
    kernels.lincomb_f32(out, tuple(xs), tuple(map(float, a)), tuple(map(float, c)))
    return out


def diff_f32(a: np.ndarray, b: np.ndarray, atol: float, rtol: float) -> Any:
    """``diff``'s metrics of two float32 blocks of one shape: (not close by np.isclose's
    rule, max |a - b|, sum |a - b|, sum (a - b)^2, sum a^2, sum b^2, sum a*b, zeros of a,
    zeros of b), or None."""
    if not _f32(a, b) or a.shape != b.shape:
        return None
    assert kernels is not None
    return kernels.diff_f32(a, b, float(atol), float(rtol))


def bins_f32(
    x: np.ndarray,
    counts: np.ndarray,
    lo: np.float32,
    scale: np.float32,
    top: np.float32,
    near: float,
    edges: np.ndarray,
) -> bool:
    """``distribution._Float32Bins.count`` of a float32 block in one pass (see there);
    False when the kernel does not apply (nothing counted)."""
    if not _f32(x, edges) or counts.dtype != np.int64 or not counts.flags.c_contiguous:
        return False
    assert kernels is not None
    kernels.bins_f32(x, counts, float(lo), float(scale), float(top), float(near), edges)
    return True


def task_combine_f32(
    carrier: np.ndarray,
    xs: list[np.ndarray],
    keeps: list[np.ndarray | None],
    factors: list[float],
    weights: list[float],
    consensus: bool,
    normalize: bool,
    lam: float,
) -> tuple[np.ndarray, int] | None:
    """The merged float32 block of the generalized task arithmetic (``carrier + lam *
    mixed``, see transforms/merge.combine) and how many elements every input agreed on;
    None when the kernel does not apply."""
    if not _f32(carrier, *xs) or any(x.shape != carrier.shape for x in xs):
        return None
    if not 1 <= len(xs) <= 64 or any(
        k is not None
        and (k.dtype != np.bool_ or k.shape != carrier.shape or not k.flags.c_contiguous)
        for k in keeps
    ):
        return None
    assert kernels is not None
    out = np.empty_like(carrier)
    agreeing = kernels.task_combine_f32(
        out,
        carrier,
        tuple(xs),
        tuple(keeps),
        tuple(map(float, factors)),
        tuple(map(float, weights)),
        consensus,
        normalize,
        float(lam),
    )
    return out, int(agreeing)
