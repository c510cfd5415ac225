"""Property tests of the pure transforms (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from weightcli.stats import RunningStats
from weightcli.stores.base import split
from weightcli.transforms import clip as clipmod
from weightcli.transforms import quantize as qmod
from weightcli.transforms.scale import scale

finite32 = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32)
tensors = arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(1, 5)), elements=finite32)
any32 = arrays(
    np.float32,
    st.integers(1, 40),
    elements=st.floats(allow_nan=True, allow_infinity=True, width=32),
)


@given(tensors)
def test_scale_by_one_is_identity(x: np.ndarray) -> None:
    np.testing.assert_array_equal(scale(x, 1.0), x)
    assert scale(x, 1.0).dtype == x.dtype


@given(tensors, st.floats(-100, 100, allow_nan=False))
def test_scale_matches_numpy(x: np.ndarray, f: float) -> None:
    np.testing.assert_array_equal(scale(x, f), x * np.float32(f))


@given(any32, st.floats(-10, 0), st.floats(0, 10), st.sampled_from(["zero", "clip"]))
def test_clip_bounded_and_idempotent(x: np.ndarray, lo: float, hi: float, mode: str) -> None:
    y, _, repaired = clipmod.clip(x, lo, hi, mode)
    assert np.isfinite(y).all()
    assert (y >= np.float32(lo)).all() and (y <= np.float32(hi)).all()
    assert repaired == int((~np.isfinite(x)).sum())
    z, clipped, rep2 = clipmod.clip(y, lo, hi, mode)
    np.testing.assert_array_equal(z, y)
    assert clipped == 0 and rep2 == 0


@given(any32, st.sampled_from([(-1.0, 1.0), (None, 0.5), (-0.5, None)]))
def test_clip_keep_is_np_clip(x: np.ndarray, bounds: tuple[float | None, float | None]) -> None:
    """With NaN kept, clipping is numpy's (and tf.clip_by_value's): +-Inf go to the bounds,
    NaN stays NaN; a side without a bound keeps its infinity."""
    lo, hi = bounds
    y, clipped, repaired = clipmod.clip(x, lo, hi, "keep")
    want = np.clip(x, lo, hi)
    np.testing.assert_array_equal(y, want)
    assert clipped == int(np.count_nonzero((y != x) & ~np.isnan(x))) and repaired == 0


@settings(max_examples=200, deadline=None)
@given(tensors, st.integers(2, 16), st.sampled_from(qmod.SCHEMES), st.sampled_from([None, 0, 1]))
def test_quantization_error_at_most_half_step_and_stable(
    x: np.ndarray, bits: int, scheme: str, axis
) -> None:
    lo, hi = qmod.reduce_minmax(x, axis)
    s, z = qmod.params(lo, hi, bits, scheme)
    shape = () if axis is None else qmod.channel_shape(x.ndim, axis)
    s, z = s.reshape(shape), z.reshape(shape)
    y = qmod.fake_quantize(x, s, z, bits, scheme)
    assert y.dtype == x.dtype
    err = np.abs(y.astype(np.float64) - x.astype(np.float64))
    # Half a step, plus float32 rounding of the dequantized value.
    bound = np.broadcast_to(s / 2, x.shape) + np.abs(x.astype(np.float64)) * 2e-7 + 1e-30
    assert (err <= bound * (1 + 1e-6)).all()
    # Quantize-dequantize is stable: doing it again with the same grid changes nothing
    # beyond float32 rounding.
    y2 = qmod.fake_quantize(y, s, z, bits, scheme)
    np.testing.assert_allclose(y2, y, rtol=0, atol=float(np.max(s)) * 1e-3 + 1e-30)


@given(st.integers(2, 16))
def test_symmetric_range(bits: int) -> None:
    lo, hi = qmod.qrange(bits, "symmetric")
    assert lo == -hi and hi == 2 ** (bits - 1) - 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 7), min_size=0, max_size=5), st.integers(1, 60))
def test_blocks_cover_the_tensor_in_order(shape: list[int], budget: int) -> None:
    """Every element once, in C order; each block a contiguous run within the budget."""
    dims = tuple(shape)
    x = np.arange(int(np.prod(dims)), dtype=np.int64).reshape(dims)
    blocks = list(split(dims, budget))
    seen = []
    for b in blocks:
        part = x[b.index] if dims else x
        assert part.shape == b.shape and part.size == b.size
        flat = part.reshape(-1)
        if flat.size:
            assert flat[0] == b.first
            np.testing.assert_array_equal(flat, np.arange(b.first, b.first + flat.size))
        assert b.size <= budget or b.size == 0 or not dims
        seen.append(flat)
    np.testing.assert_array_equal(np.concatenate(seen) if seen else [], x.reshape(-1))


@settings(max_examples=200, deadline=None)
@given(
    arrays(
        np.float32,
        st.tuples(st.integers(1, 6), st.integers(1, 5)),
        elements=st.floats(allow_nan=True, allow_infinity=True, width=32),
    ),
    st.integers(2, 16),
    st.sampled_from(qmod.SCHEMES),
    st.sampled_from([None, 0, 1]),
)
def test_fake_quantize_equals_the_plain_formula(
    x: np.ndarray, bits: int, scheme: str, axis
) -> None:
    """The in-place implementation gives exactly what the textbook formula gives."""
    lo, hi = qmod.reduce_minmax(x, axis)
    s, z = qmod.params(
        np.where(np.isfinite(lo), lo, 0), np.where(np.isfinite(hi), hi, 0), bits, scheme
    )
    shape = () if axis is None else qmod.channel_shape(x.ndim, axis)
    s, z = s.reshape(shape), z.reshape(shape)
    qmin, qmax = qmod.qrange(bits, scheme)
    wide = x.astype(np.float64)
    v = wide / s
    rounded = np.sign(v) * np.floor(np.abs(v) + 0.5)  # ties away from zero (TFLite)
    want = ((np.clip(rounded + z, qmin, qmax) - z) * s).astype(np.float32)
    got = qmod.fake_quantize(x, s, z, bits, scheme)
    np.testing.assert_array_equal(got, want)  # NaN positions included


@settings(max_examples=200, deadline=None)
@given(any32, st.sampled_from([1, 7, 256, 65536]))
def test_abs_histogram_within_one_bin_of_numpy(x: np.ndarray, bins: int) -> None:
    """Each element lands in numpy's bin or a neighbour, never further; none is lost."""
    finite = np.abs(x[np.isfinite(x)].astype(np.float64))
    top = float(finite.max()) if finite.size else 0.0
    ours = clipmod.abs_histogram(x, top, bins)
    assert ours.sum() == finite.size and len(ours) == bins
    if top == 0:
        assert ours[0] == finite.size
        return
    want, _ = np.histogram(finite, bins=bins, range=(0.0, top))
    a, b = np.cumsum(ours), np.cumsum(want)
    assert (a[1:] >= b[:-1]).all() and (b[1:] >= a[:-1]).all()


@settings(max_examples=200, deadline=None)
@given(any32, any32)
def test_merged_statistics_equal_statistics_of_both(a: np.ndarray, b: np.ndarray) -> None:
    one, left, right = RunningStats(), RunningStats(), RunningStats()
    one.update(a)
    one.update(b)
    left.update(a)
    right.update(b)
    left.merge(right)
    x, y = one.result(), left.result()
    assert (x.count, x.zeros, x.nan, x.inf, x.min, x.max, x.abs_max) == (
        y.count,
        y.zeros,
        y.nan,
        y.inf,
        y.min,
        y.max,
        y.abs_max,
    )
    if x.mean is None:
        assert y.mean is None
    else:
        assert y.mean == pytest.approx(x.mean, rel=1e-9, abs=1e-12)
        assert y.std == pytest.approx(x.std, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("magnitude", [1e-30, 1e-17, 1e20, 3e37])
def test_statistics_of_extreme_magnitudes(magnitude: float) -> None:
    """Sums of squares that float32 cannot hold are taken in float64: no inf, no zero std."""
    x = (np.random.default_rng(0).normal(size=300_000) * magnitude).astype(np.float32)
    acc = RunningStats()
    acc.update(x)
    st = acc.result()
    wide = x.astype(np.float64)
    assert st.mean == pytest.approx(wide.mean(), rel=1e-6, abs=magnitude * 1e-6)
    assert st.std == pytest.approx(wide.std(), rel=1e-6)
