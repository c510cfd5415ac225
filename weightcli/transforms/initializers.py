"""Keras's weight initialisers in numpy: same fans, same distributions (Keras 3.15).

``compute_fans`` is Keras's own rule for every kernel layout: a 2-D kernel is
(fan_in, fan_out); a convolution kernel (..., in, out) multiplies both by its receptive
field (the product of the leading axes), depthwise and transposed kernels included.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

# Keras's truncated normal keeps values within two standard deviations; this is the
# standard deviation of a unit normal truncated so (Keras divides by it).
TRUNCATED_STD = 0.87962566103423978

VARIANCE_SCALING = {
    "glorot_uniform": (1.0, "fan_avg", "uniform"),
    "glorot_normal": (1.0, "fan_avg", "truncated_normal"),
    "he_uniform": (2.0, "fan_in", "uniform"),
    "he_normal": (2.0, "fan_in", "truncated_normal"),
    "lecun_uniform": (1.0, "fan_in", "uniform"),
    "lecun_normal": (1.0, "fan_in", "truncated_normal"),
}
NAMES = (
    *VARIANCE_SCALING,
    "orthogonal",
    "zeros",
    "ones",
    "constant",
    "random_normal",
    "random_uniform",
)
ORTHOGONAL_MAX_ELEMS = 1 << 22


def compute_fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """(fan_in, fan_out) exactly as ``keras.src.initializers.random_initializers.compute_fans``."""
    if len(shape) < 1:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


def parameters(name: str, shape: tuple[int, ...], **kw: float) -> dict[str, float]:
    """The distribution's parameters (for the report and the tests): limit or stddev."""
    if name in VARIANCE_SCALING:
        scale, mode, dist = VARIANCE_SCALING[name]
        fan_in, fan_out = compute_fans(shape)
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
        n = max(1.0, float(n))
        if dist == "uniform":
            return {"limit": math.sqrt(3.0 * scale / n)}
        return {"stddev": math.sqrt(scale / n) / TRUNCATED_STD, "truncated_at": 2.0}
    if name == "random_normal":
        return {"mean": kw.get("mean", 0.0), "stddev": kw.get("stddev", 0.05)}
    if name == "random_uniform":
        return {"minval": kw.get("minval", -0.05), "maxval": kw.get("maxval", 0.05)}
    if name == "constant":
        return {"value": kw.get("value", 0.0)}
    if name == "orthogonal":
        return {"gain": kw.get("gain", 1.0)}
    return {}


def _truncated(rng: np.random.Generator, n: int, std: float, mean: float = 0.0) -> np.ndarray:
    out = rng.normal(mean, std, n)
    bad = np.abs(out - mean) > 2 * std
    while bad.any():  # redraw outside two standard deviations, as Keras's truncated normal
        out[bad] = rng.normal(mean, std, int(bad.sum()))
        bad = np.abs(out - mean) > 2 * std
    return out


def values(
    name: str, shape: tuple[int, ...], rng: np.random.Generator, sizes: list[int], **kw: float
) -> Iterator[np.ndarray]:
    """The new values in runs of ``sizes`` elements (C order), drawn from ``rng``."""
    p = parameters(name, shape, **kw)
    if name == "orthogonal":
        flat = _orthogonal(shape, rng, p["gain"]).reshape(-1)
        pos = 0
        for n in sizes:
            yield flat[pos : pos + n]
            pos += n
        return
    for n in sizes:
        if name in VARIANCE_SCALING:
            if "limit" in p:
                yield rng.uniform(-p["limit"], p["limit"], n)
            else:
                yield _truncated(rng, n, p["stddev"])
        elif name == "random_normal":
            yield rng.normal(p["mean"], p["stddev"], n)
        elif name == "random_uniform":
            yield rng.uniform(p["minval"], p["maxval"], n)
        elif name == "zeros":
            yield np.zeros(n)
        elif name == "ones":
            yield np.ones(n)
        else:
            yield np.full(n, p["value"])


def _orthogonal(shape: tuple[int, ...], rng: np.random.Generator, gain: float) -> np.ndarray:
    """As Keras: a normal matrix (prod(shape[:-1]), shape[-1]) made orthogonal by QR."""
    rows = math.prod(shape[:-1]) if len(shape) > 1 else 1
    cols = shape[-1] if shape else 1
    a = rng.normal(0.0, 1.0, (max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    return (gain * q).reshape(shape)
