"""Regenerate the bundled sample models in sample_models/ (``make samples``).

Deterministic: fixed seeds, a few epochs of training on synthetic data so the
weights are not just their initialisers. Writes Keras 3 (.h5, .keras,
.weights.h5), tf-keras / Keras 2 (.h5 full and weights-only, SavedModel
directory), TensorFlow SavedModels (Keras 3 ``export``, ``tf.saved_model.save``),
a ``tf.train.Checkpoint``, a model with planted NaN/Inf, calibration data, and the
newer Keras 3 files (sharded weights, an unzipped model folder, int8/int4 archives).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402

OUT = Path(sys.argv[1] if len(sys.argv) > 1 else "sample_models")


def data(shape: tuple[int, ...], classes: int, n: int = 256) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, *shape)).astype("float32")
    w = rng.normal(size=(int(np.prod(shape)), classes))
    y = np.argmax(x.reshape(n, -1) @ w, axis=1)
    return x, y


def keras3_models() -> dict[str, object]:
    import keras

    keras.utils.set_random_seed(0)
    mlp = keras.Sequential(
        [
            keras.Input((20,)),
            keras.layers.Dense(32, activation="relu", name="dense_1"),
            keras.layers.Dense(16, activation="relu", name="dense_2"),
            keras.layers.Dense(3, name="logits"),
        ],
        name="mlp",
    )
    inp = keras.Input((12, 12, 3), name="image")
    h = keras.layers.Conv2D(8, 3, name="conv")(inp)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.ReLU(name="relu")(h)
    h = keras.layers.MaxPooling2D(2, name="pool")(h)
    h = keras.layers.Flatten(name="flatten")(h)
    out = keras.layers.Dense(4, name="logits")(h)
    cnn = keras.Model(inp, out, name="cnn")
    for model, shape, classes in ((mlp, (20,), 3), (cnn, (12, 12, 3), 4)):
        x, y = data(shape, classes)
        model.compile(
            optimizer=keras.optimizers.Adam(1e-2),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        model.fit(x, y, epochs=3, batch_size=32, verbose=0)
    return {"mlp": mlp, "cnn": cnn}


def tfkeras_models() -> dict[str, object]:
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    L = tf_keras.layers
    mlp = tf_keras.Sequential(
        [
            tf_keras.Input((20,)),
            L.Dense(32, activation="relu", name="dense_1"),
            L.Dense(16, activation="relu", name="dense_2"),
            L.Dense(3, name="logits"),
        ],
        name="mlp",
    )
    inp = tf_keras.Input((12, 12, 3), name="image")
    h = L.Conv2D(8, 3, name="conv")(inp)
    h = L.BatchNormalization(name="bn")(h)
    h = L.ReLU(name="relu")(h)
    h = L.MaxPooling2D(2, name="pool")(h)
    h = L.Flatten(name="flatten")(h)
    out = L.Dense(4, name="logits")(h)
    cnn = tf_keras.Model(inp, out, name="cnn")
    for model, shape, classes in ((mlp, (20,), 3), (cnn, (12, 12, 3), 4)):
        x, y = data(shape, classes)
        model.compile(
            optimizer=tf_keras.optimizers.Adam(1e-2),
            loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        model.fit(x, y, epochs=3, batch_size=32, verbose=0)
    return {"mlp": mlp, "cnn": cnn}


def keras3_formats(out: Path) -> None:
    """Today's Keras 3 files, from the MLP: sharded weights (a .weights.json map and its
    shards), an unzipped model folder, and natively quantized int8 and int4 archives."""
    import keras

    mlp = keras.models.load_model(out / "mlp.keras")
    (out / "mlp_sharded").mkdir()
    mlp.save_weights(out / "mlp_sharded" / "mlp.weights.json", max_shard_size=0.000003)
    keras.saving.save_model(mlp, out / "mlp_folder", zipped=False)
    for mode in ("int8", "int4"):
        model = keras.models.load_model(out / "mlp.keras")
        model.quantize(mode)
        model.save(out / f"mlp_{mode}.keras")


def mobile_tfkeras(out: Path) -> None:
    """A small MobileNet-like model saved by tf.keras (as Teachable Machine's exports
    are: DepthwiseConv2D, which Keras 3 refuses to load for its saved 'groups': 1)."""
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    L = tf_keras.layers
    inp = tf_keras.Input((16, 16, 3), name="image")
    h = L.Conv2D(8, 3, strides=2, padding="same", name="stem")(inp)
    h = L.BatchNormalization(name="stem_bn")(h)
    h = L.ReLU(6.0, name="stem_relu")(h)
    h = L.DepthwiseConv2D(3, padding="same", name="dw")(h)
    h = L.BatchNormalization(name="dw_bn")(h)
    h = L.ReLU(6.0, name="dw_relu")(h)
    h = L.Conv2D(16, 1, name="pw")(h)
    h = L.GlobalAveragePooling2D(name="gap")(h)
    model = tf_keras.Model(inp, L.Dense(3, name="logits")(h), name="mobile")
    x, y = data((16, 16, 3), 3)
    model.compile(
        optimizer=tf_keras.optimizers.Adam(1e-2),
        loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x, y, epochs=2, batch_size=32, verbose=0)
    model.save(out / "mobile_tfkeras.h5")


def lora_adapter(out: Path) -> None:
    """A KerasHub LoRA adapter for the MLP (rank 2 on dense_1 and dense_2), written by
    KerasHub's own Backbone.save_lora_weights (it needs only the layer indexes)."""
    import keras
    import keras_hub

    mlp = keras.models.load_model(out / "mlp.keras")
    layers = [ly for ly in mlp._flatten_layers(include_self=False) if ly.weights]
    rng = np.random.default_rng(7)
    mlp._lora_enabled_layers = []
    mlp._lora_rank = 2
    for i, layer in enumerate(layers):
        if layer.name in ("dense_1", "dense_2"):
            layer.enable_lora(2)
            layer.lora_kernel_a.assign(rng.normal(scale=0.1, size=layer.lora_kernel_a.shape))
            layer.lora_kernel_b.assign(rng.normal(scale=0.1, size=layer.lora_kernel_b.shape))
            mlp._lora_enabled_layers.append(i)
    keras_hub.models.Backbone.save_lora_weights(mlp, str(out / "mlp.lora.h5"))


def main() -> None:
    import tensorflow as tf

    if sys.argv[2:] == ["--only", "keras3-formats"]:  # add these without touching the rest
        keras3_formats(OUT)
        return
    if sys.argv[2:] == ["--only", "lora"]:
        lora_adapter(OUT)
        return
    if sys.argv[2:] == ["--only", "mobile"]:
        mobile_tfkeras(OUT)
        return
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)

    k3 = keras3_models()
    for name, model in k3.items():
        model.save(OUT / f"{name}_keras3.h5")  # type: ignore[attr-defined]
        model.save(OUT / f"{name}.keras")  # type: ignore[attr-defined]
        model.save_weights(OUT / f"{name}.weights.h5")  # type: ignore[attr-defined]
    k3["mlp"].export(str(OUT / "mlp_export"), verbose=False)  # type: ignore[attr-defined]
    tf.saved_model.save(k3["mlp"], str(OUT / "mlp_tfsave"))
    tf.train.Checkpoint(model=k3["mlp"]).write(str(OUT / "mlp_ckpt" / "ckpt"))

    # One model with NaN and Inf planted in a kernel, for checkpoint-repair demos.
    import keras

    broken = keras.models.clone_model(k3["mlp"])
    broken.set_weights(k3["mlp"].get_weights())  # type: ignore[attr-defined]
    kernel = broken.get_layer("dense_2").kernel.numpy()
    kernel[0, 0] = np.nan
    kernel[1, 1] = np.inf
    kernel[2, 2] = -np.inf
    broken.get_layer("dense_2").kernel.assign(kernel)
    broken.save(OUT / "mlp_nan.h5")

    tk = tfkeras_models()
    for name, model in tk.items():
        model.save(OUT / f"{name}_tfkeras.h5")  # type: ignore[attr-defined]
        model.save_weights(OUT / f"{name}_tfkeras_weights.h5")  # type: ignore[attr-defined]
    tk["mlp"].save(str(OUT / "mlp_tfkeras_savedmodel"), save_format="tf")  # type: ignore[attr-defined]

    # Calibration data for `scale --by-activation` examples.
    x, _ = data((20,), 3, n=64)
    np.save(OUT / "mlp_calibration.npy", x)
    keras3_formats(OUT)
    lora_adapter(OUT)
    mobile_tfkeras(OUT)
    print(f"wrote {sum(1 for _ in OUT.rglob('*'))} files under {OUT}")


if __name__ == "__main__":
    main()
