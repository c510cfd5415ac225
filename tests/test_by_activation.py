"""scale --by-activation: every selected layer lands on the target, measured by Keras itself."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import SAMPLES, load, mlp_input, run
from test_bad_input import assert_clean_error

CAL = SAMPLES / "mlp_calibration.npy"


def layer_stat(model, layer: str, x: np.ndarray, stat: str) -> float:
    import keras

    y = np.abs(
        np.asarray(keras.Model(model.inputs, model.get_layer(layer).output)([x], training=False)),
        dtype=np.float64,
    )
    if stat == "mean-abs":
        return float(y.mean())
    if stat == "rms":
        return float(np.sqrt(np.mean(y * y)))
    return float(np.percentile(y, 99))


@pytest.mark.parametrize(
    ("name", "stat", "target"),
    [("mlp.keras", "mean-abs", 1.0), ("mlp_keras3.h5", "rms", 0.5), ("mlp.keras", "p99", 2.0)],
)
def test_every_layer_lands_on_target(name: str, stat: str, target: float, tmp_path: Path) -> None:
    src = SAMPLES / name
    out = tmp_path / ("out" + "".join(src.suffixes))
    res = run(
        "scale",
        src,
        "--by-activation",
        "--calibration",
        CAL,
        "--stat",
        stat,
        "--target",
        target,
        "-o",
        out,
        "--json",
    )
    assert res.code == 0, res.err
    doc = res.json()
    # The same JSON keys as every command's (the one dispatcher).
    assert doc["path"] == str(src) and doc["exit_code"] == 0
    layers = {a["layer"]: a for a in doc["activation"]}
    assert set(layers) == {"dense_1", "dense_2", "logits"}
    model = load(out, "keras3-full")
    x = np.load(CAL)
    for layer, a in layers.items():
        assert a["scaled"] and a["stat_after"] == pytest.approx(target, rel=0.01)
        assert layer_stat(model, layer, x, stat) == pytest.approx(
            target, rel=0.01
        )  # Keras, independently
    # Written by the surgery writer: only kernels and biases changed, history says how.
    assert sorted(t["name"] for t in doc["tensors"]) == sorted(
        f"{n}/{k}" for n in layers for k in ("kernel", "bias")
    )
    step = doc["history"]["steps"][0]
    assert step["by_activation"]["stat"] == stat and set(step["factors"]) == set(layers)
    assert np.isfinite(np.asarray(model(mlp_input(), training=False))).all()


def test_weights_only_with_architecture(tmp_path: Path) -> None:
    out = tmp_path / "w.weights.h5"
    res = run(
        "scale",
        SAMPLES / "mlp.weights.h5",
        "--by-activation",
        "--calibration",
        CAL,
        "--architecture",
        SAMPLES / "mlp.keras",
        "-o",
        out,
        "--json",
    )
    assert res.code == 0, res.err
    model = load(out, "keras3-weights-mlp")
    assert layer_stat(model, "logits", np.load(CAL), "mean-abs") == pytest.approx(1.0, rel=0.01)


def test_dead_layer_reported_not_divided(tmp_path: Path) -> None:
    src = tmp_path / "dead.h5"
    shutil.copyfile(SAMPLES / "mlp_keras3.h5", src)
    with h5py.File(src, "r+") as f:
        f["model_weights/dense_1/mlp/dense_1/kernel"][...] = 0
        f["model_weights/dense_1/mlp/dense_1/bias"][...] = -1  # relu(-1) = 0 everywhere
    res = run(
        "scale", src, "--by-activation", "--calibration", CAL, "-o", tmp_path / "o.h5", "--json"
    )
    assert res.code == 0, res.err
    layers = {a["layer"]: a for a in res.json()["activation"]}
    assert layers["dense_1"]["stat_before"] == 0 and not layers["dense_1"]["scaled"]
    assert "dead" in layers["dense_1"]["note"]
    assert layers["logits"]["scaled"] and layers["logits"]["stat_after"] == pytest.approx(
        1.0, rel=0.01
    )


def test_non_homogeneous_activation_reported(tmp_path: Path) -> None:
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((20,)),
            keras.layers.Dense(8, activation="tanh", name="squash"),
            keras.layers.Dense(2, name="head"),
        ]
    )
    src = tmp_path / "tanh.keras"
    model.save(src)
    res = run(
        "scale", src, "--by-activation", "--calibration", CAL, "-o", tmp_path / "a.keras", "--json"
    )
    assert res.code == 0, res.err
    layers = {a["layer"]: a for a in res.json()["activation"]}
    assert (
        not layers["squash"]["scaled"] and "not positively homogeneous" in layers["squash"]["note"]
    )
    assert layers["head"]["scaled"]
    explicit = run(
        "scale",
        src,
        "--by-activation",
        "--calibration",
        CAL,
        "-s",
        "squash",
        "-o",
        tmp_path / "b.keras",
        "--json",
    )
    assert explicit.code == 0
    (only,) = explicit.json()["activation"]
    assert only["layer"] == "squash" and only["scaled"]


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda p: np.save(p, np.zeros((10, 7), "float32")), "shape"),
        (lambda p: np.save(p, np.array([["a"] * 20] * 3)), "dtype"),
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: np.save(p, np.full((4, 20), np.nan, "float32")), "NaN"),
        (lambda p: np.save(p, np.zeros((0, 20), "float32")), "empty"),
    ],
    ids=["wrong-shape", "wrong-dtype", "empty-file", "nan", "no-samples"],
)
def test_bad_calibration(make, words: str, tmp_path: Path) -> None:
    cal = tmp_path / "cal.npy"
    make(cal)
    out = tmp_path / "o.keras"
    assert_clean_error(
        run("scale", SAMPLES / "mlp.keras", "--by-activation", "--calibration", cal, "-o", out),
        words,
    )
    assert not out.exists()


def test_refusals(tmp_path: Path) -> None:
    out = tmp_path / "o"
    assert_clean_error(
        run("scale", SAMPLES / "mlp_export", "--by-activation", "--calibration", CAL, "-o", out),
        "Keras layers",
    )
    assert_clean_error(
        run(
            "scale", SAMPLES / "mlp.keras", "2", "--by-activation", "--calibration", CAL, "-o", out
        ),
        "FACTOR",
    )
    assert_clean_error(
        run("scale", SAMPLES / "mlp.keras", "--by-activation", "-o", out), "--calibration"
    )
    assert_clean_error(
        run(
            "scale", SAMPLES / "mlp.weights.h5", "--by-activation", "--calibration", CAL, "-o", out
        ),
        "--architecture",
    )
    assert_clean_error(
        run(
            "scale",
            SAMPLES / "mlp.keras",
            "--by-activation",
            "--calibration",
            CAL,
            "--target",
            "0",
            "-o",
            out,
        ),
        "--target",
    )
    assert not out.exists()


def test_dry_run_measures_in_memory(tmp_path: Path) -> None:
    res = run(
        "scale",
        SAMPLES / "mlp.keras",
        "--by-activation",
        "--calibration",
        CAL,
        "--dry-run",
        "--json",
    )
    assert res.code == 0
    assert all(a["stat_after"] == pytest.approx(1.0, rel=0.01) for a in res.json()["activation"])
