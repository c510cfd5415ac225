"""No silent wrong results: each numbered failure a new user hit (exit 0 with a wrong or
ignored result), pinned. Numbers and values are checked against numpy, TensorFlow's
reader and Keras loading the file."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import SAMPLES, run

import weightcli


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def nested(tmp_path_factory) -> Path:
    """The issue's transfer model: a Dense head on a nested functional encoder, as .keras
    and legacy .h5, plus a model whose every Dense layer is nested, and calibration data."""
    from helpers import keras_quiet

    keras = keras_quiet()
    d = tmp_path_factory.mktemp("nested")
    keras.utils.set_random_seed(0)
    i = keras.Input((16,))
    enc = keras.Model(i, keras.layers.Dense(8, name="enc_dense")(i), name="encoder")
    o = keras.Input((16,))
    m = keras.Model(o, keras.layers.Dense(3, name="out")(enc(o)))
    m.save(d / "n.keras")
    m.save(d / "n.h5")
    o2 = keras.Input((16,))
    only = keras.Model(o2, keras.layers.Activation("relu", name="act")(enc(o2)))
    only.save(d / "all_nested.keras")
    rng = np.random.default_rng(0)
    np.save(d / "cal.npy", rng.normal(size=(32, 16)).astype("float32"))
    return d


# 1 -------------------------------------------------------------------------------------------
def test_nested_functional_models_are_named_alike_in_every_keras_format(nested: Path) -> None:
    res = run("diff", nested / "n.keras", nested / "n.h5", "--json")
    assert res.code == 0, res.out
    assert res.json()["counts"] == {"identical": 4}
    for f in ("n.keras", "n.h5"):
        doc = run("inspect", nested / f, "-s", "encoder/*", "--json").json()
        assert sorted(t["name"] for t in doc["tensors"]) == [
            "encoder/enc_dense/bias",
            "encoder/enc_dense/kernel",
        ]


# 2 -------------------------------------------------------------------------------------------
def test_overflow_is_refused_and_nothing_written(tmp_path: Path) -> None:
    out = tmp_path / "x.keras"
    res = run("scale", SAMPLES / "mlp.keras", "1e39", "-o", out)
    assert res.code == 2 and "NaN/Inf" in res.err and "--allow-nonfinite" in res.err
    assert not out.exists() and list(tmp_path.iterdir()) == []
    # A dry run refuses it too.
    assert run("scale", SAMPLES / "mlp.keras", "1e39", "--dry-run").code == 2
    # float16: 65500 * 2 is beyond its range.
    src = tmp_path / "h.h5"
    with h5py.File(src, "w") as f:
        f["dense/kernel"] = np.array([[65500.0, 1.0], [2.0, -3.0]], "float16")
    res = run("scale", src, "2", "-o", tmp_path / "h2.h5")
    assert res.code == 2 and "dense/kernel" in res.err and "float16" in res.err
    assert not (tmp_path / "h2.h5").exists()
    res = run("scale", src, "2", "-o", tmp_path / "h2.h5", "--allow-nonfinite")
    assert res.code == 0 and "NaN/Inf before -> after" in res.out and "0 -> 1" in res.out
    with h5py.File(tmp_path / "h2.h5") as f:
        assert np.isinf(f["dense/kernel"][0, 0])


# 3 -------------------------------------------------------------------------------------------
def test_by_type_on_a_file_without_layer_classes(tmp_path: Path) -> None:
    for args in (["0.9", "--by-type", "Dense=0.5"], ["--by-type", "Dense=0.5"]):
        res = run("scale", SAMPLES / "mlp_export", *args, "-o", tmp_path / "o")
        assert res.code == 2 and "records none" in res.err and "--by-type" in res.err, res.err
        assert not (tmp_path / "o").exists()
    res = run(
        "scale", SAMPLES / "mlp.keras", "0.9", "--by-type", "Conv2D=0.5", "-o", tmp_path / "x.keras"
    )
    assert res.code == 2 and "Conv2D" in res.err and "classes here: Dense" in res.err


# 4 -------------------------------------------------------------------------------------------
def test_clip_bounds_apply_to_infinities_as_np_clip(tmp_path: Path) -> None:
    out = tmp_path / "c.h5"
    res = run("clip", SAMPLES / "mlp_nan.h5", "--abs-max", "0.3", "-o", out)
    assert res.code == 0, res.err
    with h5py.File(SAMPLES / "mlp_nan.h5") as f, h5py.File(out) as g:
        for name in ("dense_2", "dense_1"):
            path = f"model_weights/{name}/mlp/{name}/kernel"
            x, y = f[path][()], g[path][()]
            np.testing.assert_array_equal(y, np.clip(x, -0.3, 0.3))
        assert not np.isinf(g["model_weights/dense_2/mlp/dense_2/kernel"][()]).any()


def test_no_numpy_warning_reaches_stderr(tmp_path: Path) -> None:
    for args in (
        ["scale", SAMPLES / "mlp_nan.h5", "0.5", "-o", tmp_path / "s.h5"],
        ["clip", SAMPLES / "mlp_nan.h5", "--sigma", "2", "-o", tmp_path / "c.h5"],
        ["quantize", SAMPLES / "mlp_nan.h5", "-o", tmp_path / "q.h5"],
        ["diff", SAMPLES / "mlp_nan.h5", SAMPLES / "mlp_keras3.h5"],
    ):
        res = subprocess.run(
            [sys.executable, "-m", "weightcli", *map(str, args)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert res.returncode in (0, 1) and res.stderr == "", (args, res.stderr)


# 5 -------------------------------------------------------------------------------------------
def test_by_activation_walks_nested_models(nested: Path, tmp_path: Path) -> None:
    res = run(
        "scale", nested / "n.keras", "--by-activation", "--calibration", nested / "cal.npy",
        "-o", tmp_path / "b.keras", "--json",
    )  # fmt: skip
    assert res.code == 0, res.err
    layers = {lp["layer"]: lp for lp in res.json()["activation"]}
    assert set(layers) == {"encoder/enc_dense", "out"}
    assert all(
        lp["scaled"] and lp["stat_after"] == pytest.approx(1, rel=0.01) for lp in layers.values()
    )
    res = run(
        "scale", nested / "all_nested.keras", "--by-activation", "--calibration",
        nested / "cal.npy", "-o", tmp_path / "c.keras", "--json",
    )  # fmt: skip
    assert res.code == 0, res.err
    assert [lp["layer"] for lp in res.json()["activation"]] == ["encoder/enc_dense"]


# 6 -------------------------------------------------------------------------------------------
def test_quantize_dtype_with_bits_is_refused(tmp_path: Path) -> None:
    for extra in (["--bits", "4"], ["--bits", "8"], ["--scheme", "asymmetric"], ["--axis", "0"]):
        res = run(
            "quantize",
            SAMPLES / "mlp.keras",
            "--dtype",
            "float16",
            *extra,
            "-o",
            tmp_path / "q.keras",
        )
        assert res.code == 2 and "--dtype" in res.err, extra
    assert not (tmp_path / "q.keras").exists()


# 7 -------------------------------------------------------------------------------------------
def test_dry_run_checks_what_a_real_run_checks(tmp_path: Path) -> None:
    m = tmp_path / "m.h5"
    shutil.copyfile(SAMPLES / "mlp_keras3.h5", m)
    res = run("scale", m, "2", "-o", m, "--dry-run")
    assert res.code == 2 and "output is the input" in res.err
    taken = tmp_path / "taken.h5"
    taken.write_bytes(b"x")
    res = run("scale", m, "2", "-o", taken, "--dry-run")
    assert res.code == 2 and "--force" in res.err
    res = run("scale", m, "2", "-o", tmp_path / "x.keras", "--dry-run")
    assert res.code == 2
    assert run("scale", m, "2", "-o", tmp_path / "ok.h5", "--dry-run").code == 0
    assert not (tmp_path / "ok.h5").exists()


# 8 -------------------------------------------------------------------------------------------
def test_recursive_verify_reports_a_model_it_cannot_read(tmp_path: Path) -> None:
    shutil.copyfile(SAMPLES / "mlp_keras3.h5", tmp_path / "good.h5")
    (tmp_path / "crashed").mkdir()
    (tmp_path / "crashed" / "model.h5").write_bytes(b"")  # a crashed save
    (tmp_path / "notes.txt").write_text("not a model")
    res = run("verify", "-r", tmp_path, "--no-load", "--json")
    assert res.code == 2
    lines = res.lines()
    assert lines[-1]["summary"]["models"] == 2 and lines[-1]["summary"]["errors"] == 1
    bad = next(d for d in lines[:-1] if d["path"].endswith("model.h5"))
    assert bad["exit_code"] == 2 and "empty" in bad["error"]


# 9 -------------------------------------------------------------------------------------------
def test_a_run_that_changes_nothing_leaves_the_file_untouched(tmp_path: Path) -> None:
    clean, dirty = tmp_path / "clean.h5", tmp_path / "dirty.h5"
    shutil.copyfile(SAMPLES / "mlp_keras3.h5", clean)
    shutil.copyfile(SAMPLES / "mlp_nan.h5", dirty)
    before = sha(clean)
    stamp = clean.stat().st_mtime_ns
    res = run("clip", "-r", tmp_path, "--nonfinite", "zero", "--in-place", "--json")
    assert res.code == 0, res.err
    docs = {Path(d["path"]).name: d for d in res.lines()[:-1]}
    assert docs["clean.h5"]["untouched"] is True and docs["clean.h5"]["output"] is None
    assert sha(clean) == before and clean.stat().st_mtime_ns == stamp
    assert docs["dirty.h5"]["changed"] == 1 and docs["dirty.h5"]["untouched"] is False
    assert run("inspect", dirty, "--fail-on-nonfinite").code == 0
    # With -o the copy is still written.
    res = run("clip", clean, "--nonfinite", "zero", "-o", tmp_path / "copy.h5")
    assert res.code == 0 and (tmp_path / "copy.h5").is_file()


# 10 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("source", "name"),
    [
        ("mlp_keras3.h5", "x.keras"),
        ("mlp.keras", "x.h5"),
        ("mlp.weights.h5", "x.h5"),
        ("mlp_keras3.h5", "x.weights.h5"),
        ("mlp_export", "x.keras"),
    ],
)
def test_an_output_suffix_that_contradicts_the_format(
    tmp_path: Path, source: str, name: str
) -> None:
    res = run("scale", SAMPLES / source, "0.5", "-o", tmp_path / name)
    assert res.code == 2 and "the name says" in res.err
    assert list(tmp_path.iterdir()) == []


# 11 ------------------------------------------------------------------------------------------
def test_verify_reports_what_keras_does_with_renamed_layers(tmp_path: Path) -> None:
    from helpers import keras_quiet

    keras = keras_quiet()
    model = keras.models.load_model(SAMPLES / "mlp.keras", compile=False)
    config = model.get_config()
    for layer in config["layers"]:
        layer["config"]["name"] = "renamed_" + layer["config"]["name"]
    keras.Sequential.from_config(config).save(tmp_path / "renamed.keras")
    res = run(
        "verify", SAMPLES / "mlp.weights.h5", "--architecture", tmp_path / "renamed.keras", "--json"
    )
    assert res.code == 0, res.out
    loads = next(c for c in res.json()["checks"] if c["name"] == "loads")
    assert loads["status"] == "WARN" and "by position" in loads["detail"]
    # And the outputs are the original model's: Keras really loaded the weights.
    res = run(
        "verify", SAMPLES / "mlp.weights.h5", "--architecture", tmp_path / "renamed.keras",
        "--reference", SAMPLES / "mlp.keras", "--json",
    )  # fmt: skip
    match = next(c for c in res.json()["checks"] if c["name"] == "outputs match reference")
    assert match["status"] == "PASS"


# 12 ------------------------------------------------------------------------------------------
def test_quantize_to_float16_beyond_its_range_names_the_tensor(tmp_path: Path) -> None:
    src = tmp_path / "big.h5"
    with h5py.File(src, "w") as f:
        f["dense/kernel"] = np.array([[1e6, 1.0], [2.0, 3.0]], "float32")
    res = run("quantize", src, "--dtype", "float16", "-o", tmp_path / "h.h5")
    assert res.code == 2 and "dense/kernel" in res.err and "float16" in res.err
    assert "math domain" not in res.err and not (tmp_path / "h.h5").exists()


# 13 ------------------------------------------------------------------------------------------
def test_tf_checkpoint_output_is_found_by_latest_checkpoint(tmp_path: Path) -> None:
    import tensorflow as tf

    out = tmp_path / "ckpts"
    out.mkdir()
    res = run("scale", SAMPLES / "mlp_ckpt" / "ckpt", "2", "-s", "logits", "-o", f"{out}/")
    assert res.code == 0, res.err
    assert (out / "ckpt.index").is_file() and not (tmp_path / "ckpts.index").exists()
    latest = tf.train.latest_checkpoint(str(out))
    assert latest == str(out / "ckpt")
    reader = tf.train.load_checkpoint(latest)
    assert reader.get_variable_to_shape_map()


# 14 ------------------------------------------------------------------------------------------
def test_in_place_writes_through_a_symbolic_link(tmp_path: Path) -> None:
    target = tmp_path / "real.h5"
    shutil.copyfile(SAMPLES / "mlp_keras3.h5", target)
    link = tmp_path / "link.h5"
    link.symlink_to(target)
    before = sha(target)
    assert run("scale", link, "2", "--in-place").code == 0
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert sha(target) != before
    d = weightcli.diff(target, SAMPLES / "mlp_keras3.h5")
    assert not d.equal


# smaller -------------------------------------------------------------------------------------
def test_json_of_one_path_has_the_batch_shape() -> None:
    doc = run("inspect", SAMPLES / "mlp_nan.h5", "--fail-on-nonfinite", "--json", "--no-progress")
    assert doc.code == 1 and doc.json()["exit_code"] == 1
    assert doc.json()["path"] == str(SAMPLES / "mlp_nan.h5")


def test_scale_leaves_normalisation_alone_unless_named(tmp_path: Path) -> None:
    res = run("scale", SAMPLES / "cnn.keras", "0.5", "-o", tmp_path / "s.keras", "--json")
    doc = res.json()
    assert res.code == 0
    assert not any(t["name"].startswith("bn/") for t in doc["tensors"])
    assert sorted(doc["left_out"]) == [
        "bn/beta",
        "bn/gamma",
        "bn/moving_mean",
        "bn/moving_variance",
    ]
    text = run("scale", SAMPLES / "cnn.keras", "0.5", "-o", tmp_path / "t.keras").out
    assert "left out 4 normalisation tensors" in text
    res = run(
        "scale",
        SAMPLES / "cnn.keras",
        "0.5",
        "--kind",
        "gamma",
        "-o",
        tmp_path / "g.keras",
        "--json",
    )
    assert [t["name"] for t in res.json()["tensors"]] == ["bn/gamma"]


def test_totals_count_the_tensors_shown() -> None:
    doc = run("scale", SAMPLES / "mlp.keras", "2", "--dry-run", "-s", "logits", "--json").json()
    assert doc["total"] == 6 and doc["changed"] == 2


def test_keras_archive_lists_layers_in_model_order() -> None:
    doc = run("inspect", SAMPLES / "mlp.keras", "--all", "--no-stats", "--json").json()
    names = [t["name"] for t in doc["tensors"]]
    assert names[:6] == [
        "dense_1/kernel", "dense_1/bias", "dense_2/kernel", "dense_2/bias",
        "logits/kernel", "logits/bias",
    ]  # fmt: skip
    assert all(n.startswith("optimizer/") for n in names[6:])


def test_tables_never_split_a_number(monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    doc = run("inspect", SAMPLES / "cnn.keras", "--json").json()
    text = run("inspect", SAMPLES / "cnn.keras").out
    from weightcli.report import fmt_num

    for t in doc["tensors"]:
        for key in ("min", "max", "mean"):
            assert fmt_num(t["stats"][key]) in text, (t["name"], key)


def test_verify_keeps_framework_chatter_off_stderr() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "weightcli", "verify", str(SAMPLES / "mlp_tfkeras.h5")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout
    assert res.stderr == ""
