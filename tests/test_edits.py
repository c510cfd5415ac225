"""``set`` and ``dump``: direct edits and exports, checked with numpy and Keras."""

from __future__ import annotations

import hashlib
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import SAMPLES, keras_quiet, run

import weightcli


def arrays(path: Path) -> dict[str, np.ndarray]:
    with weightcli.open(path) as ckpt:
        return {t.name: ckpt.array(t.name) for t in ckpt.tensors() if not t.optimizer}


@pytest.mark.parametrize(
    "source", ["mlp.keras", "mlp_keras3.h5", "mlp_export", "mlp_sharded/mlp.weights.json"]
)
def test_dump_then_set_is_a_round_trip(tmp_path: Path, source: str) -> None:
    npz = tmp_path / "w.npz"
    res = run("dump", SAMPLES / source, "-o", npz, "--json")
    assert res.code == 0, res.err
    data = np.load(npz)
    want = arrays(SAMPLES / source)
    assert sorted(data.files) == sorted(want)
    for name, value in want.items():
        assert data[name].dtype == value.dtype
        np.testing.assert_array_equal(data[name], value)
    out = tmp_path / (
        "same"
        + ("" if (SAMPLES / source).is_dir() else Path(source).name[Path(source).name.index(".") :])
    )
    res = run("set", SAMPLES / source, "--from", npz, "-o", out, "--json")
    assert res.code == 0, res.err
    assert res.json()["changed"] == 0
    for name, value in arrays(out).items():
        assert (
            hashlib.sha256(value.tobytes()).digest()
            == hashlib.sha256(want[name].tobytes()).digest()
        )
    # And a set that writes something: one array changed in the archive, only it changes.
    name = sorted(n for n, v in want.items() if v.dtype.kind == "f" and v.size > 1)[0]
    changed = {k: (v * 2 if k == name else v) for k, v in want.items()}
    npz2 = tmp_path / "w2.npz"
    np.savez(npz2, **changed)
    out2 = out.with_name("two" + out.name[len("same") :])
    res = run("set", SAMPLES / source, "--from", npz2, "-o", out2, "--json")
    assert res.code == 0, res.err
    assert res.json()["changed"] == 1
    got = arrays(out2)
    np.testing.assert_array_equal(got[name], want[name] * 2)
    assert all(np.array_equal(got[k], want[k]) for k in want if k != name)


def test_dump_npy_dir_and_limits(tmp_path: Path) -> None:
    out = tmp_path / "npy"
    assert (
        run("dump", SAMPLES / "mlp.keras", "-s", "dense_1", "--format", "npy-dir", "-o", out).code
        == 0
    )
    np.testing.assert_array_equal(
        np.load(out / "dense_1" / "kernel.npy"), arrays(SAMPLES / "mlp.keras")["dense_1/kernel"]
    )
    assert sorted(p.name for p in (out / "dense_1").iterdir()) == ["bias.npy", "kernel.npy"]
    res = run("dump", SAMPLES / "mlp.keras", "-o", tmp_path / "big.npz", "--max-bytes", "100")
    assert res.code == 2 and "--max-bytes" in res.err and not (tmp_path / "big.npz").exists()


def test_set_from_npy_and_constant_loads_in_keras(tmp_path: Path) -> None:
    new_kernel = np.random.default_rng(0).normal(size=(16, 3))  # float64: cast to float32
    np.save(tmp_path / "k.npy", new_kernel)
    out = tmp_path / "patched.keras"
    res = run(
        "set",
        SAMPLES / "mlp.keras",
        f"logits/kernel={tmp_path / 'k.npy'}",
        "dense_1/bias=0.25",
        "-o",
        out,
        "--json",
    )
    assert res.code == 0, res.err
    figs = {t["name"]: t["figures"][0] for t in res.json()["tensors"]}
    assert figs["logits/kernel"]["cast"] == "float64 -> float32"
    assert figs["logits/kernel"]["max_cast_error"] == pytest.approx(
        float(np.abs(new_kernel.astype(np.float32) - new_kernel).max())
    )
    model = keras_quiet().models.load_model(out, compile=False)
    np.testing.assert_array_equal(
        np.asarray(model.get_layer("logits").kernel), new_kernel.astype(np.float32)
    )
    np.testing.assert_array_equal(
        np.asarray(model.get_layer("dense_1").bias), np.full(32, 0.25, np.float32)
    )
    before, after = arrays(SAMPLES / "mlp.keras"), arrays(out)
    for name in ("dense_1/kernel", "dense_2/kernel", "dense_2/bias", "logits/bias"):
        np.testing.assert_array_equal(after[name], before[name])


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["dense_1/bais=0"], "nearest: dense_1/bias"),
        (["dense_1/bias={wrong}"], "shape (5,)"),
        (["--from", "{npz_bad}"], "nearest"),
        (["dense_1/bias"], "NAME=FILE.npy"),
        ([], "give NAME=FILE.npy"),
    ],
)
def test_set_bad_input(tmp_path: Path, args: list[str], says: str) -> None:
    np.save(tmp_path / "wrong.npy", np.zeros(5, "float32"))
    np.savez(tmp_path / "bad.npz", **{"nope/kernel": np.zeros(3)})
    filled = [a.format(wrong=tmp_path / "wrong.npy", npz_bad=tmp_path / "bad.npz") for a in args]
    out = tmp_path / "o.keras"
    res = run("set", SAMPLES / "mlp.keras", *filled, "-o", out)
    assert res.code == 2 and says in res.err, res.err
    assert not out.exists()


def test_set_refuses_floats_into_integers(tmp_path: Path) -> None:
    p = tmp_path / "ints.h5"
    with h5py.File(p, "w") as f:
        f["layer/counts"] = np.arange(4, dtype="int32")
    np.save(tmp_path / "f.npy", np.ones(4, "float32"))
    res = run("set", p, f"layer/counts={tmp_path / 'f.npy'}", "-o", tmp_path / "o.h5")
    assert res.code == 2 and "cannot be written into it" in res.err
    assert run("set", p, "layer/counts=7", "-o", tmp_path / "o.h5").code == 0
    with h5py.File(tmp_path / "o.h5") as f:
        np.testing.assert_array_equal(f["layer/counts"][()], np.full(4, 7, "int32"))


def _trainable(path: Path) -> dict[str, bool]:
    model = keras_quiet().models.load_model(path, compile=False)
    out = {}

    def walk(layer, prefix: str = "") -> None:
        out[prefix + layer.name] = layer.trainable
        for inner in getattr(layer, "layers", []):
            walk(inner, prefix + layer.name + "/")

    for layer in model.layers:
        walk(layer)
    return out


@pytest.mark.parametrize("source", ["mlp.keras", "mlp_keras3.h5", "mlp_folder"])
def test_freeze_sets_trainable_and_keeps_weights(tmp_path: Path, source: str) -> None:
    out = tmp_path / ("frozen" + ("" if (SAMPLES / source).is_dir() else Path(source).suffix))
    res = run("freeze", SAMPLES / source, "-s", "dense_*", "-o", out)
    assert res.code == 0, res.err
    flags = _trainable(out)
    assert flags["dense_1"] is False and flags["dense_2"] is False and flags["logits"] is True
    assert run("diff", out, SAMPLES / source).code == 0  # every weight as it was
    back = tmp_path / ("back" + ("" if (SAMPLES / source).is_dir() else Path(source).suffix))
    assert run("freeze", out, "-s", "dense_1", "--unfreeze", "-o", back).code == 0
    assert _trainable(back)["dense_1"] is True and _trainable(back)["dense_2"] is False


def test_freeze_nested_models(tmp_path: Path) -> None:
    keras = keras_quiet()
    i = keras.Input((16,))
    enc = keras.Model(i, keras.layers.Dense(8, name="enc_dense")(i), name="encoder")
    o = keras.Input((16,))
    keras.Model(o, keras.layers.Dense(3, name="out")(enc(o))).save(tmp_path / "n.keras")
    out = tmp_path / "f.keras"
    assert run("freeze", tmp_path / "n.keras", "-s", "encoder/*", "-o", out).code == 0
    flags = _trainable(out)
    assert flags["encoder/enc_dense"] is False and flags["out"] is True


@pytest.mark.parametrize(
    ("source", "args", "says"),
    [
        ("mlp.keras", ["-s", "nothing_*"], "matches no layer"),
        ("mlp.weights.h5", ["-s", "dense_1"], "stores no model config"),
        ("mlp_export", ["-s", "dense_1"], "stores no model config"),
        ("mlp.keras", [], "--select"),
    ],
)
def test_freeze_bad_input(tmp_path: Path, source: str, args: list[str], says: str) -> None:
    res = run("freeze", SAMPLES / source, *args, "-o", tmp_path / "o")
    assert res.code == 2 and says in res.err, res.err
    assert list(tmp_path.iterdir()) == []


SHAPES = [(64, 32), (3, 3, 16, 32), (5, 8, 24), (3, 3, 32, 1), (3, 3, 16, 8)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
    "name",
    ["glorot_uniform", "glorot_normal", "he_uniform", "he_normal", "lecun_uniform", "lecun_normal"],
)
def test_initializer_parameters_match_keras(name: str, shape: tuple[int, ...]) -> None:
    """Our distribution's parameters are Keras's on the same shape (its fans), and the
    values drawn look alike: the same bounds, the same standard deviation within noise."""
    from weightcli.transforms import initializers as init

    keras = keras_quiet()
    theirs = np.asarray(
        keras.initializers.get({"class_name": name, "config": {"seed": 1}})(shape)
    ).astype(np.float64)
    rng = np.random.default_rng(1)
    ours = next(init.values(name, shape, rng, [int(np.prod(shape))])).reshape(shape)
    params = init.parameters(name, shape)
    fan_in, fan_out = init.compute_fans(shape)
    from keras.src.initializers.random_initializers import compute_fans

    assert (fan_in, fan_out) == tuple(int(f) for f in compute_fans(shape))
    if "limit" in params:
        assert np.abs(theirs).max() <= params["limit"] + 1e-7
        assert np.abs(ours).max() <= params["limit"]
        assert np.abs(theirs).max() > 0.9 * params["limit"]
    else:
        assert np.abs(theirs).max() <= 2 * params["stddev"] + 1e-6
        assert np.abs(ours).max() <= 2 * params["stddev"]
    assert ours.std() == pytest.approx(theirs.std(), rel=0.15)


def test_reinit_writes_reproducible_values_keras_loads(tmp_path: Path) -> None:
    a, b = tmp_path / "a.keras", tmp_path / "b.keras"
    for out in (a, b):
        res = run(
            "reinit",
            SAMPLES / "cnn.keras",
            "-s",
            "logits",
            "--kind",
            "kernel",
            "--initializer",
            "orthogonal",
            "--seed",
            "3",
            "-o",
            out,
        )
        assert res.code == 0, res.err
    assert run("diff", a, b).code == 0  # same seed, same values
    model = keras_quiet().models.load_model(a, compile=False)
    w = np.asarray(model.get_layer("logits").kernel, np.float64)
    np.testing.assert_allclose(w.T @ w, np.eye(w.shape[1]), atol=1e-5)  # orthogonal columns
    before, after = arrays(SAMPLES / "cnn.keras"), arrays(a)
    for name in before:
        if name != "logits/kernel":
            np.testing.assert_array_equal(after[name], before[name])
    c = tmp_path / "c.keras"
    assert (
        run(
            "reinit",
            SAMPLES / "cnn.keras",
            "-s",
            "logits/bias",
            "--initializer",
            "constant",
            "--value",
            "0.5",
            "-o",
            c,
        ).code
        == 0
    )
    np.testing.assert_array_equal(arrays(c)["logits/bias"], np.full(4, 0.5, np.float32))
    res = run("reinit", SAMPLES / "cnn.keras", "--initializer", "zeros", "-o", tmp_path / "d.keras")
    assert res.code == 2 and "--select" in res.err
    res = run(
        "reinit",
        SAMPLES / "cnn.keras",
        "-s",
        "logits",
        "--initializer",
        "zeros",
        "--value",
        "1",
        "-o",
        tmp_path / "d.keras",
    )
    assert res.code == 2 and "--value" in res.err


CUSTOM = """
import keras


@keras.saving.register_keras_serializable(package="weightcli_test")
class Offset(keras.layers.Layer):
    def build(self, input_shape):
        self.offset = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="offset")

    def call(self, x):
        return x + self.offset
"""


def test_custom_objects_let_custom_layers_load(tmp_path: Path) -> None:
    import importlib.util

    (tmp_path / "custom.py").write_text(CUSTOM)
    spec = importlib.util.spec_from_file_location("weightcli_test_custom", tmp_path / "custom.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the class registered here, to build and save the model
    keras = keras_quiet()
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3, name="d"), module.Offset(name="off")]
    )
    model.save(tmp_path / "custom.keras")
    # verify loads in a fresh child process: without the file the class is unknown.
    res = run("verify", tmp_path / "custom.keras", "--json")
    loads = next(c for c in res.json()["checks"] if c["name"] == "loads")
    assert res.code == 1 and loads["status"] == "FAIL"
    res = run(
        "verify", tmp_path / "custom.keras", "--custom-objects", tmp_path / "custom.py", "--json"
    )
    assert res.code == 0, res.out
    (tmp_path / "broken.py").write_text("raise RuntimeError('no GPU here')\n")
    res = run("verify", tmp_path / "custom.keras", "--custom-objects", tmp_path / "broken.py")
    assert res.code == 2 and "raised RuntimeError: no GPU here" in res.err
    assert len(res.err.strip().splitlines()) == 1


def test_measure_original_is_the_tutorials_method(tmp_path: Path) -> None:
    cal = SAMPLES / "mlp_calibration.npy"
    seq = run(
        "scale",
        SAMPLES / "mlp.keras",
        "--by-activation",
        "--calibration",
        cal,
        "--dry-run",
        "--json",
    ).json()
    orig = run(
        "scale", SAMPLES / "mlp.keras", "--by-activation", "--calibration", cal, "--measure", "original",
        "--dry-run", "--json",
    ).json()  # fmt: skip
    s = {lp["layer"]: lp for lp in seq["activation"]}
    o = {lp["layer"]: lp for lp in orig["activation"]}
    # The first layer is measured the same way by both; later ones differ: "original"
    # measures them on the unmodified model, so they do not all land on the target.
    assert o["dense_1"]["stat_before"] == pytest.approx(s["dense_1"]["stat_before"])
    assert o["dense_2"]["stat_before"] != pytest.approx(s["dense_2"]["stat_before"])
    assert all(lp["stat_after"] == pytest.approx(1, rel=0.01) for lp in s.values() if lp["scaled"])
    assert o["dense_1"]["stat_after"] == pytest.approx(1, rel=0.01)


def test_a_missing_choice_option_is_one_line(tmp_path: Path) -> None:
    # click lists the choices one per line; the user gets one line naming them all.
    res = run("reinit", SAMPLES / "mlp.keras", "-o", tmp_path / "r.keras")
    assert res.code == 2, res.err
    assert len(res.err.strip().splitlines()) == 1, res.err
    assert "--initializer" in res.err and "glorot_uniform, glorot_normal" in res.err
    assert list(tmp_path.iterdir()) == []
