"""Magnitude pruning (pure numpy): the exact k-th smallest |x| of values streamed in
blocks, in bounded memory, and N:M structured sparsity.

``AbsKth`` is a radix select on bit patterns: a float's |x| read as an unsigned integer
of its width orders as |x| does (IEEE 754: sign bit cleared, then exponent, then
mantissa). Each pass counts the next 16 bits of the values whose higher bits match what
is known so far (a 65,536-bin histogram), so a float32 tensor takes two passes, a
float16/bfloat16 one, a float64 four, and the answer is exact (no interpolation), with
the count of values strictly below it: the ties at the threshold can then be zeroed in
storage order, first ones first, to reach exactly ``k`` zeros (``Ties``).

How many: as TensorFlow Model Optimization counts it (``pruning_impl._update_mask``),
``keep = round(n * (1 - sparsity))`` (half to even), the rest zeroed.

N:M (``--pattern``): N zeros in every M consecutive weights along a kernel's input axis
(axis -2: Dense ``[in, out]``, Conv ``[k..., in, out]``), as TFMOT's
``pruning_utils.generate_m_by_n_mask`` makes them (``m_by_n=(2, 4)``: "2 zeros out of 4
consecutive elements", the input channel being the last axis of TFLite's layout); a
last group shorter than M keeps up to M - N of its values, as TFMOT's zero padding does.
Ties: the earlier weight is zeroed first (a stable sort).
"""

from __future__ import annotations

import sys

import numpy as np

from weightcli import native
from weightcli.errors import UsageError

BINS = 1 << 16
UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}
LITTLE = sys.byteorder == "little"


def to_zero(n: int, sparsity: float) -> int:
    """Elements zeroed to reach ``sparsity`` of ``n``, as TFMOT counts (keep = round(n
    * (1 - sparsity)), half to even)."""
    return n - int(np.round(n * (1.0 - sparsity)))


def abs_bits(block: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """|x| as unsigned integers that order as |x| does (``dtype``: the float type whose
    bit width is used; values are converted to it first, exactly when it is wider)."""
    x = np.asarray(block)
    if x.dtype != dtype:
        x = x.astype(dtype)
    u = x.reshape(-1).view(UINT[dtype.itemsize])
    return u & np.array((1 << (8 * dtype.itemsize - 1)) - 1, dtype=u.dtype)


NAN_REFUSED = "NaN in a tensor to prune: repair it first (clip --nonfinite zero)"


class AbsKth:
    """The ``k``-th smallest |x| (1-based) over blocks streamed in passes, exactly.

    Call ``observe`` with every block of a pass, then ``end_pass``: True when another
    pass is needed. Then ``bits`` is the threshold's bit pattern (``value`` its float)
    and ``below`` how many values are strictly smaller."""

    def __init__(self, k: int, dtype: np.dtype, size: int | None = None) -> None:
        self.k = k
        # float32 values, ``size`` of them in all: the first block's own k-th value
        # guesses the bin the threshold falls in, and the first pass also counts the low
        # halves of that bin and its two neighbours (``native.abs_hist_f32``'s window):
        # when the guess holds, the second pass is not needed.
        self.size = size
        self.guess: int | None = None
        self.window: np.ndarray | None = None
        self._seen = False  # a block observed already (only the first one guesses)
        self.dtype = np.dtype(dtype)
        self.width = 8 * self.dtype.itemsize
        self.shift = self.width - 16  # the bits this pass counts: [shift, shift + 16)
        self.prefix = 0  # the bits above them, known
        self.below = 0
        self.hist = np.zeros(BINS, np.int64)
        self.equal = 0
        self.done = False

    @property
    def all_ties(self) -> bool:
        """Every value equal to the threshold is zeroed (no census of ties needed)."""
        return self.done and self.k - self.below == self.equal

    def observe(self, block: np.ndarray) -> None:
        x = np.asarray(block)
        if self.dtype == np.float32 and x.dtype == np.float32 and LITTLE and x.size:
            self._observe_float32(x)
            return
        self._seen = True
        self.window = None  # (counted without the window: no shortcut)
        a = abs_bits(block, self.dtype)
        if self.shift == self.width - 16 and np.isnan(np.asarray(block, dtype=self.dtype)).any():
            raise UsageError(NAN_REFUSED)
        top = self.shift + 16
        if top < self.width:
            a = a[(a >> np.array(top, a.dtype)) == self.prefix]
        digits = (a >> np.array(self.shift, a.dtype)) & np.array(0xFFFF, a.dtype)
        self.hist += np.bincount(digits.astype(np.int64), minlength=BINS)

    def _observe_float32(self, x: np.ndarray) -> None:
        """``observe`` of float32 values without making |x|'s bit patterns: the two
        16-bit halves of each value read in place (little-endian: the high half second),
        the sign bit masked off the high one. The same counts as the general path."""
        first = self.shift == 16
        if first and self.size and not self._seen and native.kernels is not None:
            self._guess(x)
        self._seen = True
        if first and self.window is not None and self.guess is not None:
            nan = native.abs_hist_f32(x, self.hist, None, self.window, self.guess)
        else:
            nan = native.abs_hist_f32(x, self.hist, None if first else self.prefix)
        if nan is not None:  # the native kernel counted the block
            if nan:
                raise UsageError(NAN_REFUSED)
            return
        self.window = None  # (a block counted below, without the window: no shortcut)
        halves = np.ascontiguousarray(x).reshape(-1).view(np.uint16)
        high, low = halves[1::2], halves[0::2]
        top = np.bitwise_and(high, np.uint16(0x7FFF))
        if self.shift == 16:  # the first pass: the high halves of |x|
            if int(top.max()) >= 0x7F80 and np.isnan(x).any():  # exponent all ones
                raise UsageError(NAN_REFUSED)
            self.hist += np.bincount(top, minlength=BINS)
        else:  # the second: the low halves of the values in the chosen bin
            self.hist += np.bincount(low[top == self.prefix], minlength=BINS)

    def _guess(self, x: np.ndarray) -> None:
        """The bin of the first block's own value of rank k (scaled to its size), and the
        window of bins the first pass counts the low halves of: it and its neighbours."""
        assert self.size
        h = np.zeros(BINS, np.int64)
        if native.abs_hist_f32(x, h, None) is None:
            return
        rank = max(1, min(x.size, -(-self.k * x.size // self.size)))
        bin_ = int(np.searchsorted(np.cumsum(h), rank, side="left"))
        self.guess = min(max(0, bin_ - 1), 0x7FFF - 2)
        self.window = np.zeros((3, BINS), np.int64)

    def end_pass(self) -> bool:
        cum = np.cumsum(self.hist)
        need = self.k - self.below
        i = int(np.searchsorted(cum, need, side="left"))  # the first bin reaching ``need``
        self.below += int(cum[i - 1]) if i > 0 else 0
        self.prefix = (self.prefix << 16) | i
        self.equal = int(self.hist[i])  # at the last pass: the values equal to the answer
        self.hist[:] = 0
        if self.shift == 0:
            self.done = True
            return False
        self.shift -= 16
        window, self.window = self.window, None
        if window is not None and self.guess is not None and 0 <= i - self.guess < 3:
            self.hist[:] = window[i - self.guess]  # the second pass's counts, already made
            return self.end_pass()
        return True

    @property
    def bits(self) -> int:
        assert self.done
        return self.prefix

    @property
    def value(self) -> float:
        raw = np.array(self.bits, UINT[self.dtype.itemsize])
        return float(raw.view(self.dtype))


class Ties:
    """Which values equal to the threshold are zeroed: the first ``count`` of a tensor
    in storage (C) order. ``observe`` the tensor's blocks in order (any split: a block
    is one run of elements from ``first``); then ``limit`` is the flat index of the last
    one zeroed (-1: none), which any later split of the tensor can apply."""

    def __init__(self, count: int, bits: int, dtype: np.dtype) -> None:
        self.left = count
        self.bits = bits
        self.dtype = dtype
        self.limit = -1

    def observe(self, first: int, block: np.ndarray) -> None:
        if self.left <= 0:
            return
        at = np.flatnonzero(abs_bits(block, self.dtype) == self.bits)[: self.left]
        if at.size:
            self.limit = first + int(at[-1])
            self.left -= int(at.size)


def prune_block(
    block: np.ndarray, dtype: np.dtype, bits: int, first: int, limit: int
) -> tuple[np.ndarray, int]:
    """``block`` (elements from flat index ``first``) with every |x| below the threshold
    ``bits`` zeroed, and the values equal to it up to flat index ``limit``; values
    already zero are left as they are (their sign too). The pruned block and how many
    values it zeroed."""
    a = abs_bits(block, dtype).reshape(np.shape(block))
    threshold = np.array(bits, a.dtype)
    mask = a < threshold
    if limit >= first:
        at = np.flatnonzero(a == threshold)
        mask.reshape(-1)[at[at + first <= limit]] = True
    mask &= a != 0
    zeroed = int(np.count_nonzero(mask))
    if not zeroed:
        return block, 0
    # Zeroed by multiplying the bit patterns by "keep" (numpy's masked assignment and
    # ``where`` take several times as long): a kept value keeps every bit, its sign too.
    x = np.ascontiguousarray(block)
    raw = x.reshape(-1).view(UINT[x.dtype.itemsize])
    out = np.multiply(raw, ~mask.reshape(-1), dtype=raw.dtype)
    return out.view(x.dtype).reshape(x.shape), zeroed


def nm_block(block: np.ndarray, n: int, m: int) -> np.ndarray:
    """N:M along axis -2 of ``block``, whose rows start at a multiple of M (the groups
    are whole, but for a last group shorter than M at the axis's end)."""
    x = np.moveaxis(np.asarray(block), -2, -1)  # groups along the last axis now
    y = np.array(x, copy=True)
    rows = y.shape[-1]
    full = rows // m * m
    if full:
        g = y[..., :full].reshape(*y.shape[:-1], full // m, m)
        order = np.argsort(np.abs(g.astype(np.float64)), axis=-1, kind="stable")[..., :n]
        np.put_along_axis(g, order, 0, axis=-1)
        y[..., :full] = g.reshape(*y.shape[:-1], full)
    tail = rows - full
    zero = max(0, tail - (m - n))
    if zero:
        t = y[..., full:]
        order = np.argsort(np.abs(t.astype(np.float64)), axis=-1, kind="stable")[..., :zero]
        np.put_along_axis(t, order, 0, axis=-1)
        y[..., full:] = t
    return np.moveaxis(y, -1, -2)
