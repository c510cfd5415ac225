"""Natively quantized Keras layers (``model.quantize(mode)``): named as Keras names them,
dequantized as Keras computes them, scaled by their scales (never their codes), refused
by the transforms that cannot act on codes exactly. Keras itself is the oracle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import keras_quiet, run

import weightcli


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    keras = keras_quiet()
    d = tmp_path_factory.mktemp("quantized")
    keras.utils.set_random_seed(0)
    m = keras.Sequential(
        [
            keras.Input((20,)),
            keras.layers.Dense(32, activation="relu", name="d1"),
            keras.layers.Dense(3, name="d2"),
        ],
        name="mlp",
    )
    for layer in m.layers:  # non-zero biases, so that they are checked too
        layer.bias.assign(np.linspace(-0.5, 0.5, layer.bias.shape[0]).astype("float32"))
    m.save(d / "f.keras")
    m.quantize("int8")
    m.save(d / "q8.keras")
    e = keras.Sequential(
        [keras.Input((5,), dtype="int32"), keras.layers.Embedding(50, 8, name="emb")]
    )
    e.save(d / "ef.keras")
    e.quantize("int8")
    e.save(d / "e8.keras")
    q4 = keras.Sequential([keras.Input((20,)), keras.layers.Dense(32, name="d1", use_bias=False)])
    q4.quantize("int4")
    q4.save(d / "q4.keras")
    np.save(d / "x.npy", np.random.default_rng(0).normal(size=(6, 20)).astype("float32"))
    return d


def _keras_vars(path: Path) -> dict[str, np.ndarray]:
    keras = keras_quiet()
    model = keras.models.load_model(path, compile=False)
    out = {}
    for layer in model.layers:
        for w in layer.weights:
            out[f"{layer.name}/{w.path.rsplit('/', 1)[-1]}"] = np.asarray(w)
    return out


@pytest.mark.parametrize("name", ["q8.keras", "e8.keras", "q4.keras"])
def test_names_and_values_are_keras_own(models: Path, name: str) -> None:
    want = _keras_vars(models / name)
    with weightcli.open(models / name) as ckpt:
        got = {t.name: ckpt.array(t.name) for t in ckpt.tensors() if not t.optimizer}
        modes = {t.quantized for t in ckpt.tensors() if not t.optimizer}
    assert set(got) == set(want)
    for key, value in want.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)
    assert modes and None not in modes


def test_inspect_shows_dequantized_statistics(models: Path) -> None:
    doc = run("inspect", models / "q8.keras", "--json").json()
    kernel = next(t for t in doc["tensors"] if t["name"] == "d1/kernel")
    assert kernel["quantized"] == "int8" and kernel["dtype"] == "int8"
    v = _keras_vars(models / "q8.keras")
    deq = v["d1/kernel"].astype(np.float32) / v["d1/kernel_scale"]
    assert kernel["dequantized"]["max"] == pytest.approx(float(deq.max()), rel=1e-6)
    assert kernel["dequantized"]["mean"] == pytest.approx(float(deq.mean()), rel=1e-5, abs=1e-7)
    emb = next(
        t for t in run("inspect", models / "e8.keras", "--json").json()["tensors"]
        if t["name"] == "emb/embeddings"
    )  # fmt: skip
    ve = _keras_vars(models / "e8.keras")
    deq = ve["emb/embeddings"].astype(np.float32) / ve["emb/embeddings_scale"][:, None]
    assert emb["dequantized"]["min"] == pytest.approx(float(deq.min()), rel=1e-6)


def test_scale_multiplies_the_effective_kernel(models: Path, tmp_path: Path) -> None:
    """The reported bug: scale 0.5 must halve the layer's weights, not double them."""
    out = tmp_path / "s.keras"
    res = run("scale", models / "q8.keras", "0.5", "-o", out)
    assert res.code == 0, res.err
    before, after = _keras_vars(models / "q8.keras"), _keras_vars(out)
    for layer in ("d1", "d2"):
        np.testing.assert_array_equal(after[f"{layer}/kernel"], before[f"{layer}/kernel"])
        eff_before = before[f"{layer}/kernel"] / before[f"{layer}/kernel_scale"]
        eff_after = after[f"{layer}/kernel"] / after[f"{layer}/kernel_scale"]
        np.testing.assert_allclose(eff_after, 0.5 * eff_before, rtol=1e-6)
        np.testing.assert_allclose(after[f"{layer}/bias"], 0.5 * before[f"{layer}/bias"], rtol=1e-6)
    # And Keras runs it: relu is homogeneous, so halving both layers gives
    # 0.25 * (y - b2) + 0.5 * b2 with y the original output and b2 the last bias.
    keras = keras_quiet()
    x = np.load(models / "x.npy")
    y0 = np.asarray(keras.models.load_model(models / "q8.keras")(x))
    y1 = np.asarray(keras.models.load_model(out)(x))
    b2 = before["d2/bias"]
    np.testing.assert_allclose(y1, 0.25 * (y0 - b2) + 0.5 * b2, rtol=1e-4, atol=1e-5)


def test_scale_of_sub_channel_int4(models: Path, tmp_path: Path) -> None:
    out = tmp_path / "s4.keras"
    assert run("scale", models / "q4.keras", "3", "-o", out).code == 0
    keras = keras_quiet()
    x = np.load(models / "x.npy")
    y0 = np.asarray(keras.models.load_model(models / "q4.keras")(x))
    y1 = np.asarray(keras.models.load_model(out)(x))
    np.testing.assert_allclose(y1, 3 * y0, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("args", [["clip", "--abs-max", "0.1"], ["quantize", "--bits", "4"]])
def test_transforms_that_cannot_act_on_codes_refuse(models: Path, tmp_path: Path, args) -> None:
    res = run(args[0], models / "q8.keras", *args[1:], "-o", tmp_path / "o.keras")
    assert res.code == 2 and "stored quantized" in res.err and "d1/kernel" in res.err
    assert not (tmp_path / "o.keras").exists()


def test_diff_compares_dequantized_weights(models: Path) -> None:
    res = run("diff", models / "q8.keras", models / "f.keras", "--atol", "0.01", "--json")
    assert res.code == 0, res.out
    doc = res.json()
    assert doc["counts"] == {"within tolerance": 2, "identical": 2}
    raw = run("diff", models / "q8.keras", models / "f.keras", "--no-dequantize", "--json")
    assert raw.code == 1 and raw.json()["counts"]["dtype differs"] == 2


def test_native_int8_equals_keras_quantize(models: Path, tmp_path: Path) -> None:
    """quantize --store keras-int8 writes what model.quantize("int8") writes, bit for bit,
    and Keras loads it as a quantized model that predicts as Keras's own."""
    out = tmp_path / "n8.keras"
    res = run("quantize", models / "f.keras", "--store", "keras-int8", "-o", out)
    assert res.code == 0, res.err
    mine, keras_own = _keras_vars(out), _keras_vars(models / "q8.keras")
    assert set(mine) == set(keras_own)
    for key in keras_own:
        assert mine[key].dtype == keras_own[key].dtype, key
        np.testing.assert_array_equal(mine[key], keras_own[key], err_msg=key)
    keras = keras_quiet()
    x = np.load(models / "x.npy")
    a, b = keras.models.load_model(out), keras.models.load_model(models / "q8.keras")
    assert a.get_layer("d1").quantization_mode == "int8"
    np.testing.assert_array_equal(np.asarray(a(x)), np.asarray(b(x)))
    # Embedding too.
    out_e = tmp_path / "e8.keras"
    assert run("quantize", models / "ef.keras", "--store", "keras-int8", "-o", out_e).code == 0
    mine, keras_own = _keras_vars(out_e), _keras_vars(models / "e8.keras")
    for key in keras_own:
        np.testing.assert_array_equal(mine[key], keras_own[key], err_msg=key)


def test_native_int8_refusals(models: Path, tmp_path: Path) -> None:
    from helpers import SAMPLES

    res = run(
        "quantize", SAMPLES / "mlp_keras3.h5", "--store", "keras-int8", "-o", tmp_path / "x.h5"
    )
    assert res.code == 2 and ".keras archive" in res.err
    res = run(
        "quantize",
        models / "f.keras",
        "--store",
        "keras-int8",
        "--bits",
        "4",
        "-o",
        tmp_path / "y.keras",
    )
    assert res.code == 2 and "--bits" in res.err
    res = run("quantize", models / "q8.keras", "--store", "keras-int8", "-o", tmp_path / "z.keras")
    assert res.code == 2 and "no float32 Dense" in res.err
    assert list(tmp_path.iterdir()) == []


def test_native_int8_refuses_nan(tmp_path: Path) -> None:
    from helpers import SAMPLES

    res = run(
        "quantize",
        SAMPLES / "mlp.keras",
        "--store",
        "keras-int8",
        "--allow-nonfinite",
        "-o",
        tmp_path / "a.keras",
    )
    assert res.code == 2 and "--allow-nonfinite does not apply" in res.err  # the request's rule
    assert not (tmp_path / "a.keras").exists()
    spoiled = tmp_path / "nan.keras"
    assert run("set", SAMPLES / "mlp.keras", "dense_1/bias=0", "-o", spoiled).code == 0
    np.save(tmp_path / "k.npy", np.full((20, 32), np.nan, np.float32))
    nan = tmp_path / "nan2.keras"
    res = run(
        "set", spoiled, f"dense_1/kernel={tmp_path / 'k.npy'}", "--allow-nonfinite", "-o", nan
    )
    assert res.code == 0, res.err
    res = run("quantize", nan, "--store", "keras-int8", "-o", tmp_path / "q.keras")
    assert res.code == 2 and "holds NaN or Inf" in res.err and not (tmp_path / "q.keras").exists()


def test_a_zero_scale_is_seen_as_nan_inf_and_refused_by_scale(tmp_path: Path) -> None:
    """An int8 layer whose scale holds a zero dequantizes to NaN/Inf (codes / 0): inspect
    and verify see it although codes and scale are each finite; scale refuses it."""
    from helpers import SAMPLES
    from helpers import run as cli

    src = SAMPLES / "mlp_int8.keras"
    zero = tmp_path / "zero.npy"
    np.save(zero, np.zeros(32, "float32"))
    bad = tmp_path / "bad.keras"
    res = cli("set", src, f"dense_1/kernel_scale={zero}", "-o", bad)
    assert res.code == 0, res.err
    assert cli("inspect", src, "--fail-on-nonfinite").code == 0  # the premise
    res = cli("inspect", bad, "--fail-on-nonfinite")
    assert res.code == 1 and "NaN/Inf" in res.err
    doc = cli("verify", bad, "--no-load", "--json").json()
    finite = next(c for c in doc["checks"] if c["name"] == "finite")
    assert finite["status"] == "FAIL" and "dense_1/kernel" in finite["detail"]
    res = cli("scale", bad, "0.5", "-o", tmp_path / "half.keras")
    assert res.code == 2 and "zero or NaN/Inf" in res.err
    assert not (tmp_path / "half.keras").exists()
    assert cli("scale", src, "0.5", "-o", tmp_path / "ok.keras").code == 0


def test_float16_reports_the_file_size_and_says_when_it_grew(tmp_path: Path) -> None:
    """A dtype change reports the file's size before and after (against os.stat), and
    says so when a small model's file grows."""
    import os

    from helpers import SAMPLES
    from helpers import run as cli

    out = tmp_path / "h.keras"
    res = cli("quantize", SAMPLES / "mlp.keras", "--dtype", "float16", "-o", out, "--json")
    doc = res.json()
    assert doc["size_before"] == os.stat(SAMPLES / "mlp.keras").st_size
    assert doc["size_after"] == os.stat(out).st_size
    table = cli("quantize", SAMPLES / "mlp.keras", "--dtype", "float16", "-o", tmp_path / "t.keras")
    if doc["size_after"] > doc["size_before"]:
        assert "larger (the container's own overhead" in table.out
    else:
        assert "larger" not in table.out
