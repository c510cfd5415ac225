""".tflite read (stores/tflite.py: one module and one registry line): models converted by
TensorFlow's own converter (float32, dynamic-range int8, float16, full int8); every
constant tensor weightcli lists agrees with the interpreter's ``get_tensor_details`` and
``get_tensor``; damaged files give one line and exit 2."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest
from helpers import keras_quiet, run
from test_bad_input import assert_clean_error

import weightcli

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import tensorflow as tf

    keras = keras_quiet()
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inp)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(64, activation="relu", name="fc")(x)  # 9,216 weights: quantized
    model = keras.Model(inp, keras.layers.Dense(5, name="head")(x))
    root = tmp_path_factory.mktemp("tflite")
    rng = np.random.default_rng(0)

    def representative():
        for _ in range(8):
            yield [rng.standard_normal((1, 8, 8, 3)).astype("float32")]

    out = {}
    for name in ("f32", "dynamic", "f16", "int8"):
        conv = tf.lite.TFLiteConverter.from_keras_model(model)
        if name != "f32":
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
        if name == "f16":
            conv.target_spec.supported_types = [tf.float16]
        if name == "int8":
            conv.representative_dataset = representative
        out[name] = root / f"{name}.tflite"
        out[name].write_bytes(conv.convert())
    return out


@pytest.mark.parametrize("name", ["f32", "dynamic", "f16", "int8"])
def test_constants_agree_with_the_interpreter(converted, name: str) -> None:
    import tensorflow as tf

    path = converted[name]
    interpreter = tf.lite.Interpreter(str(path))
    interpreter.allocate_tensors()
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    doc = run("inspect", path, "--json").json()
    assert doc["format"] == "tflite" and doc["tensors"]
    with weightcli.open(path) as ckpt:
        for t in doc["tensors"]:
            index = int(t["path"].split(":")[1])
            d = details[index]
            assert t["name"].rstrip("_") == d["name"]
            assert tuple(t["shape"]) == tuple(d["shape"])
            assert np.dtype(t["dtype"]) == np.dtype(d["dtype"])
            want = interpreter.get_tensor(index)
            np.testing.assert_array_equal(ckpt.array(t["name"]), want)
            scales = d["quantization_parameters"]["scales"]
            got = ckpt.store.quantization(ckpt.store.tensor(t["name"]))  # type: ignore[attr-defined]
            np.testing.assert_allclose(got.scale, scales)
    kinds = {t["kind"] for t in doc["tensors"]}
    assert "kernel" in kinds  # the weights of FULLY_CONNECTED / CONV_2D, by their op
    if name in ("dynamic", "int8"):  # the premise: quantized weights were read
        assert any(t["dtype"] == "int8" and t["kind"] == "kernel" for t in doc["tensors"])


def test_diff_and_dump(converted, tmp_path: Path) -> None:
    assert run("diff", converted["f32"], converted["f32"]).code == 0
    # the weights (the converter's generic names, arith.constant..., differ between runs)
    res = run(
        "diff",
        converted["f32"],
        converted["f16"],
        "--ignore-dtype",
        "--atol",
        "1e-2",
        "-s",
        "functional_1/*",
    )
    assert res.code == 0, res.out
    out = tmp_path / "w.npz"
    assert run("dump", converted["f32"], "-o", out).code == 0
    with np.load(out) as z, weightcli.open(converted["f32"]) as ckpt:
        for t in ckpt.tensors():
            np.testing.assert_array_equal(z[t.name], ckpt.array(t.name))


def test_writing_is_refused(converted, tmp_path: Path) -> None:
    res = run("scale", converted["f32"], "2", "-o", tmp_path / "x.tflite")
    assert_clean_error(res, "no writer")
    assert not list(tmp_path.iterdir())


def _damaged(src: Path, dst: Path, edit) -> Path:
    data = bytearray(src.read_bytes())
    edit(data)
    dst.write_bytes(bytes(data))
    return dst


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d.__delitem__(slice(len(d) // 2, None)),  # truncated
        lambda d: struct.pack_into("<I", d, 0, 0x7FFFFFF0),  # the root table past the end
        lambda d: struct.pack_into(
            "<i", d, struct.unpack_from("<I", d, 0)[0], -0x7FFFFFF
        ),  # vtable
        lambda d: d.__setitem__(slice(8, len(d)), b"\xff" * (len(d) - 8)),  # garbage
    ],
)
def test_damaged_files(converted, tmp_path: Path, edit) -> None:
    path = _damaged(converted["f32"], tmp_path / "bad.tflite", edit)
    res = run("inspect", path)
    assert_clean_error(res)
