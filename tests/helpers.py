"""Every shared test helper: paths of the samples, the CLI runner, loading checkpoints
with the real frameworks (the oracle; Keras imported lazily), byte-level HDF5 comparison.
Fixtures live in conftest.py."""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from click.testing import CliRunner

from weightcli.cli import cli

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_models"
REAL = ROOT.parent / "shared" / "real_models"

H5_SAMPLES = sorted(p for p in SAMPLES.iterdir() if p.suffix in (".h5", ".keras"))
REAL_H5 = (
    sorted(p for p in REAL.glob("*/*") if p.suffix in (".h5", ".keras")) if REAL.is_dir() else []
)


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> object:
        return json.loads(self.out)

    def lines(self) -> list[object]:
        return [json.loads(line) for line in self.out.splitlines() if line.strip()]


def run(*args: object) -> Result:
    """Run the CLI in-process, as a user would type it."""
    runner = CliRunner()
    res = runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return Result(res.exit_code, res.stdout, res.stderr)


def extract_weights(path: Path, dest: Path) -> Path:
    """The HDF5 file holding a checkpoint's weights: the file itself, or a .keras member."""
    if zipfile.is_zipfile(path):
        out = dest / (path.name + ".weights.h5")
        with zipfile.ZipFile(path) as zf:
            out.write_bytes(zf.read("model.weights.h5"))
        return out
    return path


# -- the frameworks as oracle ---


def mlp_input(n: int = 8) -> np.ndarray:
    return np.load(SAMPLES / "mlp_calibration.npy")[:n]


def cnn_input(n: int = 4) -> np.ndarray:
    return np.random.default_rng(1).normal(size=(n, 12, 12, 3)).astype("float32")


def load(path: Path, kind: str):
    """A runnable model from ``path``; ``kind`` says which framework and how.

    keras3-full: keras.models.load_model; keras3-weights-<arch>: the architecture from
    sample_models/<arch>.keras, then load_weights; tfkeras-full / tfkeras-weights-<arch>: the
    same with tf-keras (Keras 2).
    """
    if kind.startswith("keras3"):
        import keras

        if kind == "keras3-full":
            return keras.models.load_model(path, compile=False)
        arch = kind.split("-", 2)[2]
        model = keras.models.load_model(SAMPLES / f"{arch}.keras", compile=False)
        model.load_weights(path)
        return model
    import tf_keras

    if kind == "tfkeras-full":
        return tf_keras.models.load_model(path, compile=False)
    arch = kind.split("-", 2)[2]
    model = tf_keras.models.load_model(SAMPLES / f"{arch}_tfkeras.h5", compile=False)
    model.load_weights(path)
    return model


def predict(model, x: np.ndarray) -> np.ndarray:
    return np.asarray(model(x, training=False))


# Every HDF5-family MLP sample with the way to load it.
MLP_FORMATS = [
    ("mlp_keras3.h5", "keras3-full"),
    ("mlp.keras", "keras3-full"),
    ("mlp.weights.h5", "keras3-weights-mlp"),
    ("mlp_tfkeras.h5", "tfkeras-full"),
    ("mlp_tfkeras_weights.h5", "tfkeras-weights-mlp"),
]


# -- byte-level HDF5 comparison ---


def objects(path: Path | str) -> dict[str, tuple[str, dict[str, bytes], bytes | None]]:
    """path -> (kind, attributes as raw bytes, dataset raw bytes)."""
    out: dict[str, tuple[str, dict[str, bytes], bytes | None]] = {}
    with h5py.File(path, "r") as f:

        def attrs(o: h5py.HLObject) -> dict[str, bytes]:
            return {k: _raw(o.attrs[k]) + str(o.attrs.get_id(k).dtype).encode() for k in o.attrs}

        out["/"] = ("group", attrs(f), None)

        def visit(name: str, o: object) -> None:
            if isinstance(o, h5py.Dataset):
                data = _raw(o[()]) + str(o.dtype).encode() + str(o.shape).encode()
                out["/" + name] = ("dataset", attrs(o), data)
            else:
                out["/" + name] = ("group", attrs(o), None)  # type: ignore[arg-type]

        f.visititems(visit)
    return out


def _raw(value: object) -> bytes:
    a = np.asarray(value)
    if a.dtype.kind == "O":  # variable-length strings: compare values, not pointers
        return repr(a.tolist()).encode()
    return a.tobytes()


def weights_file(path: Path, tmp: Path) -> Path:
    return extract_weights(path, tmp)


def differing(a: Path, b: Path, tmp: Path) -> set[str]:
    """Objects whose data or attributes differ, plus objects only in one file."""
    oa = objects(weights_file(a, tmp))
    ob = objects(weights_file(b, tmp))
    return {k for k in oa.keys() | ob.keys() if oa.get(k) != ob.get(k)}


def keras_quiet():
    """Keras, imported without TensorFlow's start-up chatter."""
    from weightcli.framework import keras_module

    return keras_module()
