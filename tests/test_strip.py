"""``strip``: models built and trained with TensorFlow Model Optimization (tf_keras;
pruning, clustering, quantization-aware training; Sequential and functional), saved as
.h5 by TFMOT's own process. The stripped files load in a process where TFMOT cannot be
imported, and predict what ``tfmot.*.strip_*`` of the live model predicts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import run
from test_bad_input import assert_clean_error

BUILD = r"""
import os, sys, json
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np
import tensorflow_model_optimization as tfmot
import tf_keras as keras

out = sys.argv[1]
keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)
x = rng.standard_normal((16, 6)).astype("float32")
y = rng.standard_normal((16, 3)).astype("float32")
np.save(os.path.join(out, "x.npy"), x)


def sequential():
    return keras.Sequential([keras.layers.Input((6,)), keras.layers.Dense(8, activation="relu", name="d1"), keras.layers.Dense(3, name="d2")])


def functional():
    inp = keras.Input((6,), name="inp")
    h = keras.layers.Dense(8, activation="relu", name="f1")(inp)
    return keras.Model(inp, keras.layers.Dense(3, name="f2")(h))


def train(model, callbacks=()):
    model.compile("adam", "mse")
    model.fit(x, y, epochs=2, verbose=0, callbacks=list(callbacks))
    return model


want = {}
for arch, make in (("seq", sequential), ("fun", functional)):
    pruned = tfmot.sparsity.keras.prune_low_magnitude(
        make(), pruning_schedule=tfmot.sparsity.keras.ConstantSparsity(0.5, 0, frequency=1)
    )
    train(pruned, [tfmot.sparsity.keras.UpdatePruningStep()])
    pruned.save(os.path.join(out, f"pruned_{arch}.h5"))
    want[f"pruned_{arch}"] = tfmot.sparsity.keras.strip_pruning(pruned).predict(x, verbose=0).tolist()
    if arch == "fun":  # and as a SavedModel folder (TFMOT allows it for pruning)
        pruned.save(os.path.join(out, f"pruned_{arch}_saved"))
        want[f"pruned_{arch}_saved"] = want[f"pruned_{arch}"]

    clustered = tfmot.clustering.keras.cluster_weights(
        make(), number_of_clusters=4,
        cluster_centroids_init=tfmot.clustering.keras.CentroidInitialization.LINEAR,
    )
    train(clustered)
    clustered.save(os.path.join(out, f"clustered_{arch}.h5"))
    want[f"clustered_{arch}"] = tfmot.clustering.keras.strip_clustering(clustered).predict(x, verbose=0).tolist()
    if arch == "seq":  # and as a SavedModel folder
        clustered.save(os.path.join(out, f"clustered_{arch}_saved"))
        want[f"clustered_{arch}_saved"] = want[f"clustered_{arch}"]

    qat = tfmot.quantization.keras.quantize_model(make())
    train(qat)
    qat.save(os.path.join(out, f"qat_{arch}.h5"))
    # no strip_* for QAT: the float model is the wrapped layers' weights as stored
    want[f"qat_{arch}"] = {  # the wrapped layer's own variables, held by the wrapper
        layer.layer.name: {
            w.name.split("/")[-1]: w.numpy().tolist()
            for w in layer.weights if w.name.startswith(layer.layer.name + "/")
        }
        for layer in qat.layers if hasattr(layer, "layer")
    }
# per-channel clustering (Conv2D only): each output channel its own centroids
x2 = rng.standard_normal((8, 6, 6, 2)).astype("float32")
np.save(os.path.join(out, "x2.npy"), x2)
conv = keras.Sequential([keras.layers.Input((6, 6, 2)), keras.layers.Conv2D(4, 3, name="c1"), keras.layers.Flatten(), keras.layers.Dense(3, name="d")])
per_channel = tfmot.clustering.keras.cluster_weights(
    conv, number_of_clusters=3, cluster_per_channel=True,
    cluster_centroids_init=tfmot.clustering.keras.CentroidInitialization.LINEAR,
)
per_channel.compile("adam", "mse")
per_channel.fit(x2, rng.standard_normal((8, 3)).astype("float32"), epochs=2, verbose=0)
per_channel.save(os.path.join(out, "clustered_perchannel.h5"))
want["clustered_perchannel"] = tfmot.clustering.keras.strip_clustering(per_channel).predict(x2, verbose=0).tolist()
json.dump(want, open(os.path.join(out, "want.json"), "w"))
"""

LOAD = r"""
import os, sys, json
sys.modules["tensorflow_model_optimization"] = None  # TFMOT cannot be imported here
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np
import tf_keras as keras

out = sys.argv[1]
got = {}
for name in sys.argv[2:]:
    x = np.load(os.path.join(out, "x2.npy" if name == "clustered_perchannel" else "x.npy"))
    model = keras.models.load_model(os.path.join(out, f"stripped_{name}.h5"), compile=False)
    assert not any("Prune" in type(l).__name__ or "Cluster" in type(l).__name__ or "Quantize" in type(l).__name__ for l in model.layers)
    got[name] = {
        "predict": model.predict(x, verbose=0).tolist(),
        "weights": {l.name: {w.name.split("/")[-1]: w.numpy().tolist() for w in l.weights} for l in model.layers},
    }
json.dump(got, open(os.path.join(out, "got.json"), "w"))
"""

NAMES = [f"{kind}_{arch}" for kind in ("pruned", "clustered", "qat") for arch in ("seq", "fun")]
NAMES.append("clustered_perchannel")
SAVED = ["pruned_fun_saved", "clustered_seq_saved"]  # SavedModel folders (model.save(dir))


def _python(script: str, *args: object) -> None:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    res = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.fixture(scope="module")
def stripped(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    root = tmp_path_factory.mktemp("tfmot")
    _python(BUILD, root)
    for name in NAMES + SAVED:
        src = root / (name if name in SAVED else f"{name}.h5")
        res = run("strip", src, "-o", root / f"stripped_{name}.h5", "--json")
        assert res.code == 0, res.err
    _python(LOAD, root, *NAMES, *SAVED)
    want = json.loads((root / "want.json").read_text())
    got = json.loads((root / "got.json").read_text())
    return root, want, got


@pytest.mark.parametrize("name", [n for n in NAMES + SAVED if not n.startswith("qat")])
def test_stripped_models_predict_what_tfmot_strip_gives(stripped, name: str) -> None:
    _, want, got = stripped
    np.testing.assert_allclose(got[name]["predict"], want[name], atol=1e-6)


@pytest.mark.parametrize("name", ["qat_seq", "qat_fun"])
def test_a_qat_model_becomes_its_float_model(stripped, name: str) -> None:
    _, want, got = stripped
    for layer, weights in want[name].items():
        assert sorted(got[name]["weights"][layer]) == sorted(weights) == ["bias:0", "kernel:0"]
        for key, value in weights.items():
            np.testing.assert_array_equal(
                np.asarray(got[name]["weights"][layer][key]), np.asarray(value)
            )


def test_the_report_and_what_was_dropped(stripped) -> None:
    root, _, got = stripped
    doc = run("strip", root / "pruned_seq.h5", "--dry-run", "--json").json()
    assert {w["how"] for w in doc["weights"] if w["weight"].endswith("kernel:0")} == {
        "kernel x mask"
    }
    assert any(d.endswith("mask:0") for d in doc["dropped"]) and doc["optimizer_dropped"]
    assert not list(root.glob("*.tmp"))
    # the pruned kernels hold the masks' zeros
    kernel = np.asarray(got["pruned_seq"]["weights"]["d1"]["kernel:0"])
    assert np.count_nonzero(kernel == 0) >= kernel.size // 2


def test_a_plain_model_has_nothing_to_strip(tmp_path: Path) -> None:
    from helpers import SAMPLES

    assert_clean_error(
        run("strip", SAMPLES / "mlp_tfkeras.h5", "-o", tmp_path / "x.h5"), "nothing to strip"
    )
    assert_clean_error(run("strip", SAMPLES / "mlp.keras", "-o", tmp_path / "x.keras"), "legacy")
    assert_clean_error(  # a SavedModel without TFMOT's wrappers
        run("strip", SAMPLES / "mlp_tfkeras_savedmodel", "-o", tmp_path / "x.h5"),
        "nothing to strip",
    )
    assert not list(tmp_path.iterdir())
