"""The fast paths of issue 20 against the plain formulas: every shortcut taken for speed
must give what the slow, obvious computation gives."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weightcli import compare
from weightcli.prefetch import ahead
from weightcli.results import DiffStatus, TensorDiff


def _oracle(a: np.ndarray, b: np.ndarray, atol: float, rtol: float) -> dict[str, float]:
    x, y = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    d = np.abs(x - y)
    return {
        "beyond": int((~np.isclose(a, b, rtol=rtol, atol=atol)).sum()),
        "max_abs": float(d.max()),
        "mean_abs": float(d.mean()),
        "rel_l2": float(np.sqrt((d * d).sum() / (y * y).sum())),
        "cosine": float((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum())),
    }


def _measure(a: np.ndarray, b: np.ndarray, atol: float, rtol: float, slice_: int) -> TensorDiff:
    acc = compare._Acc(atol, rtol, nan_equal=False)
    for i in range(0, a.size, slice_):  # blocks as the stores hand them over
        acc.update(a[i : i + slice_], b[i : i + slice_])
    row = TensorDiff("t", DiffStatus.IDENTICAL, None, None, size=a.size)
    acc.finish(row)
    row.status = DiffStatus.IDENTICAL if acc.identical else DiffStatus.DIFFERS
    return row


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 3000),
    seed=st.integers(0, 2**32 - 1),
    noise=st.sampled_from([0.0, 1e-7, 1e-4, 1e-1]),
    changed=st.floats(0, 1),
    atol=st.sampled_from([0.0, 1e-6, 1e-3]),
    rtol=st.sampled_from([0.0, 1e-5, 1e-2]),
    dtype_b=st.sampled_from(["float32", "float64", "int32"]),
    slice_=st.sampled_from([7, 256, 4096]),
)
def test_diff_metrics_match_numpy(n, seed, noise, changed, atol, rtol, dtype_b, slice_) -> None:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(n).astype("float32") * 10
    b = a + (rng.random(n) < changed) * rng.standard_normal(n).astype("float32") * noise
    b = (np.round(b) if dtype_b == "int32" else b).astype(dtype_b)
    if dtype_b == "int32":
        a = np.round(a).astype("float32")
    old = compare.SLICE
    try:
        compare.SLICE = 512  # several slices per block: the merge across slices
        row = _measure(a, b, atol, rtol, slice_)
    finally:
        compare.SLICE = old
    want = _oracle(a, b, atol, rtol)
    assert row.beyond == want["beyond"]
    assert row.max_abs == pytest.approx(want["max_abs"], rel=1e-6, abs=1e-12)
    assert row.mean_abs == pytest.approx(want["mean_abs"], rel=1e-5, abs=1e-12)
    if np.any(b):
        assert row.rel_l2 == pytest.approx(want["rel_l2"], rel=1e-4, abs=1e-7)
        assert row.cosine == pytest.approx(want["cosine"], rel=1e-5, abs=1e-6)
    values_equal = bool(np.array_equal(a.astype(np.float64), b.astype(np.float64)))
    identical = values_equal and a.dtype == b.dtype
    assert (row.status is DiffStatus.IDENTICAL) is identical


def test_diff_fast_path_falls_back_on_overflow_and_nonfinite() -> None:
    """A difference that overflows float32, and NaN/Inf, go through np.isclose itself."""
    a = np.array([3e38, 1.0, np.inf, 2.0], "float32")
    b = np.array([-3e38, 1.0, np.inf, np.nan], "float32")
    row = _measure(a, b, 0.0, 0.0, 4)
    assert row.beyond == int((~np.isclose(a, b, rtol=0, atol=0)).sum()) == 2


def test_ahead_yields_in_order_and_reads_in_another_thread() -> None:
    threads = set()

    def items():
        for i in range(50):
            threads.add(threading.current_thread().name)
            yield i

    assert list(ahead(items())) == list(range(50))
    assert threads == {"weightcli-read-ahead"}  # the premise: it really read ahead


def test_ahead_raises_where_the_producer_failed() -> None:
    def items():
        yield 1
        raise OSError("disk gone")

    got = []
    with pytest.raises(OSError, match="disk gone"):
        for x in ahead(items()):
            got.append(x)
    assert got == [1]


def test_ahead_stops_its_thread_when_the_caller_stops() -> None:
    produced = []

    def items():
        for i in range(10_000):
            produced.append(i)
            yield i

    gen = ahead(items(), depth=2)
    assert next(gen) == 0
    gen.close()  # the caller stops early
    assert not any(t.name == "weightcli-read-ahead" for t in threading.enumerate())
    assert len(produced) < 10  # bounded: it never ran far ahead


def test_the_zip_crc_is_zlibs_crc32() -> None:
    """The vectorised CRC-32 that checks and writes .keras members is zlib's function
    (the oracle), in one piece and continued across chunks; and it is the fast one."""
    import zlib

    from weightcli.stores import archive

    assert archive.crc32.__module__.startswith("zlib_ng")  # the premise: not the fallback
    rng = np.random.default_rng(7)
    for size in (0, 1, 15, 4096, 1 << 20, (1 << 20) + 3):
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        assert archive.crc32(data) == zlib.crc32(data)
        cut = size // 3
        assert archive.crc32(data[cut:], archive.crc32(data[:cut])) == zlib.crc32(data)


def _pairs(blocks_a, blocks_b):
    return iter([((None, x), (None, y)) for x, y in zip(blocks_a, blocks_b, strict=True)])


@pytest.mark.parametrize("seed", range(6))
def test_two_threads_comparing_blocks_give_one_threads_metrics(seed: int) -> None:
    """Blocks shared between two comparing threads, metrics merged: what one thread
    computes over every block (counts exact, sums to rounding), NaN blocks included."""
    rng = np.random.default_rng(seed)
    blocks_a = [
        rng.standard_normal(int(rng.integers(1, 5000))).astype("float32") for _ in range(23)
    ]
    blocks_b = [x + (rng.random(x.size) < 0.3) * np.float32(1e-3) for x in blocks_a]
    if seed % 2:
        blocks_b[5][0] = np.nan
    one = compare._Acc(1e-4, 0.0, False)
    for x, y in zip(blocks_a, blocks_b, strict=True):
        one.update(x, y)
    two = compare._Acc(1e-4, 0.0, False)
    threads = []
    real_start = threading.Thread.start

    def spy(self):  # the premise: a second thread really compared
        threads.append(self)
        return real_start(self)

    with pytest.MonkeyPatch().context() as mp:
        mp.setattr(threading.Thread, "start", spy)
        compare._compare_in_two(_pairs(blocks_a, blocks_b), two, 1e-4, 0.0, False)
    assert [t.name for t in threads] == ["weightcli-compare"] and not threads[0].is_alive()
    assert (one.identical, one.beyond, one.n) == (two.identical, two.beyond, two.n)
    for f in ("max_abs", "sum_abs", "dd", "aa", "bb", "ab"):
        assert getattr(two, f) == pytest.approx(getattr(one, f), rel=1e-9), f


def test_an_error_while_comparing_in_two_is_raised_and_both_threads_end() -> None:
    def pairs():
        for i in range(50):
            if i == 20:
                raise OSError("block 20 unreadable")
            x = np.ones(1000, "float32")
            yield (None, x), (None, x)

    before = threading.active_count()
    acc = compare._Acc(0.0, 0.0, False)
    with pytest.raises(OSError, match="block 20"):
        compare._compare_in_two(ahead(pairs()), acc, 0.0, 0.0, False)
    assert threading.active_count() == before


def test_speculative_hands_over_what_it_computed_ahead_and_recomputes_a_miss() -> None:
    from weightcli.prefetch import Speculative

    calls: list[tuple[int, str]] = []

    def fn(key: int) -> int:
        calls.append((key, threading.current_thread().name))
        if key == 13:
            raise ValueError("thirteen")
        return key * 10

    before = threading.active_count()
    s = Speculative(fn)
    assert s.take(1) == 10 and calls[-1] == (1, threading.current_thread().name)
    s.start(2)
    assert s.take(2) == 20 and calls[-1] == (2, "weightcli-ahead")  # computed ahead
    s.start(3)
    here = threading.current_thread().name
    assert s.take(4) == 40 and calls[-2:] == [(3, "weightcli-ahead"), (4, here)]
    s.start(13)  # an error ahead is raised here, where the caller asks
    with pytest.raises(ValueError, match="thirteen"):
        s.take(13)
    s.start(5)
    s.start(6)  # a start not taken is dropped
    assert s.take(6) == 60
    assert threading.active_count() == before + 1  # one helper served every start
    s.close()
    assert threading.active_count() == before
    s.start(7)  # a helper again, which ends by itself when no more work comes
    assert s.take(7) == 70 and calls[-1] == (7, "weightcli-ahead")
    deadline = time.monotonic() + 10 * s.IDLE
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() == before


def test_dare_draws_the_next_blocks_masks_ahead(tmp_path) -> None:
    """The premise of the dare-ties speed-up: a multi-block tensor's masks are drawn on the
    helper thread (and the output equals the numpy path's, in test_native)."""
    from tests.helpers import SAMPLES, run
    from weightcli.commands import merge as merge_cmd

    a, base = tmp_path / "a.h5", tmp_path / "base.h5"
    assert run("scale", SAMPLES / "cnn_keras3.h5", "0.5", "-o", a).code == 0
    assert run("clip", SAMPLES / "cnn_keras3.h5", "--abs-max", "0.1", "-o", base).code == 0
    names: list[str] = []
    real = merge_cmd._MergeOp._draw

    def spy(self, at):
        names.append(threading.current_thread().name)
        return real(self, at)

    from weightcli.params import OutputSpec

    request = merge_cmd.MergeRequest(
        others=(a,),
        method="dare-ties",
        base=base,
        out=OutputSpec(output=tmp_path / "o.h5"),
        block_elems=64,  # several blocks a tensor
    )
    before = threading.active_count()
    with pytest.MonkeyPatch().context() as mp:
        mp.setattr(merge_cmd._MergeOp, "_draw", spy)
        assert merge_cmd.run(request, SAMPLES / "cnn_keras3.h5").changes
    assert threading.active_count() == before  # each tensor's helper ended with it
    # the first block of each tensor drawn here, the others ahead
    assert names.count("weightcli-ahead") > names.count("MainThread") > 0
