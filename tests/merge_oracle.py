"""Merge methods on whole tensors in plain numpy, written from mergekit's torch code
(``generalized_task_arithmetic.py``, ``sparsify.py``, ``slerp.py``, ``model_stock.py``)
and the papers, independently of weightcli's streaming code: the oracle of the tests.

Random draws follow weightcli's documented stream (Philox keyed by BLAKE2b of
"seed NUL tensor NUL input", element j = 32-bit half j % 2 of word j // 2), drawn here
for the whole tensor at once.
"""

from __future__ import annotations

import hashlib

import numpy as np


def uniform32(seed: int, name: str, i: int, n: int) -> np.ndarray:
    key = int.from_bytes(
        hashlib.blake2b(f"{seed}\0{name}\0{i}".encode(), digest_size=16).digest(), "little"
    )
    words = np.random.Philox(key=key).random_raw((n + 1) // 2).astype(np.uint64)
    halves = np.empty(2 * words.size, np.uint64)
    halves[0::2] = words & np.uint64(0xFFFFFFFF)
    halves[1::2] = words >> np.uint64(32)
    return halves[:n]


def bernoulli(u: np.ndarray, p: np.ndarray | float) -> np.ndarray:
    return u < np.floor(np.asarray(p, np.float64) * 2.0**32)


def rank_mask(d: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Ranks [lo, hi) of |d| ascending, ties in storage order (a stable sort)."""
    order = np.argsort(np.abs(d).ravel(), kind="stable")
    mask = np.zeros(d.size, bool)
    mask[order[lo:hi]] = True
    return mask.reshape(d.shape)


def magnitude(d: np.ndarray, density: float) -> np.ndarray:
    if density >= 1:
        return d
    k = max(1, int(density * d.size))
    return np.where(rank_mask(d, d.size - k, d.size), d, 0.0)


def outliers(d: np.ndarray, density: float, gamma: float) -> np.ndarray:
    if density >= 1:
        return d
    n = d.size
    target, top = int(density * n), int(gamma * n)
    bottom = n - target - top
    if bottom < 0:
        top += bottom
        bottom = 0
    return np.where(rank_mask(d, bottom, n - top), d, 0.0)


def della_probs(d: np.ndarray, density: float, epsilon: float) -> np.ndarray:
    rows = d.reshape(-1, d.shape[-1]) if d.ndim else d.reshape(1, 1)
    ranks = np.argsort(np.argsort(np.abs(rows), axis=1, kind="stable"), axis=1, kind="stable")
    length = rows.shape[1]
    norm = ranks / (length - 1) if length > 1 else np.zeros(rows.shape)
    return ((density - epsilon) + norm * 2 * epsilon).reshape(d.shape)


def gta(
    method: str,
    name: str,
    base: np.ndarray,
    xs: list[np.ndarray],
    weights: list[float],
    density: list[float],
    *,
    gamma: float = 0.01,
    epsilon: float = 0.15,
    lam: float = 1.0,
    seed: int = 0,
    normalize: bool | None = None,
    rescale: bool | None = None,
) -> np.ndarray:
    b = base.astype(np.float64)
    sparsify = {
        "task-arithmetic": None,
        "ties": "magnitude",
        "dare-linear": "random",
        "dare-ties": "random",
        "breadcrumbs": "outliers",
        "breadcrumbs-ties": "outliers",
        "della": "della",
        "della-linear": "della",
    }[method]
    consensus = method in ("ties", "dare-ties", "breadcrumbs-ties", "della")
    if normalize is None:
        normalize = method in ("ties", "della")
    if rescale is None:
        rescale = sparsify in ("random", "della")
    deltas = []
    for i, x in enumerate(xs):
        d = x.astype(np.float64) - b
        if sparsify == "magnitude":
            d = magnitude(d, density[i])
        elif sparsify == "outliers":
            d = outliers(d, density[i], gamma)
        elif sparsify == "random" and density[i] < 1:
            keep = bernoulli(uniform32(seed, name, i, d.size).reshape(d.shape), density[i])
            d = np.where(keep, d / density[i] if rescale else d, 0.0)
        elif sparsify == "della":
            p = della_probs(d, density[i], epsilon)
            keep = bernoulli(uniform32(seed, name, i, d.size).reshape(d.shape), p)
            d = np.where(keep, d / p if rescale else d, 0.0)
        deltas.append(d)
    w = np.array(weights, np.float64).reshape(-1, *([1] * b.ndim))
    weighted = np.stack(deltas) * w
    if consensus:
        majority = np.where(weighted.sum(axis=0) >= 0, 1.0, -1.0)
        mask = np.sign(weighted) == majority
        mixed = (weighted * mask).sum(axis=0)
        divisor = (w * mask).sum(axis=0)
        divisor[divisor == 0] = 1
    else:
        mixed = weighted.sum(axis=0)
        divisor = w.sum(axis=0)
        divisor[np.abs(divisor) < 1e-8] = 1
    if normalize:
        mixed = mixed / divisor
    return b + lam * mixed


def slerp(t: float, v0: np.ndarray, v1: np.ndarray) -> np.ndarray:
    a, b = v0.astype(np.float64), v1.astype(np.float64)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    ua = a / na if na > 1e-8 else a
    ub = b / nb if nb > 1e-8 else b
    dot = np.sum(ua * ub)
    if np.abs(dot) > 0.9995:
        return (1 - t) * a + t * b
    theta0 = np.arccos(dot)
    s0 = np.sin(theta0 - theta0 * t) / np.sin(theta0)
    s1 = np.sin(theta0 * t) / np.sin(theta0)
    return s0 * a + s1 * b


def model_stock(base: np.ndarray, xs: list[np.ndarray]) -> np.ndarray:
    w0 = base.astype(np.float64).ravel()
    ws = [x.astype(np.float64).ravel() for x in xs]
    offsets = [w - w0 for w in ws]
    cos = []
    for i in range(len(offsets)):
        for j in range(i + 1, len(offsets)):
            prod = np.linalg.norm(offsets[i]) * np.linalg.norm(offsets[j])
            cos.append(np.clip(np.dot(offsets[i], offsets[j]) / max(prod, 1e-6), -1, 1))
    c = float(np.mean(cos))
    n = len(ws)
    t = n * c / (1 + (n - 1) * c)
    return (t * (sum(ws) / n) + (1 - t) * w0).reshape(base.shape)
