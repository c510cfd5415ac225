"""Load checkpoints with the real frameworks (the oracle). Imports Keras lazily."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"


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
