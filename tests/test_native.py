"""The native kernels (weightcli/_native.c) against the numpy path they replace, and
against numpy itself: the same bytes where bytes are written, the same counts, and
moments within float rounding."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weightcli import native, pipeline
from weightcli.stats import RunningStats
from weightcli.transforms import quantize as qmod


def test_the_kernels_were_built() -> None:
    """make install compiles them (gcc is on every machine this project runs CI on): a
    build that silently fell back to numpy would make every test below vacuous."""
    assert native.kernels is not None, "weightcli._native was not built"


def numpy_path(fn, *args):
    """``fn(*args)`` with the kernels switched off."""
    saved = native.kernels
    native.kernels = None
    try:
        return fn(*args)
    finally:
        native.kernels = saved


def _blocks(draw_seed: int, n: int, kind: str) -> np.ndarray:
    rng = np.random.default_rng(draw_seed)
    if kind == "normal":
        x = rng.standard_normal(n)
    elif kind == "offset":  # the mean dominates: the deviations pass
        x = 1000.0 + rng.standard_normal(n) * 1e-3
    elif kind == "tiny":  # squares underflow float32: the float64 sums
        x = rng.standard_normal(n) * 1e-30
    elif kind == "huge":  # squares overflow float32
        x = rng.standard_normal(n) * 1e30
    elif kind == "zeros":
        x = rng.standard_normal(n) * (rng.random(n) < 0.5)
    else:  # ties and repeated values
        x = rng.integers(-3, 4, n).astype(np.float64)
    return x.astype(np.float32)


KINDS = ["normal", "offset", "tiny", "huge", "zeros", "ties"]


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 5000), seed=st.integers(0, 2**32 - 1), kind=st.sampled_from(KINDS))
def test_stats_kernel_matches_numpy(n: int, seed: int, kind: str) -> None:
    x = _blocks(seed, n, kind)
    r = native.stats_f32(x)
    assert r is not None
    count, mean, m2, lo, hi, zeros = r
    w = x.astype(np.float64)
    assert count == n
    assert (lo, hi) == (float(x.min()), float(x.max()))
    assert zeros == int((x == 0).sum())
    scale = float(np.abs(w).max()) or 1.0
    assert mean == pytest.approx(w.mean(), rel=1e-6, abs=1e-6 * scale)
    ref = float(((w - w.mean()) ** 2).sum())
    assert m2 == pytest.approx(ref, rel=1e-5, abs=1e-12 * scale * scale * n)


@settings(max_examples=80, deadline=None)
@given(
    n=st.integers(1, 5000),
    seed=st.integers(0, 2**32 - 1),
    kind=st.sampled_from(KINDS),
    op=st.sampled_from(["scale", "clip", "same", "noise"]),
)
def test_pair_kernel_gives_what_the_numpy_summary_gives(
    n: int, seed: int, kind: str, op: str
) -> None:
    x = _blocks(seed, n, kind)
    if op == "scale":
        y = x * np.float32(0.5)
    elif op == "clip":
        y = np.clip(x, -np.float32(0.1) * np.abs(x).max(), np.float32(0.1) * np.abs(x).max())
    elif op == "same":
        y = x.copy()  # equal values, another array: nothing changed
    else:
        y = x + np.random.default_rng(seed).standard_normal(n).astype(np.float32) * np.float32(
            1e-6
        ) * (np.random.default_rng(seed + 1).random(n) < 0.3)
    assert native.pair_f32(x, y) is not None  # premise: the kernel takes this block

    def summary():
        b, a = RunningStats(count_zeros=True), RunningStats(count_zeros=True)
        changed, worst = pipeline._summarize(x, y, b, a, 0, 0.0)
        return b.result(), a.result(), changed, worst

    fast, slow = summary(), numpy_path(summary)
    assert fast[2:] == slow[2:]  # changes counted and the largest change: exact
    assert fast[2] == int((x != y).sum())
    for f, s in zip(fast[:2], slow[:2], strict=True):
        assert (f.count, f.min, f.max, f.abs_max, f.zeros, f.nan, f.inf) == (
            s.count,
            s.min,
            s.max,
            s.abs_max,
            s.zeros,
            s.nan,
            s.inf,
        )
        assert f.mean == pytest.approx(s.mean, rel=1e-5, abs=1e-6 * (s.abs_max or 1))
        assert f.std == pytest.approx(s.std, rel=1e-4, abs=1e-6 * (s.abs_max or 1))


@settings(max_examples=80, deadline=None)
@given(
    n=st.integers(1, 70000),  # past one slice (16 * 1024 elements) of the kernel
    seed=st.integers(0, 2**32 - 1),
    kind=st.sampled_from(KINDS),
    op=st.sampled_from(["scale", "clip", "clip-low", "clip-high", "clip-crossed"]),
    a=st.floats(0.01, 3.0),
)
def test_the_fused_scale_and_clip_kernel_writes_numpys_bytes_and_the_pair_summary(
    n: int, seed: int, kind: str, op: str, a: float
) -> None:
    """map_pair_f32: the bytes of scale.py's float32 product and of np.clip (bounds
    other than zero), and pair_f32's figures of the block and that result."""
    x = _blocks(seed, n, kind)
    top = float(np.abs(x).max()) or 1.0
    lo, hi = np.float32(-a * 0.3 * top), np.float32(a * 0.3 * top)
    if op == "scale":
        kind_no, p, q = 0, np.float32(a), 0.0
        want = x * np.float32(a)
    else:
        kind_no = 1
        p = np.float32(-np.inf) if op == "clip-high" else lo
        q = np.float32(np.inf) if op == "clip-low" else hi
        if op == "clip-crossed":
            p, q = hi, lo  # np.clip gives the upper bound everywhere
        if p == 0 or q == 0:
            return  # (tiny magnitudes: the caller never passes a zero bound)
        want = np.clip(x, p, q)
    fused = native.map_pair_f32(x, kind_no, float(p), float(q))
    if not np.isfinite(want).all():
        assert fused is None  # an overflow: the numpy path takes the block
        return
    assert fused is not None
    out, summary = fused
    assert out.tobytes() == want.tobytes()
    ref = native.pair_f32(x, want)
    assert summary[2:] == ref[2:]  # changes: exact
    for f, r in zip(summary[:2], ref[:2], strict=True):
        assert f[2:] == r[2:]  # min, max, zeros: exact
        assert f[0] == pytest.approx(r[0], rel=1e-9, abs=1e-12 * top)
        assert f[1] == pytest.approx(r[1], rel=1e-9, abs=1e-12 * top * top * n)


@settings(max_examples=80, deadline=None)
@given(
    n=st.integers(1, 70000),
    seed=st.integers(0, 2**32 - 1),
    kind=st.sampled_from(KINDS),
    q=st.floats(0.0, 1.0),
    first=st.integers(0, 10**9),
    tie_share=st.floats(0.0, 1.0),
)
def test_the_fused_prune_kernel_writes_prune_blocks_bytes(
    n: int, seed: int, kind: str, q: float, first: int, tie_share: float
) -> None:
    """map_pair_f32 kind 2: prune.prune_block's bytes (the threshold's bit pattern, ties
    zeroed up to a flat index, zeros and their signs kept), and pair_f32's figures."""
    from weightcli.transforms import prune as prunemod

    x = _blocks(seed, n, kind)
    x[:: max(1, n // 7)] *= np.float32(-0.0)  # signed zeros among them
    bits_all = x.view(np.uint32) & np.uint32(0x7FFFFFFF)
    bits = int(np.sort(bits_all)[min(n - 1, int(q * n))])  # a value of the block: ties
    ties = np.flatnonzero(bits_all == bits)
    limit = first + int(ties[int(tie_share * (ties.size - 1))]) if ties.size else -1
    want, zeroed = prunemod.prune_block(x, np.dtype(np.float32), bits, first, limit)
    fused = native.map_pair_f32(x, 2, float(bits), 0.0, first, limit)
    if not np.isfinite(x).all():
        assert fused is None
        return
    assert fused is not None
    out, summary = fused
    assert out.tobytes() == np.ascontiguousarray(want).tobytes()
    assert summary[2] == zeroed
    ref = native.pair_f32(x, np.ascontiguousarray(want))
    assert summary[2:] == ref[2:]
    for f, r in zip(summary[:2], ref[:2], strict=True):  # sums: in another order, to rounding
        assert f[2:] == r[2:] and f[:2] == pytest.approx(r[:2], rel=1e-9, abs=1e-30)


def test_a_zero_clip_bound_takes_the_numpy_path() -> None:
    """np.clip's sign of a zero result depends on its code path, so a zero bound is
    left to it; any other bound goes through the kernel."""
    from weightcli.steps import ClipStep, _ClipOp
    from weightcli.stores.base import Block
    from weightcli.tensor import TensorInfo

    x = np.array([-0.0, 0.0, -1.0, 2.0], np.float32)
    info = TensorInfo(name="k", path="k", shape=(4,), dtype="float32", kind="kernel")
    where = Block((0,), (4,), 0)
    for lo, hi, fused in ((0.0, None, False), (None, -0.0, False), (-0.5, 1.0, True)):
        step = ClipStep(selection=None, min=lo, max=hi)  # type: ignore[arg-type]
        op = _ClipOp(info, step)
        assert (op.apply_summarized(where, x) is not None) is fused


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_kernels_hand_nonfinite_blocks_back(bad: float) -> None:
    x = np.linspace(-1, 1, 1000, dtype=np.float32)
    y = x.copy()
    y[500] = bad
    assert native.stats_f32(y) is None
    assert native.pair_f32(x, y) is None
    assert native.pair_f32(y, x) is None
    assert native.map_pair_f32(y, 0, 0.5, 0.0) is None
    assert native.map_pair_f32(y, 1, -0.5, 0.5) is None
    out = native.fake_quant_f32(y, np.ones(1), np.zeros(1), 1000, -127, 127)
    assert out is None


def test_a_difference_that_overflows_float32_is_handed_back() -> None:
    x = np.array([3e38, -1.0], np.float32)
    y = np.array([-3e38, -1.0], np.float32)
    assert native.pair_f32(x, y) is None  # |y - x| is inf in float32: the numpy path


def test_kernels_take_only_contiguous_native_float32() -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert native.stats_f32(x[:, ::2]) is None  # strided
    assert native.stats_f32(x.astype(np.float64)) is None
    assert native.stats_f32(x.astype(">f4")) is None  # big-endian
    assert native.stats_f32(x.astype("<f4")) is not None  # h5py's explicit '<f4'
    assert native.stats_f32(np.zeros(0, np.float32)) is None


@settings(max_examples=80, deadline=None)
@given(
    shape=st.sampled_from([(37,), (5, 7), (3, 4, 6), (2, 3, 2, 5), (1100, 3), (2, 1500)]),
    axis=st.sampled_from([None, 0, -1, 1]),
    bits=st.sampled_from([2, 4, 8, 16]),
    scheme=st.sampled_from(qmod.SCHEMES),
    seed=st.integers(0, 2**32 - 1),
    ties=st.booleans(),
)
def test_fake_quant_kernel_writes_the_numpy_paths_bytes(shape, axis, bits, scheme, seed, ties):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * rng.choice([1e-3, 1.0, 50.0])).astype(np.float32)
    if ties:  # values on exact half steps: the rounding rule decides them
        x = (np.round(x * 4) / 4).astype(np.float32)
    x.reshape(-1)[:: max(1, x.size // 5)] = 0.0
    if axis is not None and axis >= x.ndim:
        axis = -1
    ax = None if axis is None else axis % x.ndim
    lo, hi = qmod.reduce_minmax(x, ax)
    scale, zero = qmod.params(lo.reshape(-1), hi.reshape(-1), bits, scheme)
    shape_b = (1,) * x.ndim if ax is None else qmod.channel_shape(x.ndim, ax)
    ref = qmod.fake_quantize(x, scale.reshape(shape_b), zero.reshape(shape_b), bits, scheme)
    inner = x.size if ax is None else int(np.prod(x.shape[ax + 1 :], dtype=np.int64))
    got = native.fake_quant_f32(x, scale, zero, inner, *qmod.qrange(bits, scheme))
    assert got is not None
    y, (signal, noise, worst) = got
    assert y.dtype == np.float32 and y.shape == x.shape
    assert np.array_equal(y.view(np.int32), ref.view(np.int32))  # bit for bit, -0.0 included
    err = ref.astype(np.float64) - x.astype(np.float64)
    xd = x.astype(np.float64)
    assert signal == pytest.approx(float((xd * xd).sum()), rel=1e-5)
    assert noise == pytest.approx(float((err * err).sum()), rel=1e-4, abs=1e-30)
    assert worst == float(np.abs(ref - x).max())


def test_the_environment_switch_turns_the_kernels_off() -> None:
    code = "from weightcli import native; print(native.kernels is None)"
    for env, expect in (({"WEIGHTCLI_NATIVE": "0"}, "True"), ({}, "False")):
        out = subprocess.run(
            [sys.executable, "-c", code], env={**_env(), **env}, capture_output=True, text=True
        )
        assert out.stdout.strip() == expect, out.stderr


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "WEIGHTCLI_NATIVE"}


def _approx_tree(fast: object, slow: object) -> None:
    """JSON from both paths: counts and names exact, floats to 1e-5 relative."""
    if isinstance(slow, dict):
        assert isinstance(fast, dict) and fast.keys() == slow.keys()
        for k in slow:
            if k not in ("elapsed_s", "output", "time"):  # when each ran, where it wrote
                _approx_tree(fast[k], slow[k])
    elif isinstance(slow, list):
        assert isinstance(fast, list) and len(fast) == len(slow)
        for f, s in zip(fast, slow, strict=True):
            _approx_tree(f, s)
    elif isinstance(slow, float):
        assert fast == pytest.approx(slow, rel=1e-5, abs=1e-9)
    else:
        assert fast == slow


@pytest.mark.parametrize(
    "args",
    [
        ["scale", "0.5"],
        ["clip", "--abs-max", "0.05"],
        ["clip", "--min", "0"],  # (a zero bound: the numpy path on both sides)
        ["clip", "--max", "0.02"],
        ["quantize", "--bits", "4"],
        ["quantize", "--scheme", "asymmetric", "--granularity", "per-tensor"],
        ["prune", "--sparsity", "0.6"],
        ["merge", "cnn_keras3.h5", "--weights", "1,3"],
        ["merge", "cnn_keras3.h5", "--method", "ema", "--decay", "0.3"],
        ["merge", "cnn_keras3.h5", "--method", "dare-ties", "--base", "BASE", "--seed", "3"],
        [
            "merge",
            "cnn_keras3.h5",
            "--method",
            "dare-linear",
            "--base",
            "BASE",
            "--weights",
            "0.3,2",
        ],
        ["merge", "cnn_keras3.h5", "--method", "ties", "--base", "BASE", "--density", "0.4"],
        [
            "merge",
            "cnn_keras3.h5",
            "--method",
            "task-arithmetic",
            "--base",
            "BASE",
            "--lambda",
            "0.7",
        ],
        ["merge", "cnn_keras3.h5", "--method", "breadcrumbs-ties", "--base", "BASE"],
    ],
    ids=lambda a: " ".join(a),
)
def test_a_command_writes_the_same_tensors_with_or_without_kernels(args, tmp_path) -> None:
    from tests.helpers import SAMPLES, differing, run

    src = SAMPLES / "cnn_keras3.h5"
    if args[0] == "merge":  # the sample and a scaled copy of it (a base: a clipped one)
        other, base = tmp_path / "other.h5", tmp_path / "base.h5"
        assert run("scale", src, "0.5", "-o", other).code == 0
        assert run("clip", src, "--abs-max", "0.1", "-o", base).code == 0
        args = [args[0], other, *(base if a == "BASE" else a for a in args[2:])]
    fast_out, slow_out = tmp_path / "fast.h5", tmp_path / "slow.h5"
    fast = run(args[0], src, *args[1:], "-o", fast_out, "--json")
    slow = numpy_path(run, args[0], src, *args[1:], "-o", slow_out, "--json")
    assert fast.code == slow.code == 0, (fast.err, slow.err)
    assert fast.json()["changed"] > 0  # premise: the run changed tensors
    _approx_tree(fast.json(), slow.json())
    # Only the history (its time stamp) differs: every tensor holds the same bytes.
    assert differing(fast_out, slow_out, tmp_path) <= {"/"}


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 5000), seed=st.integers(0, 2**32 - 1), kind=st.sampled_from(KINDS))
def test_radix_histograms_count_what_numpy_counts(n: int, seed: int, kind: str) -> None:
    x = _blocks(seed, n, kind)
    bits = x.view(np.uint32) & np.uint32(0x7FFFFFFF)
    high = np.zeros(65536, np.int64)
    assert native.abs_hist_f32(x, high, None) is False
    assert np.array_equal(high, np.bincount(bits >> 16, minlength=65536))
    prefix = int(bits[len(bits) // 2] >> 16)
    low = np.zeros(65536, np.int64)
    assert native.abs_hist_f32(x, low, prefix) is False
    chosen = bits[(bits >> 16) == prefix] & np.uint32(0xFFFF)
    assert np.array_equal(low, np.bincount(chosen, minlength=65536))
    assert low.sum() == high[prefix] > 0
    window, both = np.zeros((3, 65536), np.int64), np.zeros(65536, np.int64)
    lo = max(0, prefix - 1)
    assert native.abs_hist_f32(x, both, None, window, lo) is False
    assert np.array_equal(both, high)  # the window changes nothing of the high counts
    for d in range(3):
        chosen = bits[(bits >> 16) == lo + d] & np.uint32(0xFFFF)
        assert np.array_equal(window[d], np.bincount(chosen, minlength=65536))


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 60000),
    block=st.integers(1, 20000),
    seed=st.integers(0, 2**32 - 1),
    kind=st.sampled_from([*KINDS, "ascending", "descending"]),
    q=st.floats(0.0, 1.0),
)
def test_the_first_blocks_guess_gives_the_same_kth_value(
    n: int, block: int, seed: int, kind: str, q: float
) -> None:
    """AbsKth told the tensor's size guesses the threshold's bin from the first block and
    counts that bin's neighbourhood in the first pass: the same k-th value, below and
    ties as two passes, whether the guess holds (one pass) or not (two)."""
    from weightcli.transforms.prune import AbsKth

    x = _blocks(seed, n, "normal" if kind in ("ascending", "descending") else kind)
    if kind != "normal" and kind in ("ascending", "descending"):  # the first block misleads
        x = np.sort(np.abs(x))[:: 1 if kind == "ascending" else -1].copy()
    k = max(1, min(n, int(q * n)))
    results = []
    for size in (None, n):
        kth, passes = AbsKth(k, np.dtype(np.float32), size), 0
        while True:
            passes += 1
            for i in range(0, n, block):
                kth.observe(x[i : i + block])
            if not kth.end_pass():
                break
        results.append((kth.bits, kth.below, kth.equal, passes))
    plain, guessed = results
    assert guessed[:3] == plain[:3] and plain[3] == 2
    want = np.sort(x.view(np.uint32) & np.uint32(0x7FFFFFFF))[k - 1]
    assert plain[0] == int(want)
    if kind == "ascending" and n >= 4 * block and q > 0.5:
        assert guessed[3] == 2  # a misleading first block costs nothing but the pass


def test_no_guess_after_a_first_block_the_kernel_did_not_count() -> None:
    """A first block the kernel cannot take (strided) is counted by numpy: no block
    after it may start a window, which would miss that block's counts."""
    from weightcli.transforms.prune import AbsKth

    x = np.random.default_rng(3).standard_normal(40000).astype(np.float32)
    head = np.repeat(x[:5000], 2)[::2]  # the same values, a strided view
    assert not head.flags.c_contiguous
    k = 20000
    kth = AbsKth(k, np.dtype(np.float32), x.size)
    passes = 0
    while True:
        passes += 1
        kth.observe(head)
        for i in range(5000, x.size, 5000):
            kth.observe(x[i : i + 5000])
        if not kth.end_pass():
            break
    assert passes == 2 and kth.guess is None
    assert kth.bits == int(np.sort(x.view(np.uint32) & np.uint32(0x7FFFFFFF))[k - 1])


@pytest.mark.parametrize("q", [0.1, 0.5, 0.9])
def test_a_first_block_like_the_rest_saves_the_second_radix_pass(q: float) -> None:
    """The premise of the guess: blocks of the pipeline's size (2^18 values) drawn like
    the rest of the tensor put the threshold in the counted window."""
    from weightcli.stores.base import BLOCK_ELEMS
    from weightcli.transforms.prune import AbsKth

    x = np.random.default_rng(7).standard_normal(6 * BLOCK_ELEMS).astype(np.float32)
    kth, passes = AbsKth(int(q * x.size), np.dtype(np.float32), x.size), 0
    while True:
        passes += 1
        for i in range(0, x.size, BLOCK_ELEMS):
            kth.observe(x[i : i + BLOCK_ELEMS])
        if not kth.end_pass():
            break
    assert passes == 1
    want = np.sort(x.view(np.uint32) & np.uint32(0x7FFFFFFF))[int(q * x.size) - 1]
    assert kth.bits == int(want)


def test_the_radix_histogram_sees_nan_but_not_inf() -> None:
    x = np.array([1.0, -np.inf, np.inf, 0.0], np.float32)
    assert native.abs_hist_f32(x, np.zeros(65536, np.int64), None) is False
    x[0] = -np.nan
    assert native.abs_hist_f32(x, np.zeros(65536, np.int64), None) is True


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 3000),
    k=st.integers(1, 5),
    seed=st.integers(0, 2**32 - 1),
    kind=st.sampled_from(KINDS),
    ema=st.booleans(),
)
def test_linear_combination_writes_the_numpy_steps_bytes(n, k, seed, kind, ema) -> None:
    xs = [_blocks(seed + i, n, kind) for i in range(k)]
    rng = np.random.default_rng(seed)
    if ema:
        d = float(rng.random())
        a, c = [1.0] + [1 - d] * (k - 1), [1.0] + [d] * (k - 1)
    else:
        w = rng.random(k) + 0.1
        a, c = list(w / w.sum()), [1.0] * k
    acc = xs[0].astype(np.float64) * a[0]
    for x, ai, ci in zip(xs[1:], a[1:], c[1:], strict=True):
        acc *= ci
        acc += x.astype(np.float64) * ai
    out = np.empty(n, np.float32)
    assert native.lincomb_f32(out, xs, a, c) is out
    assert np.array_equal(out.view(np.int32), acc.astype(np.float32).view(np.int32))


def test_diff_reads_each_side_on_a_thread_and_gives_the_numpy_paths_metrics(tmp_path) -> None:
    """Multi-block float32 tensors: each side read ahead by a thread of its own and
    compared by the kernel; the rows equal the numpy path's (two comparing threads)."""
    import threading

    from tests.helpers import SAMPLES, run
    from weightcli.compare import diff_stores
    from weightcli.select import Selection
    from weightcli.stores import open_store

    other = tmp_path / "other.h5"
    assert run("clip", SAMPLES / "cnn_keras3.h5", "--abs-max", "0.1", "-o", other).code == 0

    def rows(block_elems: int) -> list[tuple]:
        with open_store(SAMPLES / "cnn_keras3.h5") as sa, open_store(other) as sb:
            res = diff_stores(sa, sb, Selection(), atol=1e-3, block_elems=block_elems)
        return [
            (r.name, r.status, r.beyond, r.max_abs, r.sparsity_change, round(r.rel_l2 or 0, 6))
            for r in res.rows
        ]

    names: list[str] = []
    real_start = threading.Thread.start

    def spy(self):  # the premise: readers really ran, and no comparing thread
        names.append(self.name)
        return real_start(self)

    with pytest.MonkeyPatch().context() as mp:
        mp.setattr(threading.Thread, "start", spy)
        fast = rows(50)
    assert names and set(names) == {"weightcli-read-ahead"}, names
    slow = numpy_path(rows, 50)
    assert fast == slow
    assert any(r[1].name == "DIFFERS" for r in fast)


@settings(max_examples=80, deadline=None)
@given(
    n=st.integers(1, 2000),
    k=st.integers(1, 4),
    seed=st.integers(0, 2**32 - 1),
    consensus=st.booleans(),
    normalize=st.booleans(),
    masks=st.booleans(),
    odd=st.booleans(),
)
def test_task_arithmetic_kernel_writes_the_numpy_steps_bytes(
    n, k, seed, consensus, normalize, masks, odd
) -> None:
    """transforms/merge.combine and _MergeOp's steps around it, against the kernel: the
    same float32 bytes and the same count of agreeing elements, NaN, Inf, zeros, ties of
    sign and negative weights included."""
    from weightcli.transforms import merge as methods

    rng = np.random.default_rng(seed)
    carrier = rng.standard_normal(n).astype(np.float32)
    xs = [carrier + rng.standard_normal(n).astype(np.float32) * np.float32(0.1) for _ in range(k)]
    if odd:  # values numpy's steps must meet exactly as the kernel does
        xs[0][:: max(1, n // 7)] = carrier[:: max(1, n // 7)]  # zero deltas
        xs[-1][1 :: max(2, n // 5)] = np.nan
        carrier[2 :: max(3, n // 4)] = np.inf
    keeps = [rng.random(n) < 0.6 if masks else None for _ in range(k)]
    weights = list(rng.choice([1.0, 0.5, -0.3, 2.0], k))
    rescales = list(rng.choice([1.0, 2.0, 1 / 0.3], k))
    lam = float(rng.choice([1.0, 0.7]))
    c64 = carrier.astype(np.float64)
    deltas = []
    for x, keep in zip(xs, keeps, strict=True):
        d = np.subtract(x, c64)
        if keep is not None:
            d *= keep
        deltas.append(d)
    with np.errstate(all="ignore"):
        mixed, agreeing = methods.combine(deltas, weights, consensus, normalize, rescales)
        ref = (c64 + lam * mixed).astype(np.float32)
    got = native.task_combine_f32(
        carrier,
        xs,
        keeps,
        [w * r for w, r in zip(weights, rescales, strict=True)],
        weights,
        consensus,
        normalize,
        lam,
    )
    assert got is not None
    out, agree = got
    # Bit for bit, but for a NaN's sign and payload (the CPU picks them by operand order,
    # which numpy's vector loops and the kernel's need not share)
    nan = np.isnan(ref)
    assert np.array_equal(np.isnan(out), nan)
    assert np.array_equal(out[~nan].view(np.int32), ref[~nan].view(np.int32))
    assert agree == agreeing
