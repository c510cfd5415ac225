"""A model file's own code never runs unless the user says so (``verify --trust-code``):
a Keras 2 ``.h5`` with a Lambda's bytecode, a SavedModel whose graph writes a file.

The files are made by the real writers (tf_keras, tf.saved_model.save) in a child
process; each carries code that creates a marker file when it runs. The opt-in runs
prove that premise: the marker appears with ``--trust-code`` and never without."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import run

MAKE = textwrap.dedent(
    """
    import os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    out, marker = sys.argv[1], sys.argv[2]
    import numpy as np
    import tensorflow as tf
    import tf_keras

    # A Lambda whose bytecode touches the marker (Keras 2 marshals it into the .h5).
    src = "lambda x: __import__('pathlib').Path(%r).touch() or x" % (marker + ".lambda")
    inp = tf_keras.Input((4,))
    y = tf_keras.layers.Dense(3, name="dense")(inp)
    y = tf_keras.layers.Lambda(eval(src), name="evil_lambda")(y)
    tf_keras.Model(inp, y).save(os.path.join(out, "lambda.h5"))

    class Evil(tf.Module):
        def __init__(self):
            self.w = tf.Variable(np.ones((4, 3), "float32"))

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
        def serve(self, x):
            tf.io.write_file(marker + ".graph", "ran")
            return {"y": tf.matmul(x, self.w)}

    m = Evil()
    tf.saved_model.save(m, os.path.join(out, "graph_sm"), signatures={"serving_default": m.serve})
    """
)


@pytest.fixture(scope="module")
def evil(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("evil")
    marker = folder / "marker"
    subprocess.run(
        [sys.executable, "-c", MAKE, str(folder), str(marker)], check=True, capture_output=True
    )
    # Building the model ran the Lambda once, in the writer's process.
    Path(str(marker) + ".lambda").unlink(missing_ok=True)
    return folder, marker


def test_verify_never_runs_lambda_bytecode_without_trust(evil: tuple[Path, Path]) -> None:
    folder, marker = evil
    flag = Path(str(marker) + ".lambda")
    res = run("verify", folder / "lambda.h5", "--json")
    assert not flag.exists(), "the Lambda's code ran"
    doc = res.json()
    loads = next(c for c in doc["checks"] if c["name"] == "loads")
    assert loads["status"] == "FAIL" and "--trust-code" in loads["detail"]
    assert "evil_lambda" in loads["detail"]
    assert res.code == 1
    # The premise: this file's code does run when loading is trusted.
    res = run("verify", folder / "lambda.h5", "--trust-code", "--json")
    assert flag.exists(), res.out + res.err
    flag.unlink()


def test_verify_loads_a_savedmodel_only_when_trusted(evil: tuple[Path, Path]) -> None:
    folder, marker = evil
    flag = Path(str(marker) + ".graph")
    res = run("verify", folder / "graph_sm", "--json")
    assert res.code == 0, res.out + res.err
    loads = next(c for c in res.json()["checks"] if c["name"] == "loads")
    assert loads["status"] == "SKIP" and "--trust-code" in loads["detail"]
    assert not flag.exists(), "the SavedModel's graph ran"
    res = run("verify", folder / "graph_sm", "--trust-code", "--json")
    assert res.code == 0, res.out + res.err
    assert flag.exists()
    flag.unlink()


def test_a_batch_verify_never_runs_the_code_either(evil: tuple[Path, Path]) -> None:
    folder, marker = evil
    res = run("verify", "-r", folder, "--json", "-j", "1")
    assert not Path(str(marker) + ".lambda").exists()
    assert not Path(str(marker) + ".graph").exists()
    assert res.code == 1  # the Lambda model's "loads" failed, the SavedModel's skipped
