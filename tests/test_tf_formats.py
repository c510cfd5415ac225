"""SavedModels and TF checkpoints: native reader and writer against TensorFlow itself."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import REAL, ROOT, SAMPLES, run
from test_bad_input import assert_clean_error

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SAMPLE_TF = [
    SAMPLES / "mlp_export",
    SAMPLES / "mlp_tfsave",
    SAMPLES / "mlp_tfkeras_savedmodel",
    SAMPLES / "mlp_ckpt" / "ckpt",
]
REAL_TF = (
    [
        REAL / "cartpole_keras_savedmodel_2shards",
        REAL / "tfserving_half_plus_two_tf1",
        REAL / "tfserving_half_plus_two_tf2",
        REAL / "golf_tf2_object_checkpoint" / "ckpt-1",
        REAL / "golf_tf2_object_checkpoint",
        REAL / "tf2onnx_regression_tf1_checkpoint" / "model",
    ]
    if REAL.is_dir()
    else []
)


def prefix_of(path: Path) -> str:
    from weightcli.stores.detect import checkpoint_prefix

    return (
        str(path / "variables" / "variables")
        if (path / "saved_model.pb").exists()
        else str(checkpoint_prefix(path))
    )


@pytest.mark.parametrize("path", SAMPLE_TF + REAL_TF, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_native_reader_equals_tensorflow(path: Path) -> None:
    import tensorflow as tf

    from weightcli.stores.tfbundle import Bundle

    prefix = prefix_of(path)
    reader = tf.train.load_checkpoint(prefix)
    shapes = reader.get_variable_to_shape_map()
    dtypes = reader.get_variable_to_dtype_map()
    bundle = Bundle(Path(prefix))
    assert set(bundle.entries) == set(shapes)
    for key, e in bundle.entries.items():
        bundle.check(e)
        want = reader.get_tensor(key)
        assert list(e.shape) == list(shapes[key]), key
        if e.dtype == "string":
            assert dtypes[key] == tf.string
            got = bundle.read_strings(e)
            assert got == [want] if np.ndim(want) == 0 else list(np.ravel(want)), key
        else:
            assert dtypes[key].name == e.dtype, key
            got = np.frombuffer(bundle.read_bytes(e), dtype=want.dtype).reshape(want.shape)
            np.testing.assert_array_equal(got, want, err_msg=key)


@pytest.mark.parametrize("path", SAMPLE_TF + REAL_TF, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_inspect_stats_match_tensorflow(path: Path) -> None:
    import tensorflow as tf

    reader = tf.train.load_checkpoint(prefix_of(path))
    doc = run("inspect", path, "--all", "--json").json()
    assert doc["tensors"]
    for t in doc["tensors"]:
        if t["dtype"] == "string":
            continue
        want = reader.get_tensor(t["path"]).astype(np.float64)
        assert t["stats"]["max"] == float(want.max())
        scale = float(np.abs(want).max()) or 1.0
        assert t["stats"]["mean"] == pytest.approx(float(want.mean()), rel=1e-5, abs=1e-6 * scale)
        for c in t.get("copies", [])[1:]:
            np.testing.assert_array_equal(reader.get_tensor(c), reader.get_tensor(t["path"]))


def names(path: Path) -> dict[str, tuple]:
    doc = run("inspect", path, "--no-stats", "--json").json()
    return {t["name"]: (tuple(t["shape"]), t["dtype"]) for t in doc["tensors"]}


def test_canonical_names_agree_with_h5() -> None:
    h5 = names(SAMPLES / "mlp.keras")
    assert names(SAMPLES / "mlp_export") == h5
    assert names(SAMPLES / "mlp_tfsave") == h5
    assert names(SAMPLES / "mlp_ckpt" / "ckpt") == h5
    assert names(SAMPLES / "mlp_tfkeras_savedmodel") == names(SAMPLES / "mlp_tfkeras.h5")


def test_export_copies_grouped() -> None:
    doc = run("inspect", SAMPLES / "mlp_export", "--no-stats", "--json").json()
    kernel = next(t for t in doc["tensors"] if t["name"] == "logits/kernel")
    assert len(kernel["copies"]) == 2
    assert {c.split("/")[0] for c in kernel["copies"]} == {"variables", "_all_variables"}


def test_layer_type_where_recorded() -> None:
    doc = run(
        "inspect",
        SAMPLES / "mlp_tfkeras_savedmodel",
        "--layer-type",
        "Dense",
        "--json",
        "--no-stats",
    ).json()
    assert len(doc["tensors"]) == 6
    assert_clean_error(
        run("inspect", SAMPLES / "mlp_export", "--layer-type", "Dense"), "--layer-type"
    )


def files_sha(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def serve(path: Path, x: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    fn = loaded.signatures["serving_default"]
    (arg,) = fn.structured_input_signature[1].keys()
    out = fn(**{arg: tf.constant(x)})
    return next(iter(out.values())).numpy()


@pytest.mark.parametrize("name", ["mlp_export", "mlp_tfsave", "mlp_tfkeras_savedmodel"])
def test_scaled_savedmodel_serves_doubled_logits(name: str, tmp_path: Path) -> None:
    import tensorflow as tf
    from helpers import mlp_input

    src = SAMPLES / name
    before = files_sha(src)
    out = tmp_path / "out"
    res = run("scale", src, "2", "-s", "logits", "-o", out, "--json")
    assert res.code == 0, res.err
    x = mlp_input()
    np.testing.assert_allclose(serve(out, x), 2 * serve(src, x), rtol=1e-5, atol=1e-6)
    # TensorFlow's own reader sees the new values, in every copy.
    old = tf.train.load_checkpoint(str(src / "variables" / "variables"))
    new = tf.train.load_checkpoint(str(out / "variables" / "variables"))
    doc = run("inspect", out, "--json", "--no-stats").json()
    for t in doc["tensors"]:
        for key in t.get("copies", [t["path"]]):
            factor = 2 if t["name"].startswith("logits/") else 1
            np.testing.assert_array_equal(
                new.get_tensor(key), old.get_tensor(key) * np.float32(factor)
            )
    # Only the variables bundle changed; everything else keeps its bytes.
    after = files_sha(out)
    assert files_sha(src) == before
    changed = {k for k in before if before[k] != after.get(k)}
    assert changed <= {"variables/variables.index", "variables/variables.data-00000-of-00001"}
    assert set(after) - set(before) == {"assets.extra/weightcli_history.json"}
    assert "history:" in run("inspect", out, "--no-stats").out


def test_half_plus_two_tf1_and_tf2(tmp_path: Path) -> None:
    if not REAL.is_dir():
        pytest.skip("needs ../shared/real_models")
    import tensorflow as tf

    x = np.array([[1.0], [2.0], [5.0]], dtype="float32")
    for case in ("tfserving_half_plus_two_tf1", "tfserving_half_plus_two_tf2"):
        src = REAL / case
        out = tmp_path / case
        assert run("scale", src, "2", "-s", "a", "-o", out).code == 0
        loaded = tf.saved_model.load(str(out))
        y = loaded.signatures["serving_default"](x=tf.constant(x))
        y = next(iter(y.values())).numpy()
        np.testing.assert_allclose(y.ravel(), (x * 1.0 + 2.0).ravel())  # 0.5 * 2 = 1
        assert (out / "assets" / "foo.txt").read_bytes() == (
            src / "assets" / "foo.txt"
        ).read_bytes()


def test_two_shard_savedmodel(tmp_path: Path) -> None:
    if not REAL.is_dir():
        pytest.skip("needs ../shared/real_models")
    import tensorflow as tf

    src = REAL / "cartpole_keras_savedmodel_2shards"
    out = tmp_path / "cp"
    assert run("clip", src, "--abs-max", "0.05", "-o", out).code == 0
    r = tf.train.load_checkpoint(str(out / "variables" / "variables"))
    k = r.get_tensor("layer_with_weights-1/kernel/.ATTRIBUTES/VARIABLE_VALUE")
    assert np.abs(k).max() <= 0.05 + 1e-8
    # Optimizer slots untouched.
    o = tf.train.load_checkpoint(str(src / "variables" / "variables"))
    key = "layer_with_weights-1/kernel/.OPTIMIZER_SLOT/optimizer/m/.ATTRIBUTES/VARIABLE_VALUE"
    np.testing.assert_array_equal(r.get_tensor(key), o.get_tensor(key))
    assert (out / "variables" / "variables.data-00000-of-00002").read_bytes() == (
        src / "variables" / "variables.data-00000-of-00002"
    ).read_bytes()


def test_tf_checkpoint_prefix_roundtrip(tmp_path: Path) -> None:
    import tensorflow as tf

    src = SAMPLES / "mlp_ckpt" / "ckpt"
    out = tmp_path / "new"
    assert run("quantize", src, "--bits", "4", "-o", out).code == 0
    assert (tmp_path / "new.index").is_file()
    assert (tmp_path / "new.weightcli_history.json").is_file()
    a = tf.train.load_checkpoint(str(src))
    b = tf.train.load_checkpoint(str(out))
    key = "model/optimizer/_trainable_variables/0/.ATTRIBUTES/VARIABLE_VALUE"
    w, q = a.get_tensor(key), b.get_tensor(key)
    assert len(np.unique(q[:, 0])) <= 15 and not np.array_equal(w, q)
    assert np.abs(q - w).max() <= np.abs(w).max(axis=0).max() / 7 / 2 * 1.0001
    # Existing prefix needs --force.
    assert_clean_error(run("scale", src, "2", "-o", out), "already exists")


def test_written_index_accepted_by_tensorflow_writer_oracle(tmp_path: Path) -> None:
    # A bundle written by TensorFlow's SaveV2, patched by weightcli, read back by TensorFlow.
    import tensorflow as tf

    prefix = str(tmp_path / "raw")
    names = [f"layer_{i}/kernel" for i in range(40)] + ["step"]
    values = [np.full((3, 5), i, "float32") for i in range(40)] + [np.array(7, "int64")]
    tf.raw_ops.SaveV2(
        prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names), tensors=values
    )
    out = tmp_path / "patched"
    assert run("scale", prefix, "0.5", "-s", "layer_3*", "-o", out).code == 0
    r = tf.train.load_checkpoint(str(out))
    np.testing.assert_array_equal(r.get_tensor("layer_3/kernel"), np.full((3, 5), 1.5, "float32"))
    np.testing.assert_array_equal(r.get_tensor("layer_39/kernel"), np.full((3, 5), 19.5, "float32"))
    np.testing.assert_array_equal(r.get_tensor("layer_4/kernel"), np.full((3, 5), 4, "float32"))
    assert r.get_tensor("step") == 7


def test_dtype_change_refused(tmp_path: Path) -> None:
    out = tmp_path / "o"
    assert_clean_error(
        run("quantize", SAMPLES / "mlp_export", "--dtype", "float16", "-o", out), "dtype"
    )
    assert not out.exists()


def test_no_tensorflow_import_for_tf_formats(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from weightcli.cli import cli\n"
        f"for i, p in enumerate({[str(p) for p in SAMPLE_TF]!r}):\n"
        "    for args in (['inspect', p], ['scale', p, '2', '-o', f'{sys.argv[1]}/s{i}'],\n"
        "                 ['clip', p, '--abs-max', '0.1', '-o', f'{sys.argv[1]}/c{i}'],\n"
        "                 ['quantize', p, '-o', f'{sys.argv[1]}/q{i}']):\n"
        "        r = CliRunner().invoke(cli, args)\n"
        "        assert r.exit_code == 0, (args, r.output)\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, cwd=ROOT)


# -- bad input -----------------------------------------------------------------------------


def test_missing_data_shard(tmp_copy) -> None:
    p = tmp_copy(SAMPLES / "mlp_export")
    (p / "variables" / "variables.data-00000-of-00001").unlink()
    assert_clean_error(run("inspect", p), "shard missing")


def test_truncated_data_shard(tmp_copy) -> None:
    p = tmp_copy(SAMPLES / "mlp_export")
    shard = p / "variables" / "variables.data-00000-of-00001"
    shard.write_bytes(shard.read_bytes()[:1000])
    assert_clean_error(run("inspect", p), "truncated")


def test_truncated_index(tmp_copy) -> None:
    p = tmp_copy(SAMPLES / "mlp_export")
    idx = p / "variables" / "variables.index"
    idx.write_bytes(idx.read_bytes()[:-20])
    assert_clean_error(run("inspect", p))


def test_flipped_byte_names_the_tensor(tmp_copy, tmp_path: Path) -> None:
    p = tmp_copy(SAMPLES / "mlp_tfkeras_savedmodel")
    doc = run("inspect", p, "--json", "--no-stats", "-s", "dense_2/kernel").json()
    key = doc["tensors"][0]["path"]
    from weightcli.stores.tfbundle import Bundle

    e = Bundle(p / "variables" / "variables").entries[key]
    shard = p / "variables" / "variables.data-00000-of-00001"
    data = bytearray(shard.read_bytes())
    data[e.proto.offset + 17] ^= 0x40
    shard.write_bytes(bytes(data))
    assert run("inspect", p, "--no-stats").code == 0  # metadata needs no data
    assert_clean_error(run("inspect", p), "checksum mismatch", key)
    assert_clean_error(run("scale", p, "2", "-o", tmp_path / "o"), "checksum mismatch")


def test_session_bundle_is_not_a_savedmodel() -> None:
    if not REAL.is_dir():
        pytest.skip("needs ../shared/real_models")
    assert_clean_error(run("inspect", REAL / "tfserving_legacy_session_bundle"), "SessionBundle")


def test_directory_with_several_checkpoints_and_no_state(tmp_path: Path) -> None:
    for name in ("a", "b"):
        for f in (SAMPLES / "mlp_ckpt").iterdir():
            shutil.copyfile(f, tmp_path / f.name.replace("ckpt", name))
    assert_clean_error(run("inspect", tmp_path), "name one prefix")


def test_bytes_written_counts_every_copy(tmp_path: Path) -> None:
    doc = run(
        "scale", SAMPLES / "mlp_export", "2", "-s", "logits", "-o", tmp_path / "o", "--json"
    ).json()
    # logits/kernel (16x3) and logits/bias (3), float32, each stored twice; then the new
    # index and the history file, written whole. Every other byte was copied in the kernel.
    out = tmp_path / "o"
    meta = (out / "variables" / "variables.index").stat().st_size + (
        out / "assets.extra" / "weightcli_history.json"
    ).stat().st_size
    assert doc["bytes_written"] == 2 * 4 * (16 * 3 + 3) + meta


def test_partly_rewritten_tensor_checksum(tmp_path: Path, monkeypatch) -> None:
    """A clip that changes some blocks of a tensor and leaves the others: the new crc32c
    (the written blocks alone do not give it) must satisfy TensorFlow's own reader."""
    import tensorflow as tf

    import weightcli.pipeline as pipeline
    from weightcli.stores.tfbundle import TFStore

    prefix = str(tmp_path / "raw")
    x = np.linspace(-1, 1, 64 * 32, dtype="float32").reshape(64, 32)
    x[40, 3] = 5.0  # only the block holding row 40 has anything to clip
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=["w"], shape_and_slices=[""], tensors=[x])
    real = TFStore.blocks
    monkeypatch.setattr(TFStore, "blocks", lambda self, info, max_elems=0: real(self, info, 1000))
    monkeypatch.setattr(pipeline, "BLOCK_ELEMS", 1000)
    out = tmp_path / "clipped"
    res = run("clip", prefix, "--abs-max", "2", "-s", "w", "-o", out, "--json")
    assert res.code == 0, res.err
    assert res.json()["tensors"][0]["changed"] == 1
    got = tf.train.load_checkpoint(str(out)).get_tensor("w")  # verifies the crc32c
    np.testing.assert_array_equal(got, np.clip(x, -2, 2))


def test_damage_in_a_second_copy_is_seen_by_every_reader(tmp_path: Path) -> None:
    """A flipped byte in one stored copy of a variable (``_all_variables/...``): every
    command that reads the tensor refuses it (exit 2, or verify's failed check), and a
    transform never rewrites the damaged copy with a fresh checksum."""
    from weightcli.stores import open_store

    model = shutil.copytree(SAMPLES / "mlp_export", tmp_path / "sm")
    with open_store(model) as store:
        kernel = next(t for t in store.tensors() if t.copies and t.kind == "kernel")
        copy = next(c for c in kernel.copies if c.startswith("_all_variables"))
        e = store.entry(copy)  # type: ignore[attr-defined]
        where = e.proto.offset + e.proto.size // 2
    shards = sorted((model / "variables").glob("variables.data-*"))
    assert len(shards) == 1 and e.proto.shard_id == 0
    shard = shards[0]
    data = bytearray(Path(shard).read_bytes())
    data[where] ^= 0xFF
    Path(shard).write_bytes(bytes(data))
    for args in (
        ["inspect", model],
        ["dump", model, "-o", tmp_path / "d.npz"],
        ["diff", model, SAMPLES / "mlp_export"],
        ["scale", model, "0.5", "-o", tmp_path / "o"],
    ):
        res = run(*args)
        assert res.code == 2 and "checksum mismatch" in res.err, (args, res.err)
    assert not (tmp_path / "o").exists() and not (tmp_path / "d.npz").exists()
    res = run("verify", model, "--no-load", "--json")
    assert res.code == 1
    readable = next(c for c in res.json()["checks"] if c["name"] == "readable")
    assert readable["status"] == "FAIL"


def test_tf1_training_state_is_not_shown_as_weights(tmp_path: Path) -> None:
    """A TF1 Saver checkpoint with two Adam optimizers (beta1_power_1, w/Adam_2), an
    int32 step counter named Variable_1 and a moving average of a weight (a slot whose
    name no rule knows: its graph's trainable-variables collection tells): only the
    model's variables are weights."""
    import subprocess
    import sys

    code = f"""
import os
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import tensorflow.compat.v1 as tf
tf.disable_eager_execution()
x = tf.placeholder(tf.float32, [None, 3])
w = tf.get_variable("dense/kernel", [3, 2])
b = tf.get_variable("dense/bias", [2])
v = tf.get_variable("other/kernel", [3, 2])
step = tf.Variable(0, dtype=tf.int32)
step2 = tf.Variable(0, dtype=tf.int32)
loss = tf.reduce_sum(tf.matmul(x, w) + b) + tf.reduce_sum(tf.matmul(x, v))
t1 = tf.train.AdamOptimizer().minimize(loss, var_list=[w, b])
t2 = tf.train.AdamOptimizer().minimize(loss, var_list=[v])
averages = tf.train.ExponentialMovingAverage(0.9).apply([w])  # a slot only the graph tells
with tf.Session() as s:
    s.run(tf.global_variables_initializer())
    tf.train.Saver().save(s, {str(tmp_path / "ckpt")!r})
"""
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    doc = run("inspect", tmp_path / "ckpt", "--no-stats", "--json").json()
    weights = sorted(t["name"] for t in doc["tensors"])
    assert weights == ["dense/bias", "dense/kernel", "other/kernel"], weights
    everything = run("inspect", tmp_path / "ckpt", "--no-stats", "--json", "--all").json()
    names = {t["name"] for t in everything["tensors"]}
    assert {"beta1_power_1", "Variable_1", "dense/kernel/ExponentialMovingAverage"} <= names
    # A transform keeps the Saver's graph (.meta) beside the new checkpoint, unchanged.
    out = tmp_path / "o" / "half"
    out.parent.mkdir()
    assert run("scale", tmp_path / "ckpt", "0.5", "-o", out).code == 0
    assert (out.parent / "half.meta").read_bytes() == (tmp_path / "ckpt.meta").read_bytes()
    restore = f"""
import os
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np
import tensorflow.compat.v1 as tf
tf.disable_eager_execution()
values = []
for prefix in ({str(tmp_path / "ckpt")!r}, {str(out)!r}):
    with tf.Graph().as_default(), tf.Session() as s:
        tf.train.import_meta_graph(prefix + ".meta").restore(s, prefix)
        kernel = next(v for v in tf.global_variables() if v.op.name == "dense/kernel")
        values.append(s.run(kernel))
assert np.array_equal(values[1], values[0] * np.float32(0.5)), values
"""
    subprocess.run([sys.executable, "-c", restore], check=True, capture_output=True)


def test_model_order_is_the_models_order_in_every_format(tmp_path: Path) -> None:
    """inspect lists tensors in the model's order (the object graph's, the config's, the
    .h5's weight_names), not alphabetically: a tf.keras SavedModel's kernel before its
    bias, as its .h5 twin; so transplant --match-by order works across them."""

    def names(path: Path) -> list[str]:
        doc = run("inspect", path, "--no-stats", "--json").json()
        return [t["name"] for t in doc["tensors"]]

    want = names(SAMPLES / "mlp_tfkeras.h5")
    for model in ("mlp_tfkeras_savedmodel", "mlp_export", "mlp_tfsave", "mlp.keras"):
        assert names(SAMPLES / model) == want, model
    res = run(
        "transplant",
        SAMPLES / "mlp_tfkeras_savedmodel",
        SAMPLES / "mlp.keras",
        "--match-by",
        "order",
        "-o",
        tmp_path / "t.keras",
        "--json",
    )
    assert res.code == 0, res.err
    assert res.json()["counts"]["copied"] == len(want)


def test_the_models_name_is_dropped_over_its_trainable_weights(tmp_path: Path) -> None:
    """A SavedModel whose variables are scoped by the model's name (TF 2.1 wrote
    ``sequential/dense/kernel``) beside state variables with short names (a metric's
    ``count``): the shared first part is dropped, decided over the trainable weights."""
    import subprocess
    import sys

    code = f"""
import os
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import tensorflow as tf
m = tf.Module()
m.w = tf.Variable(tf.ones([3, 2]), name="sequential/dense/kernel")
m.b = tf.Variable(tf.zeros([2]), name="sequential/dense/bias")
m.count = tf.Variable(0.0, trainable=False, name="count")
tf.saved_model.save(m, {str(tmp_path / "sm")!r})
"""
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    doc = run("inspect", tmp_path / "sm", "--no-stats", "--json").json()
    names = sorted(t["name"] for t in doc["tensors"])
    assert "dense/kernel" in names and "dense/bias" in names, names
    assert not any(n.startswith("sequential/") for n in names)
