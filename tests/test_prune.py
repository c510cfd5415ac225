"""``prune``: the zeroed weights are exactly the smallest |w| (numpy's stable sort is the
oracle: ties go to the earlier weight), per tensor or over all of them (``--scope
global``); N:M against TensorFlow Model Optimization's own mask; Keras loads every
output and computes what the pruned weights compute."""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from helpers import SAMPLES, run
from hypothesis import given, settings
from hypothesis import strategies as st
from test_bad_input import assert_clean_error

import weightcli
from weightcli.commands import transform as transform_cmd
from weightcli.select import Selection
from weightcli.steps import PruneStep
from weightcli.transforms import prune as prunemod


def _expected(values: list[np.ndarray], sparsity: float) -> list[np.ndarray]:
    """The oracle: the k smallest |w| over ``values`` (in order) zeroed, ties to the
    earlier weight; k as TFMOT counts it."""
    flat = np.concatenate([np.abs(v.astype(np.float64)).ravel() for v in values])
    k = flat.size - int(np.round(flat.size * (1 - sparsity)))
    order = np.argsort(flat, kind="stable")[:k]
    mask = np.zeros(flat.size, bool)
    mask[order] = True
    out, at = [], 0
    for v in values:
        m = mask[at : at + v.size].reshape(v.shape)
        w = v.copy()
        w[m & (v != 0)] = 0
        out.append(w)
        at += v.size
    return out


def _arrays(path: Path, names: list[str]) -> list[np.ndarray]:
    with weightcli.open(path) as ckpt:
        return [ckpt.array(n) for n in names]


KERNELS = ["dense_1/kernel", "dense_2/kernel", "logits/kernel"]


@pytest.mark.parametrize("sample", ["mlp.keras", "mlp_keras3.h5", "mlp_tfkeras.h5", "mlp_export"])
def test_each_tensor_loses_exactly_its_smallest_weights(tmp_path: Path, sample: str) -> None:
    src = SAMPLES / sample
    out = tmp_path / ("out" + ("" if src.is_dir() else src.suffix))
    res = run("prune", src, "--sparsity", "0.6", "-o", out, "--json")
    assert res.code == 0, res.err
    doc = res.json()
    assert sorted(t["name"] for t in doc["tensors"]) == sorted(KERNELS)  # kernels only
    for name, before, after in zip(
        KERNELS, _arrays(src, KERNELS), _arrays(out, KERNELS), strict=True
    ):
        (want,) = _expected([before], 0.6)
        np.testing.assert_array_equal(after, want, err_msg=name)
        fig = next(t for t in doc["tensors"] if t["name"] == name)["figures"][0]
        assert fig["sparsity"] == pytest.approx(np.count_nonzero(after == 0) / after.size)
    # biases untouched (not selected by default)
    bias = ["dense_1/bias"]
    np.testing.assert_array_equal(_arrays(out, bias)[0], _arrays(src, bias)[0])


def test_global_scope_is_one_threshold_over_all(tmp_path: Path) -> None:
    src, out = SAMPLES / "mlp.keras", tmp_path / "g.keras"
    assert run("prune", src, "--sparsity", "0.7", "--scope", "global", "-o", out).code == 0
    want = _expected(_arrays(src, KERNELS), 0.7)
    for name, got, w in zip(KERNELS, _arrays(out, KERNELS), want, strict=True):
        np.testing.assert_array_equal(got, w, err_msg=name)


def test_by_layer_targets(tmp_path: Path) -> None:
    src, out = SAMPLES / "mlp.keras", tmp_path / "b.keras"
    res = run("prune", src, "--sparsity", "0.5", "--by-layer", "logits=0.25", "-o", out)
    assert res.code == 0, res.err
    got = _arrays(out, KERNELS)
    for arr, s in zip(got, (0.5, 0.5, 0.25), strict=True):
        assert np.count_nonzero(arr == 0) == arr.size - round(arr.size * (1 - s))


def test_pruned_models_load_and_compute_what_their_weights_do(tmp_path: Path) -> None:
    from helpers import keras_quiet

    keras = keras_quiet()
    x = np.random.default_rng(0).standard_normal((8, 20)).astype("float32")
    for name in ("mlp.keras", "mlp_keras3.h5"):
        out = tmp_path / f"p_{name}"
        assert run("prune", SAMPLES / name, "--sparsity", "0.5", "-o", out).code == 0
        pruned = keras.models.load_model(out, compile=False)
        reference = keras.models.load_model(SAMPLES / name, compile=False)
        # the oracle: the original model with the pruned weights set through Keras's API
        weights = []
        for layer in reference.layers:
            for v in layer.weights:
                arr = np.asarray(v)
                if v.path.endswith("kernel"):
                    (arr,) = _expected([arr], 0.5)
                weights.append(arr)
        reference.set_weights(weights)
        np.testing.assert_allclose(np.asarray(pruned(x)), np.asarray(reference(x)), atol=1e-6)


def test_two_four_matches_tfmot(tmp_path: Path) -> None:
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    from tensorflow_model_optimization.python.core.sparsity.keras import pruning_utils as pu

    src, out = SAMPLES / "cnn.keras", tmp_path / "p.keras"
    res = run("prune", src, "--pattern", "2:4", "-o", out, "--json")
    assert res.code == 0, res.err
    names = [t["name"] for t in res.json()["tensors"]]
    assert names == ["conv/kernel", "logits/kernel"]  # a 4-D conv and a Dense kernel
    for name, before, after in zip(names, _arrays(src, names), _arrays(out, names), strict=True):
        w = tf.constant(before)
        mask = pu.generate_m_by_n_mask(pu.weights_rearrange(w), (2, 4))
        mask = np.asarray(pu.m_by_n_sparsity_mask_prepare(mask, w.shape))
        np.testing.assert_array_equal(after, before * mask, err_msg=name)
        if before.shape[-2] % 4 == 0:  # TFMOT's checker knows whole groups only
            assert pu.is_pruned_m_by_n(tf.constant(after), (2, 4), "C_OUT")


def _run_blocks(path: Path, out: Path, step: PruneStep, block_elems: int) -> None:
    request = transform_cmd.TransformRequest(
        steps=(step,), command="prune", block_elems=block_elems,
        out=weightcli.params.OutputSpec(output=out),
    )  # fmt: skip
    transform_cmd.run(request, path)


def _model(tmp_path: Path, arrays: dict[str, np.ndarray]) -> Path:
    from safetensors.numpy import save_file

    path = tmp_path / "m.safetensors"
    save_file(arrays, str(path))
    return path


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 40),
    cols=st.integers(1, 12),
    dtype=st.sampled_from(["float16", "float32", "float64", "bfloat16"]),
    sparsity=st.floats(0, 0.99),
    levels=st.integers(2, 1000),  # few levels: many ties
    block=st.integers(1, 64),
    seed=st.integers(0, 2**16),
)
def test_streamed_in_small_blocks_as_the_oracle(
    tmp_path_factory, rows, cols, dtype, sparsity, levels, block, seed
) -> None:
    """Any shape, dtype, tie structure and block size: exactly the oracle's zeros."""
    rng = np.random.default_rng(seed)
    np_dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    w = (rng.integers(-levels, levels, (rows, cols)) / levels).astype(np_dtype)
    tmp = tmp_path_factory.mktemp("p")
    src = _model(tmp, {"a.weight": w, "b.weight": w[::-1].copy()})
    out = tmp / "o.safetensors"
    for scope in ("layer", "global"):
        out.unlink(missing_ok=True)
        step = PruneStep(Selection(), sparsity=sparsity, scope=scope)
        try:
            _run_blocks(src, out, step, block)
        except weightcli.errors.UsageError:
            assert (
                prunemod.to_zero(2 * w.size if scope == "global" else w.size, sparsity) == 0
                or not w.any()
            )
            continue
        with weightcli.open(out if out.exists() else src) as ckpt:
            got = [ckpt.array("a.weight"), ckpt.array("b.weight")]
        if scope == "layer":
            want = _expected([w], sparsity) + _expected([w[::-1].copy()], sparsity)
        else:
            want = _expected([w, w[::-1].copy()], sparsity)
        for g, e in zip(got, want, strict=True):
            assert g.tobytes() == e.astype(np_dtype).tobytes() or np.array_equal(g, e)


@settings(max_examples=30, deadline=None)
@given(
    shape=st.sampled_from([(9, 5), (12, 3), (3, 3, 7, 4), (2, 10, 6)]),
    nm=st.sampled_from([(1, 2), (2, 4), (3, 4), (1, 8)]),
    block=st.integers(1, 50),
    seed=st.integers(0, 2**16),
)
def test_n_m_in_small_blocks_as_the_oracle(tmp_path_factory, shape, nm, block, seed) -> None:
    n, m = nm
    w = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    tmp = tmp_path_factory.mktemp("nm")
    src = _model(tmp, {"k.weight": w})
    out = tmp / "o.safetensors"
    _run_blocks(src, out, PruneStep(Selection(), pattern=(n, m)), block)
    with weightcli.open(out) as ckpt:
        got = ckpt.array("k.weight")
    # oracle: groups of m along axis -2, the n smallest |w| of each zeroed; a short last
    # group keeps up to m - n
    x = np.moveaxis(w, -2, -1).copy()
    rows = x.shape[-1]
    for start in range(0, rows, m):
        g = x[..., start : start + m]
        zero = n if g.shape[-1] == m else max(0, g.shape[-1] - (m - n))
        idx = np.argsort(np.abs(g), axis=-1, kind="stable")[..., :zero]
        np.put_along_axis(g, idx, 0, axis=-1)
        x[..., start : start + m] = g
    np.testing.assert_array_equal(got, np.moveaxis(x, -1, -2))


def test_bad_requests(tmp_path: Path) -> None:
    src, out = SAMPLES / "mlp.keras", tmp_path / "x.keras"
    assert_clean_error(run("prune", src, "--sparsity", "1", "-o", out), "sparsity")
    assert_clean_error(run("prune", src, "-o", out), "sparsity")
    assert_clean_error(
        run("prune", src, "--sparsity", "0.5", "--pattern", "2:4", "-o", out), "one of them"
    )
    assert_clean_error(run("prune", src, "--pattern", "4:4", "-o", out), "pattern")
    assert_clean_error(run("prune", src, "--pattern", "two", "-o", out), "N:M")
    assert_clean_error(
        run("prune", SAMPLES / "mlp_nan.h5", "--sparsity", "0.5", "-o", tmp_path / "n.h5"), "NaN"
    )
    assert_clean_error(
        run("prune", src, "--sparsity", "0.5", "-x", "*", "-o", out), "matches no tensor"
    )
    assert not list(tmp_path.iterdir())


def test_diff_reports_the_change_in_sparsity(tmp_path: Path) -> None:
    src, out = SAMPLES / "mlp.keras", tmp_path / "p.keras"
    assert run("prune", src, "--sparsity", "0.3", "-o", out).code == 0
    doc = run("diff", src, out, "--json").json()
    for row in doc["tensors"]:
        (a,), (b,) = _arrays(src, [row["name"]]), _arrays(out, [row["name"]])
        want = (np.count_nonzero(b == 0) - np.count_nonzero(a == 0)) / a.size
        if row["status"] == "identical":
            continue
        assert row["sparsity_change"] == pytest.approx(want)
        assert want > 0.29
    assert "Sparsity +/-%" in run("diff", src, out).out


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, 3e-39, -3e-39, 2.0**-20, 7.25, np.inf]),
        min_size=1,
        max_size=200,
    ),
    st.integers(1, 50),
    st.integers(1, 7),
)
def test_the_float32_radix_path_counts_as_the_general_one(values, k, block) -> None:
    """AbsKth reads float32 halves in place; the general path (here forced by big-endian
    blocks) makes |x|'s bit patterns: the same threshold, count below and ties."""
    x = np.array(values, dtype=np.float32)
    k = min(k, x.size)
    fast, slow = prunemod.AbsKth(k, np.dtype(np.float32)), prunemod.AbsKth(k, np.dtype(np.float32))
    again = True
    while again:
        for i in range(0, x.size, block):
            fast.observe(x[i : i + block])
            slow.observe(x[i : i + block].astype(">f4"))
        again = fast.end_pass()
        assert slow.end_pass() == again
    assert (fast.bits, fast.below, fast.equal) == (slow.bits, slow.below, slow.equal)
    assert fast.value == np.sort(np.abs(x))[k - 1]  # the oracle


def test_nan_is_found_by_the_float32_path() -> None:
    kth = prunemod.AbsKth(1, np.dtype(np.float32))
    kth.observe(np.array([1.0, 2.0], np.float32))  # Inf-free, NaN-free: fine
    with pytest.raises(weightcli.errors.UsageError, match="NaN"):
        kth.observe(np.array([1.0, np.nan], np.float32))
    kth.observe(np.array([np.inf], np.float32))  # Inf is not NaN
