"""``transplant``: weights moved between models, checked by loading the result in Keras or
TensorFlow and running it."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import SAMPLES, keras_quiet, mlp_input, run

import weightcli


def _digest_of(path: Path, name: str) -> str:
    with weightcli.open(path) as ckpt:
        return hashlib.sha256(ckpt.array(name).tobytes()).hexdigest()


def test_transfer_learning_with_map(tmp_path: Path) -> None:
    """A trained base under new names plus a new head: after transplant the new model's
    base computes exactly what the trained base computes; the head keeps its bytes."""
    keras = keras_quiet()
    keras.utils.set_random_seed(7)
    new = keras.Sequential(
        [
            keras.Input((20,)),
            keras.layers.Dense(32, activation="relu", name="backbone_1"),
            keras.layers.Dense(16, activation="relu", name="backbone_2"),
            keras.layers.Dense(5, name="new_head"),
        ]
    )
    new.save(tmp_path / "new.keras")
    out = tmp_path / "ready.keras"
    res = run(
        "transplant", SAMPLES / "mlp.keras", tmp_path / "new.keras",
        "--map", "dense_1/*=backbone_1/*", "--map", "dense_2/*=backbone_2/*",
        "-o", out, "--json",
    )  # fmt: skip
    assert res.code == 0, res.err
    doc = res.json()
    status = {r["target"]: r["status"] for r in doc["tensors"]}
    assert status["backbone_1/kernel"] == "copied via rename"
    assert status["new_head/kernel"] == "kept: no source"
    assert doc["unused"] == ["logits/kernel", "logits/bias"]
    x = mlp_input()
    base = keras.models.load_model(SAMPLES / "mlp.keras", compile=False)
    ready = keras.models.load_model(out, compile=False)
    want = keras.Model(base.inputs, base.get_layer("dense_2").output)(x)
    got = keras.Model(ready.inputs, ready.get_layer("backbone_2").output)(x)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    for name in ("new_head/kernel", "new_head/bias"):
        assert _digest_of(out, name) == _digest_of(tmp_path / "new.keras", name)


def test_keras2_into_keras3_by_order(tmp_path: Path) -> None:
    keras = keras_quiet()
    rebuilt = keras.Sequential(
        [
            keras.Input((20,)),
            keras.layers.Dense(32, activation="relu", name="a"),
            keras.layers.Dense(16, activation="relu", name="b"),
            keras.layers.Dense(3, name="c"),
        ]
    )
    rebuilt.save(tmp_path / "rebuilt.keras")
    out = tmp_path / "ported.keras"
    res = run(
        "transplant", SAMPLES / "mlp_tfkeras.h5", tmp_path / "rebuilt.keras",
        "--match-by", "order", "-o", out, "--strict",
    )  # fmt: skip
    assert res.code == 0, res.err
    import tf_keras

    x = mlp_input()
    want = tf_keras.models.load_model(SAMPLES / "mlp_tfkeras.h5", compile=False)(x)
    got = keras.models.load_model(out, compile=False)(x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)


def test_tf_checkpoint_into_savedmodel(tmp_path: Path) -> None:
    import tensorflow as tf

    spoiled = tmp_path / "spoiled"
    assert run("scale", SAMPLES / "mlp_export", "3", "-o", spoiled).code == 0
    out = tmp_path / "restored"
    res = run("transplant", SAMPLES / "mlp_ckpt" / "ckpt", spoiled, "-o", out, "--json")
    assert res.code == 0, res.err
    x = tf.constant(mlp_input())
    original, restored = (
        tf.saved_model.load(str(SAMPLES / "mlp_export")),
        tf.saved_model.load(str(out)),
    )
    want, got = original.serve(x), restored.serve(x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6)
    # Both copies of every variable (Keras 3 export keeps two) were written.
    assert run("verify", out, "--no-load").code == 0
    assert run("diff", out, SAMPLES / "mlp_export").code == 0


def test_weights_files_both_ways_shapes_strict_dry_run(tmp_path: Path) -> None:
    legacy = tmp_path / "legacy.h5"
    shutil.copyfile(SAMPLES / "mlp_tfkeras_weights.h5", legacy)
    with h5py.File(legacy, "r+") as f:  # spoil a kernel so the transplant has work to do
        ds = f["dense_1/dense_1/kernel:0"]
        ds[...] = np.zeros(ds.shape, ds.dtype)
    before = legacy.read_bytes()
    res = run("transplant", SAMPLES / "mlp.weights.h5", legacy, "--dry-run", "--json")
    assert res.code == 0 and legacy.read_bytes() == before
    assert res.json()["dry_run"] is True
    out = tmp_path / "fixed.h5"
    assert run("transplant", SAMPLES / "mlp.weights.h5", legacy, "-o", out).code == 0
    ver = run("verify", out, "--reference", SAMPLES / "mlp.weights.h5", "--no-load", "--json")
    assert ver.code == 0, ver.out
    back = tmp_path / "back.weights.h5"
    assert run("transplant", out, SAMPLES / "mlp.weights.h5", "-o", back).code == 0
    assert run("diff", back, SAMPLES / "mlp.weights.h5").code == 0
    # A shape mismatch is reported, not copied; --strict makes it exit 1.
    keras = keras_quiet()
    other = keras.Sequential(
        [
            keras.Input((20,)),
            keras.layers.Dense(32, name="dense_1"),
            keras.layers.Dense(7, name="dense_2"),
        ]
    )
    other.save(tmp_path / "other.keras")
    res = run("transplant", SAMPLES / "mlp.keras", tmp_path / "other.keras", "--dry-run", "--json")
    assert res.code == 0, res.err
    rows = {r["target"]: r for r in res.json()["tensors"]}
    assert rows["dense_1/kernel"]["status"] == "copied"
    assert rows["dense_2/kernel"]["status"] == "skipped: shape (32, 16) vs (32, 7)"
    strict = run(
        "transplant", SAMPLES / "mlp.keras", tmp_path / "other.keras", "--dry-run", "--strict"
    )
    assert strict.code == 1 and "--strict" in strict.err


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["missing.keras", "{mlp}"], "no such file"),
        (["{mlp}", "{truncated}"], "truncated"),
        (["{cnn}", "{mlp}"], "--map"),
        (["{mlp}", "{mlp}", "--map", "nothing/*=x/*", "--dry-run"], None),
    ],
)
def test_bad_input(tmp_path: Path, args: list[str], says: str | None) -> None:
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes((SAMPLES / "mlp_keras3.h5").read_bytes()[:3000])
    filled = [
        a.format(mlp=SAMPLES / "mlp.keras", cnn=SAMPLES / "cnn.keras", truncated=truncated)
        for a in args
    ]
    res = run("transplant", *filled, "-o", tmp_path / "o.keras")
    if says is None:  # a map rule that renames nothing: a warning in the report
        assert res.code == 0 and "warning: map nothing/*=x/* renames no source tensor" in res.out
    else:
        assert res.code == 2 and says in res.err and len(res.err.strip().splitlines()) == 1
    assert not (tmp_path / "o.keras").exists() and not list(tmp_path.glob(".*.tmp"))
    taken = tmp_path / "taken.keras"
    taken.write_bytes(b"x")
    res = run("transplant", SAMPLES / "mlp.keras", SAMPLES / "mlp.keras", "-o", taken)
    assert res.code == 2 and "already exists" in res.err


def test_from_ema_equals_keras_finalize(tmp_path: Path) -> None:
    """OUT's weights equal the averages Keras itself swaps in at the end of training."""
    keras = keras_quiet()
    keras.utils.set_random_seed(0)
    m = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(3, name="d"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.Dense(2, name="e"),
        ]
    )
    m.compile(keras.optimizers.Adam(0.1, use_ema=True, ema_momentum=0.5), "mse")
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    for _ in range(5):  # train_on_batch: the model keeps its raw weights, EMA apart
        m.train_on_batch(x, np.ones((32, 2), "float32"))
    m.save(tmp_path / "ema.keras")
    out = tmp_path / "export.keras"
    res = run("transplant", tmp_path / "ema.keras", tmp_path / "ema.keras", "--from-ema", "-o", out)
    assert res.code == 0, res.err
    want = keras.models.load_model(tmp_path / "ema.keras")
    raw = [np.asarray(w).copy() for w in want.weights]
    want.optimizer.finalize_variable_values(want.trainable_variables)
    got = keras.models.load_model(out)
    changed = 0
    for w_raw, w_want, w_got in zip(raw, want.weights, got.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(w_got), np.asarray(w_want), err_msg=w_want.path)
        changed += not np.array_equal(w_raw, np.asarray(w_want))
    assert changed >= 4  # premise: the averages differ from the raw weights
    # A file without averages: one clear line.
    res = run(
        "transplant",
        SAMPLES / "mlp.keras",
        SAMPLES / "mlp.keras",
        "--from-ema",
        "-o",
        tmp_path / "x.keras",
    )
    assert res.code == 2 and "moving averages" in res.err


def test_include_optimizer_moves_optimizer_state(tmp_path: Path) -> None:
    target = tmp_path / "t.keras"
    assert run("scale", SAMPLES / "mlp.keras", "0", "--kind", "kernel", "-o", target).code == 0
    without = run("transplant", SAMPLES / "mlp.keras", target, "--dry-run", "--json").json()
    assert not any(r["target"].startswith("optimizer/") for r in without["tensors"])
    with_opt = run(
        "transplant", SAMPLES / "mlp.keras", target, "--include-optimizer", "--dry-run", "--json"
    ).json()
    assert any(
        r["target"].startswith("optimizer/") and r["status"] == "copied"
        for r in with_opt["tensors"]
    )
