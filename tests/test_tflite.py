""".tflite read (stores/tflite.py: one module and one registry line): models converted by
TensorFlow's own converter (float32, dynamic-range int8, float16, full int8); every
constant tensor weightcli lists agrees with the interpreter's ``get_tensor_details`` and
``get_tensor``; damaged files give one line and exit 2."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

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
    # named: Keras numbers unnamed models per process, and the converter's scopes
    # (net_1/fc_1/MatMul) would depend on the tests that ran before
    model = keras.Model(inp, keras.layers.Dense(5, name="head")(x), name="net")
    root = tmp_path_factory.mktemp("tflite")
    rng = np.random.default_rng(0)

    def representative():
        for _ in range(8):
            yield [rng.standard_normal((1, 8, 8, 3)).astype("float32")]

    out = {}
    for name in ("f32", "dynamic", "f16", "int8", "offsets"):
        conv = tf.lite.TFLiteConverter.from_keras_model(model)
        if name not in ("f32", "offsets"):
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
        if name == "f16":
            conv.target_spec.supported_types = [tf.float16]
        if name == "int8":
            conv.representative_dataset = representative
        if name == "offsets":  # buffers after the flatbuffer, by offset (models over 2 GB)
            conv._experimental_use_buffer_offset = True
        out[name] = root / f"{name}.tflite"
        out[name].write_bytes(conv.convert())
    # the oracle of scaling through the scales: the converter's own dynamic-range model
    # of the same network with every kernel halved
    halved = keras.models.clone_model(model)
    halved.set_weights([w * 0.5 if w.ndim > 1 else w for w in model.get_weights()])
    conv = tf.lite.TFLiteConverter.from_keras_model(halved)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    out["dynamic_half"] = root / "dynamic_half.tflite"
    out["dynamic_half"].write_bytes(conv.convert())
    out["keras"] = root / "model.keras"
    model.save(out["keras"])
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
            if t["kind"] == "kernel_scale":  # a quantized kernel's scales, as a tensor
                scales = details[index]["quantization_parameters"]["scales"]
                np.testing.assert_array_equal(ckpt.array(t["name"]), scales)
                continue
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
        "net_1/*",
    )
    assert res.code == 0, res.out
    out = tmp_path / "w.npz"
    assert run("dump", converted["f32"], "-o", out).code == 0
    with np.load(out) as z, weightcli.open(converted["f32"]) as ckpt:
        for t in ckpt.tensors():
            np.testing.assert_array_equal(z[t.name], ckpt.array(t.name))


def _interpret(path: Path, x: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    it = tf.lite.Interpreter(str(path))  # the flatbuffer verifier runs on load
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])


def _prefix(path: Path) -> int:
    history = weightcli.open(path).meta.history
    assert history, path
    import re

    found = re.search(rb'\{"prefix": (\d+)', path.read_bytes())
    assert found is not None
    return int(found.group(1))


def _const_ranges(path: Path) -> list[tuple[int, int]]:
    with weightcli.open(path) as ckpt:
        store = ckpt.store
        out = []
        for t in ckpt.tensors():
            c = store.quantization(t)  # type: ignore[attr-defined]
            out.append((c.at, c.at + c.nbytes))
        return out


@pytest.mark.parametrize("name", ["f32", "f16", "offsets"])
def test_scale_patches_the_flatbuffer(converted, tmp_path: Path, name: str) -> None:
    """scale 0.5 of the kernels: the interpreter (which verifies the flatbuffer) computes
    what Keras computes with halved kernels; every byte but the kernels' is the
    source's, behind the prefix; scaling back gives the source's bytes exactly and
    replaces the prefix instead of stacking another."""
    src = converted[name]
    half, back = tmp_path / "half.tflite", tmp_path / "back.tflite"
    res = run("scale", src, "0.5", "--kind", "kernel", "-o", half, "--note", "halved")
    assert res.code == 0, res.err
    keras = keras_quiet()
    model = keras.saving.load_model(converted["keras"])
    for layer in model.layers:
        if layer.get_weights():
            w = layer.get_weights()
            layer.set_weights([w[0] * 0.5, *w[1:]])
    x = np.random.default_rng(1).standard_normal((1, 8, 8, 3)).astype("float32")
    tol = 2e-2 if name == "f16" else 1e-5
    np.testing.assert_allclose(_interpret(half, x), model.predict(x, verbose=0), atol=tol, rtol=tol)
    # untouched bytes: the source's, shifted by the prefix
    data, out = src.read_bytes(), half.read_bytes()
    p = _prefix(half)
    assert p % 16 == 0 and len(out) == p + len(data)
    body = np.frombuffer(out[p:], np.uint8)
    differ = np.flatnonzero(body != np.frombuffer(data, np.uint8))
    assert differ.size > 0
    kernels = []
    with weightcli.open(src) as ckpt:
        for t in ckpt.tensors():
            if t.kind == "kernel":
                c = ckpt.store.quantization(t)  # type: ignore[attr-defined]
                kernels.append((c.at, c.at + c.nbytes))
    # ... and, in a model with buffers by offset, those offsets (moved by the prefix)
    from weightcli.stores.tflite import BUFFERS, _offsets

    with weightcli.open(src) as ckpt:
        flat = ckpt.store._flat  # type: ignore[attr-defined]
        model_table = ckpt.store._original  # type: ignore[attr-defined]
        fields = [
            f
            for at in _offsets(flat, model_table, BUFFERS)
            if (f := flat.table(at).field(1)) is not None and flat.u64(f) > 1
        ]
    assert bool(fields) == (name == "offsets")  # the premise of the offsets case
    allowed = kernels + [(f, f + 8) for f in fields]
    assert all(any(a <= i < b for a, b in allowed) for i in differ.tolist())
    history = weightcli.open(half).meta.history
    assert [h.get("note") for h in history] == ["halved"]
    res = run("scale", half, "2", "--kind", "kernel", "-o", back)
    assert res.code == 0, res.err
    again = back.read_bytes()
    p_back = _prefix(back)
    expected = bytearray(data)  # the source's bytes, each buffer offset moved by the prefix
    for f in fields:
        struct.pack_into("<Q", expected, f, struct.unpack_from("<Q", data, f)[0] + p_back)
    if name != "f16":  # (halving a float16 subnormal loses its last bit)
        assert again[p_back:] == bytes(expected)
    assert len(weightcli.open(back).meta.history) == 2
    assert len(again) - len(data) < 2 * p + 512  # one prefix, not two
    np.testing.assert_allclose(_interpret(back, x), _interpret(src, x), atol=tol, rtol=tol)


def test_scale_through_the_scales(converted, tmp_path: Path) -> None:
    """scale 0.5 of a dynamic-range int8 model writes the kernels' scales, not their
    codes: the result equals, code for code and scale for scale, what TensorFlow's
    converter makes of the Keras model with halved kernels, and the interpreter
    computes the same outputs."""
    out = tmp_path / "half.tflite"
    res = run("scale", converted["dynamic"], "0.5", "--kind", "kernel", "-o", out)
    assert res.code == 0, res.err
    doc = run("inspect", out, "--json", "-s", "*kernel_scale").json()
    assert doc["tensors"], "the premise: a quantized kernel's scales were listed"
    weights = ["-s", "net_1/*", "-s", "*kernel_scale"]
    same = run("diff", out, converted["dynamic_half"], "--no-dequantize", *weights)
    assert same.code == 0, same.out  # codes and scales as the converter writes them
    before = run(
        "diff", converted["dynamic"], converted["dynamic_half"], "--no-dequantize", *weights
    )
    assert before.code == 1  # (the premise: the source's scales were not those)
    x = np.random.default_rng(2).standard_normal((1, 8, 8, 3)).astype("float32")
    np.testing.assert_array_equal(_interpret(out, x), _interpret(converted["dynamic_half"], x))
    res = run(
        "scale",
        converted["dynamic"],
        "--factor",
        "-2",
        "--kind",
        "kernel",
        "-o",
        tmp_path / "n.tflite",
    )
    assert_clean_error(res, "positive scale")


def test_dequantized_statistics_of_int8_weights(converted) -> None:
    """inspect shows an int8 kernel's statistics as the floats the interpreter's own
    quantization parameters give: (codes - zero_point) * scale along its axis."""
    import tensorflow as tf

    path = converted["dynamic"]
    it = tf.lite.Interpreter(str(path))
    it.allocate_tensors()
    doc = run("inspect", path, "--json").json()
    codes = [t for t in doc["tensors"] if t.get("quantized") and t["kind"] == "kernel"]
    assert codes
    for t in codes:
        d = it.get_tensor_details()[int(t["path"].split(":")[1])]
        q = d["quantization_parameters"]
        shape = [1] * len(d["shape"])
        shape[q["quantized_dimension"]] = -1
        values = (
            it.get_tensor(d["index"]).astype(np.float64) - q["zero_points"].reshape(shape)
        ) * q["scales"].reshape(shape)
        deq = t["dequantized"]
        assert deq["min"] == pytest.approx(values.min(), rel=1e-6)
        assert deq["max"] == pytest.approx(values.max(), rel=1e-6)
        assert deq["mean"] == pytest.approx(values.mean(), rel=1e-5, abs=1e-9)


def test_clip_and_set_on_a_tflite(converted, tmp_path: Path) -> None:
    src = converted["f32"]
    out = tmp_path / "c.tflite"
    assert run("clip", src, "--abs-max", "0.05", "-o", out).code == 0
    with weightcli.open(out) as ckpt:
        floats = [t for t in ckpt.tensors() if t.is_float]
        assert floats
        for t in floats:
            assert np.abs(ckpt.array(t.name)).max() <= 0.05
    x = np.zeros((1, 8, 8, 3), np.float32)
    _interpret(out, x)  # loads and runs


def test_quantized_weights_are_refused(converted, tmp_path: Path) -> None:
    for name in ("int8", "dynamic"):
        out = tmp_path / f"{name}.tflite"
        res = run(
            "clip",
            converted[name],
            "--abs-max",
            "0.01",
            "-s",
            "*fc*",
            "--kind",
            "kernel",
            "-o",
            out,
        )
        assert_clean_error(res)
        assert not out.exists()
    res = run("quantize", converted["f32"], "--dtype", "float16", "-o", tmp_path / "h.tflite")
    assert_clean_error(res, "keeps its type")
    assert not list(tmp_path.iterdir())


def test_a_damaged_history_prefix(converted, tmp_path: Path) -> None:
    half = tmp_path / "half.tflite"
    assert run("scale", converted["f32"], "0.5", "-o", half).code == 0
    data = half.read_bytes()
    p = _prefix(half)
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(data.replace(f'"prefix": {p}'.encode(), f'"prefix": {p + 8}'.encode(), 1))
    assert_clean_error(run("inspect", bad, "--no-stats"), "prefix")


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
        lambda d: _edit_tensor(d, "shape"),  # a dimension of 2**31 - 1
        lambda d: _edit_tensor(d, "data"),  # a buffer's data past the end
        lambda d: _edit_tensor(d, "cycle"),  # a table that is its own vtable
        lambda d: _edit_tensor(d, "scales"),  # more scales than channels
    ],
    ids=["truncated", "root", "vtable", "garbage", "shape", "data", "cycle", "scales"],
)
def test_damaged_files(converted, tmp_path: Path, edit) -> None:
    source = converted["dynamic"]
    path = _damaged(source, tmp_path / "bad.tflite", edit)
    assert path.read_bytes() != source.read_bytes()  # the premise: the edit landed
    res = run("inspect", path)
    assert_clean_error(res)
    out = tmp_path / "out.tflite"
    assert_clean_error(run("scale", path, "0.5", "-o", out))
    assert not out.exists()


def _edit_tensor(data: bytearray, what: str) -> None:
    """Damage the first constant kernel of a converted model, where ``what`` says."""
    from weightcli.stores.tflite import Flat

    flat = Flat(bytes(data), "x")
    model = flat.table(flat.u32(0))
    graph = model.tables(2)[0]
    buffers = model.tables(4)
    tensors = graph.tables(0)
    kernel = next(t for t in tensors if len(t.ints(0)) == 2 and t.scalar(2, "u32") > 0)
    if what == "shape":
        start, _ = flat.vector(kernel.field(0), 4)
        struct.pack_into("<i", data, start, 0x7FFFFFFF)
    elif what == "data":
        field = buffers[kernel.scalar(2, "u32")].field(0)
        struct.pack_into("<I", data, field, len(data))
    elif what == "cycle":
        struct.pack_into("<i", data, kernel.at, 0)
    elif what == "scales":
        quant = next(t for t in tensors if t.sub(4) is not None and t.sub(4).field(2) is not None)
        start, n = flat.vector(quant.sub(4).field(2), 4)
        struct.pack_into("<I", data, start - 4, n + 1000)


def test_a_shared_buffer_is_written_whole_or_not_at_all(converted, tmp_path: Path) -> None:
    """Two tensors stored in one buffer (made so here: the converter shares tensors
    rather than buffers in these models): writing one alone, or both with different
    values, is refused and leaves nothing; both with the same values is written."""
    from dataclasses import replace

    from weightcli.errors import UnsupportedError
    from weightcli.stores.base import split
    from weightcli.stores.tflite import TFLiteStore

    def store_with_shared() -> tuple[TFLiteStore, Any, Any]:
        store = TFLiteStore(converted["f32"])
        a = next(t for t in store.tensors() if t.is_float)
        b = replace(a, name=a.name + "_twin", path="0:9999")  # a second tensor, same buffer
        store._infos.append(b)
        store._consts[b.path] = store._consts[a.path]
        return store, a, b

    def write(store: TFLiteStore, values: dict[Any, np.ndarray], out: Path) -> None:
        patcher = store.patch(out)
        try:
            for info, data in values.items():
                patcher.begin(info, info.dtype)
                (block,) = split(info.shape)
                patcher.write(info, block, data)
            patcher.set_history([])
            patcher.commit()
        except BaseException:
            patcher.abort()
            raise

    out = tmp_path / "o.tflite"
    store, a, b = store_with_shared()
    with pytest.raises(UnsupportedError, match="shares its buffer"):
        write(store, {a: np.zeros(a.shape, np.float32)}, out)
    with pytest.raises(UnsupportedError, match="different values"):
        write(store, {a: np.zeros(a.shape, np.float32), b: np.ones(b.shape, np.float32)}, out)
    assert not list(tmp_path.iterdir())
    write(store, {a: np.zeros(a.shape, np.float32), b: np.zeros(b.shape, np.float32)}, out)
    store.close()
    with weightcli.open(out) as ckpt:
        assert not ckpt.array(a.name).any()


def test_export_to_tflite_and_verify(converted, tmp_path: Path) -> None:
    """The converter route: the exported model computes what the converter's own output
    computes, carries weightcli's history, passes --check, and verify runs it in the
    interpreter against the Keras model."""
    out = tmp_path / "m.tflite"
    res = run("export", converted["keras"], "--to", "tflite", "-o", out, "--check")
    assert res.code == 0, res.err
    assert "PASS: the interpreter computes what the model computes" in res.out
    history = weightcli.open(out).meta.history
    assert history and "--to tflite" in history[-1]["command"]
    x = np.random.default_rng(3).standard_normal((1, 8, 8, 3)).astype("float32")
    np.testing.assert_array_equal(_interpret(out, x), _interpret(converted["f32"], x))
    res = run("verify", out, "--reference", converted["keras"], "--json")
    assert res.code == 0, res.out
    checks = {c["name"]: c["status"] for c in res.json()["checks"]}
    assert checks["outputs match reference"] == "PASS" and checks["loads"] == "PASS"
    assert checks["same structure as reference"] == "SKIP"


def test_export_int8_check_fails_beyond_its_tolerance(converted, tmp_path: Path) -> None:
    samples = tmp_path / "x.npy"
    np.save(samples, np.random.default_rng(4).standard_normal((8, 8, 8, 3)).astype("float32"))
    out = tmp_path / "q.tflite"
    args = ["export", converted["keras"], "--to", "tflite", "--int8", "--calibration", samples]
    res = run(*args, "-o", out, "--check", "--atol", "0", "--json")
    assert res.code == 1  # int8 arithmetic is not exact: the check says so
    doc = res.json()
    assert doc["check"]["status"] == "FAIL" and 0 < doc["check"]["data"]["max_abs"] < 0.5
    kinds = {(t["dtype"], t["kind"]) for t in run("inspect", out, "--json").json()["tensors"]}
    assert ("int8", "kernel") in kinds


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--to", "tflite", "--int8"], "--calibration"),
        (["--to", "safetensors", "--check"], "converted format"),
        (["--to", "tflite", "-s", "fc*"], "no selection"),
        (["--to", "tflite", "--atol", "0.1"], "--check"),
    ],
)
def test_export_refusals(converted, tmp_path: Path, extra: list[str], says: str) -> None:
    out = tmp_path / ("o.tflite" if "tflite" in extra else "o.safetensors")
    res = run("export", converted["keras"], *extra, "-o", out)
    assert_clean_error(res, says)
    assert not out.exists()


def test_export_of_weights_only_is_refused(tmp_path: Path) -> None:
    from helpers import SAMPLES

    res = run("export", SAMPLES / "mlp.weights.h5", "--to", "tflite", "-o", tmp_path / "w.tflite")
    assert_clean_error(res, "no model to convert")
    assert not list(tmp_path.iterdir())


def test_diff_against_the_keras_model_it_came_from(converted) -> None:
    """A .tflite against its Keras model: kernels and biases under Keras's names and in
    Keras's layouts (a FULLY_CONNECTED kernel transposed, a CONV_2D kernel's axes
    moved), so the weights compare equal; int8 ones within their quantization step."""
    keras_model = converted["keras"]
    res = run("diff", converted["f32"], keras_model, "-s", "*/kernel", "--json")
    assert res.code == 0, res.out
    rows = {r["name"]: r for r in res.json()["tensors"]}
    assert set(rows) == {"conv/kernel", "fc/kernel", "head/kernel"}
    assert rows["conv/kernel"]["a"]["shape"] == [3, 3, 3, 4]  # stored [4, 3, 3, 3]
    assert rows["fc/kernel"]["a"]["shape"] == [144, 64]  # stored [64, 144]
    assert all(r["status"] == "identical" for r in rows.values())
    res = run("diff", converted["dynamic"], keras_model, "-s", "*/kernel", "--atol", "0.01")
    assert res.code == 0, res.out
    assert "within tolerance" in res.out  # (the premise: int8 weights, dequantized)
    # two .tflite files keep the converter's names
    both = run("diff", converted["f32"], converted["f32"], "--json").json()
    assert "fc/kernel" not in {r["name"] for r in both["tensors"]}


def test_keras_forms_of_converter_names_and_layouts() -> None:
    """The names the converter gives (scoped, with Keras 3's "_1", or fused ops joined by
    ";") and its layouts, against Keras's: a depthwise kernel [1, kh, kw, C*M] is Keras's
    [kh, kw, C, M] with output channel c*M + m."""
    from weightcli.stores.tflite import keras_form, to_keras

    fc = keras_form("functional_1/fc_1/MatMul", "FULLY_CONNECTED", "kernel", (64, 144), 0)
    assert fc is not None and fc.names == ("fc_1/kernel", "fc/kernel") and fc.shape == (144, 64)
    fused = "m/dw_bn/FusedBatchNormV3;m/dw/depthwise;m/dw/BiasAdd"
    dw = keras_form(fused, "DEPTHWISE_CONV_2D", "kernel", (1, 3, 3, 8), 4)
    assert dw is not None and "dw/depthwise_kernel" in dw.names and dw.shape == (3, 3, 4, 2)
    stored = np.arange(72, dtype=np.float32).reshape(1, 3, 3, 8)
    keras = to_keras(dw, stored)
    for c in range(4):
        for m in range(2):
            np.testing.assert_array_equal(keras[:, :, c, m], stored[0, :, :, c * 2 + m])
    conv = keras_form("a/conv/Conv2D", "CONV_2D", "kernel", (4, 3, 3, 2), 0)
    assert conv is not None
    w = np.random.default_rng(0).standard_normal((4, 3, 3, 2))
    np.testing.assert_array_equal(to_keras(conv, w)[:, :, :, 1], w[1])  # [o] -> [..., o]
    assert keras_form("noscope", "CONV_2D", "kernel", (4, 3, 3, 2), 0) is None
    assert keras_form("a/dw/depthwise", "DEPTHWISE_CONV_2D", "kernel", (1, 3, 3, 8), 3) is None


def test_dump_codes_or_dequantized(converted, tmp_path: Path) -> None:
    """dump writes the int8 codes and their scales as stored, or with --dequantize the
    floats they stand for (as the interpreter's quantization parameters give them)."""
    src = converted["dynamic"]
    codes, floats = tmp_path / "codes.npz", tmp_path / "floats.npz"
    assert run("dump", src, "-o", codes).code == 0
    assert run("dump", src, "--dequantize", "-o", floats).code == 0
    with np.load(codes) as c, np.load(floats) as f:
        assert "net_1/fc_1/kernel_scale" in c.files
        assert "net_1/fc_1/kernel_scale" not in f.files
        q = c["net_1/fc_1/MatMul"]
        assert q.dtype == np.int8 and f["net_1/fc_1/MatMul"].dtype == np.float32
        scale = c["net_1/fc_1/kernel_scale"]
        np.testing.assert_allclose(f["net_1/fc_1/MatMul"], q * scale[:, None], rtol=1e-6)
    res = run("dump", converted["f32"], "--dequantize", "-o", tmp_path / "x.npz")
    assert_clean_error(res, "no quantized weights")


def test_requantize(converted, tmp_path: Path) -> None:
    """clip of int8 weights is refused, or with --requantize writes new codes under the
    same scales: numpy's rint(clip((q - zero) * scale) / scale + zero) of the
    interpreter's own tensors and parameters; the interpreter loads the result."""
    import tensorflow as tf

    src, out = converted["dynamic"], tmp_path / "c.tflite"
    assert_clean_error(run("clip", src, "--abs-max", "0.05", "-o", out), "--requantize")
    res = run("clip", src, "--abs-max", "0.05", "--requantize", "-o", out)
    assert res.code == 0, res.err
    before, after = tf.lite.Interpreter(str(src)), tf.lite.Interpreter(str(out))
    after.allocate_tensors()
    checked = 0
    for d in before.get_tensor_details():
        q = d["quantization_parameters"]
        if d["dtype"] != np.int8 or q["scales"].size < 2:
            continue
        shape = [1] * len(d["shape"])
        shape[q["quantized_dimension"]] = -1
        s, z = q["scales"].reshape(shape), q["zero_points"].reshape(shape)
        codes = before.get_tensor(d["index"]).astype(np.float64)
        values = (codes - z) * s.astype(np.float32).astype(np.float64)
        want = np.rint(np.clip(values, -0.05, 0.05) / s + z).astype(np.int8)
        np.testing.assert_array_equal(after.get_tensor(d["index"]), want)
        assert (want != codes).any()  # the premise: some codes changed
        checked += 1
    assert checked
    far = run("set", src, "net_1/fc_1/MatMul=5", "--requantize", "-o", tmp_path / "s.tflite")
    assert_clean_error(far, "outside what int8 codes reach")
    none = run(
        "clip", converted["f32"], "--abs-max", "1", "--requantize", "-o", tmp_path / "f.tflite"
    )
    assert_clean_error(none, "no quantized weights")
    assert not (tmp_path / "s.tflite").exists() and not (tmp_path / "f.tflite").exists()
    # merge reads its other inputs as stored: requantizing only the first is refused
    both = run("merge", src, src, "--requantize", "-o", tmp_path / "m.tflite")
    assert_clean_error(both, "does not apply to merge")


def test_a_sparse_tensor_is_read_dense_and_never_written(tmp_path: Path) -> None:
    """The converter's sparse format (EXPERIMENTAL_SPARSITY: rows dense, columns CSR, only
    the nonzeros in the buffer) is read as the dense tensor, equal to the Keras model's
    pruned kernel; writing it is refused."""
    import tensorflow as tf

    keras = keras_quiet()
    keras.utils.set_random_seed(0)
    inp = keras.Input((64,))
    model = keras.Model(inp, keras.layers.Dense(64, name="fc")(inp), name="sparse")
    kernel, bias = model.get_layer("fc").get_weights()
    kernel[np.abs(kernel) < np.quantile(np.abs(kernel), 0.8)] = 0
    model.get_layer("fc").set_weights([kernel, bias])
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    path = tmp_path / "sparse.tflite"
    path.write_bytes(conv.convert())
    with weightcli.open(path) as ckpt:
        consts = ckpt.store._consts  # type: ignore[attr-defined]
        sparse = [t for t in ckpt.tensors() if consts[t.path].csr is not None]
        assert len(sparse) == 1  # the premise: the converter wrote it sparse
        assert sparse[0].kind == "kernel"  # its role found through the DENSIFY op
        np.testing.assert_array_equal(ckpt.array(sparse[0].name), kernel.T)  # [out, in]
    assert "constants not read" not in run("inspect", path, "--no-stats").out
    assert_clean_error(run("scale", path, "2", "-o", tmp_path / "o.tflite"), "stored sparse")
    assert not (tmp_path / "o.tflite").exists()
