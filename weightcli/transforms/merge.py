"""Merge methods (pure numpy): how several versions of one tensor become one.

Each method is mergekit's (``mergekit/merge_methods/registry.py``, the table of
``GeneralizedTaskArithmeticMerge`` settings) or its paper's, as cited per method in
``METHODS``; the arithmetic is float64. The generalized task arithmetic
(``generalized_task_arithmetic.GTATask.execute``), for inputs x_i of a base b:

1. task vectors d_i = x_i - b, each sparsified by the method (``sparsify``);
2. weighted: w_i d_i;
3. with sign consensus (TIES's "sum" election, ``get_mask``): the elected sign of an
   element is +1 where sum_i w_i d_i >= 0, else -1, and only the w_i d_i of that sign
   are kept; mixed = sum of what is kept, divisor = sum of the kept ones' w_i (0 -> 1);
   without: mixed = sum_i w_i d_i, divisor = sum_i w_i (|.| < 1e-8 -> 1);
4. ``normalize``: mixed / divisor; then merged = b + lambda * mixed (``lambda`` 1 by
   default: mergekit's ``lambda`` of DELLA, weightcli's of task arithmetic for all).

Sparsification, per task vector and tensor:

- ``magnitude`` (TIES, Yadav et al. 2023, arXiv:2306.01708): keep the
  ``max(1, int(density n))`` largest |d| (mergekit's ``int(density * numel)``; at least
  one, where mergekit stops with an assertion);
- ``random`` (DARE, Yu et al. 2023, arXiv:2311.03099, "drop and rescale"): keep each
  element with probability ``density``, and with ``rescale`` divide what is kept by
  ``density`` (the paper's 1 / (1 - p));
- ``outliers`` (Model Breadcrumbs, Davari and Belilovsky 2023, arXiv:2312.06795;
  mergekit's ``magnitude_outliers``): drop the ``int(gamma n)`` largest |d| and the
  smallest, keeping ``int(density n)``;
- ``della`` (DELLA-Merging's MAGPRUNE, Deep et al. 2024, arXiv:2406.11617; mergekit's
  ``della_magprune``): within each row, an element of rank r (1 = smallest |d|) of L is
  kept with probability p = density - epsilon + 2 epsilon (r - 1) / (L - 1), and with
  ``rescale`` divided by p (the paper's rescaling). A row is the tensor's last axis as
  stored (Keras's ``[in, out]``: one input's weights to every unit; mergekit's PyTorch
  row ``[out, in]`` is one unit's inputs); a 1-D tensor is one row.

Ranks by |d| break ties in storage order (the earlier element is the smaller), so a
tensor streamed in blocks gets exactly what a stable sort of the whole gives
(``Window``). Random draws are counter-based (Philox, keyed by seed, tensor and input;
element j uses the 32-bit half j % 2 of word j // 2), so a block draws the same numbers
whatever the split (``uniform32``): ``keep`` where u32 < p 2^32.

Two methods are not task arithmetic:

- ``slerp`` (mergekit's ``slerp.py``, from a gist by dvschultz): spherical interpolation
  of the whole tensor from v0 (t = 0) to v1 (t = 1); the angle from the normalised
  tensors' dot product; |dot| > 0.9995 (near parallel) falls back to linear.
- ``model_stock`` (Jang et al. 2024, arXiv:2403.19522; mergekit's ``model_stock.py``):
  with N >= 2 fine-tunes of a base, cos = the mean over pairs of the cosine between their
  task vectors (each norm product clamped at 1e-6, each cosine to [-1, 1]),
  t = N cos / (1 + (N - 1) cos), merged = t mean(x_i) + (1 - t) b.
"""

from __future__ import annotations

import hashlib
import math
import sys
from dataclasses import dataclass

import numpy as np

from weightcli.transforms.prune import AbsKth, Ties, abs_bits

WIDE = np.dtype(np.float64)
SLERP_DOT_THRESHOLD = 0.9995
SLERP_EPS = 1e-8


@dataclass(frozen=True)
class Method:
    """One merge method: what it needs and how task arithmetic is configured for it."""

    name: str
    kind: str  # "linear" (mean, ema), "gta" (task arithmetic family), "slerp", "stock"
    reference: str
    base: bool = False  # needs a base model
    sparsify: str | None = None  # magnitude, random, outliers, della
    consensus: bool = False
    normalize: bool = False  # the default of parameter ``normalize``
    rescale: bool = False  # the default of parameter ``rescale``
    # Parameters an input may carry per tensor (in a merge file), and global ones.
    per_input: tuple[str, ...] = ()
    general: tuple[str, ...] = ()

    @property
    def random(self) -> bool:
        return self.sparsify in ("random", "della")


_GTA_GENERAL = ("lambda", "normalize")
METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "mean",
            "linear",
            "a weighted average (model soup, Wortsman et al. 2022, arXiv:2203.05482)",
            per_input=("weight",),
        ),
        Method(
            "ema",
            "linear",
            "an exponential moving average over checkpoints, oldest first",
            general=("decay",),
        ),
        Method(
            "task-arithmetic",
            "gta",
            "Ilharco et al. 2022, arXiv:2212.04089",
            base=True,
            per_input=("weight",),
            general=_GTA_GENERAL,
        ),
        Method(
            "ties",
            "gta",
            "Yadav et al. 2023, arXiv:2306.01708",
            base=True,
            sparsify="magnitude",
            consensus=True,
            normalize=True,
            per_input=("weight", "density"),
            general=_GTA_GENERAL,
        ),
        Method(
            "dare-linear",
            "gta",
            "Yu et al. 2023, arXiv:2311.03099",
            base=True,
            sparsify="random",
            rescale=True,
            per_input=("weight", "density"),
            general=(*_GTA_GENERAL, "rescale", "seed"),
        ),
        Method(
            "dare-ties",
            "gta",
            "Yu et al. 2023, arXiv:2311.03099",
            base=True,
            sparsify="random",
            consensus=True,
            rescale=True,
            per_input=("weight", "density"),
            general=(*_GTA_GENERAL, "rescale", "seed"),
        ),
        Method(
            "breadcrumbs",
            "gta",
            "Davari and Belilovsky 2023, arXiv:2312.06795",
            base=True,
            sparsify="outliers",
            per_input=("weight", "density", "gamma"),
            general=_GTA_GENERAL,
        ),
        Method(
            "breadcrumbs-ties",
            "gta",
            "Davari and Belilovsky 2023, arXiv:2312.06795",
            base=True,
            sparsify="outliers",
            consensus=True,
            per_input=("weight", "density", "gamma"),
            general=_GTA_GENERAL,
        ),
        Method(
            "della",
            "gta",
            "Deep et al. 2024, arXiv:2406.11617",
            base=True,
            sparsify="della",
            consensus=True,
            normalize=True,
            rescale=True,
            per_input=("weight", "density", "epsilon"),
            general=(*_GTA_GENERAL, "rescale", "seed"),
        ),
        Method(
            "della-linear",
            "gta",
            "Deep et al. 2024, arXiv:2406.11617",
            base=True,
            sparsify="della",
            rescale=True,
            per_input=("weight", "density", "epsilon"),
            general=(*_GTA_GENERAL, "rescale", "seed"),
        ),
        Method("slerp", "slerp", "spherical interpolation (mergekit's slerp.py)", general=("t",)),
        Method("model-stock", "stock", "Jang et al. 2024, arXiv:2403.19522", base=True),
    )
}
# Defaults of the per-tensor parameters (mergekit's ``tensor_parameters``).
DEFAULTS = {"weight": 1.0, "density": 1.0, "gamma": 0.01, "epsilon": 0.15, "lambda": 1.0}


def method_named(name: str) -> Method | None:
    """The method called ``name``, spelt with ``-`` or mergekit's ``_``."""
    return METHODS.get(name.replace("_", "-"))


# -- sparsification --------------------------------------------------------------------


def keep_count(n: int, density: float) -> int:
    """How many of ``n`` a magnitude selection keeps: mergekit's int(density n), at least 1."""
    return n if density >= 1 else max(1, int(density * n))


def outlier_window(n: int, density: float, gamma: float) -> tuple[int, int]:
    """Breadcrumbs' ranks kept, [lo, hi) of |d| ascending (mergekit's ``magnitude_outliers``:
    n_top = int(gamma n) dropped from the top, n_bot from the bottom to keep int(density n))."""
    if density >= 1:
        return 0, n
    target, top = int(density * n), int(gamma * n)
    bottom = n - target - top
    if bottom < 0:
        top += bottom
        bottom = 0
    return bottom, n - top


class Window:
    """Keep the elements of ranks [lo, hi) of |x| ascending (ties: storage order) of a
    tensor of ``n`` elements streamed in blocks, exactly: the radix select of
    ``prune.AbsKth`` for both ends (passes of ``observe`` then ``end_pass`` until False),
    then ``keep(first, block)`` for any split of the tensor."""

    def __init__(self, n: int, lo: int, hi: int) -> None:
        self.n, self.lo, self.hi = n, lo, hi
        self.low = AbsKth(lo, WIDE) if lo > 0 else None  # the value of rank lo - 1
        self.high = AbsKth(hi, WIDE) if 0 < hi < n else None  # the value of rank hi - 1
        self.empty = hi <= lo
        self.census: list[tuple[str, Ties]] | None = None
        self.low_bits = self.high_bits = 0
        self.low_limit = -1  # flat index of the last tie at low_bits dropped
        self.high_limit = n  # flat index of the last tie at high_bits kept
        self.done = self.empty or (self.low is None and self.high is None)

    def observe(self, first: int, block: np.ndarray) -> None:
        if self.census is not None:
            for _, ties in self.census:
                ties.observe(first, block)
            return
        for s in (self.low, self.high):
            if s is not None and not s.done:
                s.observe(block)

    def end_pass(self) -> bool:
        """False when the window is known."""
        if self.done:
            return False
        if self.census is not None:  # the census of ties just ended
            for which, ties in self.census:
                if which == "low":
                    self.low_limit = ties.limit
                else:
                    self.high_limit = ties.limit
            self.done = True
            return False
        more = [s.end_pass() for s in (self.low, self.high) if s is not None and not s.done]
        if any(more):
            return True
        census: list[tuple[str, Ties]] = []
        if self.low is not None:
            self.low_bits = self.low.bits
            if self.low.all_ties:  # every tie at the low end is dropped
                self.low_limit = self.n
            else:
                census.append(("low", Ties(self.lo - self.low.below, self.low.bits, WIDE)))
        if self.high is not None:
            self.high_bits = self.high.bits
            inside = self.hi - self.high.below  # the ties at the top value still kept
            if inside < self.high.equal:
                census.append(("high", Ties(inside, self.high.bits, WIDE)))
        if not census:
            self.done = True
            return False
        self.census = census
        return True

    def keep(self, first: int, block: np.ndarray) -> np.ndarray:
        """A boolean mask of ``block`` (flat elements from ``first``): kept or not."""
        a = abs_bits(block, WIDE).reshape(np.shape(block))
        if self.empty:
            return np.zeros(a.shape, bool)
        keep = np.ones(a.shape, bool)
        if self.low is not None:
            t = np.array(self.low_bits, a.dtype)
            keep &= a >= t
            if self.low_limit >= first:
                at = np.flatnonzero(a == t)
                keep.reshape(-1)[at[at + first <= self.low_limit]] = False
        if self.high is not None:
            t = np.array(self.high_bits, a.dtype)
            keep &= a <= t
            at = np.flatnonzero(a == t)
            keep.reshape(-1)[at[at + first > self.high_limit]] = False
        return keep


def stream_key(seed: int, tensor: str, input_no: int) -> int:
    """The Philox key of one input's draws for one tensor (128 bits of BLAKE2b)."""
    h = hashlib.blake2b(f"{seed}\0{tensor}\0{input_no}".encode(), digest_size=16)
    return int.from_bytes(h.digest(), "little")


def uniform32(key: int, first: int, n: int) -> np.ndarray:
    """Elements ``first .. first + n`` of the stream: uint32, element j from word j // 2
    (low half for even j). Philox makes four words per counter step."""
    if n == 0:
        return np.zeros(0, np.uint32)
    w0, w1 = first // 2, (first + n - 1) // 2 + 1
    bg = np.random.Philox(key=key, counter=w0 // 4)
    raw = bg.random_raw(w0 % 4 + (w1 - w0))[w0 % 4 :]
    halves = raw.view(np.uint32)  # little-endian: each word's low half first
    if sys.byteorder == "big":  # pragma: no cover - no big-endian machine here
        halves = halves.reshape(-1, 2)[:, ::-1].ravel()
    start = first - 2 * w0
    return halves[start : start + n]


def below(p: np.ndarray | float) -> np.ndarray:
    """The bound of a probability: u32 < bound happens with probability p."""
    return np.asarray(np.clip(np.floor(np.asarray(p, np.float64) * 2.0**32), 0, 2.0**32))


def random_keep(key: int, first: int, block: np.ndarray, p: np.ndarray | float) -> np.ndarray:
    """DARE's Bernoulli(p) mask of ``block`` (p a scalar or per element)."""
    u = uniform32(key, first, block.size).reshape(block.shape)
    if np.ndim(p):
        return np.asarray(u < below(p))
    bound = int(below(p))
    if bound >= 1 << 32:
        return np.ones(block.shape, bool)
    return np.asarray(u < np.uint32(bound))


def della_probs(d: np.ndarray, density: float, epsilon: float) -> np.ndarray:
    """MAGPRUNE's keep probability of each element of ``d`` (rows: the last axis, whole)."""
    rows = d.reshape(-1, d.shape[-1]) if d.ndim else d.reshape(1, 1)
    length = rows.shape[-1]
    order = np.argsort(np.abs(rows), axis=-1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(length)[None, :].repeat(rows.shape[0], 0), axis=-1)
    norm = ranks / (length - 1) if length > 1 else np.zeros(rows.shape)
    return ((density - epsilon) + norm * 2 * epsilon).reshape(d.shape)


# -- combination -----------------------------------------------------------------------


def combine(
    deltas: list[np.ndarray],
    weights: list[float],
    consensus: bool,
    normalize: bool,
    rescales: list[float] | None = None,
) -> tuple[np.ndarray, int]:
    """Steps 2-4 of the generalized task arithmetic (without lambda): the mixed delta of
    sparsified task vectors (float64 arrays of one shape, scaled in place by their
    weights, and by ``rescales``: DARE's 1 / density, folded in here to save a pass),
    and with consensus the count of elements on which every nonzero weighted delta has
    the elected sign."""
    weighted = []
    for i, (w, d) in enumerate(zip(weights, deltas, strict=True)):
        factor = w * (rescales[i] if rescales else 1.0)
        if factor != 1.0:
            d *= factor
        weighted.append(d)
    total = weighted[0].copy()
    for wd in weighted[1:]:
        total += wd
    agreeing = 0
    if consensus:
        # sum >= 0 elects +1 (mergekit's get_mask). copysign gives -1 for a sum of -0.0,
        # which only sums of zeros make: nothing agrees with either sign there.
        elected = np.copysign(1.0, total)
        # |kept| summed: max(w d elected, 0) is the magnitude of an agreeing value and 0
        # for the others (multiplying by +-1 is exact: the same sums as masking).
        kept = np.zeros_like(total)
        divisor = np.zeros_like(total) if normalize else None
        every = np.ones(total.shape, bool)
        tmp = np.empty_like(total)
        for w, wd in zip(weights, weighted, strict=True):
            np.multiply(wd, elected, out=tmp)
            every &= tmp >= 0  # this input agrees, or is 0 here
            if divisor is not None:
                divisor += w * (tmp > 0)
            np.maximum(tmp, 0.0, out=tmp)
            kept += tmp
        mixed = kept
        mixed *= elected
        agreeing = int(np.count_nonzero(every))
        if divisor is not None:
            divisor[divisor == 0] = 1.0
            mixed /= divisor
        return mixed, agreeing
    if normalize:
        div = float(sum(weights))
        total /= 1.0 if abs(div) < 1e-8 else div
    return total, agreeing


def slerp_coefficients(t: float, dot: float, norm0: float, norm1: float) -> tuple[float, float]:
    """(s0, s1) of merged = s0 v0 + s1 v1, from the whole tensors' dot product and norms
    (mergekit's ``slerp``: each tensor normalised when its norm exceeds 1e-8)."""
    n0 = norm0 if norm0 > SLERP_EPS else 1.0
    n1 = norm1 if norm1 > SLERP_EPS else 1.0
    cos = dot / (n0 * n1)
    if abs(cos) > SLERP_DOT_THRESHOLD or not math.isfinite(cos):
        return 1 - t, t
    theta0 = math.acos(cos)
    sin0 = math.sin(theta0)
    return math.sin(theta0 - theta0 * t) / sin0, math.sin(theta0 * t) / sin0


def stock_ratio(dots: np.ndarray) -> float:
    """Model stock's t from the Gram matrix of the N task vectors of one tensor."""
    n = dots.shape[0]
    norms = np.sqrt(np.maximum(np.diag(dots), 0.0))
    cosines = [
        float(np.clip(dots[i, j] / max(norms[i] * norms[j], 1e-6), -1.0, 1.0))
        for i in range(n)
        for j in range(i + 1, n)
    ]
    cos = sum(cosines) / len(cosines)
    return n * cos / (1 + (n - 1) * cos)


__all__ = [
    "DEFAULTS",
    "METHODS",
    "Method",
    "Window",
    "combine",
    "della_probs",
    "keep_count",
    "method_named",
    "outlier_window",
    "random_keep",
    "slerp_coefficients",
    "stock_ratio",
    "stream_key",
    "uniform32",
]
