"""Weight clustering (pure numpy): exact 1-D k-means by Lloyd's algorithm, on values
streamed in passes (one pass per iteration, bounded memory), from the initialisations
TensorFlow Model Optimization offers (``clustering_centroids.py``):

- ``linear``: K centroids evenly spaced in [min, max] (TFMOT's ``LINEAR``).
- ``density``: the inverse of the values' distribution at K evenly spaced
  probabilities in [0, 1] (TFMOT's ``DENSITY_BASED`` interpolates the CDF the same way).
- ``kmeans++`` (TFMOT's default, ``KMEANS_PLUS_PLUS``): D^2 seeding, here with numpy's
  generator seeded by ``seed`` over an evenly strided sample of at most 65,536 values
  (TFMOT's TensorFlow sampler cannot be reproduced outside TensorFlow); Lloyd's
  iterations then run on every value.

An iteration assigns each value to its nearest centroid (centroids sorted; a value
exactly half-way goes to the lower one) and moves each centroid to the mean of its
values (a centroid with none stays); it ends when no centroid moves, or after
``MAX_ITERATIONS``. Means are float64 sums over the whole tensor, so the result does not
depend on how the tensor is split into blocks.
"""

from __future__ import annotations

import numpy as np

INITS = ("kmeans++", "linear", "density")
MAX_ITERATIONS = 300
SAMPLE = 1 << 16


def sample_stride(size: int) -> int:
    """Every ``stride``-th value (by flat index) forms the initialisation's sample."""
    return max(1, -(-size // SAMPLE))


def initial(values: np.ndarray, k: int, init: str, lo: float, hi: float, seed: int) -> np.ndarray:
    """Sorted, distinct starting centroids (at most ``k``) from a sample of the values
    and their range."""
    x = np.asarray(values, dtype=np.float64).ravel()
    if init == "linear" or x.size == 0:
        c = np.linspace(lo, hi, k)
    elif init == "density":
        c = np.quantile(x, np.linspace(0.0, 1.0, k))
    else:  # kmeans++: D^2 seeding
        rng = np.random.default_rng(seed)
        c = np.empty(min(k, x.size))
        c[0] = x[rng.integers(x.size)]
        d2 = (x - c[0]) ** 2
        for i in range(1, c.size):
            total = d2.sum()
            if total == 0:  # every value is a centroid already
                c = c[:i]
                break
            c[i] = x[rng.choice(x.size, p=d2 / total)]
            d2 = np.minimum(d2, (x - c[i]) ** 2)
    return np.unique(c)


def assign(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """The index of each value's nearest centroid (sorted centroids; half-way: the lower)."""
    bounds = (centroids[:-1] + centroids[1:]) / 2.0
    return np.searchsorted(bounds, np.asarray(x, dtype=np.float64), side="left")


class Lloyd:
    """Accumulates one iteration's sums and counts per centroid over streamed blocks."""

    def __init__(self, centroids: np.ndarray) -> None:
        self.centroids = centroids
        self.sums = np.zeros(centroids.size)
        self.counts = np.zeros(centroids.size, np.int64)
        self.iterations = 0

    def observe(self, x: np.ndarray) -> None:
        xs = np.asarray(x, dtype=np.float64).ravel()
        idx = assign(xs, self.centroids)
        self.sums += np.bincount(idx, weights=xs, minlength=self.centroids.size)
        self.counts += np.bincount(idx, minlength=self.centroids.size)

    def step(self) -> bool:
        """Move the centroids; True when one moved (another iteration is due)."""
        self.iterations += 1
        moved = np.where(self.counts > 0, self.sums / np.maximum(self.counts, 1), self.centroids)
        new = np.unique(moved)  # two centroids that met become one
        changed = new.size != self.centroids.size or not np.array_equal(new, self.centroids)
        self.centroids = new
        self.sums = np.zeros(new.size)
        self.counts = np.zeros(new.size, np.int64)
        return changed and self.iterations < MAX_ITERATIONS
