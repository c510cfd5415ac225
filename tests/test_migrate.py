"""``migrate``: models built and saved by tf_keras (one per layer family) made loadable
by Keras 3, offline; Keras 3 loads each output and predicts what tf_keras predicts on
the original, every tensor's bytes are carried, and inspect's static "loads in" line
agrees with what each Keras actually does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import REAL, SAMPLES, keras_quiet, run


def tf_keras():
    keras_quiet()  # TensorFlow's start-up chatter off
    import tf_keras

    return tf_keras


def catalogue(name: str, keras3: bool = False):
    """One model per layer family (the issue's list), built by tf_keras (or Keras 3)."""
    tk = keras_quiet() if keras3 else tf_keras()
    L = tk.layers

    def seq(shape, *layers):
        x = tk.Input(shape)
        y = x
        for layer in layers:
            y = layer(y)
        return tk.Model(x, y)

    def mha():
        x = tk.Input((5, 8))
        return tk.Model(x, L.MultiHeadAttention(2, 4)(x, x))

    def merge():
        x = tk.Input((8,))
        a, b = L.Dense(3)(x), L.Dense(3)(x)
        return tk.Model(x, [L.Concatenate()([a, b]), L.Add()([a, b])])

    def nested():
        inner = tk.Sequential([tk.Input((8,)), L.Dense(4), L.Dense(3)], name="inner")
        x = tk.Input((8,))
        return tk.Model(x, L.Dense(2)(inner(x)))

    def nested_functional():
        i = tk.Input((8,))
        inner = tk.Model(i, L.Dense(3)(L.Dense(4)(i)), name="inner_f")
        x = tk.Input((8,))
        return tk.Model(x, L.Dense(2)(inner(x)))

    def shared():
        d = L.Dense(3)
        x, y = tk.Input((8,)), tk.Input((8,))
        return tk.Model([x, y], L.Add()([d(x), d(y)]))

    builders = {
        "dense": lambda: seq((8,), L.Dense(4)),
        "conv1d": lambda: seq((10, 3), L.Conv1D(4, 3)),
        "conv2d": lambda: seq((8, 8, 3), L.Conv2D(4, 3)),
        "conv3d": lambda: seq((6, 6, 6, 2), L.Conv3D(3, 3)),
        "depthwise": lambda: seq((8, 8, 3), L.DepthwiseConv2D(3)),
        "separable1d": lambda: seq((10, 3), L.SeparableConv1D(4, 3)),
        "separable2d": lambda: seq((8, 8, 3), L.SeparableConv2D(4, 3)),
        "conv2dtranspose": lambda: seq((8, 8, 3), L.Conv2DTranspose(4, 3)),
        "batchnorm": lambda: seq((8,), L.BatchNormalization()),
        "layernorm": lambda: seq((8,), L.LayerNormalization()),
        "embedding": lambda: seq((5,), L.Embedding(20, 4, mask_zero=True), L.LSTM(3)),
        "simplernn": lambda: seq((5, 3), L.SimpleRNN(4)),
        "lstm": lambda: seq((5, 3), L.LSTM(4)),
        "gru": lambda: seq((5, 3), L.GRU(4)),
        "gru_reset_before": lambda: seq((5, 3), L.GRU(4, reset_after=False)),
        "bidirectional": lambda: seq((5, 3), L.Bidirectional(L.LSTM(4))),
        "timedistributed": lambda: seq((5, 3), L.TimeDistributed(L.Dense(2))),
        "pooling": lambda: seq(
            (8, 8, 3), L.MaxPooling2D(), L.AveragePooling2D(2), L.GlobalAveragePooling2D()
        ),
        "dropout": lambda: seq((8,), L.Dropout(0.5), L.Dense(2)),
        "rescaling": lambda: seq((8,), L.Rescaling(0.5, 1.0), L.Dense(2)),
        "mha": mha,
        "concatenate_add": merge,
        "nested_sequential": nested,
        "nested_functional": nested_functional,
        "shared_layer": shared,
        "sequential": lambda: tk.Sequential([tk.Input((8,)), L.Dense(4), L.Dense(2)]),
    }
    tk.utils.set_random_seed(0)
    return builders[name]()


FAMILIES = [
    "dense", "conv1d", "conv2d", "conv3d", "depthwise", "separable1d", "separable2d",
    "conv2dtranspose", "batchnorm", "layernorm", "embedding", "simplernn", "lstm", "gru",
    "gru_reset_before", "bidirectional", "timedistributed", "pooling", "dropout", "rescaling",
    "mha", "concatenate_add", "nested_sequential", "nested_functional", "shared_layer",
    "sequential",
]  # fmt: skip


def feeds(model, name: str) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = []
    for t in model.inputs:
        shape = [3, *t.shape[1:]]
        if name == "embedding":
            out.append(rng.integers(0, 20, size=shape).astype("int32"))
        else:
            out.append(rng.normal(size=shape).astype("float32"))
    return out


def predict(model, xs: list[np.ndarray]) -> list[np.ndarray]:
    y = model.predict(xs if len(xs) > 1 else xs[0], verbose=0)
    return [np.asarray(v) for v in (y if isinstance(y, list) else [y])]


def loads(path: Path, line: str) -> bool:
    try:
        if line == "keras3":
            keras_quiet().models.load_model(path, compile=False)
        else:
            tf_keras().models.load_model(path, compile=False)
        return True
    except Exception:
        return False


def loads_elsewhere(path: Path, line: str, timeout: float = 3) -> bool:
    """``loads`` in a fresh interpreter, given up ``timeout`` seconds after the import
    (tf_keras's graph reconstruction never ends on a node it cannot resolve; the import
    alone takes seconds on a busy machine, so its time does not count)."""
    code = (
        "import os, sys; os.environ['TF_CPP_MIN_LOG_LEVEL'] = '3'\n"
        + ("import tf_keras as k\n" if line == "tf-keras" else "import keras as k\n")
        + "print('imported', flush=True)\n"
        + f"k.models.load_model({str(path)!r}, compile=False)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "imported":
            return False  # the import itself failed
        try:
            return proc.wait(timeout=timeout) == 0
        except subprocess.TimeoutExpired:
            return False
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def datasets(path: Path) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    with h5py.File(path) as f:
        f.visititems(
            lambda n, o: (
                out.__setitem__(n, o[()].tobytes()) if isinstance(o, h5py.Dataset) else None
            )
        )
    return out


def archive_datasets(path: Path) -> dict[str, bytes]:
    import io
    import zipfile

    with zipfile.ZipFile(path) as z:
        assert z.namelist() == ["metadata.json", "config.json", "model.weights.h5"]
        data = z.read("model.weights.h5")
    out: dict[str, bytes] = {}
    with h5py.File(io.BytesIO(data)) as f:
        f.visititems(
            lambda n, o: (
                out.__setitem__(n, o[()].tobytes()) if isinstance(o, h5py.Dataset) else None
            )
        )
    return out


def verdict(path: Path) -> dict:
    res = run("inspect", path, "--no-stats", "--json")
    assert res.code == 0, res.err
    return res.json()["loads_in"]


@pytest.mark.parametrize("name", FAMILIES)
def test_a_tf_keras_model_migrated_loads_and_predicts_in_keras3(tmp_path: Path, name: str) -> None:
    model = catalogue(name)
    src = tmp_path / f"{name}.h5"
    model.save(src)
    before = verdict(src)
    assert before["keras3"]["loads"] == loads(src, "keras3"), before  # the static line is right
    assert before["tf-keras"]["loads"] is True
    out = tmp_path / f"{name}.keras3.h5"
    res = run("migrate", src, "-o", out, "--json")
    assert res.code == 0, res.err
    doc = res.json()
    assert doc["from"] == "tf-keras" and doc["for"] == "keras3"
    assert bool(doc["changes"]) == (not before["keras3"]["loads"])
    keras = keras_quiet()
    migrated = keras.models.load_model(out)  # as users call it: compile=True
    xs = feeds(model, name)
    for a, b in zip(predict(migrated, xs), predict(model, xs), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    # every weight's bytes carried; the writer's training state dropped
    src_data, out_data = datasets(src), datasets(out)
    weights = {k for k in src_data if k.startswith("model_weights/")}
    assert bool(weights) == bool(model.weights)  # premise: the weights were found
    assert weights == set(out_data) and all(src_data[k] == out_data[k] for k in weights)
    after = verdict(out)
    assert after["keras3"]["loads"] is True
    if after["tf-keras"]["loads"]:
        assert loads(out, "tf-keras")
    else:  # the Keras 3 graph forms: tf_keras refuses them, or loops forever on them
        assert not loads_elsewhere(out, "tf-keras"), after
    # a .keras archive: Keras 3's layout, each weight where Keras 3's own loader of the
    # .h5 (by layer name) puts it
    archive = tmp_path / f"{name}.keras"
    res = run("migrate", src, "-o", archive, "--json")
    assert res.code == 0, res.err
    from_archive = keras.models.load_model(archive)
    assert len(from_archive.weights) == len(migrated.weights) == len(model.weights)
    for a, b in zip(from_archive.weights, migrated.weights, strict=True):
        assert a.path == b.path and np.array_equal(np.asarray(a), np.asarray(b)), a.path
    for a, b in zip(predict(from_archive, xs), predict(model, xs), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert sorted(archive_datasets(archive).values()) == sorted(src_data[k] for k in weights)
    assert verdict(archive)["keras3"]["loads"] is True


@pytest.mark.parametrize("name", FAMILIES)
def test_a_keras3_model_migrated_loads_and_predicts_in_tf_keras(tmp_path: Path, name: str) -> None:
    """The reverse: Keras 3's legacy .h5 made loadable by tf_keras."""
    model = catalogue(name, keras3=True)
    src = tmp_path / f"{name}.h5"
    model.save(src)
    before = verdict(src)
    assert before["keras3"]["loads"] is True
    assert before["tf-keras"]["loads"] is False  # every Keras 3 file needs the table
    out = tmp_path / f"{name}.tf.h5"
    res = run("migrate", src, "-o", out, "--json")
    assert res.code == 0, res.err
    assert res.json()["for"] == "tf-keras"
    migrated = tf_keras().models.load_model(out)
    xs = feeds(model, name)
    for a, b in zip(predict(migrated, xs), predict(model, xs), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    src_data, out_data = datasets(src), datasets(out)
    weights = {k for k in src_data if k.startswith("model_weights/")}
    assert weights == set(out_data) and all(src_data[k] == out_data[k] for k in weights)
    assert verdict(out)["tf-keras"]["loads"] is True
    # from a .keras archive: the same legacy layout as Keras 3's own .h5 writer makes
    archive, from_archive = tmp_path / f"{name}.keras", tmp_path / f"{name}.from_keras.h5"
    model.save(archive)
    res = run("migrate", archive, "-o", from_archive, "--json")
    assert res.code == 0, res.err
    assert res.json()["changes"] == run("migrate", src, "--dry-run", "--json").json()["changes"]
    loaded = tf_keras().models.load_model(from_archive)
    for a, b in zip(predict(loaded, xs), predict(model, xs), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)

    def text(names) -> list[str]:
        return [n.decode() if isinstance(n, bytes) else str(n) for n in names]

    with h5py.File(src) as f, h5py.File(from_archive) as g:
        mine, theirs = g["model_weights"], f["model_weights"]
        assert text(mine.attrs["layer_names"]) == text(theirs.attrs["layer_names"])
        for layer in text(theirs.attrs["layer_names"]):
            a_names = text(mine[layer].attrs["weight_names"])
            b_names = text(theirs[layer].attrs["weight_names"])
            assert [mine[layer][w][()].tobytes() for w in a_names] == [
                theirs[layer][w][()].tobytes() for w in b_names
            ], layer
    assert verdict(from_archive)["tf-keras"]["loads"] is True


def test_keras3_operations_are_refused_for_tf_keras(tmp_path: Path) -> None:
    """An operation layer tf.keras has no class for (here Keras 3's NotEqual used as
    data, not as an embedding's mask: that one is the implicit-mask rule's) is refused,
    named."""
    keras = keras_quiet()
    x = keras.Input((5,), dtype="int32")
    flags = keras.ops.cast(keras.ops.not_equal(x, 0), "float32")
    src = tmp_path / "e.h5"
    keras.Model(x, keras.layers.Dense(2, name="d")(flags)).save(src)
    res = run("migrate", src, "-o", tmp_path / "o.h5")
    assert res.code == 2 and "NotEqual" in res.err, res.err


def test_a_trained_model_loses_only_its_training_state(tmp_path: Path) -> None:
    """sample_models/mobile_tfkeras.h5 (tf.keras, compiled and trained, with
    DepthwiseConv2D): Keras 3 loads the output as users call it (compile=True)."""
    out = tmp_path / "m.h5"
    res = run("migrate", SAMPLES / "mobile_tfkeras.h5", "-o", out, "--json")
    assert res.code == 0, res.err
    doc = res.json()
    assert doc["dropped"] == ["training_config", "optimizer_weights"] and doc["optimizer"]
    assert [c["rule"] for c in doc["changes"]] == ["groups"]
    with h5py.File(out) as f:
        assert "training_config" not in f.attrs and "optimizer_weights" not in f
    keras_quiet().models.load_model(out)


def test_check_loads_both_and_compares(tmp_path: Path) -> None:
    src = tmp_path / "dw.h5"
    catalogue("depthwise").save(src)
    res = run("migrate", src, "-o", tmp_path / "out.h5", "--check", "--json")
    assert res.code == 0, res.err
    check = res.json()["check"]
    assert check["status"] == "PASS" and check["data"]["max_abs"] <= 1e-5


def test_a_dry_run_writes_nothing_and_says_what_it_would_change(tmp_path: Path) -> None:
    src = tmp_path / "dw.h5"
    catalogue("depthwise").save(src)
    res = run("migrate", src, "--dry-run", "--json")
    assert res.code == 0 and res.json()["dry_run"] and res.json()["changes"], res.err
    assert [p.name for p in tmp_path.iterdir()] == ["dw.h5"]
    res = run("migrate", src, "--dry-run", "--check")
    assert res.code == 2 and "--check" in res.err and "--dry-run" in res.err


def test_a_folder_of_models_in_a_batch(tmp_path: Path) -> None:
    (tmp_path / "in" / "sub").mkdir(parents=True)
    catalogue("depthwise").save(tmp_path / "in" / "a.h5")
    catalogue("lstm").save(tmp_path / "in" / "sub" / "b.h5")
    res = run("migrate", "-r", tmp_path / "in", "--output-dir", tmp_path / "out", "--json")
    assert res.code == 0, res.err
    lines = [json.loads(x) for x in res.out.splitlines() if x.startswith("{")]
    assert sorted(Path(d["path"]).name for d in lines if "path" in d) == ["a.h5", "b.h5"]
    assert loads(tmp_path / "out" / "sub" / "b.h5", "keras3")


@pytest.mark.parametrize(
    "case", ["lambda", "custom", "damaged", "keras3_file", "archive", "tf_keras_target"]
)
def test_what_cannot_be_carried_is_one_line(tmp_path: Path, case: str) -> None:
    tk = tf_keras()
    src = tmp_path / "m.h5"
    args: list[object] = []
    says = ""
    if case == "lambda":
        x = tk.Input((4,))
        tk.Model(x, tk.layers.Lambda(lambda t: t * 2, name="double")(x)).save(src)
        says = "double"
    elif case == "custom":
        catalogue("dense").save(src)
        with h5py.File(src, "r+") as f:
            cfg = json.loads(f.attrs["model_config"])
            cfg["config"]["layers"][1]["class_name"] = "MyDense"
            f.attrs["model_config"] = json.dumps(cfg)
        says = "MyDense"
    elif case == "damaged":
        catalogue("dense").save(src)
        with h5py.File(src, "r+") as f:
            f.attrs["model_config"] = '{"class_name": "Functional", "config": '
        says = "model_config"
    elif case == "keras3_file":  # already in Keras 3's form
        src = SAMPLES / "mlp_keras3.h5"
        args = ["--for", "keras3"]
        says = "already"
    elif case == "archive":  # weights without a model
        src = SAMPLES / "mlp.weights.h5"
        says = "migrate reads a full model"
    else:
        catalogue("dense").save(src)
        args = ["--for", "tf-keras"]
        says = "already"
    out = tmp_path / "out.h5"
    res = run("migrate", src, "-o", out, *args)
    assert res.code == 2 and says in res.err, res.err
    assert len(res.err.strip().splitlines()) == 1 and not out.exists()


def test_a_branched_graph_takes_keras3s_layer_order(tmp_path: Path) -> None:
    """Keras 3 numbers a functional model's layers by depth and by the order its search
    from the outputs meets them, not as the config lists them: two Dense layers of one
    shape, listed in the other order, land where Keras 3 looks for each."""
    tk = tf_keras()
    L = tk.layers
    tk.utils.set_random_seed(1)
    x = tk.Input((4,))
    a, b = L.Dense(4, name="z_first")(x), L.Dense(4, name="a_second")(x)
    c = L.Dense(4, name="m_third")(a)
    d = L.Add()([c, b])
    model = tk.Model(x, [L.Concatenate()([L.Dense(4)(d), a, L.Dense(2)(x)]), L.Dense(3)(b)])
    src, out = tmp_path / "m.h5", tmp_path / "m.keras"
    model.save(src)
    with h5py.File(src, "r+") as f:  # the layers listed backwards (loaders accept any order)
        cfg = json.loads(f.attrs["model_config"])
        cfg["config"]["layers"].reverse()
        f.attrs["model_config"] = json.dumps(cfg)
    res = run("migrate", src, "-o", out)
    assert res.code == 0, res.err
    keras = keras_quiet()
    migrated = keras.models.load_model(out)
    listed = [layer["config"]["name"] for layer in cfg["config"]["layers"]]
    order = [layer.name for layer in migrated.layers]
    assert order != listed  # premise: the config's order is not Keras 3's
    xs = [np.random.default_rng(0).standard_normal((3, 4)).astype("float32")]
    for p, q in zip(predict(migrated, xs), predict(model, xs), strict=True):
        np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-5)


def test_layer_names_with_a_slash_are_renamed_in_a_keras_archive(tmp_path: Path) -> None:
    """tf.keras's DenseNet names layers ``conv1/conv``; Keras 3 refuses a "/" in a name.
    The names are changed in the config; a .keras archive carries them (its weights are
    placed by position); a legacy .h5, which files weights under the names, is refused."""
    tk = tf_keras()
    L = tk.layers
    tk.utils.set_random_seed(2)
    x = tk.Input((6,))
    y = L.BatchNormalization(name="conv1/bn")(L.Dense(4, name="conv1/conv")(x))
    model = tk.Model(x, L.Dense(3, name="conv1_conv")(L.Add()([y, L.Dense(4)(x)])))
    src = tmp_path / "m.h5"
    model.save(src)
    before = verdict(src)
    assert before["keras3"]["loads"] is False and not loads(src, "keras3")
    assert "OUT.keras" in run("inspect", src, "--no-stats").out
    refused = run("migrate", src, "-o", tmp_path / "out.h5")
    assert refused.code == 2 and "conv1/conv" in refused.err and "OUT.keras" in refused.err
    out = tmp_path / "out.keras"
    res = run("migrate", src, "-o", out, "--json")
    assert res.code == 0, res.err
    renamed = {c["old"]: c["new"] for c in res.json()["changes"] if c["rule"] == "slash-names"}
    assert renamed == {"conv1/conv": "conv1_conv_1", "conv1/bn": "conv1_bn"}
    migrated = keras_quiet().models.load_model(out)
    assert {layer.name for layer in migrated.layers} >= {"conv1_conv_1", "conv1_bn"}
    xs = [np.random.default_rng(0).standard_normal((3, 6)).astype("float32")]
    for p, q in zip(predict(migrated, xs), predict(model, xs), strict=True):
        np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-5)
    assert verdict(out)["keras3"]["loads"] is True


def test_a_tf_keras_savedmodel_migrated_to_a_keras_archive(tmp_path: Path) -> None:
    """model.save("folder") with tf.keras: the config from keras_metadata.pb, each
    variable found through the object graph (its checkpoint key is its shortest path,
    often the model's ``variables/N``), written in Keras 3's layout; Keras 3 loads OUT and
    predicts what tf_keras predicts on the SavedModel."""
    tk = tf_keras()
    L = tk.layers
    tk.utils.set_random_seed(3)
    x = tk.Input((5, 3))
    y = L.Bidirectional(L.LSTM(4, return_sequences=True))(x)
    y = L.GlobalAveragePooling1D()(L.MultiHeadAttention(2, 4)(y, y))
    y = tk.Sequential([tk.Input((8,)), L.BatchNormalization(), L.Dense(2)], name="inner")(y)
    model = tk.Model(x, y)
    model.compile("adam", "mse")
    src, out = tmp_path / "saved", tmp_path / "m.keras"
    model.save(src)  # a folder: the SavedModel format
    assert (src / "keras_metadata.pb").is_file()  # premise
    refused = run("migrate", src, "-o", tmp_path / "m.h5")
    assert refused.code == 2 and "*.keras" in refused.err
    res = run("migrate", src, "-o", out, "--json")
    assert res.code == 0, res.err
    assert "wrapped-module" in {c["rule"] for c in res.json()["changes"]}
    migrated = keras_quiet().models.load_model(out)
    xs = [np.random.default_rng(0).standard_normal((3, 5, 3)).astype("float32")]
    for p, q in zip(predict(migrated, xs), predict(model, xs), strict=True):
        np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-5)
    assert len(migrated.weights) == len(model.weights)
    from weightcli.stores import open_store

    with open_store(src) as saved:  # every variable's bytes, carried
        want = [saved.read(t) for t in saved.tensors() if not t.optimizer]
        want = sorted(np.asarray(a).tobytes() for a in want)
    assert sorted(archive_datasets(out).values()) == want


def test_a_keras_2_1_sequential_config_is_put_in_the_form_keras3_reads(tmp_path: Path) -> None:
    """Keras 2.0 to 2.2 saved a Sequential's config as a bare list, its input shape as
    the first layer's ``batch_input_shape`` (no InputLayer): Keras 3 cannot load it.
    Migrated, Keras 3 loads it and predicts what tf_keras predicts on the original."""
    tk = tf_keras()
    tk.utils.set_random_seed(4)
    model = tk.Sequential([tk.Input((5, 3)), tk.layers.LSTM(4), tk.layers.Dense(2)])
    src = tmp_path / "old.h5"
    model.save(src)
    with h5py.File(src, "r+") as f:
        cfg = json.loads(f.attrs["model_config"])
        layers = [x for x in cfg["config"]["layers"] if x["class_name"] != "InputLayer"]
        layers[0]["config"]["batch_input_shape"] = [None, 5, 3]
        f.attrs["model_config"] = json.dumps({"class_name": "Sequential", "config": layers})
    assert not loads(src, "keras3")  # premise: Keras 3 refuses the old form
    assert verdict(src)["keras3"]["loads"] is False
    xs = [np.random.default_rng(0).standard_normal((3, 5, 3)).astype("float32")]
    for out in (tmp_path / "new.h5", tmp_path / "new.keras"):
        res = run("migrate", src, "-o", out, "--json")
        assert res.code == 0, res.err
        rules_used = {c["rule"] for c in res.json()["changes"]}
        assert {"sequential-list", "sequential-input"} <= rules_used
        migrated = keras_quiet().models.load_model(out)
        for p, q in zip(predict(migrated, xs), predict(model, xs), strict=True):
            np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-5)


def test_hard_sigmoid_means_another_function_in_keras3(tmp_path: Path) -> None:
    """tf.keras's hard_sigmoid is clip(0.2x + 0.5), Keras 3's clip(x/6 + 0.5): a model
    using it (here a Dense layer's activation) loads in Keras 3 and computes other numbers. inspect says it does not load
    as it was, and migrate refuses it (either way), naming the layer."""
    tk = tf_keras()
    tk.utils.set_random_seed(5)
    model = tk.Sequential(
        [tk.Input((6,)), tk.layers.Dense(4, activation="hard_sigmoid", name="gate")]
    )
    src = tmp_path / "m.h5"
    model.save(src)
    xs = [np.random.default_rng(0).standard_normal((3, 6)).astype("float32")]
    in_keras3 = keras_quiet().models.load_model(src, compile=False)
    assert not np.allclose(predict(in_keras3, xs)[0], predict(model, xs)[0], atol=1e-3)
    v = verdict(src)["keras3"]
    assert v["loads"] is False and any("hard_sigmoid" in k for k in v["needs"])
    for out in (tmp_path / "o.h5", tmp_path / "o.keras"):
        res = run("migrate", src, "-o", out)
        assert res.code == 2 and "gate" in res.err and "hard_sigmoid" in res.err
        assert len(res.err.strip().splitlines()) == 1 and not out.exists()
    real = REAL / "dl4j_keras2_bidirectional_lstm" / "bidirectional_lstm_tensorflow_2.h5"
    if real.exists():  # a Keras 2.1.3 LSTM, hard_sigmoid by default
        res = run("migrate", real, "-o", tmp_path / "real.keras")
        assert res.code == 2 and "lstm_1" in res.err and "hard_sigmoid" in res.err
    keras = keras_quiet()  # the other way: a Keras 3 model for tf_keras
    k3 = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, activation="hard_sigmoid")])
    k3.save(tmp_path / "k3.keras")
    res = run("migrate", tmp_path / "k3.keras", "-o", tmp_path / "k3.h5")
    assert res.code == 2 and "hard_sigmoid" in res.err and not (tmp_path / "k3.h5").exists()


@pytest.mark.parametrize(
    ("model", "out", "line"),
    [
        ("hrithik_gan_nested_sequential/gan.h5", "gan.keras", "keras3"),
        ("cryptic_keras3_keras_zip/model.keras", "model.h5", "tf-keras"),
    ],
)
def test_real_models_written_by_other_people(
    tmp_path: Path, model: str, out: str, line: str
) -> None:
    """Files from other people's projects (../shared/real_models): a Keras 2.10 GAN of
    nested Sequentials to .keras, a Keras 3.5 archive to .h5 for tf_keras; the output
    predicts what the original predicts in its own Keras."""
    src = REAL / model
    if not src.exists():
        pytest.skip("needs ../shared/real_models")
    res = run("migrate", src, "-o", tmp_path / out)
    assert res.code == 0, res.err
    mine = tf_keras() if line == "tf-keras" else keras_quiet()
    theirs = keras_quiet() if line == "tf-keras" else tf_keras()
    original = theirs.models.load_model(src, compile=False)
    migrated = mine.models.load_model(tmp_path / out, compile=False)
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((2, *t.shape[1:])).astype("float32") for t in original.inputs]
    for p, q in zip(predict(migrated, xs), predict(original, xs), strict=True):
        np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-5)


def _unknown_layer(c: dict) -> None:
    c["config"]["layers"][1]["inbound_nodes"][0][0][0] = "nope"


def _cycle(c: dict) -> None:
    layers = c["config"]["layers"]
    layers[1]["inbound_nodes"][0][0][0] = layers[2]["name"]
    layers[2]["inbound_nodes"][0][0][0] = layers[1]["name"]


def _bad_node(c: dict) -> None:
    c["config"]["layers"][1]["inbound_nodes"] = [[["x"]]]


def _input_node(c: dict) -> None:
    c["config"]["layers"][1]["inbound_nodes"][0][0][1] = 99


def _ghost_output(c: dict) -> None:
    c["config"]["output_layers"] = [["ghost", 0, 0]]


def _deep(c: dict) -> None:
    x: dict = {}
    for _ in range(900):  # as deep as json.dumps goes: past what a recursive walk can
        x = {"a": x}
    c["config"]["layers"][1]["config"]["junk"] = x


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (_unknown_layer, "unknown layer"),
        (_cycle, "cycle"),
        (_bad_node, "not understood"),
        (_input_node, "does not exist"),
        (_ghost_output, "unknown layer"),
        (_deep, "model"),
    ],
    ids=lambda v: getattr(v, "__name__", None),
)
def test_a_damaged_graph_is_one_line_for_a_keras_archive(tmp_path: Path, damage, says: str) -> None:
    """The layout replays the config's graph: a graph that cannot be replayed is one
    line, exit 2, nothing written."""
    src = tmp_path / "m.h5"
    catalogue("concatenate_add").save(src)
    with h5py.File(src, "r+") as f:
        cfg = json.loads(f.attrs["model_config"])
        damage(cfg)
        f.attrs["model_config"] = json.dumps(cfg)
    res = run("migrate", src, "-o", tmp_path / "out.keras")
    assert res.code == 2 and says in res.err, res.err
    assert len(res.err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.h5"]


def test_an_activation_only_keras3_defines_is_refused_for_tf_keras(tmp_path: Path) -> None:
    keras = keras_quiet()
    model = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(4, activation="hard_silu", name="act")]
    )
    src = tmp_path / "m.h5"
    model.save(src)
    assert not loads(src, "tf-keras")  # premise: tf_keras cannot load it
    v = verdict(src)["tf-keras"]
    assert v["loads"] is False and any("hard_silu" in k for k in v["needs"])
    res = run("migrate", src, "-o", tmp_path / "out.h5")
    assert res.code == 2 and "act" in res.err and "hard_silu" in res.err
    assert not (tmp_path / "out.h5").exists()


def test_a_keras3_leaky_relu_loads_in_tf_keras(tmp_path: Path) -> None:
    """Keras 3 saves LeakyReLU's slope as ``negative_slope``; tf_keras reads ``alpha``."""
    keras = keras_quiet()
    keras.utils.set_random_seed(6)
    model = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(4), keras.layers.LeakyReLU(0.2)]
    )
    src, out = tmp_path / "m.h5", tmp_path / "out.h5"
    model.save(src)
    assert not loads(src, "tf-keras") and verdict(src)["tf-keras"]["loads"] is False
    res = run("migrate", src, "-o", out, "--json")
    assert res.code == 0 and "leaky-alpha" in {c["rule"] for c in res.json()["changes"]}
    xs = [np.random.default_rng(0).standard_normal((3, 6)).astype("float32")]
    migrated = tf_keras().models.load_model(out)
    np.testing.assert_allclose(predict(migrated, xs)[0], predict(model, xs)[0], atol=1e-6)


@pytest.mark.parametrize("family", ["spatial_dropout", "layernorm_axes"])
def test_layers_keras3_reads_another_way(tmp_path: Path, family: str) -> None:
    """tf.keras's SpatialDropout saves arguments Keras 3's does not take
    (``spatial-noise-shape``); Keras 3's legacy loader drops a LayerNormalization's
    multi-axis ``axis`` (``list-axis``). Both load in Keras 3 and predict as before."""
    tk = tf_keras()
    L = tk.layers
    tk.utils.set_random_seed(7)
    x = tk.Input((8, 3) if family == "spatial_dropout" else (4, 6))
    y = (
        L.Conv1D(2, 3)(L.SpatialDropout1D(0.2)(x))
        if family == "spatial_dropout"
        else L.LayerNormalization(axis=[1, 2], name="ln")(x)
    )
    model = tk.Model(x, y)
    src = tmp_path / "m.h5"
    model.save(src)
    assert verdict(src)["keras3"]["loads"] is False
    xs = [np.random.default_rng(0).standard_normal((4, *x.shape[1:])).astype("float32")]
    # the reference: tf_keras's model called eagerly (its predict() of a multi-axis
    # LayerNormalization fails in graph mode: "scale must be 1D")
    want = [np.asarray(model(xs[0], training=False))]
    for out in (tmp_path / "o.h5", tmp_path / "o.keras"):
        res = run("migrate", src, "-o", out)
        assert res.code == 0, res.err
        migrated = keras_quiet().models.load_model(out)
        for p, q in zip(predict(migrated, xs), want, strict=True):
            np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-5)


def test_check_feeds_an_embedding_valid_indices(tmp_path: Path) -> None:
    """--check's seeded inputs for an input read by an Embedding are row indices (random
    floats made the original fail, and the check said the output had)."""
    src = tmp_path / "m.h5"
    model = tf_keras().Sequential(
        [tf_keras().Input((5,)), tf_keras().layers.Embedding(30, 4), tf_keras().layers.Flatten()]
    )
    model.save(src)
    res = run("migrate", src, "-o", tmp_path / "o.keras", "--check", "--json")
    assert res.code == 0, res.err
    assert res.json()["check"]["status"] == "PASS", res.json()["check"]


def test_a_keras3_masking_layer_loads_in_tf_keras(tmp_path: Path) -> None:
    """Keras 3 saves Masking's mask as ``Any(NotEqual(x, v), axis=-1)`` layers passed
    as the next layer's ``mask``; tf.keras's Masking computes and passes it itself (the
    ``implicit-mask`` rule). Masked time steps included, tf_keras predicts as Keras 3."""
    keras = keras_quiet()
    keras.utils.set_random_seed(9)
    x = keras.Input((5, 3))
    model = keras.Model(x, keras.layers.SimpleRNN(2)(keras.layers.Masking(0.0)(x)))
    src, out = tmp_path / "m.keras", tmp_path / "o.h5"
    model.save(src)
    res = run("migrate", src, "-o", out, "--json")
    assert res.code == 0, res.err
    removed = {c["old"] for c in res.json()["changes"] if c["key"] == "layer"}
    assert removed == {"NotEqual", "Any"}
    x = np.random.default_rng(0).standard_normal((4, 5, 3)).astype("float32")
    x[:, 3:] = 0.0  # masked steps: the mask matters
    migrated = tf_keras().models.load_model(out)
    np.testing.assert_allclose(predict(migrated, [x])[0], predict(model, [x])[0], atol=1e-5)


def test_a_keras3_convlstm_loads_in_tf_keras(tmp_path: Path) -> None:
    keras = keras_quiet()
    keras.utils.set_random_seed(8)
    model = keras.Sequential([keras.Input((3, 5, 5, 2)), keras.layers.ConvLSTM2D(2, 3)])
    src, out = tmp_path / "m.h5", tmp_path / "o.h5"
    model.save(src)
    res = run("migrate", src, "-o", out)
    assert res.code == 0, res.err
    xs = [np.random.default_rng(0).standard_normal((2, 3, 5, 5, 2)).astype("float32")]
    migrated = tf_keras().models.load_model(out)
    np.testing.assert_allclose(predict(migrated, xs)[0], predict(model, xs)[0], atol=1e-5)


def _preprocessing_zoo(k) -> dict:
    """Small models of layers whose saved configs differ between the two Kerases."""
    L = k.layers

    def model(shape, *layers, dtype="float32"):
        x = k.Input(shape, dtype=dtype)
        y = x
        for layer in layers:
            y = layer(y)
        return k.Model(x, y)

    def normalization():
        n = L.Normalization()
        n.adapt(np.random.default_rng(0).random((20, 4)).astype("float32") * 3 + 1)
        return model((4,), n, L.Dense(2))

    def attention():
        q = k.Input((5, 4))
        return k.Model(q, L.Attention()([q, q]))

    return {
        "normalization": normalization,
        "discretization": lambda: model(
            (4,), L.Discretization(bin_boundaries=[0.0, 0.5]), L.CategoryEncoding(3, "count")
        ),
        "augmentation": lambda: model(
            (8, 8, 3), L.RandomFlip(), L.RandomRotation(0.1), L.Resizing(4, 4), L.Conv2D(2, 3)
        ),
        "lookup": lambda: model((3,), L.IntegerLookup(vocabulary=[1, 2, 3]), dtype="int64"),
        "attention": attention,
    }


def _zoo_inputs(model) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    xs = []
    for t in model.inputs:
        shape = (2, *t.shape[1:])
        if "int" in str(t.dtype):
            xs.append(rng.integers(0, 5, size=shape).astype("int64"))
        else:
            xs.append(rng.random(shape).astype("float32"))
    return xs


@pytest.mark.parametrize(
    "name", ["normalization", "discretization", "augmentation", "lookup", "attention"]
)
def test_preprocessing_and_attention_both_ways(tmp_path: Path, name: str) -> None:
    """tf.keras to a Keras 3 archive (``no-trainable``, ``rng-type``,
    ``attention-score-mode``, the Normalization and Attention variables), and Keras 3
    to tf.keras (``keras3-keys`` per class, ``lookup-dtype``, node ``training`` dropped:
    with it, tf_keras's RandomFlip kept flipping at inference). Predictions equal."""
    tk, keras = tf_keras(), keras_quiet()
    # (built by, saved as, migrated to, loaded by)
    for maker, src, out, loader in (
        (tk, tmp_path / "tk.h5", tmp_path / "tk.keras", keras),
        (keras, tmp_path / "k3.keras", tmp_path / "k3.h5", tk),
    ):
        maker.utils.set_random_seed(10)
        model = _preprocessing_zoo(maker)[name]()
        model.save(src)
        res = run("migrate", src, "-o", out)
        assert res.code == 0, res.err
        xs = _zoo_inputs(model)
        got = loader.models.load_model(out)
        for p, q in zip(predict(got, xs), predict(model, xs), strict=True):
            np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-5)


def test_monte_carlo_dropout_is_refused_for_keras3(tmp_path: Path) -> None:
    """``training=True`` in a tf.keras graph survives predict(); Keras 3 overrides it."""
    tk = tf_keras()
    x = tk.Input((6,))
    model = tk.Model(x, tk.layers.Dropout(0.5, name="mc")(tk.layers.Dense(4)(x), training=True))
    src = tmp_path / "m.h5"
    model.save(src)
    assert verdict(src)["keras3"]["loads"] is False
    res = run("migrate", src, "-o", tmp_path / "o.keras")
    assert res.code == 2 and "mc" in res.err and "training=True" in res.err


def test_a_keras_1_file_is_refused_with_what_to_do(tmp_path: Path) -> None:
    """A Keras 1.2.2 LSTM (its weights as 12 gate arrays): no current Keras loads it,
    and carrying it would mean rewriting its weights; one line says what to do."""
    src = REAL / "dl4j_keras1_lstm_full_model" / "simple_lstm_tf_keras_1_model.h5"
    if not src.exists():
        pytest.skip("needs ../shared/real_models")
    v = verdict(src)
    assert v["keras3"]["loads"] is False and v["tf-keras"]["loads"] is False
    for out in ("o.h5", "o.keras"):
        res = run("migrate", src, "-o", tmp_path / out)
        assert res.code == 2 and "Keras 1" in res.err and "Keras 2.2" in res.err
        assert len(res.err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_what_a_keras_archive_cannot_hold_is_refused(tmp_path: Path) -> None:
    res = run("migrate", SAMPLES / "mlp_keras3.h5", "-o", tmp_path / "x.keras")
    assert res.code == 2 and "Keras 3's format" in res.err, res.err  # for tf_keras
    src = tmp_path / "m.h5"
    catalogue("dense").save(src)
    res = run("migrate", src, "-o", tmp_path / "x.h5", "--for", "tf-keras")
    assert res.code == 2 and "give --for the other line" in res.err, res.err
    with h5py.File(src, "r+") as f:  # a weighted class the layout table does not know
        cfg = json.loads(f.attrs["model_config"])
        cfg["config"]["layers"][1]["class_name"] = "MyDense"
        f.attrs["model_config"] = json.dumps(cfg)
    code = tmp_path / "custom.py"
    code.write_text(CUSTOM_LAYER.replace("class Scale", "class MyDense"))
    res = run("migrate", src, "-o", tmp_path / "x.keras", "--custom-objects", code)
    assert res.code == 2 and "MyDense" in res.err and "OUT.h5" in res.err, res.err
    assert len(res.err.strip().splitlines()) == 1
    assert set(tmp_path.iterdir()) == {src, code}  # nothing written, no temporary left
    assert run("migrate", src, "-o", tmp_path / "x.h5", "--custom-objects", code).code == 0


def test_a_batch_names_each_output_for_its_layout(tmp_path: Path) -> None:
    """Over a folder: a Keras 3 archive becomes an .h5 for tf_keras, a tf.keras
    SavedModel a .keras for Keras 3 (the mirrored names take the written format's
    suffix), a legacy .h5 stays an .h5."""
    import shutil

    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(SAMPLES / "mlp.keras", src / "mlp.keras")
    shutil.copytree(SAMPLES / "mlp_tfkeras_savedmodel", src / "saved")
    shutil.copy(SAMPLES / "mobile_tfkeras.h5", src / "mobile.h5")
    out = tmp_path / "out"
    res = run("migrate", "-r", src, "--output-dir", out)
    assert res.code == 0, res.err
    assert sorted(p.name for p in out.iterdir()) == ["mlp.h5", "mobile.h5", "saved.keras"]
    assert verdict(out / "mlp.h5")["tf-keras"]["loads"] is True
    assert verdict(out / "saved.keras")["keras3"]["loads"] is True


def test_a_keras3_archive_is_said_not_to_load_in_tf_keras() -> None:
    """inspect's verdict for a .keras archive agrees with tf_keras, and points at no
    migrate that cannot help (migrate reads legacy .h5 files)."""
    v = verdict(SAMPLES / "mlp.keras")
    assert v["keras3"]["loads"] is True and loads(SAMPLES / "mlp.keras", "keras3")
    assert v["tf-keras"] == {"loads": False, "needs": {"not a legacy .h5": 1}}
    assert not loads(SAMPLES / "mlp.keras", "tf-keras")


CUSTOM_LAYER = """
import keras


@keras.saving.register_keras_serializable(package="weightcli_test")
class Scale(keras.layers.Layer):
    def __init__(self, factor=1.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor
        self.w = None

    def build(self, shape):
        self.w = self.add_weight(shape=(shape[-1],), initializer="ones", name="w")

    def call(self, x):
        return x * self.w * self.factor

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}
"""


def test_custom_objects_carry_the_users_own_layer(tmp_path: Path) -> None:
    """A tf.keras model with a custom layer: refused without its code; with
    --custom-objects (the Keras 3 class) its layer is carried as it is, and Keras 3 loads
    OUT with that class and predicts what tf_keras predicts on the original."""
    tk = tf_keras()

    class Scale(tk.layers.Layer):
        def __init__(self, factor=1.0, **kwargs):
            super().__init__(**kwargs)
            self.factor = factor

        def build(self, shape):
            self.w = self.add_weight(shape=(shape[-1],), initializer="random_normal", name="w")

        def call(self, x):
            return x * self.w * self.factor

        def get_config(self):
            return {**super().get_config(), "factor": self.factor}

    x = tk.Input((4,))
    model = tk.Model(x, Scale(2.0, name="scale")(tk.layers.Dense(4, name="d")(x)))
    src, out, code = tmp_path / "m.h5", tmp_path / "out.h5", tmp_path / "custom.py"
    model.save(src)
    code.write_text(CUSTOM_LAYER)
    refused = run("migrate", src, "-o", out)
    assert refused.code == 2 and "--custom-objects" in refused.err and not out.exists()
    res = run("migrate", src, "-o", out, "--custom-objects", code)
    assert res.code == 0, res.err
    import importlib.util

    spec = importlib.util.spec_from_file_location("weightcli_test_custom", code)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    keras = keras_quiet()
    migrated = keras.models.load_model(out, custom_objects={"Scale": module.Scale})
    xs = np.random.default_rng(0).standard_normal((3, 4)).astype("float32")
    np.testing.assert_allclose(
        migrated.predict(xs, verbose=0), model.predict(xs, verbose=0), atol=1e-6
    )
