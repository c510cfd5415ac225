"""A tensor's distribution and spectrum, accumulated block by block (pure numpy): the
histogram behind ``report``'s pictures and ``inspect``'s sparkline, the spectral figures
of a 2-D kernel, and the flags a person should see first.

Everything here takes the blocks a store yields (runs of C-order elements, in storage
order) and holds memory bounded by its own size, never by the tensor's."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from weightcli import native
from weightcli.errors import ParameterError

# Bins of every histogram: the report draws them; the terminal's sparkline sums them in
# runs of BINS // SPARK_CELLS, so its cells have every fourth edge of the report's.
BINS = 64
SPARK_CELLS = 16
SPARK_LEVELS = "▁▂▃▄▅▆▇█"

# Spectral figures are exact (every singular value: the eigenvalues of a float64 Gram
# matrix, eigvalsh) when the kernel's smaller side has at most ``exact_side`` entries
# (EXACT_SIDE unless the caller asks for another, at most EXACT_SIDE_MAX): a
# kernel of at most WHOLE_ELEMS elements is in memory already (inspect reads it whole in
# its first pass) and its Gram is taken on its smaller side (W W^T or W^T W: the same
# non-zero eigenvalues); a bigger one with at most EXACT_SIDE columns and a Gram cost
# (rows x cols^2 multiply-adds) of at most GRAM_FLOPS is summed row block by row block.
# Otherwise the largest singular value is estimated by POWER_ITERATIONS rounds of power
# iteration from a seeded random start (a lower bound; in memory, or one pass over the
# file a round), the stable rank from it, and the effective rank is not computed.
# Measured on ResNet50 (the Gram is rows x side^2, eigvalsh side^3): its 13 kernels of
# side 512 cost 0.33 s of CPU exactly (a 4608x512 one: 21 ms of Gram, 11 ms of
# eigvalsh) against 7 ms for the rest; the page with them took 2.05x inspect's time,
# with side 256 1.65x. A side of EXACT_SIDE_MAX holds a 8 MiB Gram and its copy per
# helper thread.
EXACT_SIDE = 256
EXACT_SIDE_MAX = 1024
WHOLE_ELEMS = 1 << 22
GRAM_FLOPS = 1 << 32
POWER_ITERATIONS = 8
# Rows (or columns) of an in-memory kernel turned to float64 at a time.
GRAM_CHUNK = 1 << 18

JSON = dict[str, Any]


def _finite_floats(block: np.ndarray) -> np.ndarray:
    a = np.asarray(block).reshape(-1)
    if a.dtype.kind == "b":
        a = a.astype(np.uint8)
    if a.dtype.kind not in "fiu":  # bfloat16 and float8 (ml_dtypes) compute as float32
        a = a.astype(np.float32)
    if a.dtype.kind == "f":
        a = a[np.isfinite(a)]
    return a


class Histogram:
    """Counts of finite values in ``bins`` equal bins over ``[lo, hi]`` (the last bin
    closed, as ``np.histogram``'s): fixed edges, so blocks add up. NaN and Inf are
    left out (the statistics count them). ``lo == hi`` (a constant tensor) is one value:
    every count goes to the middle bin, over the edges ``lo - 0.5 .. lo + 0.5`` as
    numpy chooses them."""

    def __init__(self, lo: float, hi: float, bins: int = BINS, *, inside: bool = False) -> None:
        """``inside``: the caller knows every value it will give is finite and within
        ``[lo, hi]`` (the statistics' own range), which lets float32 blocks take the
        fast path (``_Float32Bins``)."""
        if not (math.isfinite(lo) and math.isfinite(hi)) or hi < lo:
            raise ValueError(f"histogram range [{lo}, {hi}]")
        if lo == hi:
            lo, hi = lo - 0.5, hi + 0.5
        self.lo, self.hi, self.bins = float(lo), float(hi), bins
        self.counts = np.zeros(bins, dtype=np.int64)
        # numpy's edges for float32 values and a Python-float range. Bins narrower than
        # float32 can tell apart (values of 1000 +- 0.0005) make numpy refuse float32
        # input ("too many bins for data range"): such values are counted in float64.
        edges32 = np.linspace(self.lo, self.hi, bins + 1, dtype=np.float32)
        self._float64 = not bool((edges32[1:] > edges32[:-1]).all())
        fast = inside and bins <= 256 and not self._float64
        self._fast = _Float32Bins.of(self.lo, self.hi, edges32) if fast else None

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(self.lo, self.hi, self.bins + 1)

    def update(self, block: np.ndarray) -> None:
        if self._fast is not None and block.dtype == np.float32:
            flat = block.reshape(-1)
            f = self._fast
            if native.bins_f32(flat, self.counts, f.lo, f.scale, f.top, f.near, f.edges):
                return  # the same rule, one pass (native.py)
            for i in range(0, flat.size, _Float32Bins.CHUNK):
                self._fast.count(flat[i : i + _Float32Bins.CHUNK], self.counts)
            return
        x = _finite_floats(block)
        if x.size == 0:
            return
        if self._float64:
            x = x.astype(np.float64)
        # np.histogram's own rule for equal bins (float64, the last edge in the last bin);
        # values outside [lo, hi] are not counted, as np.histogram leaves them out.
        self.counts += np.histogram(x, bins=self.bins, range=(self.lo, self.hi))[0]

    def add(self, values: Iterable[tuple[Any, np.ndarray]]) -> Histogram:
        for _, block in values:
            self.update(block)
        return self

    def to_json(self) -> JSON:
        return {"lo": self.lo, "hi": self.hi, "counts": self.counts.tolist()}


class _Float32Bins:
    """``np.histogram``'s counts of float32 values over equal bins, exactly, at a
    fraction of its cost. numpy computes each value's bin in float64 and then corrects
    it against its float32 edges (two gathers, compares and masked adds over every
    value). Here the bin is ``floor((x - lo) * scale)`` in float32, which is right for
    every value farther than ``near`` (in bins) from an edge: ``near`` bounds the
    rounding of the subtraction, the product and the edges themselves. The few values
    nearer an edge are binned against numpy's own edges (``searchsorted``). The caller
    vouches that every value is finite and within ``[lo, hi]``; a range too narrow for
    float32 to tell the bins apart (``near`` past a tenth of a bin) gets no fast path."""

    CHUNK = 1 << 16  # values per step: the temporaries stay in cache

    def __init__(self, lo: float, hi: float, edges: np.ndarray, near: float) -> None:
        self.bins, self.near, self.edges = edges.size - 1, near, edges
        self.lo = np.float32(lo)
        self.scale = np.float32(self.bins / (hi - lo))
        self.top = np.float32(self.bins - 1)

    @classmethod
    def of(cls, lo: float, hi: float, edges: np.ndarray) -> _Float32Bins | None:
        """``edges``: numpy's float32 edges, strictly increasing."""
        bins = edges.size - 1
        width = (hi - lo) / bins
        ulp = float(np.spacing(np.float32(max(abs(lo), abs(hi)))))
        near = 4 * ulp / width + 8 * bins * 2.0**-24 + 1e-4
        return cls(lo, hi, edges, near) if width > 0 and near <= 0.1 else None

    def count(self, x: np.ndarray, counts: np.ndarray) -> None:
        f = x - self.lo
        f *= self.scale
        edge = np.flatnonzero(np.abs(f - np.rint(f)) < self.near)
        np.maximum(f, 0, out=f)
        np.minimum(f, self.top, out=f)
        idx = f.astype(np.uint8)
        counts += np.bincount(idx, minlength=self.bins)
        if edge.size:  # values at an edge: numpy's own comparison decides
            exact = np.searchsorted(self.edges, x[edge], side="right") - 1
            exact = np.minimum(np.maximum(exact, 0), self.bins - 1)
            counts -= np.bincount(idx[edge], minlength=self.bins)
            counts += np.bincount(exact, minlength=self.bins)


def sparkline(counts: Sequence[int] | np.ndarray, cells: int = SPARK_CELLS) -> str:
    """Counts as Unicode blocks, ``cells`` wide (runs of bins summed): an empty cell is a
    no-break space (a table never wraps the line there); any count at all is at least
    the lowest block; the height is linear, the fullest cell a full block."""
    c = np.asarray(counts, dtype=np.int64)
    if c.size % cells:
        raise ValueError(f"{c.size} bins do not split into {cells} cells")
    sums = c.reshape(cells, -1).sum(axis=1)
    top = int(sums.max()) if sums.size else 0
    out = []
    for s in sums.tolist():
        if s == 0 or top == 0:
            out.append("\u00a0")
        else:
            out.append(SPARK_LEVELS[max(0, math.ceil(s * len(SPARK_LEVELS) / top) - 1)])
    return "".join(out)


def check_exact_side(exact_side: int) -> None:
    """Refuse a cap on exact spectra outside 0 (power iteration for every kernel) to
    EXACT_SIDE_MAX."""
    if isinstance(exact_side, bool) or not isinstance(exact_side, int):
        raise ParameterError(f"{{exact_side}} must be a whole number, not {exact_side!r}")
    if not 0 <= exact_side <= EXACT_SIDE_MAX:
        raise ParameterError(
            f"{{exact_side}} must be from 0 to {EXACT_SIDE_MAX} (a kernel's smaller side; "
            f"the exact spectrum costs side^3), not {exact_side}"
        )


def matrix_shape(shape: Sequence[int]) -> tuple[int, int] | None:
    """The 2-D matrix a kernel stands for: every axis but the last as rows (a conv
    kernel ``(kh, kw, in, out)`` is ``(kh*kw*in, out)``), None below two dimensions or
    for an empty one."""
    if len(shape) < 2 or 0 in shape:
        return None
    return math.prod(shape[:-1]), int(shape[-1])


@dataclass(frozen=True)
class SpectralFigures:
    """A 2-D kernel's spectral norm (largest singular value), stable rank
    (||W||_F^2 / ||W||_2^2) and effective rank (Roy and Vetterli 2007: exp of the entropy
    of the singular values normalised to sum 1), and how they were found."""

    rows: int
    cols: int
    spectral_norm: float
    stable_rank: float | None
    effective_rank: float | None
    method: str  # "exact" or "power iteration"

    def to_json(self) -> JSON:
        return {
            "matrix": [self.rows, self.cols],
            "spectral_norm": self.spectral_norm,
            "stable_rank": self.stable_rank,
            "effective_rank": self.effective_rank,
            "method": self.method,
        }


def spectral_from_singular(rows: int, cols: int, s: np.ndarray, method: str) -> SpectralFigures:
    s = np.sort(np.clip(np.asarray(s, dtype=np.float64), 0, None))[::-1]
    top = float(s[0]) if s.size else 0.0
    if top == 0:
        return SpectralFigures(rows, cols, 0.0, None, None, method)
    stable = float(np.sum(s * s) / (top * top))
    p = s / s.sum()
    p = p[p > 0]
    effective = float(np.exp(-np.sum(p * np.log(p))))
    return SpectralFigures(rows, cols, top, stable, effective, method)


class _Rows:
    """Blocks (C-order runs) regrouped into whole rows of ``cols`` elements."""

    def __init__(self, cols: int) -> None:
        self.cols = cols
        self.carry = np.empty(0, dtype=np.float64)

    def feed(self, block: np.ndarray) -> np.ndarray | None:
        flat = np.asarray(block).reshape(-1)
        if flat.dtype.kind != "f" or flat.dtype.itemsize < 4:
            flat = flat.astype(np.float32)
        if self.carry.size:
            flat = np.concatenate([self.carry.astype(flat.dtype), flat])
        whole = flat.size // self.cols * self.cols
        self.carry = flat[whole:].copy()
        if whole == 0:
            return None
        return flat[:whole].reshape(-1, self.cols)


def kernel_spectrum(
    w: np.ndarray, finite: bool = False, exact_side: int = EXACT_SIDE
) -> SpectralFigures | None:
    """A 2-D kernel's spectral figures from memory (None when it holds NaN/Inf;
    ``finite``: the caller knows it holds none), exact up to ``exact_side``."""
    rows, cols = w.shape
    if not finite and not np.isfinite(w).all():
        return None
    tall = rows >= cols
    side = cols if tall else rows
    if side > exact_side:
        # The sum of squares in float64, a chunk of rows at a time in one reused buffer;
        # the rounds of power iteration on the kernel as it is (float32 products, no
        # converted copy per round).
        step = max(1, GRAM_CHUNK // cols)
        buf = np.empty((min(step, rows), cols), dtype=np.float64)
        fro = 0.0
        for i in range(0, rows, step):
            part = buf[: min(step, rows - i)]
            np.copyto(part, w[i : i + step])
            fro += float(np.vdot(part, part))
        a = w if w.dtype in (np.float32, np.float64) else w.astype(np.float32)
        return power_spectral_norm(rows, cols, lambda: (a,), fro)
    gram = np.zeros((side, side), dtype=np.float64)
    step = max(1, GRAM_CHUNK // side)
    for i in range(0, rows if tall else cols, step):
        part = (w[i : i + step] if tall else w[:, i : i + step]).astype(np.float64)
        gram += part.T @ part if tall else part @ part.T
    eig = np.linalg.eigvalsh(gram)
    return spectral_from_singular(rows, cols, np.sqrt(np.clip(eig, 0, None)), "exact")


class Solver:
    """Spectral figures of in-memory kernels solved on ``workers`` helper threads while
    the caller reads on: numpy's BLAS and LAPACK calls release the GIL, and BLAS is held
    to one thread meanwhile (``threadpool_limits``, process-wide, undone by ``close``)
    so that the helpers, the caller's histograms and a BLAS pool do not fight over the
    two cores (measured: threads gain nothing while BLAS runs its own). At most ``pending``
    kernels wait at a time (each is a tensor the caller already holds), so memory stays
    bounded: the caller's kernel, one per helper and the pending ones. Results arrive
    through ``done(figures)``; ``close`` waits for them all.

    One helper and none pending by default: under the default cap the spectra cost less
    than the reading, and each more kernel held costs memory (ResNet50's page: 106 MiB
    with two helpers and one pending, 97 MiB so, in the same time). ``helpers`` says
    when a second one pays."""

    def __init__(self, workers: int = 1, pending: int = 0) -> None:
        import threading
        from concurrent.futures import ThreadPoolExecutor

        from threadpoolctl import threadpool_limits

        self._limits = threadpool_limits(1, user_api="blas")
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="weightcli-spectra")
        self._slots = threading.BoundedSemaphore(pending + workers)
        self._futures: list[Any] = []

    def submit(
        self,
        w: np.ndarray,
        done: Callable[[SpectralFigures | None], None],
        finite: bool = False,
        exact_side: int = EXACT_SIDE,
    ) -> None:
        """``kernel_spectrum(w, finite, exact_side)`` on a helper, its result to
        ``done``."""
        self._slots.acquire()

        def job() -> None:
            try:
                done(kernel_spectrum(w, finite, exact_side))
            finally:
                self._slots.release()

        from weightcli.stores.interrupts import signals_held

        with signals_held():  # a helper thread started here never takes SIGINT/SIGTERM
            self._futures.append(self._pool.submit(job))

    def close(self) -> None:
        try:
            self._pool.shutdown(wait=True)
            for f in self._futures:
                f.result()  # a helper's exception is the caller's
        finally:
            self._limits.restore_original_limits()


def helpers(exact_side: int) -> int:
    """Helper threads for spectra under this cap: two when exact spectra above the
    default cap dominate the time (ResNet50's page at 512: 0.70 s with one, 0.58 s with
    two), else one."""
    return 2 if exact_side > EXACT_SIDE else 1


def streamed_exact(rows: int, cols: int, exact_side: int = EXACT_SIDE) -> bool:
    """Whether a kernel too big to hold gets its exact figures from one streamed pass."""
    return cols <= exact_side and rows * cols * cols <= GRAM_FLOPS


class GramSpectrum:
    """Every singular value of a ``rows x cols`` matrix from one pass: G = W^T W summed
    over row blocks in float64 (at most GRAM_COLS^2 doubles, 32 MiB), then the square
    roots of G's eigenvalues. Non-finite matrices have no spectrum (None)."""

    def __init__(self, rows: int, cols: int) -> None:
        self.rows, self.cols = rows, cols
        self.gram = np.zeros((cols, cols), dtype=np.float64)
        self._rows = _Rows(cols)
        self.finite = True

    def update(self, block: np.ndarray) -> None:
        r = self._rows.feed(block)
        if r is None or not self.finite:
            return
        r64 = r.astype(np.float64)
        if not np.isfinite(r64).all():
            self.finite = False
            return
        self.gram += r64.T @ r64

    def result(self) -> SpectralFigures | None:
        if not self.finite:
            return None
        eig = np.linalg.eigvalsh(self.gram)
        return spectral_from_singular(self.rows, self.cols, np.sqrt(np.clip(eig, 0, None)), "exact")


def power_spectral_norm(
    rows: int,
    cols: int,
    passes: Callable[[], Iterable[np.ndarray]],
    frobenius_sq: float,
    iterations: int = POWER_ITERATIONS,
    seed: int = 0,
) -> SpectralFigures | None:
    """The largest singular value by power iteration on W^T W, one pass over the blocks
    (``passes()`` gives them anew) per iteration, from a seeded Gaussian start: each
    iterate's Rayleigh quotient is a lower bound (up to float32 rounding) that rises to
    the true value."""
    v = np.random.default_rng(seed).standard_normal(cols)
    v /= np.linalg.norm(v)
    sigma = 0.0
    for _ in range(iterations):
        z = np.zeros(cols, dtype=np.float64)
        rows_of = _Rows(cols)
        for block in passes():
            r = rows_of.feed(block)
            if r is None:
                continue
            # Float32 rows stay float32 (no converted copy); float64 where that overflows.
            with np.errstate(over="ignore", invalid="ignore"):
                part = r.T @ (r @ v.astype(r.dtype, copy=False))
            if r.dtype != np.float64 and not np.isfinite(part).all():
                r64 = r.astype(np.float64)
                part = r64.T @ (r64 @ v)
            z += part
        if not np.isfinite(z).all():
            return None
        norm = float(np.linalg.norm(z))
        sigma = math.sqrt(max(0.0, float(v @ z)))
        if norm == 0:
            break
        v = z / norm
    stable = frobenius_sq / (sigma * sigma) if sigma > 0 else None
    return SpectralFigures(rows, cols, sigma, stable, None, "power iteration")


# -- flags ------------------------------------------------------------------------------------

# A kernel whose largest |value| or spectral norm passes this is flagged as exploding.
EXPLODING = 1e3
# Peers: tensors of the same kind in layers of the same class (at least PEERS_MIN). A
# tensor is an outlier when its log10 RMS sits more than OUTLIER_Z robust z-scores
# (median and 1.4826 x MAD) from theirs and at least a factor of 10 away.
PEERS_MIN = 5
OUTLIER_Z = 4.0


@dataclass(frozen=True)
class Flag:
    """One thing a person should see first: ``kind`` (nan, inf, dead, exploding,
    outlier), the tensor, and a sentence."""

    kind: str
    tensor: str
    text: str

    def to_json(self) -> JSON:
        return {"kind": self.kind, "tensor": self.tensor, "text": self.text}


def peer_outliers(groups: dict[Any, list[tuple[str, float]]]) -> list[Flag]:
    """Tensors whose RMS sits far from their peers' (``groups``: peer key -> (name,
    RMS) pairs)."""
    flags = []
    for key, members in groups.items():
        named = [(n, r) for n, r in members if r > 0 and math.isfinite(r)]
        if len(named) < PEERS_MIN:
            continue
        logs = np.log10([r for _, r in named])
        med = float(np.median(logs))
        mad = 1.4826 * float(np.median(np.abs(logs - med)))
        for (name, rms), lg in zip(named, logs, strict=True):
            far = abs(lg - med)
            if far >= 1.0 and (mad == 0 or far / mad > OUTLIER_Z):
                flags.append(
                    Flag(
                        "outlier",
                        name,
                        f"RMS {rms:.3g} is {10**far:.0f}x {'above' if lg > med else 'below'} "
                        f"the median of its {len(named)} peers ({key[1]} of {key[0]} layers)",
                    )
                )
    return flags
